//! Ids that must not be guessable (conversation ids, request ids): random
//! bytes from the operating system, in hex. The chat server refuses to start
//! when the OS gives no randomness ([`init`]); should it stop giving any
//! later, ids come from SHA-256 over a secret seed taken at start and a
//! counter, which is as unguessable as the seed.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest, Sha256};

static SEED: OnceLock<[u8; 32]> = OnceLock::new();
static COUNTER: AtomicU64 = AtomicU64::new(0);

/// The OS gives no randomness: ids would be guessable.
#[derive(Debug, thiserror::Error)]
#[error(
    "the operating system gives no randomness ({0}); ids would be guessable, so the server does not start"
)]
pub struct NoRandomness(String);

/// Takes the secret seed from the OS; an error when it gives none.
pub fn init() -> Result<(), NoRandomness> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| NoRandomness(e.to_string()))?;
    let _ = SEED.set(seed);
    Ok(())
}

/// `bytes` random bytes, as `2 * bytes` hex digits.
pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    if let Err(e) = getrandom::fill(&mut buf) {
        tracing::warn!(error = %e, "no randomness from the OS; ids come from the seed taken at start");
        let seed = SEED.get().copied().unwrap_or_else(|| {
            // Only a command that never called `init` gets here.
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            Sha256::digest(format!("{t:?}{}", std::process::id())).into()
        });
        for (i, chunk) in buf.chunks_mut(32).enumerate() {
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let d = Sha256::new()
                .chain_update(seed)
                .chain_update(n.to_le_bytes())
                .chain_update((i as u64).to_le_bytes())
                .finalize();
            chunk.copy_from_slice(&d[..chunk.len()]);
        }
    }
    hex::encode(buf)
}

#[cfg(test)]
mod tests {
    #[test]
    fn ids_are_long_and_differ() {
        super::init().unwrap();
        let a = super::random_hex(16);
        assert_eq!(a.len(), 32);
        assert_ne!(a, super::random_hex(16));
    }
}
