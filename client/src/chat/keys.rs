//! Key bindings: the defaults, and `keys.toml` in the config directory
//! (`$XDG_CONFIG_HOME/allium/keys.toml`, else `~/.config/allium/keys.toml`) over them.
//!
//! ```toml
//! # Bindings by where they apply: [global] everywhere, [list] in the conversation list,
//! # [input] while typing. An action given here replaces its default keys in that section.
//! [global]
//! editor = "ctrl-x"            # one key …
//! [input]
//! newline = ["alt-enter", "ctrl-j"]   # … or several
//! ```
//!
//! A key is a character (`q`, `?`, `/`) or a name (`enter`, `esc`, `tab`, `backtab`,
//! `backspace`, `delete`, `up`, `down`, `left`, `right`, `home`, `end`, `pageup`, `pagedown`,
//! `f1`–`f12`, `space`), after any of `ctrl-`, `alt-` and `shift-`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use serde::Deserialize;

/// The config file's name in the config directory.
pub const KEYS_FILE: &str = "keys.toml";
/// Largest `keys.toml` read.
const MAX_KEYS_FILE: u64 = 64 << 10;

/// Why `keys.toml` cannot be used. Every variant names the file, and the line where it can.
#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    /// The file could not be read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not TOML of the expected shape.
    #[error("{}, line {line}: {message}", path.display())]
    Syntax {
        /// The file.
        path: PathBuf,
        /// The line (from 1).
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// A section other than `global`, `list` and `input`.
    #[error("{}: unknown section [{section}]; use [global], [list] or [input]", path.display())]
    UnknownSection {
        /// The file.
        path: PathBuf,
        /// The section.
        section: String,
    },
    /// An action this version does not have.
    #[error("{}, line {line}: unknown action `{action}` in [{section}] (see `?` in allium chat)", path.display())]
    UnknownAction {
        /// The file.
        path: PathBuf,
        /// The line.
        line: usize,
        /// The section.
        section: String,
        /// The action.
        action: String,
    },
    /// A key that does not parse.
    #[error("{}, line {line}: bad key `{key}` for {action}: {reason}", path.display())]
    BadKey {
        /// The file.
        path: PathBuf,
        /// The line.
        line: usize,
        /// The action.
        action: String,
        /// The key as written.
        key: String,
        /// Why.
        reason: &'static str,
    },
}

/// Where bindings apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Section {
    /// Everywhere (unless the focused section binds the key).
    Global,
    /// The conversation list has the focus.
    List,
    /// The message input has the focus.
    Input,
}

impl Section {
    /// The section's name in `keys.toml`.
    pub fn name(self) -> &'static str {
        match self {
            Section::Global => "global",
            Section::List => "list",
            Section::Input => "input",
        }
    }
}

macro_rules! actions {
    ($($variant:ident $name:literal $help:literal,)*) => {
        /// Something a key does.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum Action {
            $(#[doc = $help] $variant,)*
        }

        impl Action {
            /// Every action, in the order help lists them.
            pub const ALL: &'static [Action] = &[$(Action::$variant,)*];

            /// The action's name in `keys.toml`.
            pub fn name(self) -> &'static str {
                match self { $(Action::$variant => $name,)* }
            }

            /// What it does, for help.
            pub fn help(self) -> &'static str {
                match self { $(Action::$variant => $help,)* }
            }

            fn from_name(name: &str) -> Option<Action> {
                match name { $($name => Some(Action::$variant),)* _ => None }
            }
        }
    };
}

actions! {
    Quit "quit" "save and quit",
    Help "help" "show or hide this help",
    NextConversation "next_conversation" "next conversation",
    PrevConversation "prev_conversation" "previous conversation",
    FocusInput "focus_input" "write in the open conversation",
    FocusList "focus_list" "back to the conversation list",
    ToggleFocus "toggle_focus" "switch between list and input",
    Search "search" "search the open conversation (Enter: older match)",
    ScrollUp "scroll_up" "scroll the history up",
    ScrollDown "scroll_down" "scroll the history down",
    Retry "retry" "send failed messages of this conversation again",
    Editor "editor" "edit the draft in $EDITOR",
    Send "send" "send the draft (or run a /command)",
    Newline "newline" "new line in the draft",
    LineStart "line_start" "start of line",
    LineEnd "line_end" "end of line",
    KillToEnd "kill_to_end" "delete to end of line",
    KillToStart "kill_to_start" "delete to start of line",
    KillWord "kill_word" "delete the word before the cursor",
    WordBack "word_back" "back one word",
    WordForward "word_forward" "forward one word",
    HistoryPrev "history_prev" "line up, or the previous line sent",
    HistoryNext "history_next" "line down, or the next line sent",
}

