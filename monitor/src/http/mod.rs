//! The HTTP endpoints: health, readiness and the storms API. A slow client
//! never stalls the pipeline: handlers only read shared state. TLS, basic
//! auth and extra headers come from an exporter web-config file.

pub mod auth;
pub mod tls;
pub mod webconfig;

use std::{
    collections::{BTreeMap, VecDeque},
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use axum::{Json, Router, extract::State, http::StatusCode, routing::get};
use serde::Serialize;

pub use crate::kernel_metrics::KernelSources;

use crate::{
    metrics::Metrics,
    output::report::{FindingRecord, StormChange},
};

/// Ended storms kept for `/api/v1/storms`.
const RECENT_STORMS: usize = 100;

/// State the daemon shares with the HTTP handlers.
pub struct Status {
    ready: AtomicBool,
    storms: Mutex<StormBoard>,
    pub metrics: Metrics,
}

#[derive(Default, Serialize, Clone)]
pub struct StormBoard {
    /// Storms in progress, by storm id.
    pub active: BTreeMap<u64, FindingRecord>,
    /// The latest ended storms and resets after idle, newest first.
    pub recent: VecDeque<FindingRecord>,
}

impl Status {
    pub fn new(metrics: Metrics) -> Self {
        Self {
            ready: AtomicBool::new(false),
            storms: Mutex::default(),
            metrics,
        }
    }

    /// Hands over the kernel-side sources, read at every scrape.
    pub fn set_kernel_sources(&self, sources: KernelSources) {
        self.metrics.set_kernel_sources(sources);
    }

    /// The kernel's counters now, if the sources are set.
    pub fn kernel_counters(&self) -> Option<crate::capture::counters::CounterSnapshot> {
        self.metrics.kernel_counters()
    }

    fn scrape(&self) -> String {
        self.metrics.render()
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Files a finding record under active or recent.
    pub fn record(&self, record: &FindingRecord) {
        let Ok(mut board) = self.storms.lock() else {
            return;
        };
        match record.storm_change() {
            Some(StormChange::Started(id)) => {
                board.active.insert(id, record.clone());
            }
            change => {
                if let Some(StormChange::Ended(id)) = change {
                    board.active.remove(&id);
                }
                board.recent.push_front(record.clone());
                board.recent.truncate(RECENT_STORMS);
            }
        }
    }

    pub fn board(&self) -> StormBoard {
        self.storms
            .lock()
            .map(|board| board.clone())
            .unwrap_or_default()
    }
}

/// The HTTP server's own counters, next to the daemon's metrics.
#[derive(Clone)]
pub struct HttpMetrics {
    refused: prometheus::IntCounter,
    auth_rejected: prometheus::IntCounterVec,
}

impl HttpMetrics {
    fn new(metrics: &Metrics) -> prometheus::Result<Self> {
        let refused = prometheus::IntCounter::new(
            "connmon_http_connections_refused_total",
            "HTTP connections closed unanswered because the connection cap was reached.",
        )?;
        let auth_rejected = prometheus::IntCounterVec::new(
            prometheus::Opts::new(
                "connmon_http_auth_rejected_total",
                "Requests refused by basic auth: bad_credentials, no_credentials, busy (too many password checks waiting).",
            ),
            &["reason"],
        )?;
        for reason in ["bad_credentials", "no_credentials", "busy"] {
            auth_rejected.with_label_values(&[reason]);
        }
        metrics.register(Box::new(refused.clone()))?;
        metrics.register(Box::new(auth_rejected.clone()))?;
        Ok(Self {
            refused,
            auth_rejected,
        })
    }
}

pub fn router(status: Arc<Status>, web: &webconfig::WebConfig) -> Router {
    router_with(status, web, None)
}

fn router_with(
    status: Arc<Status>,
    web: &webconfig::WebConfig,
    metrics: Option<&HttpMetrics>,
) -> Router {
    let mut router = Router::new()
        .route("/", get(landing_page))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_handler))
        .route("/api/v1/storms", get(storms))
        .with_state(status);
    if !web.basic_auth_users.is_empty() {
        let mut users = auth::BasicAuth::new(web.basic_auth_users.clone());
        if let Some(metrics) = metrics {
            users = users.with_rejections(metrics.auth_rejected.clone());
        }
        router = router.layer(axum::middleware::from_fn_with_state(
            Arc::new(users),
            auth::require,
        ));
    }
    if !web.headers.is_empty() {
        let headers: axum::http::HeaderMap = web
            .headers
            .iter()
            .filter_map(|(name, value)| {
                Some((
                    axum::http::HeaderName::from_bytes(name.as_bytes()).ok()?,
                    axum::http::HeaderValue::from_str(value).ok()?,
                ))
            })
            .collect();
        router = router.layer(axum::middleware::from_fn_with_state(
            Arc::new(headers),
            auth::add_headers,
        ));
    }
    router
}

/// `/`: what this is and where its endpoints are, for whoever opens the
/// port in a browser (behind the same auth as the rest).
async fn landing_page() -> axum::response::Html<&'static str> {
    axum::response::Html(LANDING_PAGE)
}

