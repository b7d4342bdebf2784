//! What the gateway and a backend (a CSMS) exchange, whatever carries it: commands to
//! charge points with their outcomes ([`commands`]), and replies to the charge point
//! CALLs the backend answers ([`replies`]). The Kafka bus (`kafka/`) and the admin API
//! (`admin.rs`) are adapters over these types; nothing here knows either.

pub mod commands;
pub mod config;
pub mod replies;

pub use commands::{
    CommandError, CommandRejected, CommandReport, CommandRequest, Commander, Delivery, Forwarded,
    Location, Owners, RemoteOwner, MAX_TIMEOUT_SECONDS,
};
pub use replies::{Reply, ReplyRouter, ReplyWait};
