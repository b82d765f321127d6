//! The userspace side of the wire types: conversions to std types, and
//! aya's `Pod` for the loader. The kernel programs never compile this.

mod net;
#[cfg(feature = "user")]
mod pod;

pub use net::{ip_from_wire, ip_to_wire};
