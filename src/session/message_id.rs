//! An input's message id for the aggregates, to count edgeHub's redelivery of it once: the FNV-1a
//! hash of what its bag says tells it apart ([`crate::topic::BagId`], found while the topic was
//! classified), its `$.mid`, otherwise the simulated sensor's `batchId` and `sequenceNumber` as
//! `batch/sequence`, with the batch part's hash kept. Pure, and cheap on armv7: nothing walks the
//! bag again, and nothing calls `memcmp` ([`crate::bytes::same`]).

use crate::aggregate::{fnv1a, fnv1a_on};
use crate::topic::BagId;

/// The hash of the batch part last seen: its bytes, and the hash of them followed by `/`.
#[derive(Debug)]
pub(super) struct BatchHash(Vec<u8>, u64);

impl Default for BatchHash {
    fn default() -> BatchHash {
        BatchHash(Vec::new(), fnv1a(b"/"))
    }
}

/// The [`fnv1a`] hash of an input's message id: of its `$.mid`, or of `batch/sequence`; None for
/// neither. The sensor's `batchId` (36 bytes) is the same for every message of a run, and
/// hashing it again was a tenth of an aggregate's cost per message on armv7: its hash is kept.
pub(super) fn id_hash(cache: &mut BatchHash, id: &BagId) -> Option<u64> {
    match *id {
        BagId { mid: Some(mid), .. } => Some(fnv1a(mid)),
        BagId { batch: Some(batch), sequence: Some(sequence), .. } => {
            if !crate::bytes::same(&cache.0, batch) {
                *cache = BatchHash(batch.to_vec(), fnv1a_on(fnv1a(batch), b"/"));
            }
            Some(fnv1a_on(cache.1, sequence))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::{fnv1a, id_hash, BagId, BatchHash};

    #[test]
    fn a_message_ids_hash_is_its_mids_or_else_its_batch_and_sequences_whole() {
        let mut cache = BatchHash::default();
        let id = |mid: Option<&'static str>, batch: Option<&'static str>, sequence: Option<&'static str>| BagId {
            mid: mid.map(str::as_bytes),
            batch: batch.map(str::as_bytes),
            sequence: sequence.map(str::as_bytes),
        };
        for (bag, want) in [
            (id(None, Some("b1"), Some("7")), Some("b1/7")),
            (id(None, Some("b1"), Some("8")), Some("b1/8")),
            (id(Some("m%2F1"), Some("b1"), Some("8")), Some("m%2F1")),
            (id(None, Some("b2"), Some("8")), Some("b2/8")),
            (id(Some(""), None, None), Some("")),
            (id(None, Some(""), Some("")), Some("/")),
            (id(None, Some("b1"), Some("9")), Some("b1/9")),
            (id(None, Some("b1"), None), None),
            (id(None, None, Some("9")), None),
        ] {
            assert_eq!(id_hash(&mut cache, &bag), want.map(|w| fnv1a(w.as_bytes())), "{bag:?}");
        }
        assert_eq!(cache.0, b"b1", "the last batch part, kept");
    }
}
