//! A minimal TCP peer for the kernel tests, so they control exactly what is
//! on the wire and who owns each socket.
//!
//! `tcp-peer server ADDR`: accept connections and echo what arrives.
//! `tcp-peer shared-server ADDR`: the same, on a listener with
//! `SO_REUSEPORT`, so several processes share the port (and the
//! connections: one process may hold only so many descriptors).
//! `tcp-peer client ADDR`: connect, exchange one line, print
//! `connected LOCAL_ADDR`, then on each stdin line send it and wait for the
//! echo; a failed wait prints `retransmitted N` (the socket's own count of
//! retransmitted segments) and `error KIND ERRNO`, and exits.
//! `tcp-peer many ADDR N`: hold N connections open (prints `opened N`).
//! `tcp-peer blast ADDR CONNECTIONS SECONDS`: echo bulk data for a while.
//! `tcp-peer churn ADDR PER_SECOND SECONDS`: open, use and close that many
//! short connections per second for a while; prints `churned DONE FAILED`.
//! `tcp-peer handoff ADDR`: connect, exchange one line, print `connected
//! LOCAL_ADDR`; on the first stdin line fork a child that keeps the socket
//! (prints `holder PID`, sleeps at most 60 s), send the line without
//! waiting for the echo, print `sent` and exit: the socket outlives the
//! process that last used it.
//! `tcp-peer pool ADDR N`: a connection pool with one writer thread per
//! connection (see `pool`).
//! `tcp-peer keepalive ADDR IDLE INTERVAL COUNT WAIT`: connect with
//! `SO_KEEPALIVE` and those `TCP_KEEPIDLE`/`TCP_KEEPINTVL`/`TCP_KEEPCNT`,
//! send `PING\r\n` (an echo server echoes it, Redis answers), print
//! `connected LOCAL_ADDR`, then wait in a read for at most WAIT seconds:
//! `quiet` when nothing came, `closed` at the peer's FIN, `error KIND ERRNO`
//! when the kernel gave up on the connection.
//!
//! `tcp-peer reader ADDR BYTES_PER_TICK TICK_MS`: accept connections and
//! read each at most BYTES_PER_TICK every TICK_MS milliseconds (0: never
//! read: a peer that stopped reading); prints `read N` for every
//! megabyte read.
//! `tcp-peer flood ADDR`: connect, print `connected LOCAL_ADDR`, then write
//! as fast as the kernel takes it, blocking when the send buffer is full.
//!
//! With `TCP_PEER_COMM` set, the peer first renames itself to it (any
//! bytes, at most 15, as prctl(PR_SET_NAME) allows any process to do).

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{TcpListener, TcpStream},
    thread,
};

fn main() {
    if let Some(name) = std::env::var_os("TCP_PEER_COMM") {
        use std::os::unix::ffi::OsStrExt;
        let mut comm = [0u8; 16];
        let bytes = name.as_bytes();
        let len = bytes.len().min(15);
        comm[..len].copy_from_slice(&bytes[..len]);
        // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16
        // bytes; `comm` is 16 bytes and ends in NUL.
        unsafe { libc::prctl(libc::PR_SET_NAME, comm.as_ptr()) };
    }
    let args: Vec<String> = std::env::args().collect();
    let (Some(mode), Some(addr)) = (args.get(1), args.get(2)) else {
        eprintln!("usage: tcp-peer server|client ADDR");
        std::process::exit(2);
    };
    let result = match mode.as_str() {
        "server" => TcpListener::bind(addr).and_then(serve),
        "shared-server" => shared_listener(addr).and_then(serve),
        "client" => client(addr),
        "handoff" => handoff(addr),
        "many" => many(addr, args.get(3).and_then(|n| n.parse().ok()).unwrap_or(1)),
        "blast" => blast(
            addr,
            args.get(3).and_then(|n| n.parse().ok()).unwrap_or(1),
            args.get(4).and_then(|n| n.parse().ok()).unwrap_or(1),
        ),
        "churn" => churn(
            addr,
            args.get(3).and_then(|n| n.parse().ok()).unwrap_or(1),
            args.get(4).and_then(|n| n.parse().ok()).unwrap_or(1),
        ),
        "reader" => {
            let number = |index: usize| args.get(index).and_then(|n| n.parse().ok()).unwrap_or(0);
            TcpListener::bind(addr)
                .and_then(|listener| reader(listener, number(3) as usize, number(4)))
        }
        "flood" => flood(addr),
        "pool" => pool(addr, args.get(3).and_then(|n| n.parse().ok()).unwrap_or(1)),
        "keepalive" => {
            let number = |index: usize| args.get(index).and_then(|n| n.parse().ok()).unwrap_or(1);
            keepalive(addr, [number(3), number(4), number(5)], number(6) as u64)
        }
        other => {
            eprintln!("unknown mode {other}");
            std::process::exit(2);
        }
    };
    if let Err(error) = result {
        println!(
            "error {:?} {}",
            error.kind(),
            error.raw_os_error().unwrap_or(0)
        );
    }
}

