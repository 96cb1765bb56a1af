//! The unit file: `systemd-analyze verify` finds nothing wrong and
//! `systemd-analyze security --offline=true` scores it 1.5 or lower. The unit
//! is rewritten to the built binary, as `make install` does for its PREFIX.
//! Skipped, with the reason printed, where systemd-analyze is missing.

use std::path::Path;
use std::process::Command;

fn analyze() -> Option<()> {
    match Command::new("systemd-analyze").arg("--version").output() {
        Ok(o) if o.status.success() => Some(()),
        _ => {
            eprintln!("SKIP: systemd-analyze is not installed here");
            None
        }
    }
}

fn installed_unit(dir: &Path) -> std::path::PathBuf {
    let unit = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/lorastream.service"),
    )
    .unwrap();
    assert!(unit.contains("/usr/local/bin/lorastream"));
    let path = dir.join("lorastream.service");
    std::fs::write(
        &path,
        unit.replace(
            "/usr/local/bin/lorastream",
            env!("CARGO_BIN_EXE_lorastream"),
        ),
    )
    .unwrap();
    path
}

#[test]
fn unit_verifies_and_is_hardened() {
    let Some(()) = analyze() else { return };
    let dir = tempfile::tempdir().unwrap();
    let unit = installed_unit(dir.path());
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    // Lines about our unit only (the host's other units may have their own complaints).
    let ours: Vec<&str> = text.lines().filter(|l| l.contains("lorastream")).collect();
    assert!(
        ours.is_empty() && out.status.success(),
        "systemd-analyze verify:\n{text}"
    );

    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(&unit)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let score: f64 = text
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for lorastream.service:")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no score in:\n{text}"));
    eprintln!("systemd-analyze security: exposure {score}");
    assert!(score <= 1.5, "exposure {score} > 1.5:\n{text}");
    // The protocol and the directories the daemon relies on.
    let unit = std::fs::read_to_string(&unit).unwrap();
    for line in [
        "Type=notify",
        "WatchdogSec=",
        "StateDirectory=lorastream",
        "ConfigurationDirectory=lorastream",
        "DynamicUser=yes",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "UMask=0077",
        "SystemCallFilter=@system-service",
        "DeviceAllow=/dev/nvidiactl rw",
        "DeviceAllow=/dev/nvidia0 rw",
        "DeviceAllow=/dev/nvidia-uvm rw",
        "DeviceAllow=char-nvidia rw",
        "MemoryMax=",
        "TasksMax=",
        "StartLimitBurst=",
    ] {
        assert!(unit.contains(line), "unit lacks {line}");
    }
}
