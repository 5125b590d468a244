//! The `allium` command: identity, contacts, sending and receiving over the onion network.
//! Everything it does goes through the library ([`crate::net`], [`crate::envelope`],
//! [`crate::state`]); this module parses arguments, prints, and maps errors to exit codes.
#![allow(clippy::print_stdout, clippy::print_stderr)] // printing is this module's job

use std::io::{BufRead, IsTerminal, Read};
use std::path::PathBuf;
use std::process::ExitCode;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use allium_link::Link;
use allium_proto::MessageHash;
use allium_proto::network::NetworkFile;
use clap::{Args, Parser, Subcommand};
use serde_json::json;

use crate::app::{self, App};
use crate::attach::report::Reporter;
use crate::attach::{self, AttachError, TransferConfig, Transfers};
use crate::chat::{self, keys::Keymap, model::Model, text::Clock, view::Theme};
use crate::display;
use crate::identity::{Address, AddressError, Identity, IdentityError};
use crate::messenger::groups::{GroupEvent, GroupFailure, GroupMessage, Status};
use crate::messenger::payload::Content;
use crate::messenger::{Account, Messenger, MessengerError, Received, Skipped};
use crate::net::{Net, NetError, PathReport, Timing};
use crate::session;
use crate::state::{ClientState, DataDir, DataDirLock, StateError};

/// Send and receive end-to-end encrypted messages through three onion relays.
///
/// Your identity is a key kept in the data directory; your address (allium1…) is what others
/// send to. Messages wait in your swarm's mailbox until you fetch them, for up to 14 days.
#[derive(Debug, Parser)]
#[command(
    name = "allium",
    version,
    propagate_version = true,
    after_long_help = "Getting started:\n  allium --network network.toml init\n  allium contacts add bob allium1…\n  allium send bob \"hello\"\n  allium listen        (or: allium chat)\n\nExit codes: 0 done, 1 other error, 2 usage, 3 bad address, contact or phrase, 4 data\ndirectory (no identity, permissions, locked), 5 network file, 6 message too large,\n7 network unreachable, 8 refused by the network, 9 the recipient has published no keys.\nSee doc/user.md."
)]
pub struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Args)]
struct Global {
    /// The network file naming the network and its directory authorities (from your network's
    /// operator, or `allium-node devnet`). Default: `network.toml` in the data directory.
    #[arg(long, global = true, env = "ALLIUM_NETWORK", value_name = "FILE")]
    network: Option<PathBuf>,
    /// Where the identity, contacts and message state live. Default: $XDG_DATA_HOME/allium
    /// (~/.local/share/allium).
    #[arg(long, global = true, env = "ALLIUM_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Print results as JSON lines, for scripts.
    #[arg(long, global = true)]
    json: bool,
    /// Give up on the network after this many seconds (per operation, beyond a long-poll's
    /// wait), and say so.
    #[arg(long, global = true, default_value_t = 45, value_name = "SECS")]
    timeout: u64,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create a new identity and print its address and recovery phrase.
    Init {
        /// Replace an existing identity (its address and messages are lost unless you kept its
        /// recovery phrase).
        #[arg(long)]
        force: bool,
    },
    /// Restore an identity from its 24-word recovery phrase, read from standard input.
    Restore {
        /// Replace an existing identity.
        #[arg(long)]
        force: bool,
    },
    /// Print your address.
    Whoami {
        /// Also draw it as a QR code.
        #[arg(long)]
        qr: bool,
    },
    /// Manage the names you send to.
    #[command(subcommand)]
    Contacts(ContactsCommand),
    /// Send a text message or files; acknowledged once the recipient's swarm holds it.
    ///
    /// Examples: `allium send alice "see you at 6"`, `echo hi | allium send allium1… -`,
    /// `allium send alice --file report.pdf --file photo.jpg` (up to 1 GiB each; an interrupted
    /// upload resumes when the same command is run again).
    Send {
        /// A contact name, an address, or a group's name (a contact of the same name wins).
        to: String,
        /// The text; `-` or nothing reads it from standard input (unless files are sent).
        text: Option<String>,
        /// A file to send; repeat for several.
        #[arg(long = "file", value_name = "PATH")]
        files: Vec<PathBuf>,
        /// Chunks in flight at once, each through its own onion path.
        #[arg(long, default_value_t = attach::DEFAULT_PATHS, value_name = "N")]
        paths: usize,
    },
    /// Link this device to an account, and manage the account's devices.
    #[command(subcommand)]
    Devices(DevicesCommand),
    /// Groups: one stored message reaches every member (`allium send GROUP "text"`).
    #[command(subcommand)]
    Groups(GroupsCommand),
    /// Fetch and print new messages, and download the files they carry.
    Inbox(Downloads),
    /// Wait for messages and print each as it arrives (Ctrl-C to stop); files are downloaded.
    Listen(Downloads),
    /// A terminal messenger: conversations, history with delivery state, writing, and files.
    ///
    /// Keys are listed by `?` (or F1) inside, and set in keys.toml in the config directory
    /// ($XDG_CONFIG_HOME/allium/keys.toml). Inside, /send-file PATH sends a file; received
    /// files are downloaded as `allium inbox` downloads them. See doc/user.md.
    Chat {
        /// Key bindings file. Default: $XDG_CONFIG_HOME/allium/keys.toml
        /// (~/.config/allium/keys.toml).
        #[arg(long, value_name = "FILE")]
        keys: Option<PathBuf>,
        /// Do not ring the terminal bell for a message in another conversation.
        #[arg(long)]
        no_bell: bool,
        #[command(flatten)]
        downloads: Downloads,
    },
    /// Show the network, roster, guards and their health.
    Status,
    /// Show what your inbox and your message requests (stores from people without your
    /// delivery token) hold in your swarm, against their limits.
    Usage,
    /// Delete stored messages from your swarm by content hash (as `allium inbox --json` prints
    /// them), from the inbox and the requests share.
    Delete {
        /// Content hashes, 64 hex digits each.
        #[arg(required = true)]
        hashes: Vec<String>,
    },
    /// Delete every stored message of your message requests (default) or of your inbox from
    /// your swarm: fetch first, or the messages are gone unread.
    Clear {
        /// Clear the inbox instead of the requests.
        #[arg(long)]
        inbox: bool,
    },
    /// Replace this device's delivery token: contacts get the new one with your next message to
    /// each and use your requests share until then. Someone you never write to again cannot
    /// reach your inbox any more (how to block a contact).
    RotateToken,
    /// Print a completion script for a shell.
    ///
    /// Example: `allium completions bash > ~/.local/share/bash-completion/completions/allium`
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

/// Where and how received files are downloaded.
#[derive(Debug, Args)]
struct Downloads {
    /// The folder files are saved in. Default: $XDG_DOWNLOAD_DIR, else ~/Downloads.
    #[arg(long = "download-dir", env = "ALLIUM_DOWNLOAD_DIR", value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Files larger than this many bytes are downloaded only after you agree (asked on a
    /// terminal; otherwise they wait until a run with a larger limit).
    #[arg(long, default_value_t = 64 << 20, value_name = "BYTES")]
    max_download: u64,
    /// Chunks in flight at once, each through its own onion path.
    #[arg(long, default_value_t = attach::DEFAULT_PATHS, value_name = "N")]
    paths: usize,
}

#[derive(Debug, Subcommand)]
enum ContactsCommand {
    /// Add a contact.
    Add {
        /// A name: 1–32 of A–Z a–z 0–9 _ . -
        name: String,
        /// Their address (allium1…).
        address: String,
    },
    /// List contacts.
    List,
    /// Remove a contact.
    Remove {
        /// The name.
        name: String,
    },
    /// Show the safety number you and a contact compare (in person or on a call); with
    /// `--confirm`, record that the numbers matched.
    Verify {
        /// The name.
        name: String,
        /// The numbers matched: mark the contact verified.
        #[arg(long)]
        confirm: bool,
    },
}

#[derive(Debug, Subcommand)]
enum DevicesCommand {
    /// On a new device, with an empty data directory: show a code to approve on the account's
    /// primary device (`allium devices approve CODE`), then compare the six digits both show.
    Link {
        /// What `devices list` calls this device: 1–32 of A–Z a–z 0–9 _ . -
        #[arg(long, default_value = "")]
        name: String,
    },
    /// On the primary device (the one with the recovery phrase): link the device showing CODE,
    /// once the six digits both devices show match.
    Approve {
        /// The code the new device shows (alliumlink1…).
        code: String,
        /// Send the new device the newest messages of this device's history, up to this many
        /// KiB (encrypted end to end for the new device alone). 0: none.
        #[arg(long, default_value_t = 0, value_name = "KIB")]
        history: u64,
    },
    /// The account's devices.
    List,
    /// On the primary device: remove a device. It gets nothing sent after this and can no
    /// longer read the account's messages.
    Remove {
        /// The device's id, from `allium devices list`.
        id: u32,
    },
}

#[derive(Debug, Subcommand)]
enum GroupsCommand {
    /// Create a group with you as its admin.
    Create {
        /// A name: 1–32 of A–Z a–z 0–9 _ . -
        name: String,
    },
    /// Invite a contact; they join once they accept (`allium groups accept`).
    Add {
        /// The group.
        group: String,
        /// A contact name or an address.
        contact: String,
        /// Make a member an admin (who may then change the members too) instead.
        #[arg(long)]
        admin: bool,
    },
    /// Remove a member: they can read nothing written afterwards.
    Remove {
        /// The group.
        group: String,
        /// A contact name or an address.
        contact: String,
    },
    /// Leave a group (tells its members, then forgets it).
    Leave {
        /// The group.
        group: String,
    },
    /// Accept an invitation.
    Accept {
        /// The group.
        group: String,
    },
    /// Refuse an invitation.
    Refuse {
        /// The group.
        group: String,
    },
    /// The groups of this device and the invitations waiting.
    List,
    /// A group's members, as this device last read them.
    Members {
        /// The group.
        group: String,
    },
}

/// Why a command failed, and the exit code it gives.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The address does not parse.
    #[error("bad address: {0}")]
    Address(#[from] AddressError),
    /// No contact by that name, and not an address either.
    #[error("unknown contact `{0}` (and not an address): add it with `allium contacts add`")]
    UnknownContact(String),
    /// The recovery phrase does not parse.
    #[error("bad recovery phrase: {0}")]
    Phrase(#[from] IdentityError),
    /// Local state problem (no identity, permissions, locked …).
    #[error("{0}")]
    State(#[from] StateError),
    /// The network file is missing or invalid.
    #[error("network file {path}: {reason}")]
    NetworkFile {
        /// Where it was looked for.
        path: PathBuf,
        /// Why it cannot be used.
        reason: String,
    },
    /// The network could not be reached or refused.
    #[error("{0}")]
    Net(#[from] NetError),
    /// Sending or receiving failed for a reason of its own (keys, sessions, the recipient).
    #[error("{0}")]
    Messenger(MessengerError),
    /// The chat could not run.
    #[error("{0}")]
    Chat(#[from] chat::ChatError),
    /// Reading the input failed.
    #[error("reading standard input: {0}")]
    Input(std::io::Error),
    /// The input is not UTF-8 text.
    #[error("standard input is not UTF-8 text")]
    NotText,
    /// A content hash that is not 64 hex digits.
    #[error("bad content hash `{0}`: 64 hex digits expected")]
    BadHash(String),
    /// A file could not be sent or received.
    #[error("{0}")]
    Attach(AttachError),
}

impl From<MessengerError> for CliError {
    fn from(e: MessengerError) -> Self {
        match e {
            MessengerError::State(e) => CliError::State(e),
            MessengerError::Net(e) => CliError::Net(e),
            MessengerError::Attach(e) => CliError::from(e),
            e => CliError::Messenger(e),
        }
    }
}

impl From<AttachError> for CliError {
    fn from(e: AttachError) -> Self {
        match e {
            AttachError::Net(e) => CliError::Net(e),
            e => CliError::Attach(e),
        }
    }
}

impl CliError {
    /// The process exit code (documented in `allium --help` and doc/user.md).
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Address(_)
            | CliError::UnknownContact(_)
            | CliError::Phrase(_)
            | CliError::BadHash(_) => 3,
            CliError::State(
                StateError::InvalidContactName { .. }
                | StateError::DuplicateContact { .. }
                | StateError::NoSuchContact { .. },
            ) => 3,
            CliError::State(_) | CliError::Input(_) => 4,
            CliError::Chat(_) => 1,
            CliError::NotText => 2,
            CliError::NetworkFile { .. } => 5,
            CliError::Net(NetError::Refused(_)) => 8,
            CliError::Net(_) => 7,
            CliError::Messenger(MessengerError::Keys { .. } | MessengerError::Peer { .. }) => 4,
            CliError::Messenger(MessengerError::TooLarge(_)) => 6,
            CliError::Messenger(MessengerError::NoBundle(_)) => 9,
            CliError::Messenger(MessengerError::Group(GroupFailure::NoSuchGroup(_))) => 3,
            CliError::Messenger(MessengerError::Group(GroupFailure::Damaged { .. })) => 4,
            CliError::Messenger(_) => 1,
            CliError::Attach(AttachError::Io(..) | AttachError::Changed(_)) => 4,
            CliError::Attach(AttachError::TooLarge(_)) => 6,
            CliError::Attach(AttachError::Quota | AttachError::Full) => 8,
            CliError::Attach(_) => 1,
        }
    }
}

/// Parses the command line, runs it, and reports failure on standard error.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let json = cli.global.json;
    // Read before any thread starts: later the local offset cannot be read soundly.
    let clock = Clock::local();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("allium: cannot start: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli, clock)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if json {
                println!(
                    "{}",
                    json!({ "error": e.to_string(), "code": e.exit_code() })
                );
            } else {
                eprintln!("allium: {e}");
            }
            ExitCode::from(e.exit_code())
        }
    }
}

