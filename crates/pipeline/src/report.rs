//! The pipeline's report: `report.json` (the data: [`json`]), `report.md` rendered from the
//! same input, and a self-contained `report.html` (the Markdown through pulldown-cmark, the
//! SVG charts inlined).

use std::fmt::Write as _;

use sentiment_data::Manifest;
use sentiment_metrics::{BinaryMetrics, ClassificationReport};
use sentiment_search::{Trial, TrialState};
use sentiment_train::{EpochMetrics, TrainOutcome};

const COLORS: [&str; 8] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];

/// Dash patterns of the series, in turn (none first).
const DASHES: [&str; 4] = ["none", "7 4", "2 3", "9 3 2 3"];

/// A point marker: circle, square, triangle, diamond, in turn.
fn marker(series: usize, x: f64, y: f64, color: &str) -> String {
    match series % 4 {
        0 => format!(r#"<circle cx="{x:.1}" cy="{y:.1}" r="3.5" fill="{color}"/>"#),
        1 => format!(
            r#"<rect x="{:.1}" y="{:.1}" width="7" height="7" fill="{color}"/>"#,
            x - 3.5,
            y - 3.5
        ),
        2 => format!(
            r#"<polygon points="{x:.1},{:.1} {:.1},{:.1} {:.1},{:.1}" fill="{color}"/>"#,
            y - 4.5,
            x - 4.0,
            y + 3.5,
            x + 4.0,
            y + 3.5
        ),
        _ => format!(
            r#"<polygon points="{x:.1},{:.1} {:.1},{y:.1} {x:.1},{:.1} {:.1},{y:.1}" fill="none" stroke="{color}" stroke-width="1.5"/>"#,
            y - 4.5,
            x + 4.5,
            y + 4.5,
            x - 4.5
        ),
    }
}

/// The round step (1, 2, 2.5 or 5 times a power of ten) nearest above `raw`.
fn nice_step(raw: f64) -> f64 {
    let magnitude = 10f64.powf(raw.log10().floor());
    let fraction = raw / magnitude;
    let nice = [1.0, 2.0, 2.5, 5.0, 10.0]
        .into_iter()
        .find(|&n| fraction <= n + 1e-9)
        .unwrap_or(10.0);
    nice * magnitude
}

/// Decimals that show every multiple of `step` exactly (0.25 needs 2, 0.05 needs 2, 5 needs 0).
fn step_decimals(step: f64) -> usize {
    (0..8)
        .find(|&d| {
            let scaled = step * 10f64.powi(d as i32);
            (scaled - scaled.round()).abs() < 1e-6
        })
        .unwrap_or(8)
}

/// A parameter value as the reports show it: numbers to 3 significant digits (`4.49e-4`,
/// `0.0123`, `32`), anything else as JSON.
pub fn show_value(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::Number(n) if n.is_f64() => sig3(n.as_f64().unwrap_or(f64::NAN)),
        serde_json::Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

/// `v` to 3 significant digits: `4.49e-4`, `0.0123`, `2.50`, `1230`.
fn sig3(v: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return format!("{v}");
    }
    let exponent = v.abs().log10().floor() as i32;
    if (-3..4).contains(&exponent) {
        format!("{v:.*}", (2 - exponent).max(0) as usize)
    } else {
        format!("{v:.2e}")
    }
}

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
    chart(title, x_label, y_label, series, true)
}

/// A scatter chart (markers only) as a standalone SVG.
pub fn scatter_chart(title: &str, x_label: &str, y_label: &str, series: &[Series]) -> String {
    chart(title, x_label, y_label, series, false)
}