/// A key with its modifiers, as bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Key {
    code: KeyCode,
    ctrl: bool,
    alt: bool,
    shift: bool,
}

impl Key {
    /// The key of a terminal event. Shift is part of a character itself (`Q`, `?`), so it
    /// counts only for other keys.
    pub fn from_event(e: &KeyEvent) -> Key {
        let code = match e.code {
            KeyCode::Char(c) if e.modifiers.contains(KeyModifiers::CONTROL) => {
                KeyCode::Char(c.to_ascii_lowercase())
            }
            c => c,
        };
        Key {
            code,
            ctrl: e.modifiers.contains(KeyModifiers::CONTROL),
            alt: e.modifiers.contains(KeyModifiers::ALT),
            shift: e.modifiers.contains(KeyModifiers::SHIFT)
                && !matches!(code, KeyCode::Char(_) | KeyCode::BackTab),
        }
    }

    /// Parses `ctrl-a`, `alt-enter`, `q`, `pageup` …
    pub fn parse(s: &str) -> Result<Key, &'static str> {
        let mut key = Key {
            code: KeyCode::Null,
            ctrl: false,
            alt: false,
            shift: false,
        };
        let mut rest = s;
        loop {
            let lower = rest.to_ascii_lowercase();
            if lower.starts_with("ctrl-") && rest.len() > 5 {
                key.ctrl = true;
                rest = &rest[5..];
            } else if lower.starts_with("alt-") && rest.len() > 4 {
                key.alt = true;
                rest = &rest[4..];
            } else if lower.starts_with("shift-") && rest.len() > 6 {
                key.shift = true;
                rest = &rest[6..];
            } else {
                break;
            }
        }
        let mut chars = rest.chars();
        key.code = match (chars.next(), chars.next()) {
            (Some(c), None) if key.ctrl => KeyCode::Char(c.to_ascii_lowercase()),
            (Some(c), None) => KeyCode::Char(c),
            (None, _) => return Err("empty"),
            _ => match rest.to_ascii_lowercase().as_str() {
                "enter" | "return" => KeyCode::Enter,
                "esc" | "escape" => KeyCode::Esc,
                "tab" => KeyCode::Tab,
                "backtab" => KeyCode::BackTab,
                "backspace" => KeyCode::Backspace,
                "delete" | "del" => KeyCode::Delete,
                "up" => KeyCode::Up,
                "down" => KeyCode::Down,
                "left" => KeyCode::Left,
                "right" => KeyCode::Right,
                "home" => KeyCode::Home,
                "end" => KeyCode::End,
                "pageup" => KeyCode::PageUp,
                "pagedown" => KeyCode::PageDown,
                "space" => KeyCode::Char(' '),
                f => match f.strip_prefix('f').and_then(|n| n.parse::<u8>().ok()) {
                    Some(n @ 1..=12) => KeyCode::F(n),
                    _ => return Err("not a key name"),
                },
            },
        };
        if key.shift && matches!(key.code, KeyCode::Char(_)) {
            return Err("write the shifted character itself (`Q`, not `shift-q`)");
        }
        Ok(key)
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.ctrl {
            f.write_str("Ctrl-")?;
        }
        if self.alt {
            f.write_str("Alt-")?;
        }
        if self.shift {
            f.write_str("Shift-")?;
        }
        match self.code {
            KeyCode::Char(' ') => f.write_str("Space"),
            KeyCode::Char(c) if self.ctrl => write!(f, "{}", c.to_ascii_uppercase()),
            KeyCode::Char(c) => write!(f, "{c}"),
            KeyCode::Enter => f.write_str("Enter"),
            KeyCode::Esc => f.write_str("Esc"),
            KeyCode::Tab => f.write_str("Tab"),
            KeyCode::BackTab => f.write_str("Shift-Tab"),
            KeyCode::Backspace => f.write_str("Backspace"),
            KeyCode::Delete => f.write_str("Delete"),
            KeyCode::Up => f.write_str("Up"),
            KeyCode::Down => f.write_str("Down"),
            KeyCode::Left => f.write_str("Left"),
            KeyCode::Right => f.write_str("Right"),
            KeyCode::Home => f.write_str("Home"),
            KeyCode::End => f.write_str("End"),
            KeyCode::PageUp => f.write_str("PageUp"),
            KeyCode::PageDown => f.write_str("PageDown"),
            KeyCode::F(n) => write!(f, "F{n}"),
            _ => f.write_str("?"),
        }
    }
}

/// The bindings in force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keymap {
    bindings: BTreeMap<(Section, Action), Vec<Key>>,
}

