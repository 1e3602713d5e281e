//! What the default policy does for one channel: read the stream's playlists, work out
//! the swarms viewers of every rendition are in (one per generation of p2p-media-loader
//! it serves), announce in each on every open tracker with offers of our own until it
//! reaches the swarm, answer the offers viewers send, and keep the segments viewers will
//! ask for in the host's cache, one copy for all of a rendition's swarms.
//!
//! Pure state machine: events in, commands out, time passed in at each turn and timers
//! the host fires. Randomness (peer ids, offer ids) comes in as a function.
//!
//! This file has the state, the turn and reaching swarms; `streams.rs` reads the
//! manifest into renditions and swarms (their segments are kept by the shared
//! `superpeer-segments` crate, a level per rendition); `peers.rs` answers trackers and
//! viewers; `st01.rs` reads the snapshots of builds before that crate.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use serde::{Deserialize, Serialize};
use superpeer_guest::{
    Allowance, Command, ConnId, Event, FetchId, FetchText, HostState, PeerAcceptAnswer, PeerAnswer,
    PeerClose, PeerId, SegmentHandle, TrackerSend,
};

use superpeer_guest::host::info as log;
use superpeer_segments::{
    Announced, Change, Held, Lend, Numbering, RETRY_MS, StreamTimer, Streams,
};

use crate::announce::{self, AnnounceEvent, TrackerMessage};
use crate::context::{Context, Timer};
use crate::playlist;
use crate::reach::{self, LinkKey, Need, Plan, Reach};
use crate::settings::Settings;
use crate::swarm::{self, Identity, Rendition, StreamKind};
use crate::wire::{self, Joiner, PeerCommand};

mod peers;
pub(crate) mod st01;
mod streams;

use peers::close;

/// How often the seeder's heartbeat ([`Timer::Reach`]) comes.
const REACH_TICK_MS: u64 = reach::FAST_ROUND_GAP_MS;
/// Re-announce interval until a tracker says otherwise (p2p-media-loader's default).
const DEFAULT_ANNOUNCE_SECONDS: u64 = 30;
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
/// How often a scout scrapes its swarms on a tracker: the host stops it once it has said
/// a size, so this is how long a lost answer is waited for.
const SCRAPE_EVERY_MS: u64 = 5_000;
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

