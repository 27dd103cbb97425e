//! Small SVG charts for the benchmark report: grouped bars and lines, with
//! axes, ticks, a legend and the values written on the marks. No external
//! crate: the charts are a few dozen elements.

use std::fmt::Write;

pub struct Series {
    pub name: String,
    pub color: &'static str,
    pub values: Vec<f64>,
}

pub const OURS: &str = "#1f77b4";
pub const REFERENCE: &str = "#ff7f0e";
pub const OTHER: &str = "#2ca02c";

const W: f64 = 720.0;
const H: f64 = 400.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 50.0;
const BOTTOM: f64 = 70.0;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn fmt_value(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// "Nice" upper bound and tick step for a linear axis.
fn nice_axis(max: f64) -> (f64, f64) {
    let max = if max <= 0.0 { 1.0 } else { max };
    let raw = max / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    ((max / step).ceil() * step, step)
}

fn frame(title: &str, y_label: &str) -> String {
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{}" y="24" text-anchor="middle" font-size="15" font-weight="bold">{}</text>
<text x="16" y="{}" text-anchor="middle" transform="rotate(-90 16 {})">{}</text>
"#,
        W / 2.0,
        esc(title),
        TOP + (H - TOP - BOTTOM) / 2.0,
        TOP + (H - TOP - BOTTOM) / 2.0,
        esc(y_label)
    );
    s
}

fn legend(s: &mut String, series: &[Series]) {
    let mut x = LEFT;
    for se in series {
        let _ = writeln!(
            s,
            r#"<rect x="{x}" y="{}" width="12" height="12" fill="{}"/><text x="{}" y="{}">{}</text>"#,
            H - 22.0,
            se.color,
            x + 16.0,
            H - 12.0,
            esc(&se.name)
        );
        x += 30.0 + 7.0 * se.name.len() as f64;
    }
}

/// Grouped bar chart on a linear axis starting at zero.
pub fn bars(title: &str, y_label: &str, categories: &[String], series: &[Series]) -> String {
    let max = series
        .iter()
        .flat_map(|s| s.values.iter().copied())
        .fold(0.0, f64::max);
    let (top, step) = nice_axis(max);
    let plot_w = W - LEFT - RIGHT;
    let plot_h = H - TOP - BOTTOM;
    let y = |v: f64| TOP + plot_h - v / top * plot_h;
    let mut s = frame(title, y_label);
    let mut t = 0.0;
    while t <= top + step / 2.0 {
        let _ = writeln!(
            s,
            "<line x1=\"{LEFT}\" x2=\"{}\" y1=\"{y0}\" y2=\"{y0}\" stroke=\"#ddd\"/><text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>",
            W - RIGHT,
            LEFT - 6.0,
            y(t) + 4.0,
            fmt_value(t),
            y0 = y(t)
        );
        t += step;
    }
    let group_w = plot_w / categories.len().max(1) as f64;
    let bar_w = (group_w * 0.7) / series.len().max(1) as f64;
    for (ci, cat) in categories.iter().enumerate() {
        let gx = LEFT + ci as f64 * group_w + group_w * 0.15;
        for (si, se) in series.iter().enumerate() {
            let Some(v) = se.values.get(ci).copied() else {
                continue;
            };
            let x = gx + si as f64 * bar_w;
            let _ = writeln!(
                s,
                "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{}\"/><text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" font-size=\"10\">{}</text>",
                y(v),
                bar_w - 2.0,
                (TOP + plot_h - y(v)).max(0.0),
                se.color,
                x + bar_w / 2.0 - 1.0,
                y(v) - 3.0,
                fmt_value(v)
            );
        }
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
            LEFT + ci as f64 * group_w + group_w / 2.0,
            TOP + plot_h + 16.0,
            esc(cat)
        );
    }
    let _ = writeln!(
        s,
        "<line x1=\"{LEFT}\" x2=\"{LEFT}\" y1=\"{TOP}\" y2=\"{}\" stroke=\"black\"/>",
        TOP + plot_h
    );
    legend(&mut s, series);
    s.push_str("</svg>\n");
    s
}

