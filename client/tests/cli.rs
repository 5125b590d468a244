//! The `allium` binary's help, completions and local-only commands (no network needed).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::{Command, Output};

fn allium(dir: &std::path::Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_allium"))
        .arg("--data-dir")
        .arg(dir)
        .args(args)
        .env_remove("ALLIUM_NETWORK")
        .env_remove("ALLIUM_DATA_DIR")
        .output()
        .unwrap()
}

#[test]
fn every_command_has_help_and_completions_exist() {
    let dir = tempfile::tempdir().unwrap();
    for cmd in [
        vec!["--help"],
        vec!["init", "--help"],
        vec!["restore", "--help"],
        vec!["whoami", "--help"],
        vec!["contacts", "--help"],
        vec!["contacts", "add", "--help"],
        vec!["send", "--help"],
        vec!["inbox", "--help"],
        vec!["listen", "--help"],
        vec!["chat", "--help"],
        vec!["status", "--help"],
    ] {
        let out = allium(dir.path(), &cmd);
        assert!(out.status.success(), "{cmd:?}");
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(
            text.contains("--data-dir") && text.contains("--network"),
            "{cmd:?}: {text}"
        );
    }
    for shell in ["bash", "zsh", "fish"] {
        let out = allium(dir.path(), &["completions", shell]);
        assert!(out.status.success());
        assert!(String::from_utf8(out.stdout).unwrap().contains("allium"));
    }
}

#[test]
fn identity_and_contacts_work_offline() {
    let dir = tempfile::tempdir().unwrap();
    let out = allium(dir.path(), &["--json", "init"]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let address = v["address"].as_str().unwrap().to_owned();
    assert_eq!(v["phrase"].as_str().unwrap().split(' ').count(), 24);
    let who = allium(dir.path(), &["whoami", "--qr"]);
    let text = String::from_utf8(who.stdout).unwrap();
    assert!(
        text.starts_with(&address) && text.lines().count() > 10,
        "{text}"
    );
    assert!(
        allium(dir.path(), &["contacts", "add", "me", &address])
            .status
            .success()
    );
    let list = String::from_utf8(allium(dir.path(), &["contacts", "list"]).stdout).unwrap();
    assert_eq!(list.trim(), format!("me\t{address}"));
    assert_eq!(
        allium(dir.path(), &["contacts", "add", "me", &address])
            .status
            .code(),
        Some(3)
    );
    assert!(
        allium(dir.path(), &["contacts", "remove", "me"])
            .status
            .success()
    );
    assert_eq!(
        allium(dir.path(), &["contacts", "remove", "me"])
            .status
            .code(),
        Some(3)
    );
    assert_eq!(
        allium(dir.path(), &["contacts", "add", "bad name", &address])
            .status
            .code(),
        Some(3)
    );
}

#[test]
fn chat_without_a_terminal_says_so_and_touches_nothing() {
    let dir = tempfile::tempdir().unwrap();
    assert!(allium(dir.path(), &["init"]).status.success());
    let before: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    // Standard input and output are pipes here, as under a script or `ssh host` without -t.
    let out = allium(dir.path(), &["chat"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("allium chat needs a terminal"), "{err}");
    let after: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(before.len(), after.len(), "no files written");
}

/// Bytes that are not UTF-8 on standard input are a usage error (2), not a data-directory
/// problem (4): the data directory is fine.
#[test]
fn standard_input_that_is_not_utf8_is_a_usage_error() {
    use std::io::Write;
    use std::process::Stdio;
    let dir = tempfile::tempdir().unwrap();
    let out = allium(dir.path(), &["--json", "init"]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let address = v["address"].as_str().unwrap().to_owned();
    let with_stdin = |args: &[&str], input: &[u8]| {
        let mut child = Command::new(env!("CARGO_BIN_EXE_allium"))
            .arg("--data-dir")
            .arg(dir.path())
            .args(args)
            .env_remove("ALLIUM_NETWORK")
            .env_remove("ALLIUM_DATA_DIR")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(input).unwrap();
        child.wait_with_output().unwrap()
    };
    let out = with_stdin(&["send", &address, "-"], b"caf\xe9 \xff\n");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("not UTF-8"), "{err}");
    let out = with_stdin(&["restore", "--force"], b"\xff\xfe\n");
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
