//! CPU time of a process, read from `/proc` (Linux), so that a load run can report the
//! CPU each side spent per answered CALL over exactly its measurement window.

use std::time::Duration;

/// Clock ticks per second of `/proc/PID/stat`'s times. Linux reports them in
/// `USER_HZ`, which is 100 on every architecture it supports.
const USER_HZ: f64 = 100.0;

/// The CPU time (user + system, every thread) `pid` has used so far; `None` when it
/// cannot be read (not Linux, the process is gone).
pub fn process_cpu(pid: u32) -> Option<Duration> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// This process's CPU time so far.
pub fn own_cpu() -> Option<Duration> {
    parse_stat(&std::fs::read_to_string("/proc/self/stat").ok()?)
}

/// `utime + stime` from a `/proc/PID/stat` line. The command name (field 2) may hold
/// spaces and parentheses, so fields are counted after its last `)`.
fn parse_stat(stat: &str) -> Option<Duration> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace();
    // After the name: state is field 3, utime 14 and stime 15.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(Duration::from_secs_f64((utime + stime) as f64 / USER_HZ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_read_after_the_command_name() {
        let stat = "4242 (a (b) c) R 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0 1 2 3";
        assert_eq!(parse_stat(stat), Some(Duration::from_secs(3)));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn this_process_has_used_some_cpu() {
        let mut spin = 0u64;
        let start = std::time::Instant::now();
        while start.elapsed() < Duration::from_millis(30) {
            spin = spin.wrapping_add(1);
        }
        assert!(spin > 0);
        assert!(own_cpu().is_some_and(|cpu| cpu > Duration::ZERO));
        assert!(process_cpu(std::process::id()).is_some());
    }
}
