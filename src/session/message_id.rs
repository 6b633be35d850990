//! An input's message id, for the aggregates to count edgeHub's redelivery of it once: its bag's
//! `$.mid`, otherwise the simulated sensor's `batchId` and `sequenceNumber`, and its FNV-1a hash
//! with the batch part's kept. Pure, and cheap on armv7: the bag is walked once, four and eight
//! bytes a step, and nothing calls `memcmp` or a string searcher ([`crate::bytes::same`]).

use crate::aggregate::{fnv1a, fnv1a_on};

/// Writes an input's message id into `id`: its bag's `$.mid`, otherwise the simulated sensor's
/// `batchId` and `sequenceNumber` (the tutorial's sensor sets no message id) as `batch/sequence`;
/// None for neither, else how many of its bytes are the batch's part (`batch/`; 0 for `$.mid`).
pub(super) fn message_id(bag: &str, id: &mut Vec<u8>) -> Option<usize> {
    id.clear();
    let mut rest = bag.trim_end_matches('/').as_bytes();
    let (mut batch, mut sequence) = (None, None);
    // One pass over the entries, each key matched by a slice pattern: byte compares in line,
    // no string searcher and no `memcmp` call (library calls on armv7).
    loop {
        let end = find_amp(rest);
        match &rest[..end] {
            [b'%', b'2', b'4', b'.', b'm', b'i', b'd', b'=', v @ ..] | [b'$', b'.', b'm', b'i', b'd', b'=', v @ ..] => {
                id.extend_from_slice(v);
                return Some(0);
            }
            [b'b', b'a', b't', b'c', b'h', b'I', b'd', b'=', v @ ..] => batch = Some(v),
            [b's', b'e', b'q', b'u', b'e', b'n', b'c', b'e', b'N', b'u', b'm', b'b', b'e', b'r', b'=', v @ ..] => {
                sequence = Some(v)
            }
            _ => {}
        }
        let Some(after) = rest.get(end + 1..) else { break };
        rest = after;
    }
    let (Some(b), Some(s)) = (batch, sequence) else { return None };
    id.extend_from_slice(b);
    id.push(b'/');
    id.extend_from_slice(s);
    Some(b.len() + 1)
}

/// Where the first `&` is in `bytes` (its length if none): eight, then four bytes a step, as
/// words with a zero byte where `&` was, then byte by byte in the word that has one. A byte loop was 6 armv7
/// instructions a byte of the bag, about 690 a message for the sensor's.
#[inline]
fn find_amp(bytes: &[u8]) -> usize {
    let has_amp = |w: &[u8]| {
        let w = u32::from_le_bytes([w[0], w[1], w[2], w[3]]) ^ 0x2626_2626;
        w.wrapping_sub(0x0101_0101) & !w & 0x8080_8080 != 0
    };
    let mut i = 0;
    while let Some(pair) = bytes.get(i..i + 8) {
        if has_amp(&pair[..4]) || has_amp(&pair[4..]) {
            break;
        }
        i += 8;
    }
    while let Some(word) = bytes.get(i..i + 4) {
        if has_amp(word) {
            break;
        }
        i += 4;
    }
    while bytes.get(i).is_some_and(|&b| b != b'&') {
        i += 1;
    }
    i
}

/// The [`fnv1a`] hash of a message id whose first `prefix` bytes are its batch's part, that part's
/// hash kept: the sensor's `batchId` (36 bytes) is the same for every message of a run, and
/// hashing it again was a tenth of an aggregate's cost per message on armv7.
pub(super) fn id_hash(cache: &mut (Vec<u8>, u64), id: &[u8], prefix: usize) -> u64 {
    let (batch, rest) = id.split_at(prefix);
    if !crate::bytes::same(&cache.0, batch) {
        *cache = (batch.to_vec(), fnv1a(batch));
    }
    fnv1a_on(cache.1, rest)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_message_id_is_the_bags_mid_or_else_the_sensors_batch_and_sequence() {
        let mut id = Vec::new();
        assert_eq!(super::message_id("sequenceNumber=7&batchId=b1&%24.mid=m%2F1&%24.cdid=d/", &mut id), Some(0));
        assert_eq!(id, b"m%2F1");
        assert_eq!(super::message_id("sequenceNumber=7&batchId=b1&%24.cdid=d", &mut id), Some(3));
        assert_eq!(id, b"b1/7");
        assert_eq!(super::message_id("sequenceNumber=7&%24.cdid=d", &mut id), None);
        assert_eq!(super::message_id("", &mut id), None);
        assert_eq!(super::message_id("$.mid=x", &mut id), Some(0));
        assert_eq!(id, b"x");
        // The first `=` ends a key: `batchId=a=b` is batch `a=b`; keys are matched whole.
        assert_eq!(super::message_id("batchIdx=z&batchId=a=b&sequenceNumber=&xsequenceNumber=9", &mut id), Some(4));
        assert_eq!(id, b"a=b/");
        assert_eq!(super::message_id("%24.midx=1&mid=2&batchId&sequenceNumber", &mut id), None);
        assert_eq!(super::message_id("a&&%24.mid=&b", &mut id), Some(0));
        assert_eq!(id, b"");
    }

    #[test]
    fn the_first_ampersand_is_found_four_bytes_a_step_as_byte_by_byte() {
        let alphabet = [b'&', b'a', 0x26 ^ 0x80, 0x25, 0x27, 0x00, 0xff, b'%'];
        let mut state = 1u32;
        for len in 0..40 {
            for _ in 0..200 {
                let bytes: Vec<u8> = (0..len)
                    .map(|_| {
                        state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                        alphabet[(state >> 16) as usize % alphabet.len()]
                    })
                    .collect();
                let want = bytes.iter().position(|&b| b == b'&').unwrap_or(bytes.len());
                assert_eq!(super::find_amp(&bytes), want, "{bytes:?}");
            }
        }
    }

    #[test]
    fn a_message_ids_hash_with_its_batch_part_kept_is_its_whole_hash() {
        let mut cache = (Vec::new(), super::fnv1a(b""));
        for (id, prefix) in [("b1/7", 3), ("b1/8", 3), ("b2/8", 3), ("mid", 0), ("b1/9", 3), ("", 0)] {
            assert_eq!(super::id_hash(&mut cache, id.as_bytes(), prefix), super::fnv1a(id.as_bytes()), "{id}");
        }
        assert_eq!(cache.0, b"", "the last batch part, kept");
    }
}
