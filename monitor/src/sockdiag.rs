//! TCP sockets from the kernel's sock_diag (netlink inet_diag), in any
//! network namespace.

use std::{io, net::SocketAddr, path::Path};

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_sock_diag::{
    SockDiagMessage,
    constants::{AF_INET, AF_INET6, IPPROTO_TCP, SOCK_DESTROY},
    inet::{ExtensionFlags, InetRequest, SocketId, StateFlags, Timer, nlas::Nla},
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
    /// When the zero-window probe timer (`ICSK_TIME_PROBE0`) fires next, if
    /// it is armed: data is queued that the kernel cannot send.
    pub probe_timer_in: Option<std::time::Duration>,
    /// The send side, from tcp_info.
    pub send: Option<SendState>,
}

/// What tcp_info says about the send side of a socket.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SendState {
    /// Bytes written but not sent yet (`tcpi_notsent_bytes`).
    pub unsent_bytes: u32,
    /// Segments sent and not acknowledged (`tcpi_unacked`).
    pub in_flight: u32,
    /// The peer's advertised receive window, scaled (`tcpi_snd_wnd`).
    pub send_window: u32,
    /// Zero-window or keepalive probes sent without an answer
    /// (`tcpi_probes`: an ACK resets it).
    pub probes_out: u8,
    /// Exponential backoff of the RTO or probe timer (`tcpi_backoff`).
    pub backoff: u8,
    /// The retransmission timeout, microseconds (`tcpi_rto`).
    pub rto_us: u32,
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

/// Appends a filter to a serialized request (the netlink crate has no
/// field for it) and fixes the message length.
fn append_bytecode(request: &mut Vec<u8>, bytecode: &[u8]) {
    if bytecode.is_empty() {
        return;
    }
    // Both lengths fit: a filter is at most MAX_FILTERED_PORTS * 24 bytes.
    let attribute_len = (4 + bytecode.len()) as u16;
    request.extend_from_slice(&attribute_len.to_ne_bytes());
    request.extend_from_slice(&INET_DIAG_REQ_BYTECODE.to_ne_bytes());
    request.extend_from_slice(bytecode);
    let message_len = request.len() as u32;
    request[..4].copy_from_slice(&message_len.to_ne_bytes());
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
    in_open_netns(&file, work).0
}

/// `in_netns` with the namespace already open (`/proc/PID/ns/net`), and
/// the CPU time of the thread that ran `work`, entering the namespace
/// included: it is not the caller's.
pub fn in_open_netns<T: Send>(
    netns: &std::fs::File,
    work: impl FnOnce() -> io::Result<T> + Send,
) -> (io::Result<T>, std::time::Duration) {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                // SAFETY: setns on this thread only, with a valid namespace fd
                // that outlives the call.
                let rc = unsafe {
                    libc::setns(std::os::fd::AsRawFd::as_raw_fd(netns), libc::CLONE_NEWNET)
                };
                let result = if rc != 0 {
                    Err(io::Error::last_os_error())
                } else {
                    work()
                };
                (result, crate::clock::thread_cpu_time())
            })
            .join()
            .unwrap_or_else(|_| {
                (
                    Err(io::Error::other("sock_diag thread panicked")),
                    std::time::Duration::ZERO,
                )
            })
    })
}

fn dump_here() -> io::Result<Vec<DiagSocket>> {
    let mut sockets = dump_family(AF_INET, CONNECTED_STATES, ExtensionFlags::INFO, &[])?;
    sockets.extend(dump_family(
        AF_INET6,
        CONNECTED_STATES,
        ExtensionFlags::INFO,
        &[],
    )?);
    Ok(sockets)
}

/// States in which an application can write and wait: where data can be
/// stuck in the send queue while the connection still lives.
const SENDING_STATES: StateFlags = StateFlags::ESTABLISHED.union(StateFlags::CLOSE_WAIT);

/// The TCP sockets in `netns_file` (or ours) that can hold data waiting to
/// be sent, on one of `ports` at either end (every port when empty),
/// without tcp_info (`with_tcp_info` adds it): the header's timer says
/// which are worth a look. Up to `MAX_FILTERED_PORTS` ports are selected
/// in the kernel (inet_diag bytecode), so a host's other sockets cost no
/// copy; with more, every socket is dumped and the ports are checked here.
pub fn dump_senders(
    netns_file: Option<&Path>,
    ports: &std::collections::BTreeSet<u16>,
) -> io::Result<Vec<DiagSocket>> {
    let filter = port_filter(ports).unwrap_or_default();
    in_netns(netns_file, || {
        let mut sockets = dump_family(AF_INET, SENDING_STATES, ExtensionFlags::empty(), &filter)?;
        sockets.extend(dump_family(
            AF_INET6,
            SENDING_STATES,
            ExtensionFlags::empty(),
            &filter,
        )?);
        Ok(sockets)
    })
    .map(|mut sockets| {
        if !ports.is_empty() {
            sockets.retain(|s| ports.contains(&s.local.port()) || ports.contains(&s.remote.port()));
        }
        sockets
    })
}

