//! Kernel struct offsets from the running kernel's BTF.
//!
//! The programs read `struct sock`, `struct net`, `struct sk_buff` and
//! `struct task_struct` fields at offsets resolved here, so one object runs
//! on every kernel with BTF, without per-kernel builds or CO-RE.

use std::path::Path;

use btf_rs::{Btf, Type};
use monitor_common::globals::{KernelOffsets, OFFSET_ABSENT};

use super::CaptureError;

/// Where a field sits: byte offset, plus bit position and width when it is a
/// bitfield.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FieldOffset {
    pub byte: u32,
    pub bit_shift: u32,
    pub bit_size: Option<u32>,
}

/// Parsed kernel BTF with member lookups by dotted path.
pub struct KernelBtf {
    btf: Btf,
}

impl KernelBtf {
    pub fn from_file(path: &Path) -> Result<Self, CaptureError> {
        let btf = Btf::from_file(path).map_err(|source| CaptureError::Btf {
            path: path.to_path_buf(),
            reason: source.to_string(),
        })?;
        Ok(Self { btf })
    }

    /// Offset of `path` (e.g. `__sk_common.skc_net`) inside struct `name`,
    /// looking through anonymous structs and unions.
    pub fn field(&self, name: &str, path: &str) -> Option<FieldOffset> {
        let root = self.struct_named(name)?;
        let mut current = root;
        let mut bits = 0u32;
        let mut last = None;
        for part in path.split('.') {
            let (member_bits, member) = self.find_member(&current, part)?;
            bits += member_bits;
            last = Some(member.clone());
            if let Some(next) = self.member_struct(&member) {
                current = next;
            }
        }
        let member = last?;
        let bit_size = member.bitfield_size().filter(|size| *size != 0);
        Some(FieldOffset {
            byte: bits / 8,
            bit_shift: bits % 8,
            bit_size,
        })
    }

    /// Number of arguments the BTF-enabled tracepoint `name` passes (its
    /// `btf_trace_<name>` prototype, minus the leading context pointer).
    pub fn tracepoint_args(&self, name: &str) -> Option<usize> {
        let types = self
            .btf
            .resolve_types_by_name(&format!("btf_trace_{name}"))
            .ok()?;
        for ty in types {
            for chained in self.btf.chained_type_iter(ty.as_btf_type()?) {
                if let Type::FuncProto(proto) = chained {
                    return Some(proto.parameters.len().saturating_sub(1));
                }
            }
        }
        None
    }

    /// Number of parameters of the kernel function `name`, when its BTF
    /// says (the attach target of an fentry/fexit program).
    pub fn function_args(&self, name: &str) -> Option<usize> {
        let types = self.btf.resolve_types_by_name(name).ok()?;
        for ty in types {
            if !matches!(ty, Type::Func(_)) {
                continue;
            }
            for chained in self.btf.chained_type_iter(ty.as_btf_type()?) {
                if let Type::FuncProto(proto) = chained {
                    return Some(proto.parameters.len());
                }
            }
        }
        None
    }

    fn struct_named(&self, name: &str) -> Option<btf_rs::Struct> {
        self.btf
            .resolve_types_by_name(name)
            .ok()?
            .into_iter()
            .find_map(|ty| match ty {
                Type::Struct(s) if !s.members.is_empty() => Some(s),
                _ => None,
            })
    }

    /// Finds `name` among `parent`'s members, descending into anonymous
    /// members; returns its bit offset from the start of `parent`.
    fn find_member(&self, parent: &btf_rs::Struct, name: &str) -> Option<(u32, btf_rs::Member)> {
        for member in &parent.members {
            let member_name = self.btf.resolve_name(member).unwrap_or_default();
            if member_name == name {
                return Some((member.bit_offset(), member.clone()));
            }
            if member_name.is_empty()
                && let Some(inner) = self.member_struct(member)
                && let Some((bits, found)) = self.find_member(&inner, name)
            {
                return Some((member.bit_offset() + bits, found));
            }
        }
        None
    }

