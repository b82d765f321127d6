//! The BPF helpers connmon's programs call, with the Linux release that
//! made each available to tracing programs, so that a kernel's refusal
//! names what is missing instead of ending in a verifier log.

/// `(helper, first Linux release with it in tracing programs)`.
const TRACING_HELPERS: &[(&str, &str)] = &[
    ("bpf_jiffies64", "5.5"),
    ("bpf_ringbuf_reserve", "5.8"),
    ("bpf_ringbuf_submit", "5.8"),
    ("bpf_skc_to_tcp_sock", "5.9"),
    ("bpf_sk_storage_get", "5.11"),
    ("bpf_get_socket_cookie", "5.12"),
];

/// The helper a verifier log says this kernel does not know (`unknown
/// func bpf_sk_storage_get#107`), with the release that added it.
pub fn missing_helper(verifier_log: &str) -> Option<(&'static str, &'static str)> {
    let at = verifier_log.find("unknown func ")? + "unknown func ".len();
    let name = verifier_log[at..]
        .split(|c: char| c == '#' || c.is_whitespace())
        .next()?;
    TRACING_HELPERS
        .iter()
        .find(|(helper, _)| *helper == name)
        .copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_helper_in_the_log_is_named_with_its_release() {
        let log = "131: (85) call bpf_sk_storage_get#107\nunknown func bpf_sk_storage_get#107\nverification time 11866 usec\n";
        assert_eq!(missing_helper(log), Some(("bpf_sk_storage_get", "5.11")));
        assert_eq!(
            missing_helper("unknown func bpf_get_socket_cookie#46"),
            Some(("bpf_get_socket_cookie", "5.12"))
        );
    }

    #[test]
    fn other_refusals_are_not_a_missing_helper() {
        assert_eq!(missing_helper("R1 invalid mem access 'scalar'"), None);
        assert_eq!(missing_helper("unknown func bpf_not_ours#999"), None);
    }
}