fn chart(title: &str, x_label: &str, y_label: &str, series: &[Series], lines: bool) -> String {
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
    // Round ticks (0.70, 0.75, 0.80, not 0.682, 0.713): the axis spans whole steps.
    let y_step = nice_step((y1 - y0).max(1e-3) / 4.0);
    (y0, y1) = (
        (y0 / y_step).floor() * y_step,
        ((y1 / y_step).ceil() * y_step).max((y0 / y_step).floor() * y_step + y_step),
    );
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
    let decimals = step_decimals(y_step);
    let steps = ((y1 - y0) / y_step).round() as usize;
    for i in 0..=steps {
        let y = y0 + y_step * i as f64;
        let _ = writeln!(
            svg,
            r##"<line x1="{left}" x2="{0}" y1="{1:.1}" y2="{1:.1}" stroke="#ddd"/><text x="{2}" y="{3:.1}" text-anchor="end">{4:.5$}</text>"##,
            w - right,
            sy(y),
            left - 6.0,
            sy(y) + 4.0,
            y,
            decimals
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
            if integral { format!("{x:.0}") } else { sig3(x) }
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
        // Colour, dash and marker all differ from series to series, so that series that
        // coincide (trials with equal curves, "best so far" on "trial") stay visible.
        let color = COLORS[i % COLORS.len()];
        let dash = DASHES[i % DASHES.len()];
        let points: Vec<(f64, f64)> = s
            .points
            .iter()
            .filter(|p| p.1.is_finite())
            .map(|&(x, y)| (sx(x), sy(y)))
            .collect();
        let path: Vec<String> = points
            .iter()
            .map(|(x, y)| format!("{x:.1},{y:.1}"))
            .collect();
        if lines {
            let _ = writeln!(
                svg,
                r#"<polyline fill="none" stroke="{color}" stroke-width="2" stroke-dasharray="{dash}" points="{}"/>"#,
                path.join(" ")
            );
        }
        for &(x, y) in &points {
            svg.push_str(&marker(i, x, y, color));
        }
        let ly = top + 14.0 + i as f64 * 18.0;
        let _ = writeln!(
            svg,
            r#"<line x1="{}" x2="{}" y1="{2:.1}" y2="{2:.1}" stroke="{color}" stroke-width="2" stroke-dasharray="{dash}"/>{3}<text x="{4}" y="{5}">{6}</text>"#,
            w - right + 6.0,
            w - right + 26.0,
            ly - 4.0,
            marker(i, w - right + 16.0, ly - 4.0, color),
            w - right + 32.0,
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
    /// The number of the best trial, whose parameters the final run used (the earliest of
    /// tied trials, as Optuna's `best_trial`).
    pub best_trial: usize,
    /// The final run.
    pub outcome: &'a TrainOutcome,
    /// The bag-of-words baseline's test metrics (fitted on the train split).
    pub baseline: Option<&'a ClassificationReport>,
    /// How to reproduce the run.
    pub command: String,
    /// The objective (validation F1, say).
    pub objective: &'a str,
    /// Total wall time in seconds.
    pub seconds: f64,
}

impl ReportInput<'_> {
    /// The evaluations of trial `number` (none if it recorded none).
    fn curve(&self, number: usize) -> &[EpochMetrics] {
        self.curves
            .iter()
            .find(|(n, _)| *n == number)
            .map_or(&[], |(_, curve)| curve.as_slice())
    }
}

/// The epochs a trial ran, by its evaluations (0 for none).
fn epochs_run(curve: &[EpochMetrics]) -> usize {
    curve.last().map_or(0, |m| m.epoch)
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
    // Evaluated every N steps, a trial has several evaluations per epoch: plot by step.
    let by_step = input
        .curves
        .iter()
        .any(|(_, h)| h.windows(2).any(|w| w[0].epoch == w[1].epoch));
    let (per, x) = if by_step {
        ("evaluation", "step")
    } else {
        ("epoch", "epoch")
    };
    let curves = |pick: fn(&EpochMetrics) -> f64| -> Vec<Series> {
        input
            .curves
            .iter()
            .map(|(n, h)| Series {
                label: format!("trial {n}"),
                points: h
                    .iter()
                    .map(|m| (if by_step { m.step } else { m.epoch } as f64, pick(m)))
                    .collect(),
            })
            .collect()
    };
    let mut charts = vec![
        (
            "optimization_history.svg".into(),
            line_chart("Optimisation history", "trial", input.objective, &history),
        ),
        (
            "learning_curves_f1.svg".into(),
            line_chart(
                &format!("Validation F1 per {per}"),
                x,
                "F1",
                &curves(|m| m.f1),
            ),
        ),
        (
            "learning_curves_loss.svg".into(),
            line_chart(
                &format!("Validation loss per {per}"),
                x,
                "loss",
                &curves(|m| m.eval_loss),
            ),
        ),
    ];
    charts.extend(slice_charts(input.objective, &finished));
    charts
}

/// Optuna's `plot_slice`: each parameter against the objective over the complete trials, on a
/// log axis where the values span more than a factor of 3 (a log-uniform learning rate).
fn slice_charts(objective: &str, finished: &[&Trial]) -> Vec<(String, String)> {
    let names: Vec<&String> = finished
        .first()
        .map(|t| t.params.keys().collect())
        .unwrap_or_default();
    names
        .into_iter()
        .filter_map(|name| {
            let points: Vec<(f64, f64)> = finished
                .iter()
                .filter_map(|t| Some((t.params.get(name)?.as_f64()?, t.value?)))
                .collect();
            if points.is_empty() {
                return None;
            }
            let (low, high) = points.iter().fold((f64::INFINITY, 0.0f64), |(l, h), p| {
                (l.min(p.0), h.max(p.0))
            });
            // A log-uniform draw spans a decade; three trials of it may span less.
            let log = low > 0.0 && high / low > 3.0;
            let series = [Series {
                label: "trial".into(),
                points: points
                    .iter()
                    .map(|&(x, y)| (if log { x.log10() } else { x }, y))
                    .collect(),
            }];
            let axis = if log {
                format!("log10({name})")
            } else {
                name.clone()
            };
            Some((
                format!("slice_{name}.svg"),
                scatter_chart(&format!("Slice: {name}"), &axis, objective, &series),
            ))
        })
        .collect()
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
        "| trial | state | {} | {} | epochs run | seconds | worker |",
        input.objective,
        names
            .iter()
            .map(|n| n.as_str())
            .collect::<Vec<_>>()
            .join(" | ")
    );
    let _ = writeln!(
        md,
        "|---|---|---|{}---|---|---|",
        "---|".repeat(names.len())
    );
    for t in input.trials {
        // Where each trial stopped: pruned, stopped early, or all epochs.
        let epochs = epochs_run(input.curve(t.number));
        let params: Vec<String> = names
            .iter()
            .map(|n| t.params.get(*n).map(show_value).unwrap_or_default())
            .collect();
        // A retry says which trial it retried.
        let retry = t
            .retried_from()
            .map(|f| format!(" (retry of {f})"))
            .unwrap_or_default();
        let _ = writeln!(
            md,
            "| {}{retry} | {:?} | {} | {} | {epochs} | {:.0} | {} |",
            t.number,
            t.state,
            t.value.map(|v| format!("{v:.4}")).unwrap_or_default(),
            params.join(" | "),
            t.duration().unwrap_or(0.0),
            t.worker().unwrap_or_default()
        );
    }
    if let Some(best) = input.trials.iter().find(|t| t.number == input.best_trial) {
        let shown: Vec<String> = best
            .params
            .iter()
            .map(|(name, value)| format!("{name} {}", show_value(value)))
            .collect();
        let _ = writeln!(
            md,
            "\nBest parameters (trial {}, {} {:.4}): {}",
            best.number,
            input.objective,
            best.value.unwrap_or(f64::NAN),
            shown.join(", ")
        );
    }
    md.push_str("\n![optimisation history](optimization_history.svg)\n\n");
    if let Some(first) = input
        .trials
        .iter()
        .find(|t| t.state == TrialState::Complete)
    {
        for name in first.params.keys() {
            let _ = writeln!(md, "![slice of {name}](slice_{name}.svg)\n");
        }
    }
    md.push_str(
        "![learning curves](learning_curves_f1.svg)\n\n![loss](learning_curves_loss.svg)\n\n",
    );
    md.push_str("## Final training with the best parameters\n\n");
    md.push_str("| epoch | step | train loss | eval loss | accuracy | precision | recall | F1 | train samples/s |\n");
    md.push_str("|---|---|---|---|---|---|---|---|---|\n");
    for e in &input.outcome.history {
        let _ = writeln!(
            md,
            "| {} | {}{} | {:.4} | {:.4} | {:.4} | {:.4} | {:.4} | {:.4} | {:.0} |",
            e.epoch,
            e.step,
            if e.step == input.outcome.best_step {
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
        let majority = majority_accuracy(m);
        md.push_str(
            "\n### Against baselines (test split)\n\n| model | accuracy | precision | recall | F1 |\n|---|---|---|---|---|\n",
        );
        let row = |md: &mut String, name: &str, b: &BinaryMetrics| {
            let _ = writeln!(
                md,
                "| {name} | {:.4} | {:.4} | {:.4} | {:.4} |",
                b.accuracy, b.precision, b.recall, b.f1
            );
        };
        row(&mut md, "RoBERTa (this run)", b);
        if let Some(baseline) = input.baseline {
            row(
                &mut md,
                "bag-of-words logistic regression",
                &baseline.binary,
            );
        }
        let _ = writeln!(md, "| majority class | {majority:.4} | – | – | – |");
        md.push_str(
            "\nThe bag-of-words model is scikit-learn's `CountVectorizer` + `LogisticRegression` \
             (unigram counts, L2, C = 1) fitted on the train split: if RoBERTa does not beat it \
             clearly, a pretrained model (`--pretrained`) or masked-LM pre-training \
             (`cargo xtask pretrain`) is the way past it.\n",
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

/// The test accuracy of always predicting the test split's largest class.
fn majority_accuracy(m: &Manifest) -> f64 {
    m.split(sentiment_data::Split::Test)
        .map(|s| *s.class_counts.iter().max().unwrap_or(&0) as f64 / s.rows.max(1) as f64)
        .unwrap_or(0.0)
}

/// Version of `report.json`'s layout.
pub const REPORT_VERSION: u32 = 1;

/// `report.json`: what `report.md` shows, as data, for programs (and tests) to read instead of
/// the prose: the run's command and time, the prepared data's manifest, each trial as the
/// report's table lists it (its epochs run and worker included) with its learning curve, the
/// best trial, the final run (every evaluation, the test metrics and confusion matrix), and
/// the baselines on the test split.
pub fn json(input: &ReportInput<'_>) -> serde_json::Value {
    let trials: Vec<serde_json::Value> = input
        .trials
        .iter()
        .map(|t| {
            let curve = input.curve(t.number);
            serde_json::json!({
                "number": t.number,
                "state": t.state,
                "value": t.value,
                "params": t.params,
                "epochs_run": epochs_run(curve),
                "seconds": t.duration(),
                "worker": t.worker(),
                "retried_from": t.retried_from(),
                "curve": curve,
            })
        })
        .collect();
    serde_json::json!({
        "version": REPORT_VERSION,
        "command": input.command,
        "objective": input.objective,
        "seconds": input.seconds,
        "data": input.manifest,
        "trials": trials,
        "best_trial": input.best_trial,
        "final_run": input.outcome,
        "baselines": {
            "bag_of_words": input.baseline.map(|b| &b.binary),
            "majority_class_accuracy": input.outcome.test.as_ref().map(|_| majority_accuracy(input.manifest)),
        },
    })
}

/// A self-contained `report.html`: the Markdown rendered by pulldown-cmark (CommonMark and its
/// tables), each chart's image replaced by the SVG itself, so the file needs nothing beside it.
pub fn html(markdown: &str, charts: &[(String, String)]) -> String {
    use pulldown_cmark::{Event, Options, Parser, Tag, TagEnd};
    let mut in_image = false;
    let events =
        Parser::new_ext(markdown, Options::ENABLE_TABLES).filter_map(|event| match event {
            Event::Start(Tag::Image { dest_url, .. }) => {
                in_image = true;
                let svg = charts
                    .iter()
                    .find(|(name, _)| name.as_str() == dest_url.as_ref())
                    .map(|(_, svg)| svg.clone())
                    .unwrap_or_default();
                Some(Event::Html(svg.into()))
            }
            // The image's alternative text: the SVG has its own title.
            Event::End(TagEnd::Image) => {
                in_image = false;
                None
            }
            _ if in_image => None,
            // HTML written in the Markdown (a file name, a worker's host, a parameter value) is
            // shown as text, never interpreted: the report may be opened by anyone it is shared
            // with.
            Event::Html(text) | Event::InlineHtml(text) => Some(Event::Text(text)),
            event => Some(event),
        });
    let mut body = String::new();
    pulldown_cmark::html::push_html(&mut body, events);
    format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>Sentiment fine-tuning report</title>\n<style>body{{font-family:sans-serif;max-width:960px;margin:2em auto}}table{{border-collapse:collapse;margin:1em 0}}th,td{{border:1px solid #ccc;padding:4px 8px}}th{{background:#f4f4f4}}code{{background:#f4f4f4}}</style></head><body>\n{body}</body></html>\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_fall_on_round_values() {
        let close = |a: f64, b: f64| (a - b).abs() < 1e-12;
        assert!(close(nice_step(0.0153), 0.02));
        assert!(close(nice_step(0.022), 0.025));
        assert!(close(nice_step(0.7), 1.0));
        assert_eq!(step_decimals(0.025), 3);
        assert_eq!(step_decimals(0.05), 2);
        assert_eq!(step_decimals(5.0), 0);
        let chart = line_chart(
            "F1",
            "trial",
            "F1",
            &[Series {
                label: "trial".into(),
                points: vec![(0.0, 0.682), (1.0, 0.713), (2.0, 0.743)],
            }],
        );
        for tick in ["0.68", "0.70", "0.72", "0.74"] {
            assert!(
                chart.contains(&format!(">{tick}</text>")),
                "{tick}: {chart}"
            );
        }
        assert!(!chart.contains(">0.713</text>"), "{chart}");
    }

    #[test]
    fn coinciding_series_differ_in_dash_and_marker() {
        let same = vec![(0.0, 0.5), (1.0, 0.6)];
        let chart = line_chart(
            "F1",
            "epoch",
            "F1",
            &[
                Series {
                    label: "trial 0".into(),
                    points: same.clone(),
                },
                Series {
                    label: "trial 1".into(),
                    points: same,
                },
            ],
        );
        assert!(chart.contains(r#"stroke-dasharray="none""#));
        assert!(chart.contains(r#"stroke-dasharray="7 4""#));
        assert!(chart.contains("<circle") && chart.contains("<rect x="));
    }

    #[test]
    fn a_scatter_chart_has_markers_and_no_lines() {
        let chart = scatter_chart(
            "Slice: lr",
            "log10(lr)",
            "F1",
            &[Series {
                label: "trial".into(),
                points: vec![(-3.5, 0.7), (-3.0, 0.8), (-2.7, 0.75)],
            }],
        );
        assert!(!chart.contains("<polyline"), "{chart}");
        assert_eq!(
            chart.matches("<circle").count(),
            3 + 1,
            "three points and the legend"
        );
    }

    /// The HTML keeps what the Markdown says: tables as tables (header cells included), bold
    /// and code as such, text escaped (HTML in the Markdown included), and each chart's SVG in
    /// place of its image.
    #[test]
    fn the_html_renders_the_markdown_with_the_charts_inlined() {
        let markdown = "# Report\n\nRun `cargo xtask pipeline` on a <b> & c.\n\n\
                        | model | F1 |\n|---|---|\n| **RoBERTa** | 0.9 |\n\n\
                        ![history](history.svg)\n";
        let charts = [(
            "history.svg".to_string(),
            "<svg id=\"h\"></svg>".to_string(),
        )];
        let html = html(markdown, &charts);
        for part in [
            "<h1>Report</h1>",
            "<code>cargo xtask pipeline</code>",
            "a &lt;b&gt; &amp; c.",
            "<th>model</th>",
            "<td><strong>RoBERTa</strong></td>",
            "<svg id=\"h\"></svg>",
        ] {
            assert!(html.contains(part), "{part} missing: {html}");
        }
        assert!(!html.contains("<img"), "{html}");
        assert!(!html.contains(">history<"), "{html}");
    }

    #[test]
    fn parameter_values_show_three_significant_digits() {
        let show = |v: serde_json::Value| show_value(&v);
        assert_eq!(show(serde_json::json!(0.00044928314514675434)), "4.49e-4");
        assert_eq!(show(serde_json::json!(0.0123456)), "0.0123");
        assert_eq!(show(serde_json::json!(2.5)), "2.50");
        assert_eq!(show(serde_json::json!(32)), "32");
        assert_eq!(show(serde_json::json!("adamw")), "adamw");
    }
}
