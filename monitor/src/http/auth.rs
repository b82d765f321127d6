//! HTTP basic auth against bcrypt hashes, as the exporter toolkit does it.
//!
//! Anyone who reaches the port can send passwords, so the check is built to
//! tell them nothing and to cost the node little:
//! - an unknown user's password is checked against a stand-in hash of the
//!   same cost as the configured users' hashes, so a rejection takes as long
//!   whether or not the user exists;
//! - bcrypt (slow on purpose: tens of milliseconds per check at cost 10)
//!   runs one check at a time, off the async workers, so a burst of wrong
//!   passwords costs at most one core; requests that wait too long for
//!   their turn get 429 without a check;
//! - a verified user/password pair is remembered (as a SHA-256 digest)
//!   while it keeps being used: Prometheus repeats it every scrape and
//!   never queues behind an attacker.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    extract::{Request, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use base64::Engine;
use prometheus::IntCounterVec;
use tokio::sync::Semaphore;

/// Endpoints a kubelet probe reaches without credentials: they tell
/// nothing but "alive" and "attached".
const OPEN_PATHS: &[&str] = &["/healthz", "/readyz"];

/// Verified pairs kept; past this the least recently used is dropped.
const REMEMBERED_PAIRS: usize = 64;

/// A remembered pair is forgotten after this long unused.
const REMEMBERED_FOR: Duration = Duration::from_secs(300);

/// bcrypt checks running at once: one core at most.
const CONCURRENT_CHECKS: usize = 1;

/// How long a request waits for its turn at the check before it is turned
/// away with 429 (a few dozen checks at cost 10).
const CHECK_QUEUE_WAIT: Duration = Duration::from_secs(2);

/// What the stand-in hash hashes; never a valid password (the hash is
/// only ever compared against, never matched).
const STAND_IN_PASSWORD: &str = "connmon: no such user";

/// The outcome of a request's credentials.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    Denied,
    /// Too many checks waiting: refused without one.
    Busy,
}

type PairKey = (String, [u8; 32]);

pub struct BasicAuth {
    users: BTreeMap<String, String>,
    /// Checked when the user is unknown: the highest cost among the users.
    stand_in: String,
    verified: Mutex<HashMap<PairKey, Instant>>,
    checks: Arc<Semaphore>,
    rejected: Option<IntCounterVec>,
}

impl std::fmt::Debug for BasicAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BasicAuth")
            .field("users", &self.users.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl BasicAuth {
    /// `users`: name -> bcrypt hash (validated by the web config). Hashes
    /// the stand-in once, at the users' cost (a fraction of a second).
    pub fn new(users: BTreeMap<String, String>) -> Self {
        let costs: Vec<u32> = users
            .values()
            .filter_map(|hash| hash.parse::<bcrypt::HashParts>().ok())
            .map(|parts| parts.get_cost())
            .collect();
        let cost = costs.iter().copied().max().unwrap_or(bcrypt::DEFAULT_COST);
        if costs.iter().any(|c| *c != cost) {
            tracing::warn!(
                highest = cost,
                "basic_auth_users hashes have different bcrypt costs: users with a lower cost \
                 are rejected faster than unknown users, which tells their names apart"
            );
        }
        let stand_in = bcrypt::hash(STAND_IN_PASSWORD, cost).unwrap_or_default();
        Self {
            users,
            stand_in,
            verified: Mutex::default(),
            checks: Arc::new(Semaphore::new(CONCURRENT_CHECKS)),
            rejected: None,
        }
    }

    /// Counts rejections in `counter` (labelled by reason).
    pub fn with_rejections(mut self, counter: IntCounterVec) -> Self {
        self.rejected = Some(counter);
        self
    }

    fn count(&self, reason: &str) {
        if let Some(counter) = &self.rejected {
            counter.with_label_values(&[reason]).inc();
        }
    }

    /// Whether the `Authorization` header holds a known user's password.
    pub async fn allows(self: &Arc<Self>, headers: &HeaderMap) -> bool {
        self.check(headers).await == Verdict::Allowed
    }

    /// The verdict on the request's credentials.
    pub async fn check(self: &Arc<Self>, headers: &HeaderMap) -> Verdict {
        let Some((user, password)) = credentials(headers) else {
            self.count("no_credentials");
            return Verdict::Denied;
        };
        let key: PairKey = (user, digest(&password));
        if self.remembered(&key) {
            return Verdict::Allowed;
        }
        let permit =
            match tokio::time::timeout(CHECK_QUEUE_WAIT, self.checks.clone().acquire_owned()).await
            {
                Ok(Ok(permit)) => permit,
                _ => {
                    self.count("busy");
                    return Verdict::Busy;
                }
            };
        let this = self.clone();
        let user = key.0.clone();
        // The permit moves into the check: a client that hangs up does not
        // free the core before bcrypt is done with it.
        let checked = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            match this.users.get(&user) {
                Some(hash) => bcrypt::verify(&password, hash).unwrap_or(false),
                None => {
                    let _ = bcrypt::verify(&password, &this.stand_in);
                    false
                }
            }
        })
        .await;
        if checked.unwrap_or(false) {
            self.remember(key);
            Verdict::Allowed
        } else {
            self.count("bad_credentials");
            Verdict::Denied
        }
    }

    /// A pair verified recently; refreshes its time.
    fn remembered(&self, key: &PairKey) -> bool {
        let Ok(mut verified) = self.verified.lock() else {
            return false;
        };
        let now = Instant::now();
        match verified.get_mut(key) {
            Some(seen) if now.duration_since(*seen) < REMEMBERED_FOR => {
                *seen = now;
                true
            }
            _ => false,
        }
    }

    fn remember(&self, key: PairKey) {
        let Ok(mut verified) = self.verified.lock() else {
            return;
        };
        let now = Instant::now();
        verified.retain(|_, seen| now.duration_since(*seen) < REMEMBERED_FOR);
        if verified.len() >= REMEMBERED_PAIRS
            && let Some(oldest) = verified
                .iter()
                .min_by_key(|(_, seen)| **seen)
                .map(|(key, _)| key.clone())
        {
            verified.remove(&oldest);
        }
        verified.insert(key, now);
    }
}

