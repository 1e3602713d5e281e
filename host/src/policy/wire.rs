//! The host's own types for what crosses between it and a policy: events in, commands
//! out, a seed's configuration and the host's view of a worker.
//!
//! They follow the newest WIT version (`wit/0.2.0`) field for field, but they are not
//! generated: each supported WIT version's bindings convert to and from them at the
//! edge (`bindings.rs`), so a new version changes that edge and what it adds, never the
//! data plane. Nothing here knows about wasmtime.

/// Declares ids: each a `u64` that names things of one kind only, so a peer cannot be
/// passed where a fetch is meant. The WIT types carry the bare number; `bindings.rs`
/// wraps and unwraps it at the edge.
///
/// A fetch's id names a fetch; a peer's does not (the first compiles, the second must
/// not, and only for the mismatch):
///
/// ```
/// use superpeer::policy::wire::{Command, FetchId};
/// let _ = Command::FetchCancel(FetchId(1));
/// ```
///
/// ```compile_fail,E0308
/// use superpeer::policy::wire::{Command, PeerId};
/// let _ = Command::FetchCancel(PeerId(1));
/// ```
macro_rules! ids {
    ($($(#[$doc:meta])* $name:ident;)*) => {$(
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(pub u64);

        impl From<$name> for u64 {
            fn from(id: $name) -> u64 {
                id.0
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                self.0.fmt(f)
            }
        }
    )*};
}

ids! {
    /// A tracker or signal WebSocket connection, named by the policy.
    ConnId;
    /// A WebRTC peer connection, named by the policy.
    PeerId;
    /// A fetch from the origin, named by the policy.
    FetchId;
    /// An HTTP request to a tracker, named by the policy.
    RequestId;
    /// A timer, named by the policy.
    TimerId;
    /// A segment held in the cache; chosen by the host, stable until evicted.
    SegmentHandle;
}

/// What the operator asked this worker to seed; also what the master hands a worker
/// it starts.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SeedConfig {
    pub channel: String,
    pub manifest_url: Option<String>,
    pub trackers: Vec<String>,
    pub live: bool,
    pub max_connections: u32,
    pub label: String,
    pub settings: Vec<(String, String)>,
    /// Only measure the swarms (`swarm-size`), joining none: automatic seeding's scout.
    #[serde(default)]
    pub scout: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyInfo {
    pub name: String,
    pub version: String,
}

/// A half-open byte range `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRange {
    pub start: u64,
    pub end: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheTier {
    Memory,
    Disk,
    DiskIfCached,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentInfo {
    pub handle: SegmentHandle,
    pub url: String,
    pub range: Option<ByteRange>,
    pub size: u64,
    pub tier: CacheTier,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackerState {
    pub conn: ConnId,
    pub url: String,
    pub open: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerState {
    pub peer: PeerId,
    pub open: bool,
    pub serving: Vec<SegmentHandle>,
}

/// The host's authoritative view of a worker, replayed to a fresh instance.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostState {
    pub trackers: Vec<TrackerState>,
    pub peers: Vec<PeerState>,
    pub fetches: Vec<FetchId>,
    pub requests: Vec<RequestId>,
    pub segments: Vec<SegmentInfo>,
    pub timers: Vec<(TimerId, u64)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

// ---- events ----

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackerText {
    pub conn: ConnId,
    pub text: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackerClosed {
    pub conn: ConnId,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SdpReady {
    pub peer: PeerId,
    pub sdp: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerMessage {
    pub peer: PeerId,
    pub data: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerClosed {
    pub peer: PeerId,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextFetched {
    pub fetch: FetchId,
    pub url: String,
    pub text: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentStored {
    pub fetch: FetchId,
    pub segment: SegmentInfo,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchFailed {
    pub fetch: FetchId,
    pub status: Option<u16>,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    pub request: RequestId,
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpFailed {
    pub request: RequestId,
    pub reason: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentSent {
    pub peer: PeerId,
    pub handle: SegmentHandle,
    pub bytes: u64,
    pub complete: bool,
}

/// What happened since the last call (the WIT's `event`, documented there).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Started,
    Stopping,
    TrackerConnected(ConnId),
    TrackerText(TrackerText),
    TrackerClosed(TrackerClosed),
    PeerOfferReady(SdpReady),
    PeerAnswerReady(SdpReady),
    PeerChannelOpen(PeerId),
    PeerMessage(PeerMessage),
    PeerBufferedLow(PeerId),
    PeerClosed(PeerClosed),
    TextFetched(TextFetched),
    SegmentStored(SegmentStored),
    FetchFailed(FetchFailed),
    SegmentEvicted(SegmentHandle),
    SegmentSent(SegmentSent),
    TimerFired(TimerId),
    HttpResponse(HttpResponse),
    HttpFailed(HttpFailed),
}

// ---- commands ----

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackerConnect {
    pub conn: ConnId,
    pub url: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackerSend {
    pub conn: ConnId,
    pub text: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerAnswer {
    pub peer: PeerId,
    pub offer: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerAcceptAnswer {
    pub peer: PeerId,
    pub answer: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerSend {
    pub peer: PeerId,
    pub data: Vec<u8>,
}

/// A text message (sent as a DataChannel string).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerSendText {
    pub peer: PeerId,
    pub text: String,
}

/// How a serve's bytes are cut into DataChannel messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageSize {
    /// At most this many bytes each; the host may cut smaller.
    AtMost(u32),
    /// Exactly this many bytes each but the last.
    Exactly(u32),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServeSegment {
    pub peer: PeerId,
    pub handle: SegmentHandle,
    pub offset: u64,
    pub message_size: MessageSize,
    /// Sent after the last byte; not at all if the serve does not complete.
    pub end: Option<Vec<u8>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CancelServe {
    pub peer: PeerId,
    pub handle: SegmentHandle,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerClose {
    pub peer: PeerId,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchText {
    pub fetch: FetchId,
    pub url: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchSegment {
    pub fetch: FetchId,
    pub url: String,
    pub range: Option<ByteRange>,
    pub tier: CacheTier,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimerSet {
    pub timer: TimerId,
    pub after_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpRequest {
    pub request: RequestId,
    pub method: String,
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// What a policy asks the host to do (the WIT's `command`, documented there).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    TrackerConnect(TrackerConnect),
    TrackerSend(TrackerSend),
    TrackerClose(ConnId),
    PeerOffer(PeerId),
    PeerAnswer(PeerAnswer),
    PeerAcceptAnswer(PeerAcceptAnswer),
    PeerSend(PeerSend),
    PeerSendText(PeerSendText),
    ServeSegment(ServeSegment),
    CancelServe(CancelServe),
    PeerClose(PeerClose),
    FetchText(FetchText),
    FetchSegment(FetchSegment),
    FetchCancel(FetchId),
    Evict(SegmentHandle),
    TimerSet(TimerSet),
    TimerCancel(TimerId),
    HttpRequest(HttpRequest),
    SwarmSize(u64),
}

/// The bytes of text and data an event hands a policy: what splits large turns into
/// several calls and what a call's deadline grows with.
pub fn payload_bytes(event: &Event) -> usize {
    match event {
        Event::TrackerText(t) => t.text.len(),
        Event::TrackerClosed(c) => c.reason.len(),
        Event::PeerOfferReady(r) | Event::PeerAnswerReady(r) => r.sdp.len(),
        Event::PeerMessage(m) => m.data.len(),
        Event::PeerClosed(c) => c.reason.len(),
        Event::TextFetched(t) => t.url.len() + t.text.len(),
        Event::SegmentStored(s) => s.segment.url.len(),
        Event::FetchFailed(f) => f.reason.len(),
        Event::HttpResponse(r) => {
            r.body.len() + r.headers.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>()
        }
        Event::HttpFailed(f) => f.reason.len(),
        Event::Started
        | Event::Stopping
        | Event::TrackerConnected(_)
        | Event::PeerChannelOpen(_)
        | Event::PeerBufferedLow(_)
        | Event::SegmentEvicted(_)
        | Event::SegmentSent(_)
        | Event::TimerFired(_) => 0,
    }
}
