//! The master's HTTP control plane, as far as policies go: which policy the workers
//! run, and replacing it with a new one.
//!
//! It owns request parsing and the answers; compiling runs on a blocking thread so a
//! large upload never stalls other requests. It must never answer bad input with a 5xx
//! or replace the running policy with one that failed to compile or start.

use std::future::Future;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use serde_json::json;
use tokio::net::TcpListener;

use crate::policy::{CompiledPolicy, PolicyEngine, PolicyError, PolicyMeta, PolicyRunner};

/// What the control plane shares between requests.
#[derive(Clone, Debug)]
pub struct ControlPlane {
    engine: PolicyEngine,
    policies: Arc<RwLock<Policies>>,
    access_token: Option<Arc<str>>,
    /// One upload is compiled at a time: each can take a large body and a core.
    upload_slot: Arc<tokio::sync::Semaphore>,
    started: Instant,
}

#[derive(Debug)]
struct Policies {
    current: CompiledPolicy,
    source: PolicySource,
    previous: Option<(CompiledPolicy, PolicySource)>,
}

/// Where a policy came from, for operators.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PolicySource {
    Embedded,
    File(String),
    Upload,
}

#[derive(Serialize)]
struct PolicyView<'a> {
    #[serde(flatten)]
    meta: &'a PolicyMeta,
    source: &'a PolicySource,
}

impl ControlPlane {
    pub fn new(
        engine: PolicyEngine,
        policy: CompiledPolicy,
        source: PolicySource,
        access_token: Option<String>,
    ) -> Self {
        ControlPlane {
            engine,
            policies: Arc::new(RwLock::new(Policies { current: policy, source, previous: None })),
            access_token: access_token.filter(|t| !t.is_empty()).map(Into::into),
            upload_slot: Arc::new(tokio::sync::Semaphore::new(1)),
            started: Instant::now(),
        }
    }

    /// The policy new workers start with.
    /// Whether requests must carry a token.
    pub fn requires_token(&self) -> bool {
        self.access_token.is_some()
    }

    pub fn current_policy(&self) -> CompiledPolicy {
        self.read().current.clone()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Policies> {
        // A panic while holding the lock cannot leave `Policies` half-written (it is
        // replaced whole), so a poisoned lock is still good to read.
        self.policies.read().unwrap_or_else(|e| e.into_inner())
    }

    pub fn router(self) -> Router {
        let max_upload = self.engine.limits().max_component_bytes;
        Router::new()
            .route("/health", get(health))
            .route("/policy", get(get_policy).post(post_policy))
            .layer(DefaultBodyLimit::max(max_upload))
            .method_not_allowed_fallback(method_not_allowed)
            .fallback(not_found)
            .with_state(self)
    }
}

/// Serves the control plane on `listener` until `shutdown` completes.
pub async fn run(
    listener: TcpListener,
    control: ControlPlane,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, control.router()).with_graceful_shutdown(shutdown).await
}

/// An error answer: a status and a JSON `{error}` that says what was wrong.
#[derive(Debug)]
pub struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

impl ControlPlane {
    fn authorize(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let Some(expected) = &self.access_token else {
            return Ok(());
        };
        let given = headers.get("x-access-token").map(|v| v.as_bytes()).unwrap_or_default();
        if constant_time_eq(given, expected.as_bytes()) {
            Ok(())
        } else {
            Err(ApiError(StatusCode::UNAUTHORIZED, "missing or wrong X-ACCESS-TOKEN header".into()))
        }
    }
}

/// Compares without leaking, through timing, how much of a guessed token was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for (i, x) in b.iter().enumerate() {
        diff |= usize::from(a.get(i).copied().unwrap_or(0) ^ x);
    }
    diff == 0
}

async fn health(State(control): State<ControlPlane>) -> Json<serde_json::Value> {
    Json(json!({ "status": "ok", "uptimeSeconds": control.started.elapsed().as_secs() }))
}

async fn get_policy(
    State(control): State<ControlPlane>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    control.authorize(&headers)?;
    let policies = control.read();
    let body = json!({
        "policy": PolicyView { meta: policies.current.meta(), source: &policies.source },
        "previous": policies.previous.as_ref().map(|(p, source)| PolicyView { meta: p.meta(), source }),
        "limits": control.engine.limits(),
    });
    Ok(Json(body).into_response())
}

/// Takes a `.wasm` body: compiles it, checks it against the world, starts it once on a
/// scratch instance (the canary), and only then makes it the current policy.
async fn post_policy(
    State(control): State<ControlPlane>,
    headers: HeaderMap,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, ApiError> {
    control.authorize(&headers)?;
    let body = body.map_err(|e| ApiError(e.status(), e.body_text()))?;
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
    let checked = tokio::task::spawn_blocking(move || {
        let policy = engine.compile(&body)?;
        PolicyRunner::canary(&engine, &policy)?;
        Ok::<_, PolicyError>(policy)
    })
    .await
    .map_err(|e| {
        tracing::error!(error = %e, "policy check crashed");
        ApiError(StatusCode::UNPROCESSABLE_ENTITY, format!("the policy check failed: {e}"))
    })?;
    let policy = checked.map_err(|e| {
        tracing::warn!(error = %e, "policy upload rejected");
        ApiError(StatusCode::UNPROCESSABLE_ENTITY, e.to_string())
    })?;
    let check_ms = started.elapsed().as_millis() as u64;
    let mut policies = control.policies.write().unwrap_or_else(|e| e.into_inner());
    let old = std::mem::replace(&mut policies.current, policy);
    let old_source = std::mem::replace(&mut policies.source, PolicySource::Upload);
    policies.previous = Some((old, old_source));
    tracing::info!(policy = %policies.current.meta(), check_ms, "policy accepted");
    let body = json!({
        "policy": PolicyView { meta: policies.current.meta(), source: &policies.source },
        "checkMs": check_ms,
    });
    Ok(Json(body).into_response())
}

async fn method_not_allowed() -> ApiError {
    ApiError(StatusCode::METHOD_NOT_ALLOWED, "method not allowed on this endpoint".into())
}

async fn not_found() -> ApiError {
    ApiError(StatusCode::NOT_FOUND, "no such endpoint".into())
}

#[cfg(test)]
mod tests {
    use super::constant_time_eq;

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secreT", b"secret"));
        assert!(!constant_time_eq(b"secret-and-more", b"secret"));
        assert!(!constant_time_eq(b"", b"secret"));
        assert!(!constant_time_eq(b"sec", b"secret"));
    }
}
