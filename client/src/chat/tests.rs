//! The chat's screens drawn on ratatui's `TestBackend`, and what keys and events do to the
//! model.

use ratatui::Terminal;
use ratatui::backend::TestBackend;
use ratatui::buffer::Buffer;
use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use ratatui::style::Color;

use super::keys::Keymap;
use super::model::{Focus, Model, Out};
use super::text::{Clock, char_width};
use super::view::{self, Theme};
use crate::app::{Command, Event, NetworkState, Reach, Transfer};
use crate::identity::{Address, Identity};
use crate::state::{Contacts, Delivery, Direction, HistoryEntry, ReadMark, ReadMarks};

const T0: u64 = 1_700_000_000_000;

fn address(seed: u8) -> Address {
    Identity::from_seed(&[seed; 32]).address()
}

fn entry(peer: &Address, id: u8, direction: Direction, text: &str) -> HistoryEntry {
    HistoryEntry {
        direction,
        peer: peer.to_string(),
        timestamp_ms: T0 + u64::from(id) * 60_000,
        msg_id: [id; 16],
        text: text.to_owned(),
        delivery: match direction {
            Direction::Sent => Some(Delivery::Sending),
            Direction::Received => None,
        },
    }
}

fn online() -> Event {
    Event::Network(NetworkState {
        reach: Reach::Online,
        roster_version: Some(7),
        guards_up: Some(3),
        guards: 3,
        clock_offset_ms: -4,
    })
}

/// Alice's chat: Bob a verified contact, Carol a contact, and a stranger who wrote.
struct Fixture {
    model: Model,
    bob: Address,
    carol: Address,
    stranger: Address,
}

fn fixture() -> Fixture {
    let me = address(1);
    let (bob, carol, stranger) = (address(2), address(3), address(4));
    let mut model = Model::new(me, Clock::new(time::UtcOffset::UTC), Keymap::default());
    model.now_ms = T0 + 3_600_000;
    let mut contacts = Contacts::new();
    contacts.add("bob", &bob.to_string()).unwrap();
    contacts.add("carol", &carol.to_string()).unwrap();
    let number =
        crate::session::safety_number(me.public_key().as_bytes(), bob.public_key().as_bytes());
    contacts.set_verified("bob", &number).unwrap();
    model.on_event(Event::Contacts(contacts));
    model.on_event(online());
    Fixture {
        model,
        bob,
        carol,
        stranger,
    }
}

fn draw(model: &mut Model, w: u16, h: u16, theme: Theme) -> Buffer {
    let mut t = Terminal::new(TestBackend::new(w, h)).unwrap();
    t.draw(|f| view::draw(f, model, &theme)).unwrap();
    t.backend().buffer().clone()
}

/// Row `y` as text: a wide character once, without the blank cell it covers.
fn row(buf: &Buffer, y: u16) -> String {
    let mut out = String::new();
    let mut skip = 0;
    for x in 0..buf.area.width {
        if skip > 0 {
            skip -= 1;
            continue;
        }
        let s = buf[(x, y)].symbol();
        skip = s.chars().map(char_width).sum::<usize>().saturating_sub(1);
        out.push_str(s);
    }
    out
}

fn screen(buf: &Buffer) -> String {
    (0..buf.area.height)
        .map(|y| row(buf, y))
        .collect::<Vec<_>>()
        .join("\n")
}

fn key(code: KeyCode) -> KeyEvent {
    KeyEvent::new(code, KeyModifiers::NONE)
}

fn ctrl(c: char) -> KeyEvent {
    KeyEvent::new(KeyCode::Char(c), KeyModifiers::CONTROL)
}

fn type_text(model: &mut Model, text: &str) -> Vec<Out> {
    text.chars()
        .flat_map(|c| model.on_key(key(KeyCode::Char(c))))
        .collect()
}

