//! One instance of the SwarmCloud policy, free of host calls (time comes in as values),
//! so whole lives of it are tested natively.
//!
//! It announces the channel to the tracker's HTTP API as a super peer, keeps a
//! connection to each signal relay the tracker (or the seed) names under the peer id the
//! tracker gave, answers the viewers' offers that come through them, and serves the
//! segments [`Streams`] holds over the DataChannel protocol: METADATA with `super` and
//! the seed's token, HAVE as segments arrive, PIECE and its 64,000-byte frames for each
//! REQUEST, STATS every 40 s. Figures go to the tracker every `report_interval`.
//!
//! Viewers who were in the swarm first seldom ask the tracker for peers again (once
//! they have some, they ask their peers, who never name a super peer), so they would
//! never meet superpeer: it asks the tracker for the swarm's peers itself and offers to
//! those it is not connected to, a few per round, through the relays.
//!
//! Continuity: a new instance (a hot swap, a restart after a fault) takes over from the
//! snapshot of the one it replaces, squared with what the host has; viewers it knows
//! keep their connections, others are closed so they connect again at once.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use superpeer_guest::host::{debug, info as log};
use superpeer_guest::links::Links;
use superpeer_guest::{
    Allowance, CancelServe, Command, ConnId, Event, HostState, HttpRequest, Ids, MessageSize,
    PeerAcceptAnswer, PeerAnswer, PeerClose, PeerId, PeerSendText, RequestId, SeedConfig,
    SegmentHandle, ServeSegment, Timers, TrackerSend,
};
use superpeer_segments::{Change, Lend, StreamTimer, Streams};

use crate::peer::{self, FRAME_BYTES, Message, Metadata};
use crate::signal::{Incoming, Outgoing, SignalData};
use crate::tracker::{self, Announce, Announced, NodeCall, ReplyError};

/// The SDK version superpeer speaks as, in its signal URL and its announce.
pub const SDK_VERSION: &str = "2.9.10";
/// STATS to each viewer this often: a viewer with many peers drops one silent for 83 s.
const PEER_STATS_MS: u64 = 40_000;
/// The tracker's shortest report interval, as the SDK takes it.
const MIN_REPORT_SECONDS: u64 = 20;
/// Announce again after a failure: doubling from the first wait to the last.
const FIRST_ANNOUNCE_RETRY_MS: u64 = 2_000;
const LAST_ANNOUNCE_RETRY_MS: u64 = 60_000;
/// A viewer may send this many messages at once, and this many a second on average: a
/// viewer asks for one segment at a time, which is far fewer.
const MESSAGE_BURST: f64 = 400.0;
const MESSAGES_PER_SECOND: f64 = 200.0;
/// Most viewers answered whose DataChannel is not open yet: an offer costs its sender
/// nothing, so past this new offers are refused until those connect or fail.
const MAX_CONNECTING: usize = 100;
/// How often the swarm's peers are asked for, to offer to those not connected; the
/// first time soon after the announce.
const REACH_FIRST_MS: u64 = 1_000;
const REACH_MS: u64 = 5_000;
/// Offers made per round, and offers of ours waiting at once: well within what the
/// host lets connections be set up.
const OFFERS_PER_ROUND: usize = 10;
const MAX_OFFERING: usize = 30;
/// An offer of ours not answered and connected within this is withdrawn (the SDK gives
/// a connection 15 s).
const OFFER_MS: u64 = 20_000;
/// Most peer ids sent as exclusions when asking for peers.
const MAX_EXCLUSIONS: usize = 500;

/// What each timer is for.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Timer {
    Stream(StreamTimer),
    /// Announce (again).
    Announce,
    /// Send figures to the tracker.
    Report,
    /// Ask the tracker for the swarm's peers, to offer to those not connected.
    Reach,
    /// STATS to every viewer.
    PeerStats,
    /// Connect to signal relay `n` again.
    Reconnect(usize),
}

/// The seed, as this policy reads it.
#[derive(Debug, Clone)]
struct Seed {
    channel: String,
    /// The tracker API's base URL (`http(s)://host/v1`).
    tracker: String,
    /// Signal relays from the seed, used unless the tracker names its own.
    signals: Vec<String>,
    token: String,
    live: bool,
    max_connections: usize,
}

