//! The OCPP-J protocol, without I/O: versions, frames, error codes, the action
//! catalogue, and validation against the official OCA JSON schemas.
//!
//! Validation (`validate`, `SchemaSet`) needs the `schemas` feature, on by default.
//! Without it the crate neither compiles jsonschema nor embeds the schemas, for users that
//! only encode and decode frames.

pub mod catalogue;
mod error_code;
pub mod frame;
#[cfg(feature = "schemas")]
pub mod validate;
mod version;

pub use error_code::ErrorCode;
pub use frame::{Frame, FrameError, FrameErrorKind, MessageType, RpcError};
#[cfg(feature = "schemas")]
pub use validate::{Leniency, PayloadKind, SchemaSet, Validated, Violation, ViolationDetail};
pub use version::{OcppVersion, UnknownSubprotocol};
