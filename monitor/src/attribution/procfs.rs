//! Reading processes, their sockets and namespaces from /proc.

use std::{
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use monitor_common::socket::Owner;

/// Numeric entries of /proc: every process.
pub fn pids(proc_root: &Path) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir(proc_root) else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

pub fn netns_file(proc_root: &Path, pid: u32) -> PathBuf {
    proc_root.join(pid.to_string()).join("ns/net")
}

/// The inode of a process's network namespace.
pub fn netns_inode(proc_root: &Path, pid: u32) -> Option<u32> {
    std::fs::metadata(netns_file(proc_root, pid))
        .ok()
        .and_then(|m| u32::try_from(m.ino()).ok())
}

/// Inodes of the sockets a process has open.
pub fn socket_inodes(proc_root: &Path, pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir(proc_root.join(pid.to_string()).join("fd")) else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
        .filter_map(|link| parse_socket_link(&link.to_string_lossy()))
        .collect()
}

/// The inode of the TCP socket `local` -> `remote`, from the socket tables
/// of `pid`'s network namespace (`/proc/PID/net/tcp` and `tcp6`).
pub fn tcp_socket_inode(
    proc_root: &Path,
    pid: u32,
    local: std::net::SocketAddr,
    remote: std::net::SocketAddr,
) -> Option<u32> {
    let dir = proc_root.join(pid.to_string()).join("net");
    ["tcp", "tcp6"].iter().find_map(|table| {
        let text = std::fs::read_to_string(dir.join(table)).ok()?;
        text.lines().skip(1).find_map(|line| {
            let (found_local, found_remote, inode) = parse_tcp_line(line)?;
            (same_endpoint(found_local, local) && same_endpoint(found_remote, remote))
                .then_some(inode)
        })
    })
}

/// Addresses compare equal across IPv4 and IPv4-mapped IPv6.
fn same_endpoint(a: std::net::SocketAddr, b: std::net::SocketAddr) -> bool {
    let canonical = |ip: std::net::IpAddr| match ip {
        std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, std::net::IpAddr::V4),
        v4 => v4,
    };
    a.port() == b.port() && canonical(a.ip()) == canonical(b.ip())
}

/// One row of /proc/net/tcp{,6}: local and remote address, inode. Addresses
/// are the kernel's network-order words printed as native integers.
pub fn parse_tcp_line(line: &str) -> Option<(std::net::SocketAddr, std::net::SocketAddr, u32)> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let address = |field: &str| -> Option<std::net::SocketAddr> {
        let (ip, port) = field.split_once(':')?;
        let port = u16::from_str_radix(port, 16).ok()?;
        let ip = match ip.len() {
            8 => std::net::IpAddr::V4(std::net::Ipv4Addr::from(
                u32::from_str_radix(ip, 16).ok()?.to_ne_bytes(),
            )),
            32 => {
                let mut bytes = [0u8; 16];
                for (i, chunk) in bytes.chunks_mut(4).enumerate() {
                    let word = u32::from_str_radix(ip.get(i * 8..i * 8 + 8)?, 16).ok()?;
                    chunk.copy_from_slice(&word.to_ne_bytes());
                }
                std::net::IpAddr::V6(std::net::Ipv6Addr::from(bytes))
            }
            _ => return None,
        };
        Some(std::net::SocketAddr::new(ip, port))
    };
    Some((
        address(fields.get(1)?)?,
        address(fields.get(2)?)?,
        fields.get(9)?.parse().ok()?,
    ))
}

/// A process's name (`/proc/PID/comm`).
pub fn comm(proc_root: &Path, pid: u32) -> Option<String> {
    std::fs::read_to_string(proc_root.join(pid.to_string()).join("comm"))
        .ok()
        .map(|comm| comm.trim_end().to_string())
}

/// `socket:[12345]` -> 12345.
pub fn parse_socket_link(link: &str) -> Option<u32> {
    link.strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// The owner record for a process found through /proc: the thread is not
/// known, so it is the process itself.
pub fn owner_of(proc_root: &Path, pid: u32, source: u8, role: u8) -> Option<Owner> {
    let dir = proc_root.join(pid.to_string());
    let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
    let start_ticks = super::start_time_ticks(&stat)?;
    let comm = std::fs::read_to_string(dir.join("comm")).ok()?;
    let cgroup_id = std::fs::read_to_string(dir.join("cgroup"))
        .ok()
        .and_then(|text| super::cgroup_path(&text))
        .and_then(|path| cgroup_v2_id(&path));
    let mut owner = Owner {
        tgid: pid,
        tid: pid,
        cgroup_id: cgroup_id.unwrap_or(0),
        start_boottime_ns: start_ticks * super::tick_ns(),
        comm: [0; 16],
        source,
        role,
        process_changes: 0,
        _pad: [0; 5],
    };
    let name = comm.trim_end().as_bytes();
    let len = name.len().min(15);
    owner.comm[..len].copy_from_slice(&name[..len]);
    Some(owner)
}

/// cgroup v2 ids are the inode numbers of the cgroup directories.
fn cgroup_v2_id(path: &str) -> Option<u64> {
    let root = cgroup2_root()?;
    std::fs::metadata(root.join(path.trim_start_matches('/')))
        .ok()
        .map(|m| m.ino())
}

/// The cgroup v2 path whose directory inode is `id` (what
/// `bpf_get_current_cgroup_id` returns), by walking the hierarchy. Bounded;
/// callers cache the answer.
pub fn cgroup_path_by_id(id: u64) -> Option<String> {
    let root = cgroup2_root()?;
    let mut stack = vec![root.to_path_buf()];
    let mut visited = 0usize;
    while let Some(dir) = stack.pop() {
        visited += 1;
        if visited > 200_000 {
            return None;
        }
        if std::fs::metadata(&dir).ok()?.ino() == id {
            let relative = dir.strip_prefix(root).ok()?;
            return Some(format!("/{}", relative.display()));
        }
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(entry.path());
            }
        }
    }
    None
}

