//! Report files: the HdrHistogram percentile distribution (`.hgrm`, the format HdrHistogram's
//! plotters read), an SVG plot of latency by percentile and of alert rate over time (one run, or
//! several side by side), the table `compare` prints, and the replay's progress.

use std::fmt::Write as _;

use hdrhistogram::Histogram;

/// A replay's progress on standard error: a live bar on a terminal (indicatif), and on anything
/// else (a log, CI) one plain line every few seconds instead of a line redrawn with carriage
/// returns.
pub struct Progress {
    bar: Option<indicatif::ProgressBar>,
    total: u64,
    expected: u64,
    last_line: std::time::Instant,
    enabled: bool,
}

/// How often a plain progress line is written when standard error is not a terminal.
const LINE_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

impl Progress {
    pub fn new(total: u64, expected: u64, enabled: bool) -> Progress {
        use std::io::IsTerminal as _;
        let bar = (enabled && std::io::stderr().is_terminal()).then(|| {
            let bar = indicatif::ProgressBar::new(total);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{bar:30} sent {pos}/{len} {msg} [{elapsed_precise}, eta {eta}]",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            bar
        });
        Progress { bar, total, expected, last_line: std::time::Instant::now(), enabled }
    }

    pub fn update(&mut self, sent: u64, alerts: u64) {
        match &self.bar {
            Some(bar) => {
                bar.set_position(sent);
                bar.set_message(format!("alerts {alerts}/{}", self.expected));
            }
            None if self.enabled && self.last_line.elapsed() >= LINE_EVERY => {
                self.last_line = std::time::Instant::now();
                eprintln!("{}", self.line(sent, alerts));
            }
            None => {}
        }
    }

    pub fn finish(&mut self, sent: u64, alerts: u64) {
        if let Some(bar) = self.bar.take() {
            bar.set_position(sent);
            bar.finish_and_clear();
        }
        if self.enabled {
            eprintln!("{}", self.line(sent, alerts));
        }
    }

    fn line(&self, sent: u64, alerts: u64) -> String {
        format!("sent {sent}/{}, alerts {alerts}/{}", self.total, self.expected)
    }
}

/// The percentile distribution in HdrHistogram's text format, values in milliseconds.
pub fn hgrm(h: &Histogram<u64>) -> String {
    let mut out = String::from("       Value     Percentile TotalCount 1/(1-Percentile)\n\n");
    if h.is_empty() {
        return out;
    }
    for v in h.iter_quantiles(5) {
        let q = v.quantile_iterated_to();
        let inv = if q < 1.0 { format!("{:.2}", 1.0 / (1.0 - q)) } else { "inf".into() };
        let _ = writeln!(
            out,
            "{:12.3} {:14.12} {:10} {:>14}",
            v.value_iterated_to() as f64 / 1000.0,
            q,
            v.count_since_last_iteration(),
            inv
        );
    }
    let mean = h.mean() / 1000.0;
    let _ = writeln!(
        out,
        "#[Mean    = {:12.3}, StdDeviation   = {:12.3}]\n#[Max     = {:12.3}, Total count    = {:12}]",
        mean,
        h.stdev() / 1000.0,
        h.max() as f64 / 1000.0,
        h.len()
    );
    out
}

/// One run to plot: its latency by percentile (ms) and its alerts per second.
pub struct Run {
    pub label: String,
    /// (percentile as a fraction, latency in ms), rising.
    pub percentiles: Vec<(f64, f64)>,
    pub per_second: Vec<u64>,
}

impl Run {
    pub fn of(label: &str, report: &crate::Report) -> Run {
        Run {
            label: label.into(),
            percentiles: percentiles(&report.latency_us),
            per_second: report.rate_over_time.clone(),
        }
    }

    /// From a report's JSON (`replay --json`).
    pub fn from_json(label: &str, j: &serde_json::Value) -> Result<Run, String> {
        let curve = j["latencyPercentilesMs"].as_array().ok_or(format!("{label}: no latencyPercentilesMs"))?;
        let percentiles = curve.iter().filter_map(|p| Some((p.get(0)?.as_f64()?, p.get(1)?.as_f64()?))).collect();
        let per_second = j["alertsPerSecond"]
            .as_array()
            .map_or_else(Vec::new, |a| a.iter().filter_map(serde_json::Value::as_u64).collect());
        Ok(Run { label: label.into(), percentiles, per_second })
    }
}

