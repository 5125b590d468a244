//! Drawing the [`Model`]: the conversation list, the open conversation's history, the input,
//! the status line, and help or a safety number over them. Colours are foreground accents on
//! the terminal's own background, or none at all under `NO_COLOR`; everything another person
//! wrote goes through [`text::wrap`] or [`text::sanitize`] before it is drawn.

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Position, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Clear, Paragraph};

use super::keys::{Action, Section};
use super::model::{COMMANDS, Focus, Model, Overlay, Row, Shown};
use super::text::{self, sanitize, truncate, width};
use crate::app::Reach;
use crate::session;
use crate::state::Direction;

/// Styles: accents in the terminal's colours, or only modifiers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Theme {
    color: bool,
}

impl Theme {
    /// With colours when `color`.
    pub fn new(color: bool) -> Theme {
        Theme { color }
    }

    /// Colours unless `NO_COLOR` is set to something (no-color.org).
    pub fn from_env() -> Theme {
        Theme::new(std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()))
    }

    fn fg(&self, c: Color) -> Style {
        if self.color {
            Style::new().fg(c)
        } else {
            Style::new()
        }
    }

    fn accent(&self) -> Style {
        self.fg(Color::Cyan).add_modifier(Modifier::BOLD)
    }

    fn me(&self) -> Style {
        self.fg(Color::Yellow).add_modifier(Modifier::BOLD)
    }

    fn dim(&self) -> Style {
        Style::new().add_modifier(Modifier::DIM)
    }

    fn ok(&self) -> Style {
        self.fg(Color::Green)
    }

    fn error(&self) -> Style {
        self.fg(Color::Red).add_modifier(Modifier::BOLD)
    }

    fn selected(&self) -> Style {
        Style::new().add_modifier(Modifier::REVERSED)
    }

    fn hit(&self) -> Style {
        self.fg(Color::Yellow)
            .add_modifier(Modifier::REVERSED | Modifier::BOLD)
    }

    fn border(&self, focused: bool) -> Style {
        if focused { self.accent() } else { Style::new() }
    }
}

/// Draws the whole screen.
pub fn draw(frame: &mut Frame<'_>, model: &mut Model, theme: &Theme) {
    let area = frame.area();
    let [body, status] = Layout::vertical([Constraint::Min(3), Constraint::Length(1)]).areas(area);
    let list_width = (body.width / 4).clamp(16, 30).min(body.width / 2);
    let [list, right] =
        Layout::horizontal([Constraint::Length(list_width), Constraint::Min(10)]).areas(body);
    let inner_width = usize::from(right.width.saturating_sub(2)).max(2);
    let (draft_rows, cursor) = model.input.rows(inner_width);
    let input_height = u16::try_from(draft_rows.len().clamp(1, 6)).unwrap_or(6) + 2;
    let transfers_height =
        u16::try_from(model.transfers.len().min(MAX_TRANSFER_LINES)).unwrap_or(0);
    let [history, transfers, input] = Layout::vertical([
        Constraint::Min(3),
        Constraint::Length(transfers_height),
        Constraint::Length(input_height.min(right.height.saturating_sub(3))),
    ])
    .areas(right);
    draw_list(frame, model, theme, list);
    draw_history(frame, model, theme, history);
    draw_transfers(frame, model, theme, transfers);
    draw_input(frame, model, theme, input, &draft_rows, cursor);
    draw_status(frame, model, theme, status);
    match model.overlay.clone() {
        Some(Overlay::Help(top)) => draw_help(frame, model, theme, area, top),
        Some(Overlay::Verify {
            name,
            number,
            verified,
        }) => draw_verify(frame, theme, area, &name, &number, verified),
        None => {}
    }
}

