//! The ceiling: a bare tonic bidirectional stream over the same mutual TLS
//! set-up as the product (the orchestrator's acceptor, the worker's
//! dialer), echoing messages the size of a task. No registry, no
//! validation, no storage, no audit.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use pb::worker_gateway_server::{WorkerGateway, WorkerGatewayServer};
use private_worker::tls::ClientTls;
use private_worker_proto::v1 as pb;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Bytes of task input in each message, about what a small task carries.
pub const PAYLOAD_BYTES: usize = 200;

struct Echo;

type Out = Pin<Box<dyn Stream<Item = Result<pb::OrchestratorMessage, tonic::Status>> + Send>>;

#[tonic::async_trait]
impl WorkerGateway for Echo {
    type SessionStream = Out;

    async fn session(
        &self,
        request: tonic::Request<tonic::Streaming<pb::WorkerMessage>>,
    ) -> Result<tonic::Response<Out>, tonic::Status> {
        let inputs = "x".repeat(PAYLOAD_BYTES);
        let out = request.into_inner().map(move |message| {
            message.map(|_| pb::OrchestratorMessage {
                kind: Some(pb::orchestrator_message::Kind::Assignment(pb::Assignment {
                    task_id: "t".into(),
                    attempt: 1,
                    inputs_json: inputs.clone(),
                    ..Default::default()
                })),
            })
        });
        Ok(tonic::Response::new(Box::pin(out)))
    }
}

/// A running echo server.
pub struct EchoServer {
    /// Where it listens.
    pub addr: SocketAddr,
    stop: CancellationToken,
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Starts the echo server on 127.0.0.1:0 with the orchestrator's TLS set-up.
///
/// # Panics
/// When the TLS files or the listener are unusable (a bench set-up bug).
pub async fn start(tls: &orchestrator_mock::TlsConfig) -> EchoServer {
    let (addr, stop) = crate::scripted::serve(tls, WorkerGatewayServer::new(Echo)).await;
    EchoServer { addr, stop }
}

/// Sends `total` messages with `in_flight` outstanding at a time; returns
/// the elapsed time and each message's round-trip time.
///
/// # Panics
/// When the stream fails (a bench set-up bug).
pub async fn run(
    tls: &ClientTls,
    addr: SocketAddr,
    in_flight: usize,
    total: usize,
) -> (Duration, Vec<Duration>) {
    let channel = tls
        .channel(&addr.to_string(), Duration::from_secs(10))
        .await
        .expect("dial echo server");
    let mut client = pb::worker_gateway_client::WorkerGatewayClient::new(channel);
    let (tx, rx) = mpsc::channel(in_flight + 1);
    let message = pb::WorkerMessage {
        kind: Some(pb::worker_message::Kind::Result(pb::TaskResult {
            output_json: "y".repeat(PAYLOAD_BYTES),
            ..Default::default()
        })),
    };
    let mut sent_at = VecDeque::with_capacity(in_flight);
    let start = Instant::now();
    for _ in 0..in_flight.min(total) {
        sent_at.push_back(Instant::now());
        tx.send(message.clone()).await.expect("send");
    }
    let mut sent = in_flight.min(total);
    let mut inbound = client
        .session(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("open stream")
        .into_inner();
    let mut latencies = Vec::with_capacity(total);
    while latencies.len() < total {
        inbound.message().await.expect("echo").expect("stream open");
        latencies.push(sent_at.pop_front().expect("a message in flight").elapsed());
        if sent < total {
            sent_at.push_back(Instant::now());
            tx.send(message.clone()).await.expect("send");
            sent += 1;
        }
    }
    (start.elapsed(), latencies)
}
