//! Text for the terminal: what another person wrote made safe to draw, measured in terminal
//! cells (`unicode-width`), and wrapped to a width; local times.

use ratatui::style::Style;
use ratatui::text::{Line, Span};
use unicode_width::UnicodeWidthChar;

/// `c` as something harmless to draw ([`crate::display::is_unsafe`] decides what is not):
/// control characters C0 and DEL become their visible Control Pictures (ESC → ␛, BEL → ␇,
/// CR → ␍), and C1 controls, bidirectional overrides and isolates and line separators, which
/// could make a message read as something else, become U+FFFD. A terminal never receives a
/// character of a message that it would act on.
pub fn safe_char(c: char) -> char {
    if !crate::display::is_unsafe(c) {
        return c;
    }
    match c {
        '\u{0}'..='\u{1f}' => char::from_u32(0x2400 + c as u32).unwrap_or('\u{fffd}'),
        '\u{7f}' => '\u{2421}',
        _ => '\u{fffd}',
    }
}

/// One line of text another person wrote (a name, or one line of a message), made safe: see
/// [`safe_char`]. Tabs become a space.
pub fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| if c == '\t' { ' ' } else { safe_char(c) })
        .collect()
}

/// Cells `c` takes: 0 for combining marks and joiners, 2 for wide characters and emoji.
pub fn char_width(c: char) -> usize {
    c.width().unwrap_or(0)
}

/// Cells `s` takes, measured as [`wrap`] measures.
pub fn width(s: &str) -> usize {
    s.chars().map(char_width).sum()
}

/// `s` cut to at most `max` cells, with `…` when cut.
pub fn truncate(s: &str, max: usize) -> String {
    if width(s) <= max {
        return s.to_owned();
    }
    let mut out = String::new();
    let mut w = 0;
    for c in s.chars() {
        let cw = char_width(c);
        if w + cw + 1 > max {
            break;
        }
        out.push(c);
        w += cw;
    }
    if max > 0 {
        out.push('…');
    }
    out
}

/// Styled pieces of text, laid into lines of at most `width` cells. Lines break at `\n` and
/// before a word that would not fit (a word longer than a line is cut); continuation lines
/// start with `indent` cells of blank. Control characters are neutralised here, so a caller
/// may pass text as received.
pub fn wrap(pieces: &[(String, Style)], width: usize, indent: usize) -> Vec<Line<'static>> {
    let width = width.max(indent + 2);
    let mut lines: Vec<Vec<(char, Style)>> = vec![Vec::new()];
    let mut used = 0usize;
    // Where the current line may break (index after a space) and the cells up to there.
    let mut last_space: Option<(usize, usize)> = None;
    let cells: Vec<(char, Style)> = pieces
        .iter()
        .flat_map(|(t, style)| t.chars().map(move |c| (c, *style)))
        .collect();
    let new_line = |lines: &mut Vec<Vec<(char, Style)>>, style: Style| {
        let mut l = Vec::new();
        l.extend(std::iter::repeat_n((' ', style), indent));
        lines.push(l);
    };
    for (c, style) in cells {
        if c == '\n' {
            new_line(&mut lines, style);
            used = indent;
            last_space = None;
            continue;
        }
        let c = if c == '\t' { ' ' } else { safe_char(c) };
        let cw = char_width(c);
        if used + cw > width {
            let Some(line) = lines.last_mut() else {
                continue;
            };
            if c == ' ' {
                // A space at the edge is the break itself.
                new_line(&mut lines, style);
                used = indent;
                last_space = None;
                continue;
            }
            let moved: Vec<(char, Style)> = match last_space {
                Some((at, _)) if at < line.len() => line.split_off(at),
                _ => Vec::new(),
            };
            new_line(&mut lines, style);
            used = indent + moved.iter().map(|(c, _)| char_width(*c)).sum::<usize>();
            if let Some(l) = lines.last_mut() {
                l.extend(moved);
            }
            last_space = None;
        }
        if let Some(line) = lines.last_mut() {
            line.push((c, style));
            used += cw;
            if c == ' ' {
                last_space = Some((line.len(), used));
            }
        }
    }
    lines.into_iter().map(to_line).collect()
}

