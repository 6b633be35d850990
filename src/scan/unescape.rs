//! Key comparison after unescaping, for keys a document writes with escapes.

/// Compares a validated raw string body with escapes against an ASCII `name`.
pub(super) fn unescaped_equals(raw: &[u8], name: &[u8]) -> bool {
    let mut i = 0;
    let mut n = 0;
    while i < raw.len() {
        let c = if raw[i] == b'\\' {
            let (c, len) = match raw[i + 1] {
                b'u' => {
                    let hex = std::str::from_utf8(&raw[i + 2..i + 6]).unwrap_or("");
                    match u16::from_str_radix(hex, 16) {
                        // Only an ASCII code point can match an ASCII name.
                        Ok(u) if u < 0x80 => (u as u8, 6),
                        _ => return false,
                    }
                }
                b'b' => (0x08, 2),
                b'f' => (0x0c, 2),
                b'n' => (b'\n', 2),
                b'r' => (b'\r', 2),
                b't' => (b'\t', 2),
                other => (other, 2),
            };
            i += len;
            c
        } else {
            i += 1;
            raw[i - 1]
        };
        if name.get(n) != Some(&c) {
            return false;
        }
        n += 1;
    }
    n == name.len()
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
