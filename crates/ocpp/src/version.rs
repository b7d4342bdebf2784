//! OCPP versions and the WebSocket subprotocol names that select them.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};

/// An OCPP-J protocol version, chosen per connection by WebSocket subprotocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum OcppVersion {
    /// OCPP 1.6 (with the 1.6 security extension messages), subprotocol `ocpp1.6`.
    #[serde(rename = "ocpp1.6")]
    V16,
    /// OCPP 2.0.1, subprotocol `ocpp2.0.1`.
    #[serde(rename = "ocpp2.0.1")]
    V201,
    /// OCPP 2.1, subprotocol `ocpp2.1`.
    #[serde(rename = "ocpp2.1")]
    V21,
}

impl OcppVersion {
    /// Every supported version, newest first.
    pub const ALL: [OcppVersion; 3] = [OcppVersion::V21, OcppVersion::V201, OcppVersion::V16];

    /// The WebSocket subprotocol token, which is also the label used in events and metrics.
    pub fn subprotocol(self) -> &'static str {
        match self {
            OcppVersion::V16 => "ocpp1.6",
            OcppVersion::V201 => "ocpp2.0.1",
            OcppVersion::V21 => "ocpp2.1",
        }
    }

    /// Whether this version is in the 2.x family (error codes, message types 5 and 6).
    pub fn is_2x(self) -> bool {
        !matches!(self, OcppVersion::V16)
    }

    /// The version's folder name among the embedded schemas.
    #[cfg(feature = "schemas")]
    pub(crate) fn schema_folder(self) -> &'static str {
        match self {
            OcppVersion::V16 => "v16",
            OcppVersion::V201 => "v201",
            OcppVersion::V21 => "v21",
        }
    }
}

impl fmt::Display for OcppVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.subprotocol())
    }
}

/// A subprotocol token that names no supported OCPP version.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown OCPP subprotocol {0:?} (expected one of ocpp1.6, ocpp2.0.1, ocpp2.1)")]
pub struct UnknownSubprotocol(pub String);

impl FromStr for OcppVersion {
    type Err = UnknownSubprotocol;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        OcppVersion::ALL
            .into_iter()
            .find(|v| v.subprotocol().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| UnknownSubprotocol(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subprotocol_round_trips() {
        for v in OcppVersion::ALL {
            assert_eq!(v.subprotocol().parse::<OcppVersion>(), Ok(v));
        }
        assert_eq!("OCPP1.6".parse::<OcppVersion>(), Ok(OcppVersion::V16));
        assert!("ocpp2.0".parse::<OcppVersion>().is_err());
    }

    #[test]
    fn serde_uses_subprotocol_names() {
        assert_eq!(
            serde_json::to_string(&OcppVersion::V201).unwrap(),
            "\"ocpp2.0.1\""
        );
    }
}