fn to_line(cells: Vec<(char, Style)>) -> Line<'static> {
    let mut spans: Vec<Span<'static>> = Vec::new();
    let mut run = String::new();
    let mut style: Option<Style> = None;
    for (c, s) in cells {
        if style.is_some_and(|st| st != s) {
            spans.push(Span::styled(
                std::mem::take(&mut run),
                style.unwrap_or_default(),
            ));
        }
        style = Some(s);
        run.push(c);
    }
    if !run.is_empty() {
        spans.push(Span::styled(run, style.unwrap_or_default()));
    }
    Line::from(spans)
}

/// Local wall-clock time, from an offset read once at start (reading it later is unsound
/// with threads running, so the `time` crate refuses it).
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    offset: time::UtcOffset,
}

impl Clock {
    /// Times shown at `offset` from UTC.
    pub fn new(offset: time::UtcOffset) -> Clock {
        Clock { offset }
    }

    /// The local offset, or UTC when it cannot be read. Call before starting any thread.
    pub fn local() -> Clock {
        Clock::new(time::UtcOffset::current_local_offset().unwrap_or(time::UtcOffset::UTC))
    }

    fn at(&self, ms: u64) -> time::OffsetDateTime {
        let secs = i64::try_from(ms / 1000).unwrap_or(i64::MAX);
        time::OffsetDateTime::from_unix_timestamp(secs)
            .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
            .to_offset(self.offset)
    }

    /// `HH:MM` of `ms` (ms since the Unix epoch).
    pub fn time(&self, ms: u64) -> String {
        let t = self.at(ms);
        format!("{:02}:{:02}", t.hour(), t.minute())
    }

    /// `HH:MM` when `ms` falls on the same day as `now_ms`, else `MM-DD`.
    pub fn short(&self, ms: u64, now_ms: u64) -> String {
        let (t, now) = (self.at(ms), self.at(now_ms));
        if t.date() == now.date() {
            self.time(ms)
        } else {
            format!("{:02}-{:02}", u8::from(t.month()), t.day())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plain(lines: &[Line<'_>]) -> Vec<String> {
        lines
            .iter()
            .map(|l| l.spans.iter().map(|s| s.content.as_ref()).collect())
            .collect()
    }

    #[test]
    fn control_characters_become_visible_and_harmless() {
        assert_eq!(sanitize("a\u{1b}[2Jb\u{7}\r"), "a␛[2Jb␇␍");
        assert_eq!(sanitize("\u{9b}x\u{202e}y"), "\u{fffd}x\u{fffd}y");
        assert!(
            sanitize("\u{1b}\u{7f}\u{85}")
                .chars()
                .all(|c| !c.is_control())
        );
    }

    #[test]
    fn wide_characters_and_emoji_take_two_cells() {
        assert_eq!(width("日本"), 4);
        assert_eq!(width("🦀"), 2);
        assert_eq!(width("e\u{301}"), 1);
        assert_eq!(truncate("日本語です", 5), "日本…");
    }

    #[test]
    fn wrapping_breaks_at_spaces_cuts_long_words_and_keeps_wide_characters_whole() {
        let s = Style::default();
        let w = wrap(&[("hello wide world".into(), s)], 11, 0);
        assert_eq!(plain(&w), vec!["hello wide ", "world"]);
        let w = wrap(&[("abcdefghij".into(), s)], 4, 0);
        assert_eq!(plain(&w), vec!["abcd", "efgh", "ij"]);
        let w = wrap(&[("日本語".into(), s)], 5, 0);
        assert_eq!(plain(&w), vec!["日本", "語"]);
        let w = wrap(&[("a\nb".into(), s)], 10, 2);
        assert_eq!(plain(&w), vec!["a", "  b"]);
    }

    #[test]
    fn times_are_local() {
        let c = Clock::new(time::UtcOffset::from_hms(2, 0, 0).unwrap_or(time::UtcOffset::UTC));
        // 2023-11-14 22:13:20 UTC is 00:13 the next day at +02:00.
        assert_eq!(c.time(1_700_000_000_000), "00:13");
        assert_eq!(c.short(1_700_000_000_000, 1_700_000_000_000), "00:13");
        assert_eq!(c.short(1_700_000_000_000, 1_700_200_000_000), "11-15");
    }
}