#[test]
fn the_list_shows_conversations_unread_counts_and_times_at_80x24() {
    let mut f = fixture();
    f.model.on_event(Event::History(vec![
        entry(&f.carol, 1, Direction::Received, "lunch?"),
        entry(&f.stranger, 2, Direction::Received, "hello, it is me"),
        entry(&f.bob, 3, Direction::Received, "hi alice"),
        entry(&f.bob, 4, Direction::Received, "are you there?"),
    ]));
    // Carol's conversation was read up to her message.
    let mut marks = ReadMarks::default();
    marks.set(
        &f.carol.to_string(),
        ReadMark {
            msg_id: [1; 16],
            timestamp_ms: T0,
        },
    );
    f.model.on_event(Event::ReadMarks(marks));
    let buf = draw(&mut f.model, 80, 24, Theme::new(true));
    let s = screen(&buf);
    assert_eq!(buf.area.width, 80);
    // Most recent first; Bob (open, so read) is verified; the stranger by address, unread.
    let bob = row(&buf, 1);
    assert!(bob.contains("›bob ✓") && bob.contains("22:16"), "{s}");
    let stranger = row(&buf, 2);
    assert!(
        stranger.contains("allium1") && stranger.contains(" 1 22:15"),
        "{s}"
    );
    let carol = row(&buf, 3);
    assert!(carol.contains("carol") && !carol.contains(" 1 "), "{s}");
    assert!(s.contains("bob ✓ verified"), "{s}");
    assert!(s.contains("are you there?"), "{s}");
    let status = row(&buf, 23);
    assert!(
        status.contains("● online · roster v7 · guards 3/3 · clock -4 ms"),
        "{status}"
    );
    assert!(status.trim_end().ends_with("? help"), "{status}");
}

#[test]
fn the_history_shows_each_delivery_state() {
    let mut f = fixture();
    let mut stored = entry(&f.bob, 2, Direction::Sent, "stored one");
    stored.delivery = Some(Delivery::Stored {
        holders: 2,
        members: 3,
    });
    f.model.on_event(Event::History(vec![
        entry(&f.bob, 1, Direction::Received, "from bob"),
        stored,
        entry(&f.bob, 3, Direction::Sent, "on its way"),
        entry(&f.bob, 4, Direction::Sent, "stuck"),
    ]));
    f.model.on_event(Event::Failed {
        msg_id: Some([4; 16]),
        queued: true,
        error: "the network could not be reached".into(),
    });
    let buf = draw(&mut f.model, 100, 30, Theme::new(true));
    let s = screen(&buf);
    assert!(s.contains("22:14 bob from bob"), "{s}");
    assert!(
        s.contains("22:15 you stored one  ✓ stored by 2 of 3"),
        "{s}"
    );
    assert!(s.contains("22:16 you on its way  · sending…"), "{s}");
    assert!(
        s.contains("you stuck  ✗ failed (Ctrl-R retries): the network could not be"),
        "{s}"
    );
    // The retry key flushes the outbox, where the failed message waits.
    f.model.focus = Focus::Input;
    let out = f.model.on_key(ctrl('r'));
    assert!(
        matches!(out.as_slice(), [Out::Command(Command::Flush)]),
        "{out:?}"
    );
    let s = screen(&draw(&mut f.model, 100, 30, Theme::new(true)));
    assert!(s.contains("you stuck  · sending…"), "{s}");
}

#[test]
fn a_send_that_never_reached_the_outbox_is_retried_with_its_text() {
    let mut f = fixture();
    f.model.on_event(Event::History(Vec::new()));
    f.model.focus = Focus::Input;
    type_text(&mut f.model, "hello bob");
    let out = f.model.on_key(key(KeyCode::Enter));
    let Some(Out::Command(Command::Send { to, text, msg_id })) = out.first().cloned() else {
        panic!("{out:?}")
    };
    assert_eq!((to, text.as_str()), (f.bob, "hello bob"));
    let s = screen(&draw(&mut f.model, 80, 24, Theme::new(true)));
    assert!(s.contains("you hello bob  · sending…"), "{s}");
    f.model.on_event(Event::Failed {
        msg_id: Some(msg_id),
        queued: false,
        error: "bob has published no keys".into(),
    });
    let s = screen(&draw(&mut f.model, 80, 24, Theme::new(true)));
    assert!(s.contains("✗ failed (Ctrl-R retries): bob has"), "{s}");
    let out = f.model.on_key(ctrl('r'));
    assert!(
        matches!(out.as_slice(), [Out::Command(Command::Send { msg_id: m, .. })] if *m == msg_id),
        "the same message again: {out:?}"
    );
}