/// What a command needs: the data directory, held locked for the command's duration.
struct Local {
    dir: DataDir,
    /// Held for the whole command, except by `listen`, which takes it only to save.
    _lock: Option<DataDirLock>,
    /// The endpoints of every network client opened, closed before exit (see [`Local::close`]).
    links: std::sync::Mutex<Vec<Arc<Link>>>,
    json: bool,
    network: Option<PathBuf>,
    timing: Timing,
}

impl Local {
    fn open(g: &Global, hold_lock: bool) -> Result<Local, CliError> {
        let dir = DataDir::open_or_default(g.data_dir.as_deref())?;
        let lock = if hold_lock {
            Some(app::lock_waiting(&dir)?)
        } else {
            None
        };
        Ok(Local {
            dir,
            _lock: lock,
            links: std::sync::Mutex::new(Vec::new()),
            json: g.json,
            network: g.network.clone(),
            timing: Timing {
                operation: Duration::from_secs(g.timeout.max(1)),
                attempt: Duration::from_secs(g.timeout.clamp(1, 10)),
            },
        })
    }

    /// The account's address: from the seed on the primary device, from the device's
    /// certificate on a linked one.
    fn address(&self) -> Result<Address, CliError> {
        if self.dir.has_identity() {
            return Ok(Identity::from_seed(&*self.dir.read_identity()?).address());
        }
        let bytes = self.dir.read_device()?;
        let cert = bytes
            .as_deref()
            .and_then(|b| session::DeviceKeys::decode(b).ok())
            .and_then(|k| k.cert().account());
        cert.ok_or_else(|| {
            CliError::State(StateError::NoIdentity {
                path: self.dir.path().join(crate::state::IDENTITY_FILE),
            })
        })
    }

