//! The userspace socket table: what connmon knows about each watched socket
//! across its events, keyed by the kernel's socket cookie.
//!
//! The kernel clears a socket's local port when it unhashes it on close, so
//! the last events of a connection (CLOSE, ETIMEDOUT, destroy) carry an
//! incomplete tuple. The table remembers the full one and fills it in.
//! Likewise a socket whose kernel entry was evicted and re-created mid-life
//! (a full socket map) no longer knows whether it connected or accepted:
//! the table remembers its role, or, for a socket it never saw connect or
//! accept, infers it from which end uses a watched port.
//!
//! An entry normally goes at the socket's destroy event. When that record
//! is lost (a full ring buffer), the entry is forgotten after it has been
//! silent as long as the detector's episodes are, so no loss leaks memory.

// Keys are kernel cookies, not attacker-chosen input: a fast hasher is
// safe here and the table is on the per-event path.
use std::{collections::BTreeSet, net::SocketAddr};

use monitor_common::{
    socket::role_from_watched_ports,
    user::{ip_from_wire, ip_to_wire},
};
use rustc_hash::FxHashMap;

use crate::event::{Connection, EventKind, Role, SocketEvent};

/// Default bound on remembered sockets.
pub const DEFAULT_CAPACITY: usize = 262_144;

/// One entry per watched socket, so kept small: a `Connection` of two
/// `SocketAddr`s takes 72 bytes, this 56 with the rest of the entry.
#[derive(Debug)]
struct Known {
    local_ip: [u8; 16],
    remote_ip: [u8; 16],
    last_event_ns: u64,
    netns: u32,
    local_port: u16,
    remote_port: u16,
    family: u16,
    role: Role,
}

impl Known {
    fn new(connection: &Connection, role: Role, last_event_ns: u64) -> Self {
        let mut known = Self {
            local_ip: [0; 16],
            remote_ip: [0; 16],
            last_event_ns,
            netns: 0,
            local_port: 0,
            remote_port: 0,
            family: 0,
            role,
        };
        known.set_connection(connection);
        known
    }

    fn set_connection(&mut self, connection: &Connection) {
        (self.family, self.local_ip) = ip_to_wire(connection.local.ip());
        (_, self.remote_ip) = ip_to_wire(connection.remote.ip());
        self.local_port = connection.local.port();
        self.remote_port = connection.remote.port();
        self.netns = connection.netns;
    }

    fn connection(&self) -> Connection {
        let address =
            |bytes: [u8; 16], port: u16| SocketAddr::new(ip_from_wire(self.family, bytes), port);
        Connection {
            local: address(self.local_ip, self.local_port),
            remote: address(self.remote_ip, self.remote_port),
            netns: self.netns,
        }
    }
}
const _: () = assert!(size_of::<Known>() <= 56);

#[derive(Debug)]
pub struct SocketTable {
    connections: FxHashMap<u64, Known>,
    capacity: usize,
    /// Watched ports, to infer a role the kernel did not see; empty when
    /// every port is watched (then nothing can be inferred).
    watched_ports: BTreeSet<u16>,
    /// Sockets not remembered because the table was full.
    pub overflowed: u64,
    /// Entries forgotten after silence (their destroy record never came).
    pub forgotten: u64,
}

impl SocketTable {
    pub fn new(capacity: usize) -> Self {
        Self {
            connections: FxHashMap::default(),
            capacity,
            watched_ports: BTreeSet::new(),
            overflowed: 0,
            forgotten: 0,
        }
    }

    /// Infers the role of sockets first seen mid-life from these ports: the
    /// end on a watched port is the server.
    pub fn with_watched_ports(mut self, ports: BTreeSet<u16>) -> Self {
        self.watched_ports = ports;
        self
    }

    fn inferred_role(&self, connection: &Connection) -> Role {
        let tag = role_from_watched_ports(
            self.watched_ports.contains(&connection.local.port()),
            self.watched_ports.contains(&connection.remote.port()),
        );
        Role::try_from(tag).unwrap_or(Role::Unknown)
    }

    /// Forgets sockets silent for `silent_ns` up to `now_ns`; returns how
    /// many.
    pub fn expire(&mut self, now_ns: u64, silent_ns: u64) -> usize {
        let before = self.connections.len();
        self.connections
            .retain(|_, known| now_ns.saturating_sub(known.last_event_ns) < silent_ns);
        let forgotten = before - self.connections.len();
        self.forgotten += forgotten as u64;
        forgotten
    }

    /// Completes `event`'s connection from what is known, learns from it, and
    /// forgets the socket on its last event.
    pub fn observe(&mut self, event: &mut SocketEvent) {
        let complete = event.connection.local.port() != 0 && event.connection.remote.port() != 0;
        if let Some(known) = self.connections.get_mut(&event.cookie) {
            known.last_event_ns = known.last_event_ns.max(event.timestamp_ns);
            if event.role == Role::Unknown {
                event.role = known.role;
            } else {
                known.role = event.role;
            }
            if complete {
                known.set_connection(&event.connection);
            } else {
                event.connection = known.connection();
            }
        } else if complete {
            if event.role == Role::Unknown {
                event.role = self.inferred_role(&event.connection);
            }
            if self.connections.len() < self.capacity {
                self.connections.insert(
                    event.cookie,
                    Known::new(&event.connection, event.role, event.timestamp_ns),
                );
            } else {
                self.overflowed += 1;
            }
        }
        if matches!(event.kind, EventKind::Destroyed { .. }) {
            self.connections.remove(&event.cookie);
        }
    }