#[test]
fn the_input_holds_a_multi_line_draft() {
    let mut f = fixture();
    f.model.on_event(Event::History(Vec::new()));
    f.model.on_key(key(KeyCode::Enter));
    assert_eq!(f.model.focus, Focus::Input);
    type_text(&mut f.model, "first line");
    f.model
        .on_key(KeyEvent::new(KeyCode::Enter, KeyModifiers::ALT));
    type_text(&mut f.model, "second line");
    f.model.on_key(ctrl('j'));
    type_text(&mut f.model, "third");
    f.model.on_key(ctrl('w'));
    type_text(&mut f.model, "3rd");
    let mut t = Terminal::new(TestBackend::new(80, 24)).unwrap();
    t.draw(|fr| view::draw(fr, &mut f.model, &Theme::new(true)))
        .unwrap();
    let buf = t.backend().buffer().clone();
    let s = screen(&buf);
    let lines: Vec<&str> = s.lines().collect();
    // The input box grew to three lines above the status line.
    assert!(lines[18].contains("Message to bob"), "{s}");
    assert!(lines[19].contains("│first line"), "{s}");
    assert!(lines[20].contains("│second line"), "{s}");
    assert!(lines[21].contains("│3rd"), "{s}");
    assert!(lines[22].contains("Alt-Enter new line"), "{s}");
    // After "3rd", inside the box right of the 20-column list.
    let cursor = t.get_cursor_position().unwrap();
    assert_eq!((cursor.x, cursor.y), (20 + 1 + 3, 21));
    assert_eq!(f.model.input.text(), "first line\nsecond line\n3rd");
}

#[test]
fn help_lists_the_keys_in_force() {
    let mut f = fixture();
    f.model.on_event(Event::History(Vec::new()));
    f.model.on_key(key(KeyCode::Char('?')));
    let s = screen(&draw(&mut f.model, 80, 24, Theme::new(true)));
    assert!(s.contains("Keys and commands"), "{s}");
    assert!(s.contains("Ctrl-C, q (list)"), "{s}");
    assert!(s.contains("Ctrl-X"), "{s}");
    assert!(s.contains("edit the draft in $EDITOR"), "{s}");
    // Scrolled to the end: the commands.
    for _ in 0..40 {
        f.model.on_key(key(KeyCode::Down));
    }
    let s = screen(&draw(&mut f.model, 80, 24, Theme::new(true)));
    assert!(s.contains("/add NAME ADDRESS"), "{s}");
    assert!(s.contains("/send-file"), "{s}");
    f.model.on_key(key(KeyCode::Esc));
    assert!(f.model.overlay.is_none());
}

#[test]
fn an_unreachable_network_is_said_plainly() {
    let mut f = fixture();
    f.model.on_event(Event::History(Vec::new()));
    f.model.on_event(Event::Network(NetworkState {
        reach: Reach::Unreachable("no directory authority or node answered".into()),
        roster_version: None,
        guards_up: None,
        guards: 0,
        clock_offset_ms: 0,
    }));
    let buf = draw(&mut f.model, 80, 24, Theme::new(true));
    let status = row(&buf, 23);
    assert!(
        status.starts_with(" ✗ network unreachable: no directory authority or node answered"),
        "{status}"
    );
    assert_eq!(buf[(1, 23)].fg, Color::Red);
    let wide = screen(&draw(&mut f.model, 140, 30, Theme::new(true)));
    assert!(
        wide.contains("answered — retrying; messages wait in the outbox"),
        "{wide}"
    );
}

#[test]
fn wide_characters_and_emoji_keep_the_borders_in_place() {
    let mut f = fixture();
    let text = "日本語のテキスト 🦀🎉 ok ".repeat(8);
    f.model.on_event(Event::History(vec![entry(
        &f.bob,
        1,
        Direction::Received,
        &text,
    )]));
    let buf = draw(&mut f.model, 80, 24, Theme::new(true));
    let s = screen(&buf);
    assert!(s.contains("bob 日本語のテキスト 🦀🎉 ok"), "{s}");
    // Every row is 80 cells wide and the history's right border is in the last column.
    for y in 1..10 {
        assert_eq!(buf[(79, y)].symbol(), "│", "row {y}: {}", row(&buf, y));
    }
    let wrapped = (1..10).filter(|&y| row(&buf, y).contains("🦀🎉")).count();
    assert!(wrapped >= 3, "the message wraps over several rows:\n{s}");
}

