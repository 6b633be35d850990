//! Time for the aggregates: Unix milliseconds (`i64`), read from an ISO-8601 UTC string or epoch
//! seconds, and written back as ISO-8601 UTC for a window's bounds.
//!
//! A time finer than a millisecond is rounded up to the next one: windows are whole seconds and
//! (start, end], so a reading at `hh:mm:30.0000001Z` stays in the window that starts at `:30`.

/// The time in a reading: a JSON string holding ISO-8601 UTC (`2026-12-02T07:18:30.1234567Z`;
/// `+00:00` for `Z`; at most 9 fraction digits), in Unix milliseconds.
pub fn parse_iso(s: &[u8]) -> Option<i64> {
    parse_iso_with(s, &LastDay::default())
}

/// The last date [`parse_iso_with`] read and its day number: readings come in order, and most
/// share their date with the one before, whose calendar arithmetic is then not done again.
pub type LastDay = std::cell::Cell<Option<([u8; 10], i32)>>;

/// [`parse_iso`], the day of a date the same as `last`'s taken from it.
pub fn parse_iso_with(s: &[u8], last: &LastDay) -> Option<i64> {
    // In 32-bit integers: 64-bit division is a library call on armv7, and every part fits.
    let digits = |r: std::ops::Range<usize>| -> Option<i32> {
        let b = s.get(r)?;
        b.iter().try_fold(0i32, |acc, &c| c.is_ascii_digit().then(|| acc * 10 + i32::from(c - b'0')))
    };
    let sep = |i: usize, c: &[u8]| s.get(i).is_some_and(|b| c.contains(b));
    let date: [u8; 10] = s.get(..10)?.try_into().ok()?;
    let days = match last.get() {
        // Compared in line: `==` on the arrays was a `memcmp` call on armv7.
        Some((d, days)) if crate::bytes::same(&d, &date) => days,
        _ => {
            if !(sep(4, b"-") && sep(7, b"-")) {
                return None;
            }
            let (y, mo, d) = (digits(0..4)?, digits(5..7)?, digits(8..10)?);
            if !(1..=12).contains(&mo) || d < 1 || d > days_in_month(y, mo) {
                return None;
            }
            let days = days_from_civil(y, mo, d);
            last.set(Some((date, days)));
            days
        }
    };
    if !(sep(10, b"Tt ") && sep(13, b":") && sep(16, b":")) {
        return None;
    }
    let (h, mi, sec) = (digits(11..13)?, digits(14..16)?, digits(17..19)?);
    if h > 23 || mi > 59 || sec > 59 {
        return None;
    }
    let mut at = 19;
    let mut millis = 0i32;
    if sep(at, b".") {
        // One pass over the fraction's digits, scaled to nanoseconds by a table.
        const SCALE: [i32; 10] = [0, 100_000_000, 10_000_000, 1_000_000, 100_000, 10_000, 1_000, 100, 10, 1];
        let (start, mut nanos) = (at + 1, 0i32);
        at = start;
        while let Some(&c) = s.get(at).filter(|c| c.is_ascii_digit()) {
            if at - start < 9 {
                nanos = nanos * 10 + i32::from(c - b'0');
            }
            at += 1;
        }
        let n = at - start;
        if n == 0 || n > 9 {
            return None;
        }
        // Rounded up to the millisecond: 30.0000001 is 30.001.
        millis = (nanos * SCALE[n] + 999_999) / 1_000_000;
    }
    match &s[at..] {
        b"Z" | b"z" | b"+00:00" => {}
        _ => return None,
    }
    let secs = i64::from(days) * 86_400 + i64::from(h * 3600 + mi * 60 + sec);
    Some(secs * 1000 + i64::from(millis))
}

/// Epoch seconds (a JSON number) in milliseconds, rounded up; None beyond ±10^11 s (year 5138).
pub fn from_epoch_seconds(x: f64) -> Option<i64> {
    (x.abs() <= 1e11).then(|| (x * 1000.0).ceil() as i64)
}

/// `2026-12-02T07:18:30Z`, or with milliseconds when the time has them.
pub fn format_iso(ms: i64) -> String {
    let (secs, milli) = (ms.div_euclid(1000), ms.rem_euclid(1000));
    let (y, mo, d) = civil_from_days(secs.div_euclid(86_400));
    let s = secs.rem_euclid(86_400);
    let hms = format!("{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60);
    if milli == 0 {
        format!("{hms}Z")
    } else {
        format!("{hms}.{milli:03}Z")
    }
}

fn days_in_month(y: i32, m: i32) -> i32 {
    match m {
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i32, m: i32, d: i32) -> i32 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The inverse of [`days_from_civil`].
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso_times_read_and_write_back() {
        assert_eq!(parse_iso(b"1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_iso(b"2026-12-02T07:18:30Z"), Some(1_796_195_910_000));
        assert_eq!(format_iso(1_796_195_910_000), "2026-12-02T07:18:30Z");
        assert_eq!(parse_iso(b"2026-12-02T07:18:30.0000001Z"), Some(1_796_195_910_001), "rounded up");
        assert_eq!(parse_iso(b"2026-12-02T07:18:30.25+00:00"), Some(1_796_195_910_250));
        assert_eq!(parse_iso(b"2024-02-29T23:59:59.999Z"), Some(1_709_251_199_999));
        assert_eq!(parse_iso(b"2026-12-02T07:18:30.000000001Z"), Some(1_796_195_910_001), "nine digits");
        assert_eq!(parse_iso(b"2026-12-02T07:18:30.999999999Z"), Some(1_796_195_911_000), "up to the next second");
        assert_eq!(parse_iso(b"2026-12-02T07:18:30.5Z"), Some(1_796_195_910_500));
        assert_eq!(parse_iso(b"2026-12-02T07:18:30.0000000001Z"), None, "ten digits");
        assert_eq!(format_iso(1_709_251_199_999), "2024-02-29T23:59:59.999Z");
        assert_eq!(format_iso(-1000), "1969-12-31T23:59:59Z");
        for bad in [
            &b"2023-02-29T00:00:00Z"[..],
            b"2026-12-02T07:18:30",
            b"2026-12-02T24:00:00Z",
            b"2026-12-02T07:18:30+01:00",
            b"2026-12-02T07:18:30.Z",
            b"2026-1-02T07:18:30Z",
            b"",
        ] {
            assert_eq!(parse_iso(bad), None, "{}", String::from_utf8_lossy(bad));
        }
        // With the last date kept: the same answers, whatever came before.
        let last = LastDay::default();
        for s in [
            &b"2026-12-02T07:18:30Z"[..],
            b"2026-12-02T07:18:31.5Z",
            b"2023-02-29T00:00:00Z",
            b"2026-12-02T24:00:00Z",
            b"2026-12-03T00:00:00Z",
            b"2026-12-02T07:18:30",
            b"2026-12-0",
            b"2024-02-29T23:59:59.999Z",
            b"2024-02-29T00:00:00+00:00",
        ] {
            assert_eq!(parse_iso_with(s, &last), parse_iso(s), "{}", String::from_utf8_lossy(s));
        }
        for days in [-800_000i64, -1, 0, 59, 10_000, 2_000_000] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(i64::from(days_from_civil(y as i32, m as i32, d as i32)), days);
        }
        assert_eq!(from_epoch_seconds(1.5), Some(1500));
        assert_eq!(from_epoch_seconds(1e12), None);
    }
}
