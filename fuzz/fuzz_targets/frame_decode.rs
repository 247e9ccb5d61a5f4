//! Bytes off the wire, in both directions: arbitrary bytes decoded as the
//! orchestrator's and the worker's stream messages (prost), every decoded
//! message taken through what each side does with it first (the worker's
//! `session::wire` conversion and id checks; the orchestrator-mock's `Hello`
//! check and audit-record checks), and the same bytes fed as an HTTP/2 body
//! to tonic's gRPC frame decoder (5-byte prefix: compressed flag and length,
//! the 4 MiB limit both sides configure), cut into chunks at arbitrary places.
//!
//! Properties: nothing panics; a decoded message re-encodes and decodes to
//! itself; an assignment the worker accepts has every id within the
//! contract; an audit record that converts to the record form converts back
//! losslessly.
#![no_main]

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::Frame;
use libfuzzer_sys::fuzz_target;
use orchestrator_mock::audit_check::{Chains, check_record};
use orchestrator_mock::gateway::check_hello;
use private_worker::session::wire;
use private_worker_proto::audit::Record;
use private_worker_proto::v1 as pb;
use prost::Message;
use tonic::codec::{Codec, Streaming};
use tonic_prost::ProstCodec;

const IDENTITY: &str = "spiffe://example.org/worker/fuzz";

fuzz_target!(|data: &[u8]| {
    orchestrator_to_worker(data);
    worker_to_orchestrator(data);
    if let Ok(result) = wire::decode(data) {
        // What the worker reads back from its journal.
        let _ = wire::summary(&result);
    }
    grpc_frames(data);
});

fn orchestrator_to_worker(data: &[u8]) {
    let Ok(message) = pb::OrchestratorMessage::decode(data) else {
        return;
    };
    round_trips(&message);
    use pb::orchestrator_message::Kind;
    match message.kind {
        Some(Kind::Assignment(assignment)) => match wire::assignment(assignment.clone()) {
            Ok(converted) => {
                for id in [
                    &converted.task_id,
                    &converted.plan_id,
                    &converted.task_name,
                    &converted.task_version,
                ] {
                    assert!(
                        private_worker_proto::check_id(id).is_ok(),
                        "the worker took an id outside the contract: {id:?}"
                    );
                }
                assert_eq!(converted.inputs_json, assignment.inputs_json);
                assert_eq!(converted.attempt, assignment.attempt);
            }
            Err(why) => {
                // The reason names the field, never echoes the value.
                assert!(why.len() < 100, "{why}");
            }
        },
        Some(Kind::ResultAck(ack)) => {
            let _ = wire::attempt_key(ack.task);
        }
        Some(Kind::ResultRefused(refused)) => {
            let _ = wire::attempt_key(refused.task);
        }
        Some(Kind::Cancel(cancel)) => {
            let _ = wire::attempt_key(cancel.task);
        }
        _ => {}
    }
}

fn worker_to_orchestrator(data: &[u8]) {
    let Ok(message) = pb::WorkerMessage::decode(data) else {
        return;
    };
    round_trips(&message);
    use pb::worker_message::Kind;
    match message.kind {
        Some(Kind::Hello(hello)) => {
            if check_hello(&hello).is_ok() {
                assert!(private_worker_proto::check_id(&hello.instance_id).is_ok());
                assert!(hello.manifest.len() <= private_worker_proto::MAX_MANIFEST_ENTRIES);
            }
        }
        Some(Kind::Result(result)) => {
            if let Some(audit) = &result.audit {
                let _ = check_record(&result, audit, IDENTITY, None);
                let mut chains = Chains::default();
                let _ = chains.follow(IDENTITY, audit);
                let _ = chains.follow(IDENTITY, audit);
                record_form_round_trips(audit);
            }
        }
        _ => {}
    }
}

fn round_trips<M: Message + Default + PartialEq + std::fmt::Debug>(message: &M) {
    let bytes = message.encode_to_vec();
    let again = M::decode(bytes.as_slice()).expect("a re-encoded message decodes");
    assert_eq!(&again, message);
}

fn record_form_round_trips(audit: &pb::AuditRecord) {
    let Ok(record) = Record::from_message(audit) else {
        return;
    };
    let back = record.to_message();
    assert_eq!(Record::from_message(&back).as_ref(), Ok(&record));
    let _ = record.compute_hash();
    let line = record.to_line();
    assert_eq!(Record::from_line(&line).as_ref(), Ok(&record));
}

/// An HTTP body that hands out the input in chunks whose sizes come from the
/// input's first bytes, so frame prefixes and messages split across reads.
struct Chunked {
    data: Bytes,
    sizes: Vec<usize>,
    next: usize,
}

impl http_body::Body for Chunked {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.data.is_empty() {
            return Poll::Ready(None);
        }
        let size = if self.sizes.is_empty() {
            self.data.len()
        } else {
            let i = self.next % self.sizes.len();
            self.sizes[i]
        };
        self.next += 1;
        let size = size.clamp(1, self.data.len());
        let chunk = self.data.split_to(size);
        Poll::Ready(Some(Ok(Frame::data(chunk))))
    }
}

fn body(data: &[u8]) -> Chunked {
    // First byte: how many chunk sizes follow (0 to 3); then the sizes.
    let (count, rest) = match data.split_first() {
        Some((c, rest)) => (usize::from(*c % 4), rest),
        None => (0, data),
    };
    let count = count.min(rest.len());
    let sizes = rest[..count].iter().map(|s| usize::from(*s)).collect();
    Chunked {
        data: Bytes::copy_from_slice(&rest[count..]),
        sizes,
        next: 0,
    }
}

fn grpc_frames(data: &[u8]) {
    // The worker's side: orchestrator messages in a response body.
    let decoder = ProstCodec::<pb::WorkerMessage, pb::OrchestratorMessage>::default().decoder();
    let stream = Streaming::new_response(
        decoder,
        body(data),
        http::StatusCode::OK,
        None,
        Some(private_worker_proto::MAX_MESSAGE_BYTES),
    );
    drain(stream);
    // The orchestrator's side: worker messages in a request body.
    let decoder = ProstCodec::<pb::OrchestratorMessage, pb::WorkerMessage>::default().decoder();
    let stream = Streaming::new_request(
        decoder,
        body(data),
        None,
        Some(private_worker_proto::MAX_MESSAGE_BYTES),
    );
    drain(stream);
}

fn drain<T: Message + Default + PartialEq + std::fmt::Debug>(mut stream: Streaming<T>) {
    futures::executor::block_on(async {
        // Bounded: every message takes at least its 5-byte prefix.
        for _ in 0..=data_bound() {
            match stream.message().await {
                Ok(Some(message)) => round_trips(&message),
                Ok(None) | Err(_) => break,
            }
        }
    });
}

/// More messages than any input libFuzzer gives us can hold.
fn data_bound() -> usize {
    1 << 20
}
