//! A minimal worker for load: many of them in one process, each on its own
//! mTLS connection, speaking the real contract. Each answers every
//! assignment at once with a succeeded result and one more credit, and
//! reconnects with the worker's own jittered backoff, reporting every
//! attempt and every established session.

use std::time::{Duration, Instant};

use pb::orchestrator_message::Kind as Down;
use pb::worker_message::Kind as Up;
use private_worker::backoff::Backoff;
use private_worker::tls::ClientTls;
use private_worker_proto::v1 as pb;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// What a load worker reports.
#[derive(Debug, Clone, Copy)]
pub enum Event {
    /// Worker `id` started a dial at this instant.
    Attempt(usize, Instant),
    /// Worker `id` received `Welcome` at this instant.
    Connected(usize, Instant),
    /// Worker `id` lost its session at this instant.
    Lost(usize, Instant),
}

/// The manifest every load worker advertises.
pub fn manifest(name: &str, version: &str, schema: &serde_json::Value) -> Vec<pb::ManifestEntry> {
    vec![pb::ManifestEntry {
        name: name.into(),
        version: version.into(),
        input_schema_sha256: private_worker_proto::canonical_sha256(schema),
    }]
}

/// Runs load worker `id` until `stop`.
pub async fn run(
    id: usize,
    tls: ClientTls,
    address: String,
    manifest: Vec<pb::ManifestEntry>,
    events: mpsc::UnboundedSender<Event>,
    stop: CancellationToken,
) {
    let mut backoff = Backoff::new(
        private_worker::config::DEFAULT_RECONNECT_INITIAL,
        private_worker::config::DEFAULT_RECONNECT_MAX,
    );
    while !stop.is_cancelled() {
        let _ = events.send(Event::Attempt(id, Instant::now()));
        let welcomed = tokio::select! {
            _ = stop.cancelled() => return,
            welcomed = session(id, &tls, &address, &manifest, &events) => welcomed,
        };
        let _ = events.send(Event::Lost(id, Instant::now()));
        if welcomed {
            backoff.reset();
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(backoff.next_delay()) => {}
        }
    }
}

/// One session; returns whether it got as far as `Welcome`.
async fn session(
    id: usize,
    tls: &ClientTls,
    address: &str,
    manifest: &[pb::ManifestEntry],
    events: &mpsc::UnboundedSender<Event>,
) -> bool {
    let Ok(channel) = tls.channel(address, Duration::from_secs(30)).await else {
        return false;
    };
    let mut client = pb::worker_gateway_client::WorkerGatewayClient::new(channel);
    let (tx, rx) = mpsc::channel(64);
    let hello = pb::Hello {
        worker_version: "bench-load-worker".into(),
        manifest: manifest.to_vec(),
        max_in_flight: 16,
        pending_results: Vec::new(),
        instance_id: format!("load-{id}"),
        running: Vec::new(),
    };
    if tx.send(up(Up::Hello(hello))).await.is_err() {
        return false;
    }
    let Ok(response) = client
        .session(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
    else {
        return false;
    };
    let mut inbound = response.into_inner();
    let mut welcomed = false;
    while let Ok(Some(message)) = inbound.message().await {
        match message.kind {
            Some(Down::Welcome(_)) => {
                welcomed = true;
                let _ = events.send(Event::Connected(id, Instant::now()));
            }
            Some(Down::Assignment(a)) => {
                let task = Some(pb::TaskRef {
                    task_id: a.task_id,
                    attempt: a.attempt,
                });
                let result = pb::TaskResult {
                    task,
                    outcome: pb::Outcome::Succeeded.into(),
                    output_json: a.inputs_json,
                    ..Default::default()
                };
                if tx.send(up(Up::Result(result))).await.is_err()
                    || tx
                        .send(up(Up::Credit(pb::Credit { grant: 1 })))
                        .await
                        .is_err()
                {
                    break;
                }
            }
            Some(Down::Heartbeat(_)) => {
                let beat = pb::Heartbeat {
                    sent_at: Some(std::time::SystemTime::now().into()),
                    in_flight: 0,
                };
                if tx.send(up(Up::Heartbeat(beat))).await.is_err() {
                    break;
                }
            }
            _ => {}
        }
    }
    welcomed
}

fn up(kind: Up) -> pb::WorkerMessage {
    pb::WorkerMessage { kind: Some(kind) }
}