const DEFAULTS: &[(Section, Action, &[&str])] = &[
    (Section::Global, Action::Quit, &["ctrl-c"]),
    (Section::Global, Action::Help, &["f1"]),
    (
        Section::Global,
        Action::NextConversation,
        &["alt-down", "ctrl-n"],
    ),
    (
        Section::Global,
        Action::PrevConversation,
        &["alt-up", "ctrl-p"],
    ),
    (Section::Global, Action::ToggleFocus, &["tab"]),
    (Section::Global, Action::Search, &["ctrl-f"]),
    (Section::Global, Action::ScrollUp, &["pageup"]),
    (Section::Global, Action::ScrollDown, &["pagedown"]),
    (Section::Global, Action::Retry, &["ctrl-r"]),
    (Section::Global, Action::Editor, &["ctrl-x"]),
    (Section::List, Action::Quit, &["q"]),
    (Section::List, Action::Help, &["?"]),
    (Section::List, Action::NextConversation, &["down", "j"]),
    (Section::List, Action::PrevConversation, &["up", "k"]),
    (
        Section::List,
        Action::FocusInput,
        &["enter", "i", "right", "l"],
    ),
    (Section::List, Action::Search, &["/"]),
    (Section::Input, Action::FocusList, &["esc"]),
    (Section::Input, Action::Send, &["enter"]),
    (Section::Input, Action::Newline, &["alt-enter", "ctrl-j"]),
    (Section::Input, Action::LineStart, &["ctrl-a", "home"]),
    (Section::Input, Action::LineEnd, &["ctrl-e", "end"]),
    (Section::Input, Action::KillToEnd, &["ctrl-k"]),
    (Section::Input, Action::KillToStart, &["ctrl-u"]),
    (
        Section::Input,
        Action::KillWord,
        &["ctrl-w", "alt-backspace"],
    ),
    (Section::Input, Action::WordBack, &["alt-b", "ctrl-left"]),
    (
        Section::Input,
        Action::WordForward,
        &["alt-f", "ctrl-right"],
    ),
    (Section::Input, Action::HistoryPrev, &["up"]),
    (Section::Input, Action::HistoryNext, &["down"]),
];

impl Default for Keymap {
    fn default() -> Keymap {
        let mut bindings = BTreeMap::new();
        for (section, action, keys) in DEFAULTS {
            let keys = keys.iter().filter_map(|k| Key::parse(k).ok()).collect();
            bindings.insert((*section, *action), keys);
        }
        Keymap { bindings }
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Keys {
    One(String),
    Many(Vec<String>),
}

impl Keymap {
    /// The action `key` does in `section` (the section's own bindings first, then global).
    pub fn action(&self, section: Section, key: &Key) -> Option<Action> {
        let find = |s: Section| {
            self.bindings
                .iter()
                .find(|((sec, _), keys)| *sec == s && keys.contains(key))
                .map(|((_, a), _)| *a)
        };
        match section {
            Section::Global => find(Section::Global),
            s => find(s).or_else(|| find(Section::Global)),
        }
    }

    /// The keys bound to `action` in `section`.
    pub fn keys(&self, section: Section, action: Action) -> &[Key] {
        self.bindings
            .get(&(section, action))
            .map_or(&[], Vec::as_slice)
    }

    /// The first key of `action`, for hints: the section's, else global's.
    pub fn hint(&self, section: Section, action: Action) -> Option<Key> {
        self.keys(section, action)
            .first()
            .or_else(|| self.keys(Section::Global, action).first())
            .copied()
    }

    /// Every binding, by section then action, for help.
    pub fn all(&self) -> impl Iterator<Item = (Section, Action, &[Key])> {
        self.bindings
            .iter()
            .filter(|(_, keys)| !keys.is_empty())
            .map(|((s, a), k)| (*s, *a, k.as_slice()))
    }

    /// The defaults with `text` (the contents of `path`) over them.
    pub fn parse(path: &Path, text: &str) -> Result<Keymap, KeysError> {
        type File = BTreeMap<String, BTreeMap<String, toml::Spanned<Keys>>>;
        let line_of = |offset: usize| text[..offset.min(text.len())].matches('\n').count() + 1;
        let file: File = toml::from_str(text).map_err(|e| KeysError::Syntax {
            path: path.to_owned(),
            line: e.span().map_or(1, |s| line_of(s.start)),
            message: e.message().to_owned(),
        })?;
        let mut map = Keymap::default();
        for (section_name, actions) in file {
            let section = match section_name.as_str() {
                "global" => Section::Global,
                "list" => Section::List,
                "input" => Section::Input,
                _ => {
                    return Err(KeysError::UnknownSection {
                        path: path.to_owned(),
                        section: section_name,
                    });
                }
            };
            for (name, keys) in actions {
                let line = line_of(keys.span().start);
                let action = Action::from_name(&name).ok_or_else(|| KeysError::UnknownAction {
                    path: path.to_owned(),
                    line,
                    section: section_name.clone(),
                    action: name.clone(),
                })?;
                let written = match keys.into_inner() {
                    Keys::One(k) => vec![k],
                    Keys::Many(k) => k,
                };
                let mut parsed = Vec::with_capacity(written.len());
                for k in written {
                    let key = Key::parse(&k).map_err(|reason| KeysError::BadKey {
                        path: path.to_owned(),
                        line,
                        action: name.clone(),
                        key: k.clone(),
                        reason,
                    })?;
                    parsed.push(key);
                }
                map.bindings.insert((section, action), parsed);
            }
        }
        Ok(map)
    }

    /// The bindings from `path` over the defaults; the defaults when there is no such file.
    pub fn load(path: &Path) -> Result<Keymap, KeysError> {
        let io = |source| KeysError::Io {
            path: path.to_owned(),
            source,
        };
        let file = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Keymap::default()),
            Err(e) => return Err(io(e)),
        };
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::Read::take(file, MAX_KEYS_FILE), &mut text)
            .map_err(io)?;
        Keymap::parse(path, &text)
    }
}

