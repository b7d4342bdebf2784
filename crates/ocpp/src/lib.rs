//! The OCPP-J protocol, without I/O: versions, frames, error codes, the action
//! catalogue, and validation against the official OCA JSON schemas.

#![warn(missing_docs)]

pub mod catalogue;
mod error_code;
pub mod frame;
pub mod validate;
mod version;

pub use error_code::ErrorCode;
pub use frame::{Frame, FrameError, FrameErrorKind, MessageType, RpcError};
pub use validate::{Leniency, PayloadKind, SchemaSet, Validated, Violation, ViolationDetail};
pub use version::{OcppVersion, UnknownSubprotocol};
