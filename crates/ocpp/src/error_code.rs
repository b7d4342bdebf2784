//! RPC error codes of OCPP-J, with each version's own spelling.
//!
//! OCPP 1.6 spells two codes differently from 2.x (`FormationViolation`,
//! `OccurenceConstraintViolation`) and lacks `RpcFrameworkError` and
//! `MessageTypeNotSupported`; [`ErrorCode::as_str`] picks the right word per version.

use crate::OcppVersion;

/// An OCPP-J CALLERROR / CALLRESULTERROR code, independent of version spelling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// The requested action is not known by the receiver.
    NotImplemented,
    /// The requested action is recognised but not supported by the receiver.
    NotSupported,
    /// An internal error occurred and the receiver could not process the action.
    InternalError,
    /// The payload for the action is incomplete.
    ProtocolError,
    /// A security issue prevented the receiver from completing the action.
    SecurityError,
    /// The payload is syntactically incorrect or does not conform to the action's PDU
    /// structure (1.6 `FormationViolation`, 2.x `FormatViolation`).
    FormatViolation,
    /// A field contains an invalid value.
    PropertyConstraintViolation,
    /// A field violates occurrence constraints (1.6 `OccurenceConstraintViolation`).
    OccurrenceConstraintViolation,
    /// A field violates data type constraints.
    TypeConstraintViolation,
    /// Any other error.
    GenericError,
    /// 2.x: the frame is not a valid RPC request (1.6 has no such code: `ProtocolError`).
    RpcFrameworkError,
    /// 2.x: the message type number is not supported (1.6: `ProtocolError`).
    MessageTypeNotSupported,
}

impl ErrorCode {
    /// Every code.
    pub const ALL: [ErrorCode; 12] = [
        ErrorCode::NotImplemented,
        ErrorCode::NotSupported,
        ErrorCode::InternalError,
        ErrorCode::ProtocolError,
        ErrorCode::SecurityError,
        ErrorCode::FormatViolation,
        ErrorCode::PropertyConstraintViolation,
        ErrorCode::OccurrenceConstraintViolation,
        ErrorCode::TypeConstraintViolation,
        ErrorCode::GenericError,
        ErrorCode::RpcFrameworkError,
        ErrorCode::MessageTypeNotSupported,
    ];

    /// The code as written on the wire for `version`.
    pub fn as_str(self, version: OcppVersion) -> &'static str {
        let v16 = !version.is_2x();
        match self {
            ErrorCode::NotImplemented => "NotImplemented",
            ErrorCode::NotSupported => "NotSupported",
            ErrorCode::InternalError => "InternalError",
            ErrorCode::ProtocolError => "ProtocolError",
            ErrorCode::SecurityError => "SecurityError",
            ErrorCode::FormatViolation if v16 => "FormationViolation",
            ErrorCode::FormatViolation => "FormatViolation",
            ErrorCode::PropertyConstraintViolation => "PropertyConstraintViolation",
            ErrorCode::OccurrenceConstraintViolation if v16 => "OccurenceConstraintViolation",
            ErrorCode::OccurrenceConstraintViolation => "OccurrenceConstraintViolation",
            ErrorCode::TypeConstraintViolation => "TypeConstraintViolation",
            ErrorCode::GenericError => "GenericError",
            ErrorCode::RpcFrameworkError if v16 => "ProtocolError",
            ErrorCode::RpcFrameworkError => "RpcFrameworkError",
            ErrorCode::MessageTypeNotSupported if v16 => "ProtocolError",
            ErrorCode::MessageTypeNotSupported => "MessageTypeNotSupported",
        }
    }

    /// Reads a code as a peer wrote it, accepting either version's spelling.
    pub fn parse(code: &str) -> Option<ErrorCode> {
        Some(match code {
            "NotImplemented" => ErrorCode::NotImplemented,
            "NotSupported" => ErrorCode::NotSupported,
            "InternalError" => ErrorCode::InternalError,
            "ProtocolError" => ErrorCode::ProtocolError,
            "SecurityError" => ErrorCode::SecurityError,
            "FormationViolation" | "FormatViolation" => ErrorCode::FormatViolation,
            "PropertyConstraintViolation" => ErrorCode::PropertyConstraintViolation,
            "OccurenceConstraintViolation" | "OccurrenceConstraintViolation" => {
                ErrorCode::OccurrenceConstraintViolation
            }
            "TypeConstraintViolation" => ErrorCode::TypeConstraintViolation,
            "GenericError" => ErrorCode::GenericError,
            "RpcFrameworkError" => ErrorCode::RpcFrameworkError,
            "MessageTypeNotSupported" => ErrorCode::MessageTypeNotSupported,
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_lists_each_code_once_and_each_reads_back() {
        for (i, code) in ErrorCode::ALL.iter().enumerate() {
            assert!(!ErrorCode::ALL[..i].contains(code), "{code:?} listed twice");
            assert_eq!(
                ErrorCode::parse(code.as_str(OcppVersion::V201)),
                Some(*code)
            );
        }
    }

    #[test]
    fn v16_spellings_differ_from_2x() {
        use OcppVersion::*;
        assert_eq!(ErrorCode::FormatViolation.as_str(V16), "FormationViolation");
        assert_eq!(ErrorCode::FormatViolation.as_str(V201), "FormatViolation");
        assert_eq!(
            ErrorCode::OccurrenceConstraintViolation.as_str(V16),
            "OccurenceConstraintViolation"
        );
        assert_eq!(
            ErrorCode::OccurrenceConstraintViolation.as_str(V21),
            "OccurrenceConstraintViolation"
        );
        assert_eq!(ErrorCode::RpcFrameworkError.as_str(V16), "ProtocolError");
        assert_eq!(
            ErrorCode::RpcFrameworkError.as_str(V201),
            "RpcFrameworkError"
        );
        assert_eq!(
            ErrorCode::MessageTypeNotSupported.as_str(V16),
            "ProtocolError"
        );
        assert_eq!(
            ErrorCode::MessageTypeNotSupported.as_str(V21),
            "MessageTypeNotSupported"
        );
    }

    #[test]
    fn parse_accepts_both_spellings() {
        assert_eq!(
            ErrorCode::parse("FormationViolation"),
            Some(ErrorCode::FormatViolation)
        );
        assert_eq!(
            ErrorCode::parse("OccurenceConstraintViolation"),
            Some(ErrorCode::OccurrenceConstraintViolation)
        );
        assert_eq!(ErrorCode::parse("Bogus"), None);
    }
}
