//! How the `allium` command shows a transfer: a progress bar with rate and time left on a
//! terminal, JSON lines with `--json`, nothing otherwise.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::json;

use super::Progress;
use crate::display;

/// Shows the progress of one transfer.
#[derive(Debug)]
pub struct Reporter {
    bar: Option<ProgressBar>,
    json: bool,
    direction: &'static str,
    name: String,
}

impl Reporter {
    /// A reporter for `name` (another person's text is neutralised for the terminal).
    pub fn new(direction: &'static str, name: &str, json: bool) -> Reporter {
        let bar = (!json && std::io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
            let style = ProgressStyle::with_template(
                "{msg} [{bar:28}] {bytes}/{total_bytes} {binary_bytes_per_sec} ~{eta} left",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
            bar.set_style(style);
            bar.set_message(format!("{direction} {}", display::neutralize(name)));
            bar
        });
        Reporter {
            bar,
            json,
            direction,
            name: name.to_owned(),
        }
    }

    /// Shows `p`. With `--json`, one line per chunk done (at most 17,492 per file), so a reader
    /// knows exactly which point a transfer had reached when it was stopped.
    #[allow(clippy::print_stdout)] // JSON progress lines are the command's output
    pub fn update(&mut self, p: &Progress) {
        if let Some(bar) = &self.bar {
            if bar.length() != Some(p.size) {
                bar.set_length(p.size);
            }
            bar.set_position(p.bytes);
        }
        if self.json {
            println!("{}", self.line(p));
        }
    }

    fn line(&self, p: &Progress) -> serde_json::Value {
        json!({
            "progress": self.direction,
            "name": self.name,
            "done": p.done,
            "total": p.total,
            "bytes": p.bytes,
            "size": p.size,
            "resumed": p.resumed,
            "transferred": p.transferred,
            "duplicates": p.duplicates,
            "refused": p.refused,
        })
    }

    /// Ends the bar (the JSON stream needs no end).
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
