#!/bin/sh
# /init of the vm-test guest (busybox sh). Boots, loads the modules the
# scenario needs, and drives two idle connections (one older than connmon,
# one newer) through a conntrack middlebox that forgets them: connmon must
# choose its hooks for this kernel and report each storm with the client's
# pid, command and network namespace. The last line on the
# serial console is the verdict the host reads: CONNMON_VM_PASS or
# CONNMON_VM_FAIL; the guest then powers off. Every wait has a deadline.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/tmp

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
mount -t tracefs tracefs /sys/kernel/tracing
mount -t debugfs debugfs /sys/kernel/debug
mount -t bpf bpf /sys/fs/bpf
mount -t cgroup2 cgroup2 /sys/fs/cgroup

PORT=6379
SERVER=10.77.2.2

say() { echo "vm-guest: $*"; }

show_logs() {
    for f in /tmp/connmon.out /tmp/connmon.err /tmp/old.out /tmp/new.out /tmp/server.out; do
        [ -f "$f" ] || continue
        echo "----- $f"
        cat "$f"
    done
    echo "----- end of logs"
}

finish() {
    kill $CONNMON $OLD $NEW $SERVERPID 2>/dev/null
    sync
    echo "$1"
    poweroff -f
    # poweroff -f does not return; if it did, exiting /init panics and the
    # kernel's panic=-1 reboots, which -no-reboot turns into a qemu exit.
    exit 1
}

fail() {
    say "FAILED: $*"
    show_logs
    finish "CONNMON_VM_FAIL: $*"
}

# gone PID: the process has exited (a zombie counts: kill -0 still works on it).
gone() { [ ! -e /proc/$1 ] || grep -q '^[0-9]* ([^)]*) Z' /proc/$1/stat; }

# until_ok SECONDS COMMAND...: polls COMMAND every 0.2 s until it succeeds;
# fails when SECONDS pass first.
until_ok() {
    limit=$(( $(date +%s) + $1 ))
    shift
    while ! "$@" >/dev/null 2>&1; do
        [ "$(date +%s)" -ge "$limit" ] && return 1
        sleep 0.2
    done
    return 0
}

say "kernel $(uname -r)"

# Modules in dependency order, computed on the host; a failed insmod only
# fails the run if what it provides is then missing.
while read -r module; do
    insmod "/vm/modules/$module" 2>/dev/null || say "insmod $module failed"
done < /vm/modules.order

/usr/sbin/ip link set lo up || fail "lo up"

# ---- topology: app -- mb (conntrack middlebox) -- cache ----
for ns in app mb cache; do /usr/sbin/ip netns add $ns || fail "netns $ns"; done
/usr/sbin/ip -n app link add eth0 type veth peer name to-app netns mb || fail "veth app"
/usr/sbin/ip -n cache link add eth0 type veth peer name to-cache netns mb || fail "veth cache"
/usr/sbin/ip -n app addr add 10.77.1.2/24 dev eth0
/usr/sbin/ip -n mb addr add 10.77.1.1/24 dev to-app
/usr/sbin/ip -n mb addr add 10.77.2.1/24 dev to-cache
/usr/sbin/ip -n cache addr add $SERVER/24 dev eth0
for pair in app:eth0 mb:to-app mb:to-cache cache:eth0; do
    /usr/sbin/ip -n "${pair%%:*}" link set "${pair#*:}" up || fail "link up $pair"
done
for ns in app mb cache; do /usr/sbin/ip -n $ns link set lo up; done
/usr/sbin/ip -n app route add default via 10.77.1.1 || fail "route app"
/usr/sbin/ip -n cache route add default via 10.77.2.1 || fail "route cache"
/usr/sbin/ip netns exec mb sysctl -q -w net.ipv4.ip_forward=1 || fail "ip_forward"
/usr/sbin/ip netns exec mb nft -f - <<'EOF' || fail "nft ruleset"
table inet cmt_middlebox {
  chain forward {
    type filter hook forward priority 0; policy drop;
    ct state established,related accept
    ct state invalid drop
    ct state new accept
  }
}
EOF
/usr/sbin/ip netns exec mb sysctl -q -w net.netfilter.nf_conntrack_tcp_loose=0 || fail "tcp_loose"
/usr/sbin/ip netns exec mb sysctl -q -w net.netfilter.nf_conntrack_tcp_timeout_established=3 \
    || fail "conntrack timeout"
