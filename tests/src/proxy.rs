//! A TCP proxy on 127.0.0.1:0 whose connections a test can cut at will,
//! standing for a flaky network path or a load balancer that drops streams.
//! It forwards bytes unchanged (TLS passes through end to end).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A running proxy.
pub struct CuttableProxy {
    addr: SocketAddr,
    cut: watch::Sender<u64>,
    accepted: Arc<AtomicUsize>,
    stop: tokio_util::sync::CancellationToken,
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
        let stop = tokio_util::sync::CancellationToken::new();
        let (cut_tx, count, stopped) = (cut.clone(), accepted.clone(), stop.clone());
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
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
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
