//! The messenger as one task: it owns the [`Messenger`], the [`Net`] and the [`ClientState`],
//! takes [`Command`]s over a channel and reports [`Event`]s over another, so an interface built
//! on it never waits for the network. `allium chat` is built on it.
//!
//! It runs the same loop as `allium listen`: flush the outboxes, publish prekeys when due, then
//! long-poll the inbox for 25 s; a command cuts the long-poll short, is carried out, and the loop
//! starts again. Every step of a round leaves the data directory consistent when it is cut
//! short (messenger.rs: a message counts once it is in the history; an envelope leaves the
//! outbox only once acknowledged), so abandoning a round loses and repeats nothing. State is
//! saved as `listen` saves it: the data directory's lock is taken only to save, so `allium send`
//! and `allium inbox` can run beside it, and whichever of `chat`, `inbox` and `listen` runs next
//! starts where the last one stopped.
//!
//! Also here, shared with the `allium` command: [`open_net`] and [`save_net`] (what the network
//! client learnt, kept for the next run) and [`lock_waiting`].

use std::time::{Duration, Instant};

use allium_proto::NodeId;
use allium_proto::network::NetworkFile;
use tokio::sync::{mpsc, watch};

use crate::identity::Address;
use crate::messenger::{Messenger, MessengerError, Skipped};
use crate::net::{Net, Timing};
use crate::state::{
    ClientState, Contacts, DataDir, DataDirLock, Guard, HistoryEntry, MAX_SEEN, ReadMark,
    ReadMarks, StateError, fold_history,
};

/// How long one receive waits at the swarm for a message (as `allium listen`).
pub const LONG_POLL: Duration = Duration::from_secs(25);
/// How long to wait before trying again after the network failed.
pub const RETRY_PAUSE: Duration = Duration::from_secs(2);
/// How often the guards are probed for the network state.
pub const GUARD_PROBE_EVERY: Duration = Duration::from_secs(300);
/// How long [`lock_waiting`] waits for another `allium` to release the data directory.
pub const LOCK_WAIT: Duration = Duration::from_secs(5);
/// History entries the task reads back and reports (as many as the seen sets remember).
pub const HISTORY_WINDOW: usize = MAX_SEEN;
/// Queued commands and events; an interface drains events at every frame.
const QUEUE: usize = 64;

/// Takes the data directory's lock, waiting up to [`LOCK_WAIT`] for another `allium` (a
/// `listen` saving its position, say) to finish.
pub fn lock_waiting(dir: &DataDir) -> Result<DataDirLock, StateError> {
    let deadline = Instant::now() + LOCK_WAIT;
    loop {
        match dir.lock() {
            Err(StateError::Locked { .. }) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            r => return r,
        }
    }
}

/// [`lock_waiting`] without blocking the runtime's thread while it waits.
pub async fn lock_waiting_async(dir: &DataDir) -> Result<DataDirLock, StateError> {
    let deadline = Instant::now() + LOCK_WAIT;
    loop {
        match dir.lock() {
            Err(StateError::Locked { .. }) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            r => return r,
        }
    }
}

/// The network client of `network`, from the roster, guards and clock offset kept by earlier
/// runs in `dir` and `state`.
pub fn open_net(
    dir: &DataDir,
    network: NetworkFile,
    state: &ClientState,
    timing: Timing,
) -> Result<Net, MessengerError> {
    let roster = dir.read_roster()?;
    let guards: Vec<NodeId> = state
        .guards()
        .iter()
        .map(|g| NodeId::from_bytes(g.identity))
        .collect();
    Ok(Net::new(
        network,
        roster.as_deref(),
        state.roster_digest(),
        &guards,
        state.clock_offset_ms(),
        timing,
    )?)
}

