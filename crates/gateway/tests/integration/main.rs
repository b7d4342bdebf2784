//! The gateway's integration tests, one module per area, in one test binary: each binary
//! links the whole gateway (librdkafka included), so one binary instead of one per file
//! saves minutes of linking and gigabytes of disk. Tests that install a process-wide
//! tracing subscriber (debug_trace.rs, traces.rs) stay binaries of their own.
//!
//! Run one area with `cargo test -p charge-point-gateway --test integration kafka::`.

mod auth;
mod auth_properties;
mod cluster;
mod cluster_churn;
mod commands;
mod handshake;
mod handshake_properties;
mod hardening;
mod kafka;
mod lifecycle;
mod limits;
mod metrics;
mod process;
mod profile;
mod protocol_errors;
mod proxy;
mod proxy_properties;
mod tls;
