//! The client data directory: permissions, atomic writes, bounded seen sets, damaged files, the
//! history log and the lock.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::ffi::OsString;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use allium_client::state::HistoryEntry;
use allium_client::state::{
    CONTACTS_FILE, ClientState, Contacts, DataDir, Direction, Guard, HISTORY_FILE, IDENTITY_FILE,
    MAX_ROSTER_BYTES, MAX_SEEN, ROSTER_FILE, STATE_FILE, SavedCursor, StateError,
    data_dir_from_env, validate_contact_name,
};
use allium_fsutil::PrivateError;
use proptest::prelude::*;
use zeroize::Zeroizing;

fn fresh() -> (tempfile::TempDir, DataDir) {
    let tmp = tempfile::tempdir().unwrap();
    let dd = DataDir::open(&tmp.path().join("data")).unwrap();
    (tmp, dd)
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

fn entry(i: u64) -> HistoryEntry {
    HistoryEntry {
        direction: if i % 2 == 0 {
            Direction::Sent
        } else {
            Direction::Received
        },
        peer: format!("allium1peer{i}"),
        timestamp_ms: 1_700_000_000_000 + i,
        msg_id: [i as u8; 16],
        text: format!("message {i}\nwith a newline and \"quotes\""),
        delivery: None,
    }
}

#[test]
fn default_dir_follows_xdg_then_home() {
    let os = |s: &str| Some(OsString::from(s));
    assert_eq!(
        data_dir_from_env(os("/x/data"), os("/home/u")).unwrap(),
        PathBuf::from("/x/data/allium")
    );
    // Empty or relative XDG_DATA_HOME is ignored, as the spec says.
    for xdg in [os(""), os("rel/data"), None] {
        assert_eq!(
            data_dir_from_env(xdg, os("/home/u")).unwrap(),
            PathBuf::from("/home/u/.local/share/allium")
        );
    }
    assert!(matches!(
        data_dir_from_env(None, None),
        Err(StateError::NoDataDir)
    ));
    assert!(matches!(
        data_dir_from_env(os(""), os("relative")),
        Err(StateError::NoDataDir)
    ));
}

#[test]
fn directory_is_0700_and_identity_0600() {
    let (_tmp, dd) = fresh();
    assert_eq!(mode(dd.path()), 0o700);
    let seed = Zeroizing::new([7u8; 32]);
    dd.write_identity(&seed, false).unwrap();
    let path = dd.path().join(IDENTITY_FILE);
    assert_eq!(mode(&path), 0o600);
    assert_eq!(fs::read(&path).unwrap(), [7u8; 32]);
    assert_eq!(*dd.read_identity().unwrap(), [7u8; 32]);
}

#[test]
fn group_writable_directory_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    fs::create_dir(&dir).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o770)).unwrap();
    assert!(matches!(
        DataDir::open(&dir),
        Err(StateError::Private(e @ PrivateError::Insecure { dir: true, .. })) if e.fix_mode() == Some(0o700)
    ));
}

#[test]
fn identity_is_not_replaced_unless_forced() {
    let (_tmp, dd) = fresh();
    dd.write_identity(&Zeroizing::new([1u8; 32]), false)
        .unwrap();
    assert!(matches!(
        dd.write_identity(&Zeroizing::new([2u8; 32]), false),
        Err(StateError::IdentityExists { .. })
    ));
    assert_eq!(*dd.read_identity().unwrap(), [1u8; 32]);
    dd.write_identity(&Zeroizing::new([2u8; 32]), true).unwrap();
    assert_eq!(*dd.read_identity().unwrap(), [2u8; 32]);
    assert_eq!(mode(&dd.path().join(IDENTITY_FILE)), 0o600);
}