/// Keeps what the network client learnt (a newer roster, the guards, the clock offset) in
/// `state` and saves it. The caller holds the data directory's lock.
pub fn save_net(dir: &DataDir, net: &Net, state: &mut ClientState) -> Result<(), StateError> {
    if let Some(held) = net.roster() {
        let digest = held.verified_digest();
        if state.roster_version() != Some(held.version()) || state.roster_digest() != Some(&digest)
        {
            dir.write_roster(held.signed())?;
            state.set_roster_version(held.version());
            state.set_roster_digest(digest);
        }
    }
    let now = net.now_ms();
    // Another `allium` on this data directory (a `listen` beside a `send`) may have chosen
    // guards first: one set of guards per identity, so adopt those.
    let on_disk = dir.load_state().map(|s| s.guards().to_vec());
    if let Ok(disk) = &on_disk {
        if !disk.is_empty() {
            let ids: Vec<NodeId> = disk
                .iter()
                .map(|g| NodeId::from_bytes(g.identity))
                .collect();
            net.adopt_guards(&ids);
            state.set_guards(disk.clone());
        }
    }
    let old = state.guards().to_vec();
    let guards = net
        .guards()
        .iter()
        .map(|g| {
            let id = g.to_bytes();
            let chosen_at_ms = old
                .iter()
                .find(|o| o.identity == id)
                .map_or(now, |o| o.chosen_at_ms);
            Guard {
                identity: id,
                chosen_at_ms,
            }
        })
        .collect();
    state.set_guards(guards);
    state.set_clock_offset_ms(net.clock_offset_ms());
    dir.save_state(state)
}

/// What the interface asks the task to do.
#[derive(Debug, Clone)]
pub enum Command {
    /// Send `text` to `to` under `msg_id` (from [`Messenger::new_msg_id`]). Answered by
    /// [`Event::Stored`] or [`Event::Failed`], and a [`Event::History`] once it is recorded.
    Send {
        /// The recipient.
        to: Address,
        /// The text.
        text: String,
        /// Its id, chosen by the caller so it can show the message as sending at once.
        msg_id: [u8; 16],
    },
    /// Send what waits in the outboxes now, rather than at the next round.
    Flush,
    /// Add a contact; answered by [`Event::Contacts`] or [`Event::Failed`] without an id.
    AddContact {
        /// The name.
        name: String,
        /// The address.
        address: Address,
    },
    /// Record that the safety number with contact `name` was compared and matched.
    Verify {
        /// The contact.
        name: String,
        /// The number compared (from [`crate::session::safety_number`]).
        safety_number: String,
    },
    /// Record that the conversation with `peer` was read up to `mark`.
    MarkRead {
        /// The other party's address.
        peer: String,
        /// The last message read.
        mark: ReadMark,
    },
}

/// Whether the network answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reach {
    /// No round has finished yet.
    Connecting,
    /// The last round reached the swarm.
    Online,
    /// The last round failed, for this reason; the task tries again.
    Unreachable(String),
}

/// What the task knows about the network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkState {
    /// Whether the last round reached the network.
    pub reach: Reach,
    /// The version of the roster held.
    pub roster_version: Option<u64>,
    /// Guards that answered the last probe, if one was made.
    pub guards_up: Option<usize>,
    /// Guards in use.
    pub guards: usize,
    /// Node time minus local time, ms.
    pub clock_offset_ms: i64,
}

/// What the task reports.
#[derive(Debug, Clone)]
pub enum Event {
    /// The history as recorded (the last [`HISTORY_WINDOW`] lines, folded by
    /// [`fold_history`]): sent after anything may have changed it.
    History(Vec<HistoryEntry>),
    /// The address book, after it changed.
    Contacts(Contacts),
    /// The read marks, after they changed.
    ReadMarks(ReadMarks),
    /// The network state, after each round.
    Network(NetworkState),
    /// A message was acknowledged by the recipient's swarm.
    Stored {
        /// The message.
        msg_id: [u8; 16],
        /// Members holding it.
        holders: usize,
        /// Members of the swarm.
        members: usize,
    },
    /// A command failed. For a send, `msg_id` names the message and `queued` says whether it
    /// waits in the outbox (a retry flushes it) or never got there (a retry sends it again).
    Failed {
        /// The message, for a send.
        msg_id: Option<[u8; 16]>,
        /// Whether the message waits in the outbox.
        queued: bool,
        /// What went wrong, for the person.
        error: String,
    },
    /// Something the person may want to know (an inbox item that could not be read).
    Notice(String),
    /// The task saved its state and stopped.
    Stopped,
}

