//! The pipeline's report: `report.md` and a self-contained `report.html` with SVG charts.

use std::fmt::Write as _;

use sentiment_data::Manifest;
use sentiment_search::{Trial, TrialState};
use sentiment_train::{EpochMetrics, TrainOutcome};

const COLORS: [&str; 8] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];

/// One line of a chart.
pub struct Series {
    /// Legend entry.
    pub label: String,
    /// Points (x, y).
    pub points: Vec<(f64, f64)>,
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A line chart as a standalone SVG.
pub fn line_chart(title: &str, x_label: &str, y_label: &str, series: &[Series]) -> String {
    let (w, h, left, right, top, bottom) = (640.0, 360.0, 60.0, 150.0, 36.0, 44.0);
    let points: Vec<(f64, f64)> = series
        .iter()
        .flat_map(|s| s.points.iter().copied())
        .collect();
    let fold = |f: fn(f64, f64) -> f64, init: f64, pick: fn(&(f64, f64)) -> f64| {
        points
            .iter()
            .map(pick)
            .filter(|v| v.is_finite())
            .fold(init, f)
    };
    let (mut x0, mut x1) = (
        fold(f64::min, f64::INFINITY, |p| p.0),
        fold(f64::max, f64::NEG_INFINITY, |p| p.0),
    );
    let (mut y0, mut y1) = (
        fold(f64::min, f64::INFINITY, |p| p.1),
        fold(f64::max, f64::NEG_INFINITY, |p| p.1),
    );
    if !x0.is_finite() {
        (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
    }
    if x1 - x0 < 1e-12 {
        x1 = x0 + 1.0;
    }
    let pad = ((y1 - y0) * 0.08).max(1e-3);
    (y0, y1) = (y0 - pad, y1 + pad);
    let sx = |x: f64| left + (x - x0) / (x1 - x0) * (w - left - right);
    let sy = |y: f64| top + (1.0 - (y - y0) / (y1 - y0)) * (h - top - bottom);
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">
<rect width="{w}" height="{h}" fill="white"/>
<text x="{}" y="20" text-anchor="middle" font-size="14">{}</text>
"#,
        (left + w - right) / 2.0,
        escape(title)
    );
    for i in 0..=4 {
        let y = y0 + (y1 - y0) * i as f64 / 4.0;
        let _ = writeln!(
            svg,
            r##"<line x1="{left}" x2="{0}" y1="{1:.1}" y2="{1:.1}" stroke="#ddd"/><text x="{2}" y="{3:.1}" text-anchor="end">{4:.3}</text>"##,
            w - right,
            sy(y),
            left - 6.0,
            sy(y) + 4.0,
            y
        );
    }
    // Whole-number axes (trials, epochs) get whole-number ticks.
    let integral = points.iter().all(|p| p.0.fract() == 0.0);
    let ticks: Vec<f64> = if integral {
        let step = ((x1 - x0) / 5.0).ceil().max(1.0);
        let mut t = Vec::new();
        let mut x = x0;
        while x <= x1 + 1e-9 {
            t.push(x);
            x += step;
        }
        t
    } else {
        (0..=4)
            .map(|i| x0 + (x1 - x0) * f64::from(i) / 4.0)
            .collect()
    };
    for x in ticks {
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{}" text-anchor="middle">{}</text>"#,
            sx(x),
            h - bottom + 16.0,
            if integral {
                format!("{x:.0}")
            } else {
                format!("{x:.2}")
            }
        );
    }
    let _ = writeln!(
        svg,
        r##"<line x1="{left}" x2="{left}" y1="{top}" y2="{0}" stroke="#444"/><line x1="{left}" x2="{1}" y1="{0}" y2="{0}" stroke="#444"/>
<text x="{2}" y="{3}" text-anchor="middle">{4}</text>
<text x="14" y="{5}" text-anchor="middle" transform="rotate(-90 14 {5})">{6}</text>"##,
        h - bottom,
        w - right,
        (left + w - right) / 2.0,
        h - 8.0,
        escape(x_label),
        (top + h - bottom) / 2.0,
        escape(y_label)
    );
    for (i, s) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let path: Vec<String> = s
            .points
            .iter()
            .filter(|p| p.1.is_finite())
            .map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(y)))
            .collect();
        let _ = writeln!(
            svg,
            r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#,
            path.join(" ")
        );
        for p in &path {
            let (x, y) = p.split_once(',').unwrap_or(("0", "0"));
            let _ = writeln!(svg, r#"<circle cx="{x}" cy="{y}" r="3" fill="{color}"/>"#);
        }
        let ly = top + 14.0 + i as f64 * 18.0;
        let _ = writeln!(
            svg,
            r#"<rect x="{}" y="{}" width="12" height="12" fill="{color}"/><text x="{}" y="{}">{}</text>"#,
            w - right + 12.0,
            ly - 10.0,
            w - right + 30.0,
            ly,
            escape(&s.label)
        );
    }
    svg.push_str("</svg>\n");
    svg
}

