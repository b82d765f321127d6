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

use crate::{
    capture::{counters::KernelCounters, reader::ReaderStats, stats::ProgramStatsReader},
    metrics::Metrics,
    output::report::FindingRecord,
};

/// Ended storms kept for `/api/v1/storms`.
const RECENT_STORMS: usize = 100;

/// State the daemon shares with the HTTP handlers.
pub struct Status {
    ready: AtomicBool,
    storms: Mutex<StormBoard>,
    pub metrics: Metrics,
    kernel: Mutex<Option<KernelSources>>,
}

/// The kernel-side numbers read at every scrape (never per event).
pub struct KernelSources {
    pub counters: KernelCounters,
    pub programs: ProgramStatsReader,
    pub reader: Arc<ReaderStats>,
}

impl KernelSources {
    fn observe(&self, metrics: &Metrics) {
        match self.counters.snapshot() {
            Ok(snapshot) => {
                metrics.observe_kernel(&snapshot, self.reader.decode_errors.load(Ordering::Relaxed))
            }
            Err(error) => tracing::warn!(%error, "cannot read kernel counters"),
        }
        metrics.observe_programs(&self.programs.read());
    }
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
            kernel: Mutex::new(None),
        }
    }

    /// Hands over the kernel-side sources, read at every scrape.
    pub fn set_kernel_sources(&self, sources: KernelSources) {
        if let Ok(mut slot) = self.kernel.lock() {
            *slot = Some(sources);
        }
    }

    /// The kernel's counters now, if the sources are set.
    pub fn kernel_counters(&self) -> Option<crate::capture::counters::CounterSnapshot> {
        let slot = self.kernel.lock().ok()?;
        slot.as_ref()?.counters.snapshot().ok()
    }

    fn scrape(&self) -> String {
        if let Ok(slot) = self.kernel.lock()
            && let Some(sources) = slot.as_ref()
        {
            sources.observe(&self.metrics);
        }
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
        match (record.event, record.storm_id) {
            ("storm_started", Some(id)) => {
                board.active.insert(id, record.clone());
            }
            (_, id) => {
                if let Some(id) = id {
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

pub fn router(status: Arc<Status>, web: &webconfig::WebConfig) -> Router {
    let mut router = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/api/v1/storms", get(storms))
        .with_state(status);
    if !web.basic_auth_users.is_empty() {
        let users = Arc::new(auth::BasicAuth::new(web.basic_auth_users.clone()));
        router = router.layer(axum::middleware::from_fn_with_state(users, auth::require));
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

async fn metrics(
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
    active: Vec<FindingRecord>,
    recent: Vec<FindingRecord>,
}

async fn storms(State(status): State<Arc<Status>>) -> Json<StormsResponse> {
    let board = status.board();
    Json(StormsResponse {
        active: board.active.into_values().collect(),
        recent: board.recent.into_iter().collect(),
    })
}

/// How long a client may take over its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

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
    let app = router(status, web);
    let Some(tls) = &web.tls else {
        if !web.basic_auth_users.is_empty() {
            tracing::warn!("basic auth without TLS: passwords cross the network in clear");
        }
        return Ok(tokio::spawn(async move {
            if let Err(error) = axum::serve(listener, app).await {
                tracing::error!(%error, "HTTP server stopped");
            }
        }));
    };
    let acceptor = tls::acceptor(tls)?;
    Ok(tokio::spawn(serve_tls(listener, app, acceptor)))
}

async fn serve_tls(
    listener: tokio::net::TcpListener,
    app: Router,
    acceptor: tokio_rustls::TlsAcceptor,
) {
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
        let acceptor = acceptor.clone();
        let app = app.clone();
        tokio::spawn(async move {
            let stream =
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(error)) => {
                        tracing::debug!(%peer, %error, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "TLS handshake timed out");
                        return;
                    }
                };
            let service = hyper_util::service::TowerToHyperService::new(app);
            if let Err(error) = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%peer, %error, "HTTPS connection ended with an error");
            }
        });
    }
}