/// The task's queue of commands is full, or the task has stopped.
#[derive(Debug, thiserror::Error)]
#[error("the messenger is busy (or stopped); try again")]
pub struct Busy;

/// The interface's side of the task: commands in, and a way to stop it.
#[derive(Debug, Clone)]
pub struct AppHandle {
    commands: mpsc::Sender<Command>,
    shutdown: watch::Sender<bool>,
}

impl AppHandle {
    /// Queues a command without waiting.
    pub fn command(&self, command: Command) -> Result<(), Busy> {
        self.commands.try_send(command).map_err(|_| Busy)
    }

    /// Asks the task to save and stop; whatever it is doing on the network is abandoned (and
    /// left in a state the next run resumes from).
    pub fn shutdown(&self) {
        self.shutdown.send_replace(true);
    }
}

/// The task: create with [`App::new`], run with [`App::run`].
#[derive(Debug)]
pub struct App {
    dir: DataDir,
    net: Net,
    messenger: Messenger,
    state: ClientState,
    commands: mpsc::Receiver<Command>,
    events: mpsc::Sender<Event>,
    shutdown: watch::Receiver<bool>,
    network: NetworkState,
    probed: Option<Instant>,
}

/// What ended a wait.
enum Woken {
    Command(Command),
    Stop,
    Round(Result<Option<usize>, MessengerError>),
}

impl App {
    /// The task over `messenger` and `net`, starting from `state`; with the handle that commands
    /// it and the receiver of its events.
    pub fn new(
        dir: DataDir,
        net: Net,
        messenger: Messenger,
        state: ClientState,
    ) -> (App, AppHandle, mpsc::Receiver<Event>) {
        let (commands_tx, commands) = mpsc::channel(QUEUE);
        let (events, events_rx) = mpsc::channel(QUEUE);
        let (shutdown_tx, shutdown) = watch::channel(false);
        let network = NetworkState {
            reach: Reach::Connecting,
            roster_version: net.roster().map(|h| h.version()),
            guards_up: None,
            guards: net.guards().len(),
            clock_offset_ms: net.clock_offset_ms(),
        };
        let app = App {
            dir,
            net,
            messenger,
            state,
            commands,
            events,
            shutdown,
            network,
            probed: None,
        };
        let handle = AppHandle {
            commands: commands_tx,
            shutdown: shutdown_tx,
        };
        (app, handle, events_rx)
    }

    /// The account's address.
    pub fn address(&self) -> Address {
        self.messenger.account().address()
    }

    async fn emit(&self, event: Event) {
        // The interface is gone: nothing left to tell, and the loop stops at the shutdown.
        let _ = self.events.send(event).await;
    }

    async fn emit_history(&self) {
        match self.dir.history(HISTORY_WINDOW) {
            Ok(h) => self.emit(Event::History(fold_history(h))).await,
            Err(e) => self.emit(Event::Notice(e.to_string())).await,
        }
    }

