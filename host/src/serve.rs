//! The master's HTTP control plane, compatible with the SwarmCloud super peer's REST
//! API, plus policy management, an OpenAPI document, Prometheus metrics and the
//! monitor page.
//!
//! It owns request parsing, authentication and the answers; the master task owns the
//! state. Compiling an uploaded policy runs on a blocking thread so a large upload never
//! stalls other requests. It must never answer bad input with a 5xx or a panic, and
//! never replace a policy with one that failed to compile or start.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::rejection::PathRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::net::TcpListener;

use crate::fleet::{FleetError, FleetHandle};
use crate::master::seeds::{self, SeedItem, SeedRequest};
use crate::master::{MasterError, MasterHandle, PolicyTarget};
use crate::policy::wire::SeedConfig;
use crate::policy::{
    AdmittedPolicy, Clock, CompiledPolicy, Fault, PolicyEngine, PolicyError, PolicyRunner,
};
use crate::protocol::Protocol;

/// Every route: method and path as in the OpenAPI document, which a test keeps equal.
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/"),
    ("GET", "/health"),
    ("GET", "/metrics"),
    ("GET", "/history"),
    ("GET", "/openapi.json"),
    ("POST", "/ping"),
    ("POST", "/seed"),
    ("GET", "/stats"),
    ("GET", "/stats/{id}"),
    ("POST", "/stop_all"),
    ("POST", "/stop/{pid}"),
    ("POST", "/restart_all"),
    ("POST", "/restart/{pid}"),
    ("GET", "/policy"),
    ("POST", "/policy"),
    ("GET", "/fleet"),
    ("GET", "/candidates"),
    ("POST", "/candidates"),
];

/// The OpenAPI 3.1 description of [`ROUTES`].
pub const OPENAPI: &str = include_str!("openapi.json");

/// The monitor page: one self-contained file (styles and script inline), so the binary
/// serves everything it needs and nothing comes from elsewhere.
pub const MONITOR_PAGE: &str = include_str!("monitor.html");

/// What the page may load: only from this server; its own inline style and script.
const MONITOR_CSP: &str = "default-src 'none'; script-src 'unsafe-inline'; \
    style-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:; \
    base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// Paths anyone may read: the page holds no data (it asks for the token and sends it
/// with its requests), and probes must not need a secret.
const PUBLIC_PATHS: &[&str] = &["/", "/health"];

/// Largest JSON body accepted (a seed list of a thousand items fits easily).
const MAX_JSON_BODY: usize = 1 << 20;

/// What the control plane shares between requests.
#[derive(Clone, Debug)]
pub struct ControlPlane {
    engine: PolicyEngine,
    master: MasterHandle,
    access_token: Option<Arc<str>>,
    /// One upload is compiled at a time: each can take a large body and a core.
    upload_slot: Arc<tokio::sync::Semaphore>,
    started: Instant,
    /// Fleet mode: the seed list is the fleet's (in etcd), not this master's.
    fleet: Option<FleetHandle>,
}

impl ControlPlane {
    pub fn new(engine: PolicyEngine, master: MasterHandle, access_token: Option<String>) -> Self {
        ControlPlane {
            engine,
            master,
            access_token: access_token.filter(|t| !t.is_empty()).map(Into::into),
            upload_slot: Arc::new(tokio::sync::Semaphore::new(1)),
            started: Instant::now(),
            fleet: None,
        }
    }

    /// Fleet mode: seeds are written to the fleet's list, and `/fleet` shows it.
    pub fn with_fleet(mut self, fleet: FleetHandle) -> Self {
        self.fleet = Some(fleet);
        self
    }

    /// Whether requests must carry a token.
    pub fn requires_token(&self) -> bool {
        self.access_token.is_some()
    }

    pub fn router(self) -> Router {
        let max_upload = self.engine.limits().max_component_bytes;
        let mut router = Router::new();
        let mut paths: Vec<&str> = ROUTES.iter().map(|(_, path)| *path).collect();
        paths.sort_unstable();
        paths.dedup();
        for path in paths {
            router = router.route(path, handlers(path));
        }
        router
            .layer(DefaultBodyLimit::max(max_upload))
            // Before any body is read: an unauthenticated upload costs nothing.
            .layer(axum::middleware::from_fn_with_state(self.clone(), require_token))
            .method_not_allowed_fallback(method_not_allowed)
            .fallback(not_found)
            .with_state(self)
    }

