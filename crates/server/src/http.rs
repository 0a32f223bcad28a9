//! `cryptotl serve`: the [`Service`] over HTTP (tokio + axum on hyper; TLS by rustls).
//!
//! Why HTTP/1.1 and not gRPC: the messages are a few opaque binary bodies (a 50 MB key once, then batches of a
//! few KB up and ~55 KB per sample down) whose format is tfhe's own versioned serialization; HTTP carries them as
//! they are, any load balancer, proxy or `curl` speaks it, and axum/hyper is the most used async stack in Rust.
//! A protobuf schema would wrap the same bytes.
//!
//! | method, path | body | answer |
//! |---|---|---|
//! | `GET /v1/interface` | | [`crate::ModelInterface`] (JSON) |
//! | `GET /v1/privacy` | | the server's privacy statement (JSON) |
//! | `POST /v1/keys` | an evaluation key (tfhe safe serialization) | `201 {"key_id": "<sha256>"}` |
//! | `POST /v1/keys/{key_id}/evaluate` | [`crate::frames`] of encrypted inputs | frames of encrypted outputs |
//! | `GET /healthz` | | `ok` (no token needed) |
//! | `GET /metrics` | | Prometheus text format (no token needed) |
//!
//! Every `/v1` request needs `Authorization: Bearer <token>` (401 otherwise). A key belongs to the token that
//! uploaded it (403 for any other). Bodies are bounded by the model's interface (413 past it). Evaluations wait
//! in a bounded queue, served one batch at a time (each batch uses every core); when the queue is full, or a
//! request waited past its timeout, the answer is 503 with `Retry-After`. One client (one token) holds at most
//! `max_per_client` of the queue's places; a request past that is 429 with `Retry-After`, so a client that sends
//! more than it should at once cannot fill the queue and turn the others away. Key uploads are bounded the same
//! way before their bodies are read: [`MAX_UPLOADS`] at once (503 past it), [`UPLOADS_PER_CLIENT`] of one client
//! (429 past it). A batch that runs past the evaluation
//! timeout is stopped within milliseconds (the worker is free again) and answered 413: the same batch would run as
//! long again, fewer samples per request pass. The token is checked from the headers before a body is read, so a
//! request without one costs the server no upload. Errors are JSON `{"error": "..."}`, the refusals of the HTTP
//! layer included (a body past its limit, an unknown path, a wrong method).
//! Plain HTTP is refused on any address but loopback.
//!
//! An evaluate request names the output formats its client reads in `x-cryptotl-output`
//! ([`crate::wire::OutputFormat`]): `packed` from clients of 2026-12-05 on; no header is a client built before,
//! answered in the 32-bit words it reads; naming only formats this server does not write is 406.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, FromRequestParts, MatchedPath, Path, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::sync::Semaphore;

use crate::auth::{ClientId, TokenFile};
use crate::error::HeError;
use crate::service::{Service, ServiceError};
use crate::wire::OutputFormat;

/// The largest `max_queue` [`serve`] takes: each waiting request may hold a batch of ciphertexts in memory.
pub const MAX_QUEUE: usize = 65_536;

/// How `cryptotl serve` runs.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// Address to listen on (port 0: any free port).
    pub listen: SocketAddr,
    /// TLS certificate chain and private key (PEM files). Without them only loopback addresses are allowed.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Evaluation requests waiting or running at most, 1 to [`MAX_QUEUE`]; more get 503.
    pub max_queue: usize,
    /// Of those, at most this many from one client (one token), at least 1; more get 429. Above `max_queue` it
    /// bounds nothing.
    pub max_per_client: usize,
    /// Longest an evaluation request may wait for its turn before it gets 503.
    pub queue_timeout: Duration,
    /// Longest a key upload may take, its body's arrival included, before it gets 408: an upload holds one of
    /// [`MAX_UPLOADS`] turns from its headers on, so one whose body never comes must not hold it for ever.
    pub upload_timeout: Duration,
    /// Longest one batch may run once its turn came; past it the evaluation stops and the answer is 413 (fewer
    /// samples per request). Set on the [`Service`] by [`serve`].
    pub eval_timeout: Duration,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    endpoint: String,
    status: u16,
}

struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<RequestLabels, Histogram>,
    samples: Counter,
    bootstraps: Counter,
    bootstraps_per_second: Gauge<f64, AtomicU64>,
    queue_depth: Gauge,
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("cryptotl");
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::<RequestLabels, Histogram>::new_with_constructor(|| Histogram::new(exponential_buckets(0.001, 2.0, 18)));
        let (samples, bootstraps) = (Counter::default(), Counter::default());
        let bootstraps_per_second = Gauge::<f64, AtomicU64>::default();
        let queue_depth = Gauge::default();
        registry.register("requests", "HTTP requests by endpoint and status", requests.clone());
        registry.register("request_seconds", "HTTP request latency by endpoint and status", latency.clone());
        registry.register("samples", "Encrypted samples evaluated", samples.clone());
        registry.register("bootstraps", "Programmable bootstraps run", bootstraps.clone());
        registry.register("bootstraps_per_second", "Bootstraps per second of the last evaluated batch", bootstraps_per_second.clone());
        registry.register("queue_depth", "Evaluation requests waiting or running", queue_depth.clone());
        Self { registry, requests, latency, samples, bootstraps, bootstraps_per_second, queue_depth }
    }
}

struct AppState {
    service: Arc<Service>,
    tokens: TokenFile,
    queue: Arc<Semaphore>,
    max_queue: usize,
    /// Places in the queue each client holds, and the most one may.
    per_client: PlaceCounts,
    max_per_client: usize,
    /// Key uploads under way ([`MAX_UPLOADS`]), and each client's ([`UPLOADS_PER_CLIENT`]).
    uploads: Arc<Semaphore>,
    uploads_per_client: PlaceCounts,
    worker: Arc<Semaphore>,
    queue_timeout: Duration,
    upload_timeout: Duration,
    metrics: Metrics,
}

impl AppState {
    /// Evaluation requests waiting or running, into the metrics.
    fn record_queue_depth(&self) {
        self.metrics.queue_depth.set((self.max_queue - self.queue.available_permits()) as i64);
    }
}

type Shared = Arc<AppState>;

/// A client's place among its evaluation requests ([`AppState::per_client`]) or its key uploads
/// ([`AppState::uploads_per_client`]), counted there until dropped.
struct ClientPlace {
    counts: PlaceCounts,
    client: String,
}

/// Places each client holds (by its token's hash).
type PlaceCounts = Arc<std::sync::Mutex<std::collections::HashMap<String, usize>>>;

impl ClientPlace {
    /// One more place in `counts` for `client`, unless it holds `max` already.
    fn take(counts: &PlaceCounts, client: &ClientId, max: usize) -> Option<Self> {
        let mut held_by = counts.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let held = held_by.entry(client.token_sha256.clone()).or_default();
        if *held >= max {
            return None;
        }
        *held += 1;
        Some(Self { counts: counts.clone(), client: client.token_sha256.clone() })
    }
}

impl Drop for ClientPlace {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(held) = counts.get_mut(&self.client) {
            *held -= 1;
            if *held == 0 {
                counts.remove(&self.client);
            }
        }
    }
}

/// 429 with `Retry-After`: the client holds as many places as one client may.
fn too_many(message: String) -> Response {
    let mut r = error(StatusCode::TOO_MANY_REQUESTS, message);
    r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    r
}

/// An evaluation request's place among its client's (`max_per_client`, 429 past it), taken from its headers with
/// the token check, before its body is read: so the batches one client has under way, those still arriving
/// included, are bounded too.
struct EvaluateTurn(ClientId, ClientPlace);

impl FromRequestParts<Shared> for EvaluateTurn {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &Shared) -> Result<Self, Self::Rejection> {
        let client = authenticate(state, &parts.headers).map_err(IntoResponse::into_response)?;
        let own = ClientPlace::take(&state.per_client, &client, state.max_per_client).ok_or_else(|| {
            too_many(format!("this client has {} evaluation requests waiting or running, the most one client may; retry once one is answered", state.max_per_client))
        })?;
        Ok(Self(client, own))
    }
}

/// Key uploads the server takes at once (each body up to the evaluation key's size, ~50 MiB, held in memory while
/// it is read and checked); more get 503 with `Retry-After`.
pub const MAX_UPLOADS: usize = 8;

/// Of those, uploads one client may have at once (a client uploads one key per session); more get 429.
pub const UPLOADS_PER_CLIENT: usize = 2;

