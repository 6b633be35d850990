//! FNV-1a, 64 bits: message ids, checkpoint checksums and the hashes naming definitions. A leaf,
//! so that the definitions and the checkpoint can both use it.

/// FNV-1a, 64 bits, of `bytes`.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    fnv1a_on(0xcbf2_9ce4_8422_2325, bytes)
}

/// FNV-1a continued from `state`, the hash of what came before `bytes`: `fnv1a_on(fnv1a(a), b)`
/// is `fnv1a` of `a` then `b`.
pub fn fnv1a_on(state: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(state, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}
