//! Shared fixtures: the sample registry, a config directory with a per-test
//! CA and server certificate (the shared test PKI,
//! `private_worker_identity::test_support`), and a worker's mTLS
//! connection.
#![allow(dead_code)] // each test file uses a different part of it

use std::path::Path;

use private_worker_identity::test_support::TestCa;
use serde_json::{Value, json};

pub fn schema_one() -> Value {
    json!({"type": "object", "required": ["title"], "additionalProperties": false,
           "properties": {"title": {"type": "string", "minLength": 1}, "priority": {"type": "integer", "maximum": 5}}})
}

pub fn schema_two() -> Value {
    json!({"type": "object", "properties": {"id": {"type": "string"}}})
}

/// Writes CA, server certificate, registry and a config using them into
/// `dir`; returns the CA and the config text (relative paths).
pub fn write_setup(dir: &Path) -> (TestCa, String) {
    let ca = TestCa::new("test root");
    let (cert, key) = ca.server(&["localhost"]).into_pem();
    std::fs::write(dir.join("ca.pem"), ca.cert_pem()).unwrap();
    std::fs::write(dir.join("server.pem"), cert).unwrap();
    std::fs::write(dir.join("server.key"), key).unwrap();
    let registry = json!({"tasks": [
        {"name": "crm.create_ticket", "version": "1", "description": "one", "input_schema": schema_one()},
        {"name": "crm.get_ticket", "version": "1", "description": "two", "input_schema": schema_two(), "idempotent": true}
    ]});
    std::fs::write(dir.join("registry.json"), registry.to_string()).unwrap();
    let text = r#"
grpc_listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
registry = "registry.json"
data_dir = "data"
heartbeat_interval = "5s"
wire_capture_dir = "wire"

[tls]
ca_cert = "ca.pem"
cert = "server.pem"
key = "server.key"
"#;
    (ca, text.to_string())
}

/// Issues (or replaces) the admin token `name` with `roles` in the token
/// file of the setup [`write_setup`] wrote in `dir` (`data/admin_tokens.json`):
/// how tests get a token for an orchestrator running in another process.
/// In process, `OrchestratorHandle::admin_client` does it.
pub fn admin_token(dir: &Path, name: &str, roles: &[orchestrator_mock::tokens::Role]) -> String {
    orchestrator_mock::tokens::TokenFile::in_data_dir(&dir.join("data"))
        .issue(name, roles)
        .unwrap()
}

/// One mTLS connection to the gateway at `addr` as a worker with
/// `cert`/`key` (PEM), trusting `ca`'s issuer, offering HTTP/2; the client
/// side of the handshake is done (the server may still close it right
/// after).
pub async fn connect_as_worker(
    ca: &TestCa,
    addr: std::net::SocketAddr,
    cert: &str,
    key: &str,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, String> {
    use private_worker_identity::pem::{parse_certificates, parse_private_key};
    let config = private_worker_identity::tls::client_config(
        ca.roots(),
        parse_certificates(cert.as_bytes()).unwrap(),
        parse_private_key(key.as_bytes()).unwrap(),
    )
    .unwrap();
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())
}

/// A tonic channel over one already-established connection to `addr`.
pub async fn channel_over(
    stream: tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    addr: std::net::SocketAddr,
) -> Result<tonic::transport::Channel, String> {
    let slot = std::sync::Arc::new(std::sync::Mutex::new(Some(stream)));
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_| {
            let slot = slot.clone();
            async move {
                let s = slot
                    .lock()
                    .unwrap()
                    .take()
                    .ok_or_else(|| std::io::Error::other("used"))?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(s))
            }
        }))
        .await
        .map_err(|e| format!("channel: {e}"))
}
