//! Logs in the IoT Edge module style: `<6> 2026-11-26 07:00:00.000 +00:00 [INF] - message`.
//!
//! The `<N>` prefix is the syslog severity that `iotedge logs` and the Docker log drivers read.
//! The level comes from `RUST_LOG` (a level name) or else IoT Edge's `RuntimeLogLevel`
//! (`fatal`, `error`, `warning`, `info`, `debug`, `verbose`), `info` by default.

use std::io::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use log::{Level, LevelFilter, Log, Metadata, Record};

struct EdgeLogger;

impl Log for EdgeLogger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let line = format!("{}\n", format_line(record.level(), SystemTime::now(), &record.args().to_string()));
        let _ = std::io::stdout().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {
        let _ = std::io::stdout().flush();
    }
}

/// Installs the logger at the level the environment asks for.
pub fn init(lookup: impl Fn(&str) -> Option<String>) {
    let level = lookup("RUST_LOG")
        .and_then(|v| parse_level(&v))
        .or_else(|| lookup("RuntimeLogLevel").and_then(|v| parse_level(&v)))
        .unwrap_or(LevelFilter::Info);
    if log::set_logger(&EdgeLogger).is_ok() {
        log::set_max_level(level);
    }
}

/// A level name in either vocabulary.
pub fn parse_level(name: &str) -> Option<LevelFilter> {
    Some(match name.trim().to_ascii_lowercase().as_str() {
        "off" => LevelFilter::Off,
        "fatal" | "error" => LevelFilter::Error,
        "warning" | "warn" => LevelFilter::Warn,
        "info" | "information" => LevelFilter::Info,
        "debug" => LevelFilter::Debug,
        "verbose" | "trace" => LevelFilter::Trace,
        _ => return None,
    })
}

/// One log line, without the newline.
pub fn format_line(level: Level, at: SystemTime, message: &str) -> String {
    let (severity, tag) = match level {
        Level::Error => (3, "ERR"),
        Level::Warn => (4, "WRN"),
        Level::Info => (6, "INF"),
        Level::Debug => (7, "DBG"),
        Level::Trace => (7, "VRB"),
    };
    format!("<{severity}> {} +00:00 [{tag}] - {message}", utc_timestamp(at))
}

/// `YYYY-MM-DD hh:mm:ss.mmm` in UTC.
pub fn utc_timestamp(at: SystemTime) -> String {
    let d = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (y, m, day) = civil_from_days((secs / 86_400) as i64);
    let s = secs % 86_400;
    format!("{y:04}-{m:02}-{day:02} {:02}:{:02}:{:02}.{:03}", s / 3600, s / 60 % 60, s % 60, d.subsec_millis())
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}
