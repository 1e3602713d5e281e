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
use superpeer_guest::continuity::{decode_snapshot, encode_snapshot};
use superpeer_guest::host::{debug, info as log};
use superpeer_guest::links::Links;
use superpeer_guest::{
    Allowance, Command, ConnId, Event, HostState, Ids, PeerClose, PeerId, PeerSendText, RequestId,
    SeedConfig, SegmentHandle, Timers, TrackerSend,
};
use superpeer_segments::{Change, Lend, Numbering, StreamTimer, Streams};

use crate::peer::Message;
use crate::signal::Outgoing;

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

impl Viewer {
    /// A viewer reached through relay connection `via` at `now_ms`, by our offer or by
    /// answering its own.
    fn new(remote: String, via: ConnId, now_ms: u64, we_offered: bool) -> Self {
        Viewer {
            remote,
            via,
            open: false,
            ready: false,
            allowance: Allowance::full(MESSAGE_BURST, now_ms),
            serving: None,
            offered: we_offered.then_some(now_ms),
        }
    }
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
const SNAPSHOT_MAGIC: &[u8; 8] = b"swc-st02";

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
        if superpeer_guest::is_scout(config) {
            // Its tracker counts a channel only for members, and a member is handed to
            // viewers as a peer: measuring would take viewers' connection attempts.
            return Err("the SwarmCloud tracker tells a channel's size only to members: this \
                        policy cannot scout"
                .into());
        }
        let (seed, manifest) = Seed::read(config)?;
        let saved = prior.and_then(|bytes| decode_snapshot::<State>(SNAPSHOT_MAGIC, bytes));
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
                // A lost retry of the announce: announce at `started`. (Other lost
                // timers are set again there.)
                if lost.contains(&Timer::Announce) {
                    state.tracker.peer_id = None;
                }
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
                streams.resume(host, &mut lend);
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
                    streams: Streams::new(Some(manifest), Numbering::MediaSequence),
                    viewers: BTreeMap::new(),
                }
            }
        };
        Ok(Instance { seed, state, now_ms: 0, wall_ms: 0, taking_over })
    }

    pub fn snapshot(&self) -> Vec<u8> {
        encode_snapshot(SNAPSHOT_MAGIC, &self.state)
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

    /// Runs `part` on the streams, lending them this instance's ids and timers.
    fn streams(
        &mut self,
        out: &mut Vec<Command>,
        changes: &mut Vec<Change>,
        part: impl FnOnce(&mut Streams, &mut Lend<'_, Timer>),
    ) {
        let State { ids, timers, streams, .. } = &mut self.state;
        let now_ms = self.now_ms;
        part(streams, &mut Lend { ids, timers, name: Timer::Stream, now_ms, out, changes });
    }

    /// The peers connected, or being connected, to the viewer `remote`.
    fn peers_of<'a>(&'a self, remote: &'a str) -> impl Iterator<Item = (PeerId, &'a Viewer)> {
        self.state.viewers.iter().filter(move |(_, v)| v.remote == remote).map(|(p, v)| (*p, v))
    }

    fn on_event(&mut self, event: Event, out: &mut Vec<Command>, changes: &mut Vec<Change>) {
        match event {
            Event::Started => {
                out.append(&mut self.taking_over);
                self.streams(out, changes, |streams, lend| streams.start(lend));
                if self.state.tracker.peer_id.is_none() && self.state.tracker.pending.is_none() {
                    self.announce(out);
                }
                if !self.state.timers.pending(&Timer::PeerStats) {
                    self.set(Timer::PeerStats, PEER_STATS_MS, out);
                }
                // Timers an earlier instance set and that fired while none heard them.
                if self.state.tracker.peer_id.is_some() {
                    if !self.state.timers.pending(&Timer::Reach) {
                        self.set(Timer::Reach, REACH_FIRST_MS, out);
                    }
                    let reporting = self.state.tracker.pending.is_some()
                        || self.state.timers.pending(&Timer::Report);
                    if !reporting {
                        let seconds = self.state.tracker.report_seconds;
                        self.set(Timer::Report, seconds * 1000, out);
                    }
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
            Event::TextFetched(fetched) => self.streams(out, changes, |streams, lend| {
                streams.on_text(fetched.fetch, &fetched.url, &fetched.text, lend)
            }),
            Event::SegmentStored(stored) => self.streams(out, changes, |streams, lend| {
                streams.on_stored(stored.fetch, &stored.segment, lend)
            }),
            Event::FetchFailed(failed) => self.streams(out, changes, |streams, lend| {
                streams.on_failed(failed.fetch, &failed.reason, lend)
            }),
            Event::SegmentEvicted(handle) => {
                self.streams(out, changes, |streams, lend| streams.on_evicted(handle, lend))
            }
            Event::TimerFired(timer) => match self.state.timers.fired(timer) {
                Some(Timer::Stream(timer)) => {
                    self.streams(out, changes, |streams, lend| streams.on_timer(timer, lend))
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
}

/// A protocol message: JSON as a text message (the SDK takes binary ones for segment
/// bytes).
fn send(peer: PeerId, message: &Message, out: &mut Vec<Command>) {
    out.push(Command::PeerSendText(PeerSendText { peer, text: message.encode() }));
}

fn close(peer: PeerId, reason: &str) -> Command {
    Command::PeerClose(PeerClose { peer, reason: reason.into() })
}

mod announcing;
mod serving;

#[cfg(test)]
mod tests;
