//! Fetches from the origin: playlists as text, segments as bytes, with a timeout per
//! attempt, retries with back-off on failures worth retrying, and size limits checked
//! before and while reading.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

use super::budget::{MemoryBudget, Reservation};
use super::disk::{self, DiskCache};
use super::origin::{Origins, redact, refusal_in};
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

/// What a fetch is for: a playlist comes back as text, a segment as bytes for the store
/// (looked for in and written to the disk cache when one is given).
#[derive(Debug, Clone)]
pub enum Kind {
    Text,
    Segment { disk: Option<Arc<DiskCache>> },
}

/// What every fetch of a worker shares: the clients, the limits, the memory budget.
#[derive(Debug, Clone)]
pub struct Fetcher {
    pub origins: Origins,
    pub limits: DataPlaneLimits,
    pub budget: Arc<MemoryBudget>,
}

/// What one fetch brought: the URL it ended at, the bytes, and their share of the
/// memory budget (given back when dropped).
struct Fetched {
    url: String,
    bytes: Bytes,
    reservation: Reservation,
}

/// Starts a fetch; its result arrives on `events`. Aborting the handle cancels it
/// without an event.
pub fn spawn(
    fetch: FetchId,
    url: String,
    range: Option<ByteRange>,
    kind: Kind,
    cx: Fetcher,
    events: mpsc::Sender<IoEvent>,
) -> AbortHandle {
    tokio::spawn(async move {
        let event = match kind {
            Kind::Text => match with_retries(&cx, &url, range, cx.limits.max_text_bytes).await {
                Ok(fetched) => IoEvent::Policy(Event::TextFetched(TextFetched {
                    fetch,
                    url: fetched.url,
                    text: String::from_utf8_lossy(&fetched.bytes).into_owned(),
                })),
                Err(f) => failed(fetch, f),
            },
            Kind::Segment { disk: Some(disk) } => {
                segment_through_disk(fetch, url, range, &cx, disk).await
            }
            Kind::Segment { disk: None } => from_origin_only(fetch, url, range, &cx).await,
        };
        let _ = events.send(event).await;
    })
    .abort_handle()
}

/// A segment from the disk cache if it holds an intact copy, else from the origin and
/// then into the cache. The segment's lock is held throughout, so a worker asking for
/// a segment another is fetching waits for that fetch and reads its file. Waiting is
/// bounded: past the time one fetch may take, the segment is fetched without the
/// cache rather than not at all.
async fn segment_through_disk(
    fetch: FetchId,
    url: String,
    range: Option<ByteRange>,
    cx: &Fetcher,
    cache: Arc<DiskCache>,
) -> IoEvent {
    let limits = &cx.limits;
    let key = disk::key(&url, range);
    let lock = wait_for_lock(&cache, &key, limits.fetch_timeout * limits.fetch_attempts).await;
    if let Some(lock) = lock {
        let (reader, read_key) = (cache.clone(), key.clone());
        let found = tokio::task::spawn_blocking(move || {
            let found = reader.read(&read_key);
            (found, lock)
        })
        .await;
        let lock = match found {
            Ok((Some(bytes), lock)) => {
                let (cache, key_) = (cache.clone(), key.clone());
                let _ = tokio::task::spawn_blocking(move || cache.unlock(&key_, lock)).await;
                return IoEvent::SegmentFetched {
                    fetch,
                    url,
                    range,
                    bytes,
                    on_disk: Some(key),
                    from_origin: false,
                    reservation: cx.budget.reservation(),
                };
            }
            Ok((None, lock)) => lock,
            Err(e) => {
                tracing::warn!(url = redact(&url), error = %e, "disk cache lookup failed; memory only");
                return from_origin_only(fetch, url, range, cx).await;
            }
        };
        let fetched = with_retries(cx, &url, range, limits.max_segment_bytes).await;
        let (cache, written_key) = (cache.clone(), key.clone());
        let bytes = fetched.as_ref().ok().map(|fetched| fetched.bytes.clone());
        let written = tokio::task::spawn_blocking(move || {
            let result = bytes.map(|bytes| cache.write(&written_key, &bytes));
            cache.unlock(&written_key, lock);
            result
        })
        .await;
        let Fetched { bytes, reservation, .. } = match fetched {
            Ok(fetched) => fetched,
            Err(f) => return failed(fetch, f),
        };
        let on_disk = match written {
            Ok(Some(Ok(()))) => Some(key),
            Ok(Some(Err(e))) => {
                tracing::warn!(url = redact(&url), error = %e, "segment not cached on disk");
                None
            }
            Ok(None) | Err(_) => None,
        };
        return IoEvent::SegmentFetched {
            fetch,
            url,
            range,
            bytes,
            on_disk,
            from_origin: true,
            reservation,
        };
    }
    tracing::warn!(
        url = redact(&url),
        "disk cache busy or unusable for this segment; fetched without it"
    );
    from_origin_only(fetch, url, range, cx).await
}