/// Ports a kernel-side filter selects; with more, the kernel dumps every
/// socket and the ports are checked here (each socket would run through
/// two comparisons per port in the kernel).
pub const MAX_FILTERED_PORTS: usize = 64;

/// `INET_DIAG_REQ_BYTECODE`, the request attribute that carries a filter.
const INET_DIAG_REQ_BYTECODE: u16 = 1;
/// inet_diag filter ops (`include/uapi/linux/inet_diag.h`).
const INET_DIAG_BC_JMP: u8 = 1;
const INET_DIAG_BC_S_EQ: u8 = 11;
const INET_DIAG_BC_D_EQ: u8 = 12;

/// inet_diag bytecode accepting a socket whose local or remote port is one
/// of `ports`; `None` when there are none or too many. An op is `{code,
/// yes, no}`: the kernel goes `yes` bytes on when the test holds, `no`
/// when not; ending exactly at the end accepts, past it rejects. Its
/// checker follows the `yes` jumps, so every op must be on that chain,
/// which makes an OR what `ss` compiles: each port test (an op and a
/// second op whose `no` holds the port) goes on to a jump to the end
/// when it holds, else to the next test; the last one's miss lands past
/// the end.
pub fn port_filter(ports: &std::collections::BTreeSet<u16>) -> Option<Vec<u8>> {
    if ports.is_empty() || ports.len() > MAX_FILTERED_PORTS {
        return None;
    }
    const TEST: u16 = 8;
    const JUMP: u16 = 4;
    let tests: Vec<(u8, u16)> = ports
        .iter()
        .flat_map(|&port| [(INET_DIAG_BC_S_EQ, port), (INET_DIAG_BC_D_EQ, port)])
        .collect();
    let op = |bytecode: &mut Vec<u8>, code: u8, yes: u16, no: u16| {
        bytecode.push(code);
        bytecode.push(u8::try_from(yes).unwrap_or(u8::MAX));
        bytecode.extend_from_slice(&no.to_ne_bytes());
    };
    let total = u16::try_from(tests.len()).ok()? * (TEST + JUMP) - JUMP;
    let mut bytecode = Vec::with_capacity(usize::from(total));
    for (index, (code, port)) in tests.iter().enumerate() {
        // A miss skips this test and its jump: onto the next test, or for
        // the last, 4 bytes past the end.
        op(&mut bytecode, *code, TEST, TEST + JUMP);
        op(&mut bytecode, 0, 0, *port);
        if index + 1 < tests.len() {
            let to_end = total - u16::try_from(bytecode.len()).ok()?;
            op(&mut bytecode, INET_DIAG_BC_JMP, JUMP, to_end);
        }
    }
    Some(bytecode)
}

fn dump_family(
    family: u8,
    states: StateFlags,
    extensions: ExtensionFlags,
    bytecode: &[u8],
) -> io::Result<Vec<DiagSocket>> {
    let socket_id = if family == AF_INET {
        SocketId::new_v4()
    } else {
        SocketId::new_v6()
    };
    let request = InetRequest {
        family,
        protocol: IPPROTO_TCP,
        extensions,
        states,
        socket_id,
    };
    exchange(NLM_F_REQUEST | NLM_F_DUMP, request, bytecode)
}

/// One socket with its tcp_info, looked up by its addresses and cookie
/// (`None`: it is gone).
pub fn with_tcp_info(socket: &DiagSocket) -> io::Result<Option<DiagSocket>> {
    let mut cookie = [0u8; 8];
    cookie[..4].copy_from_slice(&(socket.cookie as u32).to_ne_bytes());
    cookie[4..].copy_from_slice(&((socket.cookie >> 32) as u32).to_ne_bytes());
    let request = InetRequest {
        family: if socket.local.is_ipv4() {
            AF_INET
        } else {
            AF_INET6
        },
        protocol: IPPROTO_TCP,
        extensions: ExtensionFlags::INFO,
        states: StateFlags::all(),
        socket_id: SocketId {
            source_port: socket.local.port(),
            destination_port: socket.remote.port(),
            source_address: socket.local.ip(),
            destination_address: socket.remote.ip(),
            interface_id: 0,
            cookie,
        },
    };
    match exchange(NLM_F_REQUEST | NLM_F_ACK, request, &[]) {
        Ok(found) => Ok(found.into_iter().next()),
        Err(error) if error.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(error) => Err(error),
    }
}