impl Seed {
    fn read(config: &SeedConfig) -> Result<(Seed, String), String> {
        let manifest = config.manifest_url.clone().ok_or(
            "a SwarmCloud seed needs `url`, the stream's manifest: its channel id does not \
             hold it",
        )?;
        let is = |url: &str, schemes: &[&str]| schemes.iter().any(|s| url.starts_with(s));
        let tracker = config
            .trackers
            .iter()
            .find(|url| is(url, &["http://", "https://"]))
            .cloned()
            .ok_or("no tracker: a SwarmCloud seed needs the tracker API's http(s) URL")?;
        let signals: Vec<String> =
            config.trackers.iter().filter(|url| is(url, &["ws://", "wss://"])).cloned().collect();
        if signals.is_empty() {
            return Err("no signal relay: a SwarmCloud seed needs a ws(s) signal URL".into());
        }
        let setting =
            |key: &str| config.settings.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone());
        let seed = Seed {
            channel: config.channel.trim().to_string(),
            tracker,
            signals,
            token: setting("token").unwrap_or_default(),
            live: config.live,
            max_connections: config.max_connections as usize,
        };
        Ok((seed, manifest))
    }
}

/// The tracker as this instance knows it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Tracker {
    /// Our peer id in the channel, once announced.
    peer_id: Option<String>,
    report_seconds: u64,
    /// The request under way and what it is.
    pending: Option<(RequestId, Call)>,
    /// The request for the swarm's peers under way.
    asking: Option<RequestId>,
    retry_ms: u64,
    /// The signal relays in use (the tracker's, else the seed's), their URLs with our id.
    signal_urls: Vec<String>,
    /// P2P bytes sent since the last report.
    unreported: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum Call {
    Announce,
    Report,
}

/// A viewer connected to us, or being connected.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Viewer {
    /// Its peer id.
    remote: String,
    /// The signal connection its offer came on: the answer goes back the same way.
    via: ConnId,
    open: bool,
    /// METADATA exchanged: it may ask for segments and hears what we get.
    ready: bool,
    allowance: Allowance,
    /// The one segment being sent to it (a viewer asks for one at a time).
    serving: Option<SegmentHandle>,
    /// We offered (it was in the swarm first): we say METADATA first, and when.
    offered: Option<u64>,
}

/// What a snapshot holds.
#[derive(Debug, Serialize, Deserialize)]
struct State {
    ids: Ids,
    timers: Timers<Timer>,
    tracker: Tracker,
    signals: Option<Links>,
    streams: Streams,
    viewers: BTreeMap<PeerId, Viewer>,
}

/// The first bytes of this policy's snapshots: another policy's are not read.
const SNAPSHOT_MAGIC: &[u8; 8] = b"swc-st01";

#[derive(Debug)]
pub struct Instance {
    seed: Seed,
    state: State,
    now_ms: u64,
    wall_ms: u64,
    /// What taking over asks for, done at `started`.
    taking_over: Vec<Command>,
}

impl Instance {
    /// Starts an instance for `config`, taking over from `prior` (an earlier instance's
    /// snapshot) and the host's `state`; `random` is one draw of the host's randomness.
    pub fn init(
        config: &SeedConfig,
        prior: Option<&[u8]>,
        host: &HostState,
        random: u64,
    ) -> Result<Instance, String> {
        let (seed, manifest) = Seed::read(config)?;
        let saved = prior
            .and_then(|bytes| bytes.strip_prefix(SNAPSHOT_MAGIC))
            .and_then(|body| postcard::from_bytes::<State>(body).ok());
        let mut taking_over = Vec::new();
        let state = match saved {
            Some(mut state) => {
                state.ids = Ids::resume(Some(&state.ids), host, random);
                let lost = state.timers.resume(host);
                let reconnect: Vec<usize> = lost
                    .iter()
                    .filter_map(|t| if let Timer::Reconnect(n) = t { Some(*n) } else { None })
                    .collect();
                let urls = state.tracker.signal_urls.clone();
                state.signals = state.signals.take().map(|links| {
                    Links::resume(Some(links), &urls, host, &reconnect, &mut taking_over)
                });
                if state.signals.is_none() {
                    taking_over.extend(host.trackers.iter().map(|t| Command::TrackerClose(t.conn)));
                }
                // An HTTP request the host lost (or a timer) is made again.
                if let Some((request, _)) = state.tracker.pending
                    && !host.requests.contains(&request)
                {
                    state.tracker.pending = None;
                }
                if state.tracker.asking.is_some_and(|r| !host.requests.contains(&r)) {
                    state.tracker.asking = None;
                }
                for timer in &lost {
                    match timer {
                        Timer::Announce => state.tracker.peer_id = None,
                        Timer::Report | Timer::PeerStats | Timer::Reach => {}
                        Timer::Stream(_) | Timer::Reconnect(_) => {}
                    }
                }
                let stream_timers: Vec<StreamTimer> = lost
                    .iter()
                    .filter_map(|t| if let Timer::Stream(s) = t { Some(*s) } else { None })
                    .collect();
                // Viewers the host no longer has are gone; those it has that we do not
                // know (connected after the snapshot) are closed, and connect again.
                state.viewers.retain(|peer, _| host.peers.iter().any(|p| p.peer == *peer));
                for viewer in state.viewers.values_mut() {
                    viewer.serving = None;
                }
                for peer in &host.peers {
                    match state.viewers.get_mut(&peer.peer) {
                        Some(viewer) => {
                            viewer.open = peer.open;
                            viewer.serving = peer.serving.first().copied();
                        }
                        None => taking_over.push(close(peer.peer, "taken over: connect again")),
                    }
                }
                let State { ids, timers, streams, .. } = &mut state;
                let mut changes = Vec::new();
                let mut lend = Lend {
                    ids,
                    timers,
                    name: Timer::Stream,
                    now_ms: 0,
                    out: &mut taking_over,
                    changes: &mut changes,
                };
                streams.resume(host, &stream_timers, &mut lend);
                state
            }
            None => {
                // Another policy's (or no) state: everything it had is let go.
                taking_over.extend(host.trackers.iter().map(|t| Command::TrackerClose(t.conn)));
                taking_over.extend(
                    host.peers.iter().map(|p| close(p.peer, "taken over without its state")),
                );
                taking_over.extend(host.segments.iter().map(|s| Command::Evict(s.handle)));
                taking_over.extend(host.fetches.iter().map(|f| Command::FetchCancel(*f)));
                State {
                    ids: Ids::resume(None, host, random),
                    timers: Timers::new(),
                    tracker: Tracker::default(),
                    signals: None,
                    streams: Streams::new(manifest),
                    viewers: BTreeMap::new(),
                }
            }
        };
        Ok(Instance { seed, state, now_ms: 0, wall_ms: 0, taking_over })
    }

