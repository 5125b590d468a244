//! What the chat shows and how keys change it, without a terminal: events from the
//! [`crate::app`] task and key presses go in, commands for the task (and a bell, the editor,
//! quitting) come out. Rendering is [`super::view`].

use std::collections::{HashMap, HashSet};
use std::str::FromStr;

use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

use super::input::Input;
use super::keys::{Action, Key, Keymap, Section};
use super::text::Clock;
use crate::app::{Command, Event, NetworkState, Reach, Transfer};
use crate::identity::Address;
use crate::messenger::Messenger;
use crate::session;
use crate::state::{Contacts, Delivery, Direction, HistoryEntry, ReadMark, ReadMarks};

/// What the runner does for the model.
// A few of these live for one key press; boxing the command would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum Out {
    /// Give the task a command.
    Command(Command),
    /// Ring the terminal bell.
    Bell,
    /// Open `$EDITOR` on the draft.
    Editor,
    /// Save and quit.
    Quit,
}

/// Where keys go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Focus {
    /// The conversation list.
    List,
    /// The message input.
    Input,
}

/// A conversation in the list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conversation {
    /// The other party's address.
    pub peer: String,
    /// Their contact name, if they are a contact.
    pub name: Option<String>,
    /// Whether the contact is verified (and still at the verified address).
    pub verified: bool,
    /// Time of the last message (as the history records it).
    pub last_ms: Option<u64>,
    /// Received messages after the read mark.
    pub unread: usize,
}

impl Conversation {
    /// The name to show: the contact name, else the address.
    pub fn title(&self) -> &str {
        self.name.as_deref().unwrap_or(&self.peer)
    }
}

/// How far a message got, as shown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Shown {
    /// Received from the other party.
    Received,
    /// Sent, not yet acknowledged.
    Sending,
    /// Held by `holders` of the swarm's `members`.
    Stored {
        /// Members holding it.
        holders: u32,
        /// Members of the swarm.
        members: u32,
    },
    /// The last attempt failed for this reason; the retry key tries again.
    Failed(String),
}

/// One message of the open conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// Its id.
    pub msg_id: [u8; 16],
    /// Sent or received.
    pub direction: Direction,
    /// When (ms since the Unix epoch, the sender's clock).
    pub timestamp_ms: u64,
    /// The text, as written (the view neutralises it).
    pub text: String,
    /// Its state.
    pub shown: Shown,
}

/// A message sent from this chat that the history does not hold yet.
#[derive(Debug, Clone)]
struct Pending {
    msg_id: [u8; 16],
    to: Address,
    text: String,
    timestamp_ms: u64,
}

/// A box over the screen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Overlay {
    /// The keys and commands, scrolled down by this many lines.
    Help(usize),
    /// The safety number with a contact, to confirm.
    Verify {
        /// The contact.
        name: String,
        /// The number.
        number: String,
        /// Whether it is verified already.
        verified: bool,
    },
}

/// Search in the open conversation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Search {
    /// What to look for (case-insensitive).
    pub query: String,
    /// The message found, if any.
    pub hit: Option<[u8; 16]>,
}

/// The chat's state.
#[derive(Debug)]
pub struct Model {
    /// This account's address.
    pub me: Address,
    /// Times shown in local time.
    pub clock: Clock,
    /// The time now, for the list's times.
    pub now_ms: u64,
    /// Key bindings.
    pub keys: Keymap,
    /// The network state.
    pub network: NetworkState,
    /// Where keys go.
    pub focus: Focus,
    /// The draft.
    pub input: Input,
    /// History lines scrolled back from the newest (0: follow new messages).
    pub scroll: usize,
    /// The farthest the history can scroll back, as last drawn.
    pub max_scroll: usize,
    /// The search bar, when open.
    pub search: Option<Search>,
    /// A box over the screen.
    pub overlay: Option<Overlay>,
    /// One line for the person (an error, a confirmation), until the next key.
    pub notice: Option<(String, bool)>,
    /// Files on their way out or in, in the order they started.
    pub transfers: Vec<Transfer>,
    contacts: Contacts,
    /// Group addresses and their names.
    groups: HashMap<String, String>,
    history: Vec<HistoryEntry>,
    received: HashSet<[u8; 16]>,
    loaded: bool,
    marks: ReadMarks,
    pending: Vec<Pending>,
    failed: HashMap<[u8; 16], String>,
    conversations: Vec<Conversation>,
    open: Option<String>,
}

