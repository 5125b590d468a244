//! `allium chat`: a terminal messenger on the [`crate::app`] task.
//!
//! * [`model`]: what is shown and what keys do, free of the terminal (tested without one).
//! * [`view`]: drawing it with ratatui.
//! * [`input`]: the multi-line draft with readline keys.
//! * [`keys`]: key bindings and `keys.toml`.
//! * [`text`]: neutralising what others wrote, measuring and wrapping text, local times.
//!
//! This module owns the terminal: raw mode and the alternate screen for the session, given
//! back on every way out (quitting, an error, a panic), and around `$EDITOR`. The interface
//! thread never waits on the network: it polls the terminal briefly and drains the task's
//! events between polls.

pub mod input;
pub mod keys;
pub mod model;
pub mod text;
pub mod view;

#[cfg(test)]
mod tests;

use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ratatui::Terminal;
use ratatui::backend::CrosstermBackend;
use ratatui::crossterm::event::{
    self, DisableBracketedPaste, EnableBracketedPaste, Event as TermEvent, KeyEventKind,
};
use ratatui::crossterm::execute;
use ratatui::crossterm::terminal::{
    EnterAlternateScreen, LeaveAlternateScreen, disable_raw_mode, enable_raw_mode,
};
use tokio::sync::mpsc;

use crate::app::{AppHandle, Event};
use model::{Model, Out};
use view::Theme;

/// How long the interface waits for a key before looking at the task's events again.
const POLL: Duration = Duration::from_millis(50);
/// How often the screen is redrawn with nothing happening (the list shows times).
const REDRAW: Duration = Duration::from_secs(1);

/// Why the chat could not run.
#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    /// Standard input or output is not a terminal.
    #[error("allium chat needs a terminal: run it in one (over SSH, use ssh -t)")]
    NotATerminal,
    /// The terminal failed.
    #[error("terminal: {0}")]
    Terminal(#[from] io::Error),
    /// The key bindings file is bad.
    #[error(transparent)]
    Keys(#[from] keys::KeysError),
    /// The messenger task stopped on its own.
    #[error("the messenger stopped: {0}")]
    Stopped(String),
}

/// How the chat looks and sounds.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Colours or only modifiers.
    pub theme: Theme,
    /// Ring the bell for a message in another conversation.
    pub bell: bool,
}

/// Puts the terminal into raw mode on the alternate screen.
fn enter() -> io::Result<()> {
    enable_raw_mode()?;
    execute!(io::stdout(), EnterAlternateScreen, EnableBracketedPaste)
}

/// Gives the terminal back as it was: cooked mode, the main screen, the cursor shown.
fn leave() -> io::Result<()> {
    let raw = disable_raw_mode();
    let screen = execute!(
        io::stdout(),
        DisableBracketedPaste,
        LeaveAlternateScreen,
        ratatui::crossterm::cursor::Show
    );
    raw.and(screen)
}

/// Restores the terminal when dropped: on return, on error and while unwinding.
struct Restore;

impl Drop for Restore {
    fn drop(&mut self) {
        let _ = leave();
    }
}

/// Restores the terminal before a panic's message is printed, so it is readable.
fn install_panic_hook() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let _ = leave();
        previous(info);
    }));
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Refuses to start without a terminal on standard input and output.
pub fn check_terminal() -> Result<(), ChatError> {
    use std::io::IsTerminal;
    if io::stdin().is_terminal() && io::stdout().is_terminal() {
        Ok(())
    } else {
        Err(ChatError::NotATerminal)
    }
}

/// Runs the chat until the person quits, on this (blocking) thread; `handle` and `events`
/// connect it to the task. Asks the task to stop before returning.
pub fn run(
    handle: &AppHandle,
    mut events: mpsc::Receiver<Event>,
    mut model: Model,
    options: Options,
) -> Result<(), ChatError> {
    check_terminal()?;
    install_panic_hook();
    enter()?;
    let _restore = Restore;
    let mut terminal = Terminal::new(CrosstermBackend::new(io::stdout()))?;
    terminal.clear()?;
    let result = event_loop(&mut terminal, handle, &mut events, &mut model, options);
    handle.shutdown();
    result
}

