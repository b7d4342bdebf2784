//! Process and runtime metrics, read at scrape time from /proc and the Tokio runtime.

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{counter::ConstCounter, gauge::ConstGauge},
};

/// The families this collector writes (counters without `_total`).
pub const NAMES: [&str; 8] = [
    "ocppgw_process_open_fds",
    "ocppgw_process_max_fds",
    "ocppgw_process_resident_memory_bytes",
    "ocppgw_process_cpu_seconds",
    "ocppgw_runtime_workers",
    "ocppgw_runtime_alive_tasks",
    "ocppgw_runtime_global_queue_depth",
    "ocppgw_runtime_busy_seconds",
];

/// Reads process and Tokio runtime figures on every scrape.
#[derive(Debug, Default)]
pub struct ProcessCollector;

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: f64,
) -> Result<(), std::fmt::Error> {
    let metric = ConstGauge::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: f64,
) -> Result<(), std::fmt::Error> {
    let metric = ConstCounter::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

/// Open file descriptors of this process.
fn open_fds() -> Option<f64> {
    Some(std::fs::read_dir("/proc/self/fd").ok()?.count() as f64)
}

/// The soft open-file limit.
fn max_fds() -> Option<f64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

fn resident_bytes() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kib * 1024.0)
}

/// User plus system CPU seconds (clock ticks are 100 Hz on Linux).
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let after_name = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        if let Some(v) = open_fds() {
            gauge(
                &mut encoder,
                "ocppgw_process_open_fds",
                "Open file descriptors",
                v,
            )?;
        }
        if let Some(v) = max_fds() {
            gauge(
                &mut encoder,
                "ocppgw_process_max_fds",
                "The open file limit",
                v,
            )?;
        }
        if let Some(v) = resident_bytes() {
            gauge(
                &mut encoder,
                "ocppgw_process_resident_memory_bytes",
                "Resident set size",
                v,
            )?;
        }
        if let Some(v) = cpu_seconds() {
            counter(
                &mut encoder,
                "ocppgw_process_cpu_seconds",
                "User and system CPU time",
                v,
            )?;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let m = runtime.metrics();
            let busy: f64 = (0..m.num_workers())
                .map(|w| m.worker_total_busy_duration(w).as_secs_f64())
                .sum();
            gauge(
                &mut encoder,
                "ocppgw_runtime_workers",
                "Tokio worker threads",
                m.num_workers() as f64,
            )?;
            gauge(
                &mut encoder,
                "ocppgw_runtime_alive_tasks",
                "Tokio tasks alive",
                m.num_alive_tasks() as f64,
            )?;
            gauge(
                &mut encoder,
                "ocppgw_runtime_global_queue_depth",
                "Tasks waiting in the global queue",
                m.global_queue_depth() as f64,
            )?;
            counter(
                &mut encoder,
                "ocppgw_runtime_busy_seconds",
                "Time Tokio workers spent busy",
                busy,
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_readings_are_plausible() {
        assert!(open_fds().unwrap() >= 3.0);
        assert!(max_fds().unwrap() >= open_fds().unwrap());
        assert!(resident_bytes().unwrap() > 1_000_000.0);
        assert!(cpu_seconds().unwrap() >= 0.0);
    }
}
