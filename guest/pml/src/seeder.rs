//! What the default policy does for one channel: read the stream's playlists, work out
//! the swarms viewers of every rendition are in (one per generation of p2p-media-loader
//! it serves), announce in each on every open tracker with offers of our own until it
//! reaches the swarm, answer the offers viewers send, and keep the segments viewers will
//! ask for in the host's cache, one copy for all of a rendition's swarms.
//!
//! Pure state machine: events in, commands out, time passed in at each turn and timers
//! the host fires. Randomness (peer ids, offer ids) comes in as a function.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::{Deserialize, Serialize};
use superpeer_guest::{
    CacheTier, Command, ConnId, Event, FetchId, FetchSegment, FetchText, HostState,
    PeerAcceptAnswer, PeerAnswer, PeerClose, PeerId, SegmentHandle, TrackerSend,
};

use crate::announce::{self, AnnounceEvent, TrackerMessage};
use crate::context::{Context, Timer};
use crate::playlist::{self, MediaPlaylist};
use crate::reach::{self, LinkKey, Need, Plan, Reach};
use crate::settings::Settings;
use crate::swarm::{self, Identity, Rendition, StreamKind};
use crate::wire::{self, Joiner, PeerCommand};

/// How often the seeder's heartbeat ([`Timer::Reach`]) comes.
const REACH_TICK_MS: u64 = reach::FAST_ROUND_GAP_MS;
/// Re-announce interval until a tracker says otherwise (p2p-media-loader's default).
const DEFAULT_ANNOUNCE_SECONDS: u64 = 30;
/// Live segments kept: the playlist's window, at most this many.
const LIVE_WINDOW: usize = 12;
/// VOD segments fetched ahead: from the start, and from where viewers ask.
const VOD_PREFETCH: usize = 10;
/// Most VOD segments held in memory (until the disk cache holds them).
const VOD_HELD: usize = 64;
/// How many fetches may be in flight before asking the disk cache about more VOD
/// segments waits: well under the host's limit, so a probe is never turned away.
const PROBE_BUDGET: usize = 64;
/// Wait before fetching a playlist again after a failure.
const RETRY_MS: u64 = 2_000;
/// A segment whose fetch failed is not fetched again for this long, doubled after each
/// further failure up to [`SEGMENT_RETRY_MAX_MS`]: an origin that fails a segment (or
/// sends one that never ends) is not asked for it at every reload.
const SEGMENT_RETRY_MS: u64 = 1_000;
const SEGMENT_RETRY_MAX_MS: u64 = 30_000;
/// The shortest wait between reloads of a live playlist, however short its segments.
const MIN_RELOAD_MS: u64 = 250;
/// The longest announce text: the host's limit on a tracker text (64 KiB) with room to
/// spare. Offers that would not fit are withdrawn.
const MAX_ANNOUNCE_BYTES: usize = 60 << 10;
/// A viewer may send this many messages at once, and this many a second on average: a
/// viewer asks for one segment at a time and announces what it loads, which is far
/// fewer; a flood of messages closes its connection.
const MESSAGE_BURST: f64 = 400.0;
const MESSAGES_PER_SECOND: f64 = 200.0;
/// The most bytes all viewers' commands arriving in chunks may hold at once (each is at
/// most [`wire::MAX_COMMAND`]): a small share of the instance's memory.
const MAX_JOINING_BYTES: usize = 16 << 20;
/// Offer ids: 20 characters, as viewers' are.
const OFFER_ID_LENGTH: usize = 20;
/// The longest SDP answered: the host's default limit on a command's text.
const MAX_SDP_BYTES: usize = 64 << 10;
/// How long a viewer's offer may wait for the host's answer before its place is given
/// back (the host answers at once unless it refused the command).
const ANSWERING_MS: u64 = 10_000;
/// Viewers answered or accepted whose DataChannel is not open yet, at most: an offer
/// costs its sender nothing, so a tracker (or whoever feeds it) can send offers that
/// never connect; past this the oldest gives way, so a real viewer's answer always
/// finds room and connects long before a flood could push it out.
pub(crate) const MAX_PENDING_PEERS: usize = 100;
/// Offers a tracker connection may bring per second, and at once: more are dropped.
const OFFER_RATE: f64 = 20.0;
const OFFER_BURST: f64 = 40.0;

/// Where a segment comes from: its URL and byte range.
type Source = (String, Option<(u64, u64)>);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Stored {
    Fetching(FetchId),
    /// Asking the host whether its disk cache has it (never announced).
    Probing(FetchId),
    Ready {
        handle: SegmentHandle,
        size: u64,
        on_disk: bool,
    },
}

/// One rendition: its playlist and segments, shared by every swarm it is seeded in.
#[derive(Debug, Serialize, Deserialize)]
struct Stream {
    playlist_url: String,
    playlist_fetch: Option<FetchId>,
    /// Segments by the id viewers use for them (the same in every generation).
    segments: BTreeMap<i64, Stored>,
    /// Where each segment comes from, by id. Not in the snapshot (a VOD playlist's may be
    /// large): a new instance reads the playlist again.
    #[serde(skip)]
    sources: BTreeMap<i64, Source>,
    target_duration_ms: u64,
    /// The sequence number of the newest segment the live playlist listed so far.
    newest: Option<u64>,
    ended: bool,
    /// The set of segments changed since viewers were last told.
    changed: bool,
    /// When each VOD segment was last asked for (by the seeder's request count).
    last_use: BTreeMap<i64, u64>,
    /// VOD: the next segment id to ask the disk cache about, until all have been.
    probe_from: Option<i64>,
    probes_in_flight: usize,
    /// Segments whose last fetch failed: how many times in a row, and not before when
    /// to try again.
    #[serde(default)]
    failed: BTreeMap<i64, (u32, u64)>,
}

/// A rendition's swarm as one generation of viewers names it.
#[derive(Debug, Serialize, Deserialize)]
struct Swarm {
    stream: usize,
    identity: Identity,
    info_hash: String,
    peer_id: String,
    announce_seconds: u64,
}

/// A viewer connected to us, or being connected.
#[derive(Debug, Serialize, Deserialize)]
struct Viewer {
    swarm: usize,
    /// The viewer's peer id in that swarm.
    remote: String,
    open: bool,
    /// A command arriving in chunks (not carried to the next instance: the viewer's
    /// request times out and is asked again).
    #[serde(skip)]
    joiner: Joiner,
    /// Messages it may still send at once (see [`MESSAGE_BURST`]), and when that was
    /// last counted.
    allowance: f64,
    counted_ms: u64,
    /// The one request being served (a viewer has one in flight at a time).
    serving: Option<Serving>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
struct Serving {
    id: i64,
    request: i64,
    handle: SegmentHandle,
}

impl Viewer {
    fn new(swarm: usize, remote: String, now_ms: u64) -> Self {
        Viewer {
            swarm,
            remote,
            open: false,
            joiner: Joiner::default(),
            allowance: MESSAGE_BURST,
            counted_ms: now_ms,
            serving: None,
        }
    }

