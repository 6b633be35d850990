//! Key comparison after unescaping: whether a key a document wrote with escapes is a rule's key
//! (or `machine`, `temperature`).
//!
//! Only a key with a backslash in it gets here: plain keys, the common case, are compared by the
//! scanner in one fixed read. The escaped key is decoded while it is compared, one character at a
//! time, with no buffer: `\uXXXX` becomes its code point's UTF-8 (a surrogate pair one code point
//! of four bytes), as serde_json unescapes it, so `temp\u00e9rature` (how System.Text.Json, the C#
//! default, writes it) is `température`. The scanner validates escapes before it compares, but
//! the comparison holds on its own: a lone surrogate, a bad escape or one cut short matches
//! nothing.

/// Whether `raw`, a string's content between its quotes, is `name` (UTF-8) once unescaped.
#[inline(never)]
pub(super) fn unescaped_equals(raw: &[u8], name: &[u8]) -> bool {
    let mut i = 0;
    let mut n = 0;
    while let Some(&b) = raw.get(i) {
        if b != b'\\' {
            if name.get(n) != Some(&b) {
                return false;
            }
            i += 1;
            n += 1;
            continue;
        }
        let (c, len) = match raw.get(i + 1) {
            Some(b'u') => match code_point(raw, i + 2) {
                Some(found) => found,
                None => return false,
            },
            Some(b'"') => ('"', 2),
            Some(b'\\') => ('\\', 2),
            Some(b'/') => ('/', 2),
            Some(b'b') => ('\u{8}', 2),
            Some(b'f') => ('\u{c}', 2),
            Some(b'n') => ('\n', 2),
            Some(b'r') => ('\r', 2),
            Some(b't') => ('\t', 2),
            _ => return false,
        };
        let mut utf8 = [0; 4];
        let utf8 = c.encode_utf8(&mut utf8).as_bytes();
        if name.get(n..n + utf8.len()) != Some(utf8) {
            return false;
        }
        i += len;
        n += utf8.len();
    }
    n == name.len()
}

/// The character of the `\u` escape whose hex digits start at `at`, taken with its low surrogate
/// when it is a high one, and the escape's length from its backslash (6, or 12 for a pair). None
/// for a lone or misordered surrogate or bad hex.
fn code_point(raw: &[u8], at: usize) -> Option<(char, usize)> {
    let unit = hex4(raw, at)?;
    let (code, len) = match unit {
        0xD800..=0xDBFF => {
            if raw.get(at + 4..at + 6) != Some(b"\\u") {
                return None;
            }
            let low = hex4(raw, at + 6)?;
            if !(0xDC00..=0xDFFF).contains(&low) {
                return None;
            }
            (0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00), 12)
        }
        _ => (unit, 6),
    };
    // A lone low surrogate is no character.
    Some((char::from_u32(code)?, len))
}

/// The four hex digits at `at` as a UTF-16 code unit.
fn hex4(raw: &[u8], at: usize) -> Option<u32> {
    raw.get(at..at + 4)?.iter().try_fold(0, |unit, &d| Some(unit << 4 | char::from(d).to_digit(16)?))
}

#[cfg(test)]
mod tests {
    use super::unescaped_equals;

    fn equals(raw: &str, name: &str) -> bool {
        unescaped_equals(raw.as_bytes(), name.as_bytes())
    }

    #[test]
    fn ascii_escapes_compare_as_their_characters() {
        assert!(equals(r"temp\u0065rature", "temperature"));
        assert!(equals(r"\u0061\u002E\u0062", "a.b"));
        assert!(equals(r#"a\"b\\c\/d\b\f\n\r\t"#, "a\"b\\c/d\u{8}\u{c}\n\r\t"));
        assert!(equals(r"a\u003cb\u0026c\u0027\u002b", "a<b&c'+"));
        assert!(equals(r"\u0000", "\0"));
        assert!(!equals(r"temp\u0065ratur", "temperature"));
        assert!(!equals(r"temp\u0065raturee", "temperature"));
        assert!(!equals(r"\u0041", "a"));
    }

    /// System.Text.Json writes every non-ASCII character as `\uXXXX`: two bytes of UTF-8, three,
    /// and a surrogate pair for four. Raw UTF-8 and escapes may mix in one key.
    #[test]
    fn non_ascii_escapes_compare_as_their_utf8() {
        assert!(equals(r"temp\u00e9rature", "température"));
        assert!(equals(r"temp\u00E9rature", "température"));
        assert!(equals(r"tempé\u0072ature", "température"));
        assert!(equals(r"\u00e9t\u00e9", "été"));
        assert!(equals(r"\u6e29\u5ea6", "温度"));
        assert!(equals(r"\u6e29度", "温度"));
        assert!(equals(r"\ud83c\udf21", "🌡"));
        assert!(equals(r"\uD83C\uDF21\uFE0F x", "🌡\u{fe0f} x"));
        assert!(equals(r"\udbff\udfff", "\u{10ffff}"));
        assert!(equals(r"\u0080\u07ff\u0800\uffff\ud800\udc00", "\u{80}\u{7ff}\u{800}\u{ffff}\u{10000}"));
    }

    /// A code point is compared whole: not as bytes, not as a prefix, not as the wrong length.
    #[test]
    fn non_ascii_escapes_that_are_another_key_do_not_match() {
        // `é` is C3 A9 in UTF-8; `\u00c3\u00a9` is `Ã©`.
        assert!(!equals(r"\u00c3\u00a9", "é"));
        assert!(!equals(r"\u00c3", "é"));
        assert!(!equals(r"\u00e9", "éé"));
        assert!(!equals(r"\u00e9\u00e9", "é"));
        assert!(!equals(r"temp\u00e8rature", "température"));
        assert!(!equals(r"\u00e9", "e"));
        assert!(!equals(r"\ud83c\udf22", "🌡"));
        assert!(!equals(r"\ud83c\udf21", "🌡\u{fe0f}"));
        assert!(!equals(r"\u6e29", "温度"));
    }

    /// The scanner refuses a document with a lone surrogate before it compares keys, but the
    /// comparison holds on its own: such a key, or one cut short, is no key and no panic.
    #[test]
    fn lone_surrogates_and_cut_escapes_match_nothing() {
        for raw in [
            r"\ud83c",
            r"\udf21",
            r"\udf21\ud83c",
            r"\ud83c\u0041",
            r"\ud83c\ud83c",
            r"\ud83cx",
            r"\ud83c\",
            r"\ud83c\u",
            r"\ud83c\udf2",
            r"\u00e",
            r"\u",
            r"\",
            r"\ug000",
            r"\u+0e9",
            r"\u+041",
        ] {
            for name in ["🌡", "\u{fffd}", "é", "", "A"] {
                assert!(!equals(raw, name), "{raw:?} is not {name:?}");
            }
        }
    }
}