    /// Runs until [`AppHandle::shutdown`] (or until the handle is dropped), then saves the
    /// state and reports [`Event::Stopped`]. Only a failure to save ends it early: every other
    /// error is reported as an event and the loop goes on.
    pub async fn run(mut self) -> Result<(), StateError> {
        match (self.dir.contacts(), self.dir.read_marks()) {
            (Ok(c), Ok(r)) => {
                self.emit(Event::Contacts(c)).await;
                self.emit(Event::ReadMarks(r)).await;
            }
            (Err(e), _) | (_, Err(e)) => self.emit(Event::Notice(e.to_string())).await,
        }
        self.emit_history().await;
        self.emit(Event::Network(self.network.clone())).await;
        let mut pause = false;
        loop {
            let woken = {
                let App {
                    net,
                    messenger,
                    state,
                    commands,
                    shutdown,
                    events,
                    probed,
                    ..
                } = &mut self;
                let probe = probed.is_none_or(|t| t.elapsed() >= GUARD_PROBE_EVERY);
                let work = async {
                    if pause {
                        tokio::time::sleep(RETRY_PAUSE).await;
                    }
                    round(net, messenger, state, events, probe).await
                };
                tokio::select! {
                    biased;
                    _ = shutdown.wait_for(|s| *s) => Woken::Stop,
                    c = commands.recv() => c.map_or(Woken::Stop, Woken::Command),
                    r = work => Woken::Round(r),
                }
            };
            pause = false;
            match woken {
                Woken::Stop => break,
                // A round cut short may have received messages already: saved and reported
                // below like a whole one.
                Woken::Command(c) => {
                    if !self.command(c).await {
                        break;
                    }
                }
                Woken::Round(Ok(probe)) => {
                    if let Some(up) = probe {
                        self.probed = Some(Instant::now());
                        self.network.guards_up = Some(up);
                    }
                    self.set_reach(Reach::Online).await;
                }
                Woken::Round(Err(e)) => {
                    pause = true;
                    self.failed_round(e).await;
                }
            }
            self.save().await?;
            self.emit_history().await;
        }
        self.save().await?;
        self.emit(Event::Stopped).await;
        Ok(())
    }

    async fn failed_round(&mut self, e: MessengerError) {
        match e {
            MessengerError::Net(e) => self.set_reach(Reach::Unreachable(e.to_string())).await,
            e => self.emit(Event::Notice(e.to_string())).await,
        }
    }

    async fn set_reach(&mut self, reach: Reach) {
        self.network.reach = reach;
        self.network.roster_version = self.net.roster().map(|h| h.version());
        self.network.guards = self.net.guards().len();
        self.network.clock_offset_ms = self.net.clock_offset_ms();
        self.emit(Event::Network(self.network.clone())).await;
    }

