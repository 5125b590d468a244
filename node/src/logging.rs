//! Logging setup and the [`Sensitive`] wrapper. The rules of what may be logged at which level
//! are in `doc/logging.md`.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};

use tracing_subscriber::EnvFilter;

/// Why logging could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The filter does not parse.
    #[error("bad log filter {filter:?}: {reason}")]
    BadFilter {
        /// The filter.
        filter: String,
        /// What was wrong.
        reason: String,
    },
    /// A global subscriber was already installed.
    #[error("logging was already initialised")]
    AlreadyInitialised,
}

/// Installs the global subscriber: events matching `filter` (`EnvFilter` syntax) go to stderr,
/// as text or, with `json`, one JSON object per line.
pub fn init(filter: &str, json: bool) -> Result<(), LogError> {
    let env_filter = EnvFilter::try_new(filter).map_err(|e| LogError::BadFilter {
        filter: filter.to_owned(),
        reason: e.to_string(),
    })?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(env_filter)
        .with_writer(std::io::stderr);
    let result = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
    result.map_err(|_| LogError::AlreadyInitialised)
}

// On by default: a value is scrubbed unless the operator turned safe logging off to debug.
static SAFE_LOGGING: AtomicBool = AtomicBool::new(true);

/// Turns scrubbing of [`Sensitive`] values on (the default) or off, for the whole process.
pub fn set_safe_logging(enabled: bool) {
    SAFE_LOGGING.store(enabled, Ordering::Relaxed);
}

/// Whether [`Sensitive`] values are scrubbed.
pub fn safe_logging() -> bool {
    SAFE_LOGGING.load(Ordering::Relaxed)
}

/// A value that identifies a user (a client address, a mailbox id): prints `[scrubbed]` unless
/// safe logging is off. Wrap it where it is logged: `warn!(client = %sensitive(addr), ...)`.
/// Never wrap a key: keys are not logged at all.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Sensitive<T>(T);

/// Wraps `value` as [`Sensitive`].
pub fn sensitive<T>(value: T) -> Sensitive<T> {
    Sensitive(value)
}

const SCRUBBED: &str = "[scrubbed]";

impl<T: fmt::Display> fmt::Display for Sensitive<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if safe_logging() {
            f.write_str(SCRUBBED)
        } else {
            self.0.fmt(f)
        }
    }
}

impl<T: fmt::Debug> fmt::Debug for Sensitive<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if safe_logging() {
            f.write_str(SCRUBBED)
        } else {
            self.0.fmt(f)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The only test in this crate that changes the global flag, so tests cannot race on it.
    #[test]
    fn scrubbed_unless_turned_off() {
        let addr: std::net::SocketAddr = "192.0.2.7:4433".parse().unwrap();
        assert_eq!(format!("{}", sensitive(addr)), "[scrubbed]");
        assert_eq!(format!("{:?}", sensitive(addr)), "[scrubbed]");
        set_safe_logging(false);
        assert_eq!(format!("{}", sensitive(addr)), "192.0.2.7:4433");
        set_safe_logging(true);
        assert_eq!(format!("{}", sensitive(addr)), "[scrubbed]");
    }

    #[test]
    fn bad_filter_is_refused() {
        assert!(matches!(
            init("allium_node=notalevel", false),
            Err(LogError::BadFilter { .. })
        ));
    }
}