impl Model {
    /// A chat for `me`, with nothing loaded yet.
    pub fn new(me: Address, clock: Clock, keys: Keymap) -> Model {
        Model {
            me,
            clock,
            now_ms: 0,
            keys,
            network: NetworkState {
                reach: Reach::Connecting,
                roster_version: None,
                guards_up: None,
                guards: 0,
                clock_offset_ms: 0,
            },
            focus: Focus::List,
            input: Input::default(),
            scroll: 0,
            max_scroll: 0,
            search: None,
            overlay: None,
            notice: None,
            transfers: Vec::new(),
            contacts: Contacts::default(),
            groups: HashMap::new(),
            history: Vec::new(),
            received: HashSet::new(),
            loaded: false,
            marks: ReadMarks::default(),
            pending: Vec::new(),
            failed: HashMap::new(),
            conversations: Vec::new(),
            open: None,
        }
    }

    /// The conversations, most recent first, then contacts never written to.
    pub fn conversations(&self) -> &[Conversation] {
        &self.conversations
    }

    /// The open conversation.
    pub fn open(&self) -> Option<&Conversation> {
        let peer = self.open.as_deref()?;
        self.conversations.iter().find(|c| c.peer == peer)
    }

    /// Its index in [`Self::conversations`].
    pub fn open_index(&self) -> Option<usize> {
        let peer = self.open.as_deref()?;
        self.conversations.iter().position(|c| c.peer == peer)
    }

    /// The messages of the open conversation, oldest first: what the history records, with
    /// what this chat sent that it does not record yet.
    pub fn rows(&self) -> Vec<Row> {
        let Some(peer) = self.open.as_deref() else {
            return Vec::new();
        };
        let mut rows: Vec<Row> = self
            .history
            .iter()
            .filter(|e| e.peer == peer)
            .map(|e| {
                let shown = match (e.direction, e.delivery) {
                    (Direction::Received, _) => Shown::Received,
                    (Direction::Sent, Some(Delivery::Stored { holders, members })) => {
                        Shown::Stored { holders, members }
                    }
                    (Direction::Sent, _) => match self.failed.get(&e.msg_id) {
                        Some(err) => Shown::Failed(err.clone()),
                        None => Shown::Sending,
                    },
                };
                Row {
                    msg_id: e.msg_id,
                    direction: e.direction,
                    timestamp_ms: e.timestamp_ms,
                    text: e.text.clone(),
                    shown,
                }
            })
            .collect();
        rows.extend(
            self.pending
                .iter()
                .filter(|p| p.to.to_string() == peer)
                .map(|p| Row {
                    msg_id: p.msg_id,
                    direction: Direction::Sent,
                    timestamp_ms: p.timestamp_ms,
                    text: p.text.clone(),
                    shown: match self.failed.get(&p.msg_id) {
                        Some(err) => Shown::Failed(err.clone()),
                        None => Shown::Sending,
                    },
                }),
        );
        rows
    }

    fn recompute(&mut self) {
        let mut by_peer: HashMap<&str, (usize, u64, usize, Option<usize>)> = HashMap::new();
        for (i, e) in self.history.iter().enumerate() {
            let c = by_peer.entry(e.peer.as_str()).or_insert((0, 0, 0, None));
            c.0 = i;
            c.1 = e.timestamp_ms;
            if let Some(m) = self.marks.get(&e.peer) {
                if m.msg_id == e.msg_id {
                    // Everything up to here is read.
                    c.3 = Some(i);
                    c.2 = 0;
                    continue;
                }
            }
            if e.direction == Direction::Received {
                let after_mark = match (self.marks.get(&e.peer), c.3) {
                    (None, _) | (Some(_), Some(_)) => true,
                    // The marked message is older than the history read back, or missing:
                    // its time decides.
                    (Some(m), None) => e.timestamp_ms > m.timestamp_ms,
                };
                if after_mark {
                    c.2 += 1;
                }
            }
        }
        let mut name_of: HashMap<&str, &str> = self.contacts.iter().map(|(n, a)| (a, n)).collect();
        for (address, name) in &self.groups {
            name_of.entry(address.as_str()).or_insert(name.as_str());
        }
        let mut with_history: Vec<(usize, Conversation)> = by_peer
            .iter()
            .map(|(peer, (last, ms, unread, _))| {
                let name = name_of.get(peer).map(|n| (*n).to_owned());
                (*last, self.conversation(peer, name, Some(*ms), *unread))
            })
            .collect();
        with_history.sort_by_key(|c| std::cmp::Reverse(c.0));
        let mut out: Vec<Conversation> = with_history.into_iter().map(|(_, c)| c).collect();
        for (name, address) in self.contacts.iter() {
            if !by_peer.contains_key(address) {
                out.push(self.conversation(address, Some(name.to_owned()), None, 0));
            }
        }
        self.conversations = out;
        // Until the history is known, the most recent conversation is not either.
        if self.open().is_none() && self.loaded {
            self.open = self.conversations.first().map(|c| c.peer.clone());
        }
    }