/// An IPv4 listener on `addr` with `SO_REUSEPORT` set before binding.
fn shared_listener(addr: &str) -> std::io::Result<TcpListener> {
    use std::os::fd::FromRawFd;
    let addr: std::net::SocketAddrV4 = addr
        .parse()
        .map_err(|_| std::io::Error::other("shared-server takes an IPv4 address"))?;
    // SAFETY: plain socket syscalls on a descriptor this function owns; the
    // sockaddr_in is fully initialised and its size passed with it; the
    // descriptor is handed to TcpListener (which closes it) only on success.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let listener = TcpListener::from_raw_fd(fd);
        let one: libc::c_int = 1;
        let sockaddr = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: addr.port().to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(*addr.ip()).to_be(),
            },
            sin_zero: [0; 8],
        };
        let failed = libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_REUSEPORT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        ) != 0
            || libc::bind(
                fd,
                (&sockaddr as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            ) != 0
            || libc::listen(fd, 4096) != 0;
        if failed {
            return Err(std::io::Error::last_os_error());
        }
        Ok(listener)
    }
}

fn serve(listener: TcpListener) -> std::io::Result<()> {
    raise_open_files_limit();
    println!("listening {}", listener.local_addr()?);
    std::io::stdout().flush()?;
    for stream in listener.incoming() {
        let mut stream = stream?;
        // Small stacks: a pool test holds thousands of these threads.
        thread::Builder::new()
            .stack_size(SMALL_STACK)
            .spawn(move || {
                let mut buffer = [0u8; 4096];
                while let Ok(n) = stream.read(&mut buffer) {
                    if n == 0 || stream.write_all(&buffer[..n]).is_err() {
                        break;
                    }
                }
            })?;
    }
    Ok(())
}

/// Stack of the threads a server or pool runs per connection.
const SMALL_STACK: usize = 64 * 1024;

/// Lifts the limit on open files as far as allowed (root: past the hard
/// limit), else the soft limit to the hard one: a server of a large pool
/// holds one descriptor per connection.
fn raise_open_files_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with valid pointers to local rlimits.
    unsafe {
        let wide = libc::rlimit {
            rlim_cur: 1 << 18,
            rlim_max: 1 << 18,
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &wide) == 0 {
            return;
        }
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// Wall-clock milliseconds since the epoch.
fn wall_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|since| since.as_millis())
        .unwrap_or(0)
}

/// A pool of `count` connections, each owned by a writer thread of its
/// own, as a thread-per-connection service holds its Redis pool. Each
/// thread connects and exchanges a line (one after another, so the
/// listener's backlog never overflows); then `opened N` is printed. On the
/// stdin line `send`, every thread sends one line at the same moment and
/// waits for its echo without a timeout, then prints
/// `result LOCAL_PORT TID ERRNO SENT_MS ENDED_MS` (ERRNO 0: echoed;
/// wall-clock milliseconds); `done N` follows the last one.
fn pool(addr: &str, count: usize) -> std::io::Result<()> {
    use std::sync::{Arc, Barrier, mpsc};
    raise_open_files_limit();
    let go = Arc::new(Barrier::new(count + 1));
    let (ready_tx, ready_rx) = mpsc::channel::<std::io::Result<()>>();
    let mut workers = Vec::with_capacity(count);
    for _ in 0..count {
        let (addr, go, ready) = (addr.to_string(), go.clone(), ready_tx.clone());
        workers.push(
            thread::Builder::new()
                .stack_size(SMALL_STACK)
                .spawn(move || {
                    let opened = TcpStream::connect(&addr).and_then(|mut stream| {
                        exchange(&mut stream, b"hello\n")?;
                        Ok(stream)
                    });
                    let mut stream = match opened {
                        Ok(stream) => {
                            let _ = ready.send(Ok(()));
                            stream
                        }
                        Err(error) => {
                            let _ = ready.send(Err(error));
                            return;
                        }
                    };
                    drop(ready);
                    go.wait();
                    let port = stream.local_addr().map(|a| a.port()).unwrap_or(0);
                    // SAFETY: gettid has no arguments and cannot fail.
                    let tid = unsafe { libc::gettid() };
                    let sent = wall_ms();
                    let errno = match exchange(&mut stream, b"stuck\n") {
                        Ok(()) => 0,
                        Err(error) => error.raw_os_error().unwrap_or(-1),
                    };
                    println!("result {port} {tid} {errno} {sent} {}", wall_ms());
                })?,
        );
        ready_rx
            .recv()
            .map_err(|_| std::io::Error::other("a pool thread vanished"))??;
    }
    println!("opened {count}");
    std::io::stdout().flush()?;
    let mut line = String::new();
    while std::io::stdin().read_line(&mut line)? > 0 && line.trim() != "send" {
        line.clear();
    }
    go.wait();
    for worker in workers {
        let _ = worker.join();
    }
    println!("done {count}");
    std::io::stdout().flush()
}