/// What a stream (a level of `streams`) has, as viewers see it: held segments are
/// loaded; those being fetched are "loading over HTTP".
fn announcement(streams: &Streams, level: usize) -> PeerCommand {
    let (mut loaded, mut loading) = (Vec::new(), Vec::new());
    for (id, announced) in streams.announced(level) {
        match announced {
            Announced::Held => loaded.push(id),
            Announced::Loading => loading.push(id),
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
    /// Every rendition's segments, a level each; a swarm names its rendition's level.
    streams: Streams,
    /// Levels whose segments changed since their viewers were last told.
    changed: BTreeSet<usize>,
    swarms: Vec<Swarm>,
    answering: HashMap<PeerId, PendingAnswer>,
    peers: HashMap<PeerId, Viewer>,
    /// Every viewer connected or being connected, by swarm and peer id: never two
    /// connections to one viewer (it would destroy the second anyway).
    remotes: HashSet<(usize, String)>,
    max_peers: usize,
    reach: Reach,
    /// The time of the current turn (the host's monotonic clock).
    now_ms: u64,
    /// Each tracker connection's offer allowance and when it was last counted (a new
    /// instance starts every tracker with a full one).
    #[serde(skip)]
    offer_allowance: HashMap<ConnId, Allowance>,
    /// The swarms' size as said to the host, and a scout's scrapes.
    #[serde(skip)]
    measuring: Measuring,
}

/// What the seeder says of its swarms' size (`swarm-size`), and whether it only
/// measures them (a scout scrapes its swarms instead of joining them). From the seed
/// and the trackers, never in a snapshot (the layout stays `pml-st02`): a new instance
/// measures again.
#[derive(Debug, Default)]
pub(crate) struct Measuring {
    scout: bool,
    /// A scout's last scrape of each swarm on each tracker.
    scraped: BTreeMap<LinkKey, u64>,
    /// When each tracker was last scraped, and when the first scrape went.
    scraped_at: HashMap<ConnId, u64>,
    first_scrape_ms: Option<u64>,
    /// The size last said to the host.
    said: Option<u64>,
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
        scout: bool,
    ) -> Self {
        Seeder {
            measuring: Measuring { scout, ..Measuring::default() },
            ctx: Context::default(),
            swarm_id,
            manifest_url,
            manifest_fetch: None,
            identities: settings.identities,
            streams: Streams::new(None, Numbering::VodPosition),
            changed: BTreeSet::new(),
            swarms: Vec::new(),
            answering: HashMap::new(),
            peers: HashMap::new(),
            remotes: HashSet::new(),
            max_peers,
            reach: Reach::new(settings.offers),
            now_ms: 0,
            offer_allowance: HashMap::new(),
        }
    }

    /// Takes note of segments the host already holds (from `host-state`): each is
    /// taken by the rendition that lists it once its playlist is read.
    pub(crate) fn adopt(
        &mut self,
        segments: &[superpeer_guest::SegmentInfo],
        out: &mut Vec<Command>,
    ) {
        self.streams(out, |streams, lend| streams.adopt(segments, lend));
    }

    /// Lends the streams part this seeder's ids and timers for one call; the levels it
    /// says changed are announced to their viewers at the end of the turn.
    fn streams<R>(
        &mut self,
        out: &mut Vec<Command>,
        part: impl FnOnce(&mut Streams, &mut Lend<'_, Timer>) -> R,
    ) -> R {
        let mut changes = Vec::new();
        let Context { ids, timers } = &mut self.ctx;
        let mut lend = Lend {
            ids,
            timers,
            name: stream_timer,
            now_ms: self.now_ms,
            out,
            changes: &mut changes,
        };
        let result = part(&mut self.streams, &mut lend);
        self.changed.extend(changes.iter().map(Change::level));
        result
    }

    /// An earlier instance's state (from its snapshot) under this instance's seed: the
    /// settings and limits come from `fresh`, made from the seed as it is now.
    pub(crate) fn with_seed_of(mut self, fresh: Seeder) -> Seeder {
        self.swarm_id = fresh.swarm_id;
        self.manifest_url = fresh.manifest_url;
        self.identities = fresh.identities;
        self.max_peers = fresh.max_peers;
        self.measuring.scout = fresh.measuring.scout;
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
                send(*peer, &announcement(&self.streams, self.swarms[viewer.swarm].stream), out);
            }
        }

        if self.manifest_fetch.is_some_and(|fetch| !state.fetches.contains(&fetch)) {
            self.manifest_fetch = None;
        }
        // Every playlist is read again (the snapshot has no segment sources), which sets
        // again any reload timer that was lost.
        self.streams(out, |streams, lend| streams.resume(state, lend));
        for key in lost {
            match key {
                Timer::Manifest => out.push(self.set_timer(Timer::Manifest, 0)),
                Timer::Reach | Timer::Reload(_) | Timer::Reconnect(_) => {}
            }
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

    /// The first thing to do: read the manifest, and start the heartbeat.
    pub(crate) fn start(&mut self, out: &mut Vec<Command>) {
        out.push(self.set_timer(Timer::Reach, REACH_TICK_MS));
        self.fetch_manifest(out);
    }

    fn fetch_manifest(&mut self, out: &mut Vec<Command>) {
        if self.manifest_fetch.is_none()
            && self.swarms.is_empty()
            && let Some(url) = self.manifest_url.clone()
        {
            let fetch = self.id();
            out.push(Command::FetchText(FetchText { fetch, url }));
            self.manifest_fetch = Some(fetch);
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
        // A scout was never a member.
        let open_trackers = if self.measuring.scout { &[] } else { open_trackers };
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
            Event::TextFetched(fetched) if self.manifest_fetch == Some(fetched.fetch) => {
                self.manifest_fetch = None;
                self.on_manifest(&fetched.url, &fetched.text, open_trackers, random, out);
            }
            Event::TextFetched(fetched) => self.streams(out, |streams, lend| {
                streams.on_text(fetched.fetch, &fetched.url, &fetched.text, lend)
            }),
            Event::FetchFailed(failed) if self.manifest_fetch == Some(failed.fetch) => {
                self.manifest_fetch = None;
                out.push(self.set_timer(Timer::Manifest, RETRY_MS));
            }
            Event::FetchFailed(failed) => self.streams(out, |streams, lend| {
                streams.on_failed(failed.fetch, &failed.reason, lend)
            }),
            Event::SegmentStored(stored) => self.streams(out, |streams, lend| {
                streams.on_stored(stored.fetch, &stored.segment, lend)
            }),
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
                self.streams(out, |streams, lend| streams.on_evicted(*handle, lend));
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
                    let level = self.swarms[viewer.swarm].stream;
                    send(*peer, &announcement(&self.streams, level), out);
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

    /// What a swarm does on a tracker now: offers, a plain announce, or nothing; for a
    /// scout, a scrape of every swarm when one is due.
    fn plan(&mut self, key: LinkKey, random: &mut dyn FnMut() -> u64, out: &mut Vec<Command>) {
        if self.measuring.scout {
            return self.scrape(key.1, out);
        }
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

impl Seeder {
    /// A scout's scrape of all its swarms on tracker `conn`, every [`SCRAPE_EVERY_MS`].
    fn scrape(&mut self, conn: ConnId, out: &mut Vec<Command>) {
        let due = self
            .measuring
            .scraped_at
            .get(&conn)
            .is_none_or(|at| self.now_ms >= at + SCRAPE_EVERY_MS);
        if self.swarms.is_empty() || !due {
            return;
        }
        self.measuring.scraped_at.insert(conn, self.now_ms);
        self.measuring.first_scrape_ms.get_or_insert(self.now_ms);
        let hashes: Vec<&str> = self.swarms.iter().map(|s| s.info_hash.as_str()).collect();
        out.push(Command::TrackerSend(TrackerSend { conn, text: announce::scrape(&hashes) }));
    }

    /// How many viewers the stream's swarms hold, us not counted: each swarm's largest
    /// count among the trackers (a viewer announces on all of them), summed over the
    /// swarms (a viewer is in one at a time). None until a tracker has counted any; for
    /// a scout, until every tracker it scraped has answered for every swarm (or a
    /// scrape's wait has passed: a tracker that never answers must not silence it).
    fn swarm_size(&self) -> Option<u64> {
        let measuring = &self.measuring;
        let counted: Vec<(LinkKey, u64)> = if measuring.scout {
            let answered = measuring.scraped_at.keys().all(|conn| {
                (0..self.swarms.len()).all(|swarm| measuring.scraped.contains_key(&(swarm, *conn)))
            });
            let waited =
                measuring.first_scrape_ms.is_some_and(|at| self.now_ms >= at + SCRAPE_EVERY_MS);
            if !answered && !waited {
                return None;
            }
            measuring.scraped.iter().map(|(key, size)| (*key, *size)).collect()
        } else {
            self.reach.others().collect()
        };
        let mut largest: BTreeMap<usize, u64> = BTreeMap::new();
        for ((swarm, _), size) in counted {
            let entry = largest.entry(swarm).or_default();
            *entry = (*entry).max(size);
        }
        (!largest.is_empty()).then(|| largest.values().fold(0u64, |a, b| a.saturating_add(*b)))
    }

    /// Says the swarm size to the host when it changed.
    fn say_swarm_size(&mut self, out: &mut Vec<Command>) {
        let size = self.swarm_size();
        if let Some(viewers) = size
            && size != self.measuring.said
        {
            self.measuring.said = size;
            superpeer_guest::swarm_size(out, viewers);
        }
    }
}

/// The seeder's name for a timer of its streams.
fn stream_timer(timer: StreamTimer) -> Timer {
    match timer {
        StreamTimer::Manifest => Timer::Manifest,
        StreamTimer::Reload(level) => Timer::Reload(level),
    }
}

#[cfg(test)]
mod tests;