/// Everything the report shows.
pub struct ReportInput<'a> {
    /// The prepared data's manifest.
    pub manifest: &'a Manifest,
    /// The study's trials.
    pub trials: &'a [Trial],
    /// Per-trial epoch metrics, by trial number.
    pub curves: &'a [(usize, Vec<EpochMetrics>)],
    /// The final run.
    pub outcome: &'a TrainOutcome,
    /// How to reproduce the run.
    pub command: String,
    /// The objective (validation F1, say).
    pub objective: &'a str,
    /// Total wall time in seconds.
    pub seconds: f64,
}

/// `(file name, contents)` of the charts.
pub fn charts(input: &ReportInput<'_>) -> Vec<(String, String)> {
    let finished: Vec<&Trial> = input
        .trials
        .iter()
        .filter(|t| t.state == TrialState::Complete)
        .collect();
    let mut best = f64::NEG_INFINITY;
    let history = vec![
        Series {
            label: "trial".into(),
            points: finished
                .iter()
                .map(|t| (t.number as f64, t.value.unwrap_or(f64::NAN)))
                .collect(),
        },
        Series {
            label: "best so far".into(),
            points: finished
                .iter()
                .map(|t| {
                    best = best.max(t.value.unwrap_or(f64::NAN));
                    (t.number as f64, best)
                })
                .collect(),
        },
    ];
    let curves = |pick: fn(&EpochMetrics) -> f64| -> Vec<Series> {
        input
            .curves
            .iter()
            .map(|(n, h)| Series {
                label: format!("trial {n}"),
                points: h.iter().map(|m| (m.epoch as f64, pick(m))).collect(),
            })
            .collect()
    };
    vec![
        (
            "optimization_history.svg".into(),
            line_chart("Optimisation history", "trial", input.objective, &history),
        ),
        (
            "learning_curves_f1.svg".into(),
            line_chart("Validation F1 per epoch", "epoch", "F1", &curves(|m| m.f1)),
        ),
        (
            "learning_curves_loss.svg".into(),
            line_chart(
                "Validation loss per epoch",
                "epoch",
                "loss",
                &curves(|m| m.eval_loss),
            ),
        ),
    ]
}

