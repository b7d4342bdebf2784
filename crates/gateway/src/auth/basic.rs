//! The `Authorization: Basic` header of a charge point's upgrade request (RFC 7617).
//!
//! OCPP security profiles 1 and 2 send the charge point id as the user-id and the
//! charge point's password as the password. The password is kept as bytes: OCPP 1.6
//! stations send their `AuthorizationKey` as is, which need not be UTF-8.

use std::fmt;

use base64::Engine;

/// Longest `Authorization` value parsed, in bytes: a 40-character password and a long id
/// fit many times over, and nothing a client sends makes the decoder allocate more.
pub const MAX_AUTHORIZATION_LENGTH: usize = 1024;

/// The credentials of a Basic `Authorization` header.
#[derive(Clone, PartialEq, Eq)]
pub struct BasicCredentials {
    /// The user-id: for OCPP, the charge point id.
    pub username: String,
    /// The password, exactly as sent.
    pub password: Vec<u8>,
}

// Never shows the password, so that a debug log of a request cannot leak it.
impl fmt::Debug for BasicCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BasicCredentials")
            .field("username", &self.username)
            .field("password", &format_args!("<{} bytes>", self.password.len()))
            .finish()
    }
}

/// Why an `Authorization` header is not usable Basic credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BasicError {
    /// Longer than [`MAX_AUTHORIZATION_LENGTH`].
    #[error("authorization header too long")]
    TooLong,
    /// Another scheme (Bearer, Digest, ...).
    #[error("authorization scheme is not Basic")]
    NotBasic,
    /// The credentials are not valid base64.
    #[error("basic credentials are not valid base64")]
    NotBase64,
    /// The decoded credentials have no `:` between user-id and password.
    #[error("basic credentials have no ':' separator")]
    NoSeparator,
    /// The user-id is not UTF-8.
    #[error("basic user-id is not UTF-8")]
    UsernameNotUtf8,
}

impl BasicCredentials {
    /// Parses an `Authorization` header value: `Basic` (any case), one or more spaces,
    /// then base64 of `user-id:password`. The user-id ends at the first `:` (RFC 7617
    /// forbids it in a user-id); the password may contain more.
    pub fn parse(value: &[u8]) -> Result<BasicCredentials, BasicError> {
        if value.len() > MAX_AUTHORIZATION_LENGTH {
            return Err(BasicError::TooLong);
        }
        let value = trim(value);
        let scheme_end = value
            .iter()
            .position(|b| *b == b' ' || *b == b'\t')
            .ok_or(BasicError::NotBasic)?;
        if !value[..scheme_end].eq_ignore_ascii_case(b"basic") {
            return Err(BasicError::NotBasic);
        }
        let token = trim(&value[scheme_end..]);
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(token)
            .map_err(|_| BasicError::NotBase64)?;
        let colon = decoded
            .iter()
            .position(|b| *b == b':')
            .ok_or(BasicError::NoSeparator)?;
        let username = std::str::from_utf8(&decoded[..colon])
            .map_err(|_| BasicError::UsernameNotUtf8)?
            .to_owned();
        Ok(BasicCredentials {
            username,
            password: decoded[colon + 1..].to_vec(),
        })
    }

    /// The header value that carries these credentials (what a client sends).
    pub fn to_header_value(&self) -> String {
        let mut plain = self.username.as_bytes().to_vec();
        plain.push(b':');
        plain.extend_from_slice(&self.password);
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(plain)
        )
    }
}

fn trim(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|b| *b != b' ' && *b != b'\t')
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| *b != b' ' && *b != b'\t')
        .map_or(start, |end| end + 1);
    &bytes[start..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_rfc_7617_example() {
        let parsed = BasicCredentials::parse(b"Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==").unwrap();
        assert_eq!(parsed.username, "Aladdin");
        assert_eq!(parsed.password, b"open sesame");
    }

    #[test]
    fn scheme_is_case_insensitive_and_spaces_are_tolerated() {
        let parsed = BasicCredentials::parse(b"  bAsIc \t QWxhZGRpbjpvcGVuIHNlc2FtZQ==  ").unwrap();
        assert_eq!(parsed.username, "Aladdin");
    }

    #[test]
    fn the_password_may_contain_colons_and_any_bytes() {
        let credentials = BasicCredentials {
            username: "CP-1".into(),
            password: vec![b':', 0, 0xff, b'x', b':'],
        };
        let header = credentials.to_header_value();
        assert_eq!(
            BasicCredentials::parse(header.as_bytes()).unwrap(),
            credentials
        );
    }

    #[test]
    fn refuses_what_is_not_basic_credentials() {
        assert_eq!(
            BasicCredentials::parse(b"Bearer abc"),
            Err(BasicError::NotBasic)
        );
        assert_eq!(BasicCredentials::parse(b"Basic"), Err(BasicError::NotBasic));
        assert_eq!(
            BasicCredentials::parse(b"Basicx Zm9vOmJhcg=="),
            Err(BasicError::NotBasic)
        );
        assert_eq!(
            BasicCredentials::parse(b"Basic !!!"),
            Err(BasicError::NotBase64)
        );
        // "foobar": no separator.
        assert_eq!(
            BasicCredentials::parse(b"Basic Zm9vYmFy"),
            Err(BasicError::NoSeparator)
        );
        // 0xff 0x3a ("\xff:"): a user-id that is not UTF-8.
        assert_eq!(
            BasicCredentials::parse(b"Basic /zo="),
            Err(BasicError::UsernameNotUtf8)
        );
        let long = format!("Basic {}", "A".repeat(MAX_AUTHORIZATION_LENGTH));
        assert_eq!(
            BasicCredentials::parse(long.as_bytes()),
            Err(BasicError::TooLong)
        );
    }

    #[test]
    fn debug_output_never_shows_the_password() {
        let credentials = BasicCredentials {
            username: "CP-1".into(),
            password: b"SUPERSECRET-PASSWORD".to_vec(),
        };
        let shown = format!("{credentials:?}");
        assert!(!shown.contains("SUPERSECRET"), "{shown}");
        assert!(shown.contains("<20 bytes>"), "{shown}");
    }
}