    /// The role the kernel's events gave a socket, if it is known.
    pub fn role(&self, cookie: u64) -> Option<Role> {
        self.connections
            .get(&cookie)
            .map(|known| known.role)
            .filter(|role| *role != Role::Unknown)
    }

    pub fn len(&self) -> usize {
        self.connections.len()
    }

    pub fn is_empty(&self) -> bool {
        self.connections.is_empty()
    }
}

impl Default for SocketTable {
    fn default() -> Self {
        Self::new(DEFAULT_CAPACITY)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Role;

    fn event(cookie: u64, kind: EventKind, local: &str, remote: &str) -> SocketEvent {
        SocketEvent::unowned(cookie, kind, local, remote)
    }

    #[test]
    fn fills_the_port_the_kernel_cleared_on_close_and_forgets_at_destroy() {
        let mut table = SocketTable::default();
        let mut established = event(
            7,
            EventKind::ResetReceived,
            "10.0.0.1:40000",
            "10.0.0.2:6379",
        );
        table.observe(&mut established);
        let mut error = event(
            7,
            EventKind::SocketError { errno: 110 },
            "10.0.0.1:0",
            "10.0.0.2:6379",
        );
        table.observe(&mut error);
        assert_eq!(error.connection.local.to_string(), "10.0.0.1:40000");
        let mut destroyed = event(
            7,
            EventKind::Destroyed {
                errno: 0,
                total_retrans_low: 0,
            },
            "10.0.0.1:0",
            "10.0.0.2:6379",
        );
        table.observe(&mut destroyed);
        assert_eq!(destroyed.connection.local.port(), 40000);
        assert!(table.is_empty());
    }

    #[test]
    fn connections_come_back_as_they_went_in() {
        for (local, remote) in [
            ("10.0.0.1:40000", "10.0.0.2:6379"),
            ("[2001:db8::1]:40000", "[2001:db8::2]:6379"),
            ("[::ffff:10.0.0.1]:40000", "[::ffff:10.0.0.2]:6379"),
        ] {
            let mut table = SocketTable::default();
            let mut first = event(3, EventKind::ResetSent, local, remote);
            first.connection.netns = 4026531840;
            table.observe(&mut first);
            let mut cleared = first.clone();
            cleared.connection.local.set_port(0);
            table.observe(&mut cleared);
            assert_eq!(cleared.connection, first.connection);
        }
        assert_eq!(std::mem::size_of::<Known>(), 56);
    }

    #[test]
    fn a_full_table_counts_instead_of_growing() {
        let mut table = SocketTable::new(1);
        table.observe(&mut event(
            1,
            EventKind::ResetSent,
            "10.0.0.1:1",
            "10.0.0.2:2",
        ));
        table.observe(&mut event(
            2,
            EventKind::ResetSent,
            "10.0.0.1:3",
            "10.0.0.2:4",
        ));
        assert_eq!((table.len(), table.overflowed), (1, 1));
    }

    #[test]
    fn a_socket_recreated_in_the_kernel_keeps_its_role() {
        let mut table = SocketTable::default();
        let mut connected = event(9, EventKind::ResetSent, "10.0.0.1:40000", "10.0.0.2:6379");
        table.observe(&mut connected);
        // Evicted from the kernel map and seen again on a send: the kernel
        // no longer knows the role.
        let mut later = event(9, EventKind::ResetSent, "10.0.0.1:40000", "10.0.0.2:6379");
        later.role = Role::Unknown;
        table.observe(&mut later);
        assert_eq!(later.role, Role::Client);
        // A socket never seen before stays unknown without watched ports...
        let mut stranger = event(10, EventKind::ResetSent, "10.0.0.1:40001", "10.0.0.2:6379");
        stranger.role = Role::Unknown;
        table.observe(&mut stranger);
        assert_eq!(stranger.role, Role::Unknown);
    }

    #[test]
    fn the_end_on_a_watched_port_is_the_server() {
        let mut table = SocketTable::default().with_watched_ports(BTreeSet::from([6379]));
        for (cookie, local, remote, role) in [
            (1, "10.0.0.1:40001", "10.0.0.2:6379", Role::Client),
            (2, "10.0.0.2:6379", "10.0.0.1:40001", Role::Server),
            (3, "10.0.0.2:6379", "10.0.0.1:6379", Role::Unknown),
        ] {
            let mut seen = event(cookie, EventKind::ResetSent, local, remote);
            seen.role = Role::Unknown;
            table.observe(&mut seen);
            assert_eq!(seen.role, role, "{local} -> {remote}");
        }
    }

    #[test]
    fn silent_entries_are_forgotten_when_their_destroy_never_comes() {
        let mut table = SocketTable::default();
        let mut old = event(1, EventKind::ResetSent, "10.0.0.1:1", "10.0.0.2:2");
        old.timestamp_ns = 1_000;
        table.observe(&mut old);
        let mut recent = event(2, EventKind::ResetSent, "10.0.0.1:3", "10.0.0.2:4");
        recent.timestamp_ns = 9_000;
        table.observe(&mut recent);
        assert_eq!(table.expire(10_000, 5_000), 1);
        assert_eq!((table.len(), table.forgotten), (1, 1));
    }
}
