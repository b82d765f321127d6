//! The tracepoints connmon hooks, and what each one is for.

/// One BTF tracepoint and the program attached to it.
#[derive(Debug)]
pub struct Hook {
    /// Tracepoint name (`btf_trace_<name>` in the kernel's BTF).
    pub tracepoint: &'static str,
    /// Program name in the object.
    pub program: &'static str,
    /// The program's variant for kernels whose tracing programs lack
    /// socket-local storage and the cookie helper (`StateStore::ByAddress`);
    /// `None`: the tracepoint is newer than those kernels.
    pub by_address: Option<&'static str>,
    /// Without it connmon cannot do its job at all.
    pub required: bool,
    /// What the hook gives; named in errors and degradation warnings.
    pub purpose: &'static str,
    /// Where the same facts come from on kernels without the tracepoint,
    /// in order of preference.
    pub fallbacks: &'static [Fallback],
}

/// An fexit program on a kernel function, used when a tracepoint is
/// missing. fexit needs BPF trampolines, which some kernels refuse (EPERM):
/// the tracepoint is always preferred.
#[derive(Debug)]
pub struct Fallback {
    /// Kernel function (must be in BTF with `args` parameters).
    pub function: &'static str,
    pub program: &'static str,
    /// As `Hook::by_address`.
    pub by_address: Option<&'static str>,
    /// Parameter count the program was written for; the return value is
    /// read right after them.
    pub args: usize,
}

/// Every hook, in attach order: owner tracking first, so sockets have
/// owners before their first retransmit is seen.
pub const HOOKS: &[Hook] = &[
    Hook {
        tracepoint: "sock_send_length",
        program: "sock_send_length",
        by_address: None,
        required: false,
        purpose: "socket owner and idle time from sends",
        fallbacks: &[Fallback {
            function: "tcp_sendmsg",
            program: "tcp_sendmsg_exit",
            by_address: Some("tcp_sendmsg_exit_by_address"),
            args: 3,
        }],
    },
    Hook {
        tracepoint: "sock_recv_length",
        program: "sock_recv_length",
        by_address: None,
        required: false,
        purpose: "socket owner and idle time from receives, recovery by received data",
        fallbacks: &[
            Fallback {
                function: "tcp_recvmsg",
                program: "tcp_recvmsg_exit",
                // 5.19 to 6.2 (6.1 included); the tracepoint came in 6.3.
                by_address: None,
                args: 5,
            },
            Fallback {
                function: "tcp_recvmsg",
                program: "tcp_recvmsg6_exit",
                // Before 5.19 (with `nonblock`), 5.10 included.
                by_address: Some("tcp_recvmsg6_exit_by_address"),
                args: 6,
            },
        ],
    },
    Hook {
        tracepoint: "inet_sock_set_state",
        program: "inet_sock_set_state",
        by_address: Some("inet_sock_set_state_by_address"),
        required: true,
        purpose: "connection state changes and the owner of outgoing connections",
        fallbacks: &[],
    },
    Hook {
        tracepoint: "tcp_retransmit_skb",
        program: "tcp_retransmit_skb",
        by_address: Some("tcp_retransmit_skb_by_address"),
        required: true,
        purpose: "retransmits",
        fallbacks: &[],
    },
    Hook {
        tracepoint: "tcp_cong_state_set",
        program: "tcp_cong_state_set",
        by_address: None,
        required: false,
        purpose: "recovery by acknowledged data",
        fallbacks: &[],
    },
    Hook {
        tracepoint: "tcp_receive_reset",
        program: "tcp_receive_reset",
        by_address: Some("tcp_receive_reset_by_address"),
        required: false,
        purpose: "resets received",
        fallbacks: &[],
    },
    Hook {
        tracepoint: "tcp_send_reset",
        program: "tcp_send_reset",
        by_address: Some("tcp_send_reset_by_address"),
        required: false,
        purpose: "resets sent",
        fallbacks: &[],
    },
    Hook {
        tracepoint: "inet_sk_error_report",
        program: "inet_sk_error_report",
        by_address: None,
        required: false,
        purpose: "socket errors such as ETIMEDOUT when the kernel gives up",
        fallbacks: &[],
    },
    Hook {
        tracepoint: "tcp_destroy_sock",
        program: "tcp_destroy_sock",
        by_address: Some("tcp_destroy_sock_by_address"),
        required: true,
        purpose: "socket teardown (frees the socket's map entry)",
        fallbacks: &[],
    },
];