    /// The messenger of this device: its account, device keys and prekeys (created on first
    /// use on the primary device).
    fn messenger(&self, now_ms: u64) -> Result<Messenger, CliError> {
        let account = Account::load(&self.dir, now_ms)?;
        let mut messenger = Messenger::new(self.dir.clone(), account)?;
        // A fault hook for the tests of processes rotating prekeys side by side; unset, the
        // period is the protocol's.
        if let Some(ms) = std::env::var("ALLIUM_FAULT_PREKEY_ROTATION_MS")
            .ok()
            .and_then(|v| v.parse().ok())
        {
            messenger.set_rotation_ms(ms);
        }
        Ok(messenger)
    }

    fn network_file(&self) -> Result<NetworkFile, CliError> {
        let path = self
            .network
            .clone()
            .unwrap_or_else(|| self.dir.path().join("network.toml"));
        if !path.exists() {
            return Err(CliError::NetworkFile {
                path,
                reason: "not found; pass --network FILE or set ALLIUM_NETWORK".into(),
            });
        }
        NetworkFile::load(&path).map_err(|e| CliError::NetworkFile {
            path,
            reason: e.to_string(),
        })
    }

    /// The network client, from the roster, guards and clock offset kept by earlier runs.
    fn net(&self, state: &ClientState) -> Result<Net, CliError> {
        let net = app::open_net(&self.dir, self.network_file()?, state, self.timing)?;
        self.links
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(net.onion().pool().link().clone());
        Ok(net)
    }