/// Where the cgroup v2 hierarchy is mounted: `/sys/fs/cgroup` on unified
/// hosts, `/sys/fs/cgroup/unified` on hybrid ones.
pub fn cgroup2_root() -> Option<&'static Path> {
    static ROOT: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    ROOT.get_or_init(|| {
        let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
        cgroup2_mount(&mounts)
    })
    .as_deref()
}

/// The first cgroup2 mount point in /proc/self/mounts.
pub fn cgroup2_mount(mounts: &str) -> Option<PathBuf> {
    mounts.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let (_device, mount_point, fs_type) = (fields.next()?, fields.next()?, fields.next()?);
        (fs_type == "cgroup2").then(|| PathBuf::from(mount_point))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_cgroup2_mount_on_unified_and_hybrid_hosts() {
        let hybrid = "tmpfs /sys/fs/cgroup tmpfs rw 0 0\ncgroup /sys/fs/cgroup/cpu cgroup rw,cpu 0 0\ncgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n";
        assert_eq!(
            cgroup2_mount(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(
            cgroup2_mount("cgroup2 /sys/fs/cgroup cgroup2 rw 0 0\n"),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
        assert_eq!(cgroup2_mount("proc /proc proc rw 0 0\n"), None);
    }

    #[test]
    fn finds_our_connection_in_proc_net_tcp() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let client =
            std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (local, remote) = (
            client.local_addr().expect("local"),
            client.peer_addr().expect("peer"),
        );
        let inode = tcp_socket_inode(Path::new("/proc"), std::process::id(), local, remote)
            .expect("listed");
        assert!(socket_inodes(Path::new("/proc"), std::process::id()).contains(&inode));
        // v4-mapped v6 spelling of the same endpoints matches too.
        let mapped = |a: std::net::SocketAddr| match a.ip() {
            std::net::IpAddr::V4(v4) => {
                std::net::SocketAddr::new(std::net::IpAddr::V6(v4.to_ipv6_mapped()), a.port())
            }
            _ => a,
        };
        assert_eq!(
            tcp_socket_inode(
                Path::new("/proc"),
                std::process::id(),
                mapped(local),
                mapped(remote)
            ),
            Some(inode)
        );
    }

    #[test]
    fn parses_proc_net_tcp_rows() {
        let v4 = "   1: 0100007F:1F90 0200000A:18EB 01 00000000:00000000 00:00000000 00000000     0        0 4242 1 0000000000000000 20 4 30 10 -1";
        let (local, remote, inode) = parse_tcp_line(v4).expect("row");
        if cfg!(target_endian = "little") {
            assert_eq!(local.to_string(), "127.0.0.1:8080");
            assert_eq!(remote.to_string(), "10.0.0.2:6379");
        }
        assert_eq!(inode, 4242);
        let v6 = "   0: 00000000000000000000000001000000:1F90 0000000000000000FFFF00000200000A:18EB 01 00000000:00000000 00:00000000 00000000     0        0 77 1";
        let (local, remote, _) = parse_tcp_line(v6).expect("row");
        if cfg!(target_endian = "little") {
            assert_eq!(local.to_string(), "[::1]:8080");
            assert_eq!(remote.to_string(), "[::ffff:10.0.0.2]:6379");
        }
        assert_eq!(parse_tcp_line("  sl  local_address rem_address"), None);
    }

    #[test]
    fn parses_socket_links() {
        assert_eq!(parse_socket_link("socket:[4026532]"), Some(4026532));
        assert_eq!(parse_socket_link("pipe:[12]"), None);
        assert_eq!(parse_socket_link("/dev/null"), None);
    }

    #[test]
    fn finds_this_process_and_its_sockets() {
        let proc_root = Path::new("/proc");
        let me = std::process::id();
        assert!(pids(proc_root).contains(&me));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        assert!(!socket_inodes(proc_root, me).is_empty());
        let owner = owner_of(proc_root, me, 4, 0).expect("owner");
        assert_eq!(owner.tgid, me);
        assert_ne!(owner.start_boottime_ns, 0);
        assert!(netns_inode(proc_root, me).is_some());
        drop(listener);
    }
}
