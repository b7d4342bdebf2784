//! Password verification: argon2id off the async runtime, on a bounded number of
//! blocking threads, behind a cache of recent successes.
//!
//! The cache is what keeps a reconnect storm from becoming minutes of hashing: a charge
//! point that authenticated within `verified_cache_ttl`, with the same password against
//! the same stored hash, is let in after one keyed hash (microseconds) instead of argon2
//! (tens of milliseconds). The cache holds a keyed BLAKE2b digest of the password, never
//! the password; the key is random per process, so the digests are useless elsewhere.

use std::{collections::HashMap, time::Duration};

use blake2::{digest::consts::U32, Blake2b, Digest};
use parking_lot::Mutex;
use subtle::ConstantTimeEq;
use tokio::{sync::Semaphore, time::Instant};

use super::password::{HashError, PasswordHashString};

type Digest32 = [u8; 32];

/// Which of a record's passwords matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Matched {
    /// The current password.
    Current,
    /// The password before the last rotation, still in its grace period.
    Previous,
    /// Neither.
    None,
}

struct Verified {
    digest: Digest32,
    hash: PasswordHashString,
    expires: Instant,
}

/// Verifies passwords within a bound of concurrent hashes; remembers successes.
pub struct Verifier {
    pool: Semaphore,
    ttl: Duration,
    key: [u8; 32],
    verified: Mutex<HashMap<String, Verified>>,
    /// Verified for ids without a record, so that an unknown id costs what a wrong
    /// password costs and the two cannot be told apart by timing.
    decoy: PasswordHashString,
}

impl Verifier {
    /// At most `max_concurrent` hashes at once; successes remembered for `ttl`.
    pub fn new(max_concurrent: usize, ttl: Duration) -> Verifier {
        let decoy = PasswordHashString::hash(&rand::random::<[u8; 20]>())
            .unwrap_or_else(|_| unreachable_decoy());
        Verifier {
            pool: Semaphore::new(max_concurrent),
            ttl,
            key: rand::random(),
            verified: Mutex::new(HashMap::new()),
            decoy,
        }
    }

    /// Checks `password` for charge point `id` against `current`, then `previous`.
    pub async fn verify(
        &self,
        id: &str,
        password: &[u8],
        current: &PasswordHashString,
        previous: Option<&PasswordHashString>,
    ) -> Matched {
        let digest = self.digest(id, password);
        if self.remembered(id, &digest, current) {
            return Matched::Current;
        }
        let (current_hash, previous_hash) = (current.clone(), previous.cloned());
        let password = password.to_vec();
        let matched = self
            .hash(move || {
                if current_hash.verify(&password) {
                    Matched::Current
                } else if previous_hash.is_some_and(|previous| previous.verify(&password)) {
                    Matched::Previous
                } else {
                    Matched::None
                }
            })
            .await
            .unwrap_or(Matched::None);
        if matched == Matched::Current && !self.ttl.is_zero() {
            self.verified.lock().insert(
                id.to_owned(),
                Verified {
                    digest,
                    hash: current.clone(),
                    expires: Instant::now() + self.ttl,
                },
            );
        }
        matched
    }

    /// Spends what a verification spends, and fails: for an id without a record.
    pub async fn decoy(&self, password: &[u8]) {
        let decoy = self.decoy.clone();
        let password = password.to_vec();
        let _ = self.hash(move || decoy.verify(&password)).await;
    }

    /// Hashes a new `password` on the same bounded pool as verifications, so that setting
    /// passwords cannot take the threads that handshakes verify on.
    pub async fn hash_new(&self, password: Vec<u8>) -> Result<PasswordHashString, HashError> {
        self.hash(move || PasswordHashString::hash(&password))
            .await
            .unwrap_or_else(|| Err(HashError::Hashing("the hashing thread panicked".into())))
    }

    /// Forgets what was verified for `id` (its record changed or was deleted).
    pub fn forget(&self, id: &str) {
        self.verified.lock().remove(id);
    }

