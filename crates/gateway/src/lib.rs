//! charge-point-gateway: holds the WebSocket connections of EV charge points (OCPP-J 1.6,
//! 2.0.1, 2.1), turns what they say into event records, answers them (locally or for a
//! backend), and delivers the backend's commands to the right charge point.
//!
//! The binary is a thin shell over [`Gateway`]: [`Gateway::bind`] then [`Gateway::run`].

pub mod admin;
pub mod auth;
pub mod backend;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod config_check;
pub mod event;
pub mod file_watch;
pub mod gateway;
pub mod handshake;
pub mod health;
pub mod http_server;
pub mod kafka;
pub mod labels;
pub mod listener;
pub mod metrics;
pub mod pipeline;
pub mod proxy_protocol;
pub mod registry;
pub mod responder;
pub mod security_events;
pub mod session;
pub mod sink;
pub mod telemetry;
pub mod tls;
pub mod token_bucket;
pub mod upgrade;
pub mod validation;

pub use config::Config;
pub use gateway::{Gateway, Probe, StartError};
