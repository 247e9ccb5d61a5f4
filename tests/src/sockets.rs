//! Which sockets a process holds, from Linux's /proc.
//!
//! A process's sockets are the `socket:[inode]` links in `/proc/<pid>/fd`;
//! their state is in `/proc/net/{tcp,tcp6,udp,udp6,unix}` (the network
//! namespace's tables), matched by inode. Used to prove the worker listens
//! on nothing.

use std::collections::HashSet;

/// One socket the process holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketInfo {
    /// `tcp`, `tcp6`, `udp`, `udp6` or `unix`.
    pub table: &'static str,
    /// Local address field as /proc shows it (hex), or the unix path.
    pub local: String,
    /// True for a TCP socket in LISTEN state, any UDP socket (which
    /// receives unsolicited datagrams), or a listening unix socket.
    pub accepts_inbound: bool,
}

/// Every socket inode open in process `pid`.
///
/// # Errors
/// /proc cannot be read (not Linux, or the process is gone).
pub fn socket_inodes(pid: u32) -> std::io::Result<HashSet<u64>> {
    let mut inodes = HashSet::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd"))? {
        let Ok(target) = std::fs::read_link(entry?.path()) else {
            continue;
        };
        let text = target.to_string_lossy();
        if let Some(inode) = text
            .strip_prefix("socket:[")
            .and_then(|s| s.strip_suffix(']'))
            .and_then(|s| s.parse().ok())
        {
            inodes.insert(inode);
        }
    }
    Ok(inodes)
}

/// The sockets of process `pid`, with whether each accepts inbound traffic.
///
/// # Errors
/// /proc cannot be read.
pub fn sockets_of(pid: u32) -> std::io::Result<Vec<SocketInfo>> {
    let inodes = socket_inodes(pid)?;
    let mut found = Vec::new();
    for table in ["tcp", "tcp6", "udp", "udp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 10 {
                continue;
            }
            let Ok(inode) = fields[9].parse::<u64>() else {
                continue;
            };
            if !inodes.contains(&inode) {
                continue;
            }
            let listening = table.starts_with("udp") || fields[3] == "0A";
            found.push(SocketInfo {
                table,
                local: fields[1].to_string(),
                accepts_inbound: listening,
            });
        }
    }
    let unix = std::fs::read_to_string(format!("/proc/{pid}/net/unix")).unwrap_or_default();
    for line in unix.lines().skip(1) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 7 {
            continue;
        }
        let Ok(inode) = fields[6].parse::<u64>() else {
            continue;
        };
        if !inodes.contains(&inode) {
            continue;
        }
        // Flags 00010000 is __SO_ACCEPTCON: the socket is listening.
        let flags = u32::from_str_radix(fields[3], 16).unwrap_or(0);
        found.push(SocketInfo {
            table: "unix",
            local: fields.get(7).unwrap_or(&"").to_string(),
            accepts_inbound: flags & 0x0001_0000 != 0,
        });
    }
    Ok(found)
}