fn draw_list(frame: &mut Frame<'_>, model: &Model, theme: &Theme, area: Rect) {
    let focused = model.focus == Focus::List && model.search.is_none();
    let block = Block::new()
        .borders(Borders::ALL)
        .border_style(theme.border(focused))
        .title(" Conversations ");
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let w = usize::from(inner.width);
    let open = model.open_index();
    let mut lines: Vec<Line<'static>> = Vec::new();
    for (i, c) in model.conversations().iter().enumerate() {
        let time = c
            .last_ms
            .map(|ms| model.clock.short(ms, model.now_ms))
            .unwrap_or_default();
        let badge = if c.unread > 0 {
            format!(" {}", c.unread.min(999))
        } else {
            String::new()
        };
        let mark = if c.verified { " ✓" } else { "" };
        let time = if time.is_empty() {
            time
        } else {
            format!(" {time}")
        };
        let fixed = 1 + width(mark) + width(&badge) + width(&time);
        let name = truncate(&sanitize(c.title()), w.saturating_sub(fixed));
        let pad = w.saturating_sub(fixed + width(&name));
        let base = if Some(i) == open {
            theme.selected()
        } else {
            Style::new()
        };
        let name_style = if c.unread > 0 {
            base.add_modifier(Modifier::BOLD)
        } else {
            base
        };
        lines.push(Line::from(vec![
            Span::styled(if Some(i) == open { "›" } else { " " }, base),
            Span::styled(name, name_style),
            Span::styled(mark, base.patch(theme.ok())),
            Span::styled(" ".repeat(pad), base),
            Span::styled(badge, base.patch(theme.accent())),
            Span::styled(time, base.patch(theme.dim())),
        ]));
    }
    if lines.is_empty() {
        lines.push(Line::styled("no one yet", theme.dim()));
    }
    // Keep the open conversation in view.
    let height = usize::from(inner.height);
    let top = open.map_or(0, |o| (o + 1).saturating_sub(height));
    let shown: Vec<Line<'static>> = lines.into_iter().skip(top).collect();
    frame.render_widget(Paragraph::new(shown), inner);
}

fn state_piece(row: &Row, model: &Model, theme: &Theme) -> Option<(String, Style)> {
    let retry = model
        .keys
        .hint(Section::Input, Action::Retry)
        .map_or_else(|| "retry".to_owned(), |k| k.to_string());
    match &row.shown {
        Shown::Received => None,
        Shown::Sending => Some(("  · sending…".into(), theme.dim())),
        Shown::Stored { holders, members } => Some((
            format!("  ✓ stored by {holders} of {members}"),
            theme.ok().add_modifier(Modifier::DIM),
        )),
        Shown::Failed(e) => Some((format!("  ✗ failed ({retry} retries): {e}"), theme.error())),
    }
}

/// The pieces of `text` with every case-insensitive occurrence of `query` styled as a hit.
fn highlighted(text: &str, query: &str, base: Style, hit: Style) -> Vec<(String, Style)> {
    let lower = text.to_lowercase();
    // Lower-casing may change lengths outside ASCII; then only exact matches are shown.
    let (hay, needle) = if lower.len() == text.len() {
        (lower, query.to_lowercase())
    } else {
        (text.to_owned(), query.to_owned())
    };
    if needle.is_empty() {
        return vec![(text.to_owned(), base)];
    }
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(i) = hay[at..].find(&needle) {
        let start = at + i;
        let end = start + needle.len();
        if !text.is_char_boundary(start) || !text.is_char_boundary(end) {
            break;
        }
        out.push((text[at..start].to_owned(), base));
        out.push((text[start..end].to_owned(), hit));
        at = end;
    }
    out.push((text[at..].to_owned(), base));
    out
}

