//! Byte compares made in line, for the hot paths of the scanner and the aggregates: on armv7 a
//! `memcmp` call costs more than the few bytes they compare.

/// `a == b`, four bytes a step in line: a `memcmp` call was about 150 armv7 instructions for a
/// 36-byte batch id (the aggregates' three calls a message, with a key and a date, about 200).
#[inline]
pub fn same(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let (wa, wb) = (a.chunks_exact(4), b.chunks_exact(4));
    let tails = wa.remainder().iter().zip(wb.remainder()).all(|(x, y)| x == y);
    tails
        && wa
            .zip(wb)
            .all(|(x, y)| u32::from_ne_bytes([x[0], x[1], x[2], x[3]]) == u32::from_ne_bytes([y[0], y[1], y[2], y[3]]))
}

#[cfg(test)]
mod tests {
    #[test]
    fn bytes_compared_four_a_step_compare_as_slices() {
        let words = [
            "",
            "a",
            "ab",
            "abcd",
            "abcde",
            "47e4ce4b-896c-4d1d-abcf-a6a8e079651d",
            "47e4ce4b-896c-4d1d-abcf-a6a8e079651e",
        ];
        for a in words {
            for b in words {
                assert_eq!(super::same(a.as_bytes(), b.as_bytes()), a == b, "{a} {b}");
            }
        }
        assert!(!super::same(b"abcdefgh", b"abcdXfgh"));
    }
}
