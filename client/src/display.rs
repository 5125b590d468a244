//! Text another person wrote, made safe to show in a terminal (BAD_INPUTS row 31).
//!
//! A message, a contact's name or a file name comes from someone else. Printed raw, its control
//! characters would drive the terminal: ESC starts escape sequences (clear the screen, set the
//! window title, move the cursor), BEL rings, CR overwrites the line, and the Unicode bidi
//! controls reorder what follows. Every human-readable output passes such text through
//! [`neutralize`]; `--json` output stays exact (JSON escapes control characters itself).

use std::borrow::Cow;

/// Whether `c` must not reach a terminal as is: the one rule for every human-readable output
/// (the command line shows such a character as an escape, `allium chat` as a visible symbol).
pub fn is_unsafe(c: char) -> bool {
    c.is_control()
        // Bidi embeddings, overrides and isolates, and the marks: they reorder the display.
        || matches!(c, '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
        // Line and paragraph separators break lines like a newline would.
        || matches!(c, '\u{2028}' | '\u{2029}')
}

/// `text` with every control character shown as a visible escape (`\e`, `\a`, `\r`, `\t`,
/// `\u{…}`), on one line: a newline becomes `\n`, so one message can never pose as two.
pub fn neutralize(text: &str) -> Cow<'_, str> {
    if !text.chars().any(is_unsafe) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{1b}' => out.push_str("\\e"),
            '\u{7}' => out.push_str("\\a"),
            c if is_unsafe(c) => out.push_str(&format!("\\u{{{:x}}}", u32::from(c))),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// [`neutralize`] for text shown over several lines: newlines stay, every following line is
/// indented by `indent` so it cannot pose as a line of its own (a new message, a prompt).
pub fn neutralize_lines(text: &str, indent: &str) -> String {
    text.split('\n')
        .map(|line| neutralize(line).into_owned())
        .collect::<Vec<_>>()
        .join(&format!("\n{indent}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn plain_text_passes_untouched() {
        assert!(matches!(
            neutralize("héllo 👋 世界"),
            Cow::Borrowed("héllo 👋 世界")
        ));
    }

    #[test]
    fn escapes_and_bidi_are_shown_not_obeyed() {
        assert_eq!(
            neutralize("a\u{1b}]0;pwned\u{7}b\u{1b}[2Jc\rd"),
            "a\\e]0;pwned\\ab\\e[2Jc\\rd"
        );
        assert_eq!(neutralize("x\u{202e}gpj.exe"), "x\\u{202e}gpj.exe");
        assert_eq!(neutralize("one\ntwo"), "one\\ntwo");
        assert_eq!(neutralize("\u{9b}31m"), "\\u{9b}31m");
    }

    #[test]
    fn lines_stay_lines_but_indented() {
        assert_eq!(
            neutralize_lines("hi\nbob: send money\u{1b}[1A", "  "),
            "hi\n  bob: send money\\e[1A"
        );
    }

    proptest! {
        #[test]
        fn nothing_unsafe_survives(s in any::<String>()) {
            let out = neutralize(&s);
            prop_assert!(!out.chars().any(is_unsafe));
            let lines = neutralize_lines(&s, "  ");
            prop_assert!(lines.chars().filter(|c| *c != '\n').all(|c| !is_unsafe(c)));
        }
    }
}
