//! Ids that must not be guessable (conversation ids, request ids): random
//! bytes from the operating system, in hex.

/// `bytes` random bytes from the OS, as `2 * bytes` hex digits. Falls back
/// to a seeded generator only if the OS has no randomness to give (then the
/// id is unique but not secret, and a warning is logged).
pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    if let Err(e) = getrandom::fill(&mut buf) {
        tracing::warn!(error = %e, "no randomness from the OS; ids fall back to a seeded generator");
        buf.iter_mut().for_each(|b| *b = fastrand::u8(..));
    }
    hex::encode(buf)
}

#[cfg(test)]
mod tests {
    #[test]
    fn ids_are_long_and_differ() {
        let a = super::random_hex(16);
        assert_eq!(a.len(), 32);
        assert_ne!(a, super::random_hex(16));
    }
}
