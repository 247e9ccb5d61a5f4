//! Reconnect delays: exponential, capped, jittered.
//!
//! Jitter spreads a fleet's reconnects after an orchestrator restart so
//! that they do not arrive as one storm. Each delay is drawn from the upper
//! half of the current exponential step ("equal jitter"), so a worker never
//! hammers a server that just refused it. The caller resets the sequence
//! after a healthy session. This module does not sleep; the caller does,
//! inside a `select!` with its shutdown signal.

use std::time::Duration;

use rand::Rng;

/// A sequence of reconnect delays.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    failures: u32,
}

impl Backoff {
    /// Delays start around `initial` and never exceed `max`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Backoff {
            initial,
            max: max.max(initial),
            failures: 0,
        }
    }

    /// The next delay; each call doubles the step up to the cap.
    pub fn next_delay(&mut self) -> Duration {
        let step = self
            .initial
            .saturating_mul(1u32 << self.failures.min(20))
            .min(self.max);
        self.failures = self.failures.saturating_add(1);
        let half = step / 2;
        half + rand::rng().random_range(Duration::ZERO..=half)
    }

    /// Starts again from `initial`, after a healthy session.
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_stay_within_their_step_and_cap_then_reset() {
        let initial = Duration::from_millis(100);
        let max = Duration::from_secs(2);
        let mut b = Backoff::new(initial, max);
        for n in 0..12u32 {
            let step = (initial * 2u32.pow(n.min(10))).min(max);
            let d = b.next_delay();
            assert!(
                d >= step / 2 && d <= step,
                "attempt {n}: {d:?} not in [{:?}, {step:?}]",
                step / 2
            );
        }
        b.reset();
        assert!(b.next_delay() <= initial);
    }

    #[test]
    fn jitter_spreads_a_fleet_of_workers() {
        let delays: std::collections::BTreeSet<_> = (0..50)
            .map(|_| Backoff::new(Duration::from_secs(1), Duration::from_secs(30)).next_delay())
            .collect();
        assert!(delays.len() > 40, "only {} distinct delays", delays.len());
    }
}
