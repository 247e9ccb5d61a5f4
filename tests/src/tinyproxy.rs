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

/// How many ports are tried before giving up: a port found free can be
/// taken by another process before tinyproxy binds it.
const PORT_ATTEMPTS: usize = 5;

/// What tinyproxy writes to its log once it listens.
const READY_LINE: &str = "Starting main loop. Accepting connections.";

/// What tinyproxy prints when it cannot bind its port.
const PORT_TAKEN: &str = "Could not create listening sockets";

/// How one start of tinyproxy ended.
enum Started {
    /// It listens on its port.
    Ready(Child),
    /// Its port was taken; try another.
    PortTaken,
}

impl Tinyproxy {
    /// Writes a config into `dir` and starts tinyproxy in the foreground on
    /// a free port of 127.0.0.1, waiting until it accepts connections.
    ///
    /// Ready means: the child is alive and its log says it accepts
    /// connections (a connect alone could reach another process that took
    /// the port after it was found free). When the port was taken,
    /// tinyproxy exits and another port is tried.
    ///
    /// # Panics
    /// When tinyproxy is missing (naming [`INSTALL`]) or does not start.
    pub fn start(dir: &Path, options: &TinyproxyOptions) -> Tinyproxy {
        Self::start_on(dir, options, &mut free_port)
    }

    /// [`Tinyproxy::start`], taking each port to try from `next_port`.
    fn start_on(
        dir: &Path,
        options: &TinyproxyOptions,
        next_port: &mut dyn FnMut() -> u16,
    ) -> Tinyproxy {
        require_tinyproxy();
        std::fs::create_dir_all(dir).expect("tinyproxy dir");
        let log = dir.join("tinyproxy.log");
        for _ in 0..PORT_ATTEMPTS {
            let port = next_port();
            match Self::start_once(dir, options, port, &log) {
                Started::Ready(child) => {
                    let addr = SocketAddr::from(([127, 0, 0, 1], port));
                    return Tinyproxy { child, addr, log };
                }
                Started::PortTaken => continue,
            }
        }
        panic!("tinyproxy found no free port in {PORT_ATTEMPTS} attempts");
    }

    /// One start on `port`.
    fn start_once(dir: &Path, options: &TinyproxyOptions, port: u16, log: &Path) -> Started {
        let _ = std::fs::remove_file(log);
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
        let out_path = dir.join("tinyproxy.out");
        let out = std::fs::File::create(&out_path).expect("tinyproxy output");
        let mut child = Command::new("tinyproxy")
            .arg("-d")
            .arg("-c")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::from(out.try_clone().expect("clone")))
            .stderr(Stdio::from(out))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start tinyproxy ({INSTALL}): {e}"));
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                let output = std::fs::read_to_string(&out_path).unwrap_or_default();
                if output.contains(PORT_TAKEN) {
                    return Started::PortTaken;
                }
                panic!("tinyproxy exited ({status}) at start: {output}");
            }
            let logged = std::fs::read_to_string(log).unwrap_or_default();
            if logged.contains(READY_LINE) {
                return Started::Ready(child);
            }
            if start.elapsed() > Duration::from_secs(10) {
                let _ = child.kill();
                let _ = child.wait();
                panic!("tinyproxy did not start listening on 127.0.0.1:{port}:\n{logged}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_port_taken_by_another_process_is_skipped_and_never_mistaken_for_tinyproxy() {
        let dir = std::env::temp_dir().join(format!("tinyproxy-port-{}", std::process::id()));
        // Another process's listener on the first port offered.
        let stranger = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let taken = stranger.local_addr().unwrap().port();
        let mut offered = Vec::new();
        let mut ports = || {
            let port = if offered.is_empty() {
                taken
            } else {
                free_port()
            };
            offered.push(port);
            port
        };
        let mut proxy = Tinyproxy::start_on(&dir, &TinyproxyOptions::default(), &mut ports);
        assert_ne!(
            proxy.addr().port(),
            taken,
            "tinyproxy claims the stranger's port"
        );
        assert!(
            proxy.child.try_wait().unwrap().is_none(),
            "the tinyproxy returned is running"
        );
        assert!(offered.len() >= 2, "a second port was tried: {offered:?}");
        // The proxy answers as tinyproxy: a request it cannot serve gets an
        // HTTP error page naming it.
        use std::io::{Read as _, Write as _};
        let mut tcp = std::net::TcpStream::connect(proxy.addr()).unwrap();
        tcp.write_all(b"GET http://no-such-host.invalid/ HTTP/1.0\r\n\r\n")
            .unwrap();
        let mut answer = String::new();
        let _ = tcp.read_to_string(&mut answer);
        assert!(answer.starts_with("HTTP/1.0 "), "{answer}");
        assert!(
            answer.to_ascii_lowercase().contains("tinyproxy"),
            "{answer}"
        );
        drop(proxy);
        drop(stranger);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
