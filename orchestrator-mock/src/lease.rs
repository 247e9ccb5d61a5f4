//! The lease sweeper: a task that periodically asks the state to settle
//! the attempts of worker identities whose lease lapsed.
//!
//! The rules live in [`crate::state`] ([`State::touch`] renews a lease,
//! [`State::expire_leases`] settles lapsed ones); this module only drives
//! them with tokio's clock, so tests can run it with paused time.
//!
//! What it does not do: renew leases (the gateway does, on every message
//! from a worker) or talk to workers.
//!
//! [`State::touch`]: crate::state::State::touch
//! [`State::expire_leases`]: crate::state::State::expire_leases

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::state::SharedState;

/// How often the sweeper looks for lapsed leases, for a lease time:
/// a tenth of it, between 100 ms and 1 s.
pub fn sweep_period(lease_timeout: Duration) -> Duration {
    (lease_timeout / 10).clamp(Duration::from_millis(100), Duration::from_secs(1))
}

/// Settles lapsed leases every `period` until `shutdown`.
pub async fn run_sweeper(state: SharedState, period: Duration, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {
                let now = tokio::time::Instant::now();
                state
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .expire_leases(now);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{ManifestEntryView, PlanStatus, StepStatus};
    use crate::registry::ResolvedStep;
    use crate::state::{NewSession, Outgoing, State};
    use private_worker_proto::v1 as pb;
    use std::sync::{Arc, Mutex};
    use tokio::sync::mpsc;

    fn session(
        id: &str,
        worker: &str,
        task: &str,
    ) -> (NewSession, mpsc::UnboundedReceiver<Outgoing>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (
            NewSession {
                session_id: id.into(),
                identity: format!("spiffe://t/worker/{worker}"),
                remote_addr: "127.0.0.1:1".parse().unwrap(),
                cert_serial: String::new(),
                worker_version: "test".into(),
                instance_id: "i".into(),
                manifest: vec![ManifestEntryView {
                    name: task.into(),
                    version: "1".into(),
                    input_schema_sha256: String::new(),
                    dispatchable: true,
                    problem: None,
                }],
                credit: 4,
                held: Default::default(),
                tx,
            },
            rx,
        )
    }

    fn assignments(rx: &mut mpsc::UnboundedReceiver<Outgoing>) -> Vec<pb::Assignment> {
        let mut out = Vec::new();
        while let Ok(m) = rx.try_recv() {
            if let Outgoing::Send { message, .. } = m
                && let Some(pb::orchestrator_message::Kind::Assignment(a)) = message.kind
            {
                out.push(a);
            }
        }
        out
    }

    fn step(task: &str, idempotent: bool) -> ResolvedStep {
        ResolvedStep {
            task: task.into(),
            version: "1".into(),
            inputs: serde_json::json!({}),
            idempotent,
            timeout_secs: None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_workers_unaccepted_attempt_moves_to_another_worker_when_its_lease_lapses() {
        let lease = Duration::from_secs(30);
        let state = Arc::new(Mutex::new(State::with_journal(
            false,
            lease,
            crate::durable::journal::in_memory().0,
        )));
        let (first, mut first_rx) = session("s1", "a", "t");
        state.lock().unwrap().register_session(first);
        let (plan, lost) = {
            let mut s = state.lock().unwrap();
            let plan = s.submit(None, vec![step("t", false), step("t", false)]);
            s.approve(&plan.id).unwrap();
            (plan, assignments(&mut first_rx))
        };
        assert_eq!(lost.len(), 1);
        // Worker a's stream breaks and it never comes back.
        state.lock().unwrap().unregister_session("s1");
        let shutdown = CancellationToken::new();
        let sweeper = tokio::spawn(run_sweeper(
            state.clone(),
            sweep_period(lease),
            shutdown.clone(),
        ));
        tokio::time::sleep(lease - Duration::from_secs(1)).await;
        // Worker b connects just before a's lease lapses.
        let (second, mut second_rx) = session("s2", "b", "t");
        state.lock().unwrap().register_session(second);
        assert!(
            assignments(&mut second_rx).is_empty(),
            "nothing moves before the lease lapses"
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
        let again = assignments(&mut second_rx);
        assert_eq!(again.len(), 1, "the lost attempt went to worker b");
        assert_eq!(
            (again[0].task_id.as_str(), again[0].attempt),
            (lost[0].task_id.as_str(), 2)
        );
        let view = state.lock().unwrap().plan(&plan.id).unwrap();
        assert_eq!(view.steps[0].attempts.len(), 2);
        assert_eq!(
            view.steps[0].attempts[0].outcome.as_deref(),
            Some("reassigned")
        );
        assert_eq!(view.steps[0].attempts[1].worker, "spiffe://t/worker/b");
        assert_eq!(view.status, PlanStatus::Running);
        shutdown.cancel();
        sweeper.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn an_accepted_attempt_ends_outcome_unknown_when_its_lease_lapses_unless_idempotent() {
        let lease = Duration::from_secs(30);
        let state = Arc::new(Mutex::new(State::with_journal(
            false,
            lease,
            crate::durable::journal::in_memory().0,
        )));
        let (first, mut rx) = session("s1", "a", "t");
        state.lock().unwrap().register_session(first);
        let (strict, retried) = {
            let mut s = state.lock().unwrap();
            let strict = s.submit(None, vec![step("t", false), step("t", false)]);
            let retried = s.submit(None, vec![step("t", true)]);
            s.approve(&strict.id).unwrap();
            s.approve(&retried.id).unwrap();
            for a in assignments(&mut rx) {
                s.mark_accepted("spiffe://t/worker/a", &a.task_id, a.attempt)
                    .unwrap();
            }
            (strict, retried)
        };
        let shutdown = CancellationToken::new();
        let sweeper = tokio::spawn(run_sweeper(
            state.clone(),
            sweep_period(lease),
            shutdown.clone(),
        ));
        tokio::time::sleep(lease + Duration::from_secs(2)).await;
        shutdown.cancel();
        sweeper.await.unwrap();
        let s = state.lock().unwrap();
        let strict = s.plan(&strict.id).unwrap();
        assert_eq!(strict.steps[0].status, StepStatus::OutcomeUnknown);
        assert_eq!(strict.steps[1].status, StepStatus::Skipped);
        assert_eq!(strict.status, PlanStatus::Failed);
        let retried = s.plan(&retried.id).unwrap();
        assert_eq!(
            retried.steps[0].status,
            StepStatus::Queued,
            "idempotent: assigned again when a worker can take it"
        );
        assert!(
            matches!(rx.try_recv(), Ok(Outgoing::Close(status)) if status.code() == tonic::Code::Unavailable),
            "the silent stream is closed"
        );
    }
}