    fn authorize(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let Some(expected) = &self.access_token else { return Ok(()) };
        // `Authorization: Bearer` too, as Prometheus scrape configs can send it.
        let bearer = headers
            .get("authorization")
            .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
            .map(<[u8]>::trim_ascii);
        let given = headers.get("x-access-token").map(|v| v.as_bytes()).or(bearer);
        if constant_time_eq(given.unwrap_or_default(), expected.as_bytes()) {
            Ok(())
        } else {
            Err(ApiError(
                StatusCode::UNAUTHORIZED,
                "missing or wrong X-ACCESS-TOKEN (or Authorization: Bearer) header".into(),
            ))
        }
    }
}

async fn require_token(
    State(control): State<ControlPlane>,
    request: Request,
    next: Next,
) -> Response {
    if PUBLIC_PATHS.contains(&request.uri().path()) {
        return next.run(request).await;
    }
    match control.authorize(request.headers()) {
        Ok(()) => next.run(request).await,
        Err(error) => error.into_response(),
    }
}

fn handlers(path: &str) -> MethodRouter<ControlPlane> {
    match path {
        "/" => get(monitor),
        "/health" => get(health),
        "/metrics" => get(metrics),
        "/history" => get(history),
        "/openapi.json" => get(openapi),
        "/ping" => post(ping),
        "/seed" => post(seed),
        "/stats" => get(stats),
        "/stats/{id}" => get(stats_of),
        "/stop_all" => post(stop_all),
        "/stop/{pid}" => post(stop),
        "/restart_all" => post(restart_all),
        "/restart/{pid}" => post(restart),
        "/policy" => get(get_policy).post(post_policy),
        "/fleet" => get(fleet),
        "/candidates" => get(get_candidates).post(post_candidates),
        other => unreachable!("route {other} is in ROUTES but has no handler"),
    }
}

/// Serves the control plane on `listener` until `shutdown` completes.
/// Limits on the HTTP connections of the control plane, as nginx has them.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpLimits {
    /// At most this many connections at once; more wait in the listen backlog.
    pub max_connections: usize,
    /// A request's headers must arrive within this, counted from when the connection
    /// is ready for a request: it also ends a kept-alive connection left idle.
    pub header_read_timeout: Duration,
    /// A request (its body read and its answer made) must be done within this.
    pub request_timeout: Duration,
    /// An answer the client does not read may wait this long to be written; then the
    /// connection fails, so a client that never reads cannot keep its slot.
    pub write_stall: Duration,
    /// After an answer that left a body unread (a 413), what the client still sends is
    /// read and dropped, so it can read the answer instead of a reset: up to this many
    /// bytes, for at most this long, ending at a pause of `linger_pause`.
    pub linger_bytes: u64,
    pub linger_time: Duration,
    pub linger_pause: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            max_connections: 256,
            header_read_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(60),
            write_stall: Duration::from_secs(30),
            linger_bytes: 256 << 20,
            linger_time: Duration::from_secs(10),
            linger_pause: Duration::from_secs(2),
        }
    }
}

/// Serves the control plane on `listener` until `shutdown`, then lets open requests
/// finish (the caller bounds how long).
pub async fn run(
    listener: TcpListener,
    control: ControlPlane,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    run_with(listener, control, HttpLimits::default(), shutdown).await
}

pub async fn run_with(
    listener: TcpListener,
    control: ControlPlane,
    limits: HttpLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::service::TowerToHyperService;

    let request_timeout = limits.request_timeout;
    let app = control.router().layer(axum::middleware::from_fn(move |request, next: Next| {
        within(request_timeout, request, next)
    }));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(limits.header_read_timeout);
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let (stopping, stop) = tokio::sync::watch::channel(false);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot.map_err(std::io::Error::other)?,
            () = &mut shutdown => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                // Out of descriptors or a connection reset before it was taken: the
                // listener itself is fine.
                Err(e) => {
                    tracing::warn!(error = %e, "could not accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let stream = StallGuard { stream, limit: limits.write_stall, stalled: None };
        let mut conn =
            http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app.clone()));
        let (mut stop, limits) = (stop.clone(), limits.clone());
        tokio::spawn(async move {
            let mut asked_to_stop = false;
            let ended = loop {
                tokio::select! {
                    ended = std::future::poll_fn(|cx| conn.poll_without_shutdown(cx)) => break ended,
                    _ = stop.changed(), if !asked_to_stop => {
                        asked_to_stop = true;
                        std::pin::Pin::new(&mut conn).graceful_shutdown();
                    }
                }
            };
            if ended.is_ok() {
                linger(conn.into_parts().io.into_inner().stream, &limits).await;
            }
            drop(slot);
        });
    }
    let _ = stopping.send(true);
    // Open requests finish; the caller decides how long that may take.
    let _ = slots.acquire_many(limits.max_connections as u32).await;
    Ok(())
}

