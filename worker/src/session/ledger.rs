//! The session's bookkeeping, as plain data: which attempts this worker
//! holds, which results wait for an acknowledgement, how much credit is
//! free, when a refused result is sent again, and how a drain proceeds.
//!
//! A *slot* is held from an accepted assignment until the orchestrator
//! acknowledges its result, so the credit the worker grants (its free
//! slots) bounds both the work in flight and the results kept in memory,
//! whatever the orchestrator does. Refusals (over the credit, or while
//! draining) hold no slot; at most [`MAX_REFUSALS_HELD`] of them are kept
//! at once, so an orchestrator that ignores the credit cannot grow the
//! outbox without bound either.
//!
//! What it does not do: talk to the network, the journal or the runner.
//! The stream and the worker loop drive it; it is unit-tested alone with
//! paused time.

use std::collections::HashMap;
use std::time::Duration;

use private_worker_proto::v1 as pb;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::wire::AttemptKey;

/// Most refusals (results that hold no slot) kept at once.
pub const MAX_REFUSALS_HELD: usize = 64;
/// First delay before a result the orchestrator could not store is sent again.
pub const FIRST_RESEND_DELAY: Duration = Duration::from_secs(1);
/// Longest delay between re-sends of a refused result.
pub const MAX_RESEND_DELAY: Duration = Duration::from_secs(60);
/// How long to wait for the last acknowledgements (and for cancelled tasks
/// to write their records) once the drain grace is over.
pub const FINAL_WAIT: Duration = Duration::from_secs(5);

/// An attempt received and not yet finished.
#[derive(Debug)]
struct Held {
    cancel: CancellationToken,
    holds_slot: bool,
}

/// A finished attempt whose result the orchestrator has not acknowledged.
#[derive(Debug)]
struct Unacknowledged {
    result: pb::TaskResult,
    holds_slot: bool,
    refusals: u32,
    resend_at: Option<Instant>,
    /// The stream it was last sent on (see [`Ledger::mark_sent`]).
    sent_on: Option<u64>,
}

/// What a drain should do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrainStep {
    /// Keep going; look again at this instant at the latest.
    WaitUntil(Instant),
    /// The grace is over with tasks still running: cancel them (they still
    /// write their records) and wait a little longer.
    CancelRunning,
    /// Done: nothing runs (and, when connected, nothing waits for an
    /// acknowledgement), or the final wait is over.
    Finished,
}

#[derive(Debug, Clone, Copy)]
struct Drain {
    deadline: Instant,
    cancelled: bool,
}

/// The bookkeeping of one worker process (it outlives streams).
#[derive(Debug)]
pub struct Ledger {
    capacity: u32,
    running: HashMap<AttemptKey, Held>,
    outbox: HashMap<AttemptKey, Unacknowledged>,
    drain: Option<Drain>,
}

impl Ledger {
    /// An empty ledger for a worker with `capacity` slots (`max_in_flight`).
    pub fn new(capacity: u32) -> Self {
        Ledger {
            capacity,
            running: HashMap::new(),
            outbox: HashMap::new(),
            drain: None,
        }
    }

    /// Slots held: running attempts and unacknowledged results that hold one.
    pub fn slots_held(&self) -> u32 {
        let running = self.running.values().filter(|h| h.holds_slot).count();
        let waiting = self.outbox.values().filter(|u| u.holds_slot).count();
        u32::try_from(running + waiting).unwrap_or(u32::MAX)
    }

    /// Free slots: the credit a new stream announces in `Hello`.
    pub fn free_slots(&self) -> u32 {
        self.capacity.saturating_sub(self.slots_held())
    }

    /// Whether another refusal may be taken on (see [`MAX_REFUSALS_HELD`]).
    pub fn has_room_for_refusal(&self) -> bool {
        let refusals = self.running.values().filter(|h| !h.holds_slot).count()
            + self.outbox.values().filter(|u| !u.holds_slot).count();
        refusals < MAX_REFUSALS_HELD
    }

