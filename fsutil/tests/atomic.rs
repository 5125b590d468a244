//! Atomic replacement with several writers of one file at once, as a `listen` and a `send` of
//! one data directory are: every write succeeds and the file always holds one whole write.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::{Arc, Barrier};

use allium_fsutil::{read_private, write_atomic};

#[test]
fn concurrent_writers_of_one_file_all_succeed_and_leave_a_whole_write() {
    const WRITERS: usize = 6;
    const WRITES: usize = 60;
    let dir = tempfile::tempdir().unwrap();
    let start = Arc::new(Barrier::new(WRITERS));
    let threads: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (dir, start) = (dir.path().to_owned(), start.clone());
            std::thread::spawn(move || {
                start.wait();
                for i in 0..WRITES {
                    let bytes = vec![w as u8; 1_000 + i];
                    write_atomic(&dir, "keys.bin", &bytes, true)
                        .unwrap_or_else(|e| panic!("writer {w}, write {i}: {e}"));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let held = read_private(&dir.path().join("keys.bin"), 1 << 20)
        .unwrap()
        .expect("the file exists");
    assert_eq!(
        held.len(),
        1_000 + WRITES - 1,
        "the last write of some writer"
    );
    assert!(
        held.iter().all(|b| *b == held[0]),
        "one writer's bytes only"
    );
}