const LANDING_PAGE: &str = concat!(
    "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>connmon</title></head>\n",
    "<body><h1>connmon</h1>\n",
    "<p>Finds the process behind TCP retransmit storms on idle pooled connections. Version ",
    env!("CARGO_PKG_VERSION"),
    ", revision ",
    env!("CONNMON_GIT_REVISION"),
    ".</p>\n<ul>\n",
    "<li><a href=\"metrics\">/metrics</a>: Prometheus metrics</li>\n",
    "<li><a href=\"api/v1/storms\">/api/v1/storms</a>: storms in progress and recent ones (JSON)</li>\n",
    "<li><a href=\"healthz\">/healthz</a>: liveness</li>\n",
    "<li><a href=\"readyz\">/readyz</a>: readiness (kernel programs attached)</li>\n",
    "</ul></body></html>\n"
);

async fn readyz(State(status): State<Arc<Status>>) -> (StatusCode, &'static str) {
    if status.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "kernel programs not attached\n",
        )
    }
}

async fn metrics_handler(
    State(status): State<Arc<Status>>,
) -> ([(axum::http::HeaderName, &'static str); 1], String) {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        status.scrape(),
    )
}

#[derive(Serialize)]
struct StormsResponse {
    schema_version: u32,
    active: Vec<FindingRecord>,
    recent: Vec<FindingRecord>,
}

async fn storms(State(status): State<Arc<Status>>) -> Json<StormsResponse> {
    let board = status.board();
    Json(StormsResponse {
        schema_version: crate::output::SCHEMA_VERSION,
        active: board.active.into_values().collect(),
        recent: board.recent.into_iter().collect(),
    })
}

/// How long a client may take over its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a client may take to send a request's headers, and how long
/// an idle keep-alive connection is kept: a client that opens connections
/// and says nothing holds them no longer than this.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections served at once. A scraper needs one or two; past the cap a
/// new connection is closed at once and counted, so a flood cannot take
/// connmon's file descriptors or memory.
pub const MAX_CONNECTIONS: usize = 256;

/// Largest request head read (hyper's minimum buffer): the endpoints take
/// no body and a handful of headers.
const MAX_REQUEST_BUFFER: usize = 8192;

/// At most one warning about refused connections per this interval.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// Binds `listen` (so a taken port fails at start-up, with its address) and
/// serves in the background, over TLS when the web config says so.
pub async fn serve(
    listen: SocketAddr,
    status: Arc<Status>,
    web: &webconfig::WebConfig,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|error| anyhow::anyhow!("cannot listen on {listen}: {error}"))?;
    let metrics = HttpMetrics::new(&status.metrics)
        .map_err(|error| anyhow::anyhow!("registering HTTP metrics: {error}"))?;
    let app = router_with(status, web, Some(&metrics));
    let acceptor = match &web.tls {
        Some(tls) => Some(tls::acceptor(tls)?),
        None => {
            if !web.basic_auth_users.is_empty() {
                tracing::warn!("basic auth without TLS: passwords cross the network in clear");
            }
            None
        }
    };
    Ok(tokio::spawn(serve_connections(
        listener, app, acceptor, metrics,
    )))
}

async fn serve_connections(
    listener: tokio::net::TcpListener,
    app: Router,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    metrics: HttpMetrics,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let mut last_refusal_log: Option<std::time::Instant> = None;
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors and the like: back off instead
                // of spinning, and keep serving once it passes.
                tracing::warn!(%error, "cannot accept an HTTP connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            metrics.refused.inc();
            if last_refusal_log.is_none_or(|at| at.elapsed() >= REFUSAL_LOG_INTERVAL) {
                last_refusal_log = Some(std::time::Instant::now());
                tracing::warn!(
                    %peer,
                    max_connections = MAX_CONNECTIONS,
                    "HTTP connection cap reached: closing new connections \
                     (connmon_http_connections_refused_total counts them)"
                );
            }
            drop(stream);
            continue;
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        tokio::spawn(async move {
            let _slot = slot;
            match acceptor {
                None => serve_connection(stream, app, peer, false).await,
                Some(acceptor) => {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => serve_connection(stream, app, peer, false).await,
                        Ok(Err(error)) => tracing::debug!(%peer, %error, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                }
            }
        });
    }
}

/// Answers `request` (what a client sent, then the end of its stream) on
/// one in-memory connection served like a socket's, and returns what the
/// server wrote back: the whole request path, from parsing through auth to
/// the handlers, without a socket. For the fuzz target and tests.
pub async fn answer_raw(app: Router, request: &[u8]) -> std::io::Result<Vec<u8>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (client, server) = tokio::io::duplex(16 * 1024);
    let serving = tokio::spawn(serve_connection(
        server,
        app,
        SocketAddr::from(([127, 0, 0, 1], 0)),
        // The request ends with the end of the stream: answer it anyway.
        true,
    ));
    let (mut from_server, mut to_server) = tokio::io::split(client);
    // Written and read at once: a server that answers (or gives up) before
    // reading everything must not leave the writer stuck.
    let write = async {
        // The server may close first (a bad request): not an error here.
        let _ = to_server.write_all(request).await;
        let _ = to_server.shutdown().await;
    };
    let mut response = Vec::new();
    let (_, read) = tokio::join!(write, from_server.read_to_end(&mut response));
    read?;
    let _ = serving.await;
    Ok(response)
}

