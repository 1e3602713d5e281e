//! The host's authoritative view of a worker, kept from the flow of events and
//! admitted commands, and the checks every command passes before the host acts on it.
//!
//! Pure logic with time passed in: no wasm, no sockets. It must never trust the policy:
//! a command that names something that does not exist, reuses an id, or carries too
//! much is refused here, and the tables only change for commands that pass.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::limits::PolicyLimits;
use super::wire::{
    ByteRange, Command, ConnId, Event, FetchFailed, FetchId, FetchSegment, FetchText, HostState,
    HttpFailed, HttpRequest, MessageSize, PeerId, PeerState, RequestId, SegmentHandle, SegmentInfo,
    TimerId, TrackerState,
};

/// The methods an `http-request` may use: what trackers' HTTP APIs take.
const HTTP_METHODS: [&str; 4] = ["GET", "POST", "PUT", "DELETE"];
/// Headers that are the host's to write: which server is meant and how the request is
/// framed and carried. A policy setting them could reach other sites behind a
/// tracker's address or split one request into two.
const HOST_HEADERS: [&str; 8] = [
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "upgrade",
    "te",
    "trailer",
    "keep-alive",
];

/// Why one command was refused. The policy's other commands still run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("{what} {id} is not known")]
    Unknown { what: &'static str, id: u64 },
    #[error("{what} {id} is already in use")]
    Duplicate { what: &'static str, id: u64 },
    #[error("peer {0} has no open DataChannel yet")]
    PeerNotOpen(PeerId),
    #[error("peer {0} did not make an offer")]
    PeerNotOffering(PeerId),
    #[error("tracker connection {0} is not open yet")]
    TrackerNotOpen(ConnId),
    #[error("{what} of {len} bytes is over the {max}-byte limit")]
    TooLarge { what: &'static str, len: usize, max: usize },
    #[error("already {max} {what}, the limit")]
    TooMany { what: &'static str, max: usize },
    #[error("URL {url:?} is not allowed here: {why}")]
    BadUrl { url: String, why: &'static str },
    #[error("byte range {start}..{end} is empty or reversed")]
    BadRange { start: u64, end: u64 },
    #[error("offset {offset} is past the end of segment {handle} ({size} bytes)")]
    OffsetPastEnd { handle: SegmentHandle, offset: u64, size: u64 },
    #[error("message size {0} is outside 1..={1}")]
    BadChunk(u32, u32),
    #[error("HTTP method {0:?} is not one of GET, POST, PUT, DELETE")]
    BadMethod(String),
    #[error("HTTP header {0:?} is the host's to write")]
    BadHeader(String),
    #[error("timer delay of {0} ms is over the limit of {1} ms")]
    TimerTooLong(u64, u64),
    #[error("a scout only measures its swarms: no {0}")]
    Scout(&'static str),
}

/// What [`Tables::admit_all`] made of one call's commands.
#[derive(Debug, Default)]
pub struct Admitted {
    /// For the host to carry out, in order.
    pub commands: Vec<Command>,
    pub refused: Vec<Rejection>,
    /// What the policy must hear about refused commands (a fetch that will never
    /// complete fails), next turn.
    pub to_tell: Vec<Event>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    Opening,
    Open,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PeerPhase {
    /// We offered; waiting for the remote answer, then the DataChannel.
    Offering,
    /// We answered (or took the answer); waiting for the DataChannel.
    Connecting,
    Open,
}

#[derive(Debug, Clone)]
struct Tracker {
    url: String,
    link: Link,
}

/// What a scout may not do, named for its refusal: connect to peers (it must not take
/// a viewer's place) or fill the cache (it seeds nothing).
fn scout_refuses(command: &Command) -> Option<&'static str> {
    match command {
        Command::PeerOffer(_) | Command::PeerAnswer(_) | Command::PeerAcceptAnswer(_) => {
            Some("peer connections")
        }
        Command::FetchSegment(_) => Some("segment fetches"),
        _ => None,
    }
}

/// Authoritative tables of one worker.
#[derive(Debug, Clone, Default)]
pub struct Tables {
    trackers: BTreeMap<ConnId, Tracker>,
    peers: BTreeMap<PeerId, PeerPhase>,
    /// How many of `peers` are offers still waiting for an answer: they have a limit of
    /// their own and are not connections yet.
    offering: usize,
    /// Serves in progress, so `segment-sent` and closes keep them exact.
    serves: BTreeSet<(PeerId, SegmentHandle)>,
    fetches: BTreeSet<FetchId>,
    /// HTTP requests in flight.
    requests: BTreeSet<RequestId>,
    segments: BTreeMap<SegmentHandle, SegmentInfo>,
    /// Timer deadlines on the worker's monotonic clock.
    timers: BTreeMap<TimerId, Duration>,
}

impl Tables {
    /// Records what an event says happened. Events that name something unknown (late
    /// events for a closed peer, say) change nothing.
    pub fn observe(&mut self, event: &Event) {
        match event {
            Event::TrackerConnected(conn) => {
                if let Some(tracker) = self.trackers.get_mut(conn) {
                    tracker.link = Link::Open;
                }
            }
            Event::TrackerClosed(closed) => {
                self.trackers.remove(&closed.conn);
            }
            Event::PeerChannelOpen(peer) => {
                // Only a connection being set up opens; an offer must be answered first.
                if let Some(phase @ PeerPhase::Connecting) = self.peers.get_mut(peer) {
                    *phase = PeerPhase::Open;
                }
            }
            Event::PeerClosed(closed) => {
                self.remove_peer(closed.peer);
            }
            Event::TextFetched(done) => {
                self.fetches.remove(&done.fetch);
            }
            Event::SegmentStored(stored) => {
                self.fetches.remove(&stored.fetch);
                self.segments.insert(stored.segment.handle, stored.segment.clone());
            }
            Event::FetchFailed(failed) => {
                self.fetches.remove(&failed.fetch);
            }
            Event::HttpResponse(response) => {
                self.requests.remove(&response.request);
            }
            Event::HttpFailed(failed) => {
                self.requests.remove(&failed.request);
            }
            Event::SegmentEvicted(handle) => {
                self.segments.remove(handle);
                self.serves.retain(|(_, h)| h != handle);
            }
            Event::SegmentSent(sent) => {
                self.serves.remove(&(sent.peer, sent.handle));
            }
            Event::TimerFired(timer) => {
                self.timers.remove(timer);
            }
            Event::Started
            | Event::Stopping
            | Event::TrackerText(_)
            | Event::PeerOfferReady(_)
            | Event::PeerAnswerReady(_)
            | Event::PeerMessage(_)
            | Event::PeerBufferedLow(_) => {}
        }
    }

    /// Checks one call's commands in order with [`Tables::admit`]: those that pass, why
    /// the others did not, and what the policy must hear of them.
    pub fn admit_all(
        &mut self,
        now: Duration,
        commands: Vec<Command>,
        limits: &PolicyLimits,
        max_peers: usize,
        scout: bool,
    ) -> Admitted {
        let mut admitted = Vec::with_capacity(commands.len());
        let mut refused = Vec::new();
        let mut to_tell = Vec::new();
        for command in commands {
            let checked = match scout_refuses(&command) {
                Some(what) if scout => Err(Rejection::Scout(what)),
                _ => self.admit(now, &command, limits, max_peers),
            };
            match checked {
                Ok(()) => admitted.push(command),
                Err(rejection) => {
                    // A refused fetch would be in flight forever for the policy; one
                    // whose id is in flight is not reported (that fetch is real).
                    if let Command::FetchText(FetchText { fetch, .. })
                    | Command::FetchSegment(FetchSegment { fetch, .. }) = &command
                        && !self.fetches.contains(fetch)
                    {
                        to_tell.push(Event::FetchFailed(FetchFailed {
                            fetch: *fetch,
                            status: None,
                            reason: format!("refused by the host: {rejection}"),
                        }));
                    }
                    if let Command::HttpRequest(HttpRequest { request, .. }) = &command
                        && !self.requests.contains(request)
                    {
                        to_tell.push(Event::HttpFailed(HttpFailed {
                            request: *request,
                            reason: format!("refused by the host: {rejection}"),
                        }));
                    }
                    refused.push(rejection);
                }
            }
        }
        Admitted { commands: admitted, refused, to_tell }
    }

    /// Checks a command against the limits and the tables; when it passes, the tables
    /// record its effect and the host may carry it out.
    pub fn admit(
        &mut self,
        now: Duration,
        command: &Command,
        limits: &PolicyLimits,
        max_peers: usize,
    ) -> Result<(), Rejection> {
        match command {
            Command::TrackerConnect(c) => {
                check_url(&c.url, &["ws://", "wss://"], limits)?;
                fresh("tracker connection", c.conn, self.trackers.contains_key(&c.conn))?;
                room("tracker connections", self.trackers.len(), limits.max_trackers)?;
                self.trackers.insert(c.conn, Tracker { url: c.url.clone(), link: Link::Opening });
            }
            Command::TrackerSend(s) => {
                fit("tracker text", s.text.len(), limits.max_text_bytes)?;
                match self.trackers.get(&s.conn) {
                    None => return Err(unknown("tracker connection", s.conn)),
                    Some(t) if t.link != Link::Open => {
                        return Err(Rejection::TrackerNotOpen(s.conn));
                    }
                    Some(_) => {}
                }
            }
            Command::TrackerClose(conn) => {
                self.trackers.remove(conn).ok_or(unknown("tracker connection", *conn))?;
            }
            Command::PeerOffer(peer) => {
                fresh("peer", *peer, self.peers.contains_key(peer))?;
                room("pending offers", self.offering, limits.max_pending_offers)?;
                self.peers.insert(*peer, PeerPhase::Offering);
                self.offering += 1;
            }
            Command::PeerAnswer(a) => {
                fit("SDP offer", a.offer.len(), limits.max_text_bytes)?;
                fresh("peer", a.peer, self.peers.contains_key(&a.peer))?;
                room("peers", self.connections(), max_peers + limits.max_connecting_peers)?;
                self.peers.insert(a.peer, PeerPhase::Connecting);
            }
            Command::PeerAcceptAnswer(a) => {
                fit("SDP answer", a.answer.len(), limits.max_text_bytes)?;
                match self.peers.get(&a.peer) {
                    None => return Err(unknown("peer", a.peer)),
                    Some(PeerPhase::Offering) => {}
                    Some(_) => return Err(Rejection::PeerNotOffering(a.peer)),
                }
                // An answered offer becomes a connection, within the same budget as
                // the offers we answer.
                room("peers", self.connections(), max_peers + limits.max_connecting_peers)?;
                self.peers.insert(a.peer, PeerPhase::Connecting);
                self.offering -= 1;
            }
            Command::PeerSend(s) => {
                fit("peer message", s.data.len(), limits.max_message_bytes)?;
                self.open_peer(s.peer)?;
            }
            Command::PeerSendText(s) => {
                fit("peer message", s.text.len(), limits.max_message_bytes)?;
                self.open_peer(s.peer)?;
            }
            Command::ServeSegment(s) => {
                self.open_peer(s.peer)?;
                let segment = self.segments.get(&s.handle).ok_or(unknown("segment", s.handle))?;
                if s.offset > segment.size {
                    return Err(Rejection::OffsetPastEnd {
                        handle: s.handle,
                        offset: s.offset,
                        size: segment.size,
                    });
                }
                let (MessageSize::AtMost(size) | MessageSize::Exactly(size)) = s.message_size;
                if size == 0 || size > limits.max_chunk_bytes {
                    return Err(Rejection::BadChunk(size, limits.max_chunk_bytes));
                }
                if let Some(end) = &s.end {
                    fit("end of a serve", end.len(), limits.max_message_bytes)?;
                }
                fresh("serve of segment", s.handle, !self.serves.insert((s.peer, s.handle)))?;
            }
            Command::CancelServe(c) => {
                if !self.serves.remove(&(c.peer, c.handle)) {
                    return Err(unknown("serve of segment", c.handle));
                }
            }
            Command::PeerClose(c) => {
                fit("close reason", c.reason.len(), limits.max_text_bytes)?;
                if !self.remove_peer(c.peer) {
                    return Err(unknown("peer", c.peer));
                }
            }
            Command::FetchText(f) => {
                check_url(&f.url, &["http://", "https://"], limits)?;
                self.new_fetch(f.fetch, limits)?;
            }
            Command::FetchSegment(f) => {
                check_url(&f.url, &["http://", "https://"], limits)?;
                if let Some(ByteRange { start, end }) = f.range
                    && start >= end
                {
                    return Err(Rejection::BadRange { start, end });
                }
                self.new_fetch(f.fetch, limits)?;
            }
            Command::FetchCancel(fetch) => {
                if !self.fetches.remove(fetch) {
                    return Err(unknown("fetch", *fetch));
                }
            }
            Command::Evict(handle) => {
                // The segment leaves the tables when the host reports `segment-evicted`.
                if !self.segments.contains_key(handle) {
                    return Err(unknown("segment", *handle));
                }
            }
            Command::TimerSet(t) => {
                let max_ms = limits.max_timer_delay.as_millis() as u64;
                if t.after_ms > max_ms {
                    return Err(Rejection::TimerTooLong(t.after_ms, max_ms));
                }
                if !self.timers.contains_key(&t.timer) {
                    room("timers", self.timers.len(), limits.max_timers)?;
                }
                self.timers.insert(t.timer, now + Duration::from_millis(t.after_ms));
            }
            Command::TimerCancel(timer) => {
                self.timers.remove(timer).ok_or(unknown("timer", *timer))?;
            }
            Command::SwarmSize(_) => {}
            Command::HttpRequest(r) => {
                check_url(&r.url, &["http://", "https://"], limits)?;
                if !HTTP_METHODS.contains(&r.method.as_str()) {
                    return Err(Rejection::BadMethod(r.method.chars().take(16).collect()));
                }
                if let Some((name, _)) = r.headers.iter().find(|(name, _)| {
                    let name = name.to_ascii_lowercase();
                    HOST_HEADERS.contains(&name.as_str()) || name.starts_with("proxy-")
                }) {
                    return Err(Rejection::BadHeader(name.chars().take(64).collect()));
                }
                let headers: usize = r.headers.iter().map(|(k, v)| k.len() + v.len() + 4).sum();
                fit("HTTP request", headers + r.body.len(), limits.max_text_bytes)?;
                fresh("HTTP request", r.request, self.requests.contains(&r.request))?;
                room("HTTP requests", self.requests.len(), limits.max_requests)?;
                self.requests.insert(r.request);
            }
        }
        Ok(())
    }

    /// Tracker connections open (connected and not closed since).
    pub fn trackers_open(&self) -> usize {
        self.trackers.values().filter(|t| t.link == Link::Open).count()
    }

    /// What a fresh policy instance is told about the worker.
    pub fn state(&self, now: Duration) -> HostState {
        HostState {
            trackers: self
                .trackers
                .iter()
                .map(|(conn, t)| TrackerState {
                    conn: *conn,
                    url: t.url.clone(),
                    open: t.link == Link::Open,
                })
                .collect(),
            peers: self
                .peers
                .iter()
                .map(|(peer, phase)| PeerState {
                    peer: *peer,
                    open: *phase == PeerPhase::Open,
                    serving: self
                        .serves
                        .range((*peer, SegmentHandle(0))..=(*peer, SegmentHandle(u64::MAX)))
                        .map(|(_, handle)| *handle)
                        .collect(),
                })
                .collect(),
            fetches: self.fetches.iter().copied().collect(),
            requests: self.requests.iter().copied().collect(),
            segments: self.segments.values().cloned().collect(),
            timers: self
                .timers
                .iter()
                .map(|(timer, due)| (*timer, due.saturating_sub(now).as_millis() as u64))
                .collect(),
        }
    }

    /// Removes the timers that are due and returns them, earliest first: the host has
    /// fired them, whether or not an instance is there to hear it yet.
    pub fn take_due_timers(&mut self, now: Duration) -> Vec<TimerId> {
        let mut due: Vec<(TimerId, Duration)> =
            self.timers.iter().filter(|(_, at)| **at <= now).map(|(t, at)| (*t, *at)).collect();
        due.sort_by_key(|(timer, at)| (*at, *timer));
        for (timer, _) in &due {
            self.timers.remove(timer);
        }
        due.into_iter().map(|(timer, _)| timer).collect()
    }

    /// When the earliest pending timer is due.
    pub fn next_timer(&self) -> Option<Duration> {
        self.timers.values().min().copied()
    }

    /// Peers answered or being answered: everything but offers still waiting.
    pub fn connections(&self) -> usize {
        self.peers.len().saturating_sub(self.offering)
    }

    /// Forgets a peer and its serves; false if it was not known.
    fn remove_peer(&mut self, peer: PeerId) -> bool {
        match self.peers.remove(&peer) {
            None => false,
            Some(phase) => {
                self.offering -= usize::from(phase == PeerPhase::Offering);
                self.serves.retain(|(p, _)| *p != peer);
                true
            }
        }
    }

    pub fn segment(&self, handle: SegmentHandle) -> Option<&SegmentInfo> {
        self.segments.get(&handle)
    }

    fn open_peer(&self, peer: PeerId) -> Result<(), Rejection> {
        match self.peers.get(&peer) {
            None => Err(unknown("peer", peer)),
            Some(PeerPhase::Open) => Ok(()),
            Some(_) => Err(Rejection::PeerNotOpen(peer)),
        }
    }

    fn new_fetch(&mut self, fetch: FetchId, limits: &PolicyLimits) -> Result<(), Rejection> {
        fresh("fetch", fetch, self.fetches.contains(&fetch))?;
        room("fetches", self.fetches.len(), limits.max_fetches)?;
        self.fetches.insert(fetch);
        Ok(())
    }
}

fn unknown(what: &'static str, id: impl Into<u64>) -> Rejection {
    Rejection::Unknown { what, id: id.into() }
}

fn fresh(what: &'static str, id: impl Into<u64>, taken: bool) -> Result<(), Rejection> {
    if taken { Err(Rejection::Duplicate { what, id: id.into() }) } else { Ok(()) }
}

fn room(what: &'static str, len: usize, max: usize) -> Result<(), Rejection> {
    if len >= max { Err(Rejection::TooMany { what, max }) } else { Ok(()) }
}

fn fit(what: &'static str, len: usize, max: usize) -> Result<(), Rejection> {
    if len > max { Err(Rejection::TooLarge { what, len, max }) } else { Ok(()) }
}

fn check_url(url: &str, schemes: &[&str], limits: &PolicyLimits) -> Result<(), Rejection> {
    let bad = |why| Err(Rejection::BadUrl { url: url.chars().take(200).collect(), why });
    if url.len() > limits.max_url_bytes {
        return bad("too long");
    }
    let lower = url.get(..8).unwrap_or(url).to_ascii_lowercase();
    let Some(scheme) = schemes.iter().find(|s| lower.starts_with(**s)) else {
        return bad("wrong scheme");
    };
    let rest = &url[scheme.len()..];
    if rest.is_empty() || rest.starts_with('/') {
        return bad("no host");
    }
    if url.chars().any(|c| c.is_control() || c == ' ') {
        return bad("contains spaces or control characters");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::wire::{
        CacheTier, FetchSegment, PeerAcceptAnswer, PeerAnswer, PeerClose, PeerClosed, PeerSend,
        PeerSendText, SegmentStored, ServeSegment, TimerSet, TrackerConnect, TrackerSend,
    };

    const NOW: Duration = Duration::from_secs(100);

    /// Two peers at most, none beyond them while connecting.
    fn admit(tables: &mut Tables, command: Command) -> Result<(), Rejection> {
        let limits = PolicyLimits { max_connecting_peers: 0, ..PolicyLimits::default() };
        tables.admit(NOW, &command, &limits, 2)
    }

    fn segment(handle: SegmentHandle, size: u64) -> Event {
        Event::SegmentStored(SegmentStored {
            fetch: FetchId(0),
            segment: SegmentInfo {
                handle,
                url: "http://origin/seg.ts".into(),
                range: None,
                size,
                tier: CacheTier::Memory,
            },
        })
    }

    #[test]
    fn tracker_lifecycle_is_enforced() {
        let mut t = Tables::default();
        let connect = Command::TrackerConnect(TrackerConnect {
            conn: ConnId(1),
            url: "wss://t.example/".into(),
        });
        admit(&mut t, connect.clone()).unwrap();
        assert_eq!(
            t.state(NOW).trackers,
            vec![TrackerState { conn: ConnId(1), url: "wss://t.example/".into(), open: false }],
            "a connection being opened is replayed too, so a new instance can adopt it"
        );
        assert_eq!(
            admit(&mut t, connect),
            Err(Rejection::Duplicate { what: "tracker connection", id: 1 })
        );
        let send = Command::TrackerSend(TrackerSend { conn: ConnId(1), text: "{}".into() });
        assert_eq!(admit(&mut t, send.clone()), Err(Rejection::TrackerNotOpen(ConnId(1))));
        assert_eq!(t.trackers_open(), 0, "an opening connection is not open");
        t.observe(&Event::TrackerConnected(ConnId(1)));
        assert_eq!(t.trackers_open(), 1);
        admit(&mut t, send.clone()).unwrap();
        let tracker = |open| TrackerState { conn: ConnId(1), url: "wss://t.example/".into(), open };
        assert_eq!(t.state(NOW).trackers, vec![tracker(true)]);
        t.observe(&Event::TrackerClosed(crate::policy::wire::TrackerClosed {
            conn: ConnId(1),
            reason: String::new(),
        }));
        assert!(matches!(admit(&mut t, send), Err(Rejection::Unknown { .. })));
        assert_eq!(t.trackers_open(), 0);
    }

    #[test]
    fn urls_are_checked() {
        let mut t = Tables::default();
        for (url, ok) in [
            ("wss://tracker.example/announce", true),
            ("WS://127.0.0.1:8000", true),
            ("http://tracker.example/", false),
            ("wss://", false),
            ("wss:///path", false),
            ("wss://a b", false),
            ("file:///etc/passwd", false),
        ] {
            let result = admit(
                &mut t,
                Command::TrackerConnect(TrackerConnect { conn: ConnId(7), url: url.into() }),
            );
            assert_eq!(result.is_ok(), ok, "{url}: {result:?}");
            t.trackers.clear();
        }
    }

    #[test]
    fn peers_are_capped_and_must_be_open_to_send() {
        let mut t = Tables::default();
        let answer = |peer| Command::PeerAnswer(PeerAnswer { peer, offer: "v=0".into() });
        admit(&mut t, answer(PeerId(1))).unwrap();
        admit(&mut t, answer(PeerId(2))).unwrap();
        assert_eq!(
            admit(&mut t, answer(PeerId(3))),
            Err(Rejection::TooMany { what: "peers", max: 2 })
        );
        let send = Command::PeerSend(PeerSend { peer: PeerId(1), data: vec![1, 2, 3] });
        let text = Command::PeerSendText(PeerSendText { peer: PeerId(1), text: "{}".into() });
        assert_eq!(admit(&mut t, send.clone()), Err(Rejection::PeerNotOpen(PeerId(1))));
        assert_eq!(admit(&mut t, text.clone()), Err(Rejection::PeerNotOpen(PeerId(1))));
        t.observe(&Event::PeerChannelOpen(PeerId(1)));
        admit(&mut t, send).unwrap();
        admit(&mut t, text).unwrap();
        let big = Command::PeerSend(PeerSend { peer: PeerId(1), data: vec![0; (64 << 10) + 1] });
        assert!(matches!(admit(&mut t, big), Err(Rejection::TooLarge { .. })));
        let long = Command::PeerSendText(PeerSendText {
            peer: PeerId(1),
            text: "x".repeat((64 << 10) + 1),
        });
        assert!(matches!(admit(&mut t, long), Err(Rejection::TooLarge { .. })));
        t.observe(&Event::PeerClosed(PeerClosed { peer: PeerId(1), reason: "gone".into() }));
        admit(&mut t, answer(PeerId(3))).unwrap();
        assert_eq!(t.connections(), 2);
    }

    #[test]
    fn peers_still_connecting_may_go_past_the_viewers_by_their_own_limit() {
        let mut t = Tables::default();
        let limits = PolicyLimits { max_connecting_peers: 3, ..PolicyLimits::default() };
        let answer = |peer| Command::PeerAnswer(PeerAnswer { peer, offer: "v=0".into() });
        for peer in 1..=5 {
            t.admit(NOW, &answer(PeerId(peer)), &limits, 2).unwrap();
        }
        assert_eq!(
            t.admit(NOW, &answer(PeerId(6)), &limits, 2),
            Err(Rejection::TooMany { what: "peers", max: 5 })
        );
    }

    #[test]
    fn offers_wait_within_their_own_limit_and_join_the_budget_once_answered() {
        let mut t = Tables::default();
        let limits = PolicyLimits {
            max_pending_offers: 3,
            max_connecting_peers: 0,
            ..PolicyLimits::default()
        };
        let admit = |t: &mut Tables, command| t.admit(NOW, &command, &limits, 2);
        let answer = |peer| Command::PeerAnswer(PeerAnswer { peer, offer: "v=0".into() });
        let accept =
            |peer| Command::PeerAcceptAnswer(PeerAcceptAnswer { peer, answer: "v=0".into() });
        for peer in 1..=3 {
            admit(&mut t, Command::PeerOffer(PeerId(peer))).unwrap();
        }
        assert_eq!(
            admit(&mut t, Command::PeerOffer(PeerId(4))),
            Err(Rejection::TooMany { what: "pending offers", max: 3 })
        );
        assert_eq!(t.connections(), 0, "offers waiting are not connections");
        admit(&mut t, answer(PeerId(10))).unwrap();
        admit(&mut t, accept(PeerId(1))).unwrap();
        assert_eq!(t.connections(), 2);
        assert_eq!(
            admit(&mut t, accept(PeerId(2))),
            Err(Rejection::TooMany { what: "peers", max: 2 }),
            "an answer past maxConnections is refused; the policy must close the offer"
        );
        assert_eq!(admit(&mut t, accept(PeerId(1))), Err(Rejection::PeerNotOffering(PeerId(1))));
        assert_eq!(admit(&mut t, accept(PeerId(10))), Err(Rejection::PeerNotOffering(PeerId(10))));
        assert_eq!(
            admit(&mut t, accept(PeerId(99))),
            Err(Rejection::Unknown { what: "peer", id: 99 })
        );
        // Withdrawn or expired offers free their places.
        admit(&mut t, Command::PeerClose(PeerClose { peer: PeerId(2), reason: "late".into() }))
            .unwrap();
        t.observe(&Event::PeerClosed(PeerClosed { peer: PeerId(3), reason: "expired".into() }));
        admit(&mut t, Command::PeerOffer(PeerId(4))).unwrap();
        admit(&mut t, Command::PeerOffer(PeerId(5))).unwrap();
        assert_eq!(t.state(NOW).peers.len(), 4);
        assert!(t.state(NOW).peers.iter().all(|p| !p.open));
    }

    #[test]
    fn serves_need_a_cached_segment_and_a_sane_offset() {
        let mut t = Tables::default();
        admit(&mut t, Command::PeerAnswer(PeerAnswer { peer: PeerId(1), offer: "v=0".into() }))
            .unwrap();
        t.observe(&Event::PeerChannelOpen(PeerId(1)));
        let serve = |handle, offset| {
            Command::ServeSegment(ServeSegment {
                peer: PeerId(1),
                handle,
                offset,
                message_size: MessageSize::AtMost(16384),
                end: None,
            })
        };
        assert_eq!(
            admit(&mut t, serve(SegmentHandle(9), 0)),
            Err(Rejection::Unknown { what: "segment", id: 9 })
        );
        t.observe(&segment(SegmentHandle(9), 1000));
        admit(&mut t, serve(SegmentHandle(9), 1000)).unwrap();
        assert!(
            matches!(admit(&mut t, serve(SegmentHandle(9), 0)), Err(Rejection::Duplicate { .. })),
            "one serve of a segment to a peer at a time"
        );
        assert_eq!(t.state(NOW).peers[0].serving, vec![SegmentHandle(9)]);
        assert!(matches!(
            admit(&mut t, serve(SegmentHandle(9), 1001)),
            Err(Rejection::OffsetPastEnd { .. })
        ));
        t.observe(&Event::SegmentEvicted(SegmentHandle(9)));
        assert!(t.segment(SegmentHandle(9)).is_none());
        assert!(matches!(
            admit(&mut t, serve(SegmentHandle(9), 0)),
            Err(Rejection::Unknown { .. })
        ));
    }

    #[test]
    fn a_serves_message_size_and_end_are_within_limits() {
        let mut t = Tables::default();
        admit(&mut t, Command::PeerAnswer(PeerAnswer { peer: PeerId(1), offer: "v=0".into() }))
            .unwrap();
        t.observe(&Event::PeerChannelOpen(PeerId(1)));
        t.observe(&segment(SegmentHandle(9), 1000));
        let limits = PolicyLimits::default();
        let serve = |message_size, end: usize| {
            Command::ServeSegment(ServeSegment {
                peer: PeerId(1),
                handle: SegmentHandle(9),
                offset: 0,
                message_size,
                end: Some(vec![7; end]),
            })
        };
        for size in [0, limits.max_chunk_bytes + 1] {
            for message_size in [MessageSize::AtMost(size), MessageSize::Exactly(size)] {
                let refused = admit(&mut t, serve(message_size, 10));
                assert_eq!(refused, Err(Rejection::BadChunk(size, limits.max_chunk_bytes)));
            }
        }
        let end = limits.max_message_bytes + 1;
        assert!(matches!(
            admit(&mut t, serve(MessageSize::Exactly(64_000), end)),
            Err(Rejection::TooLarge { what: "end of a serve", .. })
        ));
        admit(&mut t, serve(MessageSize::Exactly(64_000), 10)).unwrap();
    }

    #[test]
    fn http_requests_go_to_http_urls_within_limits_and_a_refused_one_is_answered() {
        let mut t = Tables::default();
        let limits = PolicyLimits { max_requests: 2, ..PolicyLimits::default() };
        let request = |request, method: &str, url: &str, body: usize| {
            Command::HttpRequest(HttpRequest {
                request,
                method: method.into(),
                url: url.into(),
                headers: vec![("content-type".into(), "application/json".into())],
                body: vec![b'x'; body],
            })
        };
        let mut admit = |command| t.admit(NOW, &command, &limits, 2);
        admit(request(RequestId(1), "POST", "http://tracker.example/v1/channel", 100)).unwrap();
        assert!(matches!(
            admit(request(RequestId(2), "POST", "ws://tracker.example/", 0)),
            Err(Rejection::BadUrl { why: "wrong scheme", .. })
        ));
        assert!(matches!(
            admit(request(RequestId(2), "CONNECT", "https://tracker.example/", 0)),
            Err(Rejection::BadMethod(_))
        ));
        for header in ["Host", "transfer-encoding", "Proxy-Authorization"] {
            let mut command = request(RequestId(2), "GET", "https://tracker.example/", 0);
            if let Command::HttpRequest(r) = &mut command {
                r.headers.push((header.into(), "x".into()));
            }
            assert_eq!(admit(command), Err(Rejection::BadHeader(header.into())));
        }
        assert!(matches!(
            admit(request(RequestId(2), "POST", "https://tracker.example/", 64 << 10)),
            Err(Rejection::TooLarge { what: "HTTP request", .. })
        ));
        assert!(matches!(
            admit(request(RequestId(1), "GET", "https://tracker.example/", 0)),
            Err(Rejection::Duplicate { .. })
        ));
        admit(request(RequestId(2), "GET", "https://tracker.example/", 0)).unwrap();
        assert!(matches!(
            admit(request(RequestId(3), "GET", "https://tracker.example/", 0)),
            Err(Rejection::TooMany { what: "HTTP requests", max: 2 })
        ));
        assert_eq!(t.state(NOW).requests, vec![RequestId(1), RequestId(2)]);

        // Answered, a request is no longer in flight; one refused is answered at once,
        // unless its id is in flight (that request is real).
        t.observe(&Event::HttpFailed(HttpFailed {
            request: RequestId(1),
            reason: "timed out".into(),
        }));
        assert_eq!(t.state(NOW).requests, vec![RequestId(2)]);
        let Admitted { refused, to_tell, .. } = t.admit_all(
            NOW,
            vec![
                request(RequestId(3), "GET", "ws://x/", 0),
                request(RequestId(2), "GET", "ws://x/", 0),
            ],
            &limits,
            2,
            false,
        );
        assert_eq!(refused.len(), 2);
        assert!(
            matches!(&to_tell[..], [Event::HttpFailed(HttpFailed { request: RequestId(3), reason })] if reason.starts_with("refused by the host")),
            "{to_tell:?}"
        );
    }

    #[test]
    fn fetches_and_ranges() {
        let mut t = Tables::default();
        let fetch = |fetch, range| {
            Command::FetchSegment(FetchSegment {
                fetch,
                url: "https://origin.example/a.ts".into(),
                range,
                tier: CacheTier::Disk,
            })
        };
        admit(&mut t, fetch(FetchId(1), Some(ByteRange { start: 0, end: 10 }))).unwrap();
        assert!(matches!(admit(&mut t, fetch(FetchId(1), None)), Err(Rejection::Duplicate { .. })));
        assert_eq!(
            admit(&mut t, fetch(FetchId(2), Some(ByteRange { start: 5, end: 5 }))),
            Err(Rejection::BadRange { start: 5, end: 5 })
        );
        t.observe(&segment(SegmentHandle(4), 10));
        admit(&mut t, fetch(FetchId(1), None))
            .expect_err("still in flight: segment-stored named fetch 0");
    }

    #[test]
    fn a_refused_fetch_is_told_failed_unless_its_id_is_a_real_fetch() {
        let mut t = Tables::default();
        let limits = PolicyLimits { max_fetches: 1, ..PolicyLimits::default() };
        let fetch = |fetch| Command::FetchText(FetchText { fetch, url: "http://o/m.m3u8".into() });
        let bad_url =
            Command::FetchText(FetchText { fetch: FetchId(1), url: "file:///etc".into() });
        let Admitted { commands, refused, to_tell } = t.admit_all(
            NOW,
            vec![fetch(FetchId(1)), fetch(FetchId(2)), fetch(FetchId(1)), bad_url],
            &limits,
            2,
            false,
        );
        assert_eq!(commands, [fetch(FetchId(1))]);
        assert!(matches!(
            refused[..],
            [Rejection::TooMany { .. }, Rejection::Duplicate { .. }, Rejection::BadUrl { .. }]
        ));
        let [Event::FetchFailed(failed)] = &to_tell[..] else { panic!("{to_tell:?}") };
        assert_eq!((failed.fetch, failed.status), (FetchId(2), None));
        assert!(failed.reason.contains("refused by the host"), "{}", failed.reason);
    }

    #[test]
    fn a_scout_may_read_playlists_and_speak_to_trackers_but_never_connect_or_cache() {
        let mut t = Tables::default();
        let limits = PolicyLimits::default();
        let commands = vec![
            Command::FetchText(FetchText { fetch: FetchId(1), url: "http://o/m.m3u8".into() }),
            Command::TrackerConnect(TrackerConnect { conn: ConnId(2), url: "ws://t/".into() }),
            Command::SwarmSize(7),
            Command::PeerOffer(PeerId(3)),
            Command::PeerAnswer(PeerAnswer { peer: PeerId(4), offer: "v=0".into() }),
            Command::FetchSegment(FetchSegment {
                fetch: FetchId(5),
                url: "http://o/a.ts".into(),
                range: None,
                tier: CacheTier::Memory,
            }),
        ];
        let Admitted { commands: passed, refused, to_tell } =
            t.admit_all(NOW, commands.clone(), &limits, 80, true);
        assert_eq!(passed, commands[..3]);
        assert!(refused.iter().all(|r| matches!(r, Rejection::Scout(_))), "{refused:?}");
        assert_eq!(refused.len(), 3);
        let [Event::FetchFailed(failed)] = &to_tell[..] else { panic!("{to_tell:?}") };
        assert_eq!(failed.fetch, FetchId(5));
        // The same commands from a seeder all pass.
        let seeder = Tables::default().admit_all(NOW, commands, &limits, 80, false);
        assert!(seeder.refused.is_empty(), "{:?}", seeder.refused);
    }

    #[test]
    fn timers_are_replayed_with_their_remaining_time() {
        let mut t = Tables::default();
        admit(&mut t, Command::TimerSet(TimerSet { timer: TimerId(5), after_ms: 1500 })).unwrap();
        admit(&mut t, Command::TimerSet(TimerSet { timer: TimerId(6), after_ms: 500 })).unwrap();
        assert_eq!(
            t.state(NOW + Duration::from_millis(400)).timers,
            vec![(TimerId(5), 1100), (TimerId(6), 100)]
        );
        assert_eq!(t.next_timer(), Some(NOW + Duration::from_millis(500)));
        assert_eq!(t.take_due_timers(NOW + Duration::from_millis(600)), vec![TimerId(6)]);
        assert!(t.take_due_timers(NOW + Duration::from_millis(600)).is_empty(), "fired once");
        let too_long = Command::TimerSet(TimerSet { timer: TimerId(7), after_ms: u64::MAX });
        assert!(matches!(admit(&mut t, too_long), Err(Rejection::TimerTooLong(..))));
        t.observe(&Event::TimerFired(TimerId(6)));
        assert_eq!(t.state(NOW).timers.len(), 1);
        assert_eq!(t.next_timer(), Some(NOW + Duration::from_millis(1500)));
    }
}
