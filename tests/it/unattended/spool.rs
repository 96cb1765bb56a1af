//! Spool files and the disk: large, half-ingested or oddly named files, and
//! a disk that fills up.

use std::time::Duration;

use serde_json::Value;

use super::common;
use super::{run, spool_config};

/// Before: a file was read whole into memory and stored in one transaction;
/// a drop larger than memory was OOM-killed before it could be moved, and
/// read again after every restart.
#[test]
fn a_spool_file_over_max_file_bytes_is_refused_unread() {
    let dir = tempfile::tempdir().unwrap();
    let config = spool_config(dir.path(), "max_file_bytes = 4096\n");
    let big = "question,answer\n".to_string() + &"Why?,Because.\n".repeat(1000);
    std::fs::write(dir.path().join("spool/big.csv"), &big).unwrap();
    std::fs::write(
        dir.path().join("spool/small.csv"),
        "question,answer\nWho?,Me.\n",
    )
    .unwrap();
    let out = run(&config, &["crawl", "--once", "--json"]);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let fetch = &report["sources"][0]["fetch"];
    assert_eq!(
        (fetch["files_done"].as_u64(), fetch["files_failed"].as_u64()),
        (Some(1), Some(1)),
        "{report}"
    );
    let reason = std::fs::read_to_string(dir.path().join("spool/failed/big.csv.reason")).unwrap();
    assert_eq!(
        reason.trim(),
        format!("file is {} bytes, over max_file_bytes (4096)", big.len())
    );
    assert!(dir.path().join("spool/done/small.csv").exists());
}

/// Before: a large file was one transaction; killed midway, a restart read
/// and parsed it from the start. Now it is stored in chunks with a cursor and
/// a restart resumes after the last stored chunk: nothing lost, nothing twice.
#[test]
fn a_spool_file_killed_midway_resumes_after_its_last_chunk() {
    let dir = tempfile::tempdir().unwrap();
    let config = spool_config(dir.path(), "");
    const ROWS: usize = 60_000;
    common::big_csv(&dir.path().join("spool/big.csv"), ROWS, "spools");
    let mut child = common::lorastream()
        .args(["-q", "--config"])
        .arg(&config)
        .args(["crawl", "--once", "--source", "drops"])
        .spawn()
        .unwrap();
    let db = dir.path().join("state/lorastream.db");
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let done_at_kill = loop {
        assert!(std::time::Instant::now() < deadline, "no chunk was stored");
        assert!(
            child.try_wait().unwrap().is_none(),
            "finished before it could be killed"
        );
        let done =
            rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
                .and_then(|c| {
                    c.query_row("SELECT rows_done FROM spool_files", [], |r| {
                        r.get::<_, i64>(0)
                    })
                })
                .unwrap_or(0);
        if done >= 2000 {
            child.kill().unwrap();
            child.wait().unwrap();
            break done;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let store = lorastream_store::Store::open(&db).unwrap();
    let cursor = store.spool_files("drops").unwrap();
    assert_eq!(cursor.len(), 1);
    let stored = cursor[0].rows_done;
    assert!(
        stored >= done_at_kill && (stored as usize) < ROWS,
        "{cursor:?}"
    );
    assert_eq!(stored % 1000, 0, "chunks of 1000");
    let cfg = lorastream::config::Config::load(&config).unwrap();
    let report = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(lorastream::data::sources::run_source(
            &lorastream::util::http::Http::new(),
            &store,
            &cfg.state_dir(),
            &cfg.sources[0],
            3,
        ));
    assert_eq!(report.error, None);
    assert_eq!(
        (report.fetched, report.new, report.duplicate),
        (
            (ROWS as i64 - stored) as u64,
            (ROWS as i64 - stored) as u64,
            0
        ),
        "resumed after row {stored}"
    );
    let total: i64 = store.raw_item_counts().unwrap().iter().map(|r| r.2).sum();
    assert_eq!(total as usize, ROWS);
    assert!(store.spool_files("drops").unwrap().is_empty());
    assert!(dir.path().join("spool/done/big.csv").exists());
}

/// Before: a spool file name was logged as it is, so a newline in a dropped
/// file's name could forge a log line. Now names are quoted and escaped.
#[test]
fn a_file_name_cannot_forge_a_log_line() {
    let dir = tempfile::tempdir().unwrap();
    let config = spool_config(dir.path(), "");
    let name = "x.csv\nERROR forged: all data deleted\n.csv";
    std::fs::write(
        dir.path().join("spool").join(name),
        "question,answer\nQ?,A.\n",
    )
    .unwrap();
    let out = common::lorastream()
        .args(["--log-format", "pretty", "--config"])
        .arg(&config)
        .args(["crawl", "--once"])
        .output()
        .unwrap();
    common::assert_ok(&out);
    let logs = String::from_utf8_lossy(&out.stderr);
    assert!(
        logs.contains(r#"file="x.csv\nERROR forged: all data deleted\n.csv""#),
        "{logs}"
    );
    assert!(
        !logs.lines().any(|l| l.starts_with("ERROR forged")),
        "{logs}"
    );
}

/// A full disk fails the step in progress (what was committed stays, the
/// file's cursor with it) and the next run, once there is space, resumes:
/// every row stored once. The state dir is a small tmpfs in a private mount
/// namespace; it holds a filler file that is removed between the runs.
#[test]
fn a_full_disk_fails_the_step_and_the_next_run_resumes() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("state")).unwrap();
    spool_config(dir.path(), "");
    const ROWS: usize = 60_000;
    common::big_csv(&dir.path().join("spool/big.csv"), ROWS, "full disks");
    let script = r#"S="$1/state"; C="$1/lorastream.toml"
mount -t tmpfs -o size=48m tmpfs "$S" || exit 99
dd if=/dev/zero of="$S/filler" bs=1M count=40 status=none
"$0" -q --config "$C" crawl --once --source drops >/dev/null 2>&1
echo "@@1"; "$0" --config "$C" status --json
rm "$S/filler"
"$0" -q --config "$C" crawl --once --source drops >/dev/null 2>&1
echo "@@2"; "$0" --config "$C" status --json"#;
    let Some(out) = common::in_mount_namespace(script, &[dir.path().as_os_str()]) else {
        return;
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let parts: Vec<Value> = stdout
        .split("@@")
        .skip(1)
        .map(|p| serde_json::from_str(p[1..].trim()).unwrap_or_else(|e| panic!("{e}: {p}")))
        .collect();
    let raw = |s: &Value| -> u64 {
        s["raw_items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r[2].as_u64().unwrap())
            .sum()
    };
    let (full, after) = (&parts[0], &parts[1]);
    let source = &full["sources"][0]["store"];
    assert!(
        source["last_error"].as_str().unwrap_or("").contains("full"),
        "{source}"
    );
    let stored = raw(full);
    eprintln!("disk full after {stored} of {ROWS} rows; resumed after space returned");
    assert!(
        stored > 0 && stored < ROWS as u64 && stored % 1000 == 0,
        "{stored} rows before the disk filled"
    );
    assert_eq!(
        raw(after),
        ROWS as u64,
        "every row once after space returned"
    );
    assert!(
        after["sources"][0]["store"]["last_error"].is_null()
            || after["sources"][0]["store"]["error_count"] == 0
    );
}