fn draw_history(frame: &mut Frame<'_>, model: &mut Model, theme: &Theme, area: Rect) {
    let conv = model.open().cloned();
    let mut title = vec![Span::raw(" ")];
    match &conv {
        Some(c) => {
            title.push(Span::styled(
                truncate(&sanitize(c.title()), 40),
                theme.accent(),
            ));
            if c.verified {
                title.push(Span::styled(" ✓ verified", theme.ok()));
            } else if c.name.is_some() {
                title.push(Span::styled(" (not verified)", theme.dim()));
            }
            if c.name.is_some() {
                title.push(Span::styled(
                    format!(" {}", truncate(&c.peer, 20)),
                    theme.dim(),
                ));
            }
        }
        None => title.push(Span::raw("allium chat")),
    }
    title.push(Span::raw(" "));
    let block = Block::new().borders(Borders::ALL).title(Line::from(title));
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let w = usize::from(inner.width);
    let height = usize::from(inner.height);
    let Some(conv) = conv else {
        let me = model.me.to_string();
        let help = model
            .keys
            .hint(Section::List, Action::Help)
            .map_or_else(String::new, |k| format!(" · {k} for help"));
        let welcome = [
            ("No conversations yet.".to_owned(), Style::new()),
            (
                "\nAdd someone: type /add NAME ADDRESS and Enter.".to_owned(),
                Style::new(),
            ),
            (
                "\n\nYour address (give it to people):\n".into(),
                theme.dim(),
            ),
            (me, theme.accent()),
            (format!("\n\n{help}").replace("\n · ", "\n"), theme.dim()),
        ];
        frame.render_widget(Paragraph::new(text::wrap(&welcome, w, 0)), inner);
        model.max_scroll = 0;
        return;
    };
    let rows = model.rows();
    let them = sanitize(conv.title());
    let query = model
        .search
        .as_ref()
        .map(|s| s.query.clone())
        .unwrap_or_default();
    let hit = model.search.as_ref().and_then(|s| s.hit);
    let mut lines: Vec<Line<'static>> = Vec::new();
    let mut hit_line = None;
    for row in &rows {
        let (who, who_style) = match row.direction {
            Direction::Sent => ("you".to_owned(), theme.me()),
            Direction::Received => (them.clone(), theme.accent()),
        };
        let mut pieces = vec![
            (
                format!("{} ", model.clock.time(row.timestamp_ms)),
                theme.dim(),
            ),
            (who, who_style),
            (" ".into(), Style::new()),
        ];
        let text_style = Style::new();
        let hit_style = if Some(row.msg_id) == hit {
            theme.hit()
        } else {
            theme.accent().add_modifier(Modifier::UNDERLINED)
        };
        pieces.extend(highlighted(&row.text, &query, text_style, hit_style));
        pieces.extend(state_piece(row, model, theme));
        if Some(row.msg_id) == hit {
            hit_line = Some(lines.len());
        }
        lines.extend(text::wrap(&pieces, w, 6));
    }
    if rows.is_empty() {
        lines.push(Line::styled(
            "No messages yet. Write one below (Enter sends).",
            theme.dim(),
        ));
    }
    let total = lines.len();
    model.max_scroll = total.saturating_sub(height);
    model.scroll = model.scroll.min(model.max_scroll);
    let mut top = total.saturating_sub(height).saturating_sub(model.scroll);
    if let Some(h) = hit_line {
        if h < top || h >= top + height {
            top = h.saturating_sub(height / 3).min(model.max_scroll);
        }
    }
    let shown: Vec<Line<'static>> = lines.into_iter().skip(top).take(height).collect();
    frame.render_widget(Paragraph::new(shown), inner);
    if top + height < total {
        let more = format!(" ↓ {} more ", total - top - height);
        let x = area
            .right()
            .saturating_sub(u16::try_from(width(&more)).unwrap_or(0) + 1);
        let y = area.bottom().saturating_sub(1);
        frame.buffer_mut().set_string(x, y, more, theme.accent());
    }
}

/// Transfers shown at once above the input; more are summed up on the last line.
const MAX_TRANSFER_LINES: usize = 3;

/// One line per file on its way: direction, name, a bar, percent and bytes.
fn draw_transfers(frame: &mut Frame<'_>, model: &Model, theme: &Theme, area: Rect) {
    let n = model.transfers.len();
    for (i, t) in model.transfers.iter().take(MAX_TRANSFER_LINES).enumerate() {
        let y = area.y + u16::try_from(i).unwrap_or(0);
        if y >= area.bottom() {
            break;
        }
        let last = i + 1 == MAX_TRANSFER_LINES && n > MAX_TRANSFER_LINES;
        let line = if last {
            format!(" … and {} more files", n - i)
        } else {
            transfer_line(t, usize::from(area.width))
        };
        let line = truncate(&line, usize::from(area.width));
        frame
            .buffer_mut()
            .set_string(area.x, y, line, theme.accent());
    }
}

