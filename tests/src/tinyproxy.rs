//! A real HTTP proxy for tests: Debian's `tinyproxy`, started per test with
//! a generated config on 127.0.0.1 and stopped when dropped.
//!
//! It is the program an enterprise network would put in the way (CONNECT,
//! Basic authentication, host filters, allowed ports), not a stand-in. The
//! tests fail, naming the install command, when it is not installed; they
//! never skip. It does not resolve names of its own: hosts under
//! [`TinyproxyOptions::upstream`]'s domain are handed to an upstream proxy.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The command that installs tinyproxy on Debian (what `.ci/run` does).
pub const INSTALL: &str = "apt-get install -y --no-install-recommends tinyproxy";

/// How to configure one tinyproxy.
#[derive(Debug, Default, Clone)]
pub struct TinyproxyOptions {
    /// Ports CONNECT may reach (`ConnectPort`); tinyproxy refuses others.
    pub connect_ports: Vec<u16>,
    /// `BasicAuth user password`: every request needs these credentials.
    pub basic_auth: Option<(String, String)>,
    /// Host patterns refused with 403 (`Filter` file, default allow).
    pub deny_hosts: Vec<String>,
    /// `Upstream http <addr> "<domain>"`: requests for hosts under `domain`
    /// go through the proxy at `addr` (which then decides where they lead).
    pub upstream: Option<(SocketAddr, String)>,
}

/// A running tinyproxy.
pub struct Tinyproxy {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
}

/// Panics with the install command when `tinyproxy` is not on `PATH`.
pub fn require_tinyproxy() {
    let found = Command::new("tinyproxy")
        .arg("-v")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    assert!(
        found,
        "these tests need tinyproxy (a real HTTP proxy) and it is not installed: run `{INSTALL}` (as root; .ci/run does)"
    );
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

impl Tinyproxy {
    /// Writes a config into `dir` and starts tinyproxy in the foreground on
    /// a free port of 127.0.0.1, waiting until it accepts connections.
    ///
    /// # Panics
    /// When tinyproxy is missing (naming [`INSTALL`]) or does not start.
    pub fn start(dir: &Path, options: &TinyproxyOptions) -> Tinyproxy {
        require_tinyproxy();
        std::fs::create_dir_all(dir).expect("tinyproxy dir");
        let port = free_port();
        let log = dir.join("tinyproxy.log");
        let mut config = format!(
            "Port {port}\nListen 127.0.0.1\nTimeout 60\nMaxClients 50\nLogLevel Info\n\
             LogFile \"{}\"\nPidFile \"{}\"\nAllow 127.0.0.1\nDisableViaHeader Yes\n",
            log.display(),
            dir.join("tinyproxy.pid").display()
        );
        for connect_port in &options.connect_ports {
            config.push_str(&format!("ConnectPort {connect_port}\n"));
        }
        if let Some((user, password)) = &options.basic_auth {
            config.push_str(&format!("BasicAuth {user} {password}\n"));
        }
        if !options.deny_hosts.is_empty() {
            let filter = dir.join("filter");
            std::fs::write(&filter, options.deny_hosts.join("\n") + "\n").expect("filter file");
            config.push_str(&format!(
                "Filter \"{}\"\nFilterDefaultDeny No\nFilterURLs Off\n",
                filter.display()
            ));
        }
        if let Some((addr, domain)) = &options.upstream {
            config.push_str(&format!("Upstream http {addr} \"{domain}\"\n"));
        }
        let config_path = dir.join("tinyproxy.conf");
        std::fs::write(&config_path, config).expect("tinyproxy config");
        let out = std::fs::File::create(dir.join("tinyproxy.out")).expect("tinyproxy output");
        let child = Command::new("tinyproxy")
            .arg("-d")
            .arg("-c")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::from(out.try_clone().expect("clone")))
            .stderr(Stdio::from(out))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start tinyproxy ({INSTALL}): {e}"));
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("address");
        let mut proxy = Tinyproxy { child, addr, log };
        let start = Instant::now();
        while std::net::TcpStream::connect(addr).is_err() {
            if let Ok(Some(status)) = proxy.child.try_wait() {
                panic!(
                    "tinyproxy exited ({status}) at start: {}",
                    std::fs::read_to_string(dir.join("tinyproxy.out")).unwrap_or_default()
                );
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "tinyproxy did not listen on {addr}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        proxy
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Its `host:port`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// How many `CONNECT <target>` requests the log shows.
    pub fn connects_to(&self, target: &str) -> usize {
        let needle = format!("CONNECT {target} ");
        self.log().matches(&needle).count()
    }
}

impl Drop for Tinyproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
