//! Two plots as hand-written SVG (no plotting dependency): latency percentiles per path and
//! throughput against concurrency.

use std::fmt::Write;

const W: f64 = 760.0;
const H: f64 = 460.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 200.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 60.0;
const COLORS: [&str; 8] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];

/// One line of a plot.
#[derive(Debug)]
pub struct Line {
    pub label: String,
    pub points: Vec<(f64, f64)>,
    pub dashed: bool,
}

fn header(out: &mut String, title: &str) {
    let _ = write!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{x}" y="22" text-anchor="middle" font-size="15">{title}</text>
"#,
        x = (LEFT + W - RIGHT) / 2.0,
    );
}

/// A "nice" step for about `n` ticks over `span`.
fn step(span: f64, n: f64) -> f64 {
    let raw = (span / n).max(1e-9);
    let mag = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag)
}

/// Lines over an x axis mapped by `fx` (already transformed) with tick labels `xticks`
/// (position, label) and a linear y axis from 0.
fn plot(
    title: &str,
    xlabel: &str,
    ylabel: &str,
    xticks: &[(f64, String)],
    lines: &[Line],
) -> String {
    let pw = W - LEFT - RIGHT;
    let ph = H - TOP - BOTTOM;
    let (mut xmin, mut xmax, mut ymax) = (f64::MAX, f64::MIN, 0f64);
    for (x, _) in xticks {
        xmin = xmin.min(*x);
        xmax = xmax.max(*x);
    }
    for l in lines {
        for (x, y) in &l.points {
            xmin = xmin.min(*x);
            xmax = xmax.max(*x);
            ymax = ymax.max(*y);
        }
    }
    if xmax <= xmin {
        xmax = xmin + 1.0;
    }
    let ystep = step(ymax.max(1e-6), 6.0);
    let ymax = (ymax / ystep).ceil().max(1.0) * ystep;
    let sx = |x: f64| LEFT + (x - xmin) / (xmax - xmin) * pw;
    let sy = |y: f64| TOP + ph - y / ymax * ph;

    let mut out = String::new();
    header(&mut out, title);
    // Grid and ticks.
    let mut y = 0.0;
    while y <= ymax + ystep / 2.0 {
        let _ = writeln!(
            out,
            r##"<line x1="{LEFT}" x2="{x2}" y1="{yy:.1}" y2="{yy:.1}" stroke="#ddd"/><text x="{tx}" y="{ty:.1}" text-anchor="end">{y}</text>"##,
            x2 = LEFT + pw,
            yy = sy(y),
            tx = LEFT - 6.0,
            ty = sy(y) + 4.0,
            y = trim(y),
        );
        y += ystep;
    }
    for (x, label) in xticks {
        let _ = writeln!(
            out,
            r##"<line x1="{xx:.1}" x2="{xx:.1}" y1="{TOP}" y2="{y2}" stroke="#eee"/><text x="{xx:.1}" y="{ty}" text-anchor="middle">{label}</text>"##,
            xx = sx(*x),
            y2 = TOP + ph,
            ty = TOP + ph + 16.0,
        );
    }
    let _ = writeln!(
        out,
        r##"<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="none" stroke="#333"/>
<text x="{cx}" y="{by}" text-anchor="middle">{xlabel}</text>
<text x="16" y="{cy}" text-anchor="middle" transform="rotate(-90 16 {cy})">{ylabel}</text>"##,
        cx = LEFT + pw / 2.0,
        by = H - 18.0,
        cy = TOP + ph / 2.0,
    );
    for (i, l) in lines.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let pts: Vec<String> = l
            .points
            .iter()
            .map(|(x, y)| format!("{:.1},{:.1}", sx(*x), sy(*y)))
            .collect();
        let dash = if l.dashed {
            r#" stroke-dasharray="6 4""#
        } else {
            ""
        };
        let _ = writeln!(
            out,
            r#"<polyline fill="none" stroke="{color}" stroke-width="2"{dash} points="{}"/>"#,
            pts.join(" ")
        );
        if l.points.len() < 12 {
            for (x, y) in &l.points {
                let _ = writeln!(
                    out,
                    r#"<circle cx="{:.1}" cy="{:.1}" r="3.5" fill="{color}"/><text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="11">{}</text>"#,
                    sx(*x),
                    sy(*y),
                    sx(*x),
                    sy(*y) - 8.0,
                    trim(*y)
                );
            }
        }
        let ly = TOP + 10.0 + i as f64 * 20.0;
        let lx = LEFT + pw + 12.0;
        let _ = writeln!(
            out,
            r#"<line x1="{lx}" x2="{x2}" y1="{ly}" y2="{ly}" stroke="{color}" stroke-width="2"{dash}/><text x="{tx}" y="{ty}">{label}</text>"#,
            x2 = lx + 24.0,
            tx = lx + 30.0,
            ty = ly + 4.0,
            label = escape(&l.label),
        );
    }
    out.push_str("</svg>\n");
    out
}

fn trim(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        let s = format!("{v:.3}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Latency against percentile, the x axis stretched towards the tail (log of 1 / (1 − q)).
/// `lines` hold (quantile, ms) points.
pub fn latency(title: &str, lines: &[Line]) -> String {
    let fx = |q: f64| (1.0 / (1.0 - q).max(1e-9)).log10();
    let mapped: Vec<Line> = lines
        .iter()
        .map(|l| Line {
            label: l.label.clone(),
            points: l.points.iter().map(|(q, ms)| (fx(*q), *ms)).collect(),
            dashed: l.dashed,
        })
        .collect();
    let deepest = mapped
        .iter()
        .flat_map(|l| l.points.iter().map(|p| p.0))
        .fold(2.0f64, f64::max);
    let ticks: Vec<(f64, String)> = [
        (0.0, "0%"),
        (1.0, "90%"),
        (2.0, "99%"),
        (3.0, "99.9%"),
        (4.0, "99.99%"),
        (5.0, "99.999%"),
    ]
    .iter()
    .filter(|(x, _)| *x <= deepest.ceil())
    .map(|(x, s)| (*x, (*s).to_string()))
    .collect();
    plot(title, "percentile", "latency (ms)", &ticks, &mapped)
}

/// Stores per second against concurrency (log₂ x axis).
pub fn throughput(title: &str, points: &[(usize, f64)]) -> String {
    let line = Line {
        label: "acknowledged stores/s".into(),
        points: points
            .iter()
            .map(|(c, v)| ((*c.max(&1) as f64).log2(), *v))
            .collect(),
        dashed: false,
    };
    let ticks: Vec<(f64, String)> = points
        .iter()
        .map(|(c, _)| ((*c.max(&1) as f64).log2(), c.to_string()))
        .collect();
    plot(
        title,
        "concurrent requests",
        "stores per second",
        &ticks,
        &[line],
    )
}