/// A client connection whose writes may not stall past `limit`: the write fails then,
/// which ends the connection.
struct StallGuard {
    stream: tokio::net::TcpStream,
    limit: Duration,
    /// Since the current write found the socket full.
    stalled: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl tokio::io::AsyncRead for StallGuard {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for StallGuard {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        use std::task::Poll;
        let this = self.get_mut();
        match std::pin::Pin::new(&mut this.stream).poll_write(cx, buf) {
            Poll::Ready(written) => {
                this.stalled = None;
                Poll::Ready(written)
            }
            Poll::Pending => {
                let limit = this.limit;
                let stalled =
                    this.stalled.get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
                match stalled.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "the client stopped reading",
                    ))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// A request that takes longer than `limit` (a client sending its body slowly) is
/// answered 408 and its connection closed.
async fn within(limit: Duration, request: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            let mut response = ApiError(
                StatusCode::REQUEST_TIMEOUT,
                format!("the request took longer than {limit:?}"),
            )
            .into_response();
            response.headers_mut().insert(
                axum::http::header::CONNECTION,
                axum::http::HeaderValue::from_static("close"),
            );
            response
        }
    }
}

/// Closes a connection the way nginx's lingering close does: the answer is sent and
/// the sending side shut, then what the client is still sending is read and dropped
/// (within the limits) before the socket closes. Closing with unread data would send
/// a reset, and a client still sending would lose the answer.
async fn linger(mut stream: tokio::net::TcpStream, limits: &HttpLimits) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    if stream.shutdown().await.is_err() {
        return;
    }
    let deadline = tokio::time::Instant::now() + limits.linger_time;
    let mut drained = 0u64;
    let mut buffer = vec![0u8; 64 << 10];
    while drained < limits.linger_bytes {
        let pause = deadline.min(tokio::time::Instant::now() + limits.linger_pause);
        match tokio::time::timeout_at(pause, stream.read(&mut buffer)).await {
            Ok(Ok(n)) if n > 0 => drained += n as u64,
            _ => return,
        }
    }
}

/// An error answer: a status and a JSON `{error}` that says what was wrong.
#[derive(Debug)]
pub struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

impl From<MasterError> for ApiError {
    fn from(error: MasterError) -> Self {
        let status = match error {
            MasterError::NoSuchWorker(_) | MasterError::NoSuchChannel(_) => StatusCode::NOT_FOUND,
            MasterError::TooManySeeds { .. } => StatusCode::BAD_REQUEST,
            MasterError::CandidatesFromUrl => StatusCode::CONFLICT,
            MasterError::Persist(_) => StatusCode::INTERNAL_SERVER_ERROR,
            MasterError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
        };
        ApiError(status, error.to_string())
    }
}

impl From<FleetError> for ApiError {
    fn from(error: FleetError) -> Self {
        let status = match error {
            FleetError::Master(error) => return error.into(),
            FleetError::Etcd(_) => StatusCode::SERVICE_UNAVAILABLE,
            FleetError::TooManySeeds { .. } => StatusCode::BAD_REQUEST,
            FleetError::NoSuchChannel(_) => StatusCode::NOT_FOUND,
            FleetError::CandidatesFromUrl => StatusCode::CONFLICT,
        };
        ApiError(status, error.to_string())
    }
}

type ApiResult = Result<Response, ApiError>;

/// Compares without leaking, through timing, how much of a guessed token was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for (i, x) in b.iter().enumerate() {
        diff |= usize::from(a.get(i).copied().unwrap_or(0) ^ x);
    }
    diff == 0
}

/// Parses a JSON body whatever its content type (the original's clients vary), with
/// errors that say where the body is wrong.
fn json_body<T: DeserializeOwned>(body: &[u8], empty: Option<&str>) -> Result<T, ApiError> {
    if body.len() > MAX_JSON_BODY {
        return Err(ApiError(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("body over {MAX_JSON_BODY} bytes"),
        ));
    }
    let text = match (body.iter().all(u8::is_ascii_whitespace), empty) {
        (true, Some(default)) => default.as_bytes(),
        (true, None) => {
            return Err(ApiError(StatusCode::BAD_REQUEST, "empty body: expected JSON".into()));
        }
        (false, _) => body,
    };
    serde_json::from_slice(text)
        .map_err(|e| ApiError(StatusCode::BAD_REQUEST, format!("invalid JSON body: {e}")))
}