    /// Counts one message against the viewer's allowance; false once it sends faster
    /// than any viewer needs to.
    fn allowed(&mut self, now_ms: u64) -> bool {
        let elapsed = now_ms.saturating_sub(self.counted_ms) as f64 / 1000.0;
        self.counted_ms = now_ms;
        self.allowance = (self.allowance + elapsed * MESSAGES_PER_SECOND).min(MESSAGE_BURST) - 1.0;
        self.allowance >= 0.0
    }
}

/// Sends a peer command, split into DataChannel messages as needed.
fn send(peer: PeerId, command: &PeerCommand, out: &mut Vec<Command>) {
    match wire::encode(command, wire::MAX_MESSAGE) {
        Ok(messages) => out.extend(
            messages
                .into_iter()
                .map(|data| Command::PeerSend(superpeer_guest::PeerSend { peer, data })),
        ),
        Err(error) => log(&format!("cannot encode {command:?}: {error}")),
    }
}

/// What a stream has, as viewers see it: stored segments are loaded; those being
/// fetched are "loading over HTTP".
fn announcement(stream: &Stream) -> PeerCommand {
    let (mut loaded, mut loading) = (Vec::new(), Vec::new());
    for (id, stored) in &stream.segments {
        match stored {
            Stored::Ready { .. } => loaded.push(*id),
            Stored::Fetching(_) => loading.push(*id),
            Stored::Probing(_) => {}
        }
    }
    PeerCommand::SegmentsAnnouncement { loaded, loading }
}

/// A viewer's offer being answered: where to send the answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct PendingAnswer {
    conn: ConnId,
    swarm: usize,
    remote_peer_id: String,
    offer_id: String,
    since_ms: u64,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Seeder {
    /// Ids and timers: every part of the policy takes its ids here.
    pub(crate) ctx: Context,
    swarm_id: String,
    manifest_url: Option<String>,
    manifest_fetch: Option<FetchId>,
    identities: Vec<Identity>,
    streams: Vec<Stream>,
    swarms: Vec<Swarm>,
    fetches: HashMap<FetchId, Fetch>,
    answering: HashMap<PeerId, PendingAnswer>,
    peers: HashMap<PeerId, Viewer>,
    /// Every viewer connected or being connected, by swarm and peer id: never two
    /// connections to one viewer (it would destroy the second anyway).
    remotes: HashSet<(usize, String)>,
    max_peers: usize,
    reach: Reach,
    /// The time of the current turn (the host's monotonic clock).
    now_ms: u64,
    /// Segments the host holds that no stream claims yet (an earlier instance fetched
    /// them), by source: adopted instead of fetched again.
    orphans: HashMap<Source, Stored>,
    /// Each tracker connection's offer allowance and when it was last counted (a new
    /// instance starts every tracker with a full one).
    #[serde(skip)]
    offer_allowance: HashMap<ConnId, (f64, u64)>,
    /// Requests seen, the clock of `last_use`.
    uses: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
enum Fetch {
    Manifest,
    Playlist(usize),
    Segment(usize, i64),
    /// A `disk-if-cached` fetch.
    Probe(usize, i64),
}

/// A rendition as a master playlist lists it: its attributes, its position in the
/// player's list of its kind, and its playlist.
struct Listed {
    kind: StreamKind,
    rendition: Rendition,
    position: usize,
    url: String,
}

impl Seeder {
    pub(crate) fn new(
        swarm_id: String,
        manifest_url: Option<String>,
        max_peers: usize,
        settings: Settings,
    ) -> Self {
        Seeder {
            ctx: Context::default(),
            swarm_id,
            manifest_url,
            manifest_fetch: None,
            identities: settings.identities,
            streams: Vec::new(),
            swarms: Vec::new(),
            fetches: HashMap::new(),
            answering: HashMap::new(),
            peers: HashMap::new(),
            remotes: HashSet::new(),
            max_peers,
            reach: Reach::new(settings.offers),
            now_ms: 0,
            orphans: HashMap::new(),
            offer_allowance: HashMap::new(),
            uses: 0,
        }
    }

    /// Takes note of segments the host already holds (from `host-state`).
    pub(crate) fn adopt(&mut self, segments: &[superpeer_guest::SegmentInfo]) {
        for s in segments {
            let range = s.range.map(|r| (r.start, r.end));
            let on_disk = s.tier != CacheTier::Memory;
            self.orphans.insert(
                (s.url.clone(), range),
                Stored::Ready { handle: s.handle, size: s.size, on_disk },
            );
        }
    }

    /// An earlier instance's state (from its snapshot) under this instance's seed: the
    /// settings and limits come from `fresh`, made from the seed as it is now.
    pub(crate) fn with_seed_of(mut self, fresh: Seeder) -> Seeder {
        self.swarm_id = fresh.swarm_id;
        self.manifest_url = fresh.manifest_url;
        self.identities = fresh.identities;
        self.max_peers = fresh.max_peers;
        self.reach.set_limits(fresh.reach.limits().clone());
        self
    }

    /// Squares an earlier instance's state (its last snapshot) with what the host has
    /// now: viewers, answers, offers, fetches and segments that ended while no instance
    /// heard are forgotten; viewers whose channel opened meanwhile hear what we have;
    /// peers the snapshot does not know (connected after it was taken) are closed, so
    /// they reconnect at once instead of waiting for answers that never come; timers
    /// that fired unheard (`lost`) are set again, and every playlist is read again (the
    /// snapshot does not keep segment sources). What to do goes to `out`.
    pub(crate) fn reconcile(
        &mut self,
        state: &HostState,
        lost: &[Timer],
        live_trackers: &[ConnId],
        out: &mut Vec<Command>,
    ) {
        let host_peers: HashMap<PeerId, &superpeer_guest::PeerState> =
            state.peers.iter().map(|p| (p.peer, p)).collect();
        self.peers.retain(|peer, _| host_peers.contains_key(peer));
        self.answering.retain(|peer, _| host_peers.contains_key(peer));
        self.reach.retain_offers(|peer| host_peers.contains_key(&peer));
        // Answered and connected while no instance heard: a viewer of the swarm the
        // answer went to.
        let connected: Vec<PeerId> =
            self.answering.keys().filter(|p| host_peers[*p].open).copied().collect();
        for peer in connected {
            self.promote(peer);
        }
        // An offer of ours answered meanwhile: by whom, the snapshot cannot say.
        let answered: Vec<PeerId> = state
            .peers
            .iter()
            .filter(|p| p.open && self.reach.is_offer(p.peer))
            .map(|p| p.peer)
            .collect();
        for peer in answered {
            self.reach.forget(peer);
            out.push(close(peer, "taken over without its state: connect again"));
        }
        let gone: Vec<ConnId> =
            self.reach.connections().filter(|c| !live_trackers.contains(c)).collect();
        for conn in gone {
            out.extend(
                self.reach
                    .tracker_closed(conn)
                    .into_iter()
                    .map(|p| close(p, "its tracker connection closed")),
            );
        }
        self.answering.retain(|_, a| live_trackers.contains(&a.conn));
        let known = |peer: &PeerId| {
            self.peers.contains_key(peer)
                || self.answering.contains_key(peer)
                || self.reach.is_offer(*peer)
        };
        let strangers: Vec<PeerId> =
            state.peers.iter().map(|p| p.peer).filter(|p| !known(p)).collect();
        for peer in strangers {
            out.push(close(peer, "taken over without its state: connect again"));
        }
        self.remotes = self
            .peers
            .values()
            .map(|v| (v.swarm, v.remote.clone()))
            .chain(self.answering.values().map(|a| (a.swarm, a.remote_peer_id.clone())))
            .collect();
        for (peer, viewer) in &mut self.peers {
            let host = host_peers[peer];
            if let Some(serving) = viewer.serving
                && !host.serving.contains(&serving.handle)
            {
                viewer.serving = None;
            }
            if host.open && !viewer.open {
                viewer.open = true;
                let stream = &self.streams[self.swarms[viewer.swarm].stream];
                send(*peer, &announcement(stream), out);
            }
        }

        let live_fetches: HashSet<FetchId> = state.fetches.iter().copied().collect();
        let ended: Vec<(FetchId, Fetch)> = self
            .fetches
            .iter()
            .filter(|(fetch, _)| !live_fetches.contains(fetch))
            .map(|(fetch, what)| (*fetch, *what))
            .collect();
        for (fetch, what) in ended {
            self.fetches.remove(&fetch);
            match what {
                Fetch::Manifest => self.manifest_fetch = None,
                Fetch::Playlist(index) => self.streams[index].playlist_fetch = None,
                Fetch::Segment(index, id) | Fetch::Probe(index, id) => {
                    let stream = &mut self.streams[index];
                    if let Some(Stored::Probing(_)) = stream.segments.get(&id) {
                        stream.probes_in_flight -= 1;
                    }
                    if matches!(stream.segments.get(&id), Some(Stored::Fetching(f) | Stored::Probing(f)) if *f == fetch)
                    {
                        stream.segments.remove(&id);
                        stream.changed = true;
                    }
                }
            }
        }

        let held: HashSet<SegmentHandle> = state.segments.iter().map(|s| s.handle).collect();
        for stream in &mut self.streams {
            let before = stream.segments.len();
            stream.segments.retain(
                |_, s| !matches!(s, Stored::Ready { handle, .. } if !held.contains(handle)),
            );
            stream.changed |= stream.segments.len() != before;
        }
        self.orphans
            .retain(|_, s| matches!(s, Stored::Ready { handle, .. } if held.contains(handle)));
        let claimed: HashSet<SegmentHandle> = self
            .streams
            .iter()
            .flat_map(|s| s.segments.values())
            .chain(self.orphans.values())
            .filter_map(|s| match s {
                Stored::Ready { handle, .. } => Some(*handle),
                _ => None,
            })
            .collect();
        let unclaimed: Vec<superpeer_guest::SegmentInfo> =
            state.segments.iter().filter(|s| !claimed.contains(&s.handle)).cloned().collect();
        self.adopt(&unclaimed);

        for key in lost {
            match key {
                Timer::Manifest => out.push(self.set_timer(Timer::Manifest, 0)),
                Timer::Reach | Timer::Reload(_) | Timer::Reconnect(_) => {}
            }
        }
        // Every playlist again: the sources of VOD segments, and any reload that was due.
        for index in 0..self.streams.len() {
            self.reload(index, out);
        }
    }

    /// A new turn: everything handled until the next happens at `now_ms`.
    pub(crate) fn begin_turn(&mut self, now_ms: u64) {
        self.now_ms = now_ms;
    }

    fn id(&mut self) -> u64 {
        self.ctx.ids.fresh()
    }

    fn set_timer(&mut self, key: Timer, after_ms: u64) -> Command {
        self.ctx.timers.set(&mut self.ctx.ids, key, after_ms)
    }

    fn fetch_text(&mut self, url: String, what: Fetch, out: &mut Vec<Command>) -> FetchId {
        let fetch = self.id();
        self.fetches.insert(fetch, what);
        out.push(Command::FetchText(FetchText { fetch, url }));
        fetch
    }

    /// The first thing to do: read the manifest, and start the heartbeat.
    pub(crate) fn start(&mut self, out: &mut Vec<Command>) {
        out.push(self.set_timer(Timer::Reach, REACH_TICK_MS));
        self.fetch_manifest(out);
    }

    fn fetch_manifest(&mut self, out: &mut Vec<Command>) {
        if self.manifest_fetch.is_none()
            && self.streams.is_empty()
            && let Some(url) = self.manifest_url.clone()
        {
            self.manifest_fetch = Some(self.fetch_text(url, Fetch::Manifest, out));
        }
    }

    /// A tracker connection opened: every swarm announces on it, with offers.
    pub(crate) fn tracker_open(
        &mut self,
        conn: ConnId,
        url: &str,
        random: &mut dyn FnMut() -> u64,
        out: &mut Vec<Command>,
    ) {
        self.reach.tracker_open(conn, url);
        for swarm in 0..self.swarms.len() {
            self.plan((swarm, conn), random, out);
        }
    }

    /// A tracker connection an earlier instance opened: its swarms announce on it at
    /// the next heartbeat.
    pub(crate) fn tracker_adopted(&mut self, conn: ConnId, url: &str) {
        self.reach.tracker_open(conn, url);
    }

    /// Says goodbye in every swarm on every open tracker connection, so trackers stop
    /// handing out a peer that is gone.
    pub(crate) fn stop(&self, open_trackers: &[ConnId], out: &mut Vec<Command>) {
        for conn in open_trackers {
            for swarm in &self.swarms {
                let text = announce::announce(
                    &swarm.info_hash,
                    &swarm.peer_id,
                    Some(AnnounceEvent::Stopped),
                    &[],
                );
                out.push(Command::TrackerSend(TrackerSend { conn: *conn, text }));
            }
        }
    }

    pub(crate) fn handle(
        &mut self,
        event: &Event,
        open_trackers: &[ConnId],
        random: &mut dyn FnMut() -> u64,
        out: &mut Vec<Command>,
    ) {
        match event {
            Event::TextFetched(fetched) => match self.fetches.remove(&fetched.fetch) {
                Some(Fetch::Manifest) => {
                    self.manifest_fetch = None;
                    self.on_manifest(&fetched.url, &fetched.text, open_trackers, random, out);
                }
                Some(Fetch::Playlist(index)) => {
                    self.on_playlist(index, &fetched.url, &fetched.text, out)
                }
                _ => {}
            },
            Event::FetchFailed(failed) => match self.fetches.remove(&failed.fetch) {
                Some(Fetch::Manifest) => {
                    self.manifest_fetch = None;
                    out.push(self.set_timer(Timer::Manifest, RETRY_MS));
                }
                Some(Fetch::Playlist(index)) => {
                    self.streams[index].playlist_fetch = None;
                    out.push(self.set_timer(Timer::Reload(index), RETRY_MS));
                }
                Some(Fetch::Segment(index, id)) => {
                    let now_ms = self.now_ms;
                    let stream = &mut self.streams[index];
                    stream.segments.remove(&id);
                    // The host's memory is full: for VOD, what was used longest ago
                    // goes, so the next try finds room at once (a live window is the
                    // playlist's to bound; a budget smaller than it is the operator's
                    // to raise).
                    if failed.reason.contains("memory budget") && stream.ended {
                        self.evict_least_used(index, id..id + 1, out);
                    } else {
                        // Fetched again at a later reload (or request) if still listed,
                        // once its wait is over.
                        let (failures, retry_at) = stream.failed.entry(id).or_insert((0, 0));
                        let wait = SEGMENT_RETRY_MS.saturating_mul(1 << (*failures).min(10));
                        *failures += 1;
                        *retry_at = now_ms + wait.min(SEGMENT_RETRY_MAX_MS);
                    }
                }
                Some(Fetch::Probe(index, id)) => {
                    let stream = &mut self.streams[index];
                    stream.probes_in_flight -= 1;
                    stream.segments.remove(&id);
                    // Not cached, and a viewer wants it or one just before it (it would have
                    // been prefetched): from the origin then.
                    let wanted = stream.last_use.range(id + 1 - VOD_PREFETCH as i64..=id).next();
                    if wanted.is_some()
                        && let Some(source) = stream.sources.get(&id).cloned()
                    {
                        self.ensure(index, id, source, false, out);
                    }
                }
                _ => {}
            },
            Event::SegmentStored(stored) => match self.fetches.remove(&stored.fetch) {
                Some(Fetch::Segment(index, id) | Fetch::Probe(index, id)) => {
                    let segment = &stored.segment;
                    let ready = Stored::Ready {
                        handle: segment.handle,
                        size: segment.size,
                        on_disk: segment.tier != CacheTier::Memory,
                    };
                    let stream = &mut self.streams[index];
                    if matches!(stream.segments.get(&id), Some(Stored::Probing(_))) {
                        stream.probes_in_flight -= 1;
                    }
                    stream.segments.insert(id, ready);
                    stream.failed.remove(&id);
                    stream.changed = true;
                }
                // A fetch an earlier instance started.
                _ => self.adopt(std::slice::from_ref(&stored.segment)),
            },
            Event::SegmentEvicted(handle) => {
                // A viewer being sent it (the host found its disk copy gone) hears at
                // once instead of waiting for its own timeout.
                for (peer, viewer) in &mut self.peers {
                    if let Some(serving) = viewer.serving.take_if(|s| s.handle == *handle) {
                        let absent =
                            PeerCommand::SegmentAbsent { id: serving.id, request: serving.request };
                        send(*peer, &absent, out);
                    }
                }
                for stream in &mut self.streams {
                    let before = stream.segments.len();
                    stream.segments.retain(
                        |_, s| !matches!(s, Stored::Ready { handle: h, .. } if h == handle),
                    );
                    stream.changed |= stream.segments.len() != before;
                }
            }
            Event::TrackerText(text) => self.on_tracker_text(text.conn, &text.text, out),
            Event::TrackerClosed(closed) => {
                self.offer_allowance.remove(&closed.conn);
                // Offers made and answers owed through it can no longer arrive.
                let mut gone = self.reach.tracker_closed(closed.conn);
                gone.extend(
                    self.answering.iter().filter(|(_, a)| a.conn == closed.conn).map(|(p, _)| *p),
                );
                for peer in gone {
                    self.forget_peer(peer);
                    out.push(close(peer, "its tracker connection closed"));
                }
            }
            Event::PeerOfferReady(ready)
                if !self.reach.offer_ready(ready.peer, ready.sdp.clone()) =>
            {
                out.push(close(ready.peer, "offer no longer wanted"));
            }
            Event::PeerAnswerReady(ready) => {
                if let Some(pending) = self.answering.remove(&ready.peer) {
                    let swarm = &self.swarms[pending.swarm];
                    let text = announce::answer(
                        &swarm.info_hash,
                        &swarm.peer_id,
                        &pending.remote_peer_id,
                        &pending.offer_id,
                        &ready.sdp,
                    );
                    out.push(Command::TrackerSend(TrackerSend { conn: pending.conn, text }));
                    let viewer = Viewer::new(pending.swarm, pending.remote_peer_id, self.now_ms);
                    self.peers.insert(ready.peer, viewer);
                }
            }
            Event::PeerClosed(closed) => self.forget_peer(closed.peer),
            Event::PeerChannelOpen(peer) => {
                // An earlier instance answered it (its answer was sent, or the viewer
                // could not have connected), and this one took over before hearing so.
                self.promote(*peer);
                if self.reach.forget(*peer) {
                    out.push(close(*peer, "taken over without its state: connect again"));
                }
                if self.opened(*peer, out)
                    && let Some(viewer) = self.peers.get(peer)
                {
                    let stream = &self.streams[self.swarms[viewer.swarm].stream];
                    send(*peer, &announcement(stream), out);
                }
            }
            Event::PeerMessage(message) => self.on_peer_message(message.peer, &message.data, out),
            Event::SegmentSent(sent) => {
                // A serve we did not cancel that ended short (its disk copy was gone)
                // went without its end: the viewer hears the segment is absent at once
                // instead of waiting for its own timeout.
                if let Some(viewer) = self.peers.get_mut(&sent.peer)
                    && let Some(serving) = viewer.serving.take_if(|s| s.handle == sent.handle)
                    && !sent.complete
                {
                    let absent =
                        PeerCommand::SegmentAbsent { id: serving.id, request: serving.request };
                    send(sent.peer, &absent, out);
                }
            }
            _ => {}
        }
    }

    /// A peer is gone (closed, failed, or closed by us): whatever it was.
    fn forget_peer(&mut self, peer: PeerId) {
        if let Some(pending) = self.answering.remove(&peer) {
            self.remotes.remove(&(pending.swarm, pending.remote_peer_id));
        }
        if let Some(viewer) = self.peers.remove(&peer) {
            self.remotes.remove(&(viewer.swarm, viewer.remote));
        }
        self.reach.forget(peer);
    }

    /// Viewers whose DataChannel is open: what `maxConnections` bounds.
    fn viewers_open(&self) -> usize {
        self.peers.values().filter(|v| v.open).count()
    }

    /// Peers answered or accepted whose DataChannel is not open yet, oldest (lowest
    /// id) first.
    fn pending_peers(&self) -> Vec<PeerId> {
        let mut pending: Vec<PeerId> = self.answering.keys().copied().collect();
        pending.extend(self.peers.iter().filter(|(_, v)| !v.open).map(|(peer, _)| *peer));
        pending.sort_unstable();
        pending
    }

    /// Takes one offer from tracker connection `conn` against its allowance; false
    /// once it brings offers faster than [`OFFER_RATE`].
    fn offer_allowed(&mut self, conn: ConnId) -> bool {
        let now_ms = self.now_ms;
        let (allowance, counted_ms) =
            self.offer_allowance.entry(conn).or_insert((OFFER_BURST, now_ms));
        let elapsed = now_ms.saturating_sub(*counted_ms) as f64 / 1000.0;
        *allowance = (*allowance + elapsed * OFFER_RATE).min(OFFER_BURST);
        *counted_ms = now_ms;
        if *allowance < 1.0 {
            return false;
        }
        *allowance -= 1.0;
        true
    }

    /// Viewers of a swarm whose DataChannel is open: those reached. Offers that may
    /// never connect (anyone can send them) must not make a swarm look reached.
    fn viewers_open_in(&self, swarm: usize) -> usize {
        self.peers.values().filter(|v| v.swarm == swarm && v.open).count()
    }

    /// What a swarm does on a tracker now: offers, a plain announce, or nothing.
    fn plan(&mut self, key: LinkKey, random: &mut dyn FnMut() -> u64, out: &mut Vec<Command>) {
        let need = Need {
            connected: self.viewers_open_in(key.0),
            free: self.max_peers.saturating_sub(self.viewers_open()),
            max: self.max_peers,
        };
        let interval_ms = self.swarms[key.0].announce_seconds * 1000;
        match self.reach.plan(key, self.now_ms, interval_ms, need) {
            Plan::Nothing => {}
            Plan::Announce => {
                let swarm = &self.swarms[key.0];
                let event = (!self.reach.started(key)).then_some(AnnounceEvent::Started);
                let text = announce::announce(&swarm.info_hash, &swarm.peer_id, event, &[]);
                out.push(Command::TrackerSend(TrackerSend { conn: key.1, text }));
                self.reach.announced(key, self.now_ms);
            }
            Plan::Offers(count) => {
                let offers: Vec<(PeerId, String)> = (0..count)
                    .map(|_| {
                        let peer = self.id();
                        out.push(Command::PeerOffer(peer));
                        let symbols = swarm::random_symbols(random);
                        (peer, swarm::random_text("", OFFER_ID_LENGTH, symbols))
                    })
                    .collect();
                self.reach.offering(key, offers, self.now_ms, interval_ms);
            }
        }
    }

    fn on_manifest(
        &mut self,
        url: &str,
        text: &str,
        open_trackers: &[ConnId],
        random: &mut dyn FnMut() -> u64,
        out: &mut Vec<Command>,
    ) {
        for listed in renditions(url, text) {
            let stream = self.streams.len();
            let mut new_swarms = Vec::new();
            for identity in self.identities.clone() {
                let index = match identity {
                    Identity::V23 => swarm::stream_short_id(&listed.rendition),
                    Identity::V22 => listed.position.to_string(),
                };
                let id = swarm::stream_swarm_id(&self.swarm_id, listed.kind, &index);
                let info_hash = identity.info_hash(&id);
                // Renditions a generation cannot tell apart share its swarm; the first
                // listed serves it.
                if self.swarms.iter().any(|s| s.info_hash == info_hash) {
                    continue;
                }
                new_swarms.push(Swarm {
                    stream,
                    identity,
                    info_hash,
                    peer_id: swarm::peer_id(identity, &mut *random),
                    announce_seconds: DEFAULT_ANNOUNCE_SECONDS,
                });
            }
            if new_swarms.is_empty() {
                continue;
            }
            self.streams.push(Stream {
                playlist_url: listed.url.clone(),
                playlist_fetch: None,
                segments: BTreeMap::new(),
                sources: BTreeMap::new(),
                target_duration_ms: 0,
                newest: None,
                ended: false,
                changed: false,
                last_use: BTreeMap::new(),
                probe_from: None,
                probes_in_flight: 0,
                failed: BTreeMap::new(),
            });
            let fetch = self.fetch_text(listed.url, Fetch::Playlist(stream), out);
            self.streams[stream].playlist_fetch = Some(fetch);
            for swarm in new_swarms {
                log(&format!(
                    "joining the swarm of {} as p2p-media-loader {} names it: info hash {}, \
                     peer id {}",
                    playlist::without_query(&self.streams[stream].playlist_url),
                    swarm.identity.name(),
                    swarm.info_hash,
                    swarm.peer_id
                ));
                let index = self.swarms.len();
                self.swarms.push(swarm);
                for conn in open_trackers {
                    self.plan((index, *conn), random, out);
                }
            }
        }
    }

    fn on_playlist(&mut self, index: usize, url: &str, text: &str, out: &mut Vec<Command>) {
        let media = playlist::parse_media(text, url);
        if media.segments.len() > playlist::MAX_SEGMENTS {
            // Read as a failed fetch: tried again later, never worked through.
            log(&format!(
                "playlist {} lists {} segments, more than the {} this policy reads",
                playlist::without_query(url),
                media.segments.len(),
                playlist::MAX_SEGMENTS
            ));
            self.streams[index].playlist_fetch = None;
            out.push(self.set_timer(Timer::Reload(index), RETRY_MS));
            return;
        }
        // Viewers tell live from VOD by `#EXT-X-ENDLIST` alone (an EVENT playlist is
        // live until it ends), and number segments accordingly.
        let live = !media.ended;
        let stream = &mut self.streams[index];
        stream.playlist_fetch = None;
        stream.target_duration_ms = ((media.target_duration * 1000.0) as u64).max(1000);
        stream.ended = media.ended;
        let newest = media.segments.last().map(|s| s.sequence);
        let grew = newest > stream.newest;
        stream.newest = newest.max(stream.newest);
        let wanted = wanted_segments(&media, live);
        // Segments that left the live window go from the cache.
        let keep: Vec<i64> = wanted.iter().map(|(id, ..)| *id).collect();
        let stale: Vec<(i64, Stored)> = stream
            .segments
            .iter()
            .filter(|(id, _)| live && !keep.contains(id))
            .map(|(id, s)| (*id, s.clone()))
            .collect();
        stream.failed.retain(|id, _| !live || keep.contains(id));
        for (id, stored) in stale {
            stream.changed = true;
            stream.segments.remove(&id);
            stream.sources.remove(&id);
            if let Stored::Ready { handle, .. } = stored {
                out.push(Command::Evict(handle));
            }
        }
        if !live {
            // What earlier workers cached is found by asking the disk cache, in batches.
            if stream.sources.is_empty() {
                stream.probe_from = Some(0);
            }
            // Every VOD segment can be asked for; only the start is fetched ahead.
            stream.sources = media
                .segments
                .into_iter()
                .enumerate()
                .map(|(i, s)| (i as i64, (s.uri, s.range)))
                .collect();
        }
        for (id, source) in wanted {
            self.ensure(index, id, source, live, out);
        }
        if live {
            let after_ms = live_reload_ms(self.streams[index].target_duration_ms, grew);
            out.push(self.set_timer(Timer::Reload(index), after_ms));
        }
    }

    /// Makes sure segment `id` is held or on its way: adopted if an earlier instance
    /// fetched it, else fetched once.
    fn ensure(
        &mut self,
        index: usize,
        id: i64,
        (uri, range): Source,
        live: bool,
        out: &mut Vec<Command>,
    ) {
        let stream = &mut self.streams[index];
        if stream.segments.contains_key(&id) {
            return;
        }
        stream.sources.insert(id, (uri.clone(), range));
        if stream.failed.get(&id).is_some_and(|&(_, retry_at)| self.now_ms < retry_at) {
            return;
        }
        if let Some(ready) = self.orphans.remove(&(uri.clone(), range)) {
            stream.segments.insert(id, ready);
            stream.changed = true;
            return;
        }
        let fetch = self.id();
        self.fetches.insert(fetch, Fetch::Segment(index, id));
        let stream = &mut self.streams[index];
        stream.segments.insert(id, Stored::Fetching(fetch));
        stream.changed = true;
        out.push(Command::FetchSegment(FetchSegment {
            fetch,
            url: uri,
            range: range.map(|(start, end)| superpeer_guest::ByteRange { start, end }),
            tier: if live { CacheTier::Memory } else { CacheTier::Disk },
        }));
    }

    /// Asks the disk cache about the next batch of VOD segments once the last batch is
    /// answered; what it has is held (and announced) without asking the origin.
    fn probe_disk_cache(&mut self, out: &mut Vec<Command>) {
        for index in 0..self.streams.len() {
            let budget = PROBE_BUDGET.saturating_sub(self.fetches.len());
            let stream = &self.streams[index];
            let (Some(from), 0) = (stream.probe_from, stream.probes_in_flight) else { continue };
            if budget == 0 {
                break;
            }
            // Segments an earlier instance held are taken back as they were.
            let held_before: Vec<(i64, Source)> = stream
                .sources
                .range(from..)
                .filter(|(id, source)| {
                    !stream.segments.contains_key(id) && self.orphans.contains_key(*source)
                })
                .map(|(id, source)| (*id, source.clone()))
                .collect();
            for (id, source) in held_before {
                if let Some(ready) = self.orphans.remove(&source) {
                    self.streams[index].segments.insert(id, ready);
                    self.streams[index].changed = true;
                }
            }
            let stream = &self.streams[index];
            let batch: Vec<(i64, Source)> = stream
                .sources
                .range(from..)
                .filter(|(id, _)| !stream.segments.contains_key(id))
                .take(budget)
                .map(|(id, source)| (*id, source.clone()))
                .collect();
            let next = batch.last().and_then(|(last, _)| stream.sources.range(last + 1..).next());
            let next = next.map(|(id, _)| *id);
            for (id, (url, range)) in batch {
                let fetch = self.id();
                self.fetches.insert(fetch, Fetch::Probe(index, id));
                let stream = &mut self.streams[index];
                stream.segments.insert(id, Stored::Probing(fetch));
                stream.probes_in_flight += 1;
                out.push(Command::FetchSegment(FetchSegment {
                    fetch,
                    url,
                    range: range.map(|(start, end)| superpeer_guest::ByteRange { start, end }),
                    tier: CacheTier::DiskIfCached,
                }));
            }
            self.streams[index].probe_from = next;
        }
    }

    /// A VOD viewer asked for `id`: fetch it and the next few, and keep at most
    /// [`VOD_HELD`] segments, dropping the least recently asked for.
    fn vod_demand(&mut self, index: usize, id: i64, out: &mut Vec<Command>) {
        self.uses += 1;
        let now = self.uses;
        let stream = &mut self.streams[index];
        // Ids the playlist does not list (a viewer may ask for anything) are not kept.
        if !stream.sources.contains_key(&id) {
            return;
        }
        stream.last_use.insert(id, now);
        let ahead: Vec<(i64, Source)> = (id..id + VOD_PREFETCH as i64)
            .filter_map(|n| stream.sources.get(&n).map(|s| (n, s.clone())))
            .collect();
        for (n, source) in ahead {
            if self.streams[index].segments.contains_key(&n) {
                continue;
            }
            let before = out.len();
            self.ensure(index, n, source, false, out);
            // One origin fetch per request at most: a viewer asking all over the stream
            // must not make superpeer fetch ahead of every place it asks. A viewer
            // watching on asks once per segment, which keeps the fetches ahead of it.
            if out[before..].iter().any(|c| matches!(c, Command::FetchSegment(_))) {
                break;
            }
        }
        // The disk cache has a cap of its own, which the host enforces; only memory is
        // the policy's to bound.
        let in_memory =
            |s: &Stored| !matches!(s, Stored::Ready { on_disk: true, .. } | Stored::Probing(_));
        while self.streams[index].segments.values().filter(|s| in_memory(s)).count() > VOD_HELD {
            if !self.evict_least_used(index, id..id + VOD_PREFETCH as i64, out) {
                break;
            }
        }
    }

    /// Evicts the segment of stream `index` held in memory that was used longest ago,
    /// other than those in `keep`; false if there is none.
    fn evict_least_used(
        &mut self,
        index: usize,
        keep: std::ops::Range<i64>,
        out: &mut Vec<Command>,
    ) -> bool {
        let stream = &mut self.streams[index];
        let oldest = stream
            .segments
            .iter()
            .filter_map(|(n, s)| match s {
                Stored::Ready { on_disk: false, handle, .. } if !keep.contains(n) => {
                    Some((*n, *handle))
                }
                _ => None,
            })
            .min_by_key(|(n, _)| stream.last_use.get(n).copied().unwrap_or(0));
        let Some((n, handle)) = oldest else { return false };
        stream.segments.remove(&n);
        stream.last_use.remove(&n);
        stream.changed = true;
        out.push(Command::Evict(handle));
        true
    }

    /// One of the seeder's timers fired (trackers' reconnects are not the seeder's).
    pub(crate) fn on_timer(
        &mut self,
        key: Timer,
        open_trackers: &[ConnId],
        random: &mut dyn FnMut() -> u64,
        out: &mut Vec<Command>,
    ) {
        match key {
            Timer::Manifest => self.fetch_manifest(out),
            Timer::Reach => {
                for peer in self.reach.expire(self.now_ms) {
                    out.push(close(peer, reach::OFFER_UNANSWERED));
                }
                let stale: Vec<PeerId> = self
                    .answering
                    .iter()
                    .filter(|(_, a)| self.now_ms >= a.since_ms + ANSWERING_MS)
                    .map(|(peer, _)| *peer)
                    .collect();
                for peer in stale {
                    self.forget_peer(peer);
                    out.push(close(peer, "no answer was made"));
                }
                for swarm in 0..self.swarms.len() {
                    for conn in open_trackers {
                        self.plan((swarm, *conn), random, out);
                    }
                }
                out.push(self.set_timer(Timer::Reach, REACH_TICK_MS));
            }
            Timer::Reload(index) => self.reload(index, out),
            Timer::Reconnect(_) => {}
        }
    }

    /// Fetches a stream's playlist unless a fetch of it is on its way.
    fn reload(&mut self, index: usize, out: &mut Vec<Command>) {
        if index < self.streams.len() && self.streams[index].playlist_fetch.is_none() {
            let url = self.streams[index].playlist_url.clone();
            let fetch = self.fetch_text(url, Fetch::Playlist(index), out);
            self.streams[index].playlist_fetch = Some(fetch);
        }
    }

    fn on_tracker_text(&mut self, conn: ConnId, text: &str, out: &mut Vec<Command>) {
        match announce::parse(text) {
            Ok(TrackerMessage::Offer { info_hash, peer_id, offer_id, sdp }) => {
                let Some(swarm) = self.swarm_of(&info_hash) else { return };
                // A viewer we do not know: the swarm may be larger than we counted.
                if self.remotes.contains(&(swarm, peer_id.clone())) {
                    return;
                }
                self.reach.grown(swarm);
                // An offer the host would refuse to answer (over its limit on a
                // command's text) is not taken: it would hold a place for nothing.
                if self.viewers_open() >= self.max_peers
                    || sdp.len() > MAX_SDP_BYTES
                    || !self.offer_allowed(conn)
                {
                    return;
                }
                let pending = self.pending_peers();
                if pending.len() >= MAX_PENDING_PEERS {
                    let oldest = pending[0];
                    self.forget_peer(oldest);
                    out.push(close(oldest, "not connected in time for a newer viewer"));
                }
                self.remotes.insert((swarm, peer_id.clone()));
                let peer = self.id();
                let since_ms = self.now_ms;
                let pending =
                    PendingAnswer { conn, swarm, remote_peer_id: peer_id, offer_id, since_ms };
                self.answering.insert(peer, pending);
                out.push(Command::PeerAnswer(PeerAnswer { peer, offer: sdp }));
            }
            Ok(TrackerMessage::Answer { info_hash, peer_id, offer_id, sdp }) => {
                let Some((peer, (swarm, _))) = self.reach.answered(&offer_id, conn, self.now_ms)
                else {
                    return;
                };
                if self.swarms[swarm].info_hash != info_hash {
                    out.push(close(peer, "answered from another swarm"));
                } else if self.viewers_open() >= self.max_peers {
                    out.push(close(peer, "no room for another viewer"));
                } else if !self.remotes.insert((swarm, peer_id.clone())) {
                    out.push(close(peer, "already connected to this viewer"));
                } else {
                    self.peers.insert(peer, Viewer::new(swarm, peer_id, self.now_ms));
                    out.push(Command::PeerAcceptAnswer(PeerAcceptAnswer { peer, answer: sdp }));
                }
            }
            Ok(TrackerMessage::Interval { info_hash, interval, complete, incomplete }) => {
                if let Some(swarm) = self.swarm_of(&info_hash) {
                    self.swarms[swarm].announce_seconds = interval.clamp(10, 3600);
                    self.reach.swarm_size((swarm, conn), complete, incomplete);
                }
            }
            Ok(TrackerMessage::Failure(reason)) => log(&format!("tracker refused: {reason}")),
            Ok(TrackerMessage::Warning(_) | TrackerMessage::Ignored) => {}
            Err(error) => log(&format!("unreadable tracker message: {error}")),
        }
    }

    fn swarm_of(&self, info_hash: &str) -> Option<usize> {
        self.swarms.iter().position(|s| s.info_hash == info_hash)
    }

    /// The end of a turn: announces whose offers are made go out, and the viewers of
    /// every stream whose segments changed hear what it has now, so a burst of changes
    /// makes one announcement.
    pub(crate) fn flush(&mut self, out: &mut Vec<Command>) {
        self.probe_disk_cache(out);
        for due in self.reach.take_due(self.now_ms) {
            let (index, conn) = due.key;
            let swarm = &self.swarms[index];
            let event = due.first.then_some(AnnounceEvent::Started);
            let mut offers = due.offers;
            let mut text = announce::announce(&swarm.info_hash, &swarm.peer_id, event, &offers);
            let mut withdrawn = due.withdrawn;
            while text.len() > MAX_ANNOUNCE_BYTES
                && let Some(last) = offers.pop()
            {
                if let Some(peer) = self.reach.peer_of(&last.offer_id) {
                    self.reach.forget(peer);
                    withdrawn.push(peer);
                }
                text = announce::announce(&swarm.info_hash, &swarm.peer_id, event, &offers);
            }
            out.push(Command::TrackerSend(TrackerSend { conn, text }));
            out.extend(withdrawn.into_iter().map(|peer| close(peer, "offer withdrawn")));
        }
        for (index, stream) in self.streams.iter_mut().enumerate() {
            if !std::mem::take(&mut stream.changed) {
                continue;
            }
            let message = announcement(stream);
            for (peer, viewer) in &self.peers {
                if viewer.open && self.swarms[viewer.swarm].stream == index {
                    send(*peer, &message, out);
                }
            }
        }
    }

    /// A viewer whose offer we answered becomes a viewer of that swarm.
    fn promote(&mut self, peer: PeerId) {
        if let Some(pending) = self.answering.remove(&peer) {
            let viewer = Viewer::new(pending.swarm, pending.remote_peer_id, self.now_ms);
            self.peers.insert(peer, viewer);
        }
    }

    /// A peer's DataChannel is open: it is a viewer now, if there is room. Answers and
    /// accepted offers are not counted until they open, so this is where
    /// `maxConnections` holds; one past it is closed. False if it was.
    fn opened(&mut self, peer: PeerId, out: &mut Vec<Command>) -> bool {
        if self.peers.get(&peer).is_some_and(|v| !v.open) && self.viewers_open() >= self.max_peers {
            self.forget_peer(peer);
            out.push(close(peer, "no room for another viewer"));
            return false;
        }
        if let Some(viewer) = self.peers.get_mut(&peer) {
            viewer.open = true;
        }
        true
    }

    fn on_peer_message(&mut self, peer: PeerId, data: &[u8], out: &mut Vec<Command>) {
        if self.answering.contains_key(&peer) {
            // It speaks: its channel is open, and an earlier instance answered it.
            self.promote(peer);
            if !self.opened(peer, out) {
                return;
            }
        }
        let joining: usize = self.peers.values().map(|v| v.joiner.held()).sum();
        let Some(viewer) = self.peers.get_mut(&peer) else { return };
        // One viewer's troubles are its own: one that sends faster than any viewer needs
        // to, or holds more of the instance's memory in a command than its share, is
        // closed, and the instance carries on for the others.
        let refused = if !viewer.allowed(self.now_ms) {
            Some("sends too many messages".to_string())
        } else if joining + data.len() > MAX_JOINING_BYTES {
            Some("holds too much of a command".to_string())
        } else if !wire::is_command_chunk(data) {
            // Raw data would be a segment the viewer uploads; we never ask for one.
            return;
        } else {
            match viewer
                .joiner
                .push(data)
                .and_then(|body| body.map(|b| wire::decode(&b)).transpose())
            {
                Ok(Some(command)) => {
                    self.on_command(peer, command, out);
                    return;
                }
                Ok(None) => return,
                // A peer that speaks garbage loses its connection, nobody else.
                Err(error) => Some(format!("bad message: {error}")),
            }
        };
        if let Some(reason) = refused {
            self.forget_peer(peer);
            out.push(close(peer, &reason));
        }
    }

    fn on_command(&mut self, peer: PeerId, command: PeerCommand, out: &mut Vec<Command>) {
        let Some(viewer) = self.peers.get_mut(&peer) else { return };
        let index = self.swarms[viewer.swarm].stream;
        let stream = &self.streams[index];
        match command {
            PeerCommand::SegmentRequest { id, request, byte_from } => {
                // A new request replaces the one being served.
                if let Some(old) = viewer.serving.take() {
                    out.push(Command::CancelServe(superpeer_guest::CancelServe {
                        peer,
                        handle: old.handle,
                    }));
                }
                let offset = byte_from.unwrap_or(0).max(0) as u64;
                match stream.segments.get(&id) {
                    Some(Stored::Ready { handle, size, .. }) if offset <= *size => {
                        let header =
                            PeerCommand::SegmentData { id, request, size: (*size - offset) as i64 };
                        send(peer, &header, out);
                        out.push(Command::ServeSegment(superpeer_guest::ServeSegment {
                            peer,
                            handle: *handle,
                            offset,
                            chunk_size: wire::MAX_MESSAGE as u32,
                        }));
                        // The end goes now, right after the serve: the host sends it
                        // after the last byte, or not at all if the serve fails or is
                        // cancelled. Answering `segment-sent` instead would leave the
                        // viewer waiting whenever that event reaches an instance
                        // started from a snapshot older than this request.
                        let done = PeerCommand::SegmentDataSendingCompleted { id, request };
                        send(peer, &done, out);
                        viewer.serving = Some(Serving { id, request, handle: *handle });
                    }
                    _ => send(peer, &PeerCommand::SegmentAbsent { id, request }, out),
                }
                if stream.ended {
                    self.vod_demand(index, id, out);
                }
            }
            PeerCommand::CancelSegmentRequest { id, request } => {
                if let Some(old) = viewer.serving.take_if(|s| s.id == id && s.request == request) {
                    out.push(Command::CancelServe(superpeer_guest::CancelServe {
                        peer,
                        handle: old.handle,
                    }));
                }
            }
            // A VOD viewer asks only for what we announce, so where it is comes from what
            // it has: the segments after its newest are fetched ahead for it. A viewer
            // that joined mid-stream, or was watching before we came, is met there.
            PeerCommand::SegmentsAnnouncement { loaded, loading } => {
                let newest = loaded.iter().chain(&loading).max().copied();
                if stream.ended
                    && let Some(newest) = newest
                    && stream.sources.contains_key(&(newest + 1))
                {
                    self.vod_demand(index, newest + 1, out);
                }
            }
            // What a viewer is sending matters only to peers that download.
            PeerCommand::SegmentData { .. }
            | PeerCommand::SegmentDataSendingCompleted { .. }
            | PeerCommand::SegmentAbsent { .. } => {}
        }
    }

    /// Streams, segments held, viewers connected: for tests and logs.
    #[cfg(test)]
    fn figures(&self) -> (usize, usize, usize) {
        let held = self
            .streams
            .iter()
            .flat_map(|s| s.segments.values())
            .filter(|s| matches!(s, Stored::Ready { .. }))
            .count();
        (self.streams.len(), held, self.peers.len())
    }
}

fn close(peer: PeerId, reason: &str) -> Command {
    Command::PeerClose(PeerClose { peer, reason: reason.into() })
}

/// The renditions of a manifest as viewers' players list them: the main levels (a media
/// playlist alone is one level with a bitrate of 0 and nothing else) and the audio
/// tracks with playlists of their own, each with its position in the player's list.
/// Audio carried inside the variants has no playlist of its own: viewers never load
/// segments in its swarm.
fn renditions(url: &str, text: &str) -> Vec<Listed> {
    if !playlist::is_master(text) {
        let rendition = Rendition { bitrate: Some(0.0), ..Rendition::default() };
        return vec![Listed { kind: StreamKind::Main, rendition, position: 0, url: url.into() }];
    }
    let mut master = playlist::parse_master(text, url);
    // A master playlist lists a few renditions; one listing thousands is not worked
    // through (hls.js keeps its order, so the first are the same levels to viewers).
    master.variants.truncate(playlist::MAX_RENDITIONS);
    master.media.truncate(playlist::MAX_RENDITIONS);
    let variants = playable_variants(&master);
    let main = variants.iter().enumerate().map(|(position, v)| Listed {
        kind: StreamKind::Main,
        rendition: rendition_of_variant(v),
        position,
        url: v.uri.clone(),
    });
    let tracks: Vec<&playlist::Media> =
        master.media.iter().filter(|m| m.attribute("TYPE") == Some("AUDIO")).collect();
    // hls.js lists every audio track, of every group. When all have playlists and the
    // first level carries audio but names no group, it lists that audio first as a track
    // of its own ("main"), which moves the others one place.
    let first_level_audio = variants.first().is_some_and(|v| {
        v.attribute("AUDIO").is_none()
            && !split_codecs(v.attribute("CODECS").unwrap_or("")).1.is_empty()
    });
    let shift = usize::from(
        first_level_audio && !tracks.is_empty() && tracks.iter().all(|m| m.uri.is_some()),
    );
    let audio = tracks.iter().enumerate().filter_map(|(position, m)| {
        Some(Listed {
            kind: StreamKind::Secondary,
            rendition: rendition_of_audio(&master, m),
            position: position + shift,
            url: m.uri.clone()?,
        })
    });
    main.chain(audio).collect()
}

/// When to reload a live playlist. Viewers play a few segments behind the live edge and
/// fetch over HTTP what is about to play, so a new segment is worth something to them
/// only if superpeer has it within moments of its appearing. Reloading once per target
/// duration would lock onto a phase: if that phase is just before the origin adds
/// segments, every segment is seen a whole target duration late. So after a reload that
/// found a new segment the next comes a little before the following one is due, and
/// without one, reloads come every quarter of the target duration until it appears.
/// That sees each segment within a quarter target duration, for about two requests per
/// segment.
fn live_reload_ms(target_duration_ms: u64, grew: bool) -> u64 {
    let quarter = (target_duration_ms / 4).max(MIN_RELOAD_MS);
    if grew { target_duration_ms.saturating_sub(quarter).max(MIN_RELOAD_MS) } else { quarter }
}

/// The segments to hold, with the id viewers know them by: for live the media sequence
/// number (the newest [`LIVE_WINDOW`]), for VOD the position in the playlist (the first
/// [`VOD_PREFETCH`]).
fn wanted_segments(media: &MediaPlaylist, live: bool) -> Vec<(i64, Source)> {
    if live {
        let skip = media.segments.len().saturating_sub(LIVE_WINDOW);
        media.segments[skip..]
            .iter()
            .map(|s| (s.sequence as i64, (s.uri.clone(), s.range)))
            .collect()
    } else {
        media
            .segments
            .iter()
            .take(VOD_PREFETCH)
            .enumerate()
            .map(|(i, s)| (i as i64, (s.uri.clone(), s.range)))
            .collect()
    }
}

/// A variant's attributes as hls.js 1.6/1.7 reports them for a level (`LevelParsed`,
/// after its level controller has run): the bitrate is BANDWIDTH, else
/// AVERAGE-BANDWIDTH, read like `parseInt` (NaN when neither); the codecs are the video
/// ones among CODECS; RESOLUTION must be exactly `<w>x<h>`; FRAME-RATE and VIDEO-RANGE
/// are passed as written. A bitrate of exactly 0 drops everything else, as
/// p2p-media-loader does.
pub(crate) fn rendition_of_variant(variant: &playlist::Variant) -> Rendition {
    let bandwidth = |name| variant.attribute(name).map_or(f64::NAN, js_parse_int);
    let bitrate = match bandwidth("BANDWIDTH") {
        b if b.is_nan() || b == 0.0 => bandwidth("AVERAGE-BANDWIDTH"),
        b => b,
    };
    if bitrate == 0.0 {
        return Rendition { bitrate: Some(0.0), ..Rendition::default() };
    }
    let (width, height) = variant.attribute("RESOLUTION").and_then(resolution).unzip();
    let (video, _) = split_codecs(variant.attribute("CODECS").unwrap_or(""));
    Rendition {
        bitrate: Some(bitrate),
        codecs: (!video.is_empty()).then(|| video.join(",")),
        width,
        height,
        frame_rate: variant.attribute("FRAME-RATE").map(String::from),
        video_range: variant.attribute("VIDEO-RANGE").map(String::from),
        ..Rendition::default()
    }
}

/// An audio rendition as hls.js reports it for an audio track: its codec is the audio
/// codec of the first variant of its group (else of the first variant); its name falls
/// back to its language.
pub(crate) fn rendition_of_audio(
    master: &playlist::MasterPlaylist,
    media: &playlist::Media,
) -> Rendition {
    let group = media.attribute("GROUP-ID");
    let variant = master
        .variants
        .iter()
        .find(|v| group.is_some() && v.attribute("AUDIO") == group)
        .or_else(|| master.variants.first());
    let audio =
        variant.map(|v| split_codecs(v.attribute("CODECS").unwrap_or("")).1).unwrap_or_default();
    let language = media.attribute("LANGUAGE").filter(|l| !l.is_empty());
    Rendition {
        bitrate: Some(0.0),
        codecs: (!audio.is_empty()).then(|| audio.join(",")),
        language: language.map(String::from),
        channels: media.attribute("CHANNELS").map(String::from),
        name: media.attribute("NAME").filter(|n| !n.is_empty()).or(language).map(String::from),
        ..Rendition::default()
    }
}

/// The variants viewers will play: hls.js drops variants with a codec it does not know
/// when some variant has only codecs it knows.
pub(crate) fn playable_variants(master: &playlist::MasterPlaylist) -> Vec<&playlist::Variant> {
    let known =
        |v: &&playlist::Variant| split_codecs_all(v.attribute("CODECS").unwrap_or("")).2.is_empty();
    let known_count = master.variants.iter().filter(known).count();
    if known_count > 0 && known_count < master.variants.len() {
        master.variants.iter().filter(known).collect()
    } else {
        master.variants.iter().collect()
    }
}

/// `parseInt(text, 10)` as JavaScript reads it: leading digits, NaN if none.
fn js_parse_int(text: &str) -> f64 {
    let text = text.trim_start();
    let (sign, digits) = match text.as_bytes().first() {
        Some(b'-') => (-1.0, &text[1..]),
        Some(b'+') => (1.0, &text[1..]),
        _ => (1.0, text),
    };
    let end = digits.find(|c: char| !c.is_ascii_digit()).unwrap_or(digits.len());
    digits[..end].parse::<f64>().map_or(f64::NAN, |n| sign * n)
}

/// `RESOLUTION` as hls.js reads it: `^(\d+)x(\d+)$`.
fn resolution(text: &str) -> Option<(u64, u64)> {
    let (w, h) = text.split_once('x')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    (digits(w) && digits(h)).then(|| Some((w.parse().ok()?, h.parse().ok()?)))?
}

/// hls.js's split of a CODECS list into video and audio codecs (by the first four
/// characters of each, case-sensitive).
fn split_codecs(codecs: &str) -> (Vec<String>, Vec<String>) {
    let (video, audio, _) = split_codecs_all(codecs);
    (video, audio)
}

fn split_codecs_all(codecs: &str) -> (Vec<String>, Vec<String>, Vec<String>) {
    const VIDEO: &[&str] = &[
        "avc1", "avc2", "avc3", "avc4", "avcp", "av01", "drac", "dva1", "dvav", "dvh1", "dvhe",
        "encv", "hev1", "hvc1", "mjp2", "mp4v", "mvc1", "mvc2", "mvc3", "mvc4", "resv", "rv60",
        "s263", "svc1", "svc2", "vc-1", "vp08", "vp09",
    ];
    const AUDIO: &[&str] = &[
        "a3ds", "ac-3", "ac-4", "alac", "alaw", "dra1", "dts+", "dts-", "dtsc", "dtse", "dtsh",
        "ec-3", "enca", "fLaC", "flac", "g719", "g726", "m4ae", "mha1", "mha2", "mhm1", "mhm2",
        "mlpa", "mp4a", "raw ", "Opus", "opus", "samr", "sawb", "sawp", "sevc", "sqcp", "ssmv",
        "twos", "ulaw",
    ];
    let (mut video, mut audio, mut unknown) = (Vec::new(), Vec::new(), Vec::new());
    for codec in codecs.split([' ', ',']).filter(|c| !c.is_empty()) {
        let head = codec.get(..4).unwrap_or(codec);
        let name = codec.split('/').next().unwrap_or(codec).to_string();
        if VIDEO.contains(&head) {
            video.push(name);
        } else if AUDIO.contains(&head) {
            audio.push(name);
        } else {
            unknown.push(name);
        }
    }
    (video, audio, unknown)
}

#[cfg(target_family = "wasm")]
fn log(message: &str) {
    superpeer_guest::host::info(message);
}

#[cfg(not(target_family = "wasm"))]
fn log(_: &str) {}

#[cfg(test)]
mod tests {
    use super::*;
    use superpeer_guest::{
        CacheTier, PeerClosed, SdpReady, SegmentInfo, SegmentStored, TextFetched, TrackerText,
    };

    const MANIFEST: &str = "http://o.example/live/master.m3u8";
    const MASTER: &str = "#EXTM3U
#EXT-X-STREAM-INF:BANDWIDTH=1280000,CODECS=\"avc1.4d401f,mp4a.40.2\",RESOLUTION=1280x720
720p.m3u8
";

    fn media(first: u64, count: u64, ended: bool) -> String {
        let mut text = format!("#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:{first}\n");
        for n in first..first + count {
            text.push_str(&format!("#EXTINF:2,\nseg{n}.ts\n"));
        }
        if ended {
            text.push_str("#EXT-X-ENDLIST\n");
        }
        text
    }

    /// Numbers that never repeat within a test run, so ids drawn in different turns
    /// differ as random ones would.
    fn random() -> impl FnMut() -> u64 {
        use std::sync::atomic::{AtomicU64, Ordering};
        static NEXT: AtomicU64 = AtomicU64::new(1);
        || NEXT.fetch_add(1, Ordering::Relaxed)
    }

    fn fetched(fetch: FetchId, url: &str, text: &str) -> Event {
        Event::TextFetched(TextFetched { fetch, url: url.into(), text: text.into() })
    }

    fn texts(out: &[Command]) -> Vec<(u64, String)> {
        out.iter()
            .filter_map(|c| match c {
                Command::FetchText(f) => Some((f.fetch, f.url.clone())),
                _ => None,
            })
            .collect()
    }

    fn segments(out: &[Command]) -> Vec<(u64, String)> {
        out.iter()
            .filter_map(|c| match c {
                Command::FetchSegment(f) => Some((f.fetch, f.url.clone())),
                _ => None,
            })
            .collect()
    }

    /// A seeder that has read the master playlist, with one tracker open.
    fn started() -> (Seeder, u64) {
        let mut seeder =
            Seeder::new(MANIFEST.into(), Some(MANIFEST.into()), 10, Settings::default());
        let mut out = Vec::new();
        seeder.start(&mut out);
        let (manifest, _) = texts(&out)[0].clone();
        out.clear();
        seeder.handle(&fetched(manifest, MANIFEST, MASTER), &[7], &mut random(), &mut out);
        let (playlist, url) = texts(&out)[0].clone();
        assert_eq!(url, "http://o.example/live/720p.m3u8");
        let offers = out.iter().filter(|c| matches!(c, Command::PeerOffer(_))).count();
        assert_eq!(offers, 20, "offers for both generations' swarms on the open tracker");
        (seeder, playlist)
    }

    #[test]
    fn announces_each_rendition_with_the_info_hash_viewers_compute() {
        let (seeder, _) = started();
        // hls.js gives the level its video codec only.
        let expected = Identity::V23.info_hash(&swarm::stream_swarm_id(
            MANIFEST,
            StreamKind::Main,
            &swarm::stream_short_id(&Rendition {
                bitrate: Some(1_280_000.0),
                codecs: Some("avc1.4d401f".into()),
                width: Some(1280),
                height: Some(720),
                ..Rendition::default()
            }),
        ));
        assert_eq!(seeder.swarms[0].info_hash, expected);
        assert!(seeder.swarms[0].peer_id.starts_with("-PM0203-"));
        // 2.2 viewers name the level by its position.
        let expected =
            Identity::V22.info_hash(&swarm::stream_swarm_id(MANIFEST, StreamKind::Main, "0"));
        assert_eq!(seeder.swarms[1].info_hash, expected);
        assert!(seeder.swarms[1].peer_id.starts_with("-PM0202-"));
        assert_eq!(seeder.swarms[1].stream, 0, "one stream, one cache, for both");
    }

    #[test]
    fn stopping_says_stopped_in_every_swarm_on_every_open_tracker() {
        let (seeder, _) = started();
        let mut out = Vec::new();
        seeder.stop(&[7, 9], &mut out);
        let goodbyes: Vec<(u64, serde_json::Value)> = out
            .iter()
            .filter_map(|c| match c {
                Command::TrackerSend(s) => Some((s.conn, serde_json::from_str(&s.text).unwrap())),
                _ => None,
            })
            .collect();
        assert_eq!(goodbyes.len(), 4, "{out:?}");
        for ((conn, message), (expected, swarm)) in
            goodbyes.iter().zip([(7, 0), (7, 1), (9, 0), (9, 1)])
        {
            assert_eq!(*conn, expected);
            assert_eq!(message["event"], "stopped");
            assert_eq!(message["info_hash"], seeder.swarms[swarm].info_hash.as_str());
            assert_eq!(message["peer_id"], seeder.swarms[swarm].peer_id.as_str());
            assert_eq!(message["offers"], serde_json::json!([]));
        }
    }

    #[test]
    fn keeps_the_live_window_cached_and_evicts_what_leaves_it() {
        let (mut seeder, playlist) = started();
        let url = "http://o.example/live/720p.m3u8";
        let mut out = Vec::new();
        seeder.handle(&fetched(playlist, url, &media(100, 3, false)), &[], &mut random(), &mut out);
        let wanted = segments(&out);
        assert_eq!(
            wanted.iter().map(|(_, u)| u.as_str()).collect::<Vec<_>>(),
            [
                "http://o.example/live/seg100.ts",
                "http://o.example/live/seg101.ts",
                "http://o.example/live/seg102.ts"
            ]
        );
        assert!(
            out.contains(&timer_set(&seeder, Timer::Reload(0), 1500)),
            "new segments: the next reload a quarter target duration before the next is due"
        );
        let mut handle = 49;
        store_all(&mut seeder, &out, &mut handle);
        assert_eq!(seeder.figures(), (1, 3, 0));

        // The reload: 100 left the window, 103 and 104 joined.
        out.clear();
        fire(&mut seeder, Timer::Reload(0), &[], &mut out);
        let (reload, _) = texts(&out)[0].clone();
        out.clear();
        seeder.handle(&fetched(reload, url, &media(101, 4, false)), &[], &mut random(), &mut out);
        assert!(out.contains(&Command::Evict(50)));
        let fresh: Vec<String> = segments(&out).into_iter().map(|(_, u)| u).collect();
        assert_eq!(
            fresh,
            ["http://o.example/live/seg103.ts", "http://o.example/live/seg104.ts"],
            "one fetch per new segment"
        );

        // Nothing new yet: reloads come every quarter target duration until it appears.
        out.clear();
        fire(&mut seeder, Timer::Reload(0), &[], &mut out);
        let (reload, _) = texts(&out)[0].clone();
        out.clear();
        seeder.handle(&fetched(reload, url, &media(101, 4, false)), &[], &mut random(), &mut out);
        assert!(segments(&out).is_empty());
        assert!(out.contains(&timer_set(&seeder, Timer::Reload(0), 500)), "{out:?}");
    }

    #[test]
    fn a_live_segment_that_failed_waits_longer_after_each_failure_before_it_is_fetched_again() {
        let (mut seeder, playlist) = started();
        let url = "http://o.example/live/720p.m3u8";
        let bad = "http://o.example/live/seg101.ts";
        let mut handle = 49;
        // What `out` fetched: the others stored, 101 failed (or stored, when `ok`); and
        // whether 101 was among them.
        let mut answer = |seeder: &mut Seeder, out: &[Command], ok: bool| -> bool {
            let mut asked = false;
            for (fetch, segment) in segments(out) {
                asked |= segment == bad;
                handle += 1;
                let event = if segment == bad && !ok {
                    Event::FetchFailed(superpeer_guest::FetchFailed {
                        fetch,
                        status: None,
                        reason: "67108928 bytes is more than the 67108864-byte limit".into(),
                    })
                } else {
                    let segment = SegmentInfo {
                        handle,
                        url: segment,
                        range: None,
                        size: 10,
                        tier: CacheTier::Memory,
                    };
                    Event::SegmentStored(SegmentStored { fetch, segment })
                };
                seeder.handle(&event, &[], &mut random(), &mut Vec::new());
            }
            asked
        };
        let reload = |seeder: &mut Seeder, now_ms: u64| -> Vec<Command> {
            let mut out = Vec::new();
            seeder.begin_turn(now_ms);
            fire(seeder, Timer::Reload(0), &[], &mut out);
            let (reload, _) = texts(&out)[0].clone();
            out.clear();
            seeder.handle(
                &fetched(reload, url, &media(100, 3, false)),
                &[],
                &mut random(),
                &mut out,
            );
            out
        };
        let mut out = Vec::new();
        seeder.begin_turn(0);
        seeder.handle(&fetched(playlist, url, &media(100, 3, false)), &[], &mut random(), &mut out);
        assert!(answer(&mut seeder, &out, false));
        // Failed at 0: not asked for at 500 ms, asked at 1 s; failed again: waits 2 s,
        // then 4 s.
        let mut asked = Vec::new();
        for now_ms in [500, 1_000, 2_500, 3_000, 6_000, 7_000] {
            let out = reload(&mut seeder, now_ms);
            asked.push(answer(&mut seeder, &out, false));
        }
        assert_eq!(asked, [false, true, false, true, false, true]);
        // Held at last (8 s after its fourth failure): its count of failures is gone.
        let out = reload(&mut seeder, 15_000);
        assert!(answer(&mut seeder, &out, true));
        assert!(seeder.streams[0].failed.is_empty());
    }

    #[test]
    fn answers_offers_in_its_swarms_through_the_same_tracker() {
        let (mut seeder, _) = started();
        let info_hash = seeder.swarms[0].info_hash.clone();
        let offer = format!(
            r#"{{"action":"announce","info_hash":"{info_hash}","peer_id":"-PM0203-viewer000001","offer_id":"o1","offer":{{"type":"offer","sdp":"v=0 offer"}}}}"#
        );
        let mut out = Vec::new();
        seeder.handle(
            &Event::TrackerText(TrackerText { conn: 7, text: offer.clone() }),
            &[7],
            &mut random(),
            &mut out,
        );
        let Some(Command::PeerAnswer(answer)) = out.first().cloned() else { panic!("{out:?}") };
        assert_eq!(answer.offer, "v=0 offer");
        out.clear();
        let ready =
            Event::PeerAnswerReady(SdpReady { peer: answer.peer, sdp: "v=0 answer".into() });
        seeder.handle(&ready, &[7], &mut random(), &mut out);
        let Some(Command::TrackerSend(sent)) = out.first() else { panic!("{out:?}") };
        assert_eq!(sent.conn, 7);
        let json: serde_json::Value = serde_json::from_str(&sent.text).unwrap();
        assert_eq!(json["to_peer_id"], "-PM0203-viewer000001");
        assert_eq!(json["offer_id"], "o1");
        assert_eq!(json["answer"]["sdp"], "v=0 answer");

        // Offers for other swarms are not ours.
        out.clear();
        let other = offer.replace(&info_hash, "AAAAAAAAAAAAAAAAAAAA");
        seeder.handle(
            &Event::TrackerText(TrackerText { conn: 7, text: other }),
            &[7],
            &mut random(),
            &mut out,
        );
        assert!(out.is_empty());
    }

    #[test]
    fn vod_ids_are_positions_and_a_media_playlist_alone_is_one_rendition() {
        let url = "http://o.example/vod/index.m3u8";
        let mut seeder = Seeder::new(url.into(), Some(url.into()), 10, Settings::default());
        let mut out = Vec::new();
        seeder.start(&mut out);
        let (manifest, _) = texts(&out)[0].clone();
        out.clear();
        seeder.handle(&fetched(manifest, url, &media(5, 3, true)), &[], &mut random(), &mut out);
        assert_eq!((seeder.streams.len(), seeder.swarms.len()), (1, 2));
        let (playlist, playlist_url) = texts(&out)[0].clone();
        assert_eq!(playlist_url, url);
        out.clear();
        seeder.handle(&fetched(playlist, url, &media(5, 3, true)), &[], &mut random(), &mut out);
        assert_eq!(seeder.streams[0].segments.keys().copied().collect::<Vec<_>>(), [0, 1, 2]);
        assert!(!seeder.ctx.timers.pending(&Timer::Reload(0)), "VOD is not reloaded");
    }

    #[test]
    fn renditions_are_read_as_hls_js_reads_them() {
        let master = playlist::parse_master(
            "#EXTM3U
#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID=\"aud\",NAME=\"\",LANGUAGE=\"en\",CHANNELS=\"2\",URI=\"en.m3u8\"
#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID=\"aud\",NAME=\"Muxed\",LANGUAGE=\"de\"
#EXT-X-STREAM-INF:BANDWIDTH=1400000,AVERAGE-BANDWIDTH=1280000,CODECS=\"avc1.4d401f,mp4a.40.2\",RESOLUTION=1280x720,FRAME-RATE=30.000,AUDIO=\"aud\"
hd.m3u8
#EXT-X-STREAM-INF:AVERAGE-BANDWIDTH=500000,CODECS=\"avc1.42001e mp4a.40.5\",RESOLUTION=640X360
sd.m3u8
#EXT-X-STREAM-INF:CODECS=\"avc1.42001e\"
nobw.m3u8
",
            "http://o.example/m.m3u8",
        );
        let hd = rendition_of_variant(&master.variants[0]);
        assert_eq!(hd.bitrate, Some(1_400_000.0), "BANDWIDTH wins over AVERAGE-BANDWIDTH");
        assert_eq!(hd.codecs.as_deref(), Some("avc1.4d401f"), "video codecs only");
        assert_eq!((hd.width, hd.height), (Some(1280), Some(720)));
        assert_eq!(hd.frame_rate.as_deref(), Some("30.000"));
        let sd = rendition_of_variant(&master.variants[1]);
        assert_eq!(sd.bitrate, Some(500_000.0));
        assert_eq!(sd.codecs.as_deref(), Some("avc1.42001e"), "codecs split on spaces too");
        assert_eq!((sd.width, sd.height), (None, None), "RESOLUTION needs a lower-case x");
        let nobw = rendition_of_variant(&master.variants[2]);
        assert!(nobw.bitrate.unwrap().is_nan(), "no bandwidth at all is NaN, not 0");
        assert!(
            swarm::stream_short_id(&nobw)
                != swarm::stream_short_id(&Rendition {
                    bitrate: Some(0.0),
                    ..Rendition::default()
                })
        );

        let audio = rendition_of_audio(&master, &master.media[0]);
        assert_eq!(
            audio.codecs.as_deref(),
            Some("mp4a.40.2"),
            "from the first variant of its group"
        );
        assert_eq!(audio.name.as_deref(), Some("en"), "an empty name falls back to the language");
        assert_eq!(audio.channels.as_deref(), Some("2"));
        assert_eq!(js_parse_int("12ab"), 12.0);
        assert!(js_parse_int("ab").is_nan());
    }

    #[test]
    fn variants_with_unknown_codecs_go_when_others_are_playable() {
        let master = playlist::parse_master(
            "#EXTM3U
#EXT-X-STREAM-INF:BANDWIDTH=1,CODECS=\"avc1.42001e,mp4a.40.2\"
a.m3u8
#EXT-X-STREAM-INF:BANDWIDTH=2,CODECS=\"xyz9.1\"
b.m3u8
",
            "http://o.example/m.m3u8",
        );
        let playable: Vec<&str> =
            playable_variants(&master).iter().map(|v| v.uri.as_str()).collect();
        assert_eq!(playable, ["http://o.example/a.m3u8"]);
    }

    /// A seeder with a live window of three stored segments (ids 100..=102, handles
    /// 50..=52, 10 bytes each) and one viewer (peer returned) whose channel is open.
    fn serving() -> (Seeder, PeerId) {
        let (mut seeder, playlist) = started();
        let url = "http://o.example/live/720p.m3u8";
        let mut out = Vec::new();
        seeder.handle(&fetched(playlist, url, &media(100, 3, false)), &[], &mut random(), &mut out);
        let mut handle = 49;
        store_all(&mut seeder, &out, &mut handle);
        let peer = connect_viewer(&mut seeder);
        (seeder, peer)
    }

    /// A viewer's offer through tracker 7, answered: returns the viewer's peer id.
    fn connect_viewer(seeder: &mut Seeder) -> PeerId {
        let info_hash = seeder.swarms[0].info_hash.clone();
        let offer = format!(
            r#"{{"action":"announce","info_hash":"{info_hash}","peer_id":"-PM0203-viewer000001","offer_id":"o1","offer":{{"type":"offer","sdp":"v=0"}}}}"#
        );
        let mut out = Vec::new();
        seeder.handle(
            &Event::TrackerText(TrackerText { conn: 7, text: offer }),
            &[7],
            &mut random(),
            &mut out,
        );
        let Some(Command::PeerAnswer(answer)) = out.first().cloned() else { panic!("{out:?}") };
        let ready = Event::PeerAnswerReady(SdpReady { peer: answer.peer, sdp: "v=0".into() });
        seeder.handle(&ready, &[7], &mut random(), &mut Vec::new());
        answer.peer
    }

    fn sent(out: &[Command]) -> Vec<PeerCommand> {
        out.iter()
            .filter_map(|c| match c {
                Command::PeerSend(s) => {
                    let body = Joiner::default().push(&s.data).unwrap().unwrap();
                    Some(wire::decode(&body).unwrap())
                }
                _ => None,
            })
            .collect()
    }

    fn message(peer: PeerId, command: &PeerCommand) -> Event {
        let data = wire::encode(command, wire::MAX_MESSAGE).unwrap().remove(0);
        Event::PeerMessage(superpeer_guest::PeerMessage { peer, data })
    }

    #[test]
    fn offers_that_never_connect_count_for_nothing_and_keep_no_real_viewer_out() {
        /// Hands `event` over (answering what it asks answered); the peers answered
        /// and how many closes it brought.
        fn take(seeder: &mut Seeder, event: &Event) -> (Vec<PeerId>, usize) {
            let mut out = Vec::new();
            seeder.handle(event, &[7], &mut random(), &mut out);
            let (mut answered, mut closed) = (Vec::new(), 0);
            for command in out {
                match command {
                    Command::PeerAnswer(answer) => {
                        let sdp = "v=0".into();
                        let ready = Event::PeerAnswerReady(SdpReady { peer: answer.peer, sdp });
                        seeder.handle(&ready, &[7], &mut random(), &mut Vec::new());
                        answered.push(answer.peer);
                    }
                    Command::PeerClose(_) => closed += 1,
                    _ => {}
                }
            }
            (answered, closed)
        }
        let (mut seeder, _) = started();
        let max = seeder.max_peers;
        let info_hash = seeder.swarms[0].info_hash.clone();
        let offer = |viewer: &str| {
            let text = format!(
                r#"{{"action":"announce","info_hash":"{info_hash}","peer_id":"{viewer}","offer_id":"o-{viewer}","offer":{{"type":"offer","sdp":"v=0"}}}}"#
            );
            Event::TrackerText(TrackerText { conn: 7, text })
        };
        // A flood: ten offers a second for a minute, none of which ever connects.
        let start = seeder.now_ms;
        let mut answered = 0;
        for n in 0..600u64 {
            seeder.begin_turn(start + n * 100);
            answered += take(&mut seeder, &offer(&format!("-PM0203-fake{n:08}"))).0.len();
            assert!(seeder.pending_peers().len() <= MAX_PENDING_PEERS);
        }
        assert!(answered > max, "offers beyond maxConnections are answered");
        assert_eq!(seeder.viewers_open(), 0, "nothing that never opened counts");
        // A burst faster than any tracker relays real viewers is cut short.
        let burst: usize = (0..1000u64)
            .map(|n| take(&mut seeder, &offer(&format!("-PM0203-burst{n:07}"))).0.len())
            .sum();
        assert!(burst <= OFFER_BURST as usize + 1, "{burst} of a burst answered");

        // Real viewers, during the flood: answered, and they open.
        seeder.begin_turn(start + 61_000);
        let mut real = |n: usize| {
            let (answered, _) = take(&mut seeder, &offer(&format!("-PM0203-real{n:08}")));
            let [peer] = answered[..] else { panic!("a real viewer not answered") };
            peer
        };
        let peers: Vec<PeerId> = (0..=max).map(&mut real).collect();
        // maxConnections holds where channels open: the one past it is closed.
        let closes: Vec<usize> =
            peers.iter().map(|peer| take(&mut seeder, &Event::PeerChannelOpen(*peer)).1).collect();
        assert_eq!(closes[..max].iter().sum::<usize>(), 0);
        assert_eq!(closes[max], 1, "an open channel past maxConnections stays");
        assert_eq!(seeder.viewers_open(), max);
    }

    #[test]
    fn viewers_hear_what_is_cached_and_get_segments_served() {
        let (mut seeder, peer) = serving();
        let mut out = Vec::new();
        seeder.handle(&Event::PeerChannelOpen(peer), &[7], &mut random(), &mut out);
        assert_eq!(
            sent(&out),
            [PeerCommand::SegmentsAnnouncement { loaded: vec![100, 101, 102], loading: vec![] }]
        );

        out.clear();
        let request = PeerCommand::SegmentRequest { id: 101, request: 5, byte_from: Some(4) };
        seeder.handle(&message(peer, &request), &[7], &mut random(), &mut out);
        assert_eq!(
            sent(&out),
            [
                PeerCommand::SegmentData { id: 101, request: 5, size: 6 },
                PeerCommand::SegmentDataSendingCompleted { id: 101, request: 5 }
            ]
        );
        assert_eq!(
            out[1],
            Command::ServeSegment(superpeer_guest::ServeSegment {
                peer,
                handle: 51,
                offset: 4,
                chunk_size: 65535
            }),
            "the bytes follow the header, from the offset asked for, and the end follows them"
        );

        // The host says when the bytes are out; the end is already queued behind them.
        out.clear();
        let sent_all = Event::SegmentSent(superpeer_guest::SegmentSent {
            peer,
            handle: 51,
            bytes: 6,
            complete: true,
        });
        seeder.handle(&sent_all, &[7], &mut random(), &mut out);
        assert!(sent(&out).is_empty());

        out.clear();
        let missing = PeerCommand::SegmentRequest { id: 999, request: 6, byte_from: None };
        seeder.handle(&message(peer, &missing), &[7], &mut random(), &mut out);
        assert_eq!(sent(&out), [PeerCommand::SegmentAbsent { id: 999, request: 6 }]);
    }

    #[test]
    fn a_new_request_or_a_cancel_stops_the_serve_in_progress() {
        let (mut seeder, peer) = serving();
        seeder.handle(&Event::PeerChannelOpen(peer), &[7], &mut random(), &mut Vec::new());
        let mut out = Vec::new();
        let first = PeerCommand::SegmentRequest { id: 100, request: 1, byte_from: None };
        seeder.handle(&message(peer, &first), &[7], &mut random(), &mut out);
        out.clear();
        let second = PeerCommand::SegmentRequest { id: 102, request: 2, byte_from: None };
        seeder.handle(&message(peer, &second), &[7], &mut random(), &mut out);
        assert_eq!(out[0], Command::CancelServe(superpeer_guest::CancelServe { peer, handle: 50 }));
        out.clear();
        seeder.handle(
            &message(peer, &PeerCommand::CancelSegmentRequest { id: 102, request: 2 }),
            &[7],
            &mut random(),
            &mut out,
        );
        assert_eq!(out, [Command::CancelServe(superpeer_guest::CancelServe { peer, handle: 52 })]);
        // A late completion for the cancelled serve says nothing.
        out.clear();
        let late = Event::SegmentSent(superpeer_guest::SegmentSent {
            peer,
            handle: 52,
            bytes: 3,
            complete: false,
        });
        seeder.handle(&late, &[7], &mut random(), &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn a_segment_gone_while_being_sent_is_reported_absent_at_once() {
        let (mut seeder, peer) = serving();
        seeder.handle(&Event::PeerChannelOpen(peer), &[7], &mut random(), &mut Vec::new());
        let ask = PeerCommand::SegmentRequest { id: 100, request: 4, byte_from: None };
        seeder.handle(&message(peer, &ask), &[7], &mut random(), &mut Vec::new());
        // The host found the copy it was serving gone: the serve ended short, then the
        // segment is evicted.
        let mut out = Vec::new();
        let short = superpeer_guest::SegmentSent { peer, handle: 50, bytes: 0, complete: false };
        seeder.handle(&Event::SegmentSent(short), &[7], &mut random(), &mut out);
        seeder.handle(&Event::SegmentEvicted(50), &[7], &mut random(), &mut out);
        assert_eq!(sent(&out), [PeerCommand::SegmentAbsent { id: 100, request: 4 }]);

        // Evicted alone while being served (the bytes still go, held by the host): said
        // absent as well, which the viewer ignores once it has the segment.
        let ask = PeerCommand::SegmentRequest { id: 101, request: 5, byte_from: None };
        seeder.handle(&message(peer, &ask), &[7], &mut random(), &mut Vec::new());
        out.clear();
        seeder.handle(&Event::SegmentEvicted(51), &[7], &mut random(), &mut out);
        assert_eq!(sent(&out), [PeerCommand::SegmentAbsent { id: 101, request: 5 }]);
    }

    #[test]
    fn changes_are_announced_once_per_batch_and_garbage_closes_only_that_viewer() {
        let (mut seeder, peer) = serving();
        seeder.handle(&Event::PeerChannelOpen(peer), &[7], &mut random(), &mut Vec::new());
        let mut out = Vec::new();
        seeder.handle(&Event::SegmentEvicted(50), &[7], &mut random(), &mut out);
        seeder.handle(&Event::SegmentEvicted(51), &[7], &mut random(), &mut out);
        seeder.flush(&mut out);
        assert_eq!(
            sent(&out),
            [PeerCommand::SegmentsAnnouncement { loaded: vec![102], loading: vec![] }]
        );
        out.clear();
        seeder.flush(&mut out);
        assert!(out.is_empty(), "nothing changed since");

        let garbage = Event::PeerMessage(superpeer_guest::PeerMessage {
            peer,
            data: b"cstr\x09cend".to_vec(),
        });
        seeder.handle(&garbage, &[7], &mut random(), &mut out);
        assert!(
            matches!(out.as_slice(), [Command::PeerClose(c)] if c.peer == peer && c.reason.contains("unknown command"))
        );
        assert_eq!(seeder.figures().2, 0);
    }

    /// A VOD seeder with a 200-segment playlist, one viewer with an open channel, and
    /// the first segments stored.
    fn vod_serving() -> (Seeder, PeerId, u64) {
        let url = "http://o.example/vod/index.m3u8";
        let mut seeder = Seeder::new(url.into(), Some(url.into()), 10, Settings::default());
        let mut out = Vec::new();
        seeder.start(&mut out);
        let (manifest, _) = texts(&out)[0].clone();
        out.clear();
        seeder.handle(&fetched(manifest, url, &media(0, 200, true)), &[7], &mut random(), &mut out);
        let (playlist, _) = texts(&out)[0].clone();
        out.clear();
        seeder.handle(&fetched(playlist, url, &media(0, 200, true)), &[7], &mut random(), &mut out);
        let mut handle = 1000;
        store_all(&mut seeder, &out, &mut handle);
        let peer = connect_viewer(&mut seeder);
        seeder.handle(&Event::PeerChannelOpen(peer), &[7], &mut random(), &mut Vec::new());
        (seeder, peer, handle)
    }

    /// Answers every segment fetch in `out` as stored in memory (no disk cache, or
    /// `noUseDiskCache`), with handles counting up.
    fn store_all(seeder: &mut Seeder, out: &[Command], handle: &mut u64) {
        for (fetch, url) in segments(out) {
            *handle += 1;
            let segment = SegmentInfo {
                handle: *handle,
                url,
                range: None,
                size: 10,
                tier: CacheTier::Memory,
            };
            seeder.handle(
                &Event::SegmentStored(SegmentStored { fetch, segment }),
                &[],
                &mut random(),
                &mut Vec::new(),
            );
        }
    }

    #[test]
    fn a_fetch_the_memory_budget_refused_makes_room_for_the_next_try() {
        let (mut seeder, peer, _) = vod_serving();
        let held = seeder.figures().1;
        let mut out = Vec::new();
        let far = PeerCommand::SegmentRequest { id: 100, request: 1, byte_from: None };
        seeder.handle(&message(peer, &far), &[7], &mut random(), &mut out);
        let [(fetch, _)] = segments(&out)[..] else { panic!("{out:?}") };
        out.clear();
        let refused = Event::FetchFailed(superpeer_guest::FetchFailed {
            fetch,
            status: Some(200),
            reason: "over the worker's memory budget of 41943040 bytes".into(),
        });
        seeder.handle(&refused, &[7], &mut random(), &mut out);
        assert_eq!(out.iter().filter(|c| matches!(c, Command::Evict(_))).count(), 1, "{out:?}");
        assert_eq!(seeder.figures().1, held - 1);
        // Other failures evict nothing.
        out.clear();
        seeder.handle(&message(peer, &far), &[7], &mut random(), &mut out);
        let [(fetch, _)] = segments(&out)[..] else { panic!("{out:?}") };
        out.clear();
        let failed = Event::FetchFailed(superpeer_guest::FetchFailed {
            fetch,
            status: Some(503),
            reason: "busy".into(),
        });
        seeder.handle(&failed, &[7], &mut random(), &mut out);
        assert!(!out.iter().any(|c| matches!(c, Command::Evict(_))), "{out:?}");
    }

    #[test]
    fn what_earlier_workers_cached_on_disk_is_found_held_and_announced() {
        let (mut seeder, peer, _) = vod_serving();
        let mut probes = Vec::new();
        let mut announced = Vec::new();
        loop {
            let mut out = Vec::new();
            seeder.flush(&mut out);
            announced.extend(sent(&out));
            let batch: Vec<(u64, String)> = out
                .iter()
                .filter_map(|c| match c {
                    Command::FetchSegment(f) if f.tier == CacheTier::DiskIfCached => {
                        Some((f.fetch, f.url.clone()))
                    }
                    _ => None,
                })
                .collect();
            assert!(batch.len() <= PROBE_BUDGET);
            // The disk has every other segment; the rest are not cached.
            for (fetch, url) in &batch {
                let n: u64 = url
                    .trim_start_matches("http://o.example/vod/seg")
                    .trim_end_matches(".ts")
                    .parse()
                    .unwrap();
                let event = if n.is_multiple_of(2) {
                    let segment = SegmentInfo {
                        handle: 5000 + n,
                        url: url.clone(),
                        range: None,
                        size: 10,
                        tier: CacheTier::Disk,
                    };
                    Event::SegmentStored(SegmentStored { fetch: *fetch, segment })
                } else {
                    Event::FetchFailed(superpeer_guest::FetchFailed {
                        fetch: *fetch,
                        status: None,
                        reason: "not cached".into(),
                    })
                };
                seeder.handle(&event, &[7], &mut random(), &mut Vec::new());
            }
            if batch.is_empty() {
                break;
            }
            probes.extend(batch);
        }
        assert_eq!(probes.len(), 200 - VOD_PREFETCH, "each segment not held asked about once");
        assert!(
            !probes.iter().any(|(_, u)| u.ends_with("seg5.ts")),
            "held ones are not asked about"
        );
        // Held and announced: the prefetched ones and every other one after them, beyond the
        // memory bound (the disk cache has its own).
        let Some(PeerCommand::SegmentsAnnouncement { loaded, .. }) = announced.pop() else {
            panic!("nothing announced")
        };
        assert_eq!(loaded.len(), VOD_PREFETCH + 95);
        assert!(loaded.len() > VOD_HELD && loaded.contains(&196));
        // A viewer asking for one is served from it.
        let ask = PeerCommand::SegmentRequest { id: 196, request: 9, byte_from: None };
        let mut out = Vec::new();
        seeder.handle(&message(peer, &ask), &[7], &mut random(), &mut out);
        assert!(
            out.iter().any(|c| matches!(c, Command::ServeSegment(s) if s.handle == 5196)),
            "{out:?}"
        );
    }

    #[test]
    fn vod_segments_are_fetched_where_viewers_ask_and_held_within_a_bound() {
        let (mut seeder, peer, mut handle) = vod_serving();
        assert_eq!(seeder.figures().1, VOD_PREFETCH);
        let mut out = Vec::new();
        let far = PeerCommand::SegmentRequest { id: 100, request: 1, byte_from: None };
        seeder.handle(&message(peer, &far), &[7], &mut random(), &mut out);
        assert_eq!(
            sent(&out),
            [PeerCommand::SegmentAbsent { id: 100, request: 1 }],
            "not held yet"
        );
        let wanted: Vec<String> = segments(&out).into_iter().map(|(_, u)| u).collect();
        assert_eq!(wanted, ["http://o.example/vod/seg100.ts"], "one fetch for one request");
        store_all(&mut seeder, &out, &mut handle);
        // Watching on, asking for each segment once told it is held: each request
        // fetches the next one not held, so the fetches stay ahead of the viewer.
        for id in 100..110 {
            out.clear();
            let ask = PeerCommand::SegmentRequest { id, request: id, byte_from: None };
            seeder.handle(&message(peer, &ask), &[7], &mut random(), &mut out);
            assert_eq!(segments(&out).len(), 1, "request {id}");
            store_all(&mut seeder, &out, &mut handle);
        }
        assert!(seeder.streams[0].segments.contains_key(&110), "one ahead of the viewer");

        // Viewers all over the VOD: the held set stays bounded, evicting the least used.
        let mut evictions = 0;
        for request in 0..100 {
            out.clear();
            let ask = PeerCommand::SegmentRequest {
                id: (37 * request) % 200,
                request: 200 + request,
                byte_from: None,
            };
            seeder.handle(&message(peer, &ask), &[7], &mut random(), &mut out);
            assert!(segments(&out).len() <= 1, "one fetch per request at most");
            assert!(
                seeder.streams[0].segments.len() <= VOD_HELD,
                "{}",
                seeder.streams[0].segments.len()
            );
            evictions += out.iter().filter(|c| matches!(c, Command::Evict(_))).count();
            store_all(&mut seeder, &out, &mut handle);
        }
        assert!(evictions > 0);
        // The segment just asked for is never the one evicted.
        assert!(seeder.streams[0].segments.contains_key(&((37 * 99) % 200)));
    }

    #[test]
    fn segments_an_earlier_instance_fetched_are_adopted_not_fetched_again() {
        let mut seeder =
            Seeder::new(MANIFEST.into(), Some(MANIFEST.into()), 10, Settings::default());
        let held = SegmentInfo {
            handle: 77,
            url: "http://o.example/live/seg101.ts".into(),
            range: None,
            size: 9,
            tier: CacheTier::Memory,
        };
        seeder.adopt(&[held]);
        let mut out = Vec::new();
        seeder.start(&mut out);
        let (manifest, _) = texts(&out)[0].clone();
        out.clear();
        seeder.handle(&fetched(manifest, MANIFEST, MASTER), &[], &mut random(), &mut out);
        let (playlist, url) = texts(&out)[0].clone();
        out.clear();
        seeder.handle(
            &fetched(playlist, &url, &media(100, 3, false)),
            &[],
            &mut random(),
            &mut out,
        );
        let fetched_urls: Vec<String> = segments(&out).into_iter().map(|(_, u)| u).collect();
        assert_eq!(
            fetched_urls,
            ["http://o.example/live/seg100.ts", "http://o.example/live/seg102.ts"]
        );
        assert_eq!(
            seeder.streams[0].segments.get(&101),
            Some(&Stored::Ready { handle: 77, size: 9, on_disk: false })
        );
    }

    #[test]
    fn a_failed_manifest_is_fetched_again_later() {
        let mut seeder =
            Seeder::new(MANIFEST.into(), Some(MANIFEST.into()), 10, Settings::default());
        let mut out = Vec::new();
        seeder.start(&mut out);
        let (manifest, _) = texts(&out)[0].clone();
        out.clear();
        let failed = Event::FetchFailed(superpeer_guest::FetchFailed {
            fetch: manifest,
            status: Some(503),
            reason: "busy".into(),
        });
        seeder.handle(&failed, &[], &mut random(), &mut out);
        assert_eq!(out, vec![timer_set(&seeder, Timer::Manifest, RETRY_MS)]);
        out.clear();
        fire(&mut seeder, Timer::Manifest, &[], &mut out);
        assert_eq!(texts(&out).len(), 1);
    }

    const LADDER: &str = "#EXTM3U
#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID=\"aud\",NAME=\"English\",LANGUAGE=\"en\",DEFAULT=YES,AUTOSELECT=YES,CHANNELS=\"2\",URI=\"audio/en.m3u8\"
#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID=\"aud\",NAME=\"Deutsch\",LANGUAGE=\"de\",DEFAULT=NO,AUTOSELECT=YES,CHANNELS=\"2\",URI=\"audio/de.m3u8\"
#EXT-X-STREAM-INF:BANDWIDTH=1280000,AVERAGE-BANDWIDTH=1000000,CODECS=\"avc1.4d401f,mp4a.40.2\",RESOLUTION=1280x720,FRAME-RATE=30.000,AUDIO=\"aud\"
720p.m3u8
#EXT-X-STREAM-INF:BANDWIDTH=640000,CODECS=\"avc1.42e01e,mp4a.40.2\",RESOLUTION=640x360,FRAME-RATE=30.000,AUDIO=\"aud\"
360p.m3u8
";

    /// The swarms a seeder joins for `manifest` (fetched from `url`): per stream's
    /// playlist, each generation's info hash.
    fn swarms_of(swarm_id: &str, url: &str, manifest: &str) -> Vec<(String, Identity, String)> {
        let mut seeder = Seeder::new(swarm_id.into(), Some(url.into()), 10, Settings::default());
        let mut out = Vec::new();
        seeder.start(&mut out);
        let (fetch, _) = texts(&out)[0].clone();
        seeder.handle(&fetched(fetch, url, manifest), &[], &mut random(), &mut out);
        seeder
            .swarms
            .iter()
            .map(|s| {
                let playlist = &seeder.streams[s.stream].playlist_url;
                (playlist.rsplit('/').next().unwrap().to_string(), s.identity, s.info_hash.clone())
            })
            .collect()
    }

    /// The vectors were computed with each package: real hls.js 1.6 parsed the
    /// playlists and the real p2p-media-loader-hlsjs and -core (2.2.2, 2.3.1) registered
    /// its streams with the tracker client.
    #[test]
    fn every_rendition_joins_each_generations_swarm_as_the_packages_compute_it() {
        let swarm_id = "https://example.com/vod/master.m3u8";
        let swarms = swarms_of(swarm_id, &format!("{swarm_id}?token=abc"), LADDER);
        let expected = [
            ("720p.m3u8", Identity::V23, "AnS0iQ+XnPQIi++JAPzZ"),
            ("720p.m3u8", Identity::V22, "0RTFWJuNQD8lA1boPJoS"),
            ("360p.m3u8", Identity::V23, "D4cJS/crA7kzsh28kPFX"),
            ("360p.m3u8", Identity::V22, "PP6oDmT7tqB6b5V9hvuE"),
            ("en.m3u8", Identity::V23, "p0OwFoXI6qK1t4uk8/xk"),
            ("en.m3u8", Identity::V22, "t5v5cTY4dyA1ZwpPghpB"),
            ("de.m3u8", Identity::V23, "A92qJz58tjuzH5F+A+Id"),
            ("de.m3u8", Identity::V22, "9abPF0qE/FqRSweqocA6"),
        ]
        .map(|(playlist, identity, hash)| (playlist.to_string(), identity, hash.to_string()));
        assert_eq!(swarms, expected);

        let alone = "https://example.com/vod/index.m3u8";
        assert_eq!(
            swarms_of(alone, alone, &media(0, 3, true)),
            [
                ("index.m3u8".to_string(), Identity::V23, "ph7Q4x8hlYriXawpglZd".to_string()),
                ("index.m3u8".to_string(), Identity::V22, "mI+2xx3zFrhIyaHh9Qj3".to_string()),
            ]
        );
    }

    #[test]
    fn audio_carried_by_the_first_level_moves_the_tracks_of_2_2_one_place() {
        // As hls.js lists it: the variants carry audio but name no group, so the audio
        // tracks come after a track of the main level's own.
        let ladder = LADDER.replace(",AUDIO=\"aud\"", "");
        let swarm_id = "https://example.com/vod/master.m3u8";
        let swarms = swarms_of(swarm_id, swarm_id, &ladder);
        let v22 = |kind, index: &str| {
            Identity::V22.info_hash(&swarm::stream_swarm_id(swarm_id, kind, index))
        };
        let audio: Vec<&String> = swarms
            .iter()
            .filter(|(p, i, _)| p.ends_with("n.m3u8") || p == "de.m3u8" && *i == Identity::V22)
            .filter(|(_, i, _)| *i == Identity::V22)
            .map(|(_, _, hash)| hash)
            .collect();
        assert_eq!(
            audio,
            [&v22(StreamKind::Secondary, "1"), &v22(StreamKind::Secondary, "2")],
            "{swarms:?}"
        );
        assert_eq!(swarms[1].2, v22(StreamKind::Main, "0"), "levels keep their places");
        // 2.3 names audio by its attributes: unchanged.
        assert_eq!(swarms[4].2, "p0OwFoXI6qK1t4uk8/xk");
    }

    #[test]
    fn a_seed_may_serve_one_generation_only() {
        let settings = Settings { identities: vec![Identity::V22], ..Settings::default() };
        let mut seeder = Seeder::new(MANIFEST.into(), Some(MANIFEST.into()), 10, settings);
        let mut out = Vec::new();
        seeder.start(&mut out);
        let (fetch, _) = texts(&out)[0].clone();
        seeder.handle(&fetched(fetch, MANIFEST, MASTER), &[], &mut random(), &mut out);
        assert_eq!(seeder.swarms.len(), 1);
        assert_eq!(seeder.swarms[0].identity, Identity::V22);
    }

    fn offers_in(out: &[Command]) -> Vec<PeerId> {
        out.iter()
            .filter_map(|c| match c {
                Command::PeerOffer(peer) => Some(*peer),
                _ => None,
            })
            .collect()
    }

    fn closed_in(out: &[Command]) -> Vec<(PeerId, String)> {
        out.iter()
            .filter_map(|c| match c {
                Command::PeerClose(c) => Some((c.peer, c.reason.clone())),
                _ => None,
            })
            .collect()
    }

    fn tracker_json(out: &[Command]) -> Vec<serde_json::Value> {
        out.iter()
            .filter_map(|c| match c {
                Command::TrackerSend(s) => Some(serde_json::from_str(&s.text).unwrap()),
                _ => None,
            })
            .collect()
    }

    /// The timer `key` set to fire after `after_ms`, as the seeder's timers name it.
    fn timer_set(seeder: &Seeder, key: Timer, after_ms: u64) -> Command {
        let timer = seeder.ctx.timers.id_of(&key).expect("that timer is pending");
        Command::TimerSet(superpeer_guest::TimerSet { timer, after_ms })
    }

    /// Fires `key`'s timer, as the instance does when the host reports it.
    fn fire(seeder: &mut Seeder, key: Timer, open: &[ConnId], out: &mut Vec<Command>) {
        let timer = seeder.ctx.timers.id_of(&key).expect("that timer is pending");
        assert_eq!(seeder.ctx.timers.fired(timer), Some(key.clone()));
        seeder.on_timer(key, open, &mut random(), out);
    }

    /// A turn at `now_ms` with these events and then the heartbeat, flushed.
    fn tick(seeder: &mut Seeder, now_ms: u64, events: &[Event]) -> Vec<Command> {
        let mut out = Vec::new();
        seeder.begin_turn(now_ms);
        for event in events {
            seeder.handle(event, &[7], &mut random(), &mut out);
        }
        fire(seeder, Timer::Reach, &[7], &mut out);
        seeder.flush(&mut out);
        out
    }

    /// A turn at `now_ms` with these events, flushed as the policy does.
    fn turn(seeder: &mut Seeder, now_ms: u64, events: &[Event]) -> Vec<Command> {
        let mut out = Vec::new();
        seeder.begin_turn(now_ms);
        for event in events {
            seeder.handle(event, &[7], &mut random(), &mut out);
        }
        seeder.flush(&mut out);
        out
    }

    fn tracker_text(text: String) -> Event {
        Event::TrackerText(TrackerText { conn: 7, text })
    }

    fn answer_from(info_hash: &str, viewer: &str, offer_id: &str) -> Event {
        tracker_text(format!(
            r#"{{"action":"announce","info_hash":"{info_hash}","peer_id":"{viewer}","offer_id":"{offer_id}","answer":{{"type":"answer","sdp":"v=0 from {viewer}"}}}}"#
        ))
    }

    fn offer_from(info_hash: &str, viewer: &str) -> Event {
        tracker_text(format!(
            r#"{{"action":"announce","info_hash":"{info_hash}","peer_id":"{viewer}","offer_id":"o-{viewer}","offer":{{"type":"offer","sdp":"v=0"}}}}"#
        ))
    }

    #[test]
    fn reaches_viewers_with_offers_of_its_own_within_the_budget() {
        let settings = Settings { identities: vec![Identity::V23], ..Settings::default() };
        let mut seeder = Seeder::new(MANIFEST.into(), Some(MANIFEST.into()), 3, settings);
        let mut out = Vec::new();
        seeder.start(&mut out);
        let (fetch, _) = texts(&out)[0].clone();
        seeder.handle(&fetched(fetch, MANIFEST, MASTER), &[], &mut random(), &mut out);
        let hash = seeder.swarms[0].info_hash.clone();

        // The tracker opens: offers at once (as many as could fill the budget of 3), and
        // the announce once the host has made them.
        out.clear();
        seeder.begin_turn(0);
        seeder.tracker_open(7, "ws://127.0.0.1:1/", &mut random(), &mut out);
        seeder.flush(&mut out);
        let offers = offers_in(&out);
        assert_eq!(offers.len(), 3, "{out:?}");
        assert!(tracker_json(&out).is_empty(), "the SDPs are not made yet");
        let ready: Vec<Event> = offers
            .iter()
            .map(|peer| Event::PeerOfferReady(SdpReady { peer: *peer, sdp: format!("sdp{peer}") }))
            .collect();
        let out = turn(&mut seeder, 10, &ready);
        let announce = tracker_json(&out).remove(0);
        assert_eq!(announce["event"], "started");
        assert_eq!(announce["numwant"], 3);
        assert_eq!(announce["info_hash"], hash.as_str());
        let offer_ids: Vec<String> = announce["offers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["offer_id"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(offer_ids.len(), 3);
        assert!(offer_ids.iter().all(|id| id.len() == 20));

        // The tracker counts five viewers. Viewer A answers twice (the tracker handed it
        // two of our offers): the second is withdrawn, never a second connection.
        let reply = format!(
            r#"{{"action":"announce","info_hash":"{hash}","interval":120,"complete":0,"incomplete":6}}"#
        );
        let a = "-PM0203-aaaaaaaaaaaa";
        let out = turn(
            &mut seeder,
            20,
            &[
                tracker_text(reply),
                answer_from(&hash, a, &offer_ids[0]),
                answer_from(&hash, a, &offer_ids[1]),
                offer_from(&hash, a),
            ],
        );
        assert_eq!(
            out.iter()
                .filter(|c| matches!(c, Command::PeerAcceptAnswer(a) if a.peer == offers[0]))
                .count(),
            1
        );
        assert_eq!(closed_in(&out), [(offers[1], "already connected to this viewer".to_string())]);
        assert!(!out.iter().any(|c| matches!(c, Command::PeerAnswer(_))), "A's own offer: ignored");

        // B answers, C offers: the budget of 3 is full; D's offer finds no room.
        let (b, c, d) = ("-PM0203-bbbbbbbbbbbb", "-PM0203-cccccccccccc", "-PM0203-dddddddddddd");
        let out =
            turn(&mut seeder, 30, &[answer_from(&hash, b, &offer_ids[2]), offer_from(&hash, c)]);
        assert!(
            out.iter().any(|c| matches!(c, Command::PeerAcceptAnswer(a) if a.peer == offers[2]))
        );
        let Some(Command::PeerAnswer(to_c)) =
            out.iter().find(|c| matches!(c, Command::PeerAnswer(_))).cloned()
        else {
            panic!("C's offer is answered: {out:?}")
        };
        let ready = Event::PeerAnswerReady(SdpReady { peer: to_c.peer, sdp: "v=0".into() });
        turn(&mut seeder, 35, &[ready]);
        // Only open channels fill the budget.
        let opened = [offers[0], offers[2], to_c.peer].map(Event::PeerChannelOpen);
        turn(&mut seeder, 38, &opened);
        let out = turn(&mut seeder, 40, &[offer_from(&hash, d)]);
        assert!(out.is_empty(), "{out:?}");
        let out = tick(&mut seeder, 1_500, &[]);
        assert!(offers_in(&out).is_empty(), "no offers while the budget is full: {out:?}");

        // A leaves: a round of offers for the two viewers not reached; unanswered, they
        // are withdrawn after their time.
        let closed = Event::PeerClosed(PeerClosed { peer: offers[0], reason: "bye".into() });
        let out = tick(&mut seeder, 2_000, &[closed]);
        let again = offers_in(&out);
        assert!(!again.is_empty() && again.len() <= 10, "{out:?}");
        let ready: Vec<Event> = again
            .iter()
            .map(|peer| Event::PeerOfferReady(SdpReady { peer: *peer, sdp: "sdp".into() }))
            .collect();
        let out = turn(&mut seeder, 2_010, &ready);
        let announce = tracker_json(&out).remove(0);
        assert_eq!(announce.get("event"), None, "started only once");
        let expiry = 2_000 + reach::OFFER_TIMEOUT_MS;
        let out = tick(&mut seeder, expiry, &[]);
        let withdrawn: Vec<PeerId> = closed_in(&out).into_iter().map(|(p, _)| p).collect();
        assert_eq!(withdrawn.len(), again.len(), "{out:?}");
        assert!(again.iter().all(|p| withdrawn.contains(p)));
        // A's offer is answered again now that there is room.
        let out = turn(&mut seeder, expiry + 10, &[offer_from(&hash, a)]);
        assert!(out.iter().any(|c| matches!(c, Command::PeerAnswer(_))));
    }

    #[test]
    fn viewers_of_every_generation_are_served_from_one_cache() {
        let (mut seeder, peer) = serving();
        seeder.handle(&Event::PeerChannelOpen(peer), &[7], &mut random(), &mut Vec::new());
        // A 2.2 viewer of the same rendition.
        let v22 = seeder.swarms[1].info_hash.clone();
        let mut out = Vec::new();
        seeder.handle(&offer_from(&v22, "-PM0202-zzzzzzzzzzzz"), &[7], &mut random(), &mut out);
        let Some(Command::PeerAnswer(answer)) = out.first().cloned() else { panic!("{out:?}") };
        let ready = Event::PeerAnswerReady(SdpReady { peer: answer.peer, sdp: "v=0".into() });
        out.clear();
        seeder.handle(&ready, &[7], &mut random(), &mut out);
        assert_eq!(tracker_json(&out)[0]["info_hash"], v22.as_str(), "answered in its swarm");
        out.clear();
        seeder.handle(&Event::PeerChannelOpen(answer.peer), &[7], &mut random(), &mut out);
        assert_eq!(
            sent(&out),
            [PeerCommand::SegmentsAnnouncement { loaded: vec![100, 101, 102], loading: vec![] }]
        );
        out.clear();
        let request = PeerCommand::SegmentRequest { id: 101, request: 1, byte_from: None };
        seeder.handle(&message(answer.peer, &request), &[7], &mut random(), &mut out);
        assert!(out.iter().any(|c| matches!(c, Command::ServeSegment(s) if s.handle == 51)));
        // A change reaches the viewers of both swarms.
        out.clear();
        seeder.handle(&Event::SegmentEvicted(50), &[7], &mut random(), &mut out);
        seeder.flush(&mut out);
        assert_eq!(sent(&out).len(), 2);
    }

    #[test]
    fn a_vod_viewer_met_mid_stream_gets_what_follows_its_newest_segment() {
        let (mut seeder, peer, _) = vod_serving();
        let mut out = Vec::new();
        let has = PeerCommand::SegmentsAnnouncement { loaded: vec![40, 41, 42], loading: vec![43] };
        seeder.handle(&message(peer, &has), &[7], &mut random(), &mut out);
        let wanted: Vec<String> = segments(&out).into_iter().map(|(_, u)| u).collect();
        assert_eq!(wanted, ["http://o.example/vod/seg44.ts"], "one fetch for one message");
        // At the end of the stream there is nothing ahead to fetch.
        out.clear();
        let done = PeerCommand::SegmentsAnnouncement { loaded: vec![199], loading: vec![] };
        seeder.handle(&message(peer, &done), &[7], &mut random(), &mut out);
        assert!(segments(&out).is_empty());
    }

    #[test]
    fn positions_of_2_2_are_as_hls_js_lists_renditions() {
        let lines: Vec<&str> = LADDER.lines().collect();
        let part = |range: std::ops::Range<usize>| lines[range].join("\n") + "\n";
        let (audio, l720, l360) = (part(1..3), part(3..5), part(5..7));
        let unknown = "#EXT-X-STREAM-INF:BANDWIDTH=3000000,CODECS=\"xyz1.1,mp4a.40.2\",RESOLUTION=1920x1080,AUDIO=\"aud\"\n1080p.m3u8\n";
        let no_group = |l: &str| l.replace(",AUDIO=\"aud\"", "");
        for (case, manifest, expected) in [
            (
                "b",
                format!("#EXTM3U\n{audio}{unknown}{l720}{l360}"),
                [
                    ("720p.m3u8", "auyVDr2/ZI+cjNVWOhV/"),
                    ("360p.m3u8", "nF32ef6CYpOfGwlCwc4U"),
                    ("en.m3u8", "Lt0FJQTkOao4JtyLr/3W"),
                    ("de.m3u8", "tBwo4jqAenrWwr1lK9Q4"),
                ],
            ),
            (
                "c",
                format!("#EXTM3U\n{audio}{}{}", no_group(&l720), no_group(&l360)),
                [
                    ("720p.m3u8", "d4A9UKA4MogM+TBPvUUq"),
                    ("360p.m3u8", "bEvwxJrgbLIXIVY8e5IK"),
                    ("en.m3u8", "L97GimYvLE8BbuJ2ay+s"),
                    ("de.m3u8", "v0B3xQILWn0G+leCf9QX"),
                ],
            ),
            (
                "d",
                format!("#EXTM3U\n{audio}{l360}{l720}"),
                [
                    ("360p.m3u8", "h4ZwcnWqLpgIkxwg2pAK"),
                    ("720p.m3u8", "ONd9waEaZ/jk8X1W5Uny"),
                    ("en.m3u8", "xFKPLVSegFZlgGeXNR1R"),
                    ("de.m3u8", "EuaK545umhKcLtljtAUL"),
                ],
            ),
        ] {
            let swarm_id = format!("https://example.com/{case}/master.m3u8");
            let v22: Vec<(String, String)> = swarms_of(&swarm_id, &swarm_id, &manifest)
                .into_iter()
                .filter(|(_, identity, _)| *identity == Identity::V22)
                .map(|(playlist, _, hash)| (playlist, hash))
                .collect();
            let expected: Vec<(String, String)> =
                expected.iter().map(|(p, h)| (p.to_string(), h.to_string())).collect();
            assert_eq!(v22, expected, "case {case}");
        }
    }
}