    /// Saves as `listen` does: under the lock, or after the next round when another `allium`
    /// holds it longer than [`LOCK_WAIT`].
    async fn save(&mut self) -> Result<(), StateError> {
        match lock_waiting_async(&self.dir).await {
            Ok(_lock) => save_net(&self.dir, &self.net, &mut self.state),
            Err(StateError::Locked { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Carries out one command, stopping early at a shutdown. Returns false to stop.
    async fn command(&mut self, command: Command) -> bool {
        match command {
            Command::Send { to, text, msg_id } => {
                let sent = {
                    let App {
                        net,
                        messenger,
                        shutdown,
                        ..
                    } = &mut *self;
                    tokio::select! {
                        biased;
                        _ = shutdown.wait_for(|s| *s) => return false,
                        r = messenger.send_text_as(net, &to, &text, msg_id) => r,
                    }
                };
                match sent {
                    Ok(s) => {
                        self.set_reach(Reach::Online).await;
                        self.emit(Event::Stored {
                            msg_id,
                            holders: s.holders,
                            members: s.members,
                        })
                        .await;
                    }
                    Err(e) => {
                        let queued = self.queued(&msg_id);
                        let error = e.to_string();
                        if let MessengerError::Net(n) = &e {
                            self.set_reach(Reach::Unreachable(n.to_string())).await;
                        }
                        self.emit(Event::Failed {
                            msg_id: Some(msg_id),
                            queued,
                            error,
                        })
                        .await;
                    }
                }
            }
            Command::Flush => {
                let flushed = {
                    let App {
                        net,
                        messenger,
                        shutdown,
                        ..
                    } = &mut *self;
                    tokio::select! {
                        biased;
                        _ = shutdown.wait_for(|s| *s) => return false,
                        r = messenger.flush(net) => r,
                    }
                };
                match flushed {
                    Ok(_) => self.set_reach(Reach::Online).await,
                    Err(e) => {
                        let error = e.to_string();
                        self.failed_round(e).await;
                        self.emit(Event::Failed {
                            msg_id: None,
                            queued: true,
                            error,
                        })
                        .await;
                    }
                }
            }
            Command::AddContact { name, address } => {
                let r = self
                    .edit_contacts(|c| c.add(&name, &address.to_string()))
                    .await;
                self.contacts_changed(r).await;
            }
            Command::Verify {
                name,
                safety_number,
            } => {
                let r = self
                    .edit_contacts(|c| c.set_verified(&name, &safety_number))
                    .await;
                self.contacts_changed(r).await;
            }
            Command::MarkRead { peer, mark } => {
                let r = async {
                    let _lock = lock_waiting_async(&self.dir).await?;
                    let mut marks = self.dir.read_marks()?;
                    if marks.set(&peer, mark) {
                        self.dir.save_read_marks(&marks)?;
                    }
                    Ok::<_, StateError>(marks)
                }
                .await;
                match r {
                    Ok(marks) => self.emit(Event::ReadMarks(marks)).await,
                    Err(e) => self.emit(Event::Notice(e.to_string())).await,
                }
            }
        }
        true
    }

    /// Whether the message's envelopes wait in the history as sending (so in an outbox).
    fn queued(&self, msg_id: &[u8; 16]) -> bool {
        self.dir
            .history(HISTORY_WINDOW)
            .map(|h| h.iter().any(|e| e.msg_id == *msg_id))
            .unwrap_or(false)
    }

    /// Reads, edits and saves the address book under the lock, so an `allium contacts` beside
    /// it is never overwritten.
    async fn edit_contacts(
        &self,
        edit: impl FnOnce(&mut Contacts) -> Result<(), StateError>,
    ) -> Result<Contacts, StateError> {
        let _lock = lock_waiting_async(&self.dir).await?;
        let mut contacts = self.dir.contacts()?;
        edit(&mut contacts)?;
        self.dir.save_contacts(&contacts)?;
        Ok(contacts)
    }

    async fn contacts_changed(&self, r: Result<Contacts, StateError>) {
        match r {
            Ok(c) => self.emit(Event::Contacts(c)).await,
            Err(e) => {
                self.emit(Event::Failed {
                    msg_id: None,
                    queued: false,
                    error: e.to_string(),
                })
                .await;
            }
        }
    }
}

/// One round of `allium listen`: send what waits in the outboxes, publish prekeys when due,
/// probe the guards when `probe` (returning how many answered), then receive for up to
/// [`LONG_POLL`].
async fn round(
    net: &Net,
    messenger: &mut Messenger,
    state: &mut ClientState,
    events: &mpsc::Sender<Event>,
    probe: bool,
) -> Result<Option<usize>, MessengerError> {
    messenger.flush(net).await?;
    messenger.publish(net, state).await?;
    let up = if probe {
        let health = net.guard_health().await;
        let up = health.iter().filter(|g| g.rtt.is_some()).count();
        if up == 0 && !health.is_empty() {
            // Said now rather than when the long-poll below gives up, 25 s later.
            let network = NetworkState {
                reach: Reach::Unreachable(format!("none of your {} guards answers", health.len())),
                roster_version: net.roster().map(|h| h.version()),
                guards_up: Some(0),
                guards: health.len(),
                clock_offset_ms: net.clock_offset_ms(),
            };
            let _ = events.send(Event::Network(network)).await;
        }
        Some(up)
    } else {
        None
    };
    let mut skipped = Vec::new();
    messenger
        .receive(
            net,
            state,
            LONG_POLL,
            |_| {},
            |s| skipped.push(describe_skip(s, ToString::to_string)),
        )
        .await?;
    for s in skipped {
        let _ = events.send(Event::Notice(s)).await;
    }
    Ok(up)
}

/// What to tell the person about an inbox item that could not be shown, naming a sender with
/// `name_of`.
pub fn describe_skip(s: &Skipped, name_of: impl Fn(&Address) -> String) -> String {
    match s {
        Skipped::Unreadable(e) => format!("skipped an unreadable message: {e}"),
        Skipped::Undecryptable { from, error } => format!(
            "skipped a message from {} that does not decrypt: {error}",
            from.as_ref().map_or_else(|| "someone".into(), name_of)
        ),
        Skipped::UnknownContent(e) => format!("skipped a message this version cannot show: {e}"),
        Skipped::Unlisted { from, device_id } => format!(
            "skipped a message from device {device_id} of {}, which its account no longer lists",
            name_of(from)
        ),
    }
}
