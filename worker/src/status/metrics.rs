//! Prometheus metrics, served only when the operator sets `[metrics]
//! listen` (a loopback address; the config refuses any other).
//!
//! Figures: finished attempts by outcome (`private_worker_tasks_total`),
//! how long attempts took (`private_worker_task_duration_seconds`),
//! streams lost (`private_worker_reconnects_total`), attempts running
//! (`private_worker_in_flight`) and results waiting for acknowledgement
//! (`private_worker_outbox`). The text is OpenMetrics, from the Prometheus
//! project's own Rust client (`prometheus-client`).
//!
//! What it does not do: listen unless asked, carry task ids, inputs or
//! anything from the wire in a label (labels are the contract's outcome
//! names only, so the series count is fixed), or serve anything but
//! `GET /metrics`.

use std::net::SocketAddr;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use super::StatusBoard;

/// The label of `private_worker_tasks_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    /// The contract's outcome name, lower case (e.g. `succeeded`).
    outcome: String,
}

/// The outcome names a label may take; anything else counts as
/// `outcome_unknown`, so a peer cannot grow the series.
const OUTCOMES: [&str; 6] = [
    "succeeded",
    "failed",
    "rejected",
    "timed_out",
    "cancelled",
    "outcome_unknown",
];

/// The worker's metrics and their registry.
pub struct Metrics {
    registry: Registry,
    tasks: Family<OutcomeLabel, Counter>,
    duration: Histogram,
    /// Streams lost since the start.
    pub(super) reconnects: Counter,
    in_flight: Gauge,
    outbox: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("private_worker");
        let tasks = Family::<OutcomeLabel, Counter>::default();
        // 5 ms .. ~82 s: internal API calls, slow ones included.
        let duration = Histogram::new(exponential_buckets(0.005, 2.0, 15));
        let reconnects = Counter::default();
        let in_flight = Gauge::default();
        let outbox = Gauge::default();
        registry.register("tasks", "Finished attempts by outcome", tasks.clone());
        registry.register(
            "task_duration_seconds",
            "Time from assignment to result, per attempt",
            duration.clone(),
        );
        registry.register(
            "reconnects",
            "Streams to the orchestrator lost since the worker started",
            reconnects.clone(),
        );
        registry.register("in_flight", "Attempts running now", in_flight.clone());
        registry.register(
            "outbox",
            "Results waiting for the orchestrator's acknowledgement",
            outbox.clone(),
        );
        for outcome in OUTCOMES {
            // Every outcome shows from the start, at zero.
            let _ = tasks.get_or_create(&OutcomeLabel {
                outcome: outcome.into(),
            });
        }
        Metrics {
            registry,
            tasks,
            duration,
            reconnects,
            in_flight,
            outbox,
        }
    }
}

impl Metrics {
    pub(super) fn task_finished(&self, outcome: &str, took: Duration) {
        let outcome = outcome.to_ascii_lowercase();
        let outcome = if OUTCOMES.contains(&outcome.as_str()) {
            outcome
        } else {
            "outcome_unknown".into()
        };
        self.tasks.get_or_create(&OutcomeLabel { outcome }).inc();
        self.duration.observe(took.as_secs_f64());
    }

    pub(super) fn set_counts(&self, in_flight: i64, outbox: i64) {
        self.in_flight.set(in_flight);
        self.outbox.set(outbox);
    }

    /// The OpenMetrics text of every metric.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

/// Why the metrics listener could not start.
#[derive(Debug, thiserror::Error)]
#[error(
    "metrics.listen {address}: cannot listen: {source} (choose a free loopback port, or remove [metrics])"
)]
pub struct ServeError {
    /// The configured address.
    pub address: SocketAddr,
    /// Why.
    pub source: std::io::Error,
}

/// Binds `address` and serves `GET /metrics` from `board` until `stop`.
///
/// # Errors
/// [`ServeError`] when the address cannot be bound.
pub async fn serve(
    board: StatusBoard,
    address: SocketAddr,
    stop: CancellationToken,
) -> Result<SocketAddr, ServeError> {
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(|source| ServeError { address, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| ServeError { address, source })?;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let board = board.clone();
            async move {
                (
                    [(
                        http::header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    board.metrics_text(),
                )
            }
        }),
    );
    tracing::info!(address = %bound, "serving Prometheus metrics on loopback (GET /metrics)");
    tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await;
        if let Err(e) = served {
            tracing::warn!(error = %e, "the metrics listener stopped");
        }
    });
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_are_counted_under_fixed_labels_and_durations_observed() {
        let metrics = Metrics::default();
        metrics.task_finished("SUCCEEDED", Duration::from_millis(20));
        metrics.task_finished("SUCCEEDED", Duration::from_millis(30));
        metrics.task_finished("a label a peer made up", Duration::from_millis(1));
        metrics.reconnects.inc();
        metrics.set_counts(3, 4);
        let text = metrics.encode();
        assert!(
            text.contains("private_worker_tasks_total{outcome=\"succeeded\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("private_worker_tasks_total{outcome=\"outcome_unknown\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("private_worker_tasks_total{outcome=\"failed\"} 0"),
            "{text}"
        );
        assert!(!text.contains("made up"), "{text}");
        assert!(
            text.contains("private_worker_task_duration_seconds_count 3"),
            "{text}"
        );
        assert!(text.contains("private_worker_reconnects_total 1"), "{text}");
        assert!(text.contains("private_worker_in_flight 3"), "{text}");
        assert!(text.contains("private_worker_outbox 4"), "{text}");
    }
}
