//! Report files: the HdrHistogram percentile distribution (`.hgrm`, the format HdrHistogram's
//! plotters read), an SVG plot of latency by percentile and of alert rate over time, and the
//! progress bar.

use std::fmt::Write as _;

use hdrhistogram::Histogram;

/// `[#####.....] sent 5000/10000, alerts 2400/5000`
pub fn progress_bar(sent: u64, total: u64, alerts: u64, expected: u64) -> String {
    let width: u64 = 30;
    let filled = (sent * width).checked_div(total).unwrap_or(width) as usize;
    format!(
        "[{}{}] sent {sent}/{total}, alerts {alerts}/{expected}",
        "#".repeat(filled.min(width as usize)),
        ".".repeat((width as usize).saturating_sub(filled))
    )
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

/// Two panels: latency (ms, log scale) by percentile (log "nines" scale), and alerts per second.
pub fn svg(h: &Histogram<u64>, per_second: &[u64], title: &str) -> String {
    let (w, ph) = (720.0, 300.0);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"10\" y=\"18\" font-size=\"14\">{}</text>\n",
        2.0 * ph + 60.0,
        escape(title)
    );
    // Panel 1: latency by percentile.
    let (x0, y0, pw) = (60.0, 40.0, w - 80.0);
    let _ = writeln!(s, "<rect x=\"{x0}\" y=\"{y0}\" width=\"{pw}\" height=\"{ph}\" fill=\"none\" stroke=\"#999\"/>");
    let _ =
        writeln!(s, "<text x=\"{x0}\" y=\"{}\">latency from scheduled send (ms, log) by percentile</text>", y0 - 6.0);
    if !h.is_empty() {
        let max_nines = 5.0f64; // up to 99.999%
        let lo = (h.min().max(1) as f64 / 1000.0).log10().floor();
        let hi = (h.max().max(2) as f64 / 1000.0).log10().ceil().max(lo + 1.0);
        let mut points = Vec::new();
        for v in h.iter_quantiles(5) {
            let q = v.quantile_iterated_to().min(1.0 - 1e-5);
            let nines = (-(1.0 - q).log10()).min(max_nines);
            let ms = (v.value_iterated_to().max(1) as f64 / 1000.0).log10();
            let x = x0 + nines / max_nines * pw;
            let y = y0 + ph - (ms - lo) / (hi - lo) * ph;
            points.push(format!("{x:.1},{y:.1}"));
        }
        let _ = writeln!(
            s,
            "<polyline fill=\"none\" stroke=\"#1f77b4\" stroke-width=\"2\" points=\"{}\"/>",
            points.join(" ")
        );
        for (i, label) in ["0%", "90%", "99%", "99.9%", "99.99%", "99.999%"].iter().enumerate() {
            let x = x0 + i as f64 / max_nines * pw;
            let _ = writeln!(s, "<text x=\"{x:.1}\" y=\"{}\" text-anchor=\"middle\">{label}</text>", y0 + ph + 14.0);
        }
        let mut e = lo;
        while e <= hi {
            let y = y0 + ph - (e - lo) / (hi - lo) * ph;
            let _ = writeln!(s, "<text x=\"{}\" y=\"{y:.1}\" text-anchor=\"end\">{}</text>", x0 - 4.0, 10f64.powf(e));
            e += 1.0;
        }
    }
    // Panel 2: alerts per second.
    let y1 = y0 + ph + 40.0;
    let _ = writeln!(
        s,
        "<rect x=\"{x0}\" y=\"{y1}\" width=\"{pw}\" height=\"{}\" fill=\"none\" stroke=\"#999\"/>",
        ph - 40.0
    );
    let _ = writeln!(s, "<text x=\"{x0}\" y=\"{}\">alerts received per second</text>", y1 - 6.0);
    let top = per_second.iter().copied().max().unwrap_or(1).max(1) as f64;
    if !per_second.is_empty() {
        let n = per_second.len().max(2) as f64 - 1.0;
        let points: Vec<String> = per_second
            .iter()
            .enumerate()
            .map(|(i, c)| {
                format!("{:.1},{:.1}", x0 + i as f64 / n * pw, y1 + (ph - 40.0) - *c as f64 / top * (ph - 40.0))
            })
            .collect();
        let _ = writeln!(
            s,
            "<polyline fill=\"none\" stroke=\"#d62728\" stroke-width=\"2\" points=\"{}\"/>",
            points.join(" ")
        );
        let _ = writeln!(s, "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{top}</text>", x0 - 4.0, y1 + 10.0);
    }
    s.push_str("</svg>\n");
    s
}

fn escape(t: &str) -> String {
    t.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}