    /// Records a received attempt; returns the token that cancels it.
    pub fn hold(&mut self, key: AttemptKey, holds_slot: bool) -> CancellationToken {
        let cancel = CancellationToken::new();
        self.running.insert(
            key,
            Held {
                cancel: cancel.clone(),
                holds_slot,
            },
        );
        cancel
    }

    /// Whether this exact attempt is running.
    pub fn is_running(&self, key: &AttemptKey) -> bool {
        self.running.contains_key(key)
    }

    /// An attempt of `task_id` this worker still holds (running, or with
    /// its result waiting for an acknowledgement), if any.
    pub fn held_attempt_of(&self, task_id: &str) -> Option<u32> {
        self.running
            .keys()
            .chain(self.outbox.keys())
            .find(|(id, _)| id == task_id)
            .map(|(_, attempt)| *attempt)
    }

    /// Drops a running attempt that could not be recorded.
    pub fn forget(&mut self, key: &AttemptKey) {
        self.running.remove(key);
    }

    /// The unacknowledged result of this attempt, if it has one.
    pub fn unacknowledged(&self, key: &AttemptKey) -> Option<&pb::TaskResult> {
        self.outbox.get(key).map(|u| &u.result)
    }

    /// Moves a finished attempt into the outbox. An attempt that was not
    /// held (recovered from the journal at start) holds a slot.
    pub fn finish(&mut self, key: AttemptKey, result: pb::TaskResult) {
        let holds_slot = self.running.remove(&key).is_none_or(|h| h.holds_slot);
        self.outbox.insert(
            key,
            Unacknowledged {
                result,
                holds_slot,
                refusals: 0,
                resend_at: None,
                sent_on: None,
            },
        );
    }

    /// Records that this result was sent on stream `generation`; returns
    /// whether it had been already (then it need not be sent again: a
    /// re-delivered assignment must not queue copy after copy).
    pub fn mark_sent(&mut self, key: &AttemptKey, generation: u64) -> bool {
        self.outbox
            .get_mut(key)
            .is_some_and(|u| u.sent_on.replace(generation) == Some(generation))
    }

    /// Forgets an acknowledged result. Returns whether a slot was freed
    /// (then one credit goes back to the orchestrator), or `None` when the
    /// attempt was not waiting (a duplicate or stale acknowledgement).
    pub fn acknowledge(&mut self, key: &AttemptKey) -> Option<bool> {
        self.outbox.remove(key).map(|u| u.holds_slot)
    }

    /// The orchestrator could not store this result: send it again after a
    /// delay that doubles with each refusal.
    pub fn refused(&mut self, key: &AttemptKey, now: Instant) {
        if let Some(u) = self.outbox.get_mut(key) {
            let delay = FIRST_RESEND_DELAY
                .saturating_mul(2u32.saturating_pow(u.refusals.min(16)))
                .min(MAX_RESEND_DELAY);
            u.refusals += 1;
            u.resend_at = Some(now + delay);
        }
    }

    /// When the next refused result is due, if any.
    pub fn next_resend(&self) -> Option<Instant> {
        self.outbox.values().filter_map(|u| u.resend_at).min()
    }

    /// Results whose re-send is due at `now` (their timers are cleared),
    /// marked sent on stream `generation`.
    pub fn take_due(&mut self, now: Instant, generation: u64) -> Vec<pb::TaskResult> {
        self.outbox
            .values_mut()
            .filter(|u| u.resend_at.is_some_and(|at| at <= now))
            .map(|u| {
                u.resend_at = None;
                u.sent_on = Some(generation);
                u.result.clone()
            })
            .collect()
    }

    /// Every unacknowledged result, for a new stream `generation` (pending
    /// timers are cleared: a new stream may reach a store that works).
    pub fn all_unacknowledged(&mut self, generation: u64) -> Vec<pb::TaskResult> {
        self.outbox
            .values_mut()
            .map(|u| {
                u.resend_at = None;
                u.sent_on = Some(generation);
                u.result.clone()
            })
            .collect()
    }