/// `↑ name [=====>    ]  42% 1.2/2.9 MB` fitted to `width` columns (the name gives way).
pub fn transfer_line(t: &crate::app::Transfer, columns: usize) -> String {
    let arrow = if t.sending { "↑" } else { "↓" };
    let pct = t
        .bytes
        .saturating_mul(100)
        .checked_div(t.size)
        .map_or(0, |p| p.min(100));
    let mb = |b: u64| format!("{}.{}", b / 1_000_000, b / 100_000 % 10);
    let tail = format!(" {pct:>3}% {}/{} MB", mb(t.bytes), mb(t.size));
    let bar_w: usize = 20;
    let filled = usize::try_from(pct).unwrap_or(0) * bar_w / 100;
    let bar = format!(
        "[{}{}{}]",
        "=".repeat(filled.saturating_sub(1)),
        if filled > 0 { ">" } else { "" },
        " ".repeat(bar_w - filled)
    );
    let room = columns.saturating_sub(width(arrow) + 2 + bar_w + 2 + tail.len());
    let name = truncate(&sanitize(&t.name), room.max(4));
    format!("{arrow} {name} {bar}{tail}")
}

fn draw_input(
    frame: &mut Frame<'_>,
    model: &Model,
    theme: &Theme,
    area: Rect,
    rows: &[String],
    cursor: (usize, usize),
) {
    if let Some(search) = &model.search {
        let block = Block::new()
            .borders(Borders::ALL)
            .border_style(theme.accent())
            .title(" Search (Enter: older match · Esc: close) ");
        let inner = block.inner(area);
        frame.render_widget(block, area);
        let q = sanitize(&search.query);
        frame.render_widget(Paragraph::new(q.clone()), inner);
        let x = inner.x
            + u16::try_from(width(&q))
                .unwrap_or(0)
                .min(inner.width.saturating_sub(1));
        frame.set_cursor_position(Position::new(x, inner.y));
        return;
    }
    let focused = model.focus == Focus::Input;
    let title = match model.open() {
        Some(c) => format!(" Message to {} ", truncate(&sanitize(c.title()), 30)),
        None => " Message ".into(),
    };
    let hint = if focused {
        let k = |a| {
            model
                .keys
                .hint(Section::Input, a)
                .map_or_else(String::new, |k| k.to_string())
        };
        format!(
            " {} send · {} new line · {} editor ",
            k(Action::Send),
            k(Action::Newline),
            k(Action::Editor)
        )
    } else {
        let k = model
            .keys
            .hint(Section::List, Action::FocusInput)
            .map_or_else(String::new, |k| k.to_string());
        format!(" {k} to write ")
    };
    let block = Block::new()
        .borders(Borders::ALL)
        .border_style(theme.border(focused))
        .title(title)
        .title_bottom(Line::styled(hint, theme.dim()).right_aligned());
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let height = usize::from(inner.height).max(1);
    let top = (cursor.0 + 1).saturating_sub(height);
    let style = if focused { Style::new() } else { theme.dim() };
    let lines: Vec<Line<'static>> = rows
        .iter()
        .skip(top)
        .take(height)
        .map(|r| Line::styled(r.clone(), style))
        .collect();
    frame.render_widget(Paragraph::new(lines), inner);
    if focused && model.overlay.is_none() {
        let x = inner.x + u16::try_from(cursor.1).unwrap_or(0);
        let y = inner.y + u16::try_from(cursor.0 - top).unwrap_or(0);
        frame.set_cursor_position(Position::new(x.min(inner.right()), y));
    }
}

fn draw_status(frame: &mut Frame<'_>, model: &Model, theme: &Theme, area: Rect) {
    let help = model
        .keys
        .hint(
            match model.focus {
                Focus::List => Section::List,
                Focus::Input => Section::Input,
            },
            Action::Help,
        )
        .map_or_else(String::new, |k| format!("{k} help "));
    let (left, style) = match &model.notice {
        Some((n, err)) => (
            sanitize(n),
            if *err { theme.error() } else { theme.accent() },
        ),
        None => network_line(model, theme),
    };
    let w = usize::from(area.width);
    let left = truncate(&format!(" {left}"), w.saturating_sub(width(&help) + 1));
    let pad = w.saturating_sub(width(&left) + width(&help));
    let line = Line::from(vec![
        Span::styled(left, style),
        Span::raw(" ".repeat(pad)),
        Span::styled(help, theme.dim()),
    ]);
    frame.render_widget(Paragraph::new(line), area);
}