#[test]
fn escape_bell_and_carriage_return_bytes_are_drawn_harmless() {
    let mut f = fixture();
    f.model.on_event(Event::History(vec![entry(
        &f.stranger,
        1,
        Direction::Received,
        "evil\u{1b}[2J\u{7}\rdone\u{9b}31m",
    )]));
    // The stranger's conversation is the only one with messages: open at the start.
    assert_eq!(f.model.open_index(), Some(0));
    let buf = draw(&mut f.model, 80, 24, Theme::new(true));
    let s = screen(&buf);
    assert!(s.contains("evil␛[2J␇␍done\u{fffd}31m"), "{s}");
    for cell in buf.content() {
        assert!(
            !cell.symbol().chars().any(char::is_control),
            "{:?}",
            cell.symbol()
        );
    }
}

#[test]
fn colours_are_foreground_only_and_none_under_no_color() {
    let mut f = fixture();
    f.model.on_event(Event::History(vec![entry(
        &f.bob,
        1,
        Direction::Received,
        "hi",
    )]));
    let coloured = draw(&mut f.model, 80, 24, Theme::new(true));
    assert!(coloured.content().iter().all(|c| c.bg == Color::Reset));
    assert!(coloured.content().iter().any(|c| c.fg != Color::Reset));
    let plain = draw(&mut f.model, 80, 24, Theme::new(false));
    assert!(
        plain
            .content()
            .iter()
            .all(|c| c.fg == Color::Reset && c.bg == Color::Reset)
    );
    assert_eq!(
        screen(&plain),
        screen(&coloured),
        "the same text either way"
    );
}

#[test]
fn a_resize_redraws_to_the_new_size() {
    let mut f = fixture();
    f.model.on_event(Event::History(vec![entry(
        &f.bob,
        1,
        Direction::Received,
        "hi",
    )]));
    let mut t = Terminal::new(TestBackend::new(80, 24)).unwrap();
    t.draw(|fr| view::draw(fr, &mut f.model, &Theme::new(true)))
        .unwrap();
    t.backend_mut().resize(100, 30);
    t.draw(|fr| view::draw(fr, &mut f.model, &Theme::new(true)))
        .unwrap();
    let buf = t.backend().buffer().clone();
    assert_eq!(buf[(99, 0)].symbol(), "┐");
    assert!(row(&buf, 29).contains("● online"));
}

#[test]
fn a_message_in_another_conversation_rings_and_counts_the_open_one_is_read() {
    let mut f = fixture();
    f.model.on_event(Event::History(vec![entry(
        &f.bob,
        1,
        Direction::Received,
        "old",
    )]));
    assert_eq!(
        f.model.open().map(|c| c.peer.clone()),
        Some(f.bob.to_string())
    );
    let out = f.model.on_event(Event::History(vec![
        entry(&f.bob, 1, Direction::Received, "old"),
        entry(&f.carol, 2, Direction::Received, "new from carol"),
        entry(&f.bob, 3, Direction::Received, "new from bob"),
    ]));
    assert!(out.iter().any(|o| matches!(o, Out::Bell)), "{out:?}");
    // Bob's is open, so read (and saved through the task); Carol's counts one.
    assert!(
        out.iter().any(|o| matches!(
            o,
            Out::Command(Command::MarkRead { mark, .. }) if mark.msg_id == [3; 16]
        )),
        "{out:?}"
    );
    let unread: Vec<(String, usize)> = f
        .model
        .conversations()
        .iter()
        .map(|c| (c.title().to_owned(), c.unread))
        .collect();
    assert_eq!(unread, vec![("bob".into(), 0), ("carol".into(), 1)]);
    // Opening Carol's reads it.
    let out = f.model.on_key(key(KeyCode::Down));
    assert!(
        matches!(out.as_slice(), [Out::Command(Command::MarkRead { .. })]),
        "{out:?}"
    );
    assert!(f.model.conversations().iter().all(|c| c.unread == 0));
}

