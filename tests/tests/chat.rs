//! `allium chat` as a person uses it: two chats in tmux panes against a devnet, one typing a
//! message that appears on the other, a window resized and redrawn, and both quitting with the
//! terminal given back. Every wait polls the screen until what is expected appears, within a
//! bound; nothing is asserted on timing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use allium_tests::client_binary;
use allium_tests::people::{Person, T, World};

/// A private tmux server, killed when dropped.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn start() -> Tmux {
        Tmux {
            socket: format!("allium-chat-test-{}", std::process::id()),
        }
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new("tmux")
            .arg("-L")
            .arg(&self.socket)
            .args(args)
            .output()
            .unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "tmux {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A 100×30 window running a plain shell, in which `person` starts `allium chat` with
    /// `editor` as `$EDITOR`.
    fn chat(&self, name: &str, person: &Person, editor: &Path) {
        self.ok(&[
            "new-session",
            "-d",
            "-s",
            name,
            "-x",
            "100",
            "-y",
            "30",
            "sh",
        ]);
        let line = format!(
            "EDITOR='{}' '{}' --data-dir '{}' --network '{}' chat; echo \"chat exited $?\"",
            editor.display(),
            client_binary().display(),
            person.data.display(),
            person.network.display()
        );
        self.ok(&["send-keys", "-t", name, "-l", &line]);
        self.ok(&["send-keys", "-t", name, "Enter"]);
    }

    fn screen(&self, name: &str) -> String {
        self.ok(&["capture-pane", "-p", "-t", name])
    }

    /// Polls the screen of `name` until `done` holds, for up to `limit`.
    fn wait_for(&self, name: &str, limit: Duration, done: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let s = self.screen(name);
            if done(&s) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "{name}'s screen never showed what was expected:\n{s}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.run(&["kill-server"]);
    }
}

fn tmux_present() -> bool {
    Command::new("tmux")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn history_texts(data: &Path) -> Vec<String> {
    std::fs::read_to_string(data.join("history.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["direction"] == "received")
        .map(|v| v["text"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_chats_in_tmux_talk_redraw_on_resize_and_quit_cleanly() {
    if !tmux_present() {
        eprintln!("skipped: tmux is not installed (apt-get install tmux)");
        return;
    }
    let w = World::start().await;
    let (alice, bob) = (w.person("alice"), w.person("bob"));
    let (alice_addr, _) = alice.init();
    let (bob_addr, _) = bob.init();
    alice.ok(&["contacts", "add", "bob", &bob_addr]);
    bob.ok(&["contacts", "add", "alice", &alice_addr]);

    // An editor that writes two lines into the draft, as a person would in vi.
    let editor = w.dir.path().join("editor.sh");
    std::fs::write(
        &editor,
        "#!/bin/sh\nprintf 'written in the editor\\nsecond line\\n' >> \"$1\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&editor, std::fs::Permissions::from_mode(0o700)).unwrap();

    let tmux = Tmux::start();
    tmux.chat("alice", &alice, &editor);
    tmux.chat("bob", &bob, &editor);
    for (pane, other) in [("alice", "bob"), ("bob", "alice")] {
        tmux.wait_for(pane, T, |s| {
            s.contains("Conversations") && s.contains(other) && s.contains("● online")
        });
    }

    // Alice opens the input, types, and sends.
    let text = "hello from tmux, 日本 🦀";
    tmux.ok(&["send-keys", "-t", "alice", "Enter"]);
    tmux.ok(&["send-keys", "-t", "alice", "-l", text]);
    tmux.ok(&["send-keys", "-t", "alice", "Enter"]);
    let sent = tmux.wait_for("alice", T, |s| s.contains("✓ stored by"));
    assert!(sent.contains(&format!("you {text}")), "{sent}");
    let got = tmux.wait_for("bob", T * 2, |s| s.contains(text));
    assert!(got.contains(&format!("alice {text}")), "{got}");

    // Bob answers.
    let reply = "hi alice, got it 👍";
    tmux.ok(&["send-keys", "-t", "bob", "Enter"]);
    tmux.ok(&["send-keys", "-t", "bob", "-l", reply]);
    tmux.ok(&["send-keys", "-t", "bob", "Enter"]);
    tmux.wait_for("bob", T, |s| s.contains("✓ stored by"));
    let both = tmux.wait_for("alice", T * 2, |s| s.contains(reply));
    assert!(both.contains(&format!("bob {reply}")), "{both}");
    eprintln!("alice's screen:\n{both}");

    // Alice writes a two-line message in $EDITOR (Ctrl-X); the chat comes back and sends it.
    tmux.ok(&["send-keys", "-t", "alice", "C-x"]);
    let drafted = tmux.wait_for("alice", T, |s| s.contains("│second line"));
    assert!(drafted.contains("│written in the editor"), "{drafted}");
    tmux.ok(&["send-keys", "-t", "alice", "Enter"]);
    let got = tmux.wait_for("bob", T * 2, |s| s.contains("second line"));
    assert!(
        got.contains("alice written in the editor"),
        "the lines of a message stay lines:\n{got}"
    );

    // Bob's window shrinks to 80×24: the chat redraws to fit it (the old frame, cut by tmux,
    // would lack the right corner and the status line at the bottom).
    tmux.ok(&["resize-window", "-t", "bob", "-x", "80", "-y", "24"]);
    let small = tmux.wait_for("bob", T, |s| {
        let lines: Vec<&str> = s.lines().collect();
        lines.len() == 24
            && lines[0].chars().count() == 80
            && lines[0].ends_with('┐')
            && lines[23].contains("help")
            && s.contains(text)
    });
    eprintln!("bob's screen at 80×24:\n{small}");

    // Both quit (q in the list, after Tab from the input; Ctrl-C while typing): exit 0, the
    // main screen back, cooked mode.
    tmux.ok(&["send-keys", "-t", "bob", "Tab"]);
    tmux.ok(&["send-keys", "-t", "bob", "q"]);
    tmux.ok(&["send-keys", "-t", "alice", "C-c"]);
    for pane in ["alice", "bob"] {
        tmux.wait_for(pane, T, |s| s.contains("chat exited 0"));
        let alt = tmux.ok(&["display-message", "-p", "-t", pane, "#{alternate_on}"]);
        assert_eq!(alt.trim(), "0", "{pane} is back on the main screen");
        tmux.ok(&[
            "send-keys",
            "-t",
            pane,
            "-l",
            "stty -a | grep -o -e '-*icanon' -e ' -*echo ' | tr -d ' \\n'; echo ' <- tty'",
        ]);
        tmux.ok(&["send-keys", "-t", pane, "Enter"]);
        let s = tmux.wait_for(pane, T, |s| s.contains(" <- tty\n"));
        assert!(s.contains("icanonecho <- tty"), "cooked mode again:\n{s}");
    }

    // What the chat showed is what the history records, once; `inbox` finds nothing new.
    assert_eq!(
        history_texts(&bob.data),
        vec![
            text.to_owned(),
            "written in the editor\nsecond line".to_owned()
        ]
    );
    assert_eq!(history_texts(&alice.data), vec![reply.to_owned()]);
    assert!(bob.inbox().is_empty(), "the chat saved its position");
    assert!(alice.inbox().is_empty(), "the chat saved its position");
}
