//! `allium chat` as a person uses it: two chats in tmux panes against a devnet, one adding and
//! verifying the other from inside, one typing a message that appears on the other (and whose
//! read position reaches the reader's other device), a file sent with `/send-file` and
//! downloaded on the other side, a window resized and redrawn, and both quitting with the
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
            "ALLIUM_DOWNLOAD_DIR='{}' EDITOR='{}' '{}' --data-dir '{}' --network '{}' chat; echo \"chat exited $?\"",
            person.data.join("downloads").display(),
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

/// The hex msg_id of the received message `text` in a history.
fn history_id(data: &Path, text: &str) -> String {
    std::fs::read_to_string(data.join("history.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["direction"] == "received" && v["text"] == text)
        .and_then(|v| v["msg_id"].as_str().map(str::to_owned))
        .unwrap()
}

/// The read position of the conversation with `peer` a data directory holds (hex msg_id).
fn read_mark(data: &Path, peer: &str) -> Option<String> {
    use allium_client::messenger::{Account, Messenger};
    let dir = allium_client::state::DataDir::open(data).unwrap();
    let account = Account::load(&dir, 0).unwrap();
    let marks = Messenger::new(dir, account).unwrap().read_marks().unwrap();
    marks.get(peer).map(|m| hex::encode(m.msg_id))
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
    let (alice, bob, bob_phone) = (w.person("alice"), w.person("bob"), w.person("bob-phone"));
    let (alice_addr, _) = alice.init();
    let (bob_addr, phrase) = bob.init();
    // Bob's other device, for the read position they share.
    let restored = bob_phone.run_with_input(&["restore"], &format!("{phrase}\n"));
    assert_eq!(restored.code, 0, "restore: {}", restored.stderr);
    alice.ok(&["contacts", "add", "bob", &bob_addr]);
    // Bob's data directory as an earlier version left it: read positions in read.json, which
    // the chat moves into the shared ones.
    let mut old = allium_client::state::ReadMarks::default();
    old.set(
        &alice_addr,
        allium_client::state::ReadMark {
            msg_id: [0; 16],
            timestamp_ms: 1,
        },
    );
    allium_client::state::DataDir::open(&bob.data)
        .unwrap()
        .save_read_marks(&old)
        .unwrap();

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
    tmux.wait_for("alice", T, |s| {
        s.contains("Conversations") && s.contains("bob") && s.contains("● online")
    });
    tmux.wait_for("bob", T, |s| {
        s.contains("Conversations") && s.contains("● online")
    });
    assert!(!bob.data.join("read.json").exists(), "moved and removed");
    assert_eq!(
        read_mark(&bob.data, &alice_addr).as_deref(),
        Some("00000000000000000000000000000000")
    );

    // Bob adds Alice from inside, by the text her QR code holds, then verifies her: the
    // safety number `allium contacts verify` shows, confirmed with y.
    tmux.ok(&["send-keys", "-t", "bob", "Enter"]);
    let add = format!("/add alice {}", alice_addr.to_uppercase());
    tmux.ok(&["send-keys", "-t", "bob", "-l", &add]);
    tmux.ok(&["send-keys", "-t", "bob", "Enter"]);
    tmux.wait_for("bob", T, |s| s.contains("alice (not verified)"));
    let number = bob.ok(&["contacts", "verify", "alice"])[0]["safety_number"]
        .as_str()
        .unwrap()
        .to_owned();
    tmux.ok(&["send-keys", "-t", "bob", "-l", "/verify alice"]);
    tmux.ok(&["send-keys", "-t", "bob", "Enter"]);
    let shown = tmux.wait_for("bob", T, |s| s.contains("Safety number with alice"));
    assert!(shown.contains(&number[..5]), "{number}:\n{shown}");
    tmux.ok(&["send-keys", "-t", "bob", "y"]);
    tmux.wait_for("bob", T, |s| s.contains("alice ✓ verified"));
    let book = bob.ok(&["contacts", "list"]);
    assert_eq!(book[0]["name"], "alice");
    assert_eq!(book[0]["verified"], true);

    // Alice opens the input, types, and sends.
    let text = "hello from tmux, 日本 🦀";
    tmux.ok(&["send-keys", "-t", "alice", "Enter"]);
    tmux.ok(&["send-keys", "-t", "alice", "-l", text]);
    tmux.ok(&["send-keys", "-t", "alice", "Enter"]);
    let sent = tmux.wait_for("alice", T, |s| s.contains("✓ stored by"));
    assert!(sent.contains(&format!("you {text}")), "{sent}");
    let got = tmux.wait_for("bob", T * 2, |s| s.contains(text));
    assert!(got.contains(&format!("alice {text}")), "{got}");

    // Bob's chat read it (the conversation is open): the position reaches his other device
    // through the state the account's devices share, which `devices list` syncs there.
    let read_id = history_id(&bob.data, text);
    let deadline = Instant::now() + T * 2;
    loop {
        bob_phone.ok(&["devices", "list"]);
        if read_mark(&bob_phone.data, &alice_addr).as_deref() == Some(read_id.as_str()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the read position never reached Bob's other device"
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    // Bob answers.
    let reply = "hi alice, got it 👍";
    tmux.ok(&["send-keys", "-t", "bob", "Enter"]);
    tmux.ok(&["send-keys", "-t", "bob", "-l", reply]);
    tmux.ok(&["send-keys", "-t", "bob", "Enter"]);
    tmux.wait_for("bob", T, |s| s.contains("✓ stored by"));
    let both = tmux.wait_for("alice", T * 2, |s| s.contains(reply));
    assert!(both.contains(&format!("bob {reply}")), "{both}");
    eprintln!("alice's screen:\n{both}");

    // Alice sends a file from inside; a bar shows while it goes, and Bob's chat downloads it.
    let file = w.dir.path().join("notes.bin");
    let bytes: Vec<u8> = (0..150_000u32)
        .map(|i| u8::try_from(i * 7 % 251).unwrap())
        .collect();
    std::fs::write(&file, &bytes).unwrap();
    tmux.ok(&[
        "send-keys",
        "-t",
        "alice",
        "-l",
        &format!("/send-file {}", file.display()),
    ]);
    tmux.ok(&["send-keys", "-t", "alice", "Enter"]);
    let sending = tmux.wait_for("alice", T * 2, |s| {
        s.contains("↑ notes.bin [") || s.contains("sent notes.bin")
    });
    eprintln!("alice sending a file:\n{sending}");
    tmux.wait_for("alice", T * 2, |s| s.contains("sent notes.bin"));
    let line = "[file] notes.bin (150000 bytes)";
    let got = tmux.wait_for("bob", T * 2, |s| s.contains("saved notes.bin to"));
    assert!(got.contains(&format!("alice {line}")), "{got}");
    assert_eq!(
        std::fs::read(bob.data.join("downloads").join("notes.bin")).unwrap(),
        bytes
    );

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
            line.to_owned(),
            "written in the editor\nsecond line".to_owned()
        ]
    );
    assert_eq!(history_texts(&alice.data), vec![reply.to_owned()]);
    assert!(bob.inbox().is_empty(), "the chat saved its position");
    assert!(alice.inbox().is_empty(), "the chat saved its position");
}
