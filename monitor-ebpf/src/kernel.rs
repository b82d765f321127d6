//! Reading kernel memory at offsets the loader resolved from BTF.

use aya_ebpf::helpers::{bpf_probe_read_kernel_buf, generated::bpf_probe_read_kernel};
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

/// Reads a `T` at `base + off`; zero when the offset is absent on this
/// kernel or the read faults (counted). No `Option`: a branch per read on
/// the value multiplies the paths the verifier walks, which older kernels
/// (6.1) prune much less well.
#[inline(always)]
pub fn read<T>(base: *const u8, off: u32) -> T {
    if off == OFFSET_ABSENT {
        // SAFETY: only used for plain integers, for which zero is valid.
        return unsafe { core::mem::zeroed() };
    }
    let mut value = core::mem::MaybeUninit::<T>::uninit();
    // SAFETY: the helper copies through a fault-handling path and fills
    // `value` either way (zeroes on failure); a bad address is an error,
    // never a crash.
    let rc = unsafe {
        bpf_probe_read_kernel(
            value.as_mut_ptr().cast(),
            core::mem::size_of::<T>() as u32,
            base.wrapping_add(off as usize).cast(),
        )
    };
    // A NULL base (e.g. no socket) is not a failed read worth counting.
    if rc != 0 && !base.is_null() {
        count(KERNEL_READ_FAILED, 1);
    }
    // SAFETY: the helper wrote every byte (data or zeroes).
    unsafe { value.assume_init() }
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

/// Loads a `T` at `base + off` without a helper call; zero when the offset
/// is absent on this kernel. Only for a BTF-typed kernel pointer that is
/// never NULL here (the `struct sock *` or `struct sk_buff *` a BTF
/// tracepoint or fexit program received as an argument, or a pointer
/// member loaded from one, like `sk->skc_net`), with `off` inside that
/// struct: the verifier checks such a load against the BTF type (the
/// offset is a constant to it, see `off!`) and the kernel turns a faulting
/// one into zero. A helper read costs a call, on paths that run for every
/// send, receive and retransmit. Fields of the larger `tcp_sock` lie
/// outside `struct sock` and still need `read`.
#[inline(always)]
pub fn load_btf<T>(base: *const u8, off: u32) -> T {
    if off == OFFSET_ABSENT {
        // SAFETY: only used for plain integers, for which zero is valid.
        return unsafe { core::mem::zeroed() };
    }
    // SAFETY: see above; the fields read are naturally aligned integers,
    // and volatile keeps the load at exactly the field's width.
    unsafe { core::ptr::read_volatile(base.wrapping_add(off as usize).cast::<T>()) }
}

/// The socket's protocol is TCP: one load, the first thing every hot hook
/// tests. `sk` as for `load_btf`.
#[inline(always)]
pub fn is_tcp(sk: *const u8) -> bool {
    load_btf::<u16>(sk, off!(sk_protocol)) == IPPROTO_TCP
}

/// The socket is IPv4 or IPv6 (a TCP socket always is; checked after the
/// cheaper tests, for a socket that passed them).
#[inline(always)]
pub fn is_inet(sk: *const u8) -> bool {
    matches!(load_btf::<u16>(sk, off!(skc_family)), AF_INET | AF_INET6)
}

/// The socket's protocol is TCP over IPv4 or IPv6. `sk` as for `load_btf`.
#[inline(always)]
pub fn is_inet_tcp(sk: *const u8) -> bool {
    is_tcp(sk) && is_inet(sk)
}

/// Sixteen bytes at `base + off` (an IPv6 address), as `load_btf` does:
/// four 32-bit loads, each inside the field.
#[inline(always)]
pub fn load_btf_16(base: *const u8, off: u32) -> [u8; 16] {
    let mut bytes = [0u8; 16];
    for (i, chunk) in bytes.chunks_exact_mut(4).enumerate() {
        let word = load_btf::<u32>(base, off.wrapping_add(4 * i as u32));
        chunk.copy_from_slice(&word.to_ne_bytes());
    }
    bytes
}

/// Local and remote port, host order. `sk` as for `load_btf`.
#[inline(always)]
pub fn ports(sk: *const u8) -> (u16, u16) {
    let local = load_btf::<u16>(sk, off!(skc_num));
    let remote = u16::from_be(load_btf::<u16>(sk, off!(skc_dport)));
    (local, remote)
}