fn client(addr: &str) -> std::io::Result<()> {
    let mut stream = TcpStream::connect(addr)?;
    exchange(&mut stream, b"hello\n")?;
    println!("connected {}", stream.local_addr()?);
    std::io::stdout().flush()?;
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        if let Err(error) = exchange(&mut stream, format!("{line}\n").as_bytes()) {
            // The socket's own count, kept after the kernel gave up on it:
            // ground truth for a test that counts its retransmits.
            if let Some(segments) = total_retransmits(&stream) {
                println!("retransmitted {segments}");
            }
            return Err(error);
        }
        println!("echoed {line}");
        std::io::stdout().flush()?;
    }
    Ok(())
}

/// A server that reads each connection at a bounded rate, or never.
fn reader(listener: TcpListener, bytes_per_tick: usize, tick_ms: u64) -> std::io::Result<()> {
    println!("listening {}", listener.local_addr()?);
    std::io::stdout().flush()?;
    let mut never_read = Vec::new();
    for stream in listener.incoming() {
        let mut stream = stream?;
        if bytes_per_tick == 0 {
            // Held open, never read: the window shuts and stays shut.
            never_read.push(stream);
            continue;
        }
        thread::Builder::new()
            .stack_size(SMALL_STACK)
            .spawn(move || {
                let mut buffer = vec![0u8; bytes_per_tick];
                let (mut total, mut reported) = (0usize, 0usize);
                while let Ok(n) = stream.read(&mut buffer) {
                    if n == 0 {
                        break;
                    }
                    total += n;
                    if total / (1 << 20) > reported {
                        reported = total / (1 << 20);
                        println!("read {reported}");
                        let _ = std::io::stdout().flush();
                    }
                    thread::sleep(std::time::Duration::from_millis(tick_ms));
                }
            })?;
    }
    Ok(())
}

/// Writes until the kernel stops taking data, and blocks there.
fn flood(addr: &str) -> std::io::Result<()> {
    let mut stream = TcpStream::connect(addr)?;
    println!("connected {}", stream.local_addr()?);
    std::io::stdout().flush()?;
    let chunk = vec![b'x'; 64 * 1024];
    loop {
        stream.write_all(&chunk)?;
    }
}

/// `tcpi_total_retrans` of `stream`: the segments the kernel retransmitted
/// on this socket in its life.
fn total_retransmits(stream: &TcpStream) -> Option<u32> {
    use std::os::fd::AsRawFd;
    // SAFETY: tcp_info is plain data; zeroed is a valid value.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `info`, which is
    // that large, and updates `len`.
    let result = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&raw mut info).cast(),
            &mut len,
        )
    };
    (result == 0).then_some(info.tcpi_total_retrans)
}

/// See the module documentation; `[idle, interval, count]` in seconds and
/// probes.
fn keepalive(
    addr: &str,
    [idle, interval, count]: [i32; 3],
    wait_seconds: u64,
) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let mut stream = TcpStream::connect(addr)?;
    for (level, option, value) in [
        (libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1),
        (libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, idle),
        (libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, interval),
        (libc::IPPROTO_TCP, libc::TCP_KEEPCNT, count),
    ] {
        // SAFETY: an int option, passed as a pointer to an int and its size.
        let result = unsafe {
            libc::setsockopt(
                stream.as_raw_fd(),
                level,
                option,
                (&raw const value).cast(),
                std::mem::size_of::<i32>() as libc::socklen_t,
            )
        };
        if result != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    stream.write_all(b"PING\r\n")?;
    let mut reply = [0u8; 64];
    if stream.read(&mut reply)? == 0 {
        return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof));
    }
    println!("connected {}", stream.local_addr()?);
    std::io::stdout().flush()?;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(wait_seconds)))?;
    match stream.read(&mut reply) {
        Ok(0) => println!("closed"),
        Ok(_) => println!("data"),
        // The read's own timeout (EAGAIN), not the kernel's (ETIMEDOUT).
        Err(error) if error.raw_os_error() == Some(libc::EAGAIN) => println!("quiet"),
        Err(error) => return Err(error),
    }
    std::io::stdout().flush()
}