/// A key upload's turn, taken from its headers before its body is read: the client (401 without a known token), its
/// place among its own uploads (429 past [`UPLOADS_PER_CLIENT`]) and among all ([`MAX_UPLOADS`], 503 past it). So
/// many uploads at once cannot hold more than [`MAX_UPLOADS`] bodies in memory, and one client not all of them.
struct UploadTurn(ClientId, ClientPlace, tokio::sync::OwnedSemaphorePermit);

impl FromRequestParts<Shared> for UploadTurn {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &Shared) -> Result<Self, Self::Rejection> {
        let client = authenticate(state, &parts.headers).map_err(IntoResponse::into_response)?;
        let own = ClientPlace::take(&state.uploads_per_client, &client, UPLOADS_PER_CLIENT)
            .ok_or_else(|| too_many(format!("this client has {UPLOADS_PER_CLIENT} key uploads under way, the most one client may; retry once one is answered")))?;
        let slot = state.uploads.clone().try_acquire_owned().map_err(|_| busy("the server is taking as many key uploads as it can at once; retry later"))?;
        Ok(Self(client, own, slot))
    }
}

fn error(status: StatusCode, message: impl std::fmt::Display) -> Response {
    (status, axum::Json(serde_json::json!({ "error": message.to_string() }))).into_response()
}

fn busy(message: &str) -> Response {
    let mut r = error(StatusCode::SERVICE_UNAVAILABLE, message);
    r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    r
}

impl IntoResponse for ServiceError {
    fn into_response(self) -> Response {
        error(StatusCode::from_u16(self.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), self)
    }
}

/// A request without a known bearer token: answered 401 with `WWW-Authenticate: Bearer`.
#[derive(Debug)]
struct Unauthorized;

impl IntoResponse for Unauthorized {
    fn into_response(self) -> Response {
        let mut r = error(StatusCode::UNAUTHORIZED, "missing or unknown bearer token (Authorization: Bearer <token>)");
        r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        r
    }
}

fn authenticate(state: &AppState, headers: &HeaderMap) -> Result<ClientId, Unauthorized> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    token.and_then(|t| state.tokens.authenticate(t)).ok_or(Unauthorized)
}

/// A `/v1` request of a known client, checked from its headers: 401 otherwise. (The uploads and evaluations, which
/// have bodies, are checked by [`UploadTurn`] and [`EvaluateTurn`], before their bodies are read.)
struct Authenticated;

impl FromRequestParts<Shared> for Authenticated {
    type Rejection = Unauthorized;

    async fn from_request_parts(parts: &mut Parts, state: &Shared) -> Result<Self, Self::Rejection> {
        authenticate(state, &parts.headers).map(|_| Authenticated)
    }
}

/// The HTTP layer's refusal of a request body as the JSON error every other refusal is: past the route's `limit`
/// (bytes, from the model's interface), 413 naming it; unreadable, 400.
fn refused_body(rejection: BytesRejection, limit: u64) -> Response {
    match rejection.status() {
        StatusCode::PAYLOAD_TOO_LARGE => error(StatusCode::PAYLOAD_TOO_LARGE, format!("request body past this endpoint's limit of {limit} bytes")),
        status => error(status, rejection.body_text()),
    }
}

/// A key upload that takes longer than `upload_timeout` (a body that never comes, or trickles) is answered 408, and
/// its turn is free again.
async fn upload_deadline(State(s): State<Shared>, request: Request, next: Next) -> Response {
    match tokio::time::timeout(s.upload_timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => error(
            StatusCode::REQUEST_TIMEOUT,
            format!("the key upload took longer than the server's limit of {:.0} s; send it again (over a faster link)", s.upload_timeout.as_secs_f64()),
        ),
    }
}

async fn interface(State(s): State<Shared>, _: Authenticated) -> Response {
    axum::Json(s.service.interface().clone()).into_response()
}

async fn privacy(State(s): State<Shared>, _: Authenticated) -> Response {
    axum::Json(s.service.privacy().clone()).into_response()
}