    /// Closes the connections of every network client this command opened. Without it the
    /// guards would hold them until their idle time-out (30 s), and a node's per-address cap
    /// would count them against the next command from this address.
    async fn close(&self) {
        let links = std::mem::take(
            &mut *self
                .links
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        for link in links {
            // A guard that does not acknowledge in time drops the connection at its idle
            // time-out, as before; nothing else depends on it.
            let _ = link.close_within(CLOSE_WAIT).await;
        }
    }

    /// Keeps what the network client learnt for the next run.
    fn save_net(&self, net: &Net, state: &mut ClientState) -> Result<(), CliError> {
        Ok(app::save_net(&self.dir, net, state)?)
    }

    fn resolve(&self, to: &str) -> Result<(String, Address), CliError> {
        let contacts = self.dir.contacts()?;
        if let Some(address) = contacts.get(to) {
            return Ok((to.to_owned(), Address::from_str(address)?));
        }
        match Address::from_str(to) {
            Ok(a) => {
                let name = contacts
                    .iter()
                    .find(|(_, addr)| *addr == a.to_string())
                    .map_or_else(|| a.to_string(), |(n, _)| n.to_owned());
                Ok((name, a))
            }
            Err(e) if to.starts_with("allium1") || to.len() > 32 => Err(e.into()),
            Err(_) => Err(CliError::UnknownContact(to.to_owned())),
        }
    }
}

fn short(key: &[u8]) -> String {
    key.iter().take(4).map(|b| format!("{b:02x}")).collect()
}

fn describe_path(p: &PathReport) -> String {
    let roles = ["guard", "middle", "exit", "destination"];
    p.hops
        .iter()
        .zip(&p.addrs)
        .enumerate()
        .map(|(i, (h, a))| {
            format!(
                "{} {}@{a}",
                roles.get(i).copied().unwrap_or("hop"),
                short(h.as_bytes())
            )
        })
        .collect::<Vec<_>>()
        .join(" → ")
}

fn path_json(p: &PathReport) -> serde_json::Value {
    json!({
        "hops": p.hops.iter().map(|h| hex::encode(h.as_bytes())).collect::<Vec<_>>(),
        "addresses": p.addrs.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "rtt_ms": p.rtt.as_secs_f64() * 1000.0,
        "attempts": p.attempts,
    })
}

async fn run(cli: Cli, clock: Clock) -> Result<(), CliError> {
    if let Command::Completions { shell } = cli.command {
        use clap::CommandFactory;
        clap_complete::generate(shell, &mut Cli::command(), "allium", &mut std::io::stdout());
        return Ok(());
    }
    // `listen` and `chat` take the lock only to save, so other commands can run beside them.
    let hold_lock = !matches!(cli.command, Command::Listen(_) | Command::Chat { .. });
    let local = Local::open(&cli.global, hold_lock)?;
    let result = dispatch(cli.command, &local, clock).await;
    local.close().await;
    result
}

/// How long `allium` waits at exit for its guards to learn that its connections are closed.
/// Loopback and ordinary paths take a few round trips; a guard that stopped answering costs
/// no more than this.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

async fn dispatch(command: Command, local: &Local, clock: Clock) -> Result<(), CliError> {
    match command {
        Command::Init { force } => {
            let id = Identity::generate();
            local.dir.write_identity(&id.seed(), force)?;
            local.dir.reset_device()?;
            print_new_identity(local, &id, true);
            publish_at_start(local).await;
            Ok(())
        }
        Command::Restore { force } => {
            if std::io::stdin().is_terminal() {
                eprintln!("Type your 24-word recovery phrase and press Enter:");
            }
            let mut bytes = Vec::new();
            std::io::stdin()
                .lock()
                .read_until(b'\n', &mut bytes)
                .map_err(CliError::Input)?;
            let bytes = zeroize::Zeroizing::new(bytes);
            let phrase = std::str::from_utf8(&bytes).map_err(|_| CliError::NotText)?;
            let id = Identity::from_phrase(phrase)?;
            local.dir.write_identity(&id.seed(), force)?;
            local.dir.reset_device()?;
            print_new_identity(local, &id, false);
            publish_at_start(local).await;
            Ok(())
        }
        Command::Whoami { qr } => {
            let address = local.address()?;
            if local.json {
                println!("{}", json!({ "address": address.to_string() }));
            } else {
                println!("{address}");
                if qr {
                    println!("{}", address.qr_terminal());
                }
            }
            Ok(())
        }
        Command::Contacts(c) => contacts(local, c),
        Command::Devices(c) => devices(local, c).await,
        Command::Groups(c) => groups(local, c).await,
        Command::Send {
            to,
            text,
            files,
            paths,
        } if !files.is_empty() => send_files(local, &to, text, &files, paths).await,
        Command::Send { to, text, .. } => send(local, &to, text).await,
        Command::Inbox(downloads) => {
            let mut state = local.dir.load_state()?;
            let net = local.net(&state)?;
            let mut messenger = local.messenger(net.now_ms())?;
            let shown = fetch_round(local, &net, &mut messenger, &mut state, Duration::ZERO).await;
            let fetched = match shown {
                Ok(_) => {
                    sync_shared(local, &net, &mut messenger).await;
                    download_pending(local, &net, &downloads).await
                }
                Err(_) => Ok(()),
            };
            local.save_net(&net, &mut state)?;
            let shown = shown?;
            fetched?;
            if shown == 0 && !local.json {
                eprintln!("no new messages");
            }
            Ok(())
        }
        Command::Listen(downloads) => {
            let mut state = local.dir.load_state()?;
            let net = local.net(&state)?;
            let mut messenger = local.messenger(net.now_ms())?;
            if !local.json {
                eprintln!(
                    "listening for messages to {} (Ctrl-C to stop)",
                    messenger.account().address()
                );
            }
            let listen = async {
                // A round reads every mailbox and does the periodic work (outbox, prekeys,
                // device list, a group admin's duties); between rounds every mailbox is
                // long-polled at once, and the first to bring something starts the next.
                let mut woke = true;
                let mut last_round = std::time::Instant::now();
                loop {
                    if woke || last_round.elapsed() >= ROUND_EVERY {
                        last_round = std::time::Instant::now();
                        // Every change to the data directory under its lock, on what is on disk
                        // now: a `send` beside this may have rotated the prekeys, advanced a
                        // session or moved the cursor (whitepaper client.md §6, One data
                        // directory).
                        let r = async {
                            let _lock = app::lock_for_round(&local.dir).await?;
                            app::reload(&local.dir, &net, &mut messenger, &mut state)?;
                            let r = fetch_round(
                                local,
                                &net,
                                &mut messenger,
                                &mut state,
                                Duration::ZERO,
                            )
                            .await;
                            local.save_net(&net, &mut state)?;
                            r
                        }
                        .await;
                        // Downloads keep records of their own and resume: no lock needed.
                        let r = match r {
                            Ok(_) => download_pending(local, &net, &downloads).await,
                            Err(e) => Err(e),
                        };
                        match r {
                            Ok(()) => {}
                            // A network that is down for a while is waited out, not fatal.
                            Err(CliError::Net(e @ NetError::Unreachable { .. })) => {
                                eprintln!("allium: {e}; retrying");
                                tokio::time::sleep(Duration::from_secs(2)).await;
                            }
                            Err(e) => return Err(e),
                        }
                    }
                    // The long-polls of every mailbox, without the lock.
                    woke = match messenger.wait_for_mail(&net, &state, LISTEN_WAIT).await {
                        Ok(w) => w,
                        Err(e) => {
                            // The round that follows says what is wrong, or goes on.
                            eprintln!("allium: {e}; retrying");
                            tokio::time::sleep(Duration::from_secs(2)).await;
                            true
                        }
                    };
                }
            };
            // Ctrl-C, or SIGTERM from a service manager: stop, and close the connections.
            let terminate = async {
                use tokio::signal::unix::{SignalKind, signal};
                match signal(SignalKind::terminate()) {
                    Ok(mut term) => {
                        term.recv().await;
                    }
                    Err(_) => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                r = listen => r,
                _ = tokio::signal::ctrl_c() => Ok(()),
                () = terminate => Ok(()),
            }
        }
        Command::Chat {
            keys,
            no_bell,
            downloads,
        } => chat(local, keys, !no_bell, &downloads, clock).await,
        Command::Status => status(local).await,
        c @ (Command::Usage
        | Command::Delete { .. }
        | Command::Clear { .. }
        | Command::RotateToken) => mailbox_command(local, c).await,
        Command::Completions { .. } => Ok(()),
    }
}

fn print_new_identity(local: &Local, id: &Identity, fresh: bool) {
    let address = id.address();
    if local.json {
        if fresh {
            println!(
                "{}",
                json!({ "address": address.to_string(), "phrase": id.phrase().as_str() })
            );
        } else {
            println!("{}", json!({ "address": address.to_string() }));
        }
        return;
    }
    println!("Your address: {address}");
    if fresh {
        println!();
        println!("Recovery phrase — write it down and keep it secret; it restores this identity:");
        println!();
        println!("  {}", id.phrase().as_str());
        println!();
    }
    println!("Identity saved in {}", local.dir.path().display());
}

fn contacts(local: &Local, c: ContactsCommand) -> Result<(), CliError> {
    let mut contacts = local.dir.contacts()?;
    match c {
        ContactsCommand::Add { name, address } => {
            let a = Address::from_str(&address)?;
            contacts.add(&name, &a.to_string())?;
            local.dir.save_contacts(&contacts)?;
            if local.json {
                println!("{}", json!({ "added": name, "address": a.to_string() }));
            } else {
                println!("added {name}: {a}");
            }
        }
        ContactsCommand::List => {
            for (name, address) in contacts.iter() {
                let verified = contacts.verified(name).is_some();
                if local.json {
                    println!(
                        "{}",
                        json!({ "name": name, "address": address, "verified": verified })
                    );
                } else {
                    let mark = if verified { "\tverified" } else { "" };
                    println!("{name}\t{address}{mark}");
                }
            }
        }
        ContactsCommand::Verify { name, confirm } => {
            let address = contacts
                .get(&name)
                .ok_or_else(|| StateError::NoSuchContact { name: name.clone() })?;
            let theirs = Address::from_str(address)?;
            let mine = local.address()?;
            let number = session::safety_number(
                mine.public_key().as_bytes(),
                theirs.public_key().as_bytes(),
            );
            if confirm {
                contacts.set_verified(&name, &number)?;
                local.dir.save_contacts(&contacts)?;
            }
            let verified = contacts.verified(&name) == Some(number.as_str());
            if local.json {
                println!(
                    "{}",
                    json!({ "name": name, "safety_number": number, "verified": verified })
                );
            } else {
                println!("Safety number with {name}:");
                println!();
                println!("  {}", session::grouped(&number));
                println!();
                if verified {
                    println!("{name} is verified.");
                } else {
                    println!(
                        "Compare it with the number {name} sees (in person or on a call). If they \
                         match, run `allium contacts verify {name} --confirm`."
                    );
                }
            }
        }
        ContactsCommand::Remove { name } => {
            contacts.remove(&name)?;
            local.dir.save_contacts(&contacts)?;
            if local.json {
                println!("{}", json!({ "removed": name }));
            } else {
                println!("removed {name}");
            }
        }
    }
    Ok(())
}

/// `usage`, `delete`, `clear` and `rotate-token`: the account's mailbox in its swarm
/// (storage.md §4.5).
async fn mailbox_command(local: &Local, c: Command) -> Result<(), CliError> {
    let hashes = match &c {
        Command::Delete { hashes } => hashes
            .iter()
            .map(|h| {
                let mut out = [0u8; 32];
                hex::decode_to_slice(h, &mut out)
                    .map(|()| MessageHash(out))
                    .map_err(|_| CliError::BadHash(h.clone()))
            })
            .collect::<Result<Vec<_>, _>>()?,
        _ => Vec::new(),
    };
    let mut state = local.dir.load_state()?;
    let net = local.net(&state)?;
    let mut messenger = local.messenger(net.now_ms())?;
    let result = async {
        match c {
            Command::Usage => {
                let usage = messenger.usage(&net).await?;
                print_usage(local.json, &usage);
            }
            Command::Delete { .. } => {
                let n = messenger.delete_stored(&net, hashes).await?;
                if local.json {
                    println!("{}", json!({ "deleted": n }));
                } else {
                    println!("deleted {n} stored message(s)");
                }
            }
            Command::Clear { inbox } => {
                let (ns, what) = if inbox {
                    (allium_proto::storage::INBOX, "inbox")
                } else {
                    (allium_proto::storage::REQUESTS, "requests")
                };
                let n = messenger.clear(&net, ns).await?;
                if local.json {
                    println!("{}", json!({ "cleared": what, "deleted": n }));
                } else {
                    println!("cleared {what}: {n} stored message(s) deleted");
                }
            }
            Command::RotateToken => {
                messenger.rotate_token(&net).await?;
                if local.json {
                    println!("{}", json!({ "rotated": true }));
                } else {
                    println!(
                        "delivery token replaced: contacts get the new one with your next message"
                    );
                }
            }
            _ => {}
        }
        Ok::<(), MessengerError>(())
    }
    .await;
    local.save_net(&net, &mut state)?;
    Ok(result?)
}

fn print_usage(
    json: bool,
    usage: &[(
        allium_proto::storage::Namespace,
        allium_proto::storage::UsageResponse,
    )],
) {
    let name = |ns| {
        if ns == allium_proto::storage::REQUESTS {
            "requests"
        } else {
            "inbox"
        }
    };
    if json {
        let mut out = serde_json::Map::new();
        for (ns, u) in usage {
            out.insert(
                name(*ns).into(),
                json!({ "bytes": u.bytes, "messages": u.count, "max_bytes": u.max_bytes,
                        "max_messages": u.max_count }),
            );
        }
        if let Some((_, u)) = usage.first() {
            out.insert(
                "mailbox".into(),
                json!({ "bytes": u.mailbox_bytes, "messages": u.mailbox_count,
                        "max_bytes": u.mailbox_max_bytes }),
            );
        }
        println!("{}", serde_json::Value::Object(out));
        return;
    }
    let kib = |b: u64| b.div_ceil(1024);
    for (ns, u) in usage {
        let count = match u.max_count {
            Some(m) => format!("{} of {m} messages", u.count),
            None => format!("{} messages", u.count),
        };
        println!(
            "{:<9} {:>6} of {:>6} KiB, {count}",
            name(*ns),
            kib(u.bytes),
            kib(u.max_bytes)
        );
    }
    if let Some((_, u)) = usage.first() {
        println!(
            "{:<9} {:>6} of {:>6} KiB, {} messages",
            "mailbox",
            kib(u.mailbox_bytes),
            kib(u.mailbox_max_bytes),
            u.mailbox_count
        );
    }
}

async fn send(local: &Local, to: &str, text: Option<String>) -> Result<(), CliError> {
    let resolved = local.resolve(to);
    if let Err(CliError::UnknownContact(_)) = resolved
        && !local.dir.groups()?.is_empty()
    {
        let messenger = local.messenger(wall_ms())?;
        if messenger.group_named(to).is_ok() {
            return send_group(local, to, text).await;
        }
    }
    let (name, recipient) = resolved?;
    let text = read_text(text)?;
    Messenger::check_size(&text)?;
    let mut state = local.dir.load_state()?;
    let net = local.net(&state)?;
    let mut messenger = local.messenger(net.now_ms())?;
    let sent = async {
        messenger.publish(&net, &mut state).await?;
        messenger.maintain_devices(&net).await?;
        messenger.flush(&net).await?;
        messenger.send_text(&net, &recipient, &text).await
    }
    .await;
    local.save_net(&net, &mut state)?;
    let sent = sent?;
    let traffic = net.traffic();
    if local.json {
        println!(
            "{}",
            json!({
                "sent": name,
                "address": recipient.to_string(),
                "msg_id": hex::encode(sent.msg_id),
                "devices": sent.devices,
                "items": sent.items,
                "copies": sent.copies,
                "requests": traffic.requests,
                "request_bytes": traffic.request_bytes,
                "response_bytes": traffic.response_bytes,
                "holders": sent.holders,
                "swarm": sent.members,
                "path": path_json(&sent.path),
            })
        );
    } else {
        println!(
            "sent to {name}: held by {} of {} members of their swarm, {:.1} ms",
            sent.holders,
            sent.members,
            sent.path.rtt.as_secs_f64() * 1000.0
        );
        println!("  path: {}", describe_path(&sent.path));
    }
    Ok(())
}

/// The text of a `send`: the argument, or standard input for `-` or none.
fn read_text(text: Option<String>) -> Result<String, CliError> {
    match text.as_deref() {
        Some("-") | None => {
            let mut bytes = Vec::new();
            std::io::stdin()
                .read_to_end(&mut bytes)
                .map_err(CliError::Input)?;
            String::from_utf8(bytes).map_err(|_| CliError::NotText)
        }
        Some(t) => Ok(t.to_owned()),
    }
}

async fn send_group(local: &Local, group: &str, text: Option<String>) -> Result<(), CliError> {
    let text = read_text(text)?;
    if text.len() > crate::group::MAX_PAYLOAD - crate::messenger::payload::HEADER_LEN {
        return Err(CliError::Messenger(MessengerError::TooLarge(
            session::SessionError::TooLarge,
        )));
    }
    let mut state = local.dir.load_state()?;
    let net = local.net(&state)?;
    let mut messenger = local.messenger(net.now_ms())?;
    let sent = async {
        messenger.publish(&net, &mut state).await?;
        messenger.flush(&net).await?;
        messenger
            .send_to_group(&net, &mut state, group, &text)
            .await
    }
    .await;
    local.save_net(&net, &mut state)?;
    let sent = sent?;
    if local.json {
        println!(
            "{}",
            json!({
                "sent": group,
                "group": true,
                "msg_id": hex::encode(sent.msg_id),
                "epoch": sent.epoch,
                "items": 1,
                "bytes": sent.bytes,
                "holders": sent.holders,
                "swarm": sent.members,
                "path": path_json(&sent.path),
            })
        );
    } else {
        println!(
            "sent to the group {group}: held by {} of {} members of its swarm, {:.1} ms",
            sent.holders,
            sent.members,
            sent.path.rtt.as_secs_f64() * 1000.0
        );
        println!("  path: {}", describe_path(&sent.path));
    }
    Ok(())
}

async fn groups(local: &Local, c: GroupsCommand) -> Result<(), CliError> {
    if let GroupsCommand::List | GroupsCommand::Members { .. } = c {
        // What this device holds: no network.
        let messenger = local.messenger(wall_ms())?;
        return groups_local(local, &messenger, c);
    }
    let mut state = local.dir.load_state()?;
    let net = local.net(&state)?;
    let mut messenger = local.messenger(net.now_ms())?;
    let result = async {
        messenger.publish(&net, &mut state).await?;
        messenger.flush(&net).await?;
        let (what, group) = match c {
            GroupsCommand::Create { name } => {
                let key = messenger.create_group(&net, &name).await?;
                if local.json {
                    println!("{}", json!({ "created": name, "group_key": hex::encode(key) }));
                } else {
                    println!("created the group {name}; invite people with `allium groups add {name} CONTACT`");
                }
                return Ok(());
            }
            GroupsCommand::Add {
                group,
                contact,
                admin: true,
            } => {
                let (name, who) = local.resolve(&contact)?;
                messenger.make_admin(&net, &group, &who).await?;
                (format!("made {name} an admin"), group)
            }
            GroupsCommand::Add { group, contact, .. } => {
                let (name, who) = local.resolve(&contact)?;
                messenger.invite_to_group(&net, &group, &who).await?;
                (format!("invited {name}"), group)
            }
            GroupsCommand::Remove { group, contact } => {
                let (name, who) = local.resolve(&contact)?;
                messenger.remove_from_group(&net, &group, &who).await?;
                (format!("removed {name}"), group)
            }
            GroupsCommand::Leave { group } => {
                messenger.leave_group(&net, &group).await?;
                ("left".to_owned(), group)
            }
            GroupsCommand::Accept { group } => {
                messenger.answer_invitation(&net, &group, true).await?;
                ("accepted".to_owned(), group)
            }
            GroupsCommand::Refuse { group } => {
                messenger.answer_invitation(&net, &group, false).await?;
                ("refused".to_owned(), group)
            }
            GroupsCommand::List | GroupsCommand::Members { .. } => return Ok(()),
        };
        if local.json {
            println!("{}", json!({ "done": what, "group": group }));
        } else {
            println!("{what} ({})", display::neutralize(&group));
        }
        Ok(())
    }
    .await;
    local.save_net(&net, &mut state)?;
    result
}

/// `allium send NAME --file PATH…`: each file is uploaded (resuming an interrupted upload of it)
/// and announced once all its chunks are held by a majority of the swarm; a text, if given, goes
/// after the files.
async fn send_files(
    local: &Local,
    to: &str,
    text: Option<String>,
    files: &[PathBuf],
    paths: usize,
) -> Result<(), CliError> {
    let (name, recipient) = local.resolve(to)?;
    if let Some(t) = &text {
        Messenger::check_size(t)?;
    }
    let mut state = local.dir.load_state()?;
    let net = local.net(&state)?;
    let mut messenger = local.messenger(net.now_ms())?;
    let transfers = Transfers::open(local.dir.path())?;
    let (mailbox, owner) = messenger.account().mailbox_signer()?;
    let cfg = TransferConfig { paths };
    let result = async {
        messenger.publish(&net, &mut state).await?;
        messenger.flush(&net).await?;
        for path in files {
            let media = attach::file::media_type(path);
            let shown = attach::file::name_of(path);
            let mut reporter = Reporter::new("sending", &shown, local.json);
            let upload = attach::upload(
                &net,
                owner.as_ref(),
                mailbox,
                &transfers,
                &recipient.public_key().to_bytes(),
                path,
                media,
                cfg,
                &mut |p| reporter.update(p),
            )
            .await;
            reporter.finish();
            let upload = upload?;
            let sent = messenger.send_file(&net, &recipient, &upload).await?;
            upload.finish(&transfers)?;
            let p = upload.progress;
            if local.json {
                println!(
                    "{}",
                    json!({
                        "sent": name,
                        "address": recipient.to_string(),
                        "file": upload.file.name,
                        "size": upload.file.size,
                        "chunks": p.total,
                        "resumed": p.resumed,
                        "transferred": p.transferred,
                        "duplicates": p.duplicates,
                        "msg_id": hex::encode(sent.msg_id),
                        "holders": sent.holders,
                        "swarm": sent.members,
                    })
                );
            } else {
                println!(
                    "sent {} ({} bytes, {} chunks{}) to {name}",
                    display::neutralize(&upload.file.name),
                    upload.file.size,
                    p.total,
                    if p.resumed > 0 {
                        format!(", {} resumed", p.resumed)
                    } else {
                        String::new()
                    }
                );
            }
        }
        if let Some(t) = &text {
            messenger.send_text(&net, &recipient, t).await?;
        }
        Ok::<(), CliError>(())
    }
    .await;
    local.save_net(&net, &mut state)?;
    result
}

fn groups_local(local: &Local, messenger: &Messenger, c: GroupsCommand) -> Result<(), CliError> {
    let role_name = |r: Option<crate::group::Role>| match r {
        Some(crate::group::Role::Admin) => "admin",
        Some(crate::group::Role::Member) => "member",
        None => "none",
    };
    match c {
        GroupsCommand::Members { group } => {
            let rec = messenger.group_named(&group)?;
            let contacts = local.dir.contacts()?;
            let me = messenger.account().address();
            for (account, role) in rec.head().members() {
                let Ok(addr) = Address::from_key_bytes(account) else {
                    continue;
                };
                let text = addr.to_string();
                let name = if addr == me {
                    "you".to_owned()
                } else {
                    contacts
                        .iter()
                        .find(|(_, a)| *a == text)
                        .map_or(text.clone(), |(n, _)| n.to_owned())
                };
                if local.json {
                    println!(
                        "{}",
                        json!({
                            "group": group,
                            "name": name,
                            "address": text,
                            "role": role_name(Some(*role)),
                            "version": rec.head().version(),
                            "list": hex::encode(rec.head().hash()),
                        })
                    );
                } else {
                    println!(
                        "{:<32}  {:<6}  {text}",
                        display::neutralize(&name),
                        role_name(Some(*role))
                    );
                }
            }
        }
        _ => {
            for g in messenger.group_summaries()? {
                let status = match g.status {
                    Status::Invited => "invited",
                    Status::Member => "member",
                };
                if local.json {
                    println!(
                        "{}",
                        json!({
                            "group": g.name,
                            "group_key": hex::encode(g.group),
                            "status": status,
                            "role": role_name(g.role),
                            "members": g.members,
                            "version": g.version,
                            "epoch": g.epoch,
                        })
                    );
                } else {
                    println!(
                        "{:<32}  {status:<8}  {:<6}  {} members",
                        g.name,
                        role_name(g.role),
                        g.members
                    );
                }
            }
        }
    }
    Ok(())
}

/// Asks the person whether the other device shows `sas`: a line on standard input, `y` or
/// `yes` for the same. In JSON mode the question is the line `{"sas": …}`.
fn ask_same(json: bool, sas: &str) -> bool {
    use std::io::Write;
    let shown = format!("{} {}", &sas[..sas.len().min(3)], &sas[sas.len().min(3)..]);
    if json {
        println!("{}", json!({ "sas": shown }));
    } else {
        println!("Both devices should show: {shown}");
        print!("Does the other device show the same number? [y/N] ");
    }
    let _ = std::io::stdout().flush();
    let mut line = String::new();
    if std::io::stdin().lock().read_line(&mut line).is_err() {
        return false;
    }
    matches!(line.trim().to_ascii_lowercase().as_str(), "y" | "yes")
}

async fn devices(local: &Local, c: DevicesCommand) -> Result<(), CliError> {
    let mut state = local.dir.load_state()?;
    let net = local.net(&state)?;
    let result = async {
        match c {
            DevicesCommand::Link { name } => {
                if !name.is_empty() && !crate::devices::link::valid_name(&name) {
                    return Err(CliError::State(StateError::InvalidContactName { name }));
                }
                let json = local.json;
                let linked = crate::messenger::linking::link_new_device(
                    &local.dir,
                    &net,
                    &name,
                    |code| {
                        if json {
                            println!("{}", json!({ "code": code.to_string() }));
                        } else {
                            println!(
                                "On your primary device, run:\n  allium devices approve {code}"
                            );
                            println!("{}", code.qr_terminal());
                        }
                    },
                    |sas| ask_same(json, sas),
                )
                .await?;
                let mut messenger = local.messenger(net.now_ms())?;
                // Its keys go out now, so the account's contacts can reach it at once.
                messenger.publish(&net, &mut state).await?;
                sync_shared(local, &net, &mut messenger).await;
                let id = messenger.account().device().cert().device_id();
                let address = linked.address;
                if local.json {
                    println!(
                        "{}",
                        json!({ "linked": address.to_string(), "device": id, "history": linked.history })
                    );
                } else {
                    println!(
                        "linked to {address} as device {id}, with {} messages of history",
                        linked.history
                    );
                }
            }
            DevicesCommand::Approve { code, history } => {
                let code = crate::devices::link::LinkCode::from_str(&code)
                    .map_err(MessengerError::Device)?;
                let mut messenger = local.messenger(net.now_ms())?;
                let json = local.json;
                let cert = messenger
                    .approve_device(&net, &code, history.saturating_mul(1024), |sas| {
                        ask_same(json, sas)
                    })
                    .await?;
                if local.json {
                    println!("{}", json!({ "approved": cert.device_id() }));
                } else {
                    println!("linked device {}", cert.device_id());
                }
            }
            DevicesCommand::List => {
                let mut messenger = local.messenger(net.now_ms())?;
                messenger.maintain_devices(&net).await?;
                sync_shared(local, &net, &mut messenger).await;
                for d in messenger.devices(&net).await? {
                    let name = d.name.unwrap_or_default();
                    if local.json {
                        println!(
                            "{}",
                            json!({
                                "device": d.device_id,
                                "name": name,
                                "signing_key": hex::encode(d.signing_key),
                                "created_ms": d.created_at,
                                "this": d.this,
                            })
                        );
                    } else {
                        println!(
                            "{:>10}  {:<32}{}",
                            d.device_id,
                            display::neutralize(&name),
                            if d.this { "  (this device)" } else { "" }
                        );
                    }
                }
            }
            DevicesCommand::Remove { id } => {
                let mut messenger = local.messenger(net.now_ms())?;
                let gone = messenger.remove_device(&net, id).await?;
                if local.json {
                    println!("{}", json!({ "removed": gone.device_id() }));
                } else {
                    println!("removed device {}", gone.device_id());
                }
            }
        }
        Ok(())
    }
    .await;
    local.save_net(&net, &mut state)?;
    result
}

/// The default download folder: `$XDG_DOWNLOAD_DIR`, else `~/Downloads`.
fn download_dir(chosen: Option<&std::path::Path>) -> Result<PathBuf, CliError> {
    let dir = match chosen {
        Some(d) => d.to_path_buf(),
        None => match std::env::var_os("XDG_DOWNLOAD_DIR").filter(|d| !d.is_empty()) {
            Some(d) => PathBuf::from(d),
            None => {
                let home = std::env::var_os("HOME").ok_or_else(|| {
                    CliError::Attach(AttachError::Io(
                        "download folder".into(),
                        std::io::Error::other("HOME is not set; pass --download-dir"),
                    ))
                })?;
                PathBuf::from(home).join("Downloads")
            }
        },
    };
    std::fs::create_dir_all(&dir).map_err(|e| AttachError::io(&dir, e))?;
    Ok(dir)
}

/// Asks on the terminal whether to download a file above the limit.
fn ask(question: &str) -> bool {
    if !(std::io::stdin().is_terminal() && std::io::stderr().is_terminal()) {
        return false;
    }
    eprint!("{question} [y/N] ");
    let mut answer = String::new();
    if std::io::stdin().lock().read_line(&mut answer).is_err() {
        return false;
    }
    matches!(answer.trim(), "y" | "Y" | "yes")
}

/// Downloads every file recorded from received messages (and any an earlier run left
/// unfinished) into the chosen folder. A file over the size limit is asked about on a terminal,
/// and otherwise left waiting; one that cannot be fetched is reported and the others go on.
async fn download_pending(local: &Local, net: &Net, d: &Downloads) -> Result<(), CliError> {
    let transfers = Transfers::open(local.dir.path())?;
    let pending = transfers.pending_downloads()?;
    if pending.is_empty() {
        return Ok(());
    }
    let dir = download_dir(d.dir.as_deref())?;
    let cfg = TransferConfig { paths: d.paths };
    for p in pending {
        let f = &p.file;
        if f.size > d.max_download && !p.started {
            let question = format!(
                "download {} ({} bytes) from {}?",
                display::neutralize(&f.name),
                f.size,
                display::neutralize(&p.from)
            );
            if local.json || !ask(&question) {
                if !local.json && std::io::stdin().is_terminal() {
                    transfers.drop_download(f)?;
                    eprintln!("allium: not downloaded");
                    continue;
                }
                warn(
                    local,
                    &format!(
                        "{} ({} bytes) is larger than --max-download ({} bytes): it waits for                          a run with a larger limit",
                        display::neutralize(&f.name),
                        f.size,
                        d.max_download
                    ),
                );
                continue;
            }
        }
        let mut reporter = Reporter::new("receiving", &f.name, local.json);
        let got =
            attach::download(net, &transfers, f, &dir, cfg, &mut |p| reporter.update(p)).await;
        reporter.finish();
        match got {
            Ok((path, progress)) => {
                if local.json {
                    println!(
                        "{}",
                        json!({
                            "saved": path.display().to_string(),
                            "from": p.from,
                            "name": f.name,
                            "size": f.size,
                            "chunks": progress.total,
                            "resumed": progress.resumed,
                            "transferred": progress.transferred,
                            "refused": progress.refused,
                        })
                    );
                } else {
                    println!(
                        "saved {} ({} bytes) to {}",
                        display::neutralize(&f.name),
                        f.size,
                        display::neutralize(&path.display().to_string())
                    );
                }
            }
            Err(AttachError::Net(e)) => return Err(CliError::Net(e)),
            Err(e) => {
                // This file stays recorded unless it can never succeed.
                if matches!(e, AttachError::BadRoot | AttachError::BadChunk(_)) {
                    transfers.drop_download(f)?;
                }
                warn(
                    local,
                    &format!("{} was not saved: {e}", display::neutralize(&f.name)),
                );
            }
        }
    }
    Ok(())
}

/// Publishes this device's keys right after `init` or `restore` if the network is known and
/// answers; otherwise says they go out with the next command that reaches the network.
async fn publish_at_start(local: &Local) {
    if local.network_file().is_err() {
        // No network known yet: the first command that has one publishes.
        return;
    }
    let published = async {
        let mut state = local.dir.load_state()?;
        let net = local.net(&state)?;
        let mut messenger = local.messenger(net.now_ms())?;
        let r = messenger.publish(&net, &mut state).await;
        if r.is_ok() {
            // A restored account gets its contacts back (§8: they outlive every device).
            sync_shared(local, &net, &mut messenger).await;
        }
        local.save_net(&net, &mut state)?;
        r?;
        Ok::<(), CliError>(())
    }
    .await;
    match published {
        Ok(()) if !local.json => eprintln!("Your keys are published: others can write to you."),
        Ok(()) => {}
        Err(e) => warn(
            local,
            &format!(
                "your keys are not published yet ({e}); they will be the next time allium reaches \
                 the network"
            ),
        ),
    }
}

/// Sends what earlier runs left unsent, publishes new prekeys when due, then fetches every page
/// of new messages once (the first waiting up to `wait`) and prints each after it is recorded;
/// returns how many were shown.
async fn fetch_round(
    local: &Local,
    net: &Net,
    messenger: &mut Messenger,
    state: &mut ClientState,
    wait: Duration,
) -> Result<usize, CliError> {
    messenger.flush(net).await?;
    messenger.publish(net, state).await?;
    messenger.maintain_devices(net).await?;
    let names = local.dir.contacts()?;
    let name_of = |a: &Address| {
        let text = a.to_string();
        names
            .iter()
            .find(|(_, addr)| *addr == text)
            .map_or(text.clone(), |(n, _)| n.to_owned())
    };
    // The newest message shown per conversation: the read position the account's devices share.
    let mut read: std::collections::BTreeMap<[u8; 32], (Address, u64, [u8; 16])> =
        std::collections::BTreeMap::new();
    let on_message = |r: &Received| {
        let text = r.message.content.summary();
        let text = &text;
        if r.copy_to.is_none() {
            let pos = (r.message.sent_ms, r.message.msg_id);
            let held = read.get(&r.from.public_key().to_bytes());
            if held.is_none_or(|h| (h.1, h.2) < pos) {
                read.insert(r.from.public_key().to_bytes(), (r.from, pos.0, pos.1));
            }
        }
        let from = name_of(&r.from);
        if local.json {
            let mut line = json!({
                "from": from,
                "address": r.from.to_string(),
                "device": r.device_id,
                "msg_id": hex::encode(r.message.msg_id),
                "sent_ms": r.message.sent_ms,
                "stored_ms": r.stored_ms,
                "stored_hash": hex::encode(r.stored_hash.0),
                "received_ms": net.now_ms(),
                "text": text,
                "file": match &r.message.content {
                    Content::File(f) => json!({ "name": f.name, "size": f.size, "media": f.media }),
                    Content::Text(_) => serde_json::Value::Null,
                },
                "path": path_json(&r.path),
            });
            if let (Some(to), Some(obj)) = (&r.copy_to, line.as_object_mut()) {
                // Sent by another device of this account.
                obj.insert("sent_to".into(), json!(name_of(to)));
                obj.insert("sent_to_address".into(), json!(to.to_string()));
            }
            println!("{line}");
        } else if let Some(to) = &r.copy_to {
            println!(
                "you → {} (from your device {}): {}",
                display::neutralize(&name_of(to)),
                r.device_id,
                display::neutralize_lines(text, "  ")
            );
        } else {
            // Another person's text: shown, never obeyed by the terminal.
            println!(
                "{}: {}",
                display::neutralize(&from),
                display::neutralize_lines(text, "  ")
            );
        }
    };
    let on_skip = |s: &Skipped| {
        let what = app::describe_skip(s, name_of);
        warn(local, &what);
    };
    let mut shown = messenger
        .receive(net, state, wait, on_message, on_skip)
        .await?;
    let now = net.now_ms();
    for (peer, sent_ms, msg_id) in read.values() {
        messenger.mark_read(peer, *sent_ms, msg_id, now)?;
    }
    let in_group = |m: &GroupMessage| print_group_message(local, net, m, &name_of);
    let groups = messenger.receive_groups(net, state, in_group).await;
    for e in messenger.take_group_events() {
        print_group_event(local, &e, &name_of);
    }
    shown += groups?;
    Ok(shown)
}

/// This machine's clock (Unix ms), for commands that do not reach the network.
fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// How long `listen` long-polls its mailboxes before asking again.
const LISTEN_WAIT: Duration = Duration::from_secs(25);

/// The longest `listen` goes without a whole round (reading every mailbox, sending what is
/// queued, publishing prekeys, a group admin's timed duties) while nothing arrives.
const ROUND_EVERY: Duration = Duration::from_secs(300);

/// A group message, as `inbox` and `listen` print it: the group, then the writer.
fn print_group_message(
    local: &Local,
    net: &Net,
    m: &GroupMessage,
    name_of: &dyn Fn(&Address) -> String,
) {
    let text = m.message.content.summary();
    let text = &text;
    let from = name_of(&m.from);
    if local.json {
        println!(
            "{}",
            json!({
                "group": m.name,
                "group_key": hex::encode(m.group),
                "from": from,
                "address": m.from.to_string(),
                "device_key": hex::encode(m.device),
                "msg_id": hex::encode(m.message.msg_id),
                "sent_ms": m.message.sent_ms,
                "stored_ms": m.stored_ms,
                "received_ms": net.now_ms(),
                "text": text,
                "path": path_json(&m.path),
            })
        );
    } else {
        // Another person's text: shown, never obeyed by the terminal.
        println!(
            "[{}] {}: {}",
            display::neutralize(&m.name),
            display::neutralize(&from),
            display::neutralize_lines(text, "  ")
        );
    }
}

fn print_group_event(local: &Local, e: &GroupEvent, name_of: &dyn Fn(&Address) -> String) {
    let (line, human) = match e {
        GroupEvent::Invited { name, from } => (
            json!({ "group_invitation": name, "from": name_of(from), "address": from.to_string() }),
            format!(
                "{} invites you into the group {name}: `allium groups accept {name}` or `allium groups refuse {name}`",
                name_of(from)
            ),
        ),
        GroupEvent::Joined { name } => (
            json!({ "group_joined": name }),
            format!("joined the group {name} (accepted on another device)"),
        ),
        GroupEvent::Answered {
            name,
            from,
            accepted,
        } => (
            json!({ "group_answer": name, "from": name_of(from), "address": from.to_string(), "accepted": accepted }),
            format!(
                "{} {} the invitation into {name}",
                name_of(from),
                if *accepted { "accepted" } else { "refused" }
            ),
        ),
        GroupEvent::Left { name, who } => (
            json!({ "group_left": name, "from": name_of(who), "address": who.to_string() }),
            format!("{} left the group {name}", name_of(who)),
        ),
        GroupEvent::Removed { name } => (
            json!({ "group_removed": name }),
            format!("you were removed from the group {name}"),
        ),
    };
    if local.json {
        println!("{line}");
    } else {
        println!("{}", display::neutralize(&human));
    }
}

/// One round of the state the account's devices share (contacts, read positions); a failure
/// is a warning, as what the command was for is done.
async fn sync_shared(local: &Local, net: &Net, messenger: &mut Messenger) {
    if let Err(e) = messenger.sync_shared(net).await {
        warn(
            local,
            &format!("contacts and read positions are not in step with your other devices: {e}"),
        );
    }
}

/// Runs `allium chat`: the messenger task on the runtime, the interface on a thread of its
/// own; once the person quits, waits for the task to save.
async fn chat(
    local: &Local,
    keys: Option<PathBuf>,
    bell: bool,
    downloads: &Downloads,
    clock: Clock,
) -> Result<(), CliError> {
    chat::check_terminal()?;
    let keymap = match keys.or_else(chat::keys::default_path) {
        Some(path) => Keymap::load(&path).map_err(chat::ChatError::from)?,
        None => Keymap::default(),
    };
    let state = local.dir.load_state()?;
    let net = local.net(&state)?;
    let messenger = local.messenger(net.now_ms())?;
    let downloads = app::Downloads {
        dir: download_dir(downloads.dir.as_deref())?,
        max_bytes: downloads.max_download,
        paths: downloads.paths,
    };
    let (task, handle, events) = App::new(local.dir.clone(), net, messenger, state);
    let task = task.with_downloads(downloads);
    let model = Model::new(task.address(), clock, keymap);
    let task = tokio::spawn(task.run());
    // SIGTERM or a closed terminal (SIGHUP): save and stop as when the person quits.
    let stopper = handle.clone();
    let signals = tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut hup)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::hangup()),
        ) else {
            return;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = hup.recv() => {}
        }
        stopper.shutdown();
    });
    let options = chat::Options {
        theme: Theme::from_env(),
        bell,
    };
    let ui_handle = handle.clone();
    let ui =
        tokio::task::spawn_blocking(move || chat::run(&ui_handle, events, model, options)).await;
    handle.shutdown();
    signals.abort();
    let saved = match tokio::time::timeout(Duration::from_secs(15), task).await {
        Ok(Ok(r)) => r.map_err(CliError::State),
        Ok(Err(e)) => Err(CliError::Chat(chat::ChatError::Stopped(e.to_string()))),
        // Everything but the last position is on disk already; the next run resumes.
        Err(_) => Ok(()),
    };
    match ui {
        Ok(r) => r?,
        Err(e) => return Err(CliError::Chat(chat::ChatError::Stopped(e.to_string()))),
    }
    saved
}

