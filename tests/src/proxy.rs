//! TCP relays for tests, on 127.0.0.1:0.
//!
//! - [`CuttableProxy`]: connections a test can cut or stall at will,
//!   standing for a flaky network path or a load balancer that drops or
//!   freezes streams. It forwards bytes unchanged (TLS passes through end
//!   to end).
//! - [`RecordingUpstream`]: the hop behind a real HTTP proxy: it answers a
//!   CONNECT for any host with 200, leads the tunnel to one fixed address,
//!   and records the CONNECT lines and every byte that crosses, so a test
//!   can show what a proxy on the path sees.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A running proxy.
pub struct CuttableProxy {
    addr: SocketAddr,
    cut: watch::Sender<u64>,
    accepted: Arc<AtomicUsize>,
    stalled: Arc<AtomicBool>,
    stop: tokio_util::sync::CancellationToken,
}

/// Copies `from` to `to`, holding bytes back while `stalled` is set.
async fn forward(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    stalled: Arc<AtomicBool>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        while stalled.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

impl CuttableProxy {
    /// Starts forwarding 127.0.0.1:<any port> to `upstream`.
    ///
    /// # Errors
    /// The listener cannot be bound.
    pub async fn start(upstream: SocketAddr) -> std::io::Result<CuttableProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (cut, _) = watch::channel(0u64);
        let accepted = Arc::new(AtomicUsize::new(0));
        let stalled = Arc::new(AtomicBool::new(false));
        let stop = tokio_util::sync::CancellationToken::new();
        let (cut_tx, count, stopped) = (cut.clone(), accepted.clone(), stop.clone());
        let stall = stalled.clone();
        tokio::spawn(async move {
            loop {
                let (mut inbound, _) = tokio::select! {
                    _ = stopped.cancelled() => return,
                    accepted = listener.accept() => match accepted {
                        Ok(pair) => pair,
                        Err(_) => continue,
                    },
                };
                count.fetch_add(1, Ordering::SeqCst);
                let mut cut_rx = cut_tx.subscribe();
                let stopped = stopped.clone();
                let stall = stall.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let (in_read, in_write) = inbound.split();
                    let (out_read, out_write) = outbound.split();
                    tokio::select! {
                        _ = forward(in_read, out_write, stall.clone()) => {}
                        _ = forward(out_read, in_write, stall) => {}
                        _ = cut_rx.changed() => {}
                        _ = stopped.cancelled() => {}
                    }
                });
            }
        });
        Ok(CuttableProxy {
            addr,
            cut,
            accepted,
            stalled,
            stop,
        })
    }

    /// The address clients should dial.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Drops every connection open now (new ones are accepted again).
    pub fn cut_all(&self) {
        self.cut.send_modify(|n| *n += 1);
    }

    /// Holds back every byte in both directions (connections stay open)
    /// until [`CuttableProxy::resume`].
    pub fn stall(&self) {
        self.stalled.store(true, Ordering::SeqCst);
    }

    /// Lets bytes flow again after [`CuttableProxy::stall`].
    pub fn resume(&self) {
        self.stalled.store(false, Ordering::SeqCst);
    }

    /// How many connections were accepted so far.
    pub fn connections_accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for CuttableProxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// An upstream HTTP proxy that accepts every CONNECT, whatever host it
/// names, and tunnels it to one fixed address, recording what it sees.
pub struct RecordingUpstream {
    addr: SocketAddr,
    connects: Arc<std::sync::Mutex<Vec<String>>>,
    heads: Arc<std::sync::Mutex<Vec<String>>>,
    bytes: Arc<std::sync::Mutex<Vec<u8>>>,
    stop: tokio_util::sync::CancellationToken,
}

/// Copies `from` to `to`, appending every byte to `seen`.
async fn record(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    seen: Arc<std::sync::Mutex<Vec<u8>>>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        seen.lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(&buf[..n]);
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

impl RecordingUpstream {
    /// Starts accepting CONNECTs on 127.0.0.1:<any port>, tunnelling each
    /// to `target`.
    ///
    /// # Errors
    /// The listener cannot be bound.
    pub async fn start(target: SocketAddr) -> std::io::Result<RecordingUpstream> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let connects = Arc::new(std::sync::Mutex::new(Vec::new()));
        let heads = Arc::new(std::sync::Mutex::new(Vec::new()));
        let bytes = Arc::new(std::sync::Mutex::new(Vec::new()));
        let stop = tokio_util::sync::CancellationToken::new();
        let (lines, all_heads, seen, stopped) =
            (connects.clone(), heads.clone(), bytes.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let (mut inbound, _) = tokio::select! {
                    _ = stopped.cancelled() => return,
                    accepted = listener.accept() => match accepted {
                        Ok(pair) => pair,
                        Err(_) => continue,
                    },
                };
                let (lines, all_heads, seen, stopped) = (
                    lines.clone(),
                    all_heads.clone(),
                    seen.clone(),
                    stopped.clone(),
                );
                tokio::spawn(async move {
                    // The request head, byte by byte so nothing after it is taken.
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") && head.len() < 8192 {
                        match inbound.read(&mut byte).await {
                            Ok(1) => head.push(byte[0]),
                            _ => return,
                        }
                    }
                    all_heads
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(String::from_utf8_lossy(&head).into_owned());
                    let line = String::from_utf8_lossy(&head)
                        .lines()
                        .next()
                        .unwrap_or_default()
                        .to_string();
                    lines.lock().unwrap_or_else(|e| e.into_inner()).push(line);
                    let Ok(mut outbound) = TcpStream::connect(target).await else {
                        let _ = inbound.write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n").await;
                        return;
                    };
                    if inbound
                        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                        .await
                        .is_err()
                    {
                        return;
                    }
                    let (in_read, in_write) = inbound.split();
                    let (out_read, out_write) = outbound.split();
                    tokio::select! {
                        _ = record(in_read, out_write, seen.clone()) => {}
                        _ = record(out_read, in_write, seen) => {}
                        _ = stopped.cancelled() => {}
                    }
                });
            }
        });
        Ok(RecordingUpstream {
            addr,
            connects,
            heads,
            bytes,
            stop,
        })
    }

    /// Where the proxy in front should send its CONNECTs.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The request line of every CONNECT received (`CONNECT host:port HTTP/1.0`).
    pub fn connects(&self) -> Vec<String> {
        self.connects
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The whole request head (request line and headers) of every CONNECT
    /// received, as the proxy in front sent it.
    pub fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Every byte tunnelled so far, both directions, in arrival order.
    pub fn bytes(&self) -> Vec<u8> {
        self.bytes.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Drop for RecordingUpstream {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
