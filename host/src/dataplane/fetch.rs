//! Fetches from the origin: playlists as text, segments as bytes, with a timeout per
//! attempt, retries with back-off on failures worth retrying, and size limits checked
//! before and while reading.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

use super::{DataPlaneLimits, IoEvent};
use crate::policy::wire::{ByteRange, Event, FetchFailed, FetchId, TextFetched};

/// First wait before retrying; doubles per attempt.
const FIRST_RETRY: Duration = Duration::from_millis(250);

struct Failure {
    status: Option<u16>,
    reason: String,
    /// Worth another attempt (network trouble, 5xx, 408, 429).
    retry: bool,
}

/// What a fetch is for: a playlist comes back as text, a segment as bytes for the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Text,
    Segment,
}

/// Starts a fetch; its result arrives on `events`. Aborting the handle cancels it
/// without an event.
pub fn spawn(
    fetch: FetchId,
    url: String,
    range: Option<ByteRange>,
    kind: Kind,
    http: reqwest::Client,
    events: mpsc::Sender<IoEvent>,
    limits: &DataPlaneLimits,
) -> AbortHandle {
    let limits = limits.clone();
    let max_bytes = match kind {
        Kind::Text => limits.max_text_bytes,
        Kind::Segment => limits.max_segment_bytes,
    };
    tokio::spawn(async move {
        let event = match (with_retries(&http, &url, range, max_bytes, &limits).await, kind) {
            (Ok((url, bytes)), Kind::Text) => IoEvent::Policy(Event::TextFetched(TextFetched {
                fetch,
                url,
                text: String::from_utf8_lossy(&bytes).into_owned(),
            })),
            (Ok((url, bytes)), Kind::Segment) => {
                IoEvent::SegmentFetched { fetch, url, range, bytes }
            }
            (Err(f), _) => failed(fetch, f),
        };
        let _ = events.send(event).await;
    })
    .abort_handle()
}

fn failed(fetch: FetchId, failure: Failure) -> IoEvent {
    IoEvent::Policy(Event::FetchFailed(FetchFailed {
        fetch,
        status: failure.status,
        reason: failure.reason,
    }))
}

async fn with_retries(
    http: &reqwest::Client,
    url: &str,
    range: Option<ByteRange>,
    max_bytes: usize,
    limits: &DataPlaneLimits,
) -> Result<(String, Bytes), Failure> {
    let mut attempt = 1;
    loop {
        let result =
            match tokio::time::timeout(limits.fetch_timeout, once(http, url, range, max_bytes))
                .await
            {
                Ok(result) => result,
                Err(_) => Err(Failure {
                    status: None,
                    reason: format!("no answer within {:?}", limits.fetch_timeout),
                    retry: true,
                }),
            };
        match result {
            Err(failure) if failure.retry && attempt < limits.fetch_attempts => {
                tracing::debug!(url, attempt, reason = %failure.reason, "fetch failed; retrying");
                tokio::time::sleep(FIRST_RETRY * 2u32.pow(attempt - 1)).await;
                attempt += 1;
            }
            other => return other,
        }
    }
}

async fn once(
    http: &reqwest::Client,
    url: &str,
    range: Option<ByteRange>,
    max_bytes: usize,
) -> Result<(String, Bytes), Failure> {
    let network = |e: reqwest::Error| Failure { status: None, reason: e.to_string(), retry: true };
    let mut request = http.get(url);
    if let Some(ByteRange { start, end }) = range {
        request = request.header(reqwest::header::RANGE, format!("bytes={start}-{}", end - 1));
    }
    let mut response = request.send().await.map_err(network)?;
    let status = response.status();
    if !status.is_success() {
        let code = status.as_u16();
        return Err(Failure {
            status: Some(code),
            reason: format!("origin answered {status}"),
            retry: status.is_server_error() || code == 408 || code == 429,
        });
    }
    let too_large = |len: u64| Failure {
        status: Some(status.as_u16()),
        reason: format!("{len} bytes is more than the {max_bytes}-byte limit"),
        retry: false,
    };
    if let Some(len) = response.content_length()
        && len > max_bytes as u64
    {
        return Err(too_large(len));
    }
    let final_url = response.url().to_string();
    let mut body = BytesMut::new();
    while let Some(chunk) = response.chunk().await.map_err(network)? {
        if body.len() + chunk.len() > max_bytes {
            return Err(too_large((body.len() + chunk.len()) as u64));
        }
        body.extend_from_slice(&chunk);
    }
    if let Some(ByteRange { start, end }) = range
        && status != reqwest::StatusCode::PARTIAL_CONTENT
        && body.len() as u64 > end - start
    {
        // The origin ignored the range and sent the whole resource: keep the range.
        let whole = body.freeze();
        let (start, end) = (start as usize, (end as usize).min(whole.len()));
        if start >= end {
            return Err(Failure {
                status: Some(status.as_u16()),
                reason: "range past the end".into(),
                retry: false,
            });
        }
        return Ok((final_url, whole.slice(start..end)));
    }
    Ok((final_url, body.freeze()))
}
