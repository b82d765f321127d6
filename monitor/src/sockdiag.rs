//! TCP sockets from the kernel's sock_diag (netlink inet_diag), in any
//! network namespace.

use std::{io, net::SocketAddr, path::Path};

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_sock_diag::{
    SockDiagMessage,
    constants::{AF_INET, AF_INET6, IPPROTO_TCP, SOCK_DESTROY},
    inet::{ExtensionFlags, InetRequest, SocketId, StateFlags, nlas::Nla},
};
use netlink_sys::{Socket, SocketAddr as NetlinkAddr, protocols::NETLINK_SOCK_DIAG};

/// One TCP socket as sock_diag reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiagSocket {
    /// The kernel's socket cookie (what the kernel programs key on).
    pub cookie: u64,
    pub inode: u32,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub state: u8,
    /// Milliseconds since payload was last sent / received, and since the
    /// last ACK arrived (keepalive probes are ACKed), from tcp_info.
    pub last_data_sent_ms: Option<u32>,
    pub last_data_recv_ms: Option<u32>,
    pub last_ack_recv_ms: Option<u32>,
    /// When the keepalive timer fires next, if it is armed.
    pub keepalive_in: Option<std::time::Duration>,
}

/// `idiag_cookie` is two host-order u32s, low word first.
pub fn cookie_from(bytes: [u8; 8]) -> u64 {
    let low = u32::from_ne_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    let high = u32::from_ne_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
    (u64::from(high) << 32) | u64::from(low)
}

/// States of sockets with a peer. Listening, request and TIME_WAIT sockets
/// are left to the kernel: a busy host holds hundreds of thousands of
/// TIME_WAIT sockets, and none of them can hang a request.
const CONNECTED_STATES: StateFlags = StateFlags::ESTABLISHED
    .union(StateFlags::SYN_SENT)
    .union(StateFlags::FIN_WAIT1)
    .union(StateFlags::FIN_WAIT2)
    .union(StateFlags::CLOSE_WAIT)
    .union(StateFlags::LAST_ACK)
    .union(StateFlags::CLOSING);

/// Every connected TCP socket (IPv4 and IPv6) in the network namespace `netns_file`
/// (e.g. `/proc/PID/ns/net`), or in ours when `None`. Entering a namespace
/// happens on a short-lived thread, so the daemon's own stays unchanged.
pub fn dump_tcp(netns_file: Option<&Path>) -> io::Result<Vec<DiagSocket>> {
    in_netns(netns_file, dump_here)
}

/// The cookie that matches any socket (`INET_DIAG_NOCOOKIE` in both
/// words): the addresses and ports alone select it.
pub const ANY_COOKIE: u64 = u64::MAX;

/// Aborts one TCP socket (sock_diag `SOCK_DESTROY`, what `ss -K` does): the
/// owner's blocked call fails with ECONNABORTED now, instead of when the
/// kernel gives up. The cookie must match, so no other socket can be hit.
pub fn destroy(
    netns_file: Option<&Path>,
    cookie: u64,
    local: SocketAddr,
    remote: SocketAddr,
) -> io::Result<()> {
    in_netns(netns_file, || destroy_here(cookie, local, remote))
}

fn destroy_here(cookie: u64, local: SocketAddr, remote: SocketAddr) -> io::Result<()> {
    let mut socket = Socket::new(NETLINK_SOCK_DIAG)?;
    socket.bind_auto()?;
    socket.connect(&NetlinkAddr::new(0, 0))?;
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_ACK;
    let family = if local.is_ipv4() { AF_INET } else { AF_INET6 };
    let mut cookie_bytes = [0u8; 8];
    cookie_bytes[..4].copy_from_slice(&(cookie as u32).to_ne_bytes());
    cookie_bytes[4..].copy_from_slice(&((cookie >> 32) as u32).to_ne_bytes());
    let socket_id = SocketId {
        source_port: local.port(),
        destination_port: remote.port(),
        source_address: local.ip(),
        destination_address: remote.ip(),
        interface_id: 0,
        cookie: cookie_bytes,
    };
    let mut request = NetlinkMessage::new(
        header,
        SockDiagMessage::InetRequest(InetRequest {
            family,
            protocol: IPPROTO_TCP,
            extensions: ExtensionFlags::empty(),
            states: StateFlags::all(),
            socket_id,
        })
        .into(),
    );
    request.finalize();
    // Same request layout as a lookup; the message type makes it a destroy.
    request.header.message_type = SOCK_DESTROY;
    let mut buffer = vec![0; request.buffer_len()];
    request.serialize(&mut buffer);
    socket.send(&buffer, 0)?;
    let mut receive = vec![0u8; 8192];
    let size = socket.recv(&mut &mut receive[..], 0)?;
    let reply = NetlinkMessage::<SockDiagMessage>::deserialize(&receive[..size])
        .map_err(|error| io::Error::new(io::ErrorKind::InvalidData, error.to_string()))?;
    match reply.payload {
        NetlinkPayload::Error(error) => match error.code {
            None => Ok(()),
            Some(code) => Err(io::Error::from_raw_os_error(-code.get())),
        },
        other => Err(io::Error::other(format!(
            "unexpected sock_diag reply {other:?}"
        ))),
    }
}

