//! Addresses as the kernel's records hold them (`Tuple`) to and from
//! `core::net` types: the one place that knows the layout.

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::{
    socket::Tuple,
    tcp::{AF_INET, AF_INET6},
};

/// An address in the wire layout: 16 bytes, an IPv4 address in the first
/// four (network order), anything but `AF_INET6` read as IPv4.
pub fn ip_from_wire(family: u16, bytes: [u8; 16]) -> IpAddr {
    if family == AF_INET6 {
        IpAddr::V6(Ipv6Addr::from(bytes))
    } else {
        IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]))
    }
}

/// `ip` in the wire layout, with its family.
pub fn ip_to_wire(ip: IpAddr) -> (u16, [u8; 16]) {
    match ip {
        IpAddr::V4(v4) => {
            let mut bytes = [0; 16];
            bytes[..4].copy_from_slice(&v4.octets());
            (AF_INET, bytes)
        }
        IpAddr::V6(v6) => (AF_INET6, v6.octets()),
    }
}

impl Tuple {
    /// Our end of the connection.
    pub fn local(&self) -> SocketAddr {
        SocketAddr::new(ip_from_wire(self.family, self.local_addr), self.local_port)
    }

    /// The far end of the connection.
    pub fn remote(&self) -> SocketAddr {
        SocketAddr::new(
            ip_from_wire(self.family, self.remote_addr),
            self.remote_port,
        )
    }

    /// The tuple the kernel would write for these ends (the family is the
    /// local address's), in TCP state `state` and network namespace `netns`.
    pub fn from_addrs(local: SocketAddr, remote: SocketAddr, state: u8, netns: u32) -> Self {
        let (family, local_addr) = ip_to_wire(local.ip());
        let (_, remote_addr) = ip_to_wire(remote.ip());
        Self {
            family,
            local_port: local.port(),
            remote_port: remote.port(),
            state,
            netns,
            local_addr,
            remote_addr,
            ..Self::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_sits_in_the_first_four_bytes_and_round_trips() {
        let local: SocketAddr = "10.0.0.2:40000".parse().expect("addr");
        let remote: SocketAddr = "10.0.1.3:6379".parse().expect("addr");
        let tuple = Tuple::from_addrs(local, remote, 1, 7);
        assert_eq!(tuple.family, AF_INET);
        assert_eq!(tuple.local_addr[..4], [10, 0, 0, 2]);
        assert_eq!(tuple.local_addr[4..], [0; 12]);
        assert_eq!((tuple.local(), tuple.remote()), (local, remote));
        assert_eq!((tuple.state, tuple.netns), (1, 7));
    }

    #[test]
    fn ipv6_round_trips_and_other_families_read_as_ipv4() {
        let local: SocketAddr = "[::1]:40000".parse().expect("addr");
        let remote: SocketAddr = "[::ffff:10.0.1.3]:6379".parse().expect("addr");
        let tuple = Tuple::from_addrs(local, remote, 1, 0);
        assert_eq!(tuple.family, AF_INET6);
        assert_eq!((tuple.local(), tuple.remote()), (local, remote));
        let mut bytes = [0xff; 16];
        bytes[..4].copy_from_slice(&[192, 0, 2, 1]);
        assert_eq!(
            ip_from_wire(0, bytes),
            IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1))
        );
    }
}