fn event_loop(
    terminal: &mut Terminal<CrosstermBackend<io::Stdout>>,
    handle: &AppHandle,
    events: &mut mpsc::Receiver<Event>,
    model: &mut Model,
    options: Options,
) -> Result<(), ChatError> {
    let mut dirty = true;
    let mut drawn = Instant::now();
    loop {
        if dirty || drawn.elapsed() >= REDRAW {
            model.now_ms = now_ms();
            terminal.draw(|f| view::draw(f, model, &options.theme))?;
            dirty = false;
            drawn = Instant::now();
        }
        let mut outs = Vec::new();
        if event::poll(POLL)? {
            match event::read()? {
                TermEvent::Key(k) if k.kind != KeyEventKind::Release => {
                    outs.extend(model.on_key(k));
                }
                TermEvent::Paste(text) => model.paste(&text),
                // The next draw takes the new size (ratatui resizes and clears its buffers).
                TermEvent::Resize(..) => {}
                _ => {}
            }
            dirty = true;
        }
        loop {
            match events.try_recv() {
                // Stopped from outside (SIGTERM, SIGHUP) after saving: leave too.
                Ok(Event::Stopped) => return Ok(()),
                Ok(e) => {
                    outs.extend(model.on_event(e));
                    dirty = true;
                }
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    return Err(ChatError::Stopped(
                        "it could not save its state; see the message below".into(),
                    ));
                }
            }
        }
        for out in outs {
            match out {
                Out::Quit => return Ok(()),
                Out::Command(c) => {
                    if let Err(e) = handle.command(c) {
                        model.notice = Some((e.to_string(), true));
                    }
                }
                Out::Bell => {
                    if options.bell {
                        let mut out = io::stdout();
                        let _ = out.write_all(b"\x07").and_then(|()| out.flush());
                    }
                }
                Out::Editor => {
                    match edit_externally(terminal, model.input.text()) {
                        Ok(Some(text)) => model.input.set(text),
                        Ok(None) => {}
                        Err(e) => model.notice = Some((format!("editor: {e}"), true)),
                    }
                    dirty = true;
                }
            }
        }
    }
}

/// Opens `$VISUAL` or `$EDITOR` (else `vi`) on `draft` in a private temporary file, with the
/// terminal given back to it meanwhile. Returns the edited text (without the newline editors
/// add at the end), or `None` when the editor failed.
fn edit_externally(
    terminal: &mut Terminal<CrosstermBackend<io::Stdout>>,
    draft: &str,
) -> io::Result<Option<String>> {
    let editor = ["VISUAL", "EDITOR"]
        .iter()
        .filter_map(std::env::var_os)
        .find(|v| !v.is_empty())
        .unwrap_or_else(|| "vi".into());
    let mut nonce = [0u8; 8];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut nonce);
    let path: PathBuf =
        std::env::temp_dir().join(format!("allium-draft-{}.txt", hex::encode(nonce)));
    // Owner-only and new: a draft is as private as a message.
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)?;
    file.write_all(draft.as_bytes())?;
    drop(file);
    leave()?;
    // Through the shell, as git does, so an EDITOR with arguments ("code --wait") works.
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg("$ALLIUM_EDITOR \"$1\"")
        .arg("sh")
        .arg(&path)
        .env("ALLIUM_EDITOR", &editor)
        .status();
    let back = enter();
    terminal.clear()?;
    let text = std::fs::read_to_string(&path);
    let _ = std::fs::remove_file(&path);
    back?;
    if !status?.success() {
        return Ok(None);
    }
    let mut text = text?;
    if text.ends_with('\n') {
        text.pop();
    }
    Ok(Some(text))
}
