//! A Redis client built on the `redis` crate, holding one long-lived
//! connection the way a pool does, driven by the tests through stdin.
//!
//! `cmt-redis-client URL`: connect, `SET` once, print `connected`; then per
//! stdin line: `set` sends a SET and prints `ok MS` or `error MS MESSAGE`;
//! `busy N` sends N SETs back to back and prints `busy-done MS`; `quit`
//! closes the connection and prints `closed`; `set-retry` does what a pool
//! does with a broken connection: on an error it reconnects once and sends
//! the SET again, printing `ok-after-reconnect DONE_AT_MS ERROR` (wall-clock
//! milliseconds since the epoch).
//! Arguments `--note=...` are ignored (a command line with a secret in it).
//! `cmt-redis-client subscribe URL CHANNEL`: subscribe, print `subscribed`,
//! then print each message as `message PAYLOAD`.

use std::{
    io::{BufRead, Write},
    time::Instant,
};

fn main() {
    // `--note=...` arguments are ignored: they stand for the flags and
    // secrets real services carry on their command lines.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|arg| !arg.starts_with("--note="))
        .collect();
    let result = match args.as_slice() {
        [mode, url, channel] if mode == "subscribe" => subscribe(url, channel),
        [url] => commands(url),
        _ => {
            eprintln!("usage: cmt-redis-client URL | subscribe URL CHANNEL");
            std::process::exit(2);
        }
    };
    if let Err(error) = result {
        say(&format!("error 0 {error}"));
        std::process::exit(1);
    }
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn commands(url: &str) -> redis::RedisResult<()> {
    let client = redis::Client::open(url)?;
    let mut connection = Some(client.get_connection()?);
    set(connection.as_mut())?;
    say("connected");
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        let words: Vec<&str> = line.split_whitespace().collect();
        let started = Instant::now();
        match words.as_slice() {
            ["set"] => match set(connection.as_mut()) {
                Ok(()) => say(&format!("ok {}", started.elapsed().as_millis())),
                Err(error) => say(&format!("error {} {error}", started.elapsed().as_millis())),
            },
            ["set-retry"] => match set(connection.as_mut()) {
                Ok(()) => say(&format!("ok {}", started.elapsed().as_millis())),
                Err(first) => {
                    connection = Some(client.get_connection()?);
                    set(connection.as_mut())?;
                    let done_at = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_millis())
                        .unwrap_or(0);
                    say(&format!("ok-after-reconnect {done_at} {first}"));
                }
            },
            ["busy", count] => {
                let count: u32 = count.parse().unwrap_or(1);
                for _ in 0..count {
                    set(connection.as_mut())?;
                }
                say(&format!("busy-done {}", started.elapsed().as_millis()));
            }
            ["quit"] => {
                connection = None;
                say("closed");
            }
            _ => say("unknown command"),
        }
    }
    drop(connection);
    Ok(())
}

fn set(connection: Option<&mut redis::Connection>) -> redis::RedisResult<()> {
    let connection =
        connection.ok_or_else(|| redis::RedisError::from((redis::ErrorKind::Io, "closed")))?;
    redis::cmd("SET")
        .arg("connmon:test")
        .arg("value")
        .query::<()>(connection)
}

fn subscribe(url: &str, channel: &str) -> redis::RedisResult<()> {
    let client = redis::Client::open(url)?;
    let mut connection = client.get_connection()?;
    let mut pubsub = connection.as_pubsub();
    pubsub.subscribe(channel)?;
    say("subscribed");
    loop {
        let message = pubsub.get_message()?;
        let payload: String = message.get_payload()?;
        say(&format!("message {payload}"));
    }
}
