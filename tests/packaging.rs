//! Packaging: the systemd unit passes `systemd-analyze verify`, shell completions are
//! generated for bash, zsh and fish, and the binary installs with `cargo install`.

use std::path::Path;
use std::process::Command;

fn foldertrack(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_foldertrack"))
        .args(args)
        .env_remove("FOLDERTRACK_CONFIG")
        .output()
        .unwrap()
}

#[test]
fn completions_are_generated_for_bash_zsh_and_fish_without_a_config() {
    for (shell, marker) in [
        ("bash", "complete -F _foldertrack"),
        ("zsh", "#compdef foldertrack"),
        ("fish", "complete -c foldertrack"),
    ] {
        let o = foldertrack(&["--config", "/nonexistent.toml", "completions", shell]);
        assert!(
            o.status.success(),
            "{shell}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let text = String::from_utf8(o.stdout).unwrap();
        assert!(text.contains(marker), "{shell}: {text}");
        for sub in ["export", "status", "completions", "log-format"] {
            assert!(text.contains(sub), "{shell} completes {sub}");
        }
    }
    let o = foldertrack(&["completions", "tcsh"]);
    assert_eq!(o.status.code(), Some(2), "unknown shell is a usage error");
}

fn unit() -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/foldertrack.service"),
    )
    .unwrap()
}

#[test]
fn systemd_unit_reloads_on_hup_runs_unprivileged_and_does_not_restart_on_config_errors() {
    let unit = unit();
    for key in [
        "ExecReload=/bin/kill -HUP $MAINPID",
        "DynamicUser=yes",
        "StateDirectory=foldertrack",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "RestartPreventExitStatus=2",
    ] {
        assert!(unit.contains(key), "the unit sets {key}");
    }
}

#[test]
fn systemd_unit_passes_systemd_analyze_verify() {
    if !testkit::require_tool("systemd-analyze") {
        return;
    }
    let unit = unit();
    // verify checks that ExecStart exists: point it at the binary under test.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("foldertrack.service");
    std::fs::write(
        &path,
        unit.replace(
            "/usr/local/bin/foldertrack",
            env!("CARGO_BIN_EXE_foldertrack"),
        ),
    )
    .unwrap();
    let o = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .unwrap();
    let out = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "{out}");
    // Unknown keys and bad values are only warnings: any line about the unit is a failure.
    assert!(!out.contains("foldertrack.service"), "{out}");
}