#[test]
fn identity_readable_by_others_is_refused() {
    let (_tmp, dd) = fresh();
    dd.write_identity(&Zeroizing::new([1u8; 32]), false)
        .unwrap();
    let path = dd.path().join(IDENTITY_FILE);
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
    let err = dd.read_identity().unwrap_err();
    assert!(
        matches!(
            err,
            StateError::Private(PrivateError::Insecure {
                mode: 0o644,
                dir: false,
                ..
            })
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("chmod 600"), "{err}");
}

#[test]
fn missing_and_wrong_length_identity_are_distinct_errors() {
    let (_tmp, dd) = fresh();
    assert!(matches!(
        dd.read_identity(),
        Err(StateError::NoIdentity { .. })
    ));
    let path = dd.path().join(IDENTITY_FILE);
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .unwrap();
    f.write_all(&[0u8; 31]).unwrap();
    drop(f);
    assert!(matches!(
        dd.read_identity(),
        Err(StateError::Private(PrivateError::WrongLength {
            expected: 32,
            found: 31,
            ..
        }))
    ));
}

#[test]
fn symlinked_identity_is_refused() {
    let (tmp, dd) = fresh();
    let elsewhere = tmp.path().join("seed");
    fs::write(&elsewhere, [0u8; 32]).unwrap();
    fs::set_permissions(&elsewhere, fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::symlink(&elsewhere, dd.path().join(IDENTITY_FILE)).unwrap();
    assert!(matches!(
        dd.read_identity(),
        Err(StateError::Private(PrivateError::NotAFile(_)))
    ));
}

#[test]
fn atomic_writes_leave_no_temp_files_and_are_owner_only() {
    let (_tmp, dd) = fresh();
    // A temp file left by a "crash" is cleaned up by the next write of that file.
    fs::write(dd.path().join(".state.json.tmp"), b"half a fi").unwrap();
    dd.write_identity(&Zeroizing::new([3u8; 32]), false)
        .unwrap();
    let mut contacts = Contacts::new();
    contacts.add("alice", "allium1alice").unwrap();
    dd.save_contacts(&contacts).unwrap();
    dd.save_state(&ClientState::default()).unwrap();
    dd.save_state(&ClientState::default()).unwrap();
    dd.write_roster(b"roster v1").unwrap();
    dd.write_roster(b"roster v2").unwrap();
    dd.append_history(&entry(1)).unwrap();
    // Beside the files, only the empty turn-taking files of atomic writes (`.NAME.lock`).
    let (turns, files): (Vec<String>, Vec<String>) = names(dd.path())
        .into_iter()
        .partition(|n| n.starts_with('.') && n.ends_with(".lock"));
    for turn in &turns {
        assert_eq!(
            fs::metadata(dd.path().join(turn)).unwrap().len(),
            0,
            "{turn}"
        );
    }
    assert_eq!(
        files,
        [
            CONTACTS_FILE,
            HISTORY_FILE,
            IDENTITY_FILE,
            ROSTER_FILE,
            STATE_FILE
        ]
    );
    for name in names(dd.path()) {
        assert_eq!(mode(&dd.path().join(&name)), 0o600, "{name}");
    }
    assert_eq!(dd.read_roster().unwrap().unwrap(), b"roster v2");
}

#[test]
fn roster_is_optional_and_capped() {
    let (_tmp, dd) = fresh();
    assert_eq!(dd.read_roster().unwrap(), None);
    let big = vec![0u8; MAX_ROSTER_BYTES as usize + 1];
    dd.write_roster(&big).unwrap();
    assert!(matches!(
        dd.read_roster(),
        Err(StateError::TooLarge { limit, .. }) if limit == MAX_ROSTER_BYTES
    ));
    dd.write_roster(&big[1..]).unwrap();
    assert_eq!(dd.read_roster().unwrap().unwrap().len(), big.len() - 1);
}

#[test]
fn seen_sets_are_bounded_and_evict_oldest_first() {
    let id = |i: usize| {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&(i as u64).to_be_bytes());
        b
    };
    let hash = |i: usize| {
        let mut b = [0xaau8; 32];
        b[..8].copy_from_slice(&(i as u64).to_be_bytes());
        b
    };
    let mut s = ClientState::default();
    for i in 0..MAX_SEEN {
        assert!(s.mark_seen_id(&id(i)));
        assert!(s.mark_seen_hash(&hash(i)));
    }
    // A repeat is not new and keeps its place: 0 is still the oldest.
    assert!(!s.mark_seen_id(&id(0)));
    assert!(s.seen_id(&id(0)));
    assert_eq!(s.seen_ids().len(), MAX_SEEN);
    for i in MAX_SEEN..MAX_SEEN + 3 {
        s.mark_seen_id(&id(i));
        s.mark_seen_hash(&hash(i));
    }
    assert_eq!(s.seen_ids().len(), MAX_SEEN);
    assert_eq!(s.seen_hashes().len(), MAX_SEEN);
    for i in 0..3 {
        assert!(!s.seen_id(&id(i)), "{i} should be evicted");
        assert!(!s.seen_hash(&hash(i)), "{i} should be evicted");
    }
    for i in 3..MAX_SEEN + 3 {
        assert!(s.seen_id(&id(i)));
        assert!(s.seen_hash(&hash(i)));
    }
    assert_eq!(s.seen_ids().next(), Some(&id(3)));

    // The order survives a save and load, so eviction continues where it was.
    let (_tmp, dd) = fresh();
    dd.save_state(&s).unwrap();
    let mut loaded = dd.load_state().unwrap();
    assert_eq!(loaded, s);
    loaded.mark_seen_id(&id(MAX_SEEN + 3));
    assert!(!loaded.seen_id(&id(3)));
    assert!(loaded.seen_id(&id(4)));
}

#[test]
fn oversized_seen_list_on_disk_keeps_the_newest() {
    let (_tmp, dd) = fresh();
    let ids: Vec<String> = (0..MAX_SEEN as u64 + 10)
        .map(|i| {
            let mut b = [0u8; 16];
            b[8..].copy_from_slice(&i.to_be_bytes());
            hex::encode(b)
        })
        .collect();
    let json = serde_json::json!({ "version": 1, "seen_ids": ids });
    fs::write(dd.path().join(STATE_FILE), json.to_string()).unwrap();
    let s = dd.load_state().unwrap();
    assert_eq!(s.seen_ids().len(), MAX_SEEN);
    let mut first = [0u8; 16];
    first[8..].copy_from_slice(&10u64.to_be_bytes());
    assert_eq!(s.seen_ids().next(), Some(&first));
}

#[test]
fn cursor_guards_roster_version_and_clock_round_trip() {
    let (_tmp, dd) = fresh();
    assert_eq!(dd.load_state().unwrap(), ClientState::default());
    let mut s = ClientState::default();
    let mailbox = [0x11u8; 32];
    let cursor = SavedCursor {
        timestamp: 1_700_000_000_123,
        hash: [0xfe; 32],
    };
    assert_eq!(s.cursor(&mailbox), None);
    s.set_cursor(&mailbox, cursor);
    let guards = vec![
        Guard {
            identity: [1; 32],
            chosen_at_ms: 5,
        },
        Guard {
            identity: [2; 32],
            chosen_at_ms: 6,
        },
    ];
    s.set_guards(guards.clone());
    s.set_roster_version(42);
    s.set_clock_offset_ms(-1500);
    dd.save_state(&s).unwrap();

    let loaded = dd.load_state().unwrap();
    assert_eq!(loaded.cursor(&mailbox), Some(cursor));
    assert_eq!(loaded.cursor(&[0u8; 32]), None);
    assert_eq!(loaded.guards(), guards.as_slice());
    assert_eq!(loaded.roster_version(), Some(42));
    assert_eq!(loaded.clock_offset_ms(), -1500);
    assert_eq!(loaded, s);

    // Hex in the file, as documented.
    let text = fs::read_to_string(dd.path().join(STATE_FILE)).unwrap();
    assert!(text.contains(&hex::encode([0xfe; 32])), "{text}");
    assert!(text.contains(&hex::encode([0x11; 32])), "{text}");
}

#[test]
fn damaged_state_json_is_a_typed_error() {
    let (_tmp, dd) = fresh();
    let path = dd.path().join(STATE_FILE);
    for bad in [
        &b"{\"version\": 1, \"seen_ids\": [\"zz\"]}"[..],
        b"{\"version\": 1, \"seen_ids\": [\"00\"]}",
        b"{\"version\": 1, \"guards\": [{\"identity\": 5}]}",
        b"{\"versio",
        b"\xff\xfe garbage",
        b"",
    ] {
        fs::write(&path, bad).unwrap();
        let err = dd.load_state().unwrap_err();
        assert!(
            matches!(err, StateError::Corrupt { .. }),
            "{:?}: {err:?}",
            String::from_utf8_lossy(bad)
        );
    }
    fs::write(&path, b"{\"version\": 2}").unwrap();
    assert!(matches!(
        dd.load_state(),
        Err(StateError::UnsupportedVersion { found: 2, .. })
    ));
}

#[test]
fn contacts_add_remove_and_persist() {
    let (_tmp, dd) = fresh();
    assert!(dd.contacts().unwrap().is_empty());
    let mut c = Contacts::new();
    c.add("bob", "allium1bob").unwrap();
    c.add("alice", "allium1alice").unwrap();
    c.add("a.b-c_9", "allium1x").unwrap();
    assert!(matches!(
        c.add("bob", "allium1other"),
        Err(StateError::DuplicateContact { .. })
    ));
    assert_eq!(c.get("bob"), Some("allium1bob"));
    assert_eq!(
        c.replace("bob", "allium1bob2").unwrap().as_deref(),
        Some("allium1bob")
    );
    dd.save_contacts(&c).unwrap();

    let mut loaded = dd.contacts().unwrap();
    assert_eq!(loaded, c);
    let order: Vec<_> = loaded.iter().map(|(n, _)| n.to_owned()).collect();
    assert_eq!(order, ["a.b-c_9", "alice", "bob"]);
    assert_eq!(loaded.remove("alice").unwrap(), "allium1alice");
    assert!(matches!(
        loaded.remove("alice"),
        Err(StateError::NoSuchContact { .. })
    ));
    assert_eq!(loaded.len(), 2);
}

#[test]
fn contact_names_are_validated() {
    let long = "x".repeat(33);
    for ok in ["a", "Bob_2", "x.y-z", &"x".repeat(32)] {
        validate_contact_name(ok).unwrap();
    }
    for bad in [
        "",
        "has space",
        "sl/ash",
        "ünï",
        "a\nb",
        "=",
        "\"q\"",
        &long,
    ] {
        assert!(
            matches!(
                validate_contact_name(bad),
                Err(StateError::InvalidContactName { .. })
            ),
            "{bad:?}"
        );
        let mut c = Contacts::new();
        assert!(c.add(bad, "allium1x").is_err(), "{bad:?}");
        assert!(c.replace(bad, "allium1x").is_err(), "{bad:?}");
    }
}

#[test]
fn hand_edited_contacts_with_a_bad_name_are_refused() {
    let (_tmp, dd) = fresh();
    let path = dd.path().join(CONTACTS_FILE);
    fs::write(&path, "[contacts]\n\"bad name\" = \"allium1x\"\n").unwrap();
    assert!(matches!(dd.contacts(), Err(StateError::Corrupt { .. })));
    fs::write(&path, "[contacts]\nok = 5\n").unwrap();
    assert!(matches!(dd.contacts(), Err(StateError::Corrupt { .. })));
    fs::write(&path, "# nothing yet\n").unwrap();
    assert!(dd.contacts().unwrap().is_empty());
}

#[test]
fn history_returns_the_last_entries_oldest_first() {
    let (_tmp, dd) = fresh();
    assert!(dd.history(10).unwrap().is_empty());
    for i in 0..25 {
        dd.append_history(&entry(i)).unwrap();
    }
    let last = dd.history(10).unwrap();
    assert_eq!(last, (15..25).map(entry).collect::<Vec<_>>());
    assert_eq!(dd.history(100).unwrap().len(), 25);
    assert!(dd.history(0).unwrap().is_empty());
}

#[test]
fn history_spanning_many_read_chunks() {
    let (_tmp, dd) = fresh();
    // Entries of ~10 KB, so the backwards reader crosses 64 KiB chunk edges mid-line.
    let big = |i: u64| HistoryEntry {
        text: format!("{i}:{}", "y".repeat(10_000 + i as usize)),
        ..entry(i)
    };
    for i in 0..30 {
        dd.append_history(&big(i)).unwrap();
    }
    assert_eq!(
        dd.history(30).unwrap(),
        (0..30).map(big).collect::<Vec<_>>()
    );
    assert_eq!(
        dd.history(7).unwrap(),
        (23..30).map(big).collect::<Vec<_>>()
    );
}

#[test]
fn torn_last_history_line_is_skipped_and_appending_continues() {
    let (_tmp, dd) = fresh();
    for i in 0..3 {
        dd.append_history(&entry(i)).unwrap();
    }
    // A crash mid-append: half a line, no newline.
    let path = dd.path().join(HISTORY_FILE);
    let mut f = OpenOptions::new().append(true).open(&path).unwrap();
    f.write_all(br#"{"direction":"sent","peer":"allium1"#)
        .unwrap();
    drop(f);
    assert_eq!(
        dd.history(10).unwrap(),
        (0..3).map(entry).collect::<Vec<_>>()
    );
    assert_eq!(dd.history(1).unwrap(), vec![entry(2)]);

    // The next append starts on a fresh line, so it is not swallowed by the torn one.
    dd.append_history(&entry(3)).unwrap();
    assert_eq!(
        dd.history(10).unwrap(),
        (0..4).map(entry).collect::<Vec<_>>()
    );
}

#[test]
fn overlong_history_line_is_skipped() {
    let (_tmp, dd) = fresh();
    dd.append_history(&entry(0)).unwrap();
    let path = dd.path().join(HISTORY_FILE);
    let mut f = OpenOptions::new().append(true).open(&path).unwrap();
    f.write_all(&vec![b'z'; 3 << 20]).unwrap();
    f.write_all(b"\n").unwrap();
    drop(f);
    dd.append_history(&entry(1)).unwrap();
    assert_eq!(dd.history(10).unwrap(), vec![entry(0), entry(1)]);

    let huge = HistoryEntry {
        text: "x".repeat(2 << 20),
        ..entry(2)
    };
    assert!(matches!(
        dd.append_history(&huge),
        Err(StateError::TooLarge { .. })
    ));
}

#[test]
fn lock_is_exclusive_until_dropped() {
    let (_tmp, dd) = fresh();
    let guard = dd.lock().unwrap();
    // A second opener of the same directory (as another process would be) is refused.
    let other = DataDir::open(dd.path()).unwrap();
    assert!(matches!(other.lock(), Err(StateError::Locked { .. })));
    assert!(matches!(dd.lock(), Err(StateError::Locked { .. })));
    drop(guard);
    let again = other.lock().unwrap();
    assert!(again.path().ends_with("lock"));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn arbitrary_files_never_panic_the_loaders(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let (_tmp, dd) = fresh();
        fs::write(dd.path().join(STATE_FILE), &bytes).unwrap();
        fs::write(dd.path().join(CONTACTS_FILE), &bytes).unwrap();
        fs::write(dd.path().join(HISTORY_FILE), &bytes).unwrap();
        fs::write(dd.path().join(ROSTER_FILE), &bytes).unwrap();
        let _ = dd.load_state();
        let _ = dd.contacts();
        let _ = dd.history(5).unwrap();
        prop_assert_eq!(dd.read_roster().unwrap().unwrap(), bytes);
    }
}

/// A group message's history line (`whitepaper/groups.md` §13.5) is a history entry with two
/// more fields: a reader of plain entries sees it as a message of the conversation named by
/// its peer (the group), and the whole line gives the group's name and the writer back.
#[test]
fn group_history_lines_read_as_entries_of_the_group() {
    use allium_client::state::GroupHistoryEntry;
    let (_tmp, dd) = fresh();
    dd.append_history(&entry(1)).unwrap();
    let group = GroupHistoryEntry {
        entry: HistoryEntry {
            peer: "allium1group".into(),
            ..entry(2)
        },
        group: "club".into(),
        from: "allium1writer".into(),
    };
    dd.append_group_history(&group).unwrap();
    let read = dd.history(10).unwrap();
    assert_eq!(read.len(), 2);
    assert_eq!(read[1], group.entry);
    let text = fs::read_to_string(dd.path().join("history.jsonl")).unwrap();
    let last: GroupHistoryEntry = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert_eq!(last, group);
}

#[test]
fn group_lines_read_back_as_group_lines_and_plain_lines_do_not() {
    use allium_client::state::{Direction, GroupHistoryEntry};
    let (_tmp, dd) = fresh();
    let plain = HistoryEntry {
        direction: Direction::Received,
        peer: "allium1peer".into(),
        timestamp_ms: 1,
        msg_id: [1; 16],
        text: "plain".into(),
        delivery: None,
    };
    dd.append_history(&plain).unwrap();
    let group = GroupHistoryEntry {
        entry: HistoryEntry {
            msg_id: [2; 16],
            text: "in the group".into(),
            peer: "allium1group".into(),
            ..plain.clone()
        },
        group: "club".into(),
        from: "allium1writer".into(),
    };
    dd.append_group_history(&group).unwrap();
    assert_eq!(dd.history(10).unwrap().len(), 2);
    assert_eq!(dd.history_as::<GroupHistoryEntry>(10).unwrap(), vec![group]);
}