/// Sends one request and collects the sockets of the answer: a dump's
/// until NLMSG_DONE, a lookup's until its acknowledgement.
fn exchange(flags: u16, request: InetRequest, bytecode: &[u8]) -> io::Result<Vec<DiagSocket>> {
    let mut socket = Socket::new(NETLINK_SOCK_DIAG)?;
    socket.bind_auto()?;
    socket.connect(&NetlinkAddr::new(0, 0))?;
    let mut header = NetlinkHeader::default();
    header.flags = flags;
    let mut request = NetlinkMessage::new(header, SockDiagMessage::InetRequest(request).into());
    request.finalize();
    let mut buffer = vec![0; request.buffer_len()];
    request.serialize(&mut buffer);
    append_bytecode(&mut buffer, bytecode);
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
                            Some(Timer::KeepAlive(expires)) => Some(expires),
                            _ => None,
                        },
                        probe_timer_in: match response.header.timer {
                            Some(Timer::Probe(expires)) => Some(expires),
                            _ => None,
                        },
                        send: info.map(|i| SendState {
                            unsent_bytes: i.notsent_bytes,
                            in_flight: i.unacked,
                            probes_out: i.probes,
                            send_window: i.snd_wnd,
                            backoff: i.backoff,
                            rto_us: i.rto,
                        }),
                    });
                }
                NetlinkPayload::Done(_) => return Ok(sockets),
                // A lookup's acknowledgement.
                NetlinkPayload::Error(error) if error.code.is_none() => return Ok(sockets),
                NetlinkPayload::Error(error) => {
                    return Err(match error.code {
                        Some(code) => io::Error::from_raw_os_error(-code.get()),
                        None => io::Error::other(format!("sock_diag: {error:?}")),
                    });
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

    #[test]
    fn the_port_filter_tests_each_end_and_jumps_to_the_end_on_a_match() {
        let filter = port_filter(&[6379].into()).expect("one port");
        let op = |at: usize| {
            (
                filter[at],
                filter[at + 1],
                u16::from_ne_bytes([filter[at + 2], filter[at + 3]]),
            )
        };
        assert_eq!(filter.len(), 20);
        // Local port 6379: a match goes on to the jump, a miss to the next test.
        assert_eq!(op(0), (INET_DIAG_BC_S_EQ, 8, 12));
        assert_eq!(op(4).2, 6379);
        // The jump from here to the end (accept).
        assert_eq!(op(8), (INET_DIAG_BC_JMP, 4, 12));
        // Remote port: a match ends exactly at the end, a miss 4 bytes past.
        assert_eq!(op(12), (INET_DIAG_BC_D_EQ, 8, 12));
        assert_eq!(op(16).2, 6379);
        assert!(port_filter(&Default::default()).is_none());
        let many: std::collections::BTreeSet<u16> = (1..=65).collect();
        assert!(
            port_filter(&many).is_none(),
            "too many to test in the kernel"
        );
        let most: std::collections::BTreeSet<u16> = (1..=64).collect();
        assert_eq!(port_filter(&most).map(|f| f.len()), Some(128 * 12 - 4));
    }

    /// Needs root, like every kernel-facing test: the kernel accepts the
    /// filter and it selects by either port.
    #[test]
    fn senders_are_filtered_by_port_in_the_kernel() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let client = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        let (_server, _) = listener.accept().expect("accept");
        let client_port = client.local_addr().expect("addr").port();
        let other = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let _unwatched =
            std::net::TcpStream::connect(other.local_addr().expect("addr")).expect("connect");
        let sockets = dump_senders(None, &[port].into()).expect("filtered dump");
        let mut ends: Vec<(u16, u16)> = sockets
            .iter()
            .map(|s| (s.local.port(), s.remote.port()))
            .collect();
        ends.sort();
        let mut expected = vec![(client_port, port), (port, client_port)];
        expected.sort();
        assert_eq!(
            ends, expected,
            "both ends of the watched connection, nothing else"
        );
        let ours = sockets
            .iter()
            .find(|s| s.local.port() == client_port)
            .expect("the client's end");
        assert_eq!(ours.send, None, "no tcp_info in the dump");
        let full = with_tcp_info(ours)
            .expect("lookup")
            .expect("the socket exists");
        assert_eq!(full.cookie, ours.cookie);
        assert!(full.send.is_some(), "tcp_info from the lookup");
        let gone = DiagSocket {
            cookie: ours.cookie.wrapping_add(1),
            ..full.clone()
        };
        assert_eq!(with_tcp_info(&gone).expect("lookup"), None);
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