    /// Attempts running, for `Hello.running`.
    pub fn running_keys(&self) -> Vec<AttemptKey> {
        self.running.keys().cloned().collect()
    }

    /// Attempts whose result waits, for `Hello.pending_results`.
    pub fn unacknowledged_keys(&self) -> Vec<AttemptKey> {
        self.outbox.keys().cloned().collect()
    }

    /// Number of running attempts.
    pub fn running_count(&self) -> usize {
        self.running.len()
    }

    /// Number of unacknowledged results.
    pub fn unacknowledged_count(&self) -> usize {
        self.outbox.len()
    }

    /// Cancels one running attempt; returns whether it was running.
    pub fn cancel(&self, key: &AttemptKey) -> bool {
        self.running.get(key).map(|h| h.cancel.cancel()).is_some()
    }

    /// Starts draining (once): the grace runs from `now`.
    pub fn start_drain(&mut self, now: Instant, grace: Duration) {
        self.drain.get_or_insert(Drain {
            deadline: now + grace,
            cancelled: false,
        });
    }

    /// Whether a drain has started.
    pub fn is_draining(&self) -> bool {
        self.drain.is_some()
    }

    /// The one drain rule, connected or not: wait for running attempts (and,
    /// when `connected`, for acknowledgements) until the grace is over; then
    /// cancel what still runs and wait [`FINAL_WAIT`] more; then stop.
    /// Without a drain it waits for ever.
    pub fn drain_step(&mut self, now: Instant, connected: bool) -> DrainStep {
        let Some(drain) = self.drain.as_mut() else {
            return DrainStep::WaitUntil(now + Duration::from_secs(86_400));
        };
        let settled = self.running.is_empty() && (!connected || self.outbox.is_empty());
        if settled {
            return DrainStep::Finished;
        }
        if now < drain.deadline {
            return DrainStep::WaitUntil(drain.deadline);
        }
        if drain.cancelled || self.running.is_empty() {
            return DrainStep::Finished;
        }
        drain.cancelled = true;
        drain.deadline = now + FINAL_WAIT;
        for held in self.running.values() {
            held.cancel.cancel();
        }
        DrainStep::CancelRunning
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: &str) -> AttemptKey {
        (id.to_string(), 1)
    }