fn body_of(
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<axum::body::Bytes, ApiError> {
    body.map_err(|e| ApiError(e.status(), e.body_text()))
}

fn ok(value: Value) -> ApiResult {
    Ok(Json(value).into_response())
}

async fn health(State(control): State<ControlPlane>) -> Json<Value> {
    Json(json!({ "status": "ok", "uptimeSeconds": control.started.elapsed().as_secs() }))
}

async fn monitor() -> Response {
    (
        [
            ("content-type", "text/html; charset=utf-8"),
            ("content-security-policy", MONITOR_CSP),
            ("cache-control", "no-cache"),
        ],
        MONITOR_PAGE,
    )
        .into_response()
}

async fn metrics(State(control): State<ControlPlane>) -> ApiResult {
    let stats = control.master.stats().await?;
    Ok(([("content-type", crate::metrics::CONTENT_TYPE)], crate::metrics::render(&stats))
        .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HistoryQuery {
    /// Only samples after the one with this `seq`.
    after: Option<u64>,
}

async fn history(
    State(control): State<ControlPlane>,
    query: Result<Query<HistoryQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult {
    let query = query_params(query)?;
    ok(json!(control.master.history(query.after).await?))
}

async fn openapi() -> ApiResult {
    Ok(([("content-type", "application/json")], OPENAPI).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PingBody {
    /// Upload capacity of this machine, Mbit/s.
    bandwidth: Option<u64>,
    /// Most workers to run.
    workers: Option<usize>,
}

async fn ping(
    State(control): State<ControlPlane>,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> ApiResult {
    let body: PingBody = json_body(&body_of(body)?, Some("{}"))?;
    if body.workers == Some(0) || body.bandwidth == Some(0) {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            "`workers` and `bandwidth` must be at least 1".into(),
        ));
    }
    let view = control.master.ping(body.bandwidth, body.workers).await?;
    ok(json!(view))
}

async fn seed(
    State(control): State<ControlPlane>,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> ApiResult {
    let request: SeedRequest = json_body(&body_of(body)?, None)?;
    seeds::validate(&request).map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.to_string()))?;
    let items = request.into_items();
    check_with_policy(&control, &items).await?;
    let accepted = items.len();
    let total = match &control.fleet {
        Some(fleet) => fleet.seed(items).await?,
        None => control.master.seed(items).await?,
    };
    ok(json!({ "accepted": accepted, "seeds": total }))
}

/// Automatic seeding's candidates: each with the viewers its swarms held at the last
/// measure, and whether it is seeded.
async fn get_candidates(State(control): State<ControlPlane>) -> ApiResult {
    ok(json!(control.master.candidates().await?))
}

/// Replaces the candidate list (in fleet mode the fleet's, in etcd): a `/seed` body
/// (items may name only a `url`), or plain text with one manifest URL per line. Each
/// item is checked with its policy as a seed is.
async fn post_candidates(
    State(control): State<ControlPlane>,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> ApiResult {
    let body = body_of(body)?;
    if body.len() > MAX_JSON_BODY {
        return Err(ApiError(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("body over {MAX_JSON_BODY} bytes"),
        ));
    }
    let text = std::str::from_utf8(&body)
        .map_err(|_| ApiError(StatusCode::BAD_REQUEST, "the body is not UTF-8 text".into()))?;
    let items = crate::master::autoseed::parse_candidates(text)
        .map_err(|e| ApiError(StatusCode::BAD_REQUEST, e))?;
    check_with_policy(&control, &items).await?;
    let count = match &control.fleet {
        Some(fleet) => fleet.set_candidates(items).await?,
        None => control.master.set_candidates(items).await?,
    };
    ok(json!({ "candidates": count }))
}

/// The fleet as this node sees it: the nodes (their capacity, what they run and what
/// the placement gives them), the seeds and those waiting for room, whether etcd
/// answers. A 404 on a node that is not in a fleet.
async fn fleet(State(control): State<ControlPlane>) -> ApiResult {
    match &control.fleet {
        Some(fleet) => ok(json!(fleet.view())),
        None => Err(ApiError(
            StatusCode::NOT_FOUND,
            "this node is not in a fleet (set etcdEndpoints)".into(),
        )),
    }
}

/// Starts the policy each item's seed would run once, with the item's seed, as a
/// worker would: a policy that refuses a seed (settings it cannot use) refuses it here,
/// with its reason, instead of in a worker that would fail to start again and again.
async fn check_with_policy(control: &ControlPlane, items: &[SeedItem]) -> Result<(), ApiError> {
    let seed_policy = control.master.seed_policy().await?;
    let engine = control.engine.clone();
    let checks: Vec<(Arc<AdmittedPolicy>, SeedConfig)> = items
        .iter()
        .enumerate()
        .map(|(index, item)| {
            let (_, policy, seed) = seed_policy.worker_seed(item).map_err(|reason| {
                ApiError(StatusCode::BAD_REQUEST, format!("item {index}: {reason}"))
            })?;
            Ok((policy, seed))
        })
        .collect::<Result<_, ApiError>>()?;
    let checked = tokio::task::spawn_blocking(move || {
        // Each distinct policy is loaded once.
        let mut loaded: Vec<(Arc<AdmittedPolicy>, CompiledPolicy)> = Vec::new();
        for (index, (policy, config)) in checks.into_iter().enumerate() {
            let compiled = match loaded.iter().find(|(p, _)| Arc::ptr_eq(p, &policy)) {
                Some((_, compiled)) => compiled.clone(),
                None => {
                    let compiled =
                        engine.load_precompiled(&policy.precompiled).map_err(|e| (None, e))?;
                    loaded.push((policy, compiled.clone()));
                    compiled
                }
            };
            PolicyRunner::start(engine.clone(), compiled, config, Clock::default())
                .map_err(|e| (Some(index), e))?;
        }
        Ok::<(), (Option<usize>, PolicyError)>(())
    })
    .await
    .map_err(|e| {
        ApiError(StatusCode::SERVICE_UNAVAILABLE, format!("seeds cannot be checked now: {e}"))
    })?;
    checked.map_err(|(index, error)| match (index, error) {
        (Some(index), PolicyError::Start { fault: Fault::InitRefused(reason), .. }) => ApiError(
            StatusCode::BAD_REQUEST,
            format!("item {index}: the policy refuses it: {reason}"),
        ),
        (_, error) => {
            tracing::error!(%error, "the policy could not be started to check seeds");
            ApiError(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("seeds cannot be checked now: {error}"),
            )
        }
    })
}

async fn stats(State(control): State<ControlPlane>) -> ApiResult {
    ok(json!(control.master.stats().await?))
}

/// The query parameters, or a JSON 400 naming what is wrong with them.
fn query_params<T>(
    query: Result<Query<T>, axum::extract::rejection::QueryRejection>,
) -> Result<T, ApiError> {
    query.map(|Query(params)| params).map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.body_text()))
}

/// The path parameter, or a JSON 400 (a path that is not valid UTF-8 once decoded).
fn path_param(param: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    param.map(|Path(value)| value).map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.body_text()))
}

/// One worker by pid, or every worker of a channel (its base64 id, any spelling; a `/`
/// in it must be sent as `%2F`).
async fn stats_of(
    State(control): State<ControlPlane>,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult {
    let id = path_param(id)?;
    let stats = control.master.stats().await?;
    if let Some(worker) = stats.workers.get(&id) {
        return ok(json!({ "pid": id, "worker": worker }));
    }
    let workers: serde_json::Map<String, Value> = stats
        .workers
        .iter()
        .filter(|(_, w)| seeds::same_channel(&w.channel_id, &id))
        .map(|(pid, w)| (pid.clone(), json!(w)))
        .collect();
    if workers.is_empty() {
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("no worker with pid or channel {id:?}"),
        ));
    }
    ok(json!({ "channelId": id, "workers": workers }))
}

