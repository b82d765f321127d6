//! Userspace cost per kernel event: decode, socket table and storm detection
//! on a recorded stream, one core. Target: at least 2 million events per
//! second. Run with `cargo xtask bench`.

use std::hint::black_box;

use connmon::{
    decode::{decode, encode},
    detect::{Detector, DetectorConfig},
    sockets::SocketTable,
};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use monitor_common::{
    event::{
        EVENT_PROGRESS, EVENT_RETRANSMIT, EVENT_STATE_CHANGE, PROGRESS_ACKNOWLEDGED, SocketEvent,
        TcpSnapshot,
    },
    retransmit::{RETRANSMIT_FAST, RETRANSMIT_TIMEOUT},
    socket::{Activity, OWNER_SOURCE_SEND, Owner, ROLE_CLIENT, Tuple},
    tcp::{AF_INET, TCP_CA_LOSS, TCP_CA_RECOVERY},
};

/// A recorded mix over `sockets` connections: fast retransmits and
/// recoveries on busy ones, idle storms on a few, state changes.
fn recorded_stream(events: usize, sockets: u64) -> Vec<Vec<u8>> {
    let mut comm = [0u8; 16];
    comm[..6].copy_from_slice(b"client");
    (0..events)
        .map(|i| {
            let cookie = (i as u64 * 7919) % sockets + 1;
            let at = 1_000_000_000_000 + i as u64 * 10_000;
            let idle_storm = cookie.is_multiple_of(50);
            let kind = match i % 4 {
                0 | 1 => EVENT_RETRANSMIT,
                2 => EVENT_PROGRESS,
                _ => EVENT_STATE_CHANGE,
            };
            let raw = SocketEvent {
                kind,
                detail: if kind == EVENT_PROGRESS {
                    PROGRESS_ACKNOWLEDGED
                } else {
                    (1 << 8) | 1
                },
                timestamp_ns: at,
                cookie,
                owner: Owner {
                    tgid: 1000 + (cookie % 64) as u32,
                    tid: 1000 + (cookie % 64) as u32,
                    cgroup_id: 1,
                    start_boottime_ns: 5,
                    comm,
                    source: OWNER_SOURCE_SEND,
                    role: ROLE_CLIENT,
                    process_changes: 0,
                    _pad: [0; 5],
                },
                tuple: Tuple {
                    family: AF_INET,
                    local_port: 40_000 + (cookie % 20_000) as u16,
                    remote_port: 6379,
                    state: 1,
                    _pad0: 0,
                    netns: 4026531840,
                    _pad1: 0,
                    local_addr: [10, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                    remote_addr: [10, 0, 1, 5, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                },
                activity: Activity {
                    last_send_ns: at,
                    last_recv_ns: if idle_storm { at - 60_000_000_000 } else { at },
                    burst_start_ns: at,
                    idle_before_burst_ns: if idle_storm { 60_000_000_000 } else { 0 },
                },
                tcp: TcpSnapshot {
                    snd_una: 1,
                    user_timeout_ms: 0,
                    rto_retransmits: if idle_storm { (i % 8) as u8 + 1 } else { 0 },
                    backoff: 0,
                    ca_state: if idle_storm {
                        TCP_CA_LOSS
                    } else {
                        TCP_CA_RECOVERY
                    },
                    tcp_retries2: 15,
                    segments: 1,
                    retransmit_kind: if idle_storm {
                        RETRANSMIT_TIMEOUT
                    } else {
                        RETRANSMIT_FAST
                    },
                    total_retrans_low: 0,
                    probes_out: 0,
                    _pad: 0,
                    unsent_bytes: 0,
                    send_window: 0,
                },
            };
            encode(&raw)
        })
        .collect()
}

fn pipeline(c: &mut Criterion) {
    let stream = recorded_stream(100_000, 10_000);
    let mut group = c.benchmark_group("userspace");
    group.throughput(Throughput::Elements(stream.len() as u64));
    group.bench_function("decode", |b| {
        b.iter(|| {
            for bytes in &stream {
                black_box(decode(bytes).ok());
            }
        })
    });
    group.bench_function("decode+sockets+detect", |b| {
        b.iter(|| {
            let mut sockets = SocketTable::default();
            let mut detector = Detector::new(DetectorConfig::new(30_000_000_000, 3));
            let mut findings = 0usize;
            for bytes in &stream {
                if let Ok(mut event) = decode(bytes) {
                    sockets.observe(&mut event);
                    findings += detector.handle(&event).len();
                }
            }
            black_box(findings)
        })
    });
    group.finish();
}

criterion_group!(benches, pipeline);
criterion_main!(benches);
