//! `stages`: what each daemon stage is doing, for `status` (another process)
//! and systemd's STATUS= line.

use rusqlite::params;

use super::{Result, Stage, StageRow, StageState, Store, now_ms};

impl Store {
    /// Records what a stage is doing now (`running` also counts a run).
    pub fn set_stage(&self, stage: Stage, state: StageState, detail: Option<&str>) -> Result<()> {
        self.conn.execute(
            "INSERT INTO stages (name, state, detail, runs, updated_at) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT(name) DO UPDATE SET state = excluded.state, detail = excluded.detail,
                 runs = runs + excluded.runs, updated_at = excluded.updated_at",
            params![
                stage.as_str(),
                state.as_str(),
                detail,
                (state == StageState::Running) as i64,
                now_ms()
            ],
        )?;
        Ok(())
    }

    /// A running stage made progress (a page stored, a step trained, a cell
    /// evaluated): the watchdog's sign of life. No-op when it is not running
    /// (the CLI runs the same code without the daemon's stages).
    pub fn stage_progress(&self, stage: Stage) -> Result<()> {
        self.conn.execute(
            "UPDATE stages SET updated_at = ?2 WHERE name = ?1 AND state = 'running'",
            params![stage.as_str(), now_ms()],
        )?;
        Ok(())
    }

    /// Counts a failure of a stage; it waits (`backoff`) before its next try.
    pub fn stage_failed(&self, stage: Stage, error: &str) -> Result<()> {
        self.conn.execute(
            "INSERT INTO stages (name, state, failures, last_error, updated_at) VALUES (?1, 'backoff', 1, ?2, ?3)
             ON CONFLICT(name) DO UPDATE SET state = 'backoff', failures = failures + 1,
                 last_error = excluded.last_error, updated_at = excluded.updated_at",
            params![stage.as_str(), error, now_ms()],
        )?;
        Ok(())
    }

    pub fn stages(&self) -> Result<Vec<StageRow>> {
        self.rows("ORDER BY name", [])
    }
}
