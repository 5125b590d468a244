//! The README's main-job command, `scripts/demo`, run end to end with the binaries this test
//! run built: it must start its network, deliver every message both ways, and stop cleanly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;

use allium_tests::{client_binary, node_binary, serial};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_demo_delivers_every_message() {
    let _serial = serial().await;
    let bin = node_binary().parent().unwrap().to_path_buf();
    assert!(client_binary().exists(), "build the workspace first");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/demo");
    let out = Command::new("bash")
        .arg(script)
        .env("ALLIUM_BIN_DIR", &bin)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("Devnet ready"), "{stdout}");
    let delivered = stdout.matches("  delivered: ").count();
    assert_eq!(delivered, 3, "{stdout}");
    assert!(stdout.contains("Delivered 3 of 3 messages."), "{stdout}");
    // Each message shows its four hops.
    for role in ["guard", "middle", "exit", "destination"] {
        assert_eq!(
            stdout.matches(&format!("    {role} ")).count(),
            3,
            "{stdout}"
        );
    }
    assert!(stdout.contains("Network stopped cleanly."), "{stdout}");
}