/// Line chart over categorical x values on a log10 y axis (for latencies
/// that differ by orders of magnitude).
pub fn log_lines(title: &str, y_label: &str, x_labels: &[String], series: &[Series]) -> String {
    let vals: Vec<f64> = series
        .iter()
        .flat_map(|s| s.values.iter().copied())
        .filter(|v| *v > 0.0)
        .collect();
    let lo = vals.iter().copied().fold(f64::MAX, f64::min).max(1e-3);
    let hi = vals.iter().copied().fold(0.0, f64::max).max(lo * 10.0);
    let (lo_e, hi_e) = (lo.log10().floor(), hi.log10().ceil());
    let plot_w = W - LEFT - RIGHT;
    let plot_h = H - TOP - BOTTOM;
    let y = |v: f64| TOP + plot_h - (v.max(1e-9).log10() - lo_e) / (hi_e - lo_e) * plot_h;
    let x = |i: usize| LEFT + (i as f64 + 0.5) * plot_w / x_labels.len().max(1) as f64;
    let mut s = frame(title, y_label);
    let mut e = lo_e;
    while e <= hi_e + 0.5 {
        let v = 10f64.powf(e);
        let _ = writeln!(
            s,
            "<line x1=\"{LEFT}\" x2=\"{}\" y1=\"{y0}\" y2=\"{y0}\" stroke=\"#ddd\"/><text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>",
            W - RIGHT,
            LEFT - 6.0,
            y(v) + 4.0,
            fmt_value(v),
            y0 = y(v)
        );
        e += 1.0;
    }
    for (i, l) in x_labels.iter().enumerate() {
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
            x(i),
            TOP + plot_h + 16.0,
            esc(l)
        );
    }
    for se in series {
        let pts: Vec<String> = se
            .values
            .iter()
            .enumerate()
            .map(|(i, v)| format!("{:.1},{:.1}", x(i), y(*v)))
            .collect();
        let _ = writeln!(
            s,
            "<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"2\" points=\"{}\"/>",
            se.color,
            pts.join(" ")
        );
        for (i, v) in se.values.iter().enumerate() {
            let _ = writeln!(
                s,
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{}\"/><text x=\"{:.1}\" y=\"{:.1}\" font-size=\"10\" text-anchor=\"middle\">{}</text>",
                x(i),
                y(*v),
                se.color,
                x(i),
                y(*v) - 6.0,
                fmt_value(*v)
            );
        }
    }
    let _ = writeln!(
        s,
        "<line x1=\"{LEFT}\" x2=\"{LEFT}\" y1=\"{TOP}\" y2=\"{}\" stroke=\"black\"/>",
        TOP + plot_h
    );
    legend(&mut s, series);
    s.push_str("</svg>\n");
    s
}

/// Rows of the first markdown table after `heading` in `text`, as cells.
pub fn markdown_rows(text: &str, heading: &str) -> Vec<Vec<String>> {
    let Some(start) = text.find(heading) else {
        return Vec::new();
    };
    let mut rows = Vec::new();
    let mut in_table = false;
    for line in text[start..].lines().skip(1) {
        let l = line.trim();
        if l.starts_with('|') {
            in_table = true;
            let cells: Vec<String> = l
                .trim_matches('|')
                .split('|')
                .map(|c| c.trim().to_string())
                .collect();
            if cells
                .iter()
                .all(|c| c.chars().all(|ch| ch == '-' || ch == ':'))
            {
                continue;
            }
            rows.push(cells);
        } else if in_table {
            break;
        }
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charts_are_well_formed_and_carry_the_values() {
        let b = bars(
            "t",
            "ms",
            &["ADD".to_string(), "DEL".to_string()],
            &[Series {
                name: "ours".into(),
                color: OURS,
                values: vec![3.5, 20.0],
            }],
        );
        assert!(b.starts_with("<svg") && b.trim_end().ends_with("</svg>"));
        assert!(b.contains(">3.50<") && b.contains(">20.0<"));
        let l = log_lines(
            "t",
            "ms",
            &["0".into(), "20000".into()],
            &[Series {
                name: "ref".into(),
                color: REFERENCE,
                values: vec![2.0, 160.0],
            }],
        );
        assert!(l.contains("<polyline") && l.contains(">160<"));
    }

    #[test]
    fn reads_markdown_tables() {
        let md = "## A\n\nx\n\n| a | b |\n|---|---|\n| 1 | 2 |\n| 3 | 4 |\n\nafter\n## B\n| z |\n";
        assert_eq!(
            markdown_rows(md, "## A"),
            vec![vec!["a", "b"], vec!["1", "2"], vec!["3", "4"]]
        );
    }
}
