//! Certificates, both ways: the orchestrator refuses a worker certificate
//! from another CA, a plaintext connection and a certificate without the
//! clientAuth usage; the worker refuses an orchestrator whose certificate
//! does not carry the expected name or comes from another CA.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Env, Options};
use private_worker_identity::{pem, tls};
use private_worker_tests::pki::{ORCHESTRATOR_NAME, Pki};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Opens a TLS connection to the orchestrator presenting `cert`/`key`,
/// sends the HTTP/2 preface and reads the answer. `Ok(n)` means the server
/// talked HTTP/2 to us (n bytes); `Err` means the connection was refused.
async fn probe(
    addr: std::net::SocketAddr,
    ca: &Path,
    cert: &[u8],
    key: &[u8],
) -> Result<usize, String> {
    // The worker's own client config, with the certificate under test.
    let config = tls::client_config(
        tls::root_store(pem::read_certificates(ca).unwrap()).unwrap(),
        pem::parse_certificates(cert).unwrap(),
        pem::parse_private_key(key).unwrap(),
    )
    .unwrap();
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = ServerName::try_from(ORCHESTRATOR_NAME).unwrap();
    let mut tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut buf = [0u8; 64];
    match tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buf)).await {
        Err(_) => Err("no answer".into()),
        Ok(Err(e)) => Err(format!("read: {e}")),
        Ok(Ok(0)) => Err("closed".into()),
        Ok(Ok(n)) => Ok(n),
    }
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_orchestrator_accepts_its_own_workers_certificate_in_the_probe() {
    // Positive control for the probe used below.
    let env = Env::start(Options::default()).await;
    let answered = probe(
        env.grpc_addr,
        &env.pki.ca_cert,
        &read(&env.pki.worker_cert),
        &read(&env.pki.worker_key),
    )
    .await;
    assert!(answered.is_ok(), "{answered:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_orchestrator_refuses_a_worker_certificate_from_another_ca() {
    let env = Env::start(Options::default()).await;
    let other = Pki::create(&env.path("other-pki"), "intruder");
    let refused = probe(
        env.grpc_addr,
        &env.pki.ca_cert,
        &read(&other.worker_cert),
        &read(&other.worker_key),
    )
    .await;
    assert!(refused.is_err(), "a foreign certificate was accepted");

    // The real worker with that certificate never gets a session.
    let config = env.write_worker_config(
        "intruder",
        &other.worker_cert,
        &other.worker_key,
        ORCHESTRATOR_NAME,
    );
    let mut worker = env.start_worker_with(&config, "intruder");
    worker.wait_for("session ended; will reconnect", common::WAIT);
    assert!(env.admin.workers().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_orchestrator_refuses_a_plaintext_connection() {
    let env = Env::start(Options::default()).await;
    let mut tcp = tokio::net::TcpStream::connect(env.grpc_addr).await.unwrap();
    tcp.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(15), tcp.read_to_end(&mut buf)).await;
    // The server closes (or resets) the connection without ever speaking HTTP/2.
    assert!(read.is_ok(), "the server kept a plaintext connection open");
    // At most a TLS alert record (content type 0x15), never an HTTP/2 frame.
    assert!(
        buf.is_empty() || buf[0] == 0x15,
        "the server answered plaintext: {buf:?}"
    );

    // And a plaintext gRPC client gets no session.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", env.grpc_addr))
        .unwrap()
        .connect()
        .await;
    if let Ok(channel) = channel {
        let mut client =
            private_worker_proto::v1::worker_gateway_client::WorkerGatewayClient::new(channel);
        let outcome = tokio::time::timeout(
            Duration::from_secs(15),
            client.session(futures::stream::empty::<
                private_worker_proto::v1::WorkerMessage,
            >()),
        )
        .await;
        assert!(
            matches!(outcome, Ok(Err(_))),
            "a plaintext session was opened"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_orchestrator_refuses_a_certificate_without_the_client_auth_usage() {
    let env = Env::start(Options::default()).await;
    let ca = certs_tool::CertificateAuthority::from_pem(
        &std::fs::read_to_string(env.pki.ca_cert.with_file_name("intermediate.pem")).unwrap(),
        &std::fs::read_to_string(env.pki.ca_cert.with_file_name("intermediate.key")).unwrap(),
    )
    .unwrap();
    let issued = ca
        .issue_client_without_client_auth(&env.pki.worker_identity, 1)
        .unwrap();
    let refused = probe(
        env.grpc_addr,
        &env.pki.ca_cert,
        issued.chain_pem.as_bytes(),
        issued.key_pem.as_bytes(),
    )
    .await;
    assert!(
        refused.is_err(),
        "a certificate without clientAuth was accepted"
    );

    // The worker itself also refuses to start with such a certificate.
    let cert = env.path("server-usage.pem");
    let key = env.path("server-usage.key");
    std::fs::write(&cert, &issued.chain_pem).unwrap();
    std::fs::write(&key, &issued.key_pem).unwrap();
    let config = env.write_worker_config("bad-usage", &cert, &key, ORCHESTRATOR_NAME);
    let output = std::process::Command::new(private_worker_tests::procs::binary("private-worker"))
        .args(["--config", config.to_str().unwrap(), "--check"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(!output.status.success());
    assert!(text.contains("clientAuth"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_refuses_an_orchestrator_without_the_expected_identity() {
    let env = Env::start(Options::default()).await;
    let config = env.write_worker_config(
        "wrong-name",
        &env.pki.worker_cert,
        &env.pki.worker_key,
        "crm-orchestrator.example.com",
    );
    let mut worker = env.start_worker_with(&config, "wrong-name");
    let line = worker.wait_for("session ended; will reconnect", common::WAIT);
    assert!(
        line.contains("certificate") || line.contains("NotValidForName"),
        "{line}"
    );
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(500) {
        assert!(
            env.admin.workers().await.unwrap().is_empty(),
            "the worker opened a session"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_refuses_an_orchestrator_certified_by_another_ca() {
    let mut env = Env::start(Options::default()).await;
    env.shutdown_orchestrator().await;
    // An impostor at the same address, with a certificate for the right
    // name from a CA the worker does not trust.
    let other = Pki::create(&env.path("impostor-pki"), "w");
    let mut config = env.orchestrator_config.clone();
    config.grpc_listen = env.grpc_addr;
    config.tls.cert = other.orchestrator_cert.clone();
    config.tls.key = other.orchestrator_key.clone();
    let impostor = orchestrator_mock::spawn(config).await.unwrap();
    let mut worker = env.start_worker();
    let line = worker.wait_for("session ended; will reconnect", common::WAIT);
    assert!(
        line.contains("certificate") || line.contains("UnknownIssuer"),
        "{line}"
    );
    let admin = common::admin_client(&impostor);
    assert!(admin.workers().await.unwrap().is_empty());
    impostor.shutdown().await;
}
