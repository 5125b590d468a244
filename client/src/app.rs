//! The messenger as one task: it owns the [`Messenger`], the [`Net`] and the [`ClientState`],
//! takes [`Command`]s over a channel and reports [`Event`]s over another, so an interface built
//! on it never waits for the network. `allium chat` is built on it.
//!
//! It runs the same loop as `allium listen` (whitepaper client.md §6, *One data directory*): under
//! the data directory's lock, it reads the state again, flushes the outboxes, publishes prekeys
//! when due, receives what is new, syncs the shared state and saves; then, without the lock, it
//! long-polls the inbox for 25 s for something new. So `allium send` and `allium inbox` run
//! beside it and take turns with it, and none of them works from a copy another has changed.
//! A command cuts the long-poll short, is carried out (under the lock when it changes state),
//! and the loop starts again. Every step of a round leaves the data directory consistent when it
//! is cut short (messenger.rs: a message counts once it is in the history; an envelope leaves
//! the outbox only once acknowledged), so abandoning a round loses and repeats nothing, and
//! whichever of `chat`, `inbox` and `listen` runs next starts where the last one stopped.
//! Files are sent and downloaded here too, reporting [`Event::Transfer`] as they go.
//!
//! Also here, shared with the `allium` command: [`open_net`] and [`save_net`] (what the network
//! client learnt, kept for the next run) and [`lock_waiting`].

use std::collections::HashMap;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::{Duration, Instant};

use allium_proto::NodeId;
use allium_proto::network::NetworkFile;
use tokio::sync::{mpsc, watch};

use crate::attach::{self, AttachError, TransferConfig, Transfers};
use crate::identity::Address;
use crate::messenger::{Messenger, MessengerError, Skipped};
use crate::net::{Net, Timing};
use crate::state::{
    ClientState, Contacts, DataDir, DataDirLock, Direction, GroupHistoryEntry, Guard, HistoryEntry,
    MAX_SEEN, READ_FILE, ReadMark, ReadMarks, StateError, fold_history,
};

/// How long one receive waits at the swarm for a message (as `allium listen`).
pub const LONG_POLL: Duration = Duration::from_secs(25);
/// How long to wait before trying again after the network failed.
pub const RETRY_PAUSE: Duration = Duration::from_secs(2);
/// How often the guards are probed for the network state.
pub const GUARD_PROBE_EVERY: Duration = Duration::from_secs(300);
/// How long [`lock_waiting`] waits for another `allium` to release the data directory: longer
/// than a round of `listen` or `chat` takes under it on a slow network.
pub const LOCK_WAIT: Duration = Duration::from_secs(60);
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

/// Takes the data directory's lock for a round of `listen` or `chat`, waiting for as long as
/// another `allium` holds it (a `send` of a large file holds it for the whole upload): the
/// round cannot go on without it, and a caller that must stop drops this future.
pub async fn lock_for_round(dir: &DataDir) -> Result<DataDirLock, StateError> {
    loop {
        match dir.lock() {
            Err(StateError::Locked { .. }) => tokio::time::sleep(Duration::from_millis(20)).await,
            r => return r,
        }
    }
}

/// Reads again, under the lock, what another `allium` on this data directory may have changed
/// since this process last looked: the account's prekeys and keys, the messages the history
/// records, and the client state (cursor, handled items, published bundle). What `net` learnt
/// is merged back when the state is saved ([`save_net`]).
pub fn reload(
    dir: &DataDir,
    net: &Net,
    messenger: &mut Messenger,
    state: &mut ClientState,
) -> Result<(), MessengerError> {
    messenger.reload(net.now_ms())?;
    *state = dir.load_state()?;
    Ok(())
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
    /// Upload the file at `path` and send it to `to`; reported by [`Event::Transfer`], then a
    /// [`Event::History`] with its line.
    SendFile {
        /// The recipient.
        to: Address,
        /// The file.
        path: PathBuf,
    },
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
    /// The groups this device is in: each group's address (its conversation's peer) and name.
    Groups(Vec<(String, String)>),
    /// The read positions the account's devices share (`whitepaper/devices.md` §8), after each
    /// round and after this device moved one.
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
    /// A file on its way out or in: each chunk done, then the outcome.
    Transfer(Transfer),
    /// Something the person may want to know (an inbox item that could not be read).
    Notice(String),
    /// The task saved its state and stopped.
    Stopped,
}