async fn upload_key(State(s): State<Shared>, UploadTurn(client, own, slot): UploadTurn, body: Result<Bytes, BytesRejection>) -> Response {
    let body = match body {
        Ok(b) => b,
        Err(r) => return refused_body(r, s.service.interface().evaluation_key_limit),
    };
    let service = s.service.clone();
    match tokio::task::spawn_blocking(move || {
        let _turn = (own, slot);
        service.upload_key(&client, &body)
    })
    .await
    {
        Ok(Ok(id)) => (StatusCode::CREATED, axum::Json(serde_json::json!({ "key_id": id }))).into_response(),
        Ok(Err(e)) => e.into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("key upload failed: {e}")),
    }
}

async fn evaluate(State(s): State<Shared>, EvaluateTurn(client, own): EvaluateTurn, Path(key_id): Path<String>, headers: HeaderMap, body: Result<Bytes, BytesRejection>) -> Response {
    let body = match body {
        Ok(b) => b,
        Err(r) => return refused_body(r, s.service.interface().request_limit()),
    };
    let format = match OutputFormat::negotiate(headers.get(OutputFormat::HEADER).map(|v| v.to_str().unwrap_or("(not ASCII)"))) {
        Ok(f) => f,
        Err(message) => return error(StatusCode::NOT_ACCEPTABLE, message),
    };
    let Ok(place) = s.queue.clone().try_acquire_owned() else {
        return busy("the evaluation queue is full; retry later");
    };
    s.record_queue_depth();
    let worker = match tokio::time::timeout(s.queue_timeout, s.worker.clone().acquire_owned()).await {
        Ok(Ok(w)) => w,
        _ => return busy("waited too long for a turn in the evaluation queue; retry later"),
    };
    let service = s.service.clone();
    let done = tokio::task::spawn_blocking(move || {
        let _turn = (own, place, worker);
        service.evaluate(&client, &key_id, &body, format)
    })
    .await;
    s.record_queue_depth();
    match done {
        Ok(Ok(out)) => {
            s.metrics.samples.inc_by(out.samples as u64);
            s.metrics.bootstraps.inc_by(out.bootstraps as u64);
            if out.eval_seconds > 0.0 {
                s.metrics.bootstraps_per_second.set(out.bootstraps as f64 / out.eval_seconds);
            }
            let timing = |v: f64| HeaderValue::from_str(&format!("{v:.6}")).unwrap_or(HeaderValue::from_static("0"));
            let mut r = ([(header::CONTENT_TYPE, "application/octet-stream")], out.body).into_response();
            r.headers_mut().insert("x-eval-seconds", timing(out.eval_seconds));
            r.headers_mut().insert("x-setup-seconds", timing(out.setup_seconds));
            r
        }
        Ok(Err(e)) => e.into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("evaluation failed: {e}")),
    }
}

async fn metrics(State(s): State<Shared>) -> Response {
    s.record_queue_depth();
    let mut text = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &s.metrics.registry) {
        return error(StatusCode::INTERNAL_SERVER_ERROR, e);
    }
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], text).into_response()
}

/// One log line and one metrics sample per request.
async fn observe(State(s): State<Shared>, request: Request, next: Next) -> Response {
    let t = Instant::now();
    let method = request.method().clone();
    let endpoint = request.extensions().get::<MatchedPath>().map(|p| p.as_str().to_string()).unwrap_or_else(|| "unmatched".into());
    let response = next.run(request).await;
    let status = response.status().as_u16();
    let seconds = t.elapsed().as_secs_f64();
    let labels = RequestLabels { endpoint: endpoint.clone(), status };
    s.metrics.requests.get_or_create(&labels).inc();
    s.metrics.latency.get_or_create(&labels).observe(seconds);
    tracing::info!(%method, endpoint, status, ms = (seconds * 1e3).round(), "request");
    response
}

/// The routes [`router`] serves, as its 404 and 405 answers list them.
const ENDPOINTS: &str = "GET /v1/interface, GET /v1/privacy, POST /v1/keys, POST /v1/keys/{key_id}/evaluate, GET /healthz, GET /metrics";

