//! Charge point passwords: argon2id PHC hashes, the OCPP length rules, and new random
//! passwords for rotation.
//!
//! Hashing and verifying are deliberately slow (tens of milliseconds, 19 MiB each); callers
//! run them off the async runtime ([`super::verifier`]).

use std::fmt;

use argon2::{
    password_hash::{phc::PasswordHash, PasswordHasher, PasswordVerifier},
    Argon2,
};
use ocpp::OcppVersion;
use rand::{distr::Alphanumeric, Rng};

/// argon2id memory cost of new hashes, in KiB (OWASP's recommendation).
pub const DEFAULT_MEMORY_KIB: u32 = 19 * 1024;
/// argon2id passes of new hashes.
pub const DEFAULT_PASSES: u32 = 2;

/// An argon2id PHC string (`$argon2id$v=19$m=...,t=...,p=...$salt$hash`), checked to parse.
#[derive(Clone, PartialEq, Eq)]
pub struct PasswordHashString(String);

/// Why a string is not a usable password hash.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HashError {
    /// Not a PHC string.
    #[error("not a PHC password hash string: {0}")]
    NotPhc(String),
    /// A PHC string of another algorithm.
    #[error("password hash algorithm is {0}, expected argon2id")]
    NotArgon2id(String),
    /// Hashing failed (internal).
    #[error("password hashing failed: {0}")]
    Hashing(String),
}

impl PasswordHashString {
    /// Checks `phc` is an argon2id PHC string with parameters argon2 accepts.
    pub fn parse(phc: &str) -> Result<PasswordHashString, HashError> {
        let parsed = PasswordHash::new(phc).map_err(|e| HashError::NotPhc(e.to_string()))?;
        if parsed.algorithm.as_str() != "argon2id" {
            return Err(HashError::NotArgon2id(parsed.algorithm.as_str().to_owned()));
        }
        argon2::Params::try_from(&parsed).map_err(|e| HashError::NotPhc(e.to_string()))?;
        Ok(PasswordHashString(phc.to_owned()))
    }

    /// Hashes `password` with argon2id and the recommended parameters (OWASP: 19 MiB,
    /// 2 passes, 1 lane) and a random salt. Slow: not on the async runtime.
    pub fn hash(password: &[u8]) -> Result<PasswordHashString, HashError> {
        PasswordHashString::hash_with(password, DEFAULT_MEMORY_KIB, DEFAULT_PASSES)
    }

    /// Hashes `password` with argon2id, `memory_kib` KiB and `passes` passes (1 lane).
    pub fn hash_with(
        password: &[u8],
        memory_kib: u32,
        passes: u32,
    ) -> Result<PasswordHashString, HashError> {
        let params = argon2::Params::new(memory_kib, passes, 1, None)
            .map_err(|e| HashError::Hashing(e.to_string()))?;
        let hash = Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
            .hash_password(password)
            .map_err(|e| HashError::Hashing(e.to_string()))?;
        Ok(PasswordHashString(hash.to_string()))
    }

    /// Whether `password` is the one hashed here, compared in constant time. Slow: not on
    /// the async runtime.
    pub fn verify(&self, password: &[u8]) -> bool {
        // Parsed again rather than kept parsed: `PasswordHash` borrows, and parsing costs
        // microseconds next to the milliseconds of hashing.
        PasswordHash::new(&self.0)
            .is_ok_and(|parsed| Argon2::default().verify_password(password, &parsed).is_ok())
    }

    /// The PHC string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

// The hash is not the password, but it is still what an offline attack starts from: logs
// show only that there is one.
impl fmt::Debug for PasswordHashString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PasswordHashString(<argon2id>)")
    }
}

/// The lengths OCPP allows for a charge point's password, by version: 1.6's
/// `AuthorizationKey` is 16 to 20 bytes, 2.x's `BasicAuthPassword` 16 to 40 characters.
pub fn length_range(version: OcppVersion) -> std::ops::RangeInclusive<usize> {
    match version {
        OcppVersion::V16 => 16..=20,
        OcppVersion::V201 | OcppVersion::V21 => 16..=40,
    }
}

