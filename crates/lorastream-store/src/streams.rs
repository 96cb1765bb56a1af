//! `streams`: sealed batches of examples with their train/eval split; the
//! files live under `<state_dir>/streams/<id>/`.

use std::path::{Path, PathBuf};

use rusqlite::{OptionalExtension, params};

use super::{
    ExampleState, Result, Split, Store, StoreError, StreamRow, StreamState, invalid, now_ms,
};

impl Store {
    /// Seals ready examples into a new stream in one transaction: the stream row
    /// is created and every example moves to `sealed` with its split, or nothing
    /// changes. `path` is where the stream's files are (written by the caller first).
    pub fn seal_stream(&self, name: &str, train: &[i64], eval: &[i64], path: &Path) -> Result<i64> {
        self.seal_stream_with(name, train, eval, |_| Ok(path.to_owned()))
    }

    /// Like [`seal_stream`](Self::seal_stream), with the files written by `write`
    /// once the stream id is known, inside the transaction: if `write` fails,
    /// nothing is sealed. `write` returns the stream's directory.
    pub fn seal_stream_with(
        &self,
        name: &str,
        train: &[i64],
        eval: &[i64],
        write: impl FnOnce(i64) -> std::io::Result<PathBuf>,
    ) -> Result<i64> {
        let tx = self.conn.unchecked_transaction()?;
        tx.execute(
            "INSERT INTO streams (name, created_at, n_train, n_eval, path) VALUES (?1, ?2, ?3, ?4, '')",
            params![name, now_ms(), train.len() as i64, eval.len() as i64],
        )?;
        let stream_id = tx.last_insert_rowid();
        {
            let mut upd = tx.prepare(
                "UPDATE examples SET state = 'sealed', stream_id = ?2, split = ?3
                 WHERE id = ?1 AND state = 'ready'",
            )?;
            for (ids, split) in [(train, Split::Train), (eval, Split::Eval)] {
                for &id in ids {
                    if upd.execute(params![id, stream_id, split.as_str()])? != 1 {
                        let from: Option<ExampleState> = tx
                            .query_row("SELECT state FROM examples WHERE id = ?1", [id], |r| {
                                r.get(0)
                            })
                            .optional()?;
                        return Err(match from {
                            None => StoreError::NotFound {
                                what: "example",
                                id: id.to_string(),
                            },
                            Some(from) => invalid(id, from, ExampleState::Sealed),
                        });
                    }
                }
            }
        }
        let path = write(stream_id).map_err(|e| StoreError::Files {
            what: format!("stream {stream_id}"),
            source: e,
        })?;
        tx.execute(
            "UPDATE streams SET path = ?2 WHERE id = ?1",
            params![stream_id, path.to_string_lossy()],
        )?;
        tx.commit()?;
        Ok(stream_id)
    }

    pub fn stream(&self, id: i64) -> Result<Option<StreamRow>> {
        self.row("WHERE id = ?1", [id])
    }

    pub fn streams(&self) -> Result<Vec<StreamRow>> {
        self.rows("ORDER BY id", [])
    }

    pub fn set_stream_state(&self, id: i64, to: StreamState) -> Result<()> {
        self.transition(id, to, |_| Ok(0))
    }

    /// A stream set aside after too many failures (to train, to evaluate or
    /// decide its candidate): it and its undecided adapter become `failed` in
    /// one transaction, so the trainer goes on with the next stream.
    pub fn fail_stream(&self, id: i64, reason: &str) -> Result<()> {
        self.in_transaction(|s| {
            if s.stream(id)?
                .is_some_and(|st| st.state != StreamState::Failed)
            {
                s.set_stream_state(id, StreamState::Failed)?;
            }
            for a in s.adapters()? {
                if a.stream_id == id
                    && matches!(
                        a.state,
                        super::AdapterState::Training | super::AdapterState::Candidate
                    )
                {
                    s.set_adapter_state(
                        a.id,
                        super::AdapterState::Failed,
                        None,
                        super::Actor::Daemon,
                        reason,
                    )?;
                }
            }
            Ok(())
        })
    }

    /// Ids of a stream's examples in one split, in id order.
    pub fn stream_example_ids(&self, stream_id: i64, split: Split) -> Result<Vec<i64>> {
        self.query_all(
            "SELECT id FROM examples WHERE stream_id = ?1 AND split = ?2 ORDER BY id",
            params![stream_id, split.as_str()],
            |r| r.get(0),
        )
    }
}
