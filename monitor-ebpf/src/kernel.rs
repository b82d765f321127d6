//! Reading kernel memory at offsets the loader resolved from BTF.

use aya_ebpf::helpers::{bpf_probe_read_kernel, bpf_probe_read_kernel_buf};
use monitor_common::{
    counters::KERNEL_READ_FAILED,
    globals::OFFSET_ABSENT,
    tcp::{AF_INET, AF_INET6, IPPROTO_TCP},
};

use crate::maps::count;

/// Reads one loader-set offset. Volatile so the compiler cannot fold the
/// compile-time placeholder in; the verifier still sees a constant, because
/// the loader freezes the globals' map.
macro_rules! off {
    ($field:ident) => {
        // SAFETY: OFFSETS is a live static; the read is a plain load.
        unsafe { core::ptr::read_volatile(&raw const $crate::maps::OFFSETS.$field) }
    };
}
pub(crate) use off;

/// Reads one loader-set setting (see `off!`).
macro_rules! setting {
    ($field:ident) => {
        // SAFETY: SETTINGS is a live static; the read is a plain load.
        unsafe { core::ptr::read_volatile(&raw const $crate::maps::SETTINGS.$field) }
    };
}
pub(crate) use setting;

/// Reads a `T` at `base + off`; `None` when the offset is absent on this
/// kernel or the read faults (counted).
#[inline(always)]
pub fn read<T>(base: *const u8, off: u32) -> Option<T> {
    if off == OFFSET_ABSENT || base.is_null() {
        return None;
    }
    // SAFETY: bpf_probe_read_kernel copies through a fault-handling helper;
    // a bad address yields an error, never a crash.
    match unsafe { bpf_probe_read_kernel(base.wrapping_add(off as usize).cast::<T>()) } {
        Ok(value) => Some(value),
        Err(_) => {
            count(KERNEL_READ_FAILED, 1);
            None
        }
    }
}

/// Reads `dst.len()` bytes at `base + off`, leaving `dst` zeroed on failure.
#[inline(always)]
pub fn read_bytes(base: *const u8, off: u32, dst: &mut [u8]) {
    if off == OFFSET_ABSENT || base.is_null() {
        return;
    }
    // SAFETY: as in `read`.
    if unsafe { bpf_probe_read_kernel_buf(base.wrapping_add(off as usize), dst) }.is_err() {
        count(KERNEL_READ_FAILED, 1);
    }
}

/// The socket's protocol is TCP over IPv4 or IPv6.
#[inline(always)]
pub fn is_inet_tcp(sk: *const u8) -> bool {
    if read::<u16>(sk, off!(sk_protocol)) != Some(IPPROTO_TCP) {
        return false;
    }
    matches!(read::<u16>(sk, off!(skc_family)), Some(AF_INET | AF_INET6))
}

/// Local and remote port, host order.
#[inline(always)]
pub fn ports(sk: *const u8) -> (u16, u16) {
    let local = read::<u16>(sk, off!(skc_num)).unwrap_or(0);
    let remote = u16::from_be(read::<u16>(sk, off!(skc_dport)).unwrap_or(0));
    (local, remote)
}
