//! A load run: ramp charge points up, measure for a while, optionally drop them all at
//! once, and summarise.
//!
//! Timeline: charge points start at the ramp rate; the measurement window opens
//! `warmup` after every charge point has booted (or `boot_grace`, by default
//! [`BOOT_GRACE`], after the last one started, if some never boot) and lasts `duration`. Throughput, latency and error
//! ratio are over that window; connection and error counts are over the whole run.

use std::{collections::BTreeMap, io::Write, sync::Arc, time::Duration};

use serde::Serialize;
use tokio::{sync::watch, task::JoinSet, time::Instant};

use crate::{
    behaviour::{Rate, Scenario},
    charge_point::{self, ChargePoint, Control, Profile},
    connect::Connector,
    stats::{Counters, Percentiles, Stats},
    version::VersionMix,
};

/// How long after the last start the window opens anyway when not every charge point boots.
pub const BOOT_GRACE: Duration = Duration::from_secs(30);
/// How often the run looks at its counters (for boot and recovery times).
const POLL: Duration = Duration::from_millis(20);
/// How long charge points get to close when the run ends.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// What a load run does.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Number of charge points.
    pub charge_points: usize,
    /// Charge point ids are this prefix and a zero-padded number.
    pub id_prefix: String,
    /// The number of the first charge point (to run several simulators side by side).
    pub first_number: usize,
    /// Versions and their shares.
    pub mix: VersionMix,
    /// New charge points per second; 0 starts them all at once.
    pub ramp_rate: f64,
    /// Measured time.
    pub duration: Duration,
    /// Time between every charge point booted and the window opening.
    pub warmup: Duration,
    /// Drop every connection this long after the window opens.
    pub storm_after: Option<Duration>,
    /// How long after the last start the window opens anyway when not every charge point
    /// boots ([`BOOT_GRACE`] from the command line).
    pub boot_grace: Duration,
    /// Print a progress line this often (to the progress writer).
    pub progress_every: Option<Duration>,
    /// A local process whose CPU time over the window is reported (the server).
    pub server_pid: Option<u32>,
    /// What each charge point does.
    pub profile: Profile,
}

/// The result of a load run. Times are in seconds, latencies in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Where the charge points connected.
    pub target: String,
    /// How many were simulated.
    pub charge_points: usize,
    /// The version mix.
    pub versions: String,
    /// The scenario.
    pub scenario: String,
    /// Messages per second per charge point.
    pub rate_per_charge_point: String,
    /// Seconds from the start until every charge point had booted; none if some never did.
    pub all_booted_after_s: Option<f64>,
    /// Length of the measurement window.
    pub window_s: f64,
    /// Counts over the window.
    pub window: WindowCounts,
    /// CALL→answer latency over the window.
    pub latency_ms: Percentiles,
    /// Counts over the whole run.
    pub run: RunCounts,
    /// Errors over the whole run, by kind.
    pub errors: BTreeMap<String, u64>,
    /// The reconnect storm, when one was ordered.
    pub storm: Option<StormSummary>,
    /// CPU spent over the measurement window.
    pub cpu: WindowCpu,
}

/// CPU time over the measurement window, as a share of one core and per answered CALL.
/// A simulator near a whole core was the bottleneck of its run, not the server.
#[derive(Debug, Clone, Default, Serialize)]
pub struct WindowCpu {
    /// This simulator's CPU seconds per second (1.0 = one core busy).
    pub simulator_share: Option<f64>,
    /// This simulator's CPU per answered CALL, in microseconds.
    pub simulator_us_per_call: Option<f64>,
    /// The `--server-pid` process's CPU seconds per second.
    pub server_share: Option<f64>,
    /// The `--server-pid` process's CPU per answered CALL, in microseconds.
    pub server_us_per_call: Option<f64>,
}

/// CPU readings when the window opened.
#[derive(Clone, Copy)]
struct CpuMark {
    simulator: Option<Duration>,
    server: Option<Duration>,
}

impl CpuMark {
    fn now(server_pid: Option<u32>) -> CpuMark {
        CpuMark {
            simulator: crate::cpu::own_cpu(),
            server: server_pid.and_then(crate::cpu::process_cpu),
        }
    }