#[test]
fn commands_add_and_verify_contacts() {
    let mut f = fixture();
    f.model.on_event(Event::History(Vec::new()));
    f.model.focus = Focus::Input;
    type_text(&mut f.model, &format!("/add dave {}", address(9)));
    let out = f.model.on_key(key(KeyCode::Enter));
    assert!(
        matches!(out.as_slice(), [Out::Command(Command::AddContact { name, .. })] if name == "dave"),
        "{out:?}"
    );
    // The text a QR code of `allium whoami --qr` holds (upper case), as `contacts add` takes it.
    type_text(
        &mut f.model,
        &format!("/add frank {}", address(10).to_uppercase()),
    );
    let out = f.model.on_key(key(KeyCode::Enter));
    assert!(
        matches!(
            out.as_slice(),
            [Out::Command(Command::AddContact { name, address: a })]
                if name == "frank" && *a == address(10)
        ),
        "{out:?}"
    );
    type_text(&mut f.model, "/add gina allium1notanaddress");
    assert!(f.model.on_key(key(KeyCode::Enter)).is_empty());
    let s = screen(&draw(&mut f.model, 80, 24, Theme::new(true)));
    assert!(s.contains("bad address"), "{s}");
    // A stranger who wrote is named with /add NAME.
    f.model.on_event(Event::History(vec![entry(
        &f.stranger,
        1,
        Direction::Received,
        "hi, it's erin",
    )]));
    f.model.on_key(key(KeyCode::Esc));
    let at = f
        .model
        .conversations()
        .iter()
        .position(|c| c.name.is_none())
        .unwrap();
    while f.model.open_index() != Some(at) {
        f.model.on_key(key(KeyCode::Up));
    }
    f.model.on_key(key(KeyCode::Enter));
    type_text(&mut f.model, "/add erin");
    let out = f.model.on_key(key(KeyCode::Enter));
    assert!(
        matches!(
            out.as_slice(),
            [Out::Command(Command::AddContact { name, address })]
                if name == "erin" && *address == f.stranger
        ),
        "{out:?}"
    );
    type_text(&mut f.model, "/verify carol");
    f.model.on_key(key(KeyCode::Enter));
    let s = screen(&draw(&mut f.model, 80, 24, Theme::new(true)));
    assert!(s.contains("Safety number with carol"), "{s}");
    let number = crate::session::safety_number(
        address(1).public_key().as_bytes(),
        f.carol.public_key().as_bytes(),
    );
    assert!(s.contains(&crate::session::grouped(&number)[..11]), "{s}");
    let out = f.model.on_key(key(KeyCode::Char('y')));
    let Some(Out::Command(Command::Verify {
        name,
        safety_number,
    })) = out.first()
    else {
        panic!("{out:?}");
    };
    assert_eq!((name.as_str(), safety_number), ("carol", &number));
    // The task records it and sends the address book back: Carol's history says verified.
    let mut book = Contacts::new();
    book.add("bob", &f.bob.to_string()).unwrap();
    book.add("carol", &f.carol.to_string()).unwrap();
    book.set_verified("carol", &number).unwrap();
    f.model.on_event(Event::Contacts(book));
    f.model.on_key(key(KeyCode::Esc));
    while f.model.open().map(|c| c.peer.clone()) != Some(f.carol.to_string()) {
        f.model.on_key(key(KeyCode::Down));
    }
    let s = screen(&draw(&mut f.model, 80, 24, Theme::new(true)));
    assert!(s.contains("carol ✓ verified"), "{s}");
    f.model.on_key(key(KeyCode::Enter));
    type_text(&mut f.model, "/quit");
    assert!(matches!(
        f.model.on_key(key(KeyCode::Enter)).as_slice(),
        [Out::Quit]
    ));
}

#[test]
fn search_finds_older_matches_in_turn() {
    let mut f = fixture();
    f.model.on_event(Event::History(vec![
        entry(&f.bob, 1, Direction::Received, "the Cake is good"),
        entry(&f.bob, 2, Direction::Received, "unrelated"),
        entry(&f.bob, 3, Direction::Received, "more cake"),
    ]));
    f.model.on_key(ctrl('f'));
    type_text(&mut f.model, "cake");
    assert_eq!(f.model.search.as_ref().and_then(|s| s.hit), Some([3; 16]));
    f.model.on_key(key(KeyCode::Enter));
    assert_eq!(f.model.search.as_ref().and_then(|s| s.hit), Some([1; 16]));
    let s = screen(&draw(&mut f.model, 80, 24, Theme::new(true)));
    assert!(s.contains("Search (Enter: older match"), "{s}");
    f.model.on_key(key(KeyCode::Esc));
    assert!(f.model.search.is_none());
}

#[test]
fn q_quits_from_the_list_and_is_typed_in_the_input() {
    let mut f = fixture();
    f.model.on_event(Event::History(Vec::new()));
    assert!(matches!(
        f.model.on_key(key(KeyCode::Char('q'))).as_slice(),
        [Out::Quit]
    ));
    f.model.on_key(key(KeyCode::Tab));
    assert!(f.model.on_key(key(KeyCode::Char('q'))).is_empty());
    assert_eq!(f.model.input.text(), "q");
    assert!(matches!(f.model.on_key(ctrl('c')).as_slice(), [Out::Quit]));
}