fn warn(local: &Local, msg: &str) {
    if local.json {
        println!("{}", json!({ "warning": msg }));
    } else {
        eprintln!("allium: {msg}");
    }
}

async fn status(local: &Local) -> Result<(), CliError> {
    let mut state = local.dir.load_state()?;
    let net = local.net(&state)?;
    let address = local.address().ok().map(|a| a.to_string());
    let refreshed = net.refresh_roster().await;
    let guards: Vec<_> = net
        .guard_health()
        .await
        .into_iter()
        .map(|g| (g.identity, g.addr, g.rtt))
        .collect();
    local.save_net(&net, &mut state)?;
    let held = net.roster();
    let roster = held.as_ref().map(|h| h.roster());
    if local.json {
        println!(
            "{}",
            json!({
                "network": net.network().name,
                "address": address,
                "data_dir": local.dir.path().display().to_string(),
                "roster_version": roster.as_ref().map(|r| r.version()),
                "nodes": roster.as_ref().map(|r| r.nodes().len()),
                "swarms": roster.as_ref().map(|r| r.swarms().len()),
                "roster_error": refreshed.as_ref().err().map(ToString::to_string),
                "clock_offset_ms": net.clock_offset_ms(),
                "guards": guards.iter().map(|(g, a, h)| json!({
                    "identity": g.to_string(),
                    "address": a.map(|a| a.to_string()),
                    "rtt_ms": h.map(|d| d.as_secs_f64() * 1000.0),
                })).collect::<Vec<_>>(),
            })
        );
        return Ok(());
    }
    println!("network:   {}", net.network().name);
    if let Some(a) = &address {
        println!("address:   {a}");
    }
    println!("data dir:  {}", local.dir.path().display());
    match (&roster, &refreshed) {
        (Some(r), _) => println!(
            "roster:    version {}, {} nodes in {} swarms",
            r.version(),
            r.nodes().len(),
            r.swarms().len()
        ),
        (None, Err(e)) => println!("roster:    none ({e})"),
        (None, Ok(_)) => println!("roster:    none"),
    }
    if let Err(e) = &refreshed {
        println!("           could not refresh: {e}");
    }
    println!(
        "clock:     {:+} ms from the nodes' time",
        net.clock_offset_ms()
    );
    for (g, a, h) in &guards {
        let addr = a.map_or_else(|| "?".into(), |a| a.to_string());
        match h {
            Some(d) => println!(
                "guard:     {} at {addr}: up, {:.1} ms",
                short(g.as_bytes()),
                d.as_secs_f64() * 1000.0
            ),
            None => println!("guard:     {} at {addr}: unreachable", short(g.as_bytes())),
        }
    }
    Ok(())
}
