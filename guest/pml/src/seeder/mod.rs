//! What the default policy does for one channel: read the stream's playlists, work out
//! the swarms viewers of every rendition are in (one per generation of p2p-media-loader
//! it serves), announce in each on every open tracker with offers of our own until it
//! reaches the swarm, answer the offers viewers send, and keep the segments viewers will
//! ask for in the host's cache, one copy for all of a rendition's swarms.
//!
//! Pure state machine: events in, commands out, time passed in at each turn and timers
//! the host fires. Randomness (peer ids, offer ids) comes in as a function.
//!
//! This file has the state, the turn and reaching swarms; `streams.rs` reads playlists
//! and keeps each stream's window of segments; `peers.rs` answers trackers and viewers.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::{Deserialize, Serialize};
use superpeer_guest::{
    Allowance, CacheTier, Command, ConnId, Event, FetchId, FetchSegment, FetchText, HostState,
    PeerAcceptAnswer, PeerAnswer, PeerClose, PeerId, SegmentHandle, TrackerSend,
};

use superpeer_guest::host::info as log;
use superpeer_segments::{LIVE_WINDOW, RETRY_MS, VOD_HELD, VOD_PREFETCH, live_reload_ms};

use crate::announce::{self, AnnounceEvent, TrackerMessage};
use crate::context::{Context, Timer};
use crate::playlist::{self, MediaPlaylist};
use crate::reach::{self, LinkKey, Need, Plan, Reach};
use crate::settings::Settings;
use crate::swarm::{self, Identity, Rendition, StreamKind};
use crate::wire::{self, Joiner, PeerCommand};

mod peers;
mod streams;

use peers::close;

/// How often the seeder's heartbeat ([`Timer::Reach`]) comes.
const REACH_TICK_MS: u64 = reach::FAST_ROUND_GAP_MS;
/// Re-announce interval until a tracker says otherwise (p2p-media-loader's default).
const DEFAULT_ANNOUNCE_SECONDS: u64 = 30;
/// How many fetches may be in flight before asking the disk cache about more VOD
/// segments waits: well under the host's limit, so a probe is never turned away.
const PROBE_BUDGET: usize = 64;
/// A segment whose fetch failed is not fetched again for this long, doubled after each
/// further failure up to [`SEGMENT_RETRY_MAX_MS`]: an origin that fails a segment (or
/// sends one that never ends) is not asked for it at every reload.
const SEGMENT_RETRY_MS: u64 = 1_000;
const SEGMENT_RETRY_MAX_MS: u64 = 30_000;
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
/// The DataChannel message a segment's bytes are sent in. Viewers join data messages
/// of any size, and the WebRTC stack keeps, per viewer and for good, queues as deep as
/// the largest message it ever split into packets: at p2p-media-loader's own 64 KiB
/// that cost each viewer served about 80 KB more than 16 KiB does (measured at 100
/// and 500 viewers), for no measurable CPU.
const SEGMENT_CHUNK: u32 = 16 << 10;
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
    /// Messages it may still send at once (see [`MESSAGE_BURST`]).
    allowance: Allowance,
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
            allowance: Allowance::full(MESSAGE_BURST, now_ms),
            serving: None,
        }
    }

    /// Counts one message against the viewer's allowance; false once it sends faster
    /// than any viewer needs to.
    fn allowed(&mut self, now_ms: u64) -> bool {
        self.allowance.take(now_ms, MESSAGES_PER_SECOND, MESSAGE_BURST)
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

/// A short peer command as the one DataChannel message it fits in.
fn one_message(command: &PeerCommand) -> Option<Vec<u8>> {
    match wire::encode(command, wire::MAX_MESSAGE).map(Vec::into_iter) {
        Ok(mut messages) => messages.next().filter(|_| messages.len() == 0),
        Err(error) => {
            log(&format!("cannot encode {command:?}: {error}"));
            None
        }
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
    offer_allowance: HashMap<ConnId, Allowance>,
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
        self.offer_allowance.entry(conn).or_insert(Allowance::full(OFFER_BURST, now_ms)).take(
            now_ms,
            OFFER_RATE,
            OFFER_BURST,
        )
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
}

#[cfg(test)]
mod tests;