    fn conversation(
        &self,
        peer: &str,
        name: Option<String>,
        last_ms: Option<u64>,
        unread: usize,
    ) -> Conversation {
        let verified = name.as_deref().is_some_and(|n| {
            self.contacts.verified(n).is_some_and(|number| {
                Address::from_str(peer).is_ok_and(|a| number == self.safety_number(&a))
            })
        });
        Conversation {
            peer: peer.to_owned(),
            name,
            verified,
            last_ms,
            unread,
        }
    }

    fn safety_number(&self, theirs: &Address) -> String {
        session::safety_number(
            self.me.public_key().as_bytes(),
            theirs.public_key().as_bytes(),
        )
    }

    /// Marks the open conversation read up to its last message, here and (through the task) in
    /// the data directory.
    fn mark_read(&mut self) -> Option<Out> {
        let conv = self.open()?;
        if conv.unread == 0 {
            return None;
        }
        let peer = conv.peer.clone();
        let last = self.history.iter().rev().find(|e| e.peer == peer)?;
        let mark = ReadMark {
            msg_id: last.msg_id,
            timestamp_ms: last.timestamp_ms,
        };
        self.marks.set(&peer, mark);
        self.recompute();
        Some(Out::Command(Command::MarkRead { peer, mark }))
    }

    fn select(&mut self, index: usize) -> Vec<Out> {
        let Some(c) = self.conversations.get(index) else {
            return Vec::new();
        };
        if self.open.as_deref() != Some(c.peer.as_str()) {
            self.open = Some(c.peer.clone());
            self.scroll = 0;
            if let Some(s) = &mut self.search {
                s.hit = None;
            }
        }
        self.mark_read().into_iter().collect()
    }

    /// Takes an event of the task.
    pub fn on_event(&mut self, event: Event) -> Vec<Out> {
        let mut out = Vec::new();
        match event {
            Event::History(history) => {
                let open = self.open.clone();
                let mut bell = false;
                for e in history
                    .iter()
                    .filter(|e| e.direction == Direction::Received)
                {
                    let new = self.received.insert(e.msg_id);
                    // The first history is what was there before: no bell for it.
                    bell |= new && self.loaded && open.as_deref() != Some(e.peer.as_str());
                }
                if bell {
                    out.push(Out::Bell);
                }
                self.loaded = true;
                let ids: HashSet<[u8; 16]> = history.iter().map(|e| e.msg_id).collect();
                self.pending.retain(|p| !ids.contains(&p.msg_id));
                for e in &history {
                    if matches!(e.delivery, Some(Delivery::Stored { .. })) {
                        self.failed.remove(&e.msg_id);
                    }
                }
                self.history = history;
                self.recompute();
                out.extend(self.mark_read());
            }
            Event::Contacts(c) => {
                self.contacts = c;
                self.recompute();
            }
            Event::Groups(g) => {
                self.groups = g.into_iter().collect();
                self.recompute();
            }
            Event::ReadMarks(m) => {
                self.marks = m;
                self.recompute();
                out.extend(self.mark_read());
            }
            Event::Network(n) => self.network = n,
            Event::Stored { msg_id, .. } => {
                self.failed.remove(&msg_id);
            }
            Event::Failed {
                msg_id: Some(id),
                error,
                ..
            } => {
                self.failed.insert(id, error);
            }
            Event::Failed {
                msg_id: None,
                error,
                ..
            } => self.notice = Some((error, true)),
            Event::Notice(n) => self.notice = Some((n, true)),
            Event::Transfer(t) => self.transfer(t),
            Event::Stopped => {}
        }
        out
    }