/// `report.md`.
pub fn markdown(input: &ReportInput<'_>) -> String {
    let m = input.manifest;
    let mut md = String::from("# Sentiment fine-tuning report\n\n");
    let _ = writeln!(md, "Reproduce: `{}`\n", input.command);
    md.push_str("## Data\n\n");
    let _ = writeln!(
        md,
        "{} ({:?} layout, SHA-256 `{}`): {} rows read, {} kept.",
        m.input.path,
        m.format,
        &m.input.sha256[..12.min(m.input.sha256.len())],
        m.rows_read,
        m.rows_kept
    );
    for (reason, count) in &m.rows_dropped {
        let _ = writeln!(md, "- dropped {count}: {reason}");
    }
    md.push_str("\n| split | rows | per class |\n|---|---|---|\n");
    for s in &m.splits {
        let counts: Vec<String> = s
            .class_counts
            .iter()
            .zip(&m.classes)
            .map(|(c, k)| format!("{} {c}", k.name))
            .collect();
        let _ = writeln!(
            md,
            "| {} | {} | {} |",
            s.split.name(),
            s.rows,
            counts.join(", ")
        );
    }
    md.push_str("\n## Trials\n\n");
    let names: Vec<&String> = input
        .trials
        .first()
        .map(|t| t.params.keys().collect())
        .unwrap_or_default();
    let _ = writeln!(
        md,
        "| trial | state | {} | {} | seconds |",
        input.objective,
        names
            .iter()
            .map(|n| n.as_str())
            .collect::<Vec<_>>()
            .join(" | ")
    );
    let _ = writeln!(md, "|---|---|---|{}---|", "---|".repeat(names.len()));
    for t in input.trials {
        let params: Vec<String> = names
            .iter()
            .map(|n| t.params.get(*n).map(|v| v.to_string()).unwrap_or_default())
            .collect();
        let _ = writeln!(
            md,
            "| {} | {:?} | {} | {} | {:.0} |",
            t.number,
            t.state,
            t.value.map(|v| format!("{v:.4}")).unwrap_or_default(),
            params.join(" | "),
            t.duration().unwrap_or(0.0)
        );
    }
    if let Some(best) = input
        .trials
        .iter()
        .filter(|t| t.state == TrialState::Complete)
        .max_by(|a, b| {
            a.value
                .unwrap_or(f64::MIN)
                .total_cmp(&b.value.unwrap_or(f64::MIN))
        })
    {
        let _ = writeln!(
            md,
            "\nBest parameters (trial {}, {} {:.4}): `{}`",
            best.number,
            input.objective,
            best.value.unwrap_or(f64::NAN),
            serde_json::to_string(&best.params).unwrap_or_default()
        );
    }
    md.push_str("\n![optimisation history](optimization_history.svg)\n\n");
    md.push_str(
        "![learning curves](learning_curves_f1.svg)\n\n![loss](learning_curves_loss.svg)\n\n",
    );
    md.push_str("## Final training with the best parameters\n\n");
    md.push_str("| epoch | train loss | eval loss | accuracy | precision | recall | F1 | train samples/s |\n");
    md.push_str("|---|---|---|---|---|---|---|---|\n");
    for e in &input.outcome.history {
        let _ = writeln!(
            md,
            "| {}{} | {:.4} | {:.4} | {:.4} | {:.4} | {:.4} | {:.4} | {:.0} |",
            e.epoch,
            if e.epoch == input.outcome.best_epoch {
                " (best)"
            } else {
                ""
            },
            e.train_loss,
            e.eval_loss,
            e.accuracy,
            e.precision,
            e.recall,
            e.f1,
            e.train_samples_per_second
        );
    }
    if let Some(test) = &input.outcome.test {
        let b = &test.report.binary;
        md.push_str("\n## Test\n\n| accuracy | precision | recall | F1 | loss | eval samples/s |\n|---|---|---|---|---|---|\n");
        let _ = writeln!(
            md,
            "| {:.4} | {:.4} | {:.4} | {:.4} | {:.4} | {:.0} |",
            b.accuracy, b.precision, b.recall, b.f1, test.loss, test.samples_per_second
        );
        md.push_str("\nConfusion matrix (rows: true class, columns: predicted):\n\n| | ");
        let names: Vec<&str> = m.classes.iter().map(|c| c.name.as_str()).collect();
        let _ = writeln!(md, "{} |", names.join(" | "));
        let _ = writeln!(md, "|---|{}", "---|".repeat(names.len()));
        for (row, name) in test.report.confusion_matrix.iter().zip(&names) {
            let cells: Vec<String> = row.iter().map(u64::to_string).collect();
            let _ = writeln!(md, "| **{name}** | {} |", cells.join(" | "));
        }
        let majority = m
            .split(sentiment_data::Split::Test)
            .map(|s| *s.class_counts.iter().max().unwrap_or(&0) as f64 / s.rows.max(1) as f64)
            .unwrap_or(0.0);
        let _ = writeln!(
            md,
            "\nMajority-class accuracy on the test split: {majority:.4}."
        );
    }
    let _ = writeln!(
        md,
        "\nBest model: `{}` (a Hugging Face folder). Total time {:.0} s.",
        input.outcome.best_model_dir.display(),
        input.seconds
    );
    md
}

/// A self-contained `report.html`: the Markdown's content with the SVGs inlined.
pub fn html(markdown: &str, charts: &[(String, String)]) -> String {
    let mut body = String::new();
    let mut in_table = false;
    for line in markdown.lines() {
        if line.starts_with('|') {
            let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
            if cells.iter().all(|c| c.chars().all(|ch| ch == '-')) {
                continue;
            }
            if !in_table {
                body.push_str("<table>\n");
                in_table = true;
            }
            body.push_str("<tr>");
            for c in cells {
                let _ = write!(body, "<td>{}</td>", escape(c).replace("**", ""));
            }
            body.push_str("</tr>\n");
            continue;
        }
        if in_table {
            body.push_str("</table>\n");
            in_table = false;
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let _ = writeln!(body, "<h1>{}</h1>", escape(rest));
        } else if let Some(rest) = line.strip_prefix("## ") {
            let _ = writeln!(body, "<h2>{}</h2>", escape(rest));
        } else if let Some(rest) = line.strip_prefix("![") {
            let file = rest.split_once("](").map(|(_, f)| f.trim_end_matches(')'));
            if let Some((_, svg)) = charts.iter().find(|(name, _)| Some(name.as_str()) == file) {
                body.push_str(svg);
            }
        } else if !line.is_empty() {
            let _ = writeln!(body, "<p>{}</p>", escape(line).replace('`', ""));
        }
    }
    if in_table {
        body.push_str("</table>\n");
    }
    format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>Sentiment fine-tuning report</title>\n<style>body{{font-family:sans-serif;max-width:960px;margin:2em auto}}table{{border-collapse:collapse;margin:1em 0}}td{{border:1px solid #ccc;padding:4px 8px}}tr:first-child td{{font-weight:bold;background:#f4f4f4}}</style></head><body>\n{body}</body></html>\n"
    )
}