/// The service's routes (no listener), with the queue and upload bounds of `opts` (its address, TLS files and
/// evaluation timeout are [`serve`]'s to apply).
pub fn router(service: Arc<Service>, tokens: TokenFile, opts: &ServeOptions) -> Router {
    let iface = service.interface().clone();
    let max_queue = opts.max_queue.clamp(1, MAX_QUEUE);
    let state = Arc::new(AppState {
        service,
        tokens,
        queue: Arc::new(Semaphore::new(max_queue)),
        max_queue,
        per_client: Arc::default(),
        max_per_client: opts.max_per_client.max(1),
        uploads: Arc::new(Semaphore::new(MAX_UPLOADS)),
        uploads_per_client: Arc::default(),
        worker: Arc::new(Semaphore::new(1)),
        queue_timeout: opts.queue_timeout,
        upload_timeout: opts.upload_timeout,
        metrics: Metrics::new(),
    });
    let key_limit = iface.evaluation_key_limit as usize;
    let batch_limit = iface.request_limit() as usize;
    Router::new()
        .route("/v1/interface", get(interface))
        .route("/v1/privacy", get(privacy))
        .route("/v1/keys", post(upload_key).layer(DefaultBodyLimit::max(key_limit)).layer(middleware::from_fn_with_state(state.clone(), upload_deadline)))
        .route("/v1/keys/{key_id}/evaluate", post(evaluate).layer(DefaultBodyLimit::max(batch_limit)))
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(metrics))
        .fallback(|| async { error(StatusCode::NOT_FOUND, format!("no such endpoint ({ENDPOINTS})")) })
        .method_not_allowed_fallback(|| async { error(StatusCode::METHOD_NOT_ALLOWED, format!("this endpoint does not take that method ({ENDPOINTS})")) })
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
    tracing::info!("shutting down: finishing requests in flight");
}

/// Bind, call `ready` with the bound address and scheme, and serve until SIGINT or SIGTERM.
///
/// What it cannot start with (an address off loopback without TLS, one it cannot bind, unusable TLS files, a queue
/// bound out of range) is [`HeError::Start`], naming the option.
pub fn serve(service: Service, tokens: TokenFile, opts: ServeOptions, ready: impl FnOnce(SocketAddr, &str)) -> Result<(), HeError> {
    let io = |what: &str, e: std::io::Error| HeError::File { path: what.to_string(), message: e.to_string() };
    let listen = opts.listen;
    let refused = |message: String| HeError::Start { option: "--listen", message: format!("{listen}: {message}") };
    if opts.tls.is_none() && !listen.ip().is_loopback() {
        return Err(refused("plain HTTP is only allowed on a loopback address; give --tls-cert and --tls-key to listen elsewhere".into()));
    }
    if !(1..=MAX_QUEUE).contains(&opts.max_queue) {
        return Err(HeError::Start { option: "--max-queue", message: format!("must be in 1..={MAX_QUEUE}, got {}", opts.max_queue) });
    }
    if opts.max_per_client == 0 {
        return Err(HeError::Start { option: "--max-per-client", message: "must be at least 1".into() });
    }
    let listener = std::net::TcpListener::bind(listen).map_err(|e| refused(e.to_string()))?;
    listener.set_nonblocking(true).map_err(|e| io("listener", e))?;
    let addr = listener.local_addr().map_err(|e| io("listener", e))?;
    let service = service.with_eval_limit(Some(opts.eval_timeout));
    let app = router(Arc::new(service), tokens, &opts);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(|e| io("tokio runtime", e))?;
    runtime.block_on(async move {
        match opts.tls {
            None => {
                let listener = tokio::net::TcpListener::from_std(listener).map_err(|e| io("listener", e))?;
                ready(addr, "http");
                axum::serve(listener, app).with_graceful_shutdown(shutdown_signal()).await.map_err(|e| io("server", e))
            }
            Some((cert, key)) => {
                let _ = rustls::crypto::ring::default_provider().install_default();
                let config = axum_server::tls_rustls::RustlsConfig::from_pem_file(&cert, &key)
                    .await
                    .map_err(|e| HeError::Start { option: "--tls-cert / --tls-key", message: format!("{} / {}: {e}", cert.display(), key.display()) })?;
                let handle = axum_server::Handle::new();
                let h = handle.clone();
                tokio::spawn(async move {
                    shutdown_signal().await;
                    h.graceful_shutdown(Some(Duration::from_secs(30)));
                });
                ready(addr, "https");
                axum_server::from_tcp_rustls(listener, config).handle(handle).serve(app.into_make_service()).await.map_err(|e| io("server", e))
            }
        }
    })
}