/// One HTTP/1.1 connection, closed when its headers take longer than
/// `HEADER_READ_TIMEOUT` (also between keep-alive requests).
/// `half_close`: a client that ends its stream still gets its answer.
async fn serve_connection<S>(stream: S, app: Router, peer: SocketAddr, half_close: bool)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper_util::service::TowerToHyperService::new(app);
    if let Err(error) = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_REQUEST_BUFFER)
        .half_close(half_close)
        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
        .await
    {
        tracing::debug!(%peer, %error, "HTTP connection ended with an error");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(users: &[(&str, &str)]) -> Router {
        let metrics = Metrics::new(crate::metrics::DEFAULT_SERIES_CAP).expect("metrics");
        let web = webconfig::WebConfig {
            basic_auth_users: users
                .iter()
                .map(|(user, password)| {
                    (user.to_string(), bcrypt::hash(password, 4).expect("hash"))
                })
                .collect(),
            ..Default::default()
        };
        router(Arc::new(Status::new(metrics)), &web)
    }

    fn status_of(response: &[u8]) -> String {
        String::from_utf8_lossy(response)
            .get(..12)
            .unwrap_or_default()
            .to_string()
    }

    /// A storm is active from its start to its end, then recent; other
    /// findings are recent at once.
    #[test]
    fn storms_are_active_until_they_end() {
        use crate::output::report::FindingEvent;
        let status =
            Status::new(Metrics::new(crate::metrics::DEFAULT_SERIES_CAP).expect("metrics"));
        let started = crate::output::report::tests::storm_started();
        status.record(&started);
        let board = status.board();
        assert_eq!(board.active.keys().collect::<Vec<_>>(), [&7]);
        assert!(board.recent.is_empty());
        let mut ended = started.clone();
        ended.event = FindingEvent::StormEnded;
        status.record(&ended);
        let mut reset = started;
        reset.event = FindingEvent::ResetAfterIdle;
        reset.storm_id = None;
        status.record(&reset);
        let board = status.board();
        assert!(board.active.is_empty());
        let recent: Vec<_> = board.recent.iter().map(|r| r.event).collect();
        assert_eq!(
            recent,
            [FindingEvent::ResetAfterIdle, FindingEvent::StormEnded]
        );
    }

    #[tokio::test]
    async fn raw_requests_get_answers_and_guarded_paths_need_the_password() {
        let app = app(&[("prometheus", "s3cret")]);
        let answer = |request: &'static [u8]| {
            let app = app.clone();
            async move { answer_raw(app, request).await.expect("answer") }
        };
        let healthz = answer(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert_eq!(status_of(&healthz), "HTTP/1.1 200", "{healthz:?}");
        let metrics = answer(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert_eq!(status_of(&metrics), "HTTP/1.1 401");
        // prometheus:s3cret
        let authed = answer(
            b"GET /metrics HTTP/1.1\r\nAuthorization: Basic cHJvbWV0aGV1czpzM2NyZXQ=\r\n\r\n",
        )
        .await;
        assert_eq!(status_of(&authed), "HTTP/1.1 200");
        assert!(String::from_utf8_lossy(&authed).contains("# HELP connmon_"));
        let garbage = answer(b"\x00\xff GET / HTTP/9\r\n\r\n").await;
        assert_eq!(status_of(&garbage), "HTTP/1.1 400", "{garbage:?}");
        let huge = answer(Box::leak(
            format!("GET /metrics HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(20_000))
                .into_bytes()
                .into_boxed_slice(),
        ))
        .await;
        assert_eq!(
            status_of(&huge),
            "HTTP/1.1 431",
            "{:?}",
            String::from_utf8_lossy(&huge)
        );
        // The landing page links every endpoint, behind the same password.
        let landing = answer(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert_eq!(status_of(&landing), "HTTP/1.1 401");
        let landing =
            answer(b"GET / HTTP/1.1\r\nAuthorization: Basic cHJvbWV0aGV1czpzM2NyZXQ=\r\n\r\n")
                .await;
        assert_eq!(status_of(&landing), "HTTP/1.1 200");
        let landing = String::from_utf8_lossy(&landing);
        assert!(landing.contains("text/html"), "{landing}");
        for link in ["metrics", "api/v1/storms", "healthz", "readyz"] {
            assert!(
                landing.contains(&format!("<a href=\"{link}\">")),
                "{link}: {landing}"
            );
        }
        // Half a head, then the end of the stream: closed without an answer.
        assert!(answer(b"GET /metrics HTTP/1.1\r\nHo").await.is_empty());
    }
}