    pub fn snapshot(&self) -> Vec<u8> {
        // Nothing this policy keeps fails to encode; if it did, an empty snapshot would
        // start the next instance afresh rather than wrongly.
        postcard::to_extend(&self.state, SNAPSHOT_MAGIC.to_vec()).unwrap_or_default()
    }

    /// Everything that happened since the last call, at `now_ms` (the host's monotonic
    /// clock) and `wall_ms` (Unix milliseconds); returns what to do.
    pub fn handle(&mut self, events: Vec<Event>, now_ms: u64, wall_ms: u64) -> Vec<Command> {
        self.now_ms = now_ms;
        self.wall_ms = wall_ms;
        let mut out = Vec::new();
        let mut changes = Vec::new();
        for event in events {
            self.on_event(event, &mut out, &mut changes);
        }
        self.tell_viewers(&changes, &mut out);
        out
    }

    fn lend<'a>(
        state: &'a mut State,
        now_ms: u64,
        out: &'a mut Vec<Command>,
        changes: &'a mut Vec<Change>,
    ) -> (&'a mut Streams, Lend<'a, Timer>) {
        let State { ids, timers, streams, .. } = state;
        (streams, Lend { ids, timers, name: Timer::Stream, now_ms, out, changes })
    }

    fn on_event(&mut self, event: Event, out: &mut Vec<Command>, changes: &mut Vec<Change>) {
        let now_ms = self.now_ms;
        match event {
            Event::Started => {
                out.append(&mut self.taking_over);
                let (streams, mut lend) = Self::lend(&mut self.state, now_ms, out, changes);
                streams.start(&mut lend);
                if self.state.tracker.peer_id.is_none() && self.state.tracker.pending.is_none() {
                    self.announce(out);
                }
                if !self.state.timers.pending(&Timer::PeerStats) {
                    self.set(Timer::PeerStats, PEER_STATS_MS, out);
                }
                if self.state.tracker.peer_id.is_some() && !self.state.timers.pending(&Timer::Reach)
                {
                    self.set(Timer::Reach, REACH_FIRST_MS, out);
                }
            }
            Event::Stopping => self.stop(out),
            Event::HttpResponse(response) => {
                self.on_reply(response.request, Ok((response.status, &response.body)), out)
            }
            Event::HttpFailed(failed) => {
                self.on_reply(failed.request, Err(failed.reason.as_str()), out)
            }
            Event::TrackerConnected(conn) => {
                if let Some(links) = &mut self.state.signals {
                    links.connected(conn);
                }
            }
            Event::TrackerClosed(closed) => {
                let State { ids, timers, signals, .. } = &mut self.state;
                if let Some(links) = signals {
                    links.closed(closed.conn, &closed.reason, (ids, timers), Timer::Reconnect, out);
                }
            }
            Event::TrackerText(text) => self.on_signal(text.conn, &text.text, out),
            Event::PeerAnswerReady(ready) | Event::PeerOfferReady(ready) => {
                let Some(viewer) = self.state.viewers.get(&ready.peer) else { return };
                let text = match viewer.offered {
                    Some(_) => Outgoing::offer(&viewer.remote, &ready.sdp).encode(),
                    None => Outgoing::answer(&viewer.remote, &ready.sdp).encode(),
                };
                match self.signal_conn(viewer.via) {
                    Some(conn) => out.push(Command::TrackerSend(TrackerSend { conn, text })),
                    None => {
                        self.state.viewers.remove(&ready.peer);
                        out.push(close(ready.peer, "no signal relay to answer through"));
                    }
                }
            }
            Event::PeerChannelOpen(peer) => {
                if let Some(viewer) = self.state.viewers.get_mut(&peer) {
                    viewer.open = true;
                    // A viewer we offered to waits for our METADATA before saying its own.
                    if viewer.offered.is_some() {
                        let ours = Message::Metadata(self.metadata());
                        send(peer, &ours, out);
                    }
                }
            }
            Event::PeerMessage(message) => {
                self.on_peer_message(message.peer, &message.data, out, changes)
            }
            Event::PeerClosed(closed) => {
                self.state.viewers.remove(&closed.peer);
            }
            Event::SegmentSent(sent) => {
                self.state.tracker.unreported += sent.bytes;
                if let Some(viewer) = self.state.viewers.get_mut(&sent.peer)
                    && viewer.serving == Some(sent.handle)
                {
                    viewer.serving = None;
                }
            }
            Event::TextFetched(fetched) => {
                let (streams, mut lend) = Self::lend(&mut self.state, now_ms, out, changes);
                streams.on_text(fetched.fetch, &fetched.url, &fetched.text, &mut lend);
            }
            Event::SegmentStored(stored) => {
                let (streams, mut lend) = Self::lend(&mut self.state, now_ms, out, changes);
                streams.on_stored(stored.fetch, &stored.segment, &mut lend);
            }
            Event::FetchFailed(failed) => {
                let (streams, mut lend) = Self::lend(&mut self.state, now_ms, out, changes);
                streams.on_failed(failed.fetch, &mut lend);
            }
            Event::SegmentEvicted(handle) => {
                let (streams, mut lend) = Self::lend(&mut self.state, now_ms, out, changes);
                streams.on_evicted(handle, &mut lend);
            }
            Event::TimerFired(timer) => match self.state.timers.fired(timer) {
                Some(Timer::Stream(timer)) => {
                    let (streams, mut lend) = Self::lend(&mut self.state, now_ms, out, changes);
                    streams.on_timer(timer, &mut lend);
                }
                Some(Timer::Announce) => self.announce(out),
                Some(Timer::Report) => self.report(false, out),
                Some(Timer::Reach) => self.reach(out),
                Some(Timer::PeerStats) => {
                    let stats = Message::Stats { total_conns: Some(self.connected() as u32) };
                    for peer in self.ready_viewers() {
                        send(peer, &stats, out);
                    }
                    self.set(Timer::PeerStats, PEER_STATS_MS, out);
                }
                Some(Timer::Reconnect(index)) => {
                    let State { ids, signals, .. } = &mut self.state;
                    if let Some(links) = signals {
                        links.retry(index, ids, out);
                    }
                }
                None => {}
            },
            Event::PeerBufferedLow(_) => {}
        }
    }

    fn set(&mut self, timer: Timer, after_ms: u64, out: &mut Vec<Command>) {
        let State { ids, timers, .. } = &mut self.state;
        out.push(timers.set(ids, timer, after_ms));
    }

    fn request(&mut self, call: Call, url: String, body: String, out: &mut Vec<Command>) {
        let request = self.state.ids.fresh();
        self.state.tracker.pending = Some((request, call));
        out.push(Command::HttpRequest(HttpRequest {
            request,
            method: "POST".into(),
            url,
            // As the SDK sends it: JSON as plain text, a CORS simple request.
            headers: vec![("content-type".into(), "text/plain;charset=UTF-8".into())],
            body: body.into_bytes(),
        }));
    }

    fn announce(&mut self, out: &mut Vec<Command>) {
        let announce =
            Announce::new(&self.seed.channel, self.wall_ms / 1000, SDK_VERSION, self.seed.live);
        let body = serde_json::to_string(&announce).unwrap_or_default();
        self.request(Call::Announce, tracker::announce_url(&self.seed.tracker), body, out);
    }

    fn report(&mut self, leaving: bool, out: &mut Vec<Command>) {
        let Some(peer_id) = self.state.tracker.peer_id.clone() else { return };
        let url =
            tracker::node_url(&self.seed.tracker, &self.seed.channel, &peer_id, NodeCall::Stats);
        let share_kb = std::mem::take(&mut self.state.tracker.unreported) / 1024;
        let mut body: serde_json::Value =
            serde_json::from_str(&tracker::stats_body(self.connected() as u32 + 1, share_kb))
                .unwrap_or_default();
        if leaving {
            body["off"] = serde_json::Value::Bool(true);
        }
        self.request(Call::Report, url, body.to_string(), out);
    }

    /// A round of reaching viewers who were there first: offers of ours that were not
    /// answered in time are withdrawn, and the tracker is asked for the swarm's peers.
    fn reach(&mut self, out: &mut Vec<Command>) {
        self.set(Timer::Reach, REACH_MS, out);
        let now_ms = self.now_ms;
        let stale: Vec<PeerId> = self
            .state
            .viewers
            .iter()
            .filter(|(_, v)| !v.open && v.offered.is_some_and(|at| now_ms >= at + OFFER_MS))
            .map(|(peer, _)| *peer)
            .collect();
        for peer in stale {
            self.state.viewers.remove(&peer);
            out.push(close(peer, "our offer was not answered in time"));
        }
        let Some(peer_id) = self.state.tracker.peer_id.clone() else { return };
        let relays_open = self.state.signals.as_ref().is_some_and(|l| l.open().next().is_some());
        if self.state.tracker.asking.is_some() || !relays_open || self.room_to_offer() == 0 {
            return;
        }
        let mut exclusions: Vec<&str> =
            self.state.viewers.values().map(|v| v.remote.as_str()).collect();
        exclusions.truncate(MAX_EXCLUSIONS);
        let body = serde_json::json!({ "exclusions": exclusions }).to_string();
        let url =
            tracker::node_url(&self.seed.tracker, &self.seed.channel, &peer_id, NodeCall::Peers);
        let request = self.state.ids.fresh();
        self.state.tracker.asking = Some(request);
        out.push(Command::HttpRequest(HttpRequest {
            request,
            method: "POST".into(),
            url,
            headers: vec![("content-type".into(), "text/plain;charset=UTF-8".into())],
            body: body.into_bytes(),
        }));
    }

    /// How many more offers of ours may wait now.
    fn room_to_offer(&self) -> usize {
        let offering =
            self.state.viewers.values().filter(|v| !v.open && v.offered.is_some()).count();
        let connecting = self.state.viewers.values().filter(|v| !v.open).count();
        let room = self.seed.max_connections.saturating_sub(self.state.viewers.len());
        room.min(MAX_OFFERING.saturating_sub(offering))
            .min(MAX_CONNECTING.saturating_sub(connecting))
            .min(OFFERS_PER_ROUND)
    }

    /// The swarm's peers: offers to those we are not connected to.
    fn offer_to(&mut self, peers: Vec<tracker::PeerRef>, out: &mut Vec<Command>) {
        let Some(via) = self.state.signals.as_ref().and_then(|l| l.open().next()) else { return };
        let ours = self.state.tracker.peer_id.clone().unwrap_or_default();
        let mut room = self.room_to_offer();
        for remote in peers.into_iter().map(|p| p.id) {
            let known = self.state.viewers.values().any(|v| v.remote == remote);
            if room == 0 || known || remote == ours || remote.is_empty() {
                continue;
            }
            room -= 1;
            let peer = self.state.ids.fresh();
            self.state.viewers.insert(
                peer,
                Viewer {
                    remote,
                    via,
                    open: false,
                    ready: false,
                    allowance: Allowance::full(MESSAGE_BURST, self.now_ms),
                    serving: None,
                    offered: Some(self.now_ms),
                },
            );
            out.push(Command::PeerOffer(peer));
        }
    }

    fn on_reply(
        &mut self,
        request: RequestId,
        reply: Result<(u16, &[u8]), &str>,
        out: &mut Vec<Command>,
    ) {
        if self.state.tracker.asking == Some(request) {
            self.state.tracker.asking = None;
            // A failed or refused request for peers waits for the next round.
            if let Ok((200..=299, body)) = reply
                && let Ok(peers) = tracker::parse::<tracker::Peers>(body)
            {
                self.offer_to(peers.peers, out);
            }
            return;
        }
        let Some((pending, call)) = self.state.tracker.pending else { return };
        if pending != request {
            return;
        }
        self.state.tracker.pending = None;
        let parsed = |body: &[u8], status: u16| -> Result<Option<Announced>, ReplyError> {
            if !(200..300).contains(&status) {
                return Err(ReplyError::Refused { code: i64::from(status), msg: "HTTP".into() });
            }
            match call {
                Call::Announce => tracker::parse::<Announced>(body).map(Some),
                // An empty reply to figures is fine.
                Call::Report if body.is_empty() => Ok(None),
                Call::Report => tracker::parse::<serde_json::Value>(body).map(|_| None),
            }
        };
        let result = match reply {
            Ok((status, body)) => parsed(body, status),
            Err(reason) => Err(ReplyError::Malformed(reason.to_string())),
        };
        match (call, result) {
            (Call::Announce, Ok(Some(announced))) => self.announced(announced, out),
            (Call::Report, Ok(_)) => {
                let seconds = self.state.tracker.report_seconds;
                self.set(Timer::Report, seconds * 1000, out);
            }
            (call, Err(error)) => {
                log(&format!("the tracker did not take our {call:?}: {error:?}"));
                if call == Call::Report {
                    // The tracker may have forgotten us: we announce again.
                    self.state.tracker.peer_id = None;
                }
                let retry = self.state.tracker.retry_ms.max(FIRST_ANNOUNCE_RETRY_MS);
                self.state.tracker.retry_ms = (retry * 2).min(LAST_ANNOUNCE_RETRY_MS);
                self.set(Timer::Announce, retry, out);
            }
            (Call::Announce, Ok(None)) => {}
        }
    }

    fn announced(&mut self, announced: Announced, out: &mut Vec<Command>) {
        let tracker = &mut self.state.tracker;
        tracker.retry_ms = 0;
        tracker.report_seconds = announced.report_interval.max(MIN_REPORT_SECONDS);
        // The tracker's relays, when it names them, replace the seed's (as for viewers).
        let servers: Vec<String> = match &announced.signal {
            Some(main) => {
                [Some(main.clone()), announced.signal2.clone()].into_iter().flatten().collect()
            }
            None => self.seed.signals.clone(),
        };
        let token = announced.token.as_deref();
        let urls: Vec<String> = servers
            .iter()
            .map(|server| crate::signal::connect_url(server, &announced.id, SDK_VERSION, token))
            .collect();
        let same = tracker.peer_id.as_deref() == Some(announced.id.as_str())
            && tracker.signal_urls == urls;
        tracker.peer_id = Some(announced.id);
        if !same {
            if let Some(mut old) = self.state.signals.take() {
                old.stop(out);
            }
            let mut links = Links::new(&urls);
            links.start(&mut self.state.ids, out);
            self.state.signals = Some(links);
            self.state.tracker.signal_urls = urls;
        }
        let seconds = self.state.tracker.report_seconds;
        self.set(Timer::Report, seconds * 1000, out);
        if !self.state.timers.pending(&Timer::Reach) {
            self.set(Timer::Reach, REACH_FIRST_MS, out);
        }
    }

    fn stop(&mut self, out: &mut Vec<Command>) {
        self.report(true, out);
        if let Some(links) = &mut self.state.signals {
            links.stop(out);
        }
    }

    /// The signal connection to answer `via` through: that one while it is open, else
    /// any open one.
    fn signal_conn(&self, via: ConnId) -> Option<ConnId> {
        let links = self.state.signals.as_ref()?;
        let mut open = links.open();
        let all: Vec<ConnId> = open.by_ref().collect();
        all.iter().copied().find(|c| *c == via).or(all.first().copied())
    }

    fn on_signal(&mut self, conn: ConnId, text: &str, out: &mut Vec<Command>) {
        let Some(message) = Incoming::decode(text) else { return };
        match message {
            Incoming::Signal { from, data: Some(SignalData::Offer(sdp)) } => {
                self.on_offer(conn, from, sdp, out)
            }
            Incoming::Signal { from, data: Some(SignalData::Answer(sdp)) } => {
                let offered = self
                    .state
                    .viewers
                    .iter()
                    .find(|(_, v)| v.remote == from && !v.open && v.offered.is_some());
                if let Some((peer, _)) = offered {
                    out.push(Command::PeerAcceptAnswer(PeerAcceptAnswer {
                        peer: *peer,
                        answer: sdp,
                    }));
                }
            }
            // Not found: a viewer we answered left the relay before our answer came.
            Incoming::Signal { from, data: None } | Incoming::Reject { from, .. } => {
                let gone: Vec<PeerId> = self
                    .state
                    .viewers
                    .iter()
                    .filter(|(_, v)| v.remote == from && !v.open)
                    .map(|(peer, _)| *peer)
                    .collect();
                for peer in gone {
                    self.state.viewers.remove(&peer);
                    out.push(close(peer, "the viewer left the signal relay"));
                }
            }
            // An ICE-lite answerer needs no candidates; our connections never renegotiate.
            Incoming::Signal { .. } | Incoming::Version(_) | Incoming::Pong => {}
            Incoming::Close(reason) => log(&format!("a signal relay closes us: {reason}")),
        }
    }

    fn on_offer(&mut self, conn: ConnId, from: String, sdp: String, out: &mut Vec<Command>) {
        // Offers crossed (ours to it, its to us): the SDK answers ours only when its id
        // is the greater, and drops its own; otherwise it keeps its own, and so do we.
        let ours = self.state.tracker.peer_id.as_deref().unwrap_or_default();
        let crossed =
            self.state.viewers.values().any(|v| v.remote == from && !v.open && v.offered.is_some());
        if crossed && from.as_str() > ours {
            return;
        }
        let connecting = self.state.viewers.values().filter(|v| !v.open).count();
        // A viewer offering again (its last connection failed) replaces its old one.
        let earlier: Vec<PeerId> = self
            .state
            .viewers
            .iter()
            .filter(|(_, v)| v.remote == from)
            .map(|(peer, _)| *peer)
            .collect();
        for peer in &earlier {
            self.state.viewers.remove(peer);
            out.push(close(*peer, "the viewer offered again"));
        }
        if self.state.viewers.len() >= self.seed.max_connections || connecting >= MAX_CONNECTING {
            let text = Outgoing::Reject {
                to_peer_id: from,
                reason: format!("peers reach limit {}", self.seed.max_connections),
                fatal: false,
            }
            .encode();
            out.push(Command::TrackerSend(TrackerSend { conn, text }));
            return;
        }
        let peer = self.state.ids.fresh();
        self.state.viewers.insert(
            peer,
            Viewer {
                remote: from,
                via: conn,
                open: false,
                ready: false,
                allowance: Allowance::full(MESSAGE_BURST, self.now_ms),
                serving: None,
                offered: None,
            },
        );
        out.push(Command::PeerAnswer(PeerAnswer { peer, offer: sdp }));
    }

    fn on_peer_message(
        &mut self,
        peer: PeerId,
        data: &[u8],
        out: &mut Vec<Command>,
        changes: &mut Vec<Change>,
    ) {
        let now_ms = self.now_ms;
        let Some(viewer) = self.state.viewers.get_mut(&peer) else { return };
        if !viewer.allowance.take(now_ms, MESSAGES_PER_SECOND, MESSAGE_BURST) {
            self.state.viewers.remove(&peer);
            out.push(close(peer, "sends too many messages"));
            return;
        }
        // Binary messages would be a segment the viewer uploads: we never ask for one.
        if data.first() != Some(&b'{') {
            return;
        }
        let Some(message) = Message::decode(data) else {
            self.state.viewers.remove(&peer);
            out.push(close(peer, "sent a message that is not the protocol's"));
            return;
        };
        match message {
            Message::Metadata(metadata) => {
                if metadata.channel != self.seed.channel {
                    self.state.viewers.remove(&peer);
                    out.push(close(peer, "is a viewer of another channel"));
                    return;
                }
                viewer.ready = true;
                // We said ours first to a viewer we offered to.
                if viewer.offered.is_none() {
                    let ours = Message::Metadata(self.metadata());
                    send(peer, &ours, out);
                }
            }
            Message::Request(request) => self.on_request(peer, request, out, changes),
            Message::PieceCancel(_) => {
                if let Some(handle) = viewer.serving.take() {
                    out.push(Command::CancelServe(CancelServe { peer, handle }));
                    send(peer, &Message::PieceAbort { reason: Some("cancelled".into()) }, out);
                }
            }
            Message::Have(have) => {
                // Where a VOD viewer is: what it will ask for next is fetched.
                if let Ok(level) = usize::try_from(have.level) {
                    let (streams, mut lend) = Self::lend(&mut self.state, now_ms, out, changes);
                    streams.demand(level, have.sn.saturating_add(1), &mut lend);
                }
            }
            Message::GetPeers => send(peer, &Message::Peers { peers: Vec::new() }, out),
            Message::Close { .. } => {
                self.state.viewers.remove(&peer);
                out.push(close(peer, "the viewer closed"));
            }
            Message::Stats { .. }
            | Message::PieceAck(_)
            | Message::Lost(_)
            | Message::Piece(_)
            | Message::PieceNotFound(_)
            | Message::PieceAbort { .. }
            | Message::Choke
            | Message::Unchoke
            | Message::Peers { .. }
            | Message::Unknown => {}
        }
    }

    fn on_request(
        &mut self,
        peer: PeerId,
        request: peer::Request,
        out: &mut Vec<Command>,
        changes: &mut Vec<Change>,
    ) {
        let default_id = usize::try_from(request.level)
            .ok()
            .map(|_| peer::segment_id(request.level, request.sn));
        let level = usize::try_from(request.level).ok();
        let held = level.and_then(|level| self.state.streams.get(level, request.sn));
        // A viewer that names segments otherwise (`strictSegmentId`) asks for ids we do
        // not know: not found, rather than the wrong bytes.
        let matches = request.seg_id.is_none() || request.seg_id == default_id;
        let viewer = self.state.viewers.get_mut(&peer);
        let busy = viewer.as_ref().is_none_or(|v| !v.ready || v.serving.is_some());
        match (held, matches, busy, viewer) {
            (Some(held), true, false, Some(viewer)) => {
                viewer.serving = Some(held.handle);
                let seg_id =
                    request.seg_id.unwrap_or_else(|| peer::segment_id(request.level, request.sn));
                send(peer, &peer::piece(request.level, request.sn, seg_id, held.size), out);
                out.push(Command::ServeSegment(ServeSegment {
                    peer,
                    handle: held.handle,
                    offset: 0,
                    message_size: MessageSize::Exactly(FRAME_BYTES),
                    end: None,
                }));
            }
            (held, matches, busy, _) => {
                debug(&format!(
                    "not found: level {} sn {} (held {}, id matches {matches}, busy {busy})",
                    request.level,
                    request.sn,
                    held.is_some()
                ));
                let missing = peer::Segment {
                    sn: request.sn,
                    level: request.level,
                    seg_id: request.seg_id,
                    complete: None,
                };
                send(peer, &Message::PieceNotFound(missing), out);
            }
        }
        if let Some(level) = level {
            let now_ms = self.now_ms;
            let (streams, mut lend) = Self::lend(&mut self.state, now_ms, out, changes);
            streams.demand(level, request.sn, &mut lend);
        }
    }

    fn metadata(&self) -> Metadata {
        let mut field = peer::Field::new();
        for (level, sn) in self.state.streams.held() {
            field.entry(level.to_string()).or_default().push(sn);
        }
        Metadata {
            channel: self.seed.channel.clone(),
            field: Some(field),
            platform: Some("WEB".into()),
            mobile: Some(false),
            version: Some(SDK_VERSION.into()),
            sequential: Some(true),
            peers: None,
            super_peer: Some(true),
            token: (!self.seed.token.is_empty()).then(|| self.seed.token.clone()),
        }
    }

    /// Segments held and dropped, told to every viewer that completed the handshake.
    fn tell_viewers(&self, changes: &[Change], out: &mut Vec<Command>) {
        if changes.is_empty() {
            return;
        }
        let vod = self.state.streams.ended();
        let messages: Vec<String> = changes
            .iter()
            .filter_map(|change| {
                let (level, sn, held) = match *change {
                    Change::Held { level, sn } => (level as i64, sn, true),
                    // Live viewers forget old segments by themselves.
                    Change::Dropped { .. } if !vod => return None,
                    Change::Dropped { level, sn } => (level as i64, sn, false),
                };
                let segment = peer::Segment {
                    sn,
                    level,
                    seg_id: Some(peer::segment_id(level, sn)),
                    complete: held.then_some(true),
                };
                Some(
                    if held { Message::Have(segment) } else { Message::Lost(segment) }
                        .encode_text(),
                )
            })
            .collect();
        for peer in self.ready_viewers() {
            out.extend(
                messages
                    .iter()
                    .map(|text| Command::PeerSendText(PeerSendText { peer, text: text.clone() })),
            );
        }
    }

    fn ready_viewers(&self) -> Vec<PeerId> {
        self.state.viewers.iter().filter(|(_, v)| v.ready).map(|(peer, _)| *peer).collect()
    }

    fn connected(&self) -> usize {
        self.state.viewers.values().filter(|v| v.open).count()
    }
}

/// A protocol message: JSON as a text message (the SDK takes binary ones for segment
/// bytes).
fn send(peer: PeerId, message: &Message, out: &mut Vec<Command>) {
    out.push(Command::PeerSendText(PeerSendText { peer, text: message.encode_text() }));
}

fn close(peer: PeerId, reason: &str) -> Command {
    Command::PeerClose(PeerClose { peer, reason: reason.into() })
}

#[cfg(test)]
mod tests;