    /// The struct or union a member's type resolves to, through typedefs and
    /// qualifiers.
    fn member_struct(&self, member: &btf_rs::Member) -> Option<btf_rs::Struct> {
        for ty in self.btf.chained_type_iter(member) {
            match ty {
                Type::Struct(s) | Type::Union(s) => return Some(s),
                Type::Typedef(_)
                | Type::Volatile(_)
                | Type::Const(_)
                | Type::Restrict(_)
                | Type::TypeTag(_) => continue,
                // Pointers, arrays and scalars end the walk: the field is the value.
                _ => return None,
            }
        }
        None
    }
}

/// A field the programs read, and whether connmon can run without it.
struct Wanted {
    structure: &'static str,
    path: &'static str,
    required: bool,
}

/// Resolves every offset the programs use. A missing required field is an
/// error naming it; a missing optional one is left absent (the programs
/// skip it) and listed in the returned warnings.
pub fn resolve(btf: &KernelBtf) -> Result<(KernelOffsets, Vec<String>), CaptureError> {
    let mut offsets = KernelOffsets::ABSENT;
    let mut warnings = Vec::new();
    let mut take = |wanted: Wanted, slot: &mut u32| -> Result<Option<FieldOffset>, CaptureError> {
        match btf.field(wanted.structure, wanted.path) {
            Some(field) => {
                *slot = field.byte;
                Ok(Some(field))
            }
            None if wanted.required => Err(CaptureError::MissingKernelField {
                field: format!("{}.{}", wanted.structure, wanted.path),
            }),
            None => {
                *slot = OFFSET_ABSENT;
                warnings.push(format!("{}.{}", wanted.structure, wanted.path));
                Ok(None)
            }
        }
    };
    let req = |structure, path| Wanted {
        structure,
        path,
        required: true,
    };
    let opt = |structure, path| Wanted {
        structure,
        path,
        required: false,
    };

    take(
        req("sock", "__sk_common.skc_family"),
        &mut offsets.skc_family,
    )?;
    take(req("sock", "__sk_common.skc_state"), &mut offsets.skc_state)?;
    take(req("sock", "__sk_common.skc_num"), &mut offsets.skc_num)?;
    take(req("sock", "__sk_common.skc_dport"), &mut offsets.skc_dport)?;
    take(req("sock", "__sk_common.skc_daddr"), &mut offsets.skc_daddr)?;
    take(
        req("sock", "__sk_common.skc_rcv_saddr"),
        &mut offsets.skc_rcv_saddr,
    )?;
    take(
        opt("sock", "__sk_common.skc_v6_daddr"),
        &mut offsets.skc_v6_daddr,
    )?;
    take(
        opt("sock", "__sk_common.skc_v6_rcv_saddr"),
        &mut offsets.skc_v6_rcv_saddr,
    )?;
    take(req("sock", "__sk_common.skc_net"), &mut offsets.skc_net)?;
    take(req("sock", "sk_protocol"), &mut offsets.sk_protocol)?;
    take(opt("sock", "sk_err"), &mut offsets.sk_err)?;
    take(req("net", "ns.inum"), &mut offsets.net_ns_inum)?;
    take(
        opt("net", "ipv4.sysctl_tcp_retries2"),
        &mut offsets.net_tcp_retries2,
    )?;
    take(opt("tcp_sock", "snd_una"), &mut offsets.tcp_snd_una)?;
    take(
        opt("inet_connection_sock", "icsk_retransmits"),
        &mut offsets.icsk_retransmits,
    )?;
    take(
        opt("inet_connection_sock", "icsk_backoff"),
        &mut offsets.icsk_backoff,
    )?;
    take(
        opt("inet_connection_sock", "icsk_user_timeout"),
        &mut offsets.icsk_user_timeout,
    )?;
    if let Some(field) = take(
        opt("inet_connection_sock", "icsk_ca_state"),
        &mut offsets.icsk_ca_state_byte,
    )? {
        offsets.icsk_ca_state_shift = field.bit_shift;
        offsets.icsk_ca_state_bits = field.bit_size.unwrap_or(8);
    }
    take(opt("sk_buff", "cb"), &mut offsets.skb_cb)?;
    take(
        opt("tcp_skb_cb", "tcp_gso_segs"),
        &mut offsets.tcp_skb_cb_gso_segs,
    )?;
    take(
        opt("task_struct", "group_leader"),
        &mut offsets.task_group_leader,
    )?;
    take(
        opt("task_struct", "start_boottime"),
        &mut offsets.task_start_boottime,
    )?;
    take(opt("task_struct", "comm"), &mut offsets.task_comm)?;
    take(opt("tcp_sock", "rcv_tstamp"), &mut offsets.tcp_rcv_tstamp)?;
    take(
        opt("inet_connection_sock", "icsk_ack.lrcvtime"),
        &mut offsets.icsk_ack_lrcvtime,
    )?;
    take(opt("sock", "sk_bpf_storage"), &mut offsets.sk_bpf_storage)?;
    take(opt("sock", "sk_cgrp_data.cgroup"), &mut offsets.sk_cgroup)?;
    take(opt("cgroup", "kn"), &mut offsets.cgroup_kn)?;
    take(opt("kernfs_node", "id"), &mut offsets.kernfs_node_id)?;
    take(opt("sock", "__sk_common.skc_hash"), &mut offsets.skc_hash)?;
    take(
        opt("tcp_sock", "total_retrans"),
        &mut offsets.tcp_total_retrans,
    )?;
    take(
        opt("sock", "__sk_common.skc_cookie"),
        &mut offsets.skc_cookie,
    )?;
    take(opt("tcp_sock", "write_seq"), &mut offsets.tcp_write_seq)?;
    take(opt("tcp_sock", "snd_nxt"), &mut offsets.tcp_snd_nxt)?;
    take(opt("tcp_sock", "snd_wnd"), &mut offsets.tcp_snd_wnd)?;
    take(
        opt("inet_connection_sock", "icsk_probes_out"),
        &mut offsets.icsk_probes_out,
    )?;
    Ok((offsets, warnings))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs against this machine's own BTF when it has one: the offsets must
    /// be plausible and internally consistent on any kernel.
    #[test]
    fn resolves_socket_fields_from_the_running_kernel() {
        let path = Path::new("/sys/kernel/btf/vmlinux");
        let btf = KernelBtf::from_file(path).expect("this machine has kernel BTF");
        let (offsets, _warnings) = resolve(&btf).expect("required fields resolve");
        // struct sock starts with struct sock_common: the addresses come first.
        assert!(offsets.skc_daddr < offsets.skc_family);
        assert!(offsets.skc_num < 64 && offsets.skc_dport < 64);
        assert!(offsets.sk_protocol > offsets.skc_net);
        // tcp_sock embeds inet_connection_sock which embeds the sock.
        assert!(offsets.tcp_snd_una > offsets.icsk_retransmits);
        assert!(offsets.icsk_ca_state_bits >= 1 && offsets.icsk_ca_state_bits <= 8);
        assert_ne!(offsets.task_comm, OFFSET_ABSENT);
        // Socket-local storage and the socket's cgroup, found through the
        // embedded `sk_cgrp_data`.
        assert!(offsets.sk_bpf_storage > offsets.sk_protocol.min(offsets.skc_net));
        assert_ne!(offsets.sk_cgroup, OFFSET_ABSENT);
        assert_ne!(offsets.kernfs_node_id, OFFSET_ABSENT);
        // What a failing socket's end is classified by.
        for offset in [
            offsets.tcp_write_seq,
            offsets.tcp_snd_nxt,
            offsets.tcp_snd_wnd,
        ] {
            assert!(offset > offsets.icsk_retransmits && offset != OFFSET_ABSENT);
        }
        assert!(offsets.icsk_probes_out < offsets.tcp_snd_una);
    }

    #[test]
    fn counts_tracepoint_arguments() {
        let btf = KernelBtf::from_file(Path::new("/sys/kernel/btf/vmlinux")).expect("kernel BTF");
        assert_eq!(btf.tracepoint_args("tcp_destroy_sock"), Some(1));
        assert_eq!(btf.tracepoint_args("inet_sock_set_state"), Some(3));
        assert_eq!(btf.tracepoint_args("no_such_tracepoint_anywhere"), None);
        assert_eq!(btf.function_args("tcp_sendmsg"), Some(3));
        // 6 before 5.19, 5 until addr_len went (6.1 has 5), 4 since.
        assert!(matches!(btf.function_args("tcp_recvmsg"), Some(4..=6)));
        assert_eq!(btf.function_args("no_such_function_anywhere"), None);
    }
}