/// The latency curve of a histogram (µs) in ms, five points per halving of the tail.
pub fn percentiles(h: &Histogram<u64>) -> Vec<(f64, f64)> {
    if h.is_empty() {
        return Vec::new();
    }
    h.iter_quantiles(5).map(|v| (v.quantile_iterated_to(), v.value_iterated_to().max(1) as f64 / 1000.0)).collect()
}

const COLOURS: [&str; 4] = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"];

/// Two panels, with a legend when there are several runs: latency (ms, log scale) by percentile
/// (log "nines" scale up to 99.999%), and alerts received per second against seconds into the run
/// (from zero).
pub fn svg(runs: &[Run], title: &str) -> String {
    let (w, ph, left, right) = (760.0, 280.0, 70.0, 30.0);
    let pw = w - left - right;
    let height = 2.0 * ph + 150.0 + 16.0 * runs.len() as f64;
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"10\" y=\"20\" font-size=\"14\">{}</text>\n",
        escape(title)
    );
    // Legend.
    for (i, run) in runs.iter().enumerate() {
        let y = 40.0 + 16.0 * i as f64;
        let c = COLOURS[i % COLOURS.len()];
        let _ = writeln!(
            s,
            "<line x1=\"{left}\" y1=\"{y}\" x2=\"{}\" y2=\"{y}\" stroke=\"{c}\" stroke-width=\"3\"/><text x=\"{}\" y=\"{}\">{}</text>",
            left + 24.0,
            left + 30.0,
            y + 4.0,
            escape(&run.label)
        );
    }
    let y0 = 60.0 + 16.0 * runs.len() as f64;
    // Panel 1: latency by percentile.
    let max_nines = 5.0f64;
    let all: Vec<f64> = runs.iter().flat_map(|r| r.percentiles.iter().map(|p| p.1)).collect();
    let lo = all.iter().copied().fold(f64::INFINITY, f64::min).max(0.001).log10().floor();
    let hi = all.iter().copied().fold(0.0, f64::max).max(0.002).log10().ceil().max(lo + 1.0);
    let _ = writeln!(s, "<rect x=\"{left}\" y=\"{y0}\" width=\"{pw}\" height=\"{ph}\" fill=\"none\" stroke=\"#999\"/>");
    let _ = writeln!(s, "<text x=\"{left}\" y=\"{}\">latency from scheduled send, by percentile</text>", y0 - 8.0);
    for (i, run) in runs.iter().enumerate() {
        let points: Vec<String> = run
            .percentiles
            .iter()
            .map(|&(q, ms)| {
                let nines = (-(1.0 - q.min(1.0 - 1e-5)).log10()).min(max_nines);
                let x = left + nines / max_nines * pw;
                let y = y0 + ph - (ms.max(1e-3).log10() - lo) / (hi - lo) * ph;
                format!("{x:.1},{y:.1}")
            })
            .collect();
        let c = COLOURS[i % COLOURS.len()];
        let _ =
            writeln!(s, "<polyline fill=\"none\" stroke=\"{c}\" stroke-width=\"2\" points=\"{}\"/>", points.join(" "));
    }
    for (i, label) in ["0%", "90%", "99%", "99.9%", "99.99%", "99.999%"].iter().enumerate() {
        let x = left + i as f64 / max_nines * pw;
        let anchor = if i == 0 {
            "start"
        } else if i == 5 {
            "end"
        } else {
            "middle"
        };
        let _ = writeln!(s, "<text x=\"{x:.1}\" y=\"{}\" text-anchor=\"{anchor}\">{label}</text>", y0 + ph + 16.0);
    }
    let _ = writeln!(
        s,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">percentile</text>",
        left + pw / 2.0,
        y0 + ph + 32.0
    );
    // 1, 2 and 5 of each decade.
    let mut e = lo;
    while e <= hi {
        for m in [1.0f64, 2.0, 5.0] {
            let v = m * 10f64.powf(e);
            let pos = (v.log10() - lo) / (hi - lo);
            if pos > 1.0 + 1e-9 {
                break;
            }
            let y = y0 + ph - pos * ph;
            let _ = writeln!(s, "<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{v}</text>", left - 6.0, y + 4.0);
        }
        e += 1.0;
    }
    let _ = writeln!(
        s,
        "<text transform=\"translate(16,{:.1}) rotate(-90)\" text-anchor=\"middle\">latency (ms, log scale)</text>",
        y0 + ph / 2.0
    );
    // Panel 2: alerts per second over the run, from a zero baseline.
    let y1 = y0 + ph + 70.0;
    let rh = ph - 60.0;
    let _ = writeln!(s, "<rect x=\"{left}\" y=\"{y1}\" width=\"{pw}\" height=\"{rh}\" fill=\"none\" stroke=\"#999\"/>");
    let _ = writeln!(s, "<text x=\"{left}\" y=\"{}\">alerts received per second</text>", y1 - 8.0);
    let top = runs.iter().flat_map(|r| r.per_second.iter().copied()).max().unwrap_or(1).max(1) as f64;
    let seconds = runs.iter().map(|r| r.per_second.len()).max().unwrap_or(1).max(1) as f64;
    for (i, run) in runs.iter().enumerate() {
        let points: Vec<String> = run
            .per_second
            .iter()
            .enumerate()
            .map(|(t, c)| {
                format!("{:.1},{:.1}", left + (t as f64 + 0.5) / seconds * pw, y1 + rh - *c as f64 / top * rh)
            })
            .collect();
        let c = COLOURS[i % COLOURS.len()];
        let _ =
            writeln!(s, "<polyline fill=\"none\" stroke=\"{c}\" stroke-width=\"2\" points=\"{}\"/>", points.join(" "));
    }
    for (v, y) in [(0.0, y1 + rh), (top, y1)] {
        let _ = writeln!(s, "<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{v}</text>", left - 6.0, y + 4.0);
    }
    let _ = writeln!(
        s,
        "<text transform=\"translate(16,{:.1}) rotate(-90)\" text-anchor=\"middle\">alerts/s</text>",
        y1 + rh / 2.0
    );
    for k in 0..=4 {
        let t = seconds * f64::from(k) / 4.0;
        let x = left + f64::from(k) / 4.0 * pw;
        let anchor = match k {
            0 => "start",
            4 => "end",
            _ => "middle",
        };
        let _ = writeln!(s, "<text x=\"{x:.1}\" y=\"{}\" text-anchor=\"{anchor}\">{t:.0}</text>", y1 + rh + 16.0);
    }
    let _ = writeln!(
        s,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">seconds into the run</text>",
        left + pw / 2.0,
        y1 + rh + 32.0
    );
    s.push_str("</svg>\n");
    s
}

