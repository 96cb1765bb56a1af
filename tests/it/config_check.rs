//! `lorastream config check` on the shipped example and on broken files: the
//! binary must exit non-zero naming the file, the key and the line, never panic.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Output;

const EXIT_CONFIG: i32 = 78;

fn check(path: &Path) -> Output {
    common::lorastream()
        .args(["config", "check", "--config"])
        .arg(path)
        .output()
        .expect("run lorastream")
}

fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config/lorastream.toml")
}

#[test]
fn the_example_config_is_valid() {
    let out = check(&example());
    let stdout = String::from_utf8_lossy(&out.stdout);
    common::assert_ok(&out);
    assert!(stdout.contains("valid"), "{stdout}");
    assert!(stdout.contains("3 sources (2 enabled"), "{stdout}");
    assert!(
        stdout.contains("model hub:HuggingFaceTB/SmolLM2-135M-Instruct"),
        "{stdout}"
    );
    assert_eq!(
        stdout.lines().count(),
        1,
        "one-line summary expected: {stdout}"
    );
}

/// Each case: a broken variant of a small valid config, the key the error must
/// name, and the line it must point at.
struct Case {
    name: &'static str,
    toml: String,
    key: &'static str,
    line: usize,
    says: &'static str,
}

fn cases(dir: &Path) -> Vec<Case> {
    let spool = dir.join("spool");
    std::fs::create_dir_all(&spool).unwrap();
    let base = format!(
        "[daemon]\nstate_dir = \"{}\"\n\n[[sources]]\nname = \"drops\"\nkind = \"spool\"\ndir = \"{}\"\n",
        dir.join("state").display(),
        spool.display()
    );
    vec![
        Case {
            name: "unknown key",
            toml: format!("{base}\n[train]\nepochs_per_stream = 2\nlearning_rate = 0.1\n"),
            key: "train.learning_rate",
            line: 11,
            says: "unknown field",
        },
        Case {
            name: "bad cron string",
            toml: format!("{base}\n[schedule]\ncrawl = \"every five minutes\"\n"),
            key: "schedule.crawl",
            line: 10,
            says: "cron",
        },
        Case {
            name: "cron without seconds",
            toml: format!("{base}schedule = \"*/5 * * * *\"\n"),
            key: "sources[0].schedule",
            line: 8,
            says: "cron",
        },
        Case {
            name: "negative learning rate",
            toml: format!("{base}\n[train]\nlr = -0.001\n"),
            key: "train.lr",
            line: 10,
            says: "-0.001",
        },
        Case {
            name: "missing required path",
            toml: base.replace(
                &spool.display().to_string(),
                "/nonexistent/lorastream-spool",
            ),
            key: "sources[0].dir",
            line: 7,
            says: "does not exist",
        },
        Case {
            name: "missing required key",
            toml: format!("{base}\n[[sources]]\nname = \"hf\"\nkind = \"hf_datasets\"\n"),
            key: "sources[1].dataset",
            line: 9,
            says: "required",
        },
        Case {
            name: "wrong type",
            toml: format!("{base}\n[lora]\nr = \"eight\"\n"),
            key: "lora.r",
            line: 10,
            says: "invalid type",
        },
        Case {
            name: "negative integer",
            toml: format!("{base}\n[train]\nbatch_size = -4\n"),
            key: "train.batch_size",
            line: 10,
            says: "-4",
        },
        Case {
            name: "a listener other machines reach, without keys",
            toml: format!("{base}\n[server]\nlisten = \"0.0.0.0:8080\"\n"),
            key: "server.listen",
            line: 10,
            says: "[[server.keys]]",
        },
        Case {
            name: "a key without its secret",
            toml: format!("{base}\n[[server.keys]]\nname = \"alice\"\n"),
            key: "server.keys[0]",
            line: 9,
            says: "key_file",
        },
        Case {
            name: "unknown source kind",
            toml: base.replace("kind = \"spool\"", "kind = \"ftp\""),
            key: "sources[0].kind",
            line: 6,
            says: "unknown variant",
        },
        Case {
            name: "key of another kind",
            toml: format!("{base}dataset = \"x/y\"\n"),
            key: "sources[0].dataset",
            line: 8,
            says: "hf_datasets",
        },
        Case {
            name: "duplicate source name",
            toml: format!("{base}\n[[sources]]\nname = \"drops\"\nkind = \"spool\"\n"),
            key: "sources[1].name",
            line: 10,
            says: "duplicate",
        },
        Case {
            name: "bad listen address",
            toml: format!("{base}\n[server]\nlisten = \"localhost\"\n"),
            key: "server.listen",
            line: 10,
            says: "address:port",
        },
        Case {
            name: "syntax error",
            toml: format!("{base}\n[train\nlr = 0.1\n"),
            key: "",
            line: 9,
            says: "",
        },
    ]
}