/// The segment's lock in the disk cache, polled for until `patience` runs out (its
/// holder may be another process, so there is nothing to be woken by).
async fn wait_for_lock(
    cache: &Arc<DiskCache>,
    key: &str,
    patience: Duration,
) -> Option<disk::KeyLock> {
    const POLL: Duration = Duration::from_millis(20);
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        let (cache, key) = (cache.clone(), key.to_string());
        match tokio::task::spawn_blocking(move || cache.try_lock(&key)).await {
            Ok(Ok(Some(lock))) => return Some(lock),
            Ok(Ok(None)) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(POLL).await;
            }
            Ok(Ok(None)) => return None,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "disk cache lock unusable");
                return None;
            }
            Err(_) => return None,
        }
    }
}

async fn from_origin_only(
    fetch: FetchId,
    url: String,
    range: Option<ByteRange>,
    cx: &Fetcher,
) -> IoEvent {
    match with_retries(cx, &url, range, cx.limits.max_segment_bytes).await {
        Ok(Fetched { bytes, reservation, .. }) => IoEvent::SegmentFetched {
            fetch,
            url,
            range,
            bytes,
            on_disk: None,
            from_origin: true,
            reservation,
        },
        Err(f) => failed(fetch, f),
    }
}

fn failed(fetch: FetchId, failure: Failure) -> IoEvent {
    IoEvent::Policy(Event::FetchFailed(FetchFailed {
        fetch,
        status: failure.status,
        reason: failure.reason,
    }))
}

