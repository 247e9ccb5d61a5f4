//! Pieces of the `bench` binary that are more than glue: the transport
//! baseline, a minimal protocol-speaking load worker for the scale and
//! reconnect figures, percentile and memory helpers.
//!
//! The load worker speaks the real contract (Hello, Welcome, Assignment,
//! TaskResult, Credit) and reconnects with the worker's own
//! [`private_worker::backoff::Backoff`], but runs no executor and keeps no
//! audit log: it exists to hold thousands of connections from one process.

pub mod baseline;
pub mod load_worker;

use std::time::Duration;

/// p50, p99 and p99.9 of `samples` (milliseconds), sorting them.
pub fn percentiles(samples: &mut [f64]) -> (f64, f64, f64) {
    if samples.is_empty() {
        return (0.0, 0.0, 0.0);
    }
    samples.sort_by(f64::total_cmp);
    let at = |q: f64| {
        let index = ((samples.len() as f64 - 1.0) * q).round() as usize;
        samples[index.min(samples.len() - 1)]
    };
    (at(0.50), at(0.99), at(0.999))
}

/// A duration in milliseconds, as f64.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Resident set size and its peak of process `pid`, in KiB, from
/// /proc/<pid>/status (`VmRSS`, `VmHWM`).
pub fn rss_kib(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// CPU time (user + system) process `pid` has used so far, from
/// /proc/<pid>/stat, assuming the usual 100 clock ticks per second.
pub fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start at ") ".
    let rest = stat.rsplit_once(") ")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_of_this_process_is_readable_and_grows() {
        let before = cpu_time(std::process::id()).unwrap();
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while start.elapsed() < Duration::from_millis(100) {
            x = x.wrapping_add(std::hint::black_box(1));
        }
        assert!(x > 0);
        assert!(cpu_time(std::process::id()).unwrap() > before);
    }

    #[test]
    fn percentiles_pick_ranked_samples() {
        let mut samples: Vec<f64> = (1..=1000).map(f64::from).collect();
        samples.reverse();
        let (p50, p99, p999) = percentiles(&mut samples);
        assert_eq!((p50, p99, p999), (501.0, 990.0, 999.0));
    }
}