#[test]
fn broken_configs_name_file_key_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let all = cases(dir.path());
    assert!(all.len() >= 6);
    for case in all {
        let path = dir.path().join("broken.toml");
        std::fs::write(&path, &case.toml).unwrap();
        let out = check(&path);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let ctx = format!(
            "case {:?}\n--- config\n{}--- stderr\n{stderr}",
            case.name, case.toml
        );
        assert_eq!(out.status.code(), Some(EXIT_CONFIG), "{ctx}");
        assert!(!stderr.contains("panicked"), "{ctx}");
        assert!(out.stdout.is_empty(), "{ctx}");
        let first = stderr.lines().next().unwrap_or("");
        let want_place = format!("{}:{}:", path.display(), case.line);
        assert!(
            first.starts_with(&want_place),
            "expected {want_place}…\n{ctx}"
        );
        if !case.key.is_empty() {
            assert!(
                stderr.contains(&format!("`{}`", case.key)),
                "key not named\n{ctx}"
            );
        }
        assert!(
            stderr.contains(case.says),
            "expected {:?}\n{ctx}",
            case.says
        );
    }
}

#[test]
fn every_problem_is_reported_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("many.toml");
    std::fs::write(
        &path,
        "[train]\nlr = 0\nbatch_size = 0\n\n[lora]\ndropout = 1.5\n\n[schedule]\ntrain = \"0 0 0 31 2 *\"\n",
    )
    .unwrap();
    let out = check(&path);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(EXIT_CONFIG), "{stderr}");
    for (key, line) in [
        ("train.lr", 2),
        ("train.batch_size", 3),
        ("lora.dropout", 6),
        ("schedule.train", 9),
    ] {
        let want = format!("{}:{line}:1: `{key}`", path.display());
        assert!(stderr.contains(&want), "missing {want}\n{stderr}");
    }
    assert!(stderr.contains("never fires"), "{stderr}");
    assert!(stderr.contains("4 problem(s)"), "{stderr}");
}

#[test]
fn unreadable_and_non_utf8_files_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.toml");
    let out = check(&missing);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(EXIT_CONFIG));
    assert!(
        stderr.contains("nope.toml") && stderr.contains("cannot read"),
        "{stderr}"
    );

    let binary = dir.path().join("binary.toml");
    std::fs::write(&binary, [0xff, 0xfe, b'a', b'=', b'1']).unwrap();
    let out = check(&binary);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(EXIT_CONFIG));
    assert!(
        stderr.contains("binary.toml") && !stderr.contains("panicked"),
        "{stderr}"
    );
}

/// Before: under `ProtectSystem=strict` a spool dir outside the state dir is
/// a read-only mount: records were stored, the move to done/ failed, and the
/// file was read again on every run. `config check` (the unit's
/// ExecStartPre, run inside the same sandbox) now refuses it. The read-only
/// bind mount is made the way systemd makes it, in a private mount namespace.
#[test]
fn a_spool_dir_this_process_cannot_write_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("drops");
    std::fs::create_dir(&spool).unwrap();
    let config = dir.path().join("lorastream.toml");
    std::fs::write(
        &config,
        format!(
            "[daemon]\nstate_dir = \"{}/state\"\n[[sources]]\nname = \"drops\"\nkind = \"spool\"\ndir = \"{}\"\n",
            dir.path().display(),
            spool.display()
        ),
    )
    .unwrap();
    common::assert_ok(&check(&config));
    let s = spool.display();
    let script = format!(
        "mount --bind {s} {s} && mount -o remount,bind,ro {s} {s} || exit 99; exec \"$0\" config check --config \"$1\""
    );
    let Some(out) = common::in_mount_namespace(&script, &[config.as_os_str()]) else {
        return;
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(EXIT_CONFIG), "{stderr}");
    assert!(
        stderr.contains("sources[0].dir")
            && stderr.contains("is not writable by this process")
            && stderr.contains(&format!("ReadWritePaths={s}")),
        "{stderr}"
    );
}