/// The differences between two reports' JSON: one row a figure, `b` against `a`.
pub fn compare_table(a: &serde_json::Value, b: &serde_json::Value, la: &str, lb: &str) -> Result<String, String> {
    let rows: [(&str, &[&str]); 11] = [
        ("sent", &["sent"]),
        ("achieved msg/s", &["achievedRate"]),
        ("alerts missing", &["alerts", "missing"]),
        ("alerts duplicated", &["alerts", "duplicated"]),
        ("latency p50 ms", &["latencyMs", "p50"]),
        ("latency p90 ms", &["latencyMs", "p90"]),
        ("latency p99 ms", &["latencyMs", "p99"]),
        ("latency p99.9 ms", &["latencyMs", "p99.9"]),
        ("latency max ms", &["latencyMs", "max"]),
        ("module CPU s", &["module", "cpuSeconds"]),
        ("module peak RSS KiB", &["module", "peakRssKb"]),
    ];
    let get = |j: &serde_json::Value, path: &[&str]| path.iter().fold(j, |v, k| &v[*k]).as_f64();
    if get(a, &["sent"]).is_none() || get(b, &["sent"]).is_none() {
        return Err("not replay reports (no \"sent\"): give two files written by replay --json".into());
    }
    let mut out = format!("{:<22} {:>14} {:>14} {:>10}\n", "figure", short(la), short(lb), "b / a");
    for (name, path) in rows {
        let (va, vb) = (get(a, path), get(b, path));
        let cell = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2}"));
        let ratio = match (va, vb) {
            (Some(x), Some(y)) if x != 0.0 => format!("{:.2}x", y / x),
            _ => "-".into(),
        };
        let _ = writeln!(out, "{name:<22} {:>14} {:>14} {ratio:>10}", cell(va), cell(vb));
    }
    Ok(out)
}

fn short(label: &str) -> String {
    let name = label.rsplit('/').next().unwrap_or(label);
    name.chars().take(14).collect()
}

fn escape(t: &str) -> String {
    t.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}