    /// The window's CPU from `self` (its opening) to `end`, over `window_s` seconds in
    /// which `answered` CALLs were answered.
    fn until(self, end: CpuMark, window_s: f64, answered: u64) -> WindowCpu {
        let share = |from: Option<Duration>, to: Option<Duration>| {
            let used = to?.checked_sub(from?)?.as_secs_f64();
            (window_s > 0.0).then(|| used / window_s)
        };
        let per_call = |from: Option<Duration>, to: Option<Duration>| {
            let used = to?.checked_sub(from?)?.as_secs_f64();
            (answered > 0).then(|| used * 1e6 / answered as f64)
        };
        WindowCpu {
            simulator_share: share(self.simulator, end.simulator),
            simulator_us_per_call: per_call(self.simulator, end.simulator),
            server_share: share(self.server, end.server),
            server_us_per_call: per_call(self.server, end.server),
        }
    }
}

/// Counts within the measurement window.
#[derive(Debug, Clone, Serialize)]
pub struct WindowCounts {
    /// CALLs sent.
    pub calls_sent: u64,
    /// CALLRESULTs received.
    pub calls_answered: u64,
    /// CALLERRORs received.
    pub call_errors: u64,
    /// CALLs not answered in time.
    pub call_timeouts: u64,
    /// Answered CALLs per second.
    pub answered_per_s: f64,
    /// (CALLERRORs + timeouts) / CALLs sent; 0 when nothing was sent.
    pub error_ratio: f64,
    /// Errors of any kind.
    pub errors: u64,
}

/// Counts over the whole run.
#[derive(Debug, Clone, Serialize)]
pub struct RunCounts {
    /// Connection attempts.
    pub connect_attempts: u64,
    /// Successful WebSocket handshakes.
    pub connects: u64,
    /// Connections lost without the simulator asking.
    pub disconnects: u64,
    /// CALLs from the central system answered.
    pub server_calls: u64,
    /// Seconds from the first start to the end.
    pub elapsed_s: f64,
}

/// What a reconnect storm showed.
#[derive(Debug, Clone, Serialize)]
pub struct StormSummary {
    /// Connections dropped at once.
    pub dropped: u64,
    /// Seconds until every charge point had booted again; none if not within the window.
    pub recovered_after_s: Option<f64>,
    /// Errors between the drop and the recovery, by kind.
    pub errors: BTreeMap<String, u64>,
}