/usr/sbin/ip netns exec app sysctl -q -w net.ipv4.tcp_retries2=4 || fail "tcp_retries2"
APP_NETNS=$(stat -L -c %i /run/netns/app)

# ---- two idle connections: one older than connmon, one newer ----
/usr/sbin/ip netns exec cache tcp-peer server $SERVER:$PORT > /tmp/server.out 2>&1 &
SERVERPID=$!
until_ok 20 grep -q listening /tmp/server.out || fail "server not listening"

# client NAME FD: a tcp-peer client in the app namespace that sends a line
# for each line written to file descriptor FD; sets CLIENT to its pid.
client() {
    mkfifo /tmp/$1.in
    /usr/sbin/ip netns exec app tcp-peer client $SERVER:$PORT < /tmp/$1.in > /tmp/$1.out 2>&1 &
    CLIENT=$!
    eval "exec $2> /tmp/$1.in"
    until_ok 20 grep -q connected /tmp/$1.out || fail "client $1 not connected"
    say "client $1: pid $CLIENT in netns $APP_NETNS connected"
}

# Connected before connmon starts: connmon learns it from sock_diag and
# /proc at start-up (no hook saw its connect).
client old 4
OLD=$CLIENT

# ---- connmon on this kernel ----
start=$(date +%s)
RUST_LOG=info connmon run --idle-threshold 2s --ports $PORT --listen 127.0.0.1:9878 \
    --output-format json > /tmp/connmon.out 2> /tmp/connmon.err &
CONNMON=$!
ready() {
    gone $CONNMON && return 1
    wget -q -O /dev/null http://127.0.0.1:9878/readyz
}
until_ok 180 ready || {
    gone $CONNMON && fail "connmon exited during start-up"
    fail "connmon not ready within 180 s"
}
say "connmon ready after $(( $(date +%s) - start )) s"

# Feature probing: the host wrote what connmon must choose on this kernel
# (e.g. 6.1 has no sock_send_length/sock_recv_length tracepoints, so the
# fexit fallbacks) and how many programs it must attach.
while read -r what value; do
    case "$what" in
        hook)
            grep 'hooks chosen for this kernel' /tmp/connmon.err | grep -q "$value" \
                || fail "connmon did not choose $value on this kernel"
            ;;
        programs)
            [ "$(grep -c 'kernel program attached' /tmp/connmon.err)" -eq "$value" ] \
                || fail "connmon did not attach $value programs"
            ;;
        degraded)
            grep 'capability degraded' /tmp/connmon.err | grep -q "$value" \
                || fail "connmon did not log the degradation $value"
            wget -q -O - http://127.0.0.1:9878/metrics \
                | grep -q "^connmon_degraded_hooks{hook=\"$value\"" \
                || fail "connmon did not export the degradation $value"
            ;;
    esac
done < /vm/expect
# The 6.1 verifier once needed 221k of its 1M instructions for one program;
# keep every program far below the limit.
for n in $(grep -o 'verified_insns=[0-9]*' /tmp/connmon.err | cut -d= -f2); do
    [ "$n" -le 100000 ] || fail "a program needed $n verified instructions (budget 100000)"
done

client new 5
NEW=$CLIENT

# The middlebox forgets idle flows after 3 s (longer than connmon's 2 s idle
# threshold); its conntrack table shows when.
until_ok 30 sh -c "! /usr/sbin/ip netns exec mb cat /proc/net/nf_conntrack | grep -q dport=$PORT" \
    || fail "middlebox never forgot the flows"
say "middlebox forgot both flows; sending after idle"
echo ping >&4
echo ping >&5