/// Where a file transfer stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transfer {
    /// Sending (or else receiving).
    pub sending: bool,
    /// The file's name (as its sender gave it: the view neutralises it).
    pub name: String,
    /// The other party's address.
    pub peer: String,
    /// Bytes done.
    pub bytes: u64,
    /// Bytes in all.
    pub size: u64,
    /// Once over: where it was saved (or empty for a sent file), or why it failed.
    pub outcome: Option<Result<String, String>>,
}

/// Where and how received files are downloaded (as `allium inbox` does).
#[derive(Debug, Clone)]
pub struct Downloads {
    /// The download folder.
    pub dir: PathBuf,
    /// Larger files wait for a run with a larger limit (the chat cannot ask).
    pub max_bytes: u64,
    /// Chunks in flight at once.
    pub paths: usize,
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
    downloads: Option<Downloads>,
    /// Files over the limit already reported, so a notice is given once per run.
    told_large: std::collections::HashSet<String>,
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
            downloads: None,
            told_large: std::collections::HashSet::new(),
        };
        let handle = AppHandle {
            commands: commands_tx,
            shutdown: shutdown_tx,
        };
        (app, handle, events_rx)
    }

    /// Downloads the files of received messages into `downloads.dir` after each round.
    pub fn with_downloads(mut self, downloads: Downloads) -> App {
        self.downloads = Some(downloads);
        self
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
        self.emit(groups_event(&self.messenger)).await;
        self.emit(history_event(&self.dir)).await;
    }

    /// Runs until [`AppHandle::shutdown`] (or until the handle is dropped), then saves the
    /// state and reports [`Event::Stopped`]. Only a failure to save ends it early: every other
    /// error is reported as an event and the loop goes on.
    pub async fn run(mut self) -> Result<(), StateError> {
        self.migrate_read_marks().await;
        match self.dir.contacts() {
            Ok(c) => self.emit(Event::Contacts(c)).await,
            Err(e) => self.emit(Event::Notice(e.to_string())).await,
        }
        self.emit(read_marks_event(&self.messenger)).await;
        self.emit_history().await;
        self.emit(Event::Network(self.network.clone())).await;
        let mut pause = false;
        loop {
            let woken = {
                let App {
                    dir,
                    net,
                    messenger,
                    state,
                    commands,
                    shutdown,
                    events,
                    probed,
                    downloads,
                    told_large,
                    ..
                } = &mut self;
                let probe = probed.is_none_or(|t| t.elapsed() >= GUARD_PROBE_EVERY);
                let work = async {
                    if pause {
                        tokio::time::sleep(RETRY_PAUSE).await;
                    }
                    let parts = Parts {
                        dir,
                        net,
                        messenger,
                        state,
                        events,
                    };
                    round(parts, downloads.as_ref(), told_large, probe).await
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
                // A round cut short may have received messages already: reported below like a
                // whole one.
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

    /// Keeps what the network client learnt, on the state as it is on disk now: under the
    /// lock, or not at all when another `allium` holds it longer than [`LOCK_WAIT`] (every
    /// round saves it again).
    async fn save(&mut self) -> Result<(), StateError> {
        match lock_waiting_async(&self.dir).await {
            Ok(_lock) => {
                self.state = self.dir.load_state()?;
                save_net(&self.dir, &self.net, &mut self.state)
            }
            Err(StateError::Locked { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Read positions kept by earlier versions in `read.json` become the shared ones (moved
    /// forward only, so a newer position from another device stays), and the file goes. A file
    /// that does not read is left alone and ignored.
    async fn migrate_read_marks(&mut self) {
        if !self.dir.path().join(READ_FILE).exists() {
            return;
        }
        let r = async {
            let _lock = lock_waiting_async(&self.dir).await?;
            let now = self.net.now_ms();
            self.messenger.reload(now)?;
            self.messenger.adopt_read_file(now)
        }
        .await;
        if let Err(e) = r {
            self.emit(Event::Notice(format!("read positions of read.json: {e}")))
                .await;
        }
    }

    /// Runs `work` under the data directory's lock on the state as it is on disk, then saves
    /// what the network client learnt; stops early at a shutdown (`None`).
    async fn locked<T>(
        &mut self,
        work: impl AsyncFnOnce(&Net, &mut Messenger, &mut ClientState) -> Result<T, MessengerError>,
    ) -> Option<Result<T, MessengerError>> {
        let App {
            dir,
            net,
            messenger,
            state,
            shutdown,
            ..
        } = self;
        let run = async {
            let _lock = lock_for_round(dir).await?;
            reload(dir, net, messenger, state)?;
            let r = work(net, messenger, state).await;
            save_net(dir, net, state)?;
            r
        };
        tokio::select! {
            biased;
            _ = shutdown.wait_for(|s| *s) => None,
            r = run => Some(r),
        }
    }

    /// Carries out one command, stopping early at a shutdown. Returns false to stop.
    async fn command(&mut self, command: Command) -> bool {
        match command {
            Command::Send { to, text, msg_id } => {
                let Some(sent) = self
                    .locked(async |net, m, state| {
                        // A conversation with a group is written into the group's mailbox.
                        match m.load_group(&to.public_key().to_bytes())? {
                            Some(group) => m
                                .send_to_group_as(net, state, &group.name, &text, msg_id)
                                .await
                                .map(|g| (g.holders, g.members)),
                            None => m
                                .send_text_as(net, &to, &text, msg_id)
                                .await
                                .map(|s| (s.holders, s.members)),
                        }
                    })
                    .await
                else {
                    return false;
                };
                match sent {
                    Ok((holders, members)) => {
                        self.set_reach(Reach::Online).await;
                        self.emit(Event::Stored {
                            msg_id,
                            holders,
                            members,
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
                let Some(flushed) = self.locked(async |net, m, _| m.flush(net).await).await else {
                    return false;
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
            Command::SendFile { to, path } => return self.send_file(to, path).await,
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
                let Ok(peer) = Address::from_str(&peer) else {
                    return true;
                };
                let Some(r) = self
                    .locked(async |net, m, _| {
                        m.mark_read(&peer, mark.timestamp_ms, &mark.msg_id, net.now_ms())?;
                        m.read_marks()
                    })
                    .await
                else {
                    return false;
                };
                // The next round's sync tells the account's other devices.
                match r {
                    Ok(marks) => self.emit(Event::ReadMarks(marks)).await,
                    Err(e) => self.emit(Event::Notice(e.to_string())).await,
                }
            }
        }
        true
    }

    /// Uploads a file without the lock (its transfer record is its own, and resumes), then
    /// announces it under the lock as `allium send --file` does. Returns false to stop.
    async fn send_file(&mut self, to: Address, path: PathBuf) -> bool {
        let mut shown = Transfer {
            sending: true,
            name: attach::file::name_of(&path),
            peer: to.to_string(),
            bytes: 0,
            size: 0,
            outcome: None,
        };
        let uploaded = {
            let App {
                dir,
                net,
                messenger,
                shutdown,
                events,
                ..
            } = &mut *self;
            let shown = &mut shown;
            let upload = async {
                let transfers = Transfers::open(dir.path())?;
                let (mailbox, owner) = messenger.account().mailbox_signer()?;
                let mut report = |p: &attach::Progress| {
                    shown.bytes = p.bytes;
                    shown.size = p.size;
                    // A full queue skips a step of the bar, never the outcome.
                    let _ = events.try_send(Event::Transfer(shown.clone()));
                };
                let u = attach::upload(
                    net,
                    owner.as_ref(),
                    mailbox,
                    &transfers,
                    &to.public_key().to_bytes(),
                    &path,
                    attach::file::media_type(&path),
                    TransferConfig {
                        paths: attach::DEFAULT_PATHS,
                    },
                    &mut report,
                )
                .await?;
                Ok::<_, MessengerError>((u, transfers))
            };
            tokio::select! {
                biased;
                _ = shutdown.wait_for(|s| *s) => return false,
                r = upload => r,
            }
        };
        let sent = match uploaded {
            Ok((upload, transfers)) => {
                let Some(r) = self
                    .locked(async |net, m, _| {
                        m.send_file(net, &to, &upload).await?;
                        upload.finish(&transfers)?;
                        Ok(())
                    })
                    .await
                else {
                    return false;
                };
                r
            }
            Err(e) => Err(e),
        };
        if let Err(MessengerError::Net(n)) = &sent {
            self.set_reach(Reach::Unreachable(n.to_string())).await;
        }
        shown.outcome = Some(sent.map(|()| String::new()).map_err(|e| e.to_string()));
        self.emit(Event::Transfer(shown)).await;
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

/// What a round works on, borrowed from the [`App`].
struct Parts<'a> {
    dir: &'a DataDir,
    net: &'a Net,
    messenger: &'a mut Messenger,
    state: &'a mut ClientState,
    events: &'a mpsc::Sender<Event>,
}

fn history_event(dir: &DataDir) -> Event {
    match dir.history(HISTORY_WINDOW) {
        Ok(h) => Event::History(fold_history(with_writers(dir, h))),
        Err(e) => Event::Notice(e.to_string()),
    }
}

/// A group message another member wrote shows its writer, as `inbox` prints it: its text is
/// prefixed with the writer's contact name, or address (groups.md §13.5).
fn with_writers(dir: &DataDir, mut history: Vec<HistoryEntry>) -> Vec<HistoryEntry> {
    let Ok(lines) = dir.history_as::<GroupHistoryEntry>(HISTORY_WINDOW) else {
        return history;
    };
    if lines.is_empty() {
        return history;
    }
    let contacts = dir.contacts().unwrap_or_default();
    let writers: HashMap<[u8; 16], String> = lines
        .into_iter()
        .filter(|l| l.entry.direction == Direction::Received)
        .map(|l| (l.entry.msg_id, l.from))
        .collect();
    for e in history
        .iter_mut()
        .filter(|e| e.direction == Direction::Received)
    {
        if let Some(from) = writers.get(&e.msg_id) {
            let name = contacts
                .iter()
                .find(|(_, a)| a == from)
                .map_or(from.as_str(), |(n, _)| n);
            e.text = format!("{name}: {}", e.text);
        }
    }
    history
}

fn groups_event(messenger: &Messenger) -> Event {
    let groups = messenger.groups().unwrap_or_default();
    Event::Groups(
        groups
            .iter()
            .filter_map(|g| {
                let address = Address::from_key_bytes(&g.group()).ok()?;
                Some((address.to_string(), g.name.clone()))
            })
            .collect(),
    )
}

fn read_marks_event(messenger: &Messenger) -> Event {
    match messenger.read_marks() {
        Ok(m) => Event::ReadMarks(m),
        Err(e) => Event::Notice(e.to_string()),
    }
}

/// One round of `allium listen`, as `chat` runs it (whitepaper client.md §6, *One data
/// directory*). Under the lock, on the state read again: send what waits in the outboxes,
/// publish prekeys when due, receive what is new, sync the state the account's devices share
/// (read positions, contacts), save. Then, without the lock: report, download the files
/// received, probe the guards when `probe` (returning how many answered), and wait up to
/// [`LONG_POLL`] for something new.
async fn round(
    p: Parts<'_>,
    downloads: Option<&Downloads>,
    told_large: &mut std::collections::HashSet<String>,
    probe: bool,
) -> Result<Option<usize>, MessengerError> {
    let Parts {
        dir,
        net,
        messenger,
        state,
        events,
    } = p;
    let mut skipped = Vec::new();
    {
        let _lock = lock_for_round(dir).await?;
        reload(dir, net, messenger, state)?;
        let worked = async {
            messenger.flush(net).await?;
            messenger.publish(net, state).await?;
            messenger.maintain_devices(net).await?;
            messenger
                .receive(
                    net,
                    state,
                    Duration::ZERO,
                    |_| {},
                    |s| skipped.push(describe_skip(s, ToString::to_string)),
                )
                .await?;
            // Group messages are recorded in the history, where the chat reads them.
            messenger.receive_groups(net, state, |_| {}).await?;
            messenger.sync_shared(net).await?;
            Ok::<(), MessengerError>(())
        }
        .await;
        save_net(dir, net, state)?;
        worked?;
    }
    for s in skipped {
        let _ = events.send(Event::Notice(s)).await;
    }
    let _ = events.send(groups_event(messenger)).await;
    let _ = events.send(history_event(dir)).await;
    let _ = events.send(read_marks_event(messenger)).await;
    if let Ok(c) = dir.contacts() {
        let _ = events.send(Event::Contacts(c)).await;
    }
    if let Some(d) = downloads {
        download_all(dir, net, d, events, told_large).await?;
    }
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
    messenger.wait_for_mail(net, state, LONG_POLL).await?;
    Ok(up)
}

/// Downloads the files of received messages (and any left unfinished) into the download
/// folder, as `allium inbox` does, reporting each chunk. A file over the limit waits for a
/// command run with a larger one (said once); one that can never be fetched is dropped.
async fn download_all(
    dir: &DataDir,
    net: &Net,
    d: &Downloads,
    events: &mpsc::Sender<Event>,
    told_large: &mut std::collections::HashSet<String>,
) -> Result<(), MessengerError> {
    let transfers = Transfers::open(dir.path())?;
    for p in transfers.pending_downloads()? {
        let f = &p.file;
        if f.size > d.max_bytes && !p.started {
            if told_large.insert(hex::encode(f.root)) {
                let note = format!(
                    "{} ({} bytes) is larger than the download limit ({} bytes): run `allium \
                     inbox --max-download {}` to fetch it",
                    f.name, f.size, d.max_bytes, f.size
                );
                let _ = events.send(Event::Notice(note)).await;
            }
            continue;
        }
        std::fs::create_dir_all(&d.dir).map_err(|e| AttachError::io(&d.dir, e))?;
        let mut shown = Transfer {
            sending: false,
            name: f.name.clone(),
            peer: p.from.clone(),
            bytes: 0,
            size: f.size,
            outcome: None,
        };
        let got = {
            let mut report = |pr: &attach::Progress| {
                shown.bytes = pr.bytes;
                let _ = events.try_send(Event::Transfer(shown.clone()));
            };
            let cfg = TransferConfig { paths: d.paths };
            attach::download(net, &transfers, f, &d.dir, cfg, &mut report).await
        };
        shown.outcome = match got {
            Ok((path, _)) => Some(Ok(path.display().to_string())),
            Err(AttachError::Net(e)) => return Err(e.into()),
            Err(e) => {
                if matches!(e, AttachError::BadRoot | AttachError::BadChunk(_)) {
                    transfers.drop_download(f)?;
                }
                Some(Err(e.to_string()))
            }
        };
        let _ = events.send(Event::Transfer(shown)).await;
    }
    Ok(())
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