    fn transfer(&mut self, t: Transfer) {
        let same = |o: &Transfer| o.sending == t.sending && o.name == t.name && o.peer == t.peer;
        let at = self.transfers.iter().position(same);
        match (&t.outcome, at) {
            (None, Some(i)) => self.transfers[i] = t,
            (None, None) => self.transfers.push(t),
            (Some(outcome), _) => {
                self.transfers.retain(|o| !same(o));
                self.notice = Some(match (t.sending, outcome) {
                    (true, Ok(_)) => (format!("sent {}", t.name), false),
                    (false, Ok(path)) => (format!("saved {} to {path}", t.name), false),
                    (true, Err(e)) => (format!("{} was not sent: {e}", t.name), true),
                    (false, Err(e)) => (format!("{} was not saved: {e}", t.name), true),
                });
            }
        }
    }

    /// `/send-file PATH` (the rest of the line, so a name may hold spaces; `~/` is the home
    /// folder): sends the file to the open conversation.
    fn send_file(&mut self, path: &str) -> Vec<Out> {
        let Some(to) = self.open().and_then(|c| Address::from_str(&c.peer).ok()) else {
            self.notice = Some(("no conversation open: /add NAME ADDRESS".into(), true));
            return Vec::new();
        };
        if path.is_empty() {
            self.notice = Some(("usage: /send-file PATH".into(), true));
            return Vec::new();
        }
        let path = match (path.strip_prefix("~/"), std::env::var_os("HOME")) {
            (Some(rest), Some(home)) => std::path::PathBuf::from(home).join(rest),
            _ => std::path::PathBuf::from(path),
        };
        // Said at once; the task finds any other problem (too large, unreadable) and says so.
        if !path.is_file() {
            self.notice = Some((format!("{}: not a file", path.display()), true));
            return Vec::new();
        }
        self.transfers.push(Transfer {
            sending: true,
            name: crate::attach::file::name_of(&path),
            peer: to.to_string(),
            bytes: 0,
            size: std::fs::metadata(&path).map_or(0, |m| m.len()),
            outcome: None,
        });
        vec![Out::Command(Command::SendFile { to, path })]
    }

    /// Takes a key press.
    pub fn on_key(&mut self, event: KeyEvent) -> Vec<Out> {
        self.notice = None;
        let key = Key::from_event(&event);
        if let Some(overlay) = self.overlay.clone() {
            return self.overlay_key(overlay, &key, event);
        }
        let section = if self.search.is_some() {
            Section::Input
        } else {
            match self.focus {
                Focus::List => Section::List,
                Focus::Input => Section::Input,
            }
        };
        let action = self.keys.action(section, &key);
        if self.search.is_some() {
            return self.search_key(action, event);
        }
        match action {
            Some(a) => self.act(a),
            None => {
                if self.focus == Focus::Input {
                    self.edit(event);
                }
                Vec::new()
            }
        }
    }

    fn overlay_key(&mut self, overlay: Overlay, key: &Key, event: KeyEvent) -> Vec<Out> {
        if self.keys.action(Section::Global, key) == Some(Action::Quit) {
            return vec![Out::Quit];
        }
        match overlay {
            Overlay::Help(top) => {
                let top = match event.code {
                    KeyCode::Down | KeyCode::Char('j') => top + 1,
                    KeyCode::Up | KeyCode::Char('k') => top.saturating_sub(1),
                    KeyCode::PageDown | KeyCode::Char(' ') => top + 10,
                    KeyCode::PageUp => top.saturating_sub(10),
                    _ => {
                        self.overlay = None;
                        return Vec::new();
                    }
                };
                self.overlay = Some(Overlay::Help(top));
                Vec::new()
            }
            Overlay::Verify { name, number, .. } => {
                self.overlay = None;
                match event.code {
                    KeyCode::Char('y') | KeyCode::Char('Y') => {
                        self.notice = Some((format!("{name} is verified"), false));
                        vec![Out::Command(Command::Verify {
                            name,
                            safety_number: number,
                        })]
                    }
                    _ => Vec::new(),
                }
            }
        }
    }

    fn search_key(&mut self, action: Option<Action>, event: KeyEvent) -> Vec<Out> {
        let Some(mut search) = self.search.take() else {
            return Vec::new();
        };
        match (action, event.code) {
            (Some(Action::Quit), _) => return vec![Out::Quit],
            (_, KeyCode::Esc) => return Vec::new(),
            (Some(Action::Search), _) | (_, KeyCode::Enter) => {
                search.hit = self.find(&search.query, search.hit);
            }
            (_, KeyCode::Backspace) => {
                search.query.pop();
                search.hit = self.find(&search.query, None);
            }
            (Some(Action::KillToStart), _) => {
                search.query.clear();
                search.hit = None;
            }
            (_, KeyCode::Char(c))
                if !event
                    .modifiers
                    .intersects(KeyModifiers::CONTROL | KeyModifiers::ALT) =>
            {
                search.query.push(c);
                search.hit = self.find(&search.query, None);
            }
            _ => {}
        }
        if !search.query.is_empty() && search.hit.is_none() {
            self.notice = Some((format!("no match for “{}”", search.query), true));
        }
        self.search = Some(search);
        Vec::new()
    }