/// What is remembered of a verified password: not the password itself.
fn digest(password: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, password.as_bytes()).as_ref());
    out
}

/// `Basic base64(user:password)` from the request, if well formed.
fn credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

/// Middleware: 401 with a challenge unless the request is authorised or
/// goes to an open path.
pub async fn require(State(auth): State<Arc<BasicAuth>>, request: Request, next: Next) -> Response {
    if OPEN_PATHS.contains(&request.uri().path()) {
        return next.run(request).await;
    }
    match auth.check(request.headers()).await {
        Verdict::Allowed => return next.run(request).await,
        Verdict::Busy => {
            return (
                StatusCode::TOO_MANY_REQUESTS,
                [(header::RETRY_AFTER, HeaderValue::from_static("1"))],
                "Too many password checks waiting\n",
            )
                .into_response();
        }
        Verdict::Denied => {}
    }
    (
        StatusCode::UNAUTHORIZED,
        [(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"connmon\""),
        )],
        "Unauthorized\n",
    )
        .into_response()
}

/// Middleware: the configured extra headers on every response.
pub async fn add_headers(
    State(headers): State<Arc<HeaderMap>>,
    request: Request,
    next: Next,
) -> Response {
    let mut response = next.run(request).await;
    for (name, value) in headers.iter() {
        response.headers_mut().insert(name.clone(), value.clone());
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(user: &str, password: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        let encoded =
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Basic {encoded}")).unwrap(),
        );
        headers
    }

    #[tokio::test]
    async fn only_the_right_password_of_a_known_user_passes() {
        let auth = Arc::new(BasicAuth::new(BTreeMap::from([(
            "prometheus".to_string(),
            bcrypt::hash("s3cret:with colon", 4).unwrap(),
        )])));
        assert!(
            auth.allows(&header("prometheus", "s3cret:with colon"))
                .await
        );
        // Remembered now; still right.
        assert!(
            auth.allows(&header("prometheus", "s3cret:with colon"))
                .await
        );
        assert!(!auth.allows(&header("prometheus", "s3cret")).await);
        assert!(!auth.allows(&header("alice", "s3cret:with colon")).await);
        assert!(!auth.allows(&HeaderMap::new()).await);
        let mut bearer = HeaderMap::new();
        bearer.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer abc"),
        );
        assert!(!auth.allows(&bearer).await);
    }

    /// The stand-in costs what the users' hashes cost: an unknown user is
    /// rejected after as much work as a known one with a wrong password.
    #[test]
    fn the_stand_in_hash_has_the_users_cost() {
        let auth = BasicAuth::new(BTreeMap::from([(
            "prometheus".to_string(),
            bcrypt::hash("x", 5).unwrap(),
        )]));
        let parts = auth.stand_in.parse::<bcrypt::HashParts>().unwrap();
        assert_eq!(parts.get_cost(), 5);
    }

    /// One check at a time; requests that cannot get a turn in time are
    /// turned away without one, and remembered pairs skip the queue.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn checks_run_one_at_a_time_and_remembered_pairs_skip_the_queue() {
        let auth = Arc::new(BasicAuth::new(BTreeMap::from([(
            "prometheus".to_string(),
            bcrypt::hash("right", 4).unwrap(),
        )])));
        assert!(auth.allows(&header("prometheus", "right")).await);
        // Hold the only turn, as a long check would.
        let held = auth.checks.clone().acquire_owned().await.unwrap();
        let started = Instant::now();
        assert_eq!(
            auth.check(&header("prometheus", "wrong")).await,
            Verdict::Busy
        );
        assert!(started.elapsed() >= CHECK_QUEUE_WAIT);
        assert_eq!(
            auth.check(&header("prometheus", "right")).await,
            Verdict::Allowed,
            "a remembered pair needs no turn"
        );
        drop(held);
        assert_eq!(
            auth.check(&header("prometheus", "wrong")).await,
            Verdict::Denied
        );
    }

    #[test]
    fn remembered_pairs_are_bounded() {
        let auth = BasicAuth::new(BTreeMap::new());
        for i in 0..(REMEMBERED_PAIRS * 2) {
            auth.remember((format!("u{i}"), digest("p")));
        }
        let verified = auth.verified.lock().unwrap();
        assert_eq!(verified.len(), REMEMBERED_PAIRS);
        assert!(verified.contains_key(&(format!("u{}", REMEMBERED_PAIRS * 2 - 1), digest("p"))));
    }
}