async fn with_retries(
    cx: &Fetcher,
    url: &str,
    range: Option<ByteRange>,
    max_bytes: usize,
) -> Result<Fetched, Failure> {
    let limits = &cx.limits;
    let mut attempt = 1;
    loop {
        let result =
            match tokio::time::timeout(limits.fetch_timeout, once(cx, url, range, max_bytes)).await
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
                tracing::debug!(url = redact(url), attempt, reason = %failure.reason, "fetch failed; retrying");
                tokio::time::sleep(FIRST_RETRY * 2u32.pow(attempt - 1)).await;
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// Most redirects one fetch follows, every hop checked.
const MAX_REDIRECTS: usize = 10;

/// The response at the end of `url`'s redirect chain; every hop is checked against the
/// origin rules before it is connected to.
async fn send(
    origins: &Origins,
    url: &str,
    range: Option<ByteRange>,
) -> Result<reqwest::Response, Failure> {
    let network = |e: reqwest::Error| match refusal_in(&e) {
        Some(refused) => refusal(refused.to_string()),
        None => Failure { status: None, reason: e.to_string(), retry: true },
    };
    let mut url = reqwest::Url::parse(url).map_err(|e| Failure {
        status: None,
        reason: format!("not a URL: {e}"),
        retry: false,
    })?;
    for _ in 0..=MAX_REDIRECTS {
        let client = origins.client_for(&url).map_err(|refused| refusal(refused.to_string()))?;
        let mut request = client.get(url.clone());
        if let Some(ByteRange { start, end }) = range {
            request = request.header(reqwest::header::RANGE, format!("bytes={start}-{}", end - 1));
        }
        let response = request.send().await.map_err(network)?;
        let location = response
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|l| l.to_str().ok())
            .filter(|_| response.status().is_redirection());
        match location {
            Some(location) => {
                url = url.join(location).map_err(|e| Failure {
                    status: Some(response.status().as_u16()),
                    reason: format!("redirect to a bad location: {e}"),
                    retry: false,
                })?;
            }
            None => return Ok(response),
        }
    }
    Err(Failure {
        status: None,
        reason: format!("more than {MAX_REDIRECTS} redirects"),
        retry: false,
    })
}

/// A fetch the origin rules refused: logged, never retried.
fn refusal(reason: String) -> Failure {
    tracing::warn!(%reason, "origin fetch refused");
    Failure { status: None, reason, retry: false }
}

async fn once(
    cx: &Fetcher,
    url: &str,
    range: Option<ByteRange>,
    max_bytes: usize,
) -> Result<Fetched, Failure> {
    let mut response = send(&cx.origins, url, range).await?;
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
    // Grown by hand, its capacity within the reservation: a buffer left to double
    // itself holds up to twice what the budget counted.
    let mut body: Vec<u8> = Vec::new();
    let network = |e: reqwest::Error| Failure { status: None, reason: e.to_string(), retry: true };
    // A length given is taken from the budget at once, all or nothing: fetches that
    // each took part of it and then failed together would leave none done.
    let mut reservation = cx.budget.reservation();
    let over_budget = || {
        let limit = cx.budget.limit();
        tracing::warn!(url = redact(url), limit, "fetch refused: the memory budget is full");
        Failure {
            status: Some(status.as_u16()),
            reason: format!(
                "over the worker's memory budget of {limit} bytes (segments held and fetches \
                 in flight)"
            ),
            retry: false,
        }
    };
    if let Some(len) = response.content_length() {
        if !reservation.grow(len) {
            return Err(over_budget());
        }
        // Sized once, within the limit and the budget.
        body.reserve_exact(len as usize);
    }
    while let Some(chunk) = response.chunk().await.map_err(network)? {
        let needed = body.len() + chunk.len();
        if needed > max_bytes {
            return Err(too_large(needed as u64));
        }
        if needed > body.capacity() {
            // Doubling keeps copies few; when the budget has no room for double, as
            // much as it has.
            let doubled = needed.max(body.capacity() * 2).min(max_bytes);
            if !reservation.grow_to(needed as u64, doubled as u64) {
                return Err(over_budget());
            }
            body.reserve_exact(reservation.bytes() as usize - body.len());
        }
        body.extend_from_slice(&chunk);
    }
    if body.capacity() > body.len() {
        body.shrink_to_fit();
        reservation.shrink_to(body.len() as u64);
    }
    if let Some(ByteRange { start, end }) = range
        && status != reqwest::StatusCode::PARTIAL_CONTENT
        && body.len() as u64 > end - start
    {
        // The origin ignored the range and sent the whole resource: keep the range, if
        // the resource holds all of it.
        let whole = Bytes::from(body);
        if end as usize > whole.len() {
            return Err(Failure {
                status: Some(status.as_u16()),
                reason: format!("range ends past the {}-byte resource", whole.len()),
                retry: false,
            });
        }
        let bytes = whole.slice(start as usize..end as usize);
        return Ok(Fetched { url: final_url, bytes, reservation });
    }
    if let Some(ByteRange { start, end }) = range
        && body.len() as u64 != end - start
    {
        // Viewers check each segment's length (and sites its hash): a short or long
        // answer is no copy of the segment.
        return Err(Failure {
            status: Some(status.as_u16()),
            reason: format!(
                "the origin sent {} bytes for a {}-byte range",
                body.len(),
                end - start
            ),
            retry: true,
        });
    }
    Ok(Fetched { url: final_url, bytes: Bytes::from(body), reservation })
}