    /// The newest message of the open conversation containing `query` (case-insensitive)
    /// that is older than `before`; the newest of all when `before` is `None` or nothing older
    /// matches.
    fn find(&self, query: &str, before: Option<[u8; 16]>) -> Option<[u8; 16]> {
        let query = query.to_lowercase();
        if query.is_empty() {
            return None;
        }
        let matching: Vec<[u8; 16]> = self
            .rows()
            .iter()
            .rev()
            .filter(|r| r.text.to_lowercase().contains(&query))
            .map(|r| r.msg_id)
            .collect();
        let older = before.and_then(|b| {
            let at = matching.iter().position(|m| *m == b)?;
            matching.get(at + 1).copied()
        });
        older.or_else(|| matching.first().copied())
    }

    fn act(&mut self, action: Action) -> Vec<Out> {
        match action {
            Action::Quit => return vec![Out::Quit],
            Action::Help => {
                self.overlay = Some(Overlay::Help(0));
            }
            Action::NextConversation | Action::PrevConversation => {
                let n = self.conversations.len();
                if n == 0 {
                    return Vec::new();
                }
                let at = self.open_index().unwrap_or(0);
                let to = if action == Action::NextConversation {
                    (at + 1).min(n - 1)
                } else {
                    at.saturating_sub(1)
                };
                return self.select(to);
            }
            Action::FocusInput => self.focus = Focus::Input,
            Action::FocusList => self.focus = Focus::List,
            Action::ToggleFocus => {
                self.focus = match self.focus {
                    Focus::List => Focus::Input,
                    Focus::Input => Focus::List,
                }
            }
            Action::Search => {
                self.search = Some(Search::default());
            }
            Action::ScrollUp => {
                self.scroll = (self.scroll + 10).min(self.max_scroll);
            }
            Action::ScrollDown => {
                self.scroll = self.scroll.saturating_sub(10);
            }
            Action::Retry => return self.retry(),
            Action::Editor => return vec![Out::Editor],
            Action::Send => return self.submit(),
            Action::Newline => self.input.insert("\n"),
            Action::LineStart => self.input.home(),
            Action::LineEnd => self.input.end(),
            Action::KillToEnd => self.input.kill_to_end(),
            Action::KillToStart => self.input.kill_to_start(),
            Action::KillWord => self.input.kill_word(),
            Action::WordBack => self.input.word_back(),
            Action::WordForward => self.input.word_forward(),
            Action::HistoryPrev => self.input.history_prev(),
            Action::HistoryNext => self.input.history_next(),
        }
        Vec::new()
    }

    fn edit(&mut self, event: KeyEvent) {
        let plain = !event
            .modifiers
            .intersects(KeyModifiers::CONTROL | KeyModifiers::ALT);
        match event.code {
            KeyCode::Char(c) if plain => {
                let mut b = [0u8; 4];
                self.input.insert(c.encode_utf8(&mut b));
            }
            KeyCode::Backspace => self.input.backspace(),
            KeyCode::Delete => self.input.delete(),
            KeyCode::Left => self.input.left(),
            KeyCode::Right => self.input.right(),
            _ => {}
        }
    }

    /// Text pasted into the terminal (bracketed paste): into the draft as it is.
    pub fn paste(&mut self, text: &str) {
        if self.overlay.is_none() {
            self.focus = Focus::Input;
            self.input
                .insert(&text.replace("\r\n", "\n").replace('\r', "\n"));
        }
    }

    fn retry(&mut self) -> Vec<Out> {
        let mut out = Vec::new();
        let mut flush = false;
        for row in self.rows() {
            if !matches!(row.shown, Shown::Failed(_)) {
                continue;
            }
            self.failed.remove(&row.msg_id);
            match self.pending.iter().find(|p| p.msg_id == row.msg_id) {
                // It never reached the outbox: seal and send it again.
                Some(p) => out.push(Out::Command(Command::Send {
                    to: p.to,
                    text: p.text.clone(),
                    msg_id: p.msg_id,
                })),
                None => flush = true,
            }
        }
        if flush {
            out.push(Out::Command(Command::Flush));
        }
        if out.is_empty() {
            self.notice = Some(("nothing failed in this conversation".into(), false));
        }
        out
    }