/// The shortest and longest passwords of any version, for passwords set without a version.
pub const ANY_VERSION_LENGTHS: std::ops::RangeInclusive<usize> = 16..=40;

/// A new random password of the longest length `version` allows, of ASCII letters and
/// digits only (which every station's configuration accepts): 20 characters (119 bits)
/// for 1.6, 40 (238 bits) for 2.x.
pub fn generate(version: OcppVersion) -> String {
    let length = *length_range(version).end();
    rand::rng()
        .sample_iter(Alphanumeric)
        .take(length)
        .map(char::from)
        .collect()
}

/// The hex encoding OCPP 1.6 uses for `AuthorizationKey` in ChangeConfiguration.
pub fn hex_encode(password: &[u8]) -> String {
    password.iter().map(|byte| format!("{byte:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hash_verifies_its_password_and_no_other() {
        let hash = PasswordHashString::hash(b"0123456789abcdef").unwrap();
        assert!(
            hash.as_str().starts_with("$argon2id$v=19$"),
            "{}",
            hash.as_str()
        );
        assert!(hash.verify(b"0123456789abcdef"));
        assert!(!hash.verify(b"0123456789abcdeF"));
        assert!(!hash.verify(b""));
        let reparsed = PasswordHashString::parse(hash.as_str()).unwrap();
        assert!(reparsed.verify(b"0123456789abcdef"));
    }

    #[test]
    fn a_hash_records_its_parameters_and_verifies_with_them() {
        let hash = PasswordHashString::hash_with(b"0123456789abcdef", 1024, 1).unwrap();
        assert!(
            hash.as_str().contains("$m=1024,t=1,p=1$"),
            "{}",
            hash.as_str()
        );
        assert!(hash.verify(b"0123456789abcdef"));
        assert!(PasswordHashString::hash_with(b"x", 1, 1).is_err());
        let default = PasswordHashString::hash(b"0123456789abcdef").unwrap();
        assert!(
            default.as_str().contains("$m=19456,t=2,p=1$"),
            "{}",
            default.as_str()
        );
    }

    #[test]
    fn only_argon2id_phc_strings_are_accepted() {
        assert!(matches!(
            PasswordHashString::parse("hunter2"),
            Err(HashError::NotPhc(_))
        ));
        assert!(matches!(
            PasswordHashString::parse(
                "$argon2i$v=19$m=16,t=2,p=1$c2FsdHNhbHQ$ZmFrZWhhc2hmYWtlaGFzaA"
            ),
            Err(HashError::NotArgon2id(_))
        ));
        // m=1 is below argon2's minimum memory.
        assert!(PasswordHashString::parse(
            "$argon2id$v=19$m=1,t=2,p=1$c2FsdHNhbHQ$ZmFrZWhhc2hmYWtlaGFzaA"
        )
        .is_err());
    }

    #[test]
    fn generated_passwords_have_the_versions_length_and_differ() {
        assert_eq!(generate(OcppVersion::V16).len(), 20);
        assert_eq!(generate(OcppVersion::V201).len(), 40);
        assert!(generate(OcppVersion::V21)
            .bytes()
            .all(|b| b.is_ascii_alphanumeric()));
        assert_ne!(generate(OcppVersion::V16), generate(OcppVersion::V16));
    }

    #[test]
    fn debug_shows_no_hash() {
        let hash = PasswordHashString::hash(b"0123456789abcdef").unwrap();
        let salt_and_hash = hash.as_str().rsplit('$').next().unwrap().to_owned();
        assert!(!format!("{hash:?}").contains(&salt_and_hash));
    }

    #[test]
    fn authorization_keys_are_hex_encoded_lowercase() {
        assert_eq!(hex_encode(b"AZaz09"), "415a617a3039");
    }
}