#[test]
fn a_file_is_sent_with_a_progress_bar_and_a_received_one_is_saved() {
    let mut f = fixture();
    f.model.on_event(Event::History(vec![entry(
        &f.bob,
        1,
        Direction::Received,
        "[file] cat.jpg (2500000 bytes)",
    )]));
    f.model.focus = Focus::Input;
    type_text(&mut f.model, "/send-file /no/such/file.pdf");
    assert!(f.model.on_key(key(KeyCode::Enter)).is_empty());
    let s = screen(&draw(&mut f.model, 80, 24, Theme::new(true)));
    assert!(s.contains("/no/such/file.pdf: not a file"), "{s}");

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("report 2024.pdf");
    std::fs::write(&path, vec![7u8; 3_000_000]).unwrap();
    type_text(&mut f.model, &format!("/send-file {}", path.display()));
    let out = f.model.on_key(key(KeyCode::Enter));
    assert!(
        matches!(
            out.as_slice(),
            [Out::Command(Command::SendFile { to, path: p })] if *to == f.bob && *p == path
        ),
        "{out:?}"
    );
    // The bar is there at once, and follows the task's reports.
    let s = screen(&draw(&mut f.model, 80, 24, Theme::new(true)));
    assert!(s.contains("↑ report 2024.pdf [ "), "{s}");
    assert!(s.contains("0% 0.0/3.0 MB"), "{s}");
    let mut t = Transfer {
        sending: true,
        name: "report 2024.pdf".into(),
        peer: f.bob.to_string(),
        bytes: 1_500_000,
        size: 3_000_000,
        outcome: None,
    };
    f.model.on_event(Event::Transfer(t.clone()));
    let mut down = Transfer {
        sending: false,
        name: "cat\u{1b}[2J.jpg".into(),
        peer: f.bob.to_string(),
        bytes: 500_000,
        size: 2_500_000,
        outcome: None,
    };
    f.model.on_event(Event::Transfer(down.clone()));
    let buf = draw(&mut f.model, 80, 24, Theme::new(true));
    let s = screen(&buf);
    assert!(
        s.contains("↑ report 2024.pdf [=========>          ]  50% 1.5/3.0 MB"),
        "{s}"
    );
    assert!(s.contains("↓ cat"), "{s}");
    assert!(s.contains("20% 0.5/2.5 MB"), "{s}");
    assert!(
        !s.contains('\u{1b}'),
        "a sender's file name cannot drive the terminal"
    );
    // The history shows the received file's line.
    assert!(s.contains("[file] cat.jpg (2500000 bytes)"), "{s}");
    // Over: the bars go, and the outcome is said.
    t.outcome = Some(Ok(String::new()));
    f.model.on_event(Event::Transfer(t));
    let s = screen(&draw(&mut f.model, 80, 24, Theme::new(true)));
    assert!(s.contains("sent report 2024.pdf"), "{s}");
    assert!(!s.contains("↑ report"), "{s}");
    down.outcome = Some(Ok("/home/me/Downloads/cat.jpg".into()));
    f.model.on_event(Event::Transfer(down));
    let s = screen(&draw(&mut f.model, 80, 24, Theme::new(true)));
    assert!(s.contains("saved cat"), "{s}");
    assert!(s.contains("to /home/me/Downloads/cat.jpg"), "{s}");
    assert!(f.model.transfers.is_empty());
}

#[test]
fn a_group_is_a_conversation_under_its_name() {
    let mut f = fixture();
    let club = address(9);
    f.model.on_event(Event::Groups(vec![(
        club.to_string(),
        "book club".to_owned(),
    )]));
    // The task prefixes another member's group message with its writer.
    f.model.on_event(Event::History(vec![
        entry(&f.bob, 1, Direction::Received, "hi alice"),
        entry(&club, 2, Direction::Received, "carol: chapter 3 tonight"),
    ]));
    let buf = draw(&mut f.model, 80, 24, Theme::new(true));
    let s = screen(&buf);
    let group = row(&buf, 1);
    assert!(
        group.contains("book club") && !group.contains("allium1"),
        "{s}"
    );
    assert!(s.contains("carol: chapter 3 tonight"), "{s}");
}
