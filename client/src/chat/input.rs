//! The draft: multi-line text with a cursor, readline's motions and kills, and the lines sent
//! before to go back to.

use super::text::{char_width, safe_char};

/// Lines sent that Up brings back.
const SENT_KEPT: usize = 100;

/// The draft being written.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Input {
    text: String,
    /// Byte offset of the cursor, always on a character boundary.
    cursor: usize,
    /// Drafts sent, oldest first.
    sent: Vec<String>,
    /// Which sent draft is shown while going back (index into `sent`), and the draft that was
    /// being written before.
    browsing: Option<(usize, String)>,
}

impl Input {
    /// The text.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.text.is_empty()
    }

    /// Replaces the text (from `$EDITOR`), the cursor at its end.
    pub fn set(&mut self, text: String) {
        self.cursor = text.len();
        self.text = text;
        self.browsing = None;
    }

    /// Takes the text out to send it, remembering it for [`Self::history_prev`].
    pub fn take(&mut self) -> String {
        let text = std::mem::take(&mut self.text);
        self.cursor = 0;
        self.browsing = None;
        if !text.trim().is_empty() && self.sent.last() != Some(&text) {
            self.sent.push(text.clone());
            if self.sent.len() > SENT_KEPT {
                self.sent.remove(0);
            }
        }
        text
    }

    /// Inserts `s` at the cursor.
    pub fn insert(&mut self, s: &str) {
        self.text.insert_str(self.cursor, s);
        self.cursor += s.len();
    }

    fn line_start(&self) -> usize {
        self.text[..self.cursor].rfind('\n').map_or(0, |i| i + 1)
    }

    fn line_end(&self) -> usize {
        self.text[self.cursor..]
            .find('\n')
            .map_or(self.text.len(), |i| self.cursor + i)
    }

    fn prev_boundary(&self, at: usize) -> usize {
        self.text[..at].char_indices().last().map_or(0, |(i, _)| i)
    }

    fn next_boundary(&self, at: usize) -> usize {
        self.text[at..]
            .chars()
            .next()
            .map_or(at, |c| at + c.len_utf8())
    }

    /// Deletes the character before the cursor.
    pub fn backspace(&mut self) {
        let from = self.prev_boundary(self.cursor);
        self.text.replace_range(from..self.cursor, "");
        self.cursor = from;
    }

    /// Deletes the character under the cursor.
    pub fn delete(&mut self) {
        let to = self.next_boundary(self.cursor);
        self.text.replace_range(self.cursor..to, "");
    }

    /// One character left.
    pub fn left(&mut self) {
        self.cursor = self.prev_boundary(self.cursor);
    }

    /// One character right.
    pub fn right(&mut self) {
        self.cursor = self.next_boundary(self.cursor);
    }

    /// Ctrl-A: start of the line.
    pub fn home(&mut self) {
        self.cursor = self.line_start();
    }

    /// Ctrl-E: end of the line.
    pub fn end(&mut self) {
        self.cursor = self.line_end();
    }

    /// Ctrl-K: deletes to the end of the line (the newline too, at the end of a line).
    pub fn kill_to_end(&mut self) {
        let end = self.line_end();
        let end = if end == self.cursor {
            self.next_boundary(end)
        } else {
            end
        };
        self.text.replace_range(self.cursor..end, "");
    }

    /// Ctrl-U: deletes to the start of the line.
    pub fn kill_to_start(&mut self) {
        let start = self.line_start();
        self.text.replace_range(start..self.cursor, "");
        self.cursor = start;
    }

    fn word_start(&self) -> usize {
        let before = &self.text[..self.cursor];
        let trimmed = before.trim_end_matches(|c: char| !c.is_alphanumeric());
        trimmed
            .char_indices()
            .rev()
            .find(|(_, c)| !c.is_alphanumeric())
            .map_or(0, |(i, c)| i + c.len_utf8())
    }

    /// Ctrl-W: deletes the word before the cursor.
    pub fn kill_word(&mut self) {
        let from = self.word_start();
        self.text.replace_range(from..self.cursor, "");
        self.cursor = from;
    }

    /// Alt-B: back to the start of the word.
    pub fn word_back(&mut self) {
        self.cursor = self.word_start();
    }

    /// Alt-F: forward to the end of the word.
    pub fn word_forward(&mut self) {
        let after = &self.text[self.cursor..];
        let skip = after.len()
            - after
                .trim_start_matches(|c: char| !c.is_alphanumeric())
                .len();
        let rest = &after[skip..];
        let word = rest
            .char_indices()
            .find(|(_, c)| !c.is_alphanumeric())
            .map_or(rest.len(), |(i, _)| i);
        self.cursor += skip + word;
    }

    /// The cursor's line and its column in cells.
    fn position(&self) -> (usize, usize) {
        let line = self.text[..self.cursor].matches('\n').count();
        let col = self.text[self.line_start()..self.cursor]
            .chars()
            .map(char_width)
            .sum();
        (line, col)
    }

    /// Moves to line `line` near column `col` (cells).
    fn goto(&mut self, line: usize, col: usize) {
        let start = match line.checked_sub(1) {
            None => 0,
            Some(n) => self
                .text
                .match_indices('\n')
                .nth(n)
                .map_or(self.text.len(), |(i, _)| i + 1),
        };
        let mut at = start;
        let mut w = 0;
        for (i, c) in self.text[start..].char_indices() {
            if c == '\n' || w + char_width(c) > col {
                at = start + i;
                break;
            }
            w += char_width(c);
            at = start + i + c.len_utf8();
        }
        self.cursor = at;
    }

    /// Up: the line above, or on the first line the previous draft sent.
    pub fn history_prev(&mut self) {
        let (line, col) = self.position();
        if line > 0 {
            self.goto(line - 1, col);
            return;
        }
        let next = match &self.browsing {
            Some((0, _)) => return,
            Some((i, _)) => i - 1,
            None if self.sent.is_empty() => return,
            None => self.sent.len() - 1,
        };
        let draft = match self.browsing.take() {
            Some((_, d)) => d,
            None => self.text.clone(),
        };
        self.text = self.sent[next].clone();
        self.cursor = self.text.len();
        self.browsing = Some((next, draft));
    }

    /// Down: the line below, or on the last line the next draft sent (and at the end the draft
    /// that was being written).
    pub fn history_next(&mut self) {
        let (line, col) = self.position();
        if line < self.text.matches('\n').count() {
            self.goto(line + 1, col);
            return;
        }
        match self.browsing.take() {
            None => {}
            Some((i, draft)) if i + 1 >= self.sent.len() => {
                self.text = draft;
                self.cursor = self.text.len();
            }
            Some((i, draft)) => {
                self.text = self.sent[i + 1].clone();
                self.cursor = self.text.len();
                self.browsing = Some((i + 1, draft));
            }
        }
    }

    /// The draft laid into rows of at most `width` cells (a line longer than that continues on
    /// the next row), with the cursor's row and column.
    pub fn rows(&self, width: usize) -> (Vec<String>, (usize, usize)) {
        let width = width.max(2);
        let mut rows = vec![String::new()];
        let mut used = 0;
        let mut cursor = (0, 0);
        let mut at = 0;
        for c in self.text.chars() {
            if at == self.cursor {
                cursor = (rows.len() - 1, used);
            }
            at += c.len_utf8();
            if c == '\n' {
                rows.push(String::new());
                used = 0;
                continue;
            }
            let c = safe_char(c);
            let w = char_width(c);
            if used + w > width {
                rows.push(String::new());
                used = 0;
            }
            if let Some(r) = rows.last_mut() {
                r.push(c);
            }
            used += w;
        }
        if self.cursor >= self.text.len() {
            if used >= width {
                rows.push(String::new());
                used = 0;
            }
            cursor = (rows.len() - 1, used);
        }
        (rows, cursor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(text: &str) -> Input {
        let mut i = Input::default();
        i.insert(text);
        i
    }

    #[test]
    fn readline_kills_and_motions() {
        let mut i = input("hello big world");
        i.kill_word();
        assert_eq!(i.text(), "hello big ");
        i.word_back();
        i.word_back();
        i.word_forward();
        i.insert("!");
        assert_eq!(i.text(), "hello! big ");
        i.kill_to_end();
        assert_eq!(i.text(), "hello!");
        i.left();
        i.kill_to_start();
        assert_eq!(i.text(), "!");
        i.end();
        i.insert("é日");
        i.backspace();
        assert_eq!(i.text(), "!é");
        i.home();
        i.delete();
        assert_eq!(i.text(), "é");
    }

    #[test]
    fn lines_move_within_the_draft_and_back_through_sent_lines() {
        let mut i = input("first");
        assert_eq!(i.take(), "first");
        i.insert("line one\nline two");
        i.home();
        i.kill_to_end();
        assert_eq!(i.text(), "line one\n");
        i.insert("2");
        i.history_prev();
        i.insert(">");
        assert_eq!(i.text(), "l>ine one\n2", "up keeps the column");
        i.history_prev();
        assert_eq!(
            i.text(),
            "first",
            "past the first line: the line sent before"
        );
        i.history_next();
        assert_eq!(i.text(), "l>ine one\n2", "and back to the draft");
    }

    #[test]
    fn rows_wrap_long_lines_and_place_the_cursor() {
        let i = input("abcdef\n日本");
        let (rows, cursor) = i.rows(4);
        assert_eq!(rows, vec!["abcd", "ef", "日本", ""]);
        assert_eq!(cursor, (3, 0), "a full row puts the cursor on the next");
        let i = input("ab\u{1b}");
        assert_eq!(i.rows(10).0, vec!["ab␛"]);
    }
}
