//! HTTP requests a policy sends to its trackers' HTTP APIs (`http-request`): one
//! attempt each, answered with the response, whatever its status, or why none came.
//!
//! Only the host and port of one of the seed's trackers may be asked (the operator
//! named them), and only through the same clients and address rules as origin fetches
//! (an internal address needs `originAllow`); a response body past the tracker text
//! limit is refused while it is read. Retrying is the policy's decision, never this
//! module's.

use std::time::Duration;

use reqwest::Url;
use tokio::sync::mpsc;

use super::IoEvent;
use super::origin::{Origins, redact, refusal_in};
use crate::policy::wire::{Event, HttpFailed, HttpRequest, HttpResponse};

/// Sends `request`; its response or failure arrives on `events`.
pub fn spawn(
    request: HttpRequest,
    origins: Origins,
    max_body: usize,
    timeout: Duration,
    events: mpsc::Sender<IoEvent>,
) {
    tokio::spawn(async move {
        let id = request.request;
        let event = match send(request, &origins, max_body, timeout).await {
            Ok(response) => Event::HttpResponse(response),
            Err(reason) => Event::HttpFailed(HttpFailed { request: id, reason }),
        };
        let _ = events.send(IoEvent::Policy(event)).await;
    });
}

async fn send(
    request: HttpRequest,
    origins: &Origins,
    max_body: usize,
    timeout: Duration,
) -> Result<HttpResponse, String> {
    let url = Url::parse(&request.url).map_err(|e| format!("bad URL: {e}"))?;
    if !origins.rules().is_tracker(&url) {
        return Err(format!("refused: {} is not one of the seed's trackers", redact(url.as_str())));
    }
    let client = origins.client_for(&url).map_err(|refused| refused.to_string())?;
    let method = reqwest::Method::from_bytes(request.method.as_bytes())
        .map_err(|_| format!("bad method {:?}", request.method))?;
    let mut builder = client.request(method, url).timeout(timeout).body(request.body);
    for (name, value) in &request.headers {
        builder = builder.header(name.as_str(), value.as_str());
    }
    let mut response = builder.send().await.map_err(|e| describe(&e))?;
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .map(|(name, value)| {
            (name.as_str().to_string(), String::from_utf8_lossy(value.as_bytes()).into_owned())
        })
        .collect();
    let body = body_within(&mut response, max_body).await.map_err(|e| match e {
        BodyError::TooLarge(bytes) => too_large(bytes),
        BodyError::Failed(error) => describe(&error),
    })?;
    Ok(HttpResponse { request: request.request, status, headers, body })
}

/// Why a response body was not read whole.
#[derive(Debug)]
pub(crate) enum BodyError {
    /// At least this many bytes, over the limit (declared, or read so far).
    TooLarge(u64),
    Failed(reqwest::Error),
}

/// Reads a response's body whole, refusing it as soon as it is known to pass `max`
/// bytes: at once by its declared length, else while it is read.
pub(crate) async fn body_within(
    response: &mut reqwest::Response,
    max: usize,
) -> Result<Vec<u8>, BodyError> {
    if let Some(length) = response.content_length()
        && length > max as u64
    {
        return Err(BodyError::TooLarge(length));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(BodyError::Failed)? {
        if body.len() + chunk.len() > max {
            return Err(BodyError::TooLarge((body.len() + chunk.len()) as u64));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

fn too_large(bytes: u64) -> String {
    format!("response body of {bytes} bytes or more is over the limit")
}

fn describe(error: &reqwest::Error) -> String {
    match refusal_in(error) {
        Some(refused) => refused.to_string(),
        None if error.is_timeout() => "timed out".into(),
        None => error.to_string(),
    }
}