# storm PID EVENT: connmon's first EVENT line for PID's connection.
storm() { grep "\"event\":\"$2\"" /tmp/connmon.out | grep "\"pid\":$1," | head -n 1; }
has_storm() { [ -n "$(storm "$1" "$2")" ]; }
for pid in $OLD $NEW; do
    until_ok 60 has_storm $pid storm_started || fail "no storm_started for pid $pid within 60 s"
    line=$(storm $pid storm_started)
    say "connmon: $line"
    for want in "\"pid\":$pid," '"comm":"tcp-peer"' "\"netns\":$APP_NETNS," \
        "\"remote\":\"$SERVER:$PORT\"" '"role":"client"'; do
        case "$line" in
            *"$want"*) ;;
            *) fail "storm_started for pid $pid lacks $want" ;;
        esac
    done
done
case "$(storm $OLD storm_started)" in
    *'"owner_source":"proc"'*) ;;
    *) fail "the connection older than connmon was not attributed from /proc" ;;
esac

# With tcp_retries2=4 the kernel gives up after about 7 s: each storm ends
# as timed_out.
for pid in $OLD $NEW; do
    until_ok 60 has_storm $pid storm_ended || fail "no storm_ended for pid $pid within 60 s"
    ended=$(storm $pid storm_ended)
    say "connmon: $ended"
    case "$ended" in
        *'"outcome":"timed_out"'*) ;;
        *) fail "storm_ended for pid $pid is not timed_out" ;;
    esac
done

if [ -x /usr/sbin/bpftool ]; then
    say "programs (bpftool):"
    bpftool prog show 2>&1 | grep -E '^[0-9]+:|verified_insns'
fi
kill -TERM $CONNMON
until_ok 30 gone $CONNMON || fail "connmon did not exit on SIGTERM"
wait $CONNMON
code=$?
[ $code -eq 0 ] || fail "connmon exited with $code after SIGTERM"

# ---- a full state map (kernels whose tracing programs keep socket state
# in a map of the loader's size): refused inserts are counted as
# socket_map_full and the daemon goes on ----
if grep -q '^hook store=ByAddress$' /vm/expect; then
    RUST_LOG=info connmon run --ports $PORT --socket-map-entries 1024 --listen 127.0.0.1:9879 \
        --output-format json > /tmp/full.out 2> /tmp/full.err &
    FULL=$!
    full_ready() {
        gone $FULL && return 1
        wget -q -O /dev/null http://127.0.0.1:9879/readyz
    }
    until_ok 180 full_ready || { cat /tmp/full.err; fail "connmon with a 1024-entry map not ready"; }
    # 600 connections: 1,200 watched sockets (both ends) for 1,024 places.
    mkfifo /tmp/many.in
    /usr/sbin/ip netns exec app tcp-peer many $SERVER:$PORT 600 < /tmp/many.in > /tmp/many.out 2>&1 &
    MANY=$!
    exec 6> /tmp/many.in
    until_ok 30 grep -q "opened 600" /tmp/many.out || fail "600 connections not opened: $(cat /tmp/many.out)"
    refused() {
        wget -q -O - http://127.0.0.1:9879/metrics \
            | grep -Eq '^connmon_lost_records_total\{reason="socket_map_full"\} [1-9]'
    }
    until_ok 30 refused || fail "a full state map was not counted as socket_map_full"
    wget -q -O /dev/null http://127.0.0.1:9879/healthz || fail "connmon unhealthy with a full state map"
    say "state map full: $(wget -q -O - http://127.0.0.1:9879/metrics | grep -E '^connmon_(lost_records_total.*socket_map_full|tracked_sockets)' | tr '\n' ' ')"
    exec 6>&-
    until_ok 30 gone $MANY || kill $MANY
    kill -TERM $FULL
    until_ok 30 gone $FULL || fail "connmon with a 1024-entry map did not exit on SIGTERM"
    wait $FULL || fail "connmon with a 1024-entry map exited with $? after SIGTERM"
fi
show_logs
finish "CONNMON_VM_PASS"