/// Runs `work` with this thread's network namespace switched to
/// `netns_file`, on a short-lived thread so the daemon's own threads stay
/// where they are.
pub fn in_netns<T: Send>(
    netns_file: Option<&Path>,
    work: impl FnOnce() -> io::Result<T> + Send,
) -> io::Result<T> {
    let Some(netns_file) = netns_file else {
        return work();
    };
    let file = std::fs::File::open(netns_file)?;
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                // SAFETY: setns on this thread only, with a valid namespace fd
                // that outlives the call.
                let rc = unsafe {
                    libc::setns(std::os::fd::AsRawFd::as_raw_fd(&file), libc::CLONE_NEWNET)
                };
                if rc != 0 {
                    return Err(io::Error::last_os_error());
                }
                work()
            })
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("sock_diag thread panicked")))
    })
}

fn dump_here() -> io::Result<Vec<DiagSocket>> {
    let mut sockets = dump_family(AF_INET)?;
    sockets.extend(dump_family(AF_INET6)?);
    Ok(sockets)
}

fn dump_family(family: u8) -> io::Result<Vec<DiagSocket>> {
    let mut socket = Socket::new(NETLINK_SOCK_DIAG)?;
    socket.bind_auto()?;
    socket.connect(&NetlinkAddr::new(0, 0))?;
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    let socket_id = if family == AF_INET {
        SocketId::new_v4()
    } else {
        SocketId::new_v6()
    };
    let mut request = NetlinkMessage::new(
        header,
        SockDiagMessage::InetRequest(InetRequest {
            family,
            protocol: IPPROTO_TCP,
            extensions: ExtensionFlags::INFO,
            states: CONNECTED_STATES,
            socket_id,
        })
        .into(),
    );
    request.finalize();
    let mut buffer = vec![0; request.buffer_len()];
    request.serialize(&mut buffer);
    socket.send(&buffer, 0)?;

    let mut sockets = Vec::new();
    let mut receive = vec![0u8; 1 << 16];
    // Bounded: a dump ends with NLMSG_DONE; the cap guards a broken stream.
    for _ in 0..1_000_000 {
        let size = socket.recv(&mut &mut receive[..], 0)?;
        let mut offset = 0;
        while offset < size {
            let message = NetlinkMessage::<SockDiagMessage>::deserialize(&receive[offset..size])
                .map_err(|error| io::Error::new(io::ErrorKind::InvalidData, error.to_string()))?;
            let length = message.header.length as usize;
            match message.payload {
                NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(response)) => {
                    let id = &response.header.socket_id;
                    let info = response.nlas.iter().find_map(|nla| match nla {
                        Nla::TcpInfo(info) => Some(info),
                        _ => None,
                    });
                    sockets.push(DiagSocket {
                        cookie: cookie_from(id.cookie),
                        inode: response.header.inode,
                        local: SocketAddr::new(id.source_address, id.source_port),
                        remote: SocketAddr::new(id.destination_address, id.destination_port),
                        state: response.header.state,
                        last_data_sent_ms: info.map(|i| i.last_data_sent),
                        last_data_recv_ms: info.map(|i| i.last_data_recv),
                        last_ack_recv_ms: info.map(|i| i.last_ack_recv),
                        keepalive_in: match response.header.timer {
                            Some(netlink_packet_sock_diag::inet::Timer::KeepAlive(expires)) => {
                                Some(expires)
                            }
                            _ => None,
                        },
                    });
                }
                NetlinkPayload::Done(_) => return Ok(sockets),
                NetlinkPayload::Error(error) => {
                    return Err(io::Error::other(format!("sock_diag: {error:?}")));
                }
                _ => {}
            }
            if length == 0 {
                break;
            }
            offset += length;
        }
    }
    Ok(sockets)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookie_words_combine_low_first() {
        let mut bytes = [0u8; 8];
        bytes[..4].copy_from_slice(&7u32.to_ne_bytes());
        bytes[4..].copy_from_slice(&1u32.to_ne_bytes());
        assert_eq!(cookie_from(bytes), (1 << 32) | 7);
    }

    /// Needs root (sock_diag dumps of other users' sockets) like every
    /// kernel-facing test; the suite runs as root.
    #[test]
    fn dumps_a_connection_of_ours_but_not_its_listener() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let client = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        let client_port = client.local_addr().expect("addr").port();
        let sockets = dump_tcp(None).expect("sock_diag dump");
        let ours = sockets
            .iter()
            .find(|s| s.local.port() == client_port && s.remote.port() == port)
            .expect("our connection is listed");
        assert_ne!(ours.cookie, 0);
        assert_ne!(ours.inode, 0);
        assert!(
            !sockets
                .iter()
                .any(|s| s.local.port() == port && s.remote.port() == 0),
            "listening sockets are not dumped"
        );
        let in_namespace = dump_tcp(Some(Path::new("/proc/self/ns/net"))).expect("dump via setns");
        assert!(in_namespace.iter().any(|s| s.cookie == ours.cookie));
    }
}

#[cfg(test)]
mod destroy_tests {
    use std::io::Read;

    use super::*;

    /// Needs root (SOCK_DESTROY wants CAP_NET_ADMIN), like every kernel test.
    #[test]
    fn destroying_a_socket_fails_its_blocked_reader_now() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let mut client =
            std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (_server, _) = listener.accept().expect("accept");
        let local = client.local_addr().expect("local");
        let remote = client.peer_addr().expect("peer");
        let socket = dump_tcp(None)
            .expect("dump")
            .into_iter()
            .find(|s| s.local == local && s.remote == remote)
            .expect("our client socket is listed");
        // A wrong cookie must not touch it.
        assert!(destroy(None, socket.cookie.wrapping_add(1), local, remote).is_err());
        destroy(None, socket.cookie, local, remote).expect("SOCK_DESTROY");
        let mut buffer = [0u8; 8];
        let error = client.read(&mut buffer).expect_err("the read fails");
        assert_eq!(error.raw_os_error(), Some(libc::ECONNABORTED), "{error}");
    }
}