    fn result(id: &str) -> pb::TaskResult {
        pb::TaskResult {
            task: Some(pb::TaskRef {
                task_id: id.into(),
                attempt: 1,
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_slot_is_free_again_only_when_the_result_is_acknowledged() {
        let mut ledger = Ledger::new(2);
        ledger.hold(key("a"), true);
        ledger.hold(key("b"), true);
        assert_eq!(ledger.free_slots(), 0);
        ledger.finish(key("a"), result("a"));
        assert_eq!(ledger.free_slots(), 0, "a sent result still holds its slot");
        assert_eq!(ledger.acknowledge(&key("a")), Some(true));
        assert_eq!(ledger.free_slots(), 1);
        assert_eq!(
            ledger.acknowledge(&key("a")),
            None,
            "a duplicate ack frees nothing"
        );
        assert_eq!(ledger.free_slots(), 1);
    }

    #[test]
    fn refusals_hold_no_slot_and_are_bounded() {
        let mut ledger = Ledger::new(1);
        for i in 0..MAX_REFUSALS_HELD {
            assert!(ledger.has_room_for_refusal());
            ledger.hold(key(&format!("r{i}")), false);
        }
        assert!(!ledger.has_room_for_refusal());
        assert_eq!(ledger.free_slots(), 1);
        ledger.finish(key("r0"), result("r0"));
        assert!(
            !ledger.has_room_for_refusal(),
            "a refusal's result still counts"
        );
        assert_eq!(ledger.acknowledge(&key("r0")), Some(false));
        assert!(ledger.has_room_for_refusal());
    }

    #[test]
    fn a_result_recovered_from_the_journal_holds_a_slot() {
        let mut ledger = Ledger::new(3);
        ledger.finish(key("old"), result("old"));
        assert_eq!(ledger.free_slots(), 2);
        assert_eq!(ledger.unacknowledged_keys(), [key("old")]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_result_is_sent_again_after_a_doubling_delay() {
        let mut ledger = Ledger::new(1);
        ledger.hold(key("a"), true);
        ledger.finish(key("a"), result("a"));
        let start = Instant::now();
        ledger.refused(&key("a"), start);
        assert_eq!(ledger.next_resend(), Some(start + FIRST_RESEND_DELAY));
        assert!(ledger.take_due(start, 1).is_empty());
        tokio::time::advance(FIRST_RESEND_DELAY).await;
        assert_eq!(ledger.take_due(Instant::now(), 1).len(), 1);
        assert_eq!(ledger.next_resend(), None);
        ledger.refused(&key("a"), Instant::now());
        assert_eq!(
            ledger.next_resend(),
            Some(Instant::now() + FIRST_RESEND_DELAY * 2)
        );
        for _ in 0..20 {
            ledger.refused(&key("a"), Instant::now());
        }
        assert_eq!(
            ledger.next_resend(),
            Some(Instant::now() + MAX_RESEND_DELAY)
        );
    }

    #[test]
    fn a_result_is_sent_at_most_once_per_stream_and_another_attempt_of_its_task_id_is_seen() {
        let mut ledger = Ledger::new(2);
        ledger.hold(key("a"), true);
        assert_eq!(ledger.held_attempt_of("a"), Some(1));
        ledger.finish(key("a"), result("a"));
        assert_eq!(
            ledger.held_attempt_of("a"),
            Some(1),
            "a waiting result is held too"
        );
        assert_eq!(ledger.all_unacknowledged(1).len(), 1);
        assert!(ledger.mark_sent(&key("a"), 1), "already sent on stream 1");
        assert!(!ledger.mark_sent(&key("a"), 2), "not yet on stream 2");
        assert!(ledger.mark_sent(&key("a"), 2));
        ledger.acknowledge(&key("a"));
        assert_eq!(ledger.held_attempt_of("a"), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_drain_waits_for_the_grace_then_cancels_then_stops() {
        let grace = Duration::from_secs(30);
        let mut ledger = Ledger::new(2);
        let token = ledger.hold(key("slow"), true);
        assert!(matches!(
            ledger.drain_step(Instant::now(), true),
            DrainStep::WaitUntil(_)
        ));
        ledger.start_drain(Instant::now(), grace);
        assert_eq!(
            ledger.drain_step(Instant::now(), true),
            DrainStep::WaitUntil(Instant::now() + grace)
        );
        tokio::time::advance(grace).await;
        assert_eq!(
            ledger.drain_step(Instant::now(), true),
            DrainStep::CancelRunning
        );
        assert!(token.is_cancelled());
        assert_eq!(
            ledger.drain_step(Instant::now(), true),
            DrainStep::WaitUntil(Instant::now() + FINAL_WAIT)
        );
        tokio::time::advance(FINAL_WAIT).await;
        assert_eq!(ledger.drain_step(Instant::now(), true), DrainStep::Finished);
    }

    #[tokio::test(start_paused = true)]
    async fn a_drain_ends_once_everything_is_acknowledged_or_when_disconnected_once_nothing_runs() {
        let mut ledger = Ledger::new(2);
        ledger.hold(key("a"), true);
        ledger.start_drain(Instant::now(), Duration::from_secs(30));
        ledger.finish(key("a"), result("a"));
        assert!(matches!(
            ledger.drain_step(Instant::now(), true),
            DrainStep::WaitUntil(_)
        ));
        assert_eq!(
            ledger.drain_step(Instant::now(), false),
            DrainStep::Finished
        );
        ledger.acknowledge(&key("a"));
        assert_eq!(ledger.drain_step(Instant::now(), true), DrainStep::Finished);
    }
}