/// Runs a load to the end and summarises it. Progress lines go to `progress`.
pub async fn run(connector: Connector, options: LoadOptions, mut progress: impl Write) -> Summary {
    let started = Instant::now();
    let stats = Arc::new(Stats::default());
    let (control_tx, control) = watch::channel(Control::default());
    let connector = Arc::new(connector);
    let profile = Arc::new(options.profile.clone());
    let total = options.charge_points as u64;

    let spawner = {
        let (stats, connector, options) = (stats.clone(), connector.clone(), options.clone());
        tokio::spawn(async move {
            let mut tasks = JoinSet::new();
            let ramp_started = Instant::now();
            for index in 0..options.charge_points {
                if options.ramp_rate > 0.0 {
                    let due =
                        ramp_started + Duration::from_secs_f64(index as f64 / options.ramp_rate);
                    tokio::time::sleep_until(due).await;
                }
                if control.borrow().stop {
                    break;
                }
                // Numbered from `first_number` (at least 1); the version follows the number, so
                // several simulators with consecutive ranges deal one mix between them.
                let number = options.first_number.max(1) + index;
                let charge_point = ChargePoint {
                    index,
                    number,
                    id: format!("{}{:06}", options.id_prefix, number),
                    version: options.mix.version_of(number - 1),
                };
                tasks.spawn(charge_point::run(
                    charge_point,
                    connector.clone(),
                    profile.clone(),
                    stats.clone(),
                    control.clone(),
                ));
            }
            tasks
        })
    };
    let mut spawner = Some(spawner);
    let mut tasks = None;

    let mut all_booted_at: Option<Instant> = None;
    let mut last_started_at: Option<Instant> = None;
    let mut window_opened: Option<(Instant, Counters)> = None;
    let mut cpu_opened: Option<CpuMark> = None;
    let mut storm: Option<Storm> = None;
    let mut storm_summary: Option<StormSummary> = None;
    let mut progress_due = options.progress_every.map(|every| started + every);
    let mut last_progress = (started, stats.counters());
    let (closed_at, closed_counters, cpu_closed) = loop {
        tokio::time::sleep(POLL).await;
        let now = Instant::now();
        if spawner.as_ref().is_some_and(|handle| handle.is_finished()) {
            if let Some(handle) = spawner.take() {
                tasks = handle.await.ok();
                last_started_at = Some(now);
            }
        }
        let counters = stats.counters();
        if all_booted_at.is_none() && counters.booted >= total {
            all_booted_at = Some(now);
        }
        if window_opened.is_none() {
            if let Some(last_start) = last_started_at {
                let ready = all_booted_at.map_or(last_start + options.boot_grace, |booted| {
                    booted.max(last_start)
                });
                if now >= ready + options.warmup {
                    stats.open_window();
                    window_opened = Some((now, stats.counters()));
                    cpu_opened = Some(CpuMark::now(options.server_pid));
                }
            }
        }
        if let Some((opened, _)) = window_opened {
            if let (None, Some(after)) = (&storm, options.storm_after) {
                if storm_summary.is_none() && now >= opened + after {
                    let dropped = counters.connected;
                    storm = Some(Storm {
                        at: now,
                        dropped,
                        errors_before: stats.errors(),
                        dipped: false,
                    });
                    control_tx.send_modify(|control| control.storm += 1);
                }
            }
            if let Some(current) = &mut storm {
                // Recovered once every charge point has booted again after the drop.
                current.dipped |= counters.booted < total;
                if current.dipped && counters.booted >= total {
                    storm_summary = Some(current.summary(Some(now), &stats));
                    storm = None;
                }
            }
            if now >= opened + options.duration {
                break (now, stats.counters(), CpuMark::now(options.server_pid));
            }
        }
        if let Some(due) = progress_due.filter(|due| now >= *due) {
            let every = options.progress_every.unwrap_or(Duration::from_secs(1));
            progress_due = Some(due + every);
            let interval = Percentiles::of(&stats.take_interval());
            let seconds = (now - last_progress.0).as_secs_f64();
            let delta = counters.since(&last_progress.1);
            let phase = if window_opened.is_some() {
                "measuring"
            } else {
                "ramping"
            };
            let _ = writeln!(
                progress,
                "[{:>6.1}s {phase}] connected {}/{} booted {} | sent {:.0}/s answered {:.0}/s | p50 {:.2} ms p99 {:.2} ms | errors {} (+{})",
                (now - started).as_secs_f64(),
                counters.connected,
                total,
                counters.booted,
                delta.calls_sent as f64 / seconds,
                delta.calls_answered as f64 / seconds,
                interval.p50,
                interval.p99,
                counters.errors,
                delta.errors,
            );
            last_progress = (now, counters);
        }
    };

    if let Some(unfinished) = storm.take() {
        storm_summary = Some(unfinished.summary(None, &stats));
    }
    control_tx.send_modify(|control| control.stop = true);
    if let Some(handle) = spawner.take() {
        tasks = handle.await.ok();
    }
    if let Some(mut tasks) = tasks {
        let drained = tokio::time::timeout(STOP_GRACE, async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tasks.abort_all();
        }
    }

    let (opened_at, opened_counters) = window_opened.unwrap_or((started, Counters::default()));
    let window = closed_counters.since(&opened_counters);
    let window_s = (closed_at - opened_at).as_secs_f64();
    let failed = window.call_errors + window.call_timeouts;
    let final_counters = stats.counters();
    Summary {
        target: format!("{}/{{id}}", connector.base()),
        charge_points: options.charge_points,
        versions: options.mix.to_string(),
        scenario: options.profile.scenario.to_string(),
        rate_per_charge_point: match (options.profile.scenario, options.profile.rate) {
            (Scenario::Idle, _) => "none (idle)".into(),
            (_, Rate::Max) => "max".into(),
            (_, Rate::PerSecond(rate)) => format!("{rate:.4}/s"),
        },
        all_booted_after_s: all_booted_at.map(|at| (at - started).as_secs_f64()),
        window_s,
        window: WindowCounts {
            calls_sent: window.calls_sent,
            calls_answered: window.calls_answered,
            call_errors: window.call_errors,
            call_timeouts: window.call_timeouts,
            answered_per_s: if window_s > 0.0 {
                window.calls_answered as f64 / window_s
            } else {
                0.0
            },
            error_ratio: if window.calls_sent > 0 {
                failed as f64 / window.calls_sent as f64
            } else {
                0.0
            },
            errors: window.errors,
        },
        latency_ms: Percentiles::of(&stats.window()),
        run: RunCounts {
            connect_attempts: final_counters.connect_attempts,
            connects: final_counters.connects,
            disconnects: final_counters.disconnects,
            server_calls: final_counters.server_calls,
            elapsed_s: started.elapsed().as_secs_f64(),
        },
        errors: stats.errors(),
        storm: storm_summary,
        cpu: cpu_opened.map_or_else(WindowCpu::default, |opened| {
            opened.until(cpu_closed, window_s, window.calls_answered)
        }),
    }
}