fn handoff(addr: &str) -> std::io::Result<()> {
    let mut stream = TcpStream::connect(addr)?;
    exchange(&mut stream, b"hello\n")?;
    println!("connected {}", stream.local_addr()?);
    std::io::stdout().flush()?;
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    // SAFETY: this process has no other threads; the child only sleeps
    // and exits.
    match unsafe { libc::fork() } {
        -1 => return Err(std::io::Error::last_os_error()),
        0 => {
            println!("holder {}", std::process::id());
            std::io::stdout().flush()?;
            thread::sleep(std::time::Duration::from_secs(60));
            std::process::exit(0);
        }
        _ => {}
    }
    stream.write_all(line.as_bytes())?;
    println!("sent");
    std::io::stdout().flush()?;
    Ok(())
}

/// Opens `count` connections, exchanges a line on each, prints `opened N`,
/// and holds them until stdin closes.
fn many(addr: &str, count: usize) -> std::io::Result<()> {
    let mut streams = Vec::with_capacity(count);
    for _ in 0..count {
        let mut stream = TcpStream::connect(addr)?;
        exchange(&mut stream, b"hello\n")?;
        streams.push(stream);
    }
    println!("opened {}", streams.len());
    std::io::stdout().flush()?;
    let mut rest = String::new();
    let _ = std::io::stdin().read_line(&mut rest);
    Ok(())
}

/// `connections` connections, each sending 16 KiB chunks and reading the
/// echo back for `seconds` (a bounded load); prints `blasted BYTES`.
fn blast(addr: &str, connections: usize, seconds: u64) -> std::io::Result<()> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(seconds);
    let workers: Vec<_> = (0..connections)
        .map(|_| {
            let addr = addr.to_string();
            thread::spawn(move || -> std::io::Result<u64> {
                let mut stream = TcpStream::connect(addr)?;
                stream.set_read_timeout(Some(std::time::Duration::from_secs(30)))?;
                let chunk = vec![b'x'; 16 * 1024];
                let mut echo = vec![0u8; 16 * 1024];
                let mut moved = 0u64;
                while std::time::Instant::now() < deadline {
                    stream.write_all(&chunk)?;
                    stream.read_exact(&mut echo)?;
                    moved += chunk.len() as u64;
                }
                Ok(moved)
            })
        })
        .collect();
    let mut total = 0;
    for worker in workers {
        total += worker.join().unwrap_or(Ok(0))?;
    }
    println!("blasted {total}");
    std::io::stdout().flush()
}

/// Short connections at `per_second` for `seconds`, from four threads that
/// pace themselves: connect, one echoed line, close (client first, so the
/// TIME_WAIT sockets are the client's).
fn churn(addr: &str, per_second: u64, seconds: u64) -> std::io::Result<()> {
    const THREADS: u64 = 4;
    let start = std::time::Instant::now();
    let deadline = start + std::time::Duration::from_secs(seconds);
    let interval = std::time::Duration::from_secs_f64(THREADS as f64 / per_second.max(1) as f64);
    let workers: Vec<_> = (0..THREADS)
        .map(|_| {
            let addr = addr.to_string();
            thread::spawn(move || {
                let (mut done, mut failed) = (0u64, 0u64);
                let mut next = std::time::Instant::now();
                while next < deadline {
                    let outcome = TcpStream::connect(&addr).and_then(|mut stream| {
                        stream.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
                        exchange(&mut stream, b"churn\n")
                    });
                    match outcome {
                        Ok(()) => done += 1,
                        Err(_) => failed += 1,
                    }
                    next += interval;
                    let now = std::time::Instant::now();
                    if next > now {
                        thread::sleep(next - now);
                    }
                }
                (done, failed)
            })
        })
        .collect();
    let (mut done, mut failed) = (0, 0);
    for worker in workers {
        let (d, f) = worker.join().unwrap_or((0, 0));
        done += d;
        failed += f;
    }
    println!("churned {done} {failed}");
    std::io::stdout().flush()
}

/// Sends `payload` and reads until the whole echo is back.
fn exchange(stream: &mut TcpStream, payload: &[u8]) -> std::io::Result<()> {
    stream.write_all(payload)?;
    let mut echo = BufReader::new(stream.try_clone()?);
    let mut got = Vec::new();
    while got.len() < payload.len() {
        let before = got.len();
        echo.read_until(b'\n', &mut got)?;
        if got.len() == before {
            return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof));
        }
    }
    Ok(())
}