    /// Enter in the input: a /command, or the draft sent to the open conversation.
    fn submit(&mut self) -> Vec<Out> {
        if self.input.text().trim().is_empty() {
            return Vec::new();
        }
        let text = self.input.take();
        if let Some(command) = text.strip_prefix('/') {
            if !command.starts_with('/') {
                return self.command(command.trim());
            }
        }
        // `//…` sends a line that starts with a slash.
        let text = match text.strip_prefix("//") {
            Some(rest) => format!("/{rest}"),
            None => text,
        };
        let Some(conv) = self.open() else {
            self.notice = Some(("no conversation open: /add NAME ADDRESS".into(), true));
            self.input.set(text);
            return Vec::new();
        };
        let Ok(to) = Address::from_str(&conv.peer) else {
            return Vec::new();
        };
        if let Err(e) = Messenger::check_size(&text) {
            self.notice = Some((e.to_string(), true));
            self.input.set(text);
            return Vec::new();
        }
        let msg_id = Messenger::new_msg_id();
        self.pending.push(Pending {
            msg_id,
            to,
            text: text.clone(),
            timestamp_ms: self.now_ms,
        });
        self.scroll = 0;
        vec![Out::Command(Command::Send { to, text, msg_id })]
    }

    fn add_contact(&mut self, name: &str, address: Address) -> Vec<Out> {
        if let Err(e) = crate::state::validate_contact_name(name) {
            self.notice = Some((e.to_string(), true));
            return Vec::new();
        }
        self.open = Some(address.to_string());
        self.notice = Some((format!("added {name}"), false));
        vec![Out::Command(Command::AddContact {
            name: name.to_owned(),
            address,
        })]
    }

    fn command(&mut self, line: &str) -> Vec<Out> {
        let mut words = line.split_whitespace();
        let name = words.next().unwrap_or("");
        let args: Vec<&str> = words.collect();
        match (name, args.as_slice()) {
            ("add", [name, address]) => match Address::from_str(address) {
                Ok(address) => self.add_contact(name, address),
                Err(e) => {
                    self.notice = Some((format!("bad address: {e}"), true));
                    Vec::new()
                }
            },
            // Someone who wrote without being a contact: name them.
            ("add", [name]) => match self.open().filter(|c| c.name.is_none()) {
                Some(c) => match Address::from_str(&c.peer) {
                    Ok(address) => self.add_contact(name, address),
                    Err(_) => Vec::new(),
                },
                None => {
                    self.notice = Some(("usage: /add NAME ADDRESS".into(), true));
                    Vec::new()
                }
            },
            ("add", _) => {
                self.notice = Some(("usage: /add NAME ADDRESS".into(), true));
                Vec::new()
            }
            ("verify", args) if args.len() <= 1 => {
                let name = match args.first() {
                    Some(n) => Some((*n).to_owned()),
                    None => self.open().and_then(|c| c.name.clone()),
                };
                let found = name.and_then(|n| {
                    let address = Address::from_str(self.contacts.get(&n)?).ok()?;
                    Some((n, address))
                });
                match found {
                    Some((name, address)) => {
                        let number = self.safety_number(&address);
                        let verified = self.contacts.verified(&name) == Some(number.as_str());
                        self.overlay = Some(Overlay::Verify {
                            name,
                            number,
                            verified,
                        });
                    }
                    None => {
                        self.notice = Some((
                            "usage: /verify NAME (a contact; /add them first)".into(),
                            true,
                        ));
                    }
                }
                Vec::new()
            }
            ("help", _) => {
                self.overlay = Some(Overlay::Help(0));
                Vec::new()
            }
            ("quit" | "q", _) => vec![Out::Quit],
            ("send-file", _) => self.send_file(line["send-file".len()..].trim()),
            _ => {
                self.notice = Some((format!("unknown command /{name}; /help lists them"), true));
                Vec::new()
            }
        }
    }
}

/// The commands typed in the input, for help.
pub const COMMANDS: &[(&str, &str)] = &[
    (
        "/add NAME ADDRESS",
        "add a contact and open the conversation",
    ),
    ("/verify [NAME]", "compare safety numbers with a contact"),
    ("/send-file PATH", "send a file to this conversation"),
    ("/help", "keys and commands"),
    ("/quit", "save and quit"),
    ("//text", "send a line that starts with /"),
];