/// A storm in progress.
struct Storm {
    at: Instant,
    dropped: u64,
    errors_before: BTreeMap<String, u64>,
    /// Whether the booted count has gone down since the drop was ordered.
    dipped: bool,
}

impl Storm {
    fn summary(&self, recovered_at: Option<Instant>, stats: &Stats) -> StormSummary {
        StormSummary {
            dropped: self.dropped,
            recovered_after_s: recovered_at.map(|at| (at - self.at).as_secs_f64()),
            errors: difference(&stats.errors(), &self.errors_before),
        }
    }
}

fn difference(
    now: &BTreeMap<String, u64>,
    before: &BTreeMap<String, u64>,
) -> BTreeMap<String, u64> {
    now.iter()
        .filter_map(|(kind, count)| {
            let delta = count - before.get(kind).copied().unwrap_or(0);
            (delta > 0).then(|| (kind.clone(), delta))
        })
        .collect()
}

impl Summary {
    /// Whether the run was clean: every charge point booted and no error of any kind was
    /// counted (a reconnect storm's own drops are not errors).
    pub fn is_clean(&self) -> bool {
        self.all_booted_after_s.is_some() && self.errors.is_empty()
    }

    /// The summary as text for people.
    pub fn to_text(&self) -> String {
        let mut text = String::new();
        let mut line = |l: String| {
            text.push_str(&l);
            text.push('\n');
        };
        line(format!(
            "{} charge points ({}) -> {}, scenario {}, rate {} each",
            self.charge_points,
            self.versions,
            self.target,
            self.scenario,
            self.rate_per_charge_point
        ));
        line(match self.all_booted_after_s {
            Some(seconds) => format!("all booted after {seconds:.2} s"),
            None => "not every charge point booted".into(),
        });
        let w = &self.window;
        line(format!(
            "window {:.1} s: sent {}, answered {} ({:.0}/s), call errors {}, timeouts {}, error ratio {:.4}%",
            self.window_s, w.calls_sent, w.calls_answered, w.answered_per_s, w.call_errors, w.call_timeouts,
            w.error_ratio * 100.0
        ));
        let l = &self.latency_ms;
        line(format!(
            "latency ms: p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}  mean {:.3}  (n={})",
            l.p50, l.p90, l.p99, l.p999, l.max, l.mean, l.count
        ));
        let cpu = &self.cpu;
        let share =
            |v: Option<f64>| v.map_or("n/a".to_owned(), |v| format!("{:.0}% of a core", v * 100.0));
        let per_call = |v: Option<f64>| v.map_or("n/a".to_owned(), |v| format!("{v:.1} µs"));
        line(format!(
            "cpu over the window: simulator {} ({} per answered CALL), server {} ({} per answered CALL)",
            share(cpu.simulator_share),
            per_call(cpu.simulator_us_per_call),
            share(cpu.server_share),
            per_call(cpu.server_us_per_call),
        ));
        let r = &self.run;
        line(format!(
            "run {:.1} s: connect attempts {}, connects {}, disconnects {}, central system calls {}",
            r.elapsed_s, r.connect_attempts, r.connects, r.disconnects, r.server_calls
        ));
        if let Some(storm) = &self.storm {
            line(format!(
                "storm: dropped {}, {}",
                storm.dropped,
                match storm.recovered_after_s {
                    Some(seconds) => format!("all booted again after {seconds:.2} s"),
                    None => "not recovered within the window".into(),
                }
            ));
            for (kind, count) in &storm.errors {
                line(format!("  storm error {kind}: {count}"));
            }
        }
        if self.errors.is_empty() {
            line("errors: none".into());
        } else {
            for (kind, count) in &self.errors {
                line(format!("error {kind}: {count}"));
            }
        }
        text
    }
}
