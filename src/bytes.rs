//! Byte compares and searches made in line, for the hot paths of the scanner, the property bag
//! and the aggregates: on armv7 a `memcmp` or `memchr` call costs more than the few bytes they
//! look at.

/// `a == b`, four bytes a step in line: a `memcmp` call was about 150 armv7 instructions for a
/// 36-byte batch id (the aggregates' three calls a message, with a key and a date, about 200).
#[inline]
pub fn same(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let (wa, wb) = (a.chunks_exact(4), b.chunks_exact(4));
    let tails = wa.remainder().iter().zip(wb.remainder()).all(|(x, y)| x == y);
    tails && wa.zip(wb).all(|(x, y)| word(x) == word(y))
}

/// A mask of the little-endian word `w` whose lowest set bit is the top bit of the first byte
/// equal to `b` (0 when none is; bits above the first may be set falsely, by the borrow).
#[inline(always)]
fn matches(w: u32, b: u8) -> u32 {
    let w = w ^ (u32::from(b) * 0x0101_0101);
    w.wrapping_sub(0x0101_0101) & !w & 0x8080_8080
}

#[inline(always)]
fn word(w: &[u8]) -> u32 {
    u32::from_le_bytes([w[0], w[1], w[2], w[3]])
}

/// Where the first `B` is in `bytes` (its length if none): four bytes a step, as words with a
/// zero byte where `B` was, the byte found from the word's mask (two instructions on armv7,
/// `rbit` and `clz`); byte by byte only in the last three. A byte loop is 6 armv7 instructions a
/// byte: about 690 a message for the simulated sensor's bag.
#[inline]
pub fn find<const B: u8>(bytes: &[u8]) -> usize {
    let mut i = 0;
    while let Some(w) = bytes.get(i..i + 4) {
        let m = matches(word(w), B);
        if m != 0 {
            return i + (m.trailing_zeros() / 8) as usize;
        }
        i += 4;
    }
    while bytes.get(i).is_some_and(|&b| b != B) {
        i += 1;
    }
    i
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

    #[test]
    fn a_byte_found_four_bytes_a_step_is_found_as_byte_by_byte() {
        let alphabet = [b'&', b'=', b'a', 0x26 ^ 0x80, 0x25, 0x27, 0x3c, 0x3e, 0x00, 0xff, b'%'];
        let mut state = 1u32;
        for len in 0..40 {
            for _ in 0..200 {
                let bytes: Vec<u8> = (0..len)
                    .map(|_| {
                        state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                        alphabet[(state >> 16) as usize % alphabet.len()]
                    })
                    .collect();
                let want = |b: u8| bytes.iter().position(|&x| x == b).unwrap_or(bytes.len());
                assert_eq!(super::find::<b'&'>(&bytes), want(b'&'), "{bytes:?}");
                assert_eq!(super::find::<b'='>(&bytes), want(b'='), "{bytes:?}");
            }
        }
    }
}