async fn stop_all(State(control): State<ControlPlane>) -> ApiResult {
    let stopped = match &control.fleet {
        Some(fleet) => fleet.stop_all().await?,
        None => control.master.stop_all().await?,
    };
    ok(json!({ "stopped": stopped }))
}

/// Stops a seed named by one of its workers' pid, or by its channel id.
async fn stop(
    State(control): State<ControlPlane>,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult {
    let id = path_param(id)?;
    let channel = match &control.fleet {
        Some(fleet) => {
            // A pid names the channel of one of this node's workers.
            let stats = control.master.stats().await?;
            let channel = stats.workers.get(&id).map_or(id, |w| w.channel_id.clone());
            fleet.stop(&channel).await?
        }
        None => control.master.stop(id).await?,
    };
    ok(json!({ "stopped": channel }))
}

async fn restart_all(State(control): State<ControlPlane>) -> ApiResult {
    ok(json!({ "restarting": control.master.restart_all().await? }))
}

async fn restart(
    State(control): State<ControlPlane>,
    pid: Result<Path<String>, PathRejection>,
) -> ApiResult {
    let pid = path_param(pid)?;
    let number = pid
        .parse()
        .map_err(|_| ApiError(StatusCode::BAD_REQUEST, format!("{pid:?} is not a pid")))?;
    control.master.restart(number).await?;
    ok(json!({ "restarting": pid }))
}

async fn get_policy(State(control): State<ControlPlane>) -> ApiResult {
    ok(json!(control.master.policy().await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyQuery {
    /// Only this channel's workers get the policy.
    channel: Option<String>,
    /// The workers of this protocol's seeds get it (the default protocol's when
    /// neither is given).
    protocol: Option<String>,
}

/// Takes a `.wasm` body: compiles it, checks it against the world, starts it once on a
/// scratch instance (the canary), and only then hands it to the workers, which each
/// swap it in after a canary of their own.
async fn post_policy(
    State(control): State<ControlPlane>,
    query: Result<Query<PolicyQuery>, axum::extract::rejection::QueryRejection>,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> ApiResult {
    let query = query_params(query)?;
    let bad = |reason: String| ApiError(StatusCode::BAD_REQUEST, reason);
    let target = match (query.channel, query.protocol) {
        (Some(_), Some(_)) => {
            return Err(bad("give `channel` or `protocol`, not both: a channel has one".into()));
        }
        (Some(channel), None) => PolicyTarget::Channel(channel),
        (None, protocol) => PolicyTarget::Protocol(
            protocol.map(|p| p.parse::<Protocol>()).transpose().map_err(bad)?,
        ),
    };
    let body = body_of(body)?;
    if body.is_empty() {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            "empty body: send the policy's .wasm bytes".into(),
        ));
    }
    let Ok(_slot) = control.upload_slot.clone().try_acquire_owned() else {
        return Err(ApiError(
            StatusCode::TOO_MANY_REQUESTS,
            "another policy upload is being checked; try again when it is done".into(),
        ));
    };
    let engine = control.engine.clone();
    let started = Instant::now();
    let checked =
        tokio::task::spawn_blocking(move || engine.admit(&body, "upload")).await.map_err(|e| {
            tracing::error!(error = %e, "policy check crashed");
            ApiError(StatusCode::UNPROCESSABLE_ENTITY, format!("the policy check failed: {e}"))
        })?;
    let policy = checked.map_err(|e| {
        tracing::warn!(error = %e, "policy upload rejected");
        ApiError(StatusCode::UNPROCESSABLE_ENTITY, e.to_string())
    })?;
    let check_ms = started.elapsed().as_millis() as u64;
    let identity = json!({ "name": policy.meta.name, "version": policy.meta.version, "digest": policy.meta.digest,
        "size": policy.meta.size, "source": policy.source });
    let workers = control.master.set_policy(Arc::new(policy), target).await?;
    ok(json!({ "policy": identity, "checkMs": check_ms, "workers": workers }))
}

async fn method_not_allowed() -> ApiError {
    ApiError(StatusCode::METHOD_NOT_ALLOWED, "method not allowed on this endpoint".into())
}

async fn not_found() -> ApiError {
    ApiError(StatusCode::NOT_FOUND, "no such endpoint".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secreT", b"secret"));
        assert!(!constant_time_eq(b"secret-and-more", b"secret"));
        assert!(!constant_time_eq(b"", b"secret"));
        assert!(!constant_time_eq(b"sec", b"secret"));
    }

    #[test]
    fn the_openapi_document_lists_exactly_the_routes() {
        let doc: Value = serde_json::from_str(OPENAPI).unwrap();
        let mut documented: Vec<(String, String)> = doc["paths"]
            .as_object()
            .unwrap()
            .iter()
            .flat_map(|(path, ops)| {
                ops.as_object().unwrap().keys().map(move |m| (m.to_uppercase(), path.clone()))
            })
            .collect();
        let mut routes: Vec<(String, String)> =
            ROUTES.iter().map(|(m, p)| (m.to_string(), p.to_string())).collect();
        documented.sort();
        routes.sort();
        assert_eq!(documented, routes);
    }
}