/// `keys.toml` in the config directory: `$XDG_CONFIG_HOME/allium`, else `~/.config/allium`.
pub fn default_path() -> Option<PathBuf> {
    let xdg = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute());
    let base = match xdg {
        Some(x) => x,
        None => PathBuf::from(std::env::var_os("HOME")?).join(".config"),
    };
    base.is_absolute()
        .then(|| base.join(crate::state::APP_DIR).join(KEYS_FILE))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> Key {
        Key::parse(s).unwrap()
    }

    #[test]
    fn defaults_give_readline_keys_in_the_input_and_q_in_the_list() {
        let k = Keymap::default();
        assert_eq!(
            k.action(Section::Input, &key("ctrl-a")),
            Some(Action::LineStart)
        );
        assert_eq!(k.action(Section::Input, &key("q")), None, "q is typed");
        assert_eq!(k.action(Section::List, &key("q")), Some(Action::Quit));
        assert_eq!(k.action(Section::Input, &key("ctrl-c")), Some(Action::Quit));
        assert_eq!(
            k.action(Section::Input, &key("ctrl-x")),
            Some(Action::Editor)
        );
    }

    #[test]
    fn a_file_replaces_the_keys_of_the_actions_it_names() {
        let text = "[global]\neditor = \"alt-e\"\n[input]\nnewline = [\"ctrl-o\", \"alt-enter\"]\n";
        let k = Keymap::parse(Path::new("keys.toml"), text).unwrap();
        assert_eq!(
            k.action(Section::Input, &key("alt-e")),
            Some(Action::Editor)
        );
        assert_eq!(k.action(Section::Input, &key("ctrl-x")), None);
        assert_eq!(
            k.action(Section::Input, &key("ctrl-o")),
            Some(Action::Newline)
        );
        assert_eq!(k.hint(Section::Input, Action::Newline), Some(key("ctrl-o")));
    }

    #[test]
    fn a_bad_file_names_the_line() {
        let p = Path::new("keys.toml");
        let e = Keymap::parse(p, "[input]\n\nsend = \"enter\"\nfly = \"f2\"\n").unwrap_err();
        assert!(matches!(e, KeysError::UnknownAction { line: 4, .. }), "{e}");
        assert!(e.to_string().contains("line 4"), "{e}");
        let e = Keymap::parse(p, "[input]\nsend = \"ctrl-\"\n").unwrap_err();
        assert!(matches!(e, KeysError::BadKey { line: 2, .. }), "{e}");
        let e = Keymap::parse(p, "[input]\nsend = \"enter\"\nnewline = [\n").unwrap_err();
        assert!(matches!(e, KeysError::Syntax { line: 3.., .. }), "{e}");
        let e = Keymap::parse(p, "[keys]\n").unwrap_err();
        assert!(matches!(e, KeysError::UnknownSection { .. }), "{e}");
    }

    #[test]
    fn keys_print_as_help_shows_them() {
        assert_eq!(key("ctrl-x").to_string(), "Ctrl-X");
        assert_eq!(key("alt-enter").to_string(), "Alt-Enter");
        assert_eq!(key("?").to_string(), "?");
        assert!(Key::parse("shift-q").is_err());
    }
}