    /// How many successes are remembered.
    pub fn remembered_count(&self) -> usize {
        self.verified.lock().len()
    }

    fn remembered(&self, id: &str, digest: &Digest32, current: &PasswordHashString) -> bool {
        let mut verified = self.verified.lock();
        let Some(entry) = verified.get(id) else {
            return false;
        };
        if entry.expires <= Instant::now() {
            verified.remove(id);
            return false;
        }
        entry.hash == *current && bool::from(entry.digest.ct_eq(digest))
    }

    fn digest(&self, id: &str, password: &[u8]) -> Digest32 {
        // Keyed by prefix, which is a sound MAC for BLAKE2 (no length extension); the id's
        // length is included so that id and password cannot trade bytes.
        let mut hasher = Blake2b::<U32>::new();
        hasher.update(self.key);
        hasher.update((id.len() as u64).to_le_bytes());
        hasher.update(id.as_bytes());
        hasher.update(password);
        hasher.finalize().into()
    }

    /// Runs `work` on a blocking thread once the pool has room; `None` if it panicked
    /// (counted as a failed verification, not a failed task).
    async fn hash<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Option<T> {
        // The permit bounds the hashes at once; the semaphore is never closed.
        let _permit = self.pool.acquire().await;
        tokio::task::spawn_blocking(work).await.ok()
    }
}

fn unreachable_decoy() -> PasswordHashString {
    // Hashing with the default parameters only fails on allocation failure; a fixed,
    // valid hash of nothing anyone knows keeps the decoy's cost the same.
    PasswordHashString::parse(
        "$argon2id$v=19$m=19456,t=2,p=1$ZGVjb3lzYWx0ZGVjb3k$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    )
    .expect("a valid PHC string")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_success_is_remembered_for_the_same_password_and_hash_only() {
        let verifier = Verifier::new(2, Duration::from_secs(60));
        let hash = PasswordHashString::hash(b"0123456789abcdef").unwrap();
        assert_eq!(
            verifier
                .verify("CP-1", b"0123456789abcdef", &hash, None)
                .await,
            Matched::Current
        );
        assert_eq!(verifier.remembered_count(), 1);
        let digest = verifier.digest("CP-1", b"0123456789abcdef");
        assert!(verifier.remembered("CP-1", &digest, &hash));
        // Another password, another id, or a changed record miss the cache.
        assert!(!verifier.remembered("CP-1", &verifier.digest("CP-1", b"wrong"), &hash));
        assert!(!verifier.remembered("CP-2", &verifier.digest("CP-2", b"0123456789abcdef"), &hash));
        let rehashed = PasswordHashString::hash(b"0123456789abcdef").unwrap();
        assert!(!verifier.remembered("CP-1", &digest, &rehashed));
        assert_eq!(
            verifier
                .verify("CP-1", b"wrong password!!", &hash, None)
                .await,
            Matched::None
        );
        verifier.forget("CP-1");
        assert_eq!(verifier.remembered_count(), 0);
    }

    #[tokio::test]
    async fn the_previous_password_matches_but_is_not_remembered() {
        let verifier = Verifier::new(1, Duration::from_secs(60));
        let current = PasswordHashString::hash(b"new-password-0123").unwrap();
        let previous = PasswordHashString::hash(b"old-password-0123").unwrap();
        assert_eq!(
            verifier
                .verify("CP-1", b"old-password-0123", &current, Some(&previous))
                .await,
            Matched::Previous
        );
        assert_eq!(verifier.remembered_count(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_remembered_success_expires() {
        let verifier = Verifier::new(1, Duration::from_secs(60));
        let hash = PasswordHashString::hash(b"0123456789abcdef").unwrap();
        verifier
            .verify("CP-1", b"0123456789abcdef", &hash, None)
            .await;
        let digest = verifier.digest("CP-1", b"0123456789abcdef");
        tokio::time::advance(Duration::from_secs(61)).await;
        assert!(!verifier.remembered("CP-1", &digest, &hash));
        assert_eq!(verifier.remembered_count(), 0);
    }
}