fn network_line(model: &Model, theme: &Theme) -> (String, Style) {
    let n = &model.network;
    match &n.reach {
        Reach::Connecting => ("○ connecting…".into(), theme.dim()),
        Reach::Online => {
            let mut s = String::from("● online");
            if let Some(v) = n.roster_version {
                s.push_str(&format!(" · roster v{v}"));
            }
            match n.guards_up {
                Some(up) => s.push_str(&format!(" · guards {up}/{}", n.guards)),
                None => s.push_str(&format!(" · {} guards", n.guards)),
            }
            s.push_str(&format!(" · clock {:+} ms", n.clock_offset_ms));
            (s, theme.ok())
        }
        Reach::Unreachable(why) => (
            format!("✗ network unreachable: {why} — retrying; messages wait in the outbox"),
            theme.error(),
        ),
    }
}

/// A box of `w`×`h` cells centred in `area` (smaller when the area is).
fn centred(area: Rect, w: u16, h: u16) -> Rect {
    let w = w.min(area.width);
    let h = h.min(area.height);
    Rect::new(
        area.x + (area.width - w) / 2,
        area.y + (area.height - h) / 2,
        w,
        h,
    )
}

fn draw_help(frame: &mut Frame<'_>, model: &mut Model, theme: &Theme, area: Rect, top: usize) {
    let mut lines: Vec<Line<'static>> = Vec::new();
    let keys_of = |s: Section, a: Action| {
        model
            .keys
            .keys(s, a)
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
    };
    for a in Action::ALL {
        let mut keys = keys_of(Section::Global, *a);
        for s in [Section::List, Section::Input] {
            let own = keys_of(s, *a);
            if !own.is_empty() && !keys.is_empty() {
                keys.extend(own.iter().map(|k| format!("{k} ({})", s.name())));
            } else {
                keys.extend(own);
            }
        }
        if keys.is_empty() {
            continue;
        }
        lines.push(Line::from(vec![
            Span::styled(format!("{:<26}", keys.join(", ")), theme.accent()),
            Span::raw(a.help()),
        ]));
    }
    lines.push(Line::raw(""));
    for (c, what) in COMMANDS {
        lines.push(Line::from(vec![
            Span::styled(format!("{c:<26}"), theme.accent()),
            Span::raw(*what),
        ]));
    }
    lines.push(Line::raw(""));
    lines.push(Line::styled(
        "Keys: keys.toml in the config directory (doc/user.md). Up/Down scroll, any other key closes.",
        theme.dim(),
    ));
    let rect = centred(area, 78, area.height.saturating_sub(2).max(3));
    let block = Block::new()
        .borders(Borders::ALL)
        .border_style(theme.accent())
        .title(" Keys and commands ");
    let inner = block.inner(rect);
    let top = top.min(lines.len().saturating_sub(usize::from(inner.height)));
    model.overlay = Some(Overlay::Help(top));
    let w = usize::from(inner.width);
    let shown: Vec<Line<'static>> = lines
        .into_iter()
        .skip(top)
        .map(|l| {
            let s: String = l.spans.iter().map(|s| s.content.as_ref()).collect();
            if width(&s) > w {
                let style = l.spans.first().map(|s| s.style).unwrap_or_default();
                Line::styled(truncate(&s, w), style)
            } else {
                l
            }
        })
        .collect();
    frame.render_widget(Clear, rect);
    frame.render_widget(block, rect);
    frame.render_widget(Paragraph::new(shown), inner);
}

fn draw_verify(
    frame: &mut Frame<'_>,
    theme: &Theme,
    area: Rect,
    name: &str,
    number: &str,
    verified: bool,
) {
    let rect = centred(area, 60, 12);
    let block = Block::new()
        .borders(Borders::ALL)
        .border_style(theme.accent())
        .title(format!(" Safety number with {name} "));
    let inner = block.inner(rect);
    let grouped = session::grouped(number);
    let status = if verified {
        (format!("{name} is verified."), theme.ok())
    } else {
        (String::new(), Style::new())
    };
    let pieces = [
        (
            format!("Compare these digits with the ones {name} sees (in person or on a call):\n\n"),
            Style::new(),
        ),
        (grouped, theme.accent()),
        ("\n\n".into(), Style::new()),
        status,
        (
            "\ny: they match, mark verified · any other key: cancel".into(),
            theme.dim(),
        ),
    ];
    frame.render_widget(Clear, rect);
    frame.render_widget(block, rect);
    frame.render_widget(
        Paragraph::new(text::wrap(&pieces, usize::from(inner.width), 0)),
        inner,
    );
}
