//! An OCPP charge point simulator and load generator.
//!
//! Two uses: `load` simulates many charge points (OCPP 1.6, 2.0.1 and 2.1 in a chosen
//! mix) against a central system and measures it; `session` runs one charge point through
//! a scripted session and prints every frame, for trying a central system by hand. Both
//! answer the central system's commands the way a well-behaved charge point would.

pub mod answers;
pub mod behaviour;
pub mod charge_point;
pub mod cli;
pub mod connect;
pub mod cpu;
pub mod frames;
pub mod load;
pub mod payloads;
pub mod session;
pub mod stats;
pub mod version;

/// This process's open-file limit, from `/proc/self/limits` (Linux); `None` elsewhere.
pub fn open_file_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    limits
        .lines()
        .find(|line| line.starts_with("Max open files"))?
        .split_whitespace()
        .nth(3)?
        .parse()
        .ok()
}
