//! One instance of the default policy, free of host calls: what `init`, `handle` and
//! `snapshot` do, with time and randomness passed in, so whole lives of instances
//! (swaps and faults included) are tested natively.
//!
//! Continuity: a new instance (a hot swap, a restart after a fault, a rollback) takes
//! over from the last snapshot of the one it replaces, squared with what the host has
//! now. Viewers it knows keep being served on the same connections; peers it does not
//! know (connected after that snapshot) are closed, so they reconnect at once.

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use superpeer_guest::{Command, ConnId, Event, HostState, Ids, PeerClose, SeedConfig};

use crate::context::{self, Timer};
use crate::seeder::Seeder;
use crate::seeder::st01::SeederSt01;
use crate::settings;
use superpeer_guest::links::Links as Trackers;

/// What a snapshot holds.
#[derive(Serialize)]
struct SnapshotRef<'a> {
    trackers: &'a Trackers,
    seeder: &'a Seeder,
}

#[derive(Deserialize)]
struct Snapshot {
    trackers: Trackers,
    seeder: Seeder,
}

/// What a snapshot of a build before the shared segments crate holds.
#[derive(Deserialize)]
struct SnapshotSt01 {
    trackers: Trackers,
    seeder: SeederSt01,
}

impl Snapshot {
    /// This build's snapshot, or an earlier layout's it still reads.
    fn read(bytes: &[u8]) -> Option<Snapshot> {
        context::decode::<Snapshot>(bytes).or_else(|| {
            let old: SnapshotSt01 = context::decode_st01(bytes)?;
            Some(Snapshot { trackers: old.trackers, seeder: old.seeder.into_current() })
        })
    }
}

#[derive(Debug)]
pub struct Instance {
    trackers: Trackers,
    seeder: Seeder,
    /// What taking over asks for, done at `started`.
    taking_over: Vec<Command>,
}

impl Instance {
    /// Starts an instance for `config`, taking over from `prior` (an earlier instance's
    /// snapshot) and the host's `state`. `random` is one draw of the host's randomness.
    pub fn init(
        config: &SeedConfig,
        prior: Option<&[u8]>,
        state: &HostState,
        random: u64,
    ) -> Result<Instance, String> {
        let settings = settings::parse(&config.settings)?;
        let swarm_id = swarm_id(&config.channel, config.manifest_url.as_deref());
        let max_connections = config.max_connections as usize;
        let fresh = Seeder::new(
            swarm_id,
            config.manifest_url.clone(),
            max_connections,
            settings,
            superpeer_guest::is_scout(config),
        );
        let mut taking_over = Vec::new();
        let (trackers, mut seeder) = match prior.and_then(Snapshot::read) {
            Some(saved) => {
                let mut seeder = saved.seeder.with_seed_of(fresh);
                seeder.ctx.ids = Ids::resume(Some(&seeder.ctx.ids), state, random);
                let lost = seeder.ctx.timers.resume(state);
                let reconnect: Vec<usize> = lost
                    .iter()
                    .filter_map(|key| match key {
                        Timer::Reconnect(index) => Some(*index),
                        _ => None,
                    })
                    .collect();
                let trackers = Trackers::resume(
                    Some(saved.trackers),
                    &config.trackers,
                    state,
                    &reconnect,
                    &mut taking_over,
                );
                let live: Vec<ConnId> = trackers.live().collect();
                seeder.reconcile(state, &lost, &live, &mut taking_over);
                (trackers, seeder)
            }
            None => {
                let mut seeder = fresh;
                seeder.ctx.ids = Ids::resume(None, state, random);
                let trackers =
                    Trackers::resume(None, &config.trackers, state, &[], &mut taking_over);
                seeder.adopt(&state.segments, &mut taking_over);
                // Viewers of an instance whose state could not be read (another policy's):
                // closed, so they connect again at once and are served from the start.
                taking_over.extend(state.peers.iter().map(|p| {
                    Command::PeerClose(PeerClose {
                        peer: p.peer,
                        reason: "taken over without its state: connect again".into(),
                    })
                }));
                (trackers, seeder)
            }
        };
        for (conn, url) in trackers.open_with_urls() {
            seeder.tracker_adopted(conn, url);
        }
        Ok(Instance { trackers, seeder, taking_over })
    }

    /// Everything that happened since the last call, at `now_ms`; returns what to do.
    pub fn handle(
        &mut self,
        events: Vec<Event>,
        now_ms: u64,
        random: &mut dyn FnMut() -> u64,
    ) -> Vec<Command> {
        let mut out = Vec::new();
        self.seeder.begin_turn(now_ms);
        self.trackers.start(&mut self.seeder.ctx.ids, &mut out);
        for event in events {
            match &event {
                Event::Started => {
                    out.append(&mut self.taking_over);
                    self.seeder.start(&mut out);
                }
                Event::Stopping => {
                    let open: Vec<ConnId> = self.trackers.open().collect();
                    self.seeder.stop(&open, &mut out);
                    self.trackers.stop(&mut out);
                    continue;
                }
                Event::TrackerConnected(conn) => {
                    self.trackers.connected(*conn);
                    if let Some(url) = self.trackers.url(*conn) {
                        self.seeder.tracker_open(*conn, &url, random, &mut out);
                    }
                }
                Event::TrackerClosed(closed) => self.trackers.closed(
                    closed.conn,
                    &closed.reason,
                    (&mut self.seeder.ctx.ids, &mut self.seeder.ctx.timers),
                    Timer::Reconnect,
                    &mut out,
                ),
                Event::TimerFired(timer) => {
                    match self.seeder.ctx.timers.fired(*timer) {
                        Some(Timer::Reconnect(index)) => {
                            self.trackers.retry(index, &mut self.seeder.ctx.ids, &mut out)
                        }
                        Some(key) => {
                            let open: Vec<ConnId> = self.trackers.open().collect();
                            self.seeder.on_timer(key, &open, random, &mut out);
                        }
                        // A timer of an instance whose state could not be read.
                        None => {}
                    }
                    continue;
                }
                _ => {}
            }
            let open: Vec<ConnId> = self.trackers.open().collect();
            self.seeder.handle(&event, &open, random, &mut out);
        }
        self.seeder.flush(&mut out);
        out
    }

    pub fn snapshot(&self) -> Vec<u8> {
        context::encode(&SnapshotRef { trackers: &self.trackers, seeder: &self.seeder })
    }
}

/// The swarm id viewers use: what the channel id encodes (p2p-media-loader's default is
/// the manifest URL without its query), else the manifest URL itself.
fn swarm_id(channel: &str, manifest_url: Option<&str>) -> String {
    use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
    let trimmed = channel.trim().trim_end_matches('=');
    STANDARD_NO_PAD
        .decode(trimmed)
        .or_else(|_| URL_SAFE_NO_PAD.decode(trimmed))
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .filter(|id| !id.is_empty())
        .unwrap_or_else(|| {
            manifest_url
                .map_or(channel.to_string(), |url| url.split('?').next().unwrap_or(url).to_string())
        })
}

#[cfg(test)]
mod tests {
    //! Whole lives of the policy against a model of the host, a tracker and viewers, with
    //! hot swaps and faults at random points: ids are never reused, and a viewer that is
    //! connected is answered whenever it asks (or closed, and reconnects).

    use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};

    use superpeer_guest::{
        CacheTier, PeerState, SdpReady, SegmentInfo, SegmentSent, SegmentStored, TextFetched,
        TrackerState, TrackerText,
    };

    use super::*;
    use crate::wire::{self, PeerCommand};

    const MANIFEST: &str = "http://o.example/vod/master.m3u8";
    const MASTER: &str = "#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=1280000,CODECS=\"avc1.4d401f\",RESOLUTION=1280x720\n720p.m3u8\n";
    const SEGMENTS: u64 = 30;
    const VIEWERS: usize = 12;

    fn media() -> String {
        let mut text = String::from("#EXTM3U\n#EXT-X-TARGETDURATION:2\n");
        for n in 0..SEGMENTS {
            text.push_str(&format!("#EXTINF:2,\nseg{n}.ts\n"));
        }
        text + "#EXT-X-ENDLIST\n"
    }

    /// A small random number generator (xorshift), seeded per run.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n.max(1)
        }
        fn chance(&mut self, percent: u64) -> bool {
            self.below(100) < percent
        }
    }

    #[derive(Debug)]
    enum Outgoing {
        Message(Vec<u8>),
        /// A serve and its end, as the host pairs them.
        Serve(u64, Option<Vec<u8>>),
    }

    /// A viewer: its peer id, and its connection to the policy, if any.
    #[derive(Debug, Default)]
    struct Viewer {
        peer_id: String,
        /// The policy's peer for it.
        peer: Option<u64>,
        open: bool,
        /// What the policy told it it has.
        announced: BTreeSet<i64>,
        /// A request waiting for its answer.
        asking: Option<(i64, i64)>,
        /// When it asked: after 2 s without an answer it gives up, as the library does.
        asked_at: u64,
        /// Bytes came since the header of what it asks for: an end before them is a
        /// short segment, for which the library drops the connection.
        bytes_since_header: bool,
    }

    /// The host, the tracker, the origin and the viewers, as the policy meets them.
    struct World {
        rng: Rng,
        now: u64,
        events: Vec<Event>,
        trackers: BTreeMap<u64, bool>,
        /// Peers: open, serving handles, the viewer's index.
        peers: BTreeMap<u64, (bool, BTreeSet<u64>, Option<usize>)>,
        fetches: BTreeMap<u64, (String, bool)>,
        segments: BTreeMap<u64, SegmentInfo>,
        timers: BTreeMap<u64, u64>,
        next_handle: u64,
        viewers: Vec<Viewer>,
        /// Our offers waiting at the tracker: (peer, offer id, info hash).
        offers: Vec<(u64, String, String)>,
        /// The swarm, once the policy announced in it.
        info_hash: Option<String>,
        /// Every id the policy ever chose, and the timers it has pending.
        used: HashSet<u64>,
        requests: u64,
        answered: u64,
        /// Peers open before a hot swap: the new instance must close none of them.
        kept: BTreeSet<u64>,
        /// What is queued for each peer, sent in order as the host does: a serve ends in
        /// a later step, and the messages behind it wait for it.
        queues: BTreeMap<u64, VecDeque<Outgoing>>,
        /// Requests a connected viewer gave up on (no end in 2 s): a viewer left waiting.
        gave_up: u64,
        /// Ends of segments heard before any of their bytes.
        short_ends: u64,
    }

    impl World {
        fn new(seed: u64) -> World {
            World {
                rng: Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1),
                now: 0,
                events: vec![Event::Started],
                trackers: BTreeMap::new(),
                peers: BTreeMap::new(),
                fetches: BTreeMap::new(),
                segments: BTreeMap::new(),
                timers: BTreeMap::new(),
                next_handle: 1,
                viewers: (0..VIEWERS)
                    .map(|i| Viewer {
                        peer_id: format!("-PM0203-viewer{i:06}"),
                        ..Viewer::default()
                    })
                    .collect(),
                offers: Vec::new(),
                info_hash: None,
                used: HashSet::new(),
                requests: 0,
                answered: 0,
                kept: BTreeSet::new(),
                queues: BTreeMap::new(),
                gave_up: 0,
                short_ends: 0,
            }
        }

        fn state(&self) -> HostState {
            HostState {
                trackers: self
                    .trackers
                    .iter()
                    .map(|(conn, open)| TrackerState {
                        conn: *conn,
                        url: "ws://t/".into(),
                        open: *open,
                    })
                    .collect(),
                peers: self
                    .peers
                    .iter()
                    .map(|(peer, (open, serving, _))| PeerState {
                        peer: *peer,
                        open: *open,
                        serving: serving.iter().copied().collect(),
                    })
                    .collect(),
                fetches: self.fetches.keys().copied().collect(),
                requests: vec![],
                segments: self.segments.values().cloned().collect(),
                timers: self
                    .timers
                    .iter()
                    .map(|(t, due)| (*t, due.saturating_sub(self.now)))
                    .collect(),
            }
        }

        /// A new id from the policy: never seen before.
        fn fresh(&mut self, id: u64, what: &str) {
            assert!(self.used.insert(id), "{what} id {id} used again");
        }

        fn viewer_of(&self, peer: u64) -> Option<usize> {
            self.peers.get(&peer).and_then(|(_, _, v)| *v)
        }

        fn drop_peer(&mut self, peer: u64) {
            self.queues.remove(&peer);
            if let Some((_, _, Some(v))) = self.peers.remove(&peer) {
                let viewer = &mut self.viewers[v];
                if viewer.peer == Some(peer) {
                    viewer.peer = None;
                    viewer.open = false;
                    viewer.asking = None;
                    viewer.announced.clear();
                }
            }
        }

        /// Carries out what the policy asked; checks the requests it was handed were answered.
        fn carry_out(&mut self, commands: Vec<Command>, asked: &[(usize, i64, i64)]) {
            let all = format!("{commands:?}");
            let mut answered: HashSet<usize> = HashSet::new();
            for command in commands {
                match command {
                    Command::TrackerConnect(c) => {
                        self.fresh(c.conn, "connection");
                        self.trackers.insert(c.conn, false);
                        self.events.push(Event::TrackerConnected(c.conn));
                    }
                    Command::TrackerSend(s) if self.trackers.get(&s.conn) == Some(&true) => {
                        self.tracker_hears(s.conn, &s.text);
                    }
                    Command::TrackerClose(conn) => {
                        self.trackers.remove(&conn);
                    }
                    Command::PeerOffer(peer) => {
                        self.fresh(peer, "peer");
                        self.peers.insert(peer, (false, BTreeSet::new(), None));
                        let sdp = format!("offer {peer}");
                        self.events.push(Event::PeerOfferReady(SdpReady { peer, sdp }));
                    }
                    Command::PeerAnswer(a) => {
                        self.fresh(a.peer, "peer");
                        let viewer: usize =
                            a.offer.trim_start_matches("offer-of-").parse().unwrap();
                        self.peers.insert(a.peer, (false, BTreeSet::new(), Some(viewer)));
                        self.viewers[viewer].peer = Some(a.peer);
                        let sdp = format!("answer {}", a.peer);
                        self.events.push(Event::PeerAnswerReady(SdpReady { peer: a.peer, sdp }));
                        self.events.push(Event::PeerChannelOpen(a.peer));
                    }
                    Command::PeerAcceptAnswer(a) => {
                        let viewer: usize =
                            a.answer.trim_start_matches("answer-of-").parse().unwrap();
                        if let Some(entry) = self.peers.get_mut(&a.peer) {
                            entry.2 = Some(viewer);
                            self.viewers[viewer].peer = Some(a.peer);
                            self.events.push(Event::PeerChannelOpen(a.peer));
                        }
                    }
                    Command::PeerSend(s) => {
                        let Some(v) = self.viewer_of(s.peer) else { continue };
                        if self.viewers[v].peer != Some(s.peer) {
                            continue;
                        }
                        let body = wire::Joiner::default().push(&s.data).unwrap().unwrap();
                        match wire::decode(&body).unwrap() {
                            PeerCommand::SegmentData { id, request, .. }
                            | PeerCommand::SegmentAbsent { id, request }
                                if self.viewers[v].asking == Some((id, request)) =>
                            {
                                answered.insert(v);
                            }
                            _ => {}
                        }
                        let queue = self.queues.entry(s.peer).or_default();
                        queue.push_back(Outgoing::Message(s.data));
                        self.send_queued(s.peer);
                    }
                    // The bytes go out over the next steps, then the end; a refused
                    // serve takes its end with it.
                    Command::ServeSegment(s) => {
                        let end = s.end;
                        if let Some(entry) = self.peers.get_mut(&s.peer)
                            && entry.0
                            && self.segments.contains_key(&s.handle)
                        {
                            entry.1.insert(s.handle);
                            let queue = self.queues.entry(s.peer).or_default();
                            queue.push_back(Outgoing::Serve(s.handle, end));
                        }
                    }
                    Command::CancelServe(c) => {
                        if let Some(entry) = self.peers.get_mut(&c.peer) {
                            entry.1.remove(&c.handle);
                        }
                        if let Some(queue) = self.queues.get_mut(&c.peer) {
                            queue.retain(|o| !matches!(o, Outgoing::Serve(h, _) if *h == c.handle));
                        }
                        self.send_queued(c.peer);
                    }
                    Command::PeerClose(c) => {
                        assert!(
                            !self.kept.contains(&c.peer),
                            "peer {} was connected before the swap and was closed: {}",
                            c.peer,
                            c.reason
                        );
                        self.drop_peer(c.peer)
                    }
                    Command::FetchText(f) => {
                        self.fresh(f.fetch, "fetch");
                        self.fetches.insert(f.fetch, (f.url, true));
                    }
                    Command::FetchSegment(f) => {
                        self.fresh(f.fetch, "fetch");
                        self.fetches.insert(f.fetch, (f.url, f.tier != CacheTier::DiskIfCached));
                    }
                    Command::FetchCancel(fetch) => {
                        self.fetches.remove(&fetch);
                    }
                    Command::Evict(handle) => {
                        if self.segments.remove(&handle).is_some() {
                            self.events.push(Event::SegmentEvicted(handle));
                        }
                    }
                    Command::TimerSet(t) => {
                        if !self.timers.contains_key(&t.timer) {
                            self.fresh(t.timer, "timer");
                        }
                        self.timers.insert(t.timer, self.now + t.after_ms);
                    }
                    Command::TimerCancel(timer) => {
                        self.timers.remove(&timer);
                    }
                    Command::TrackerSend(_) | Command::SwarmSize(_) => {}
                    Command::HttpRequest(r) => {
                        panic!("the default policy sent an HTTP request: {r:?}")
                    }
                    Command::PeerSendText(s) => {
                        panic!("the default policy's messages are binary: {s:?}")
                    }
                }
            }
            for (v, id, request) in asked {
                let viewer = &self.viewers[*v];
                let closed = viewer.peer.is_none();
                assert!(
                    closed || answered.contains(v) || viewer.asking != Some((*id, *request)),
                    "viewer {v} (peer {:?}) asked for {id} ({request}) and was neither answered nor closed: {all}",
                    viewer.peer
                );
                self.answered += 1;
            }
        }

        /// Sends what is queued for `peer` up to its next serve; with `serves_end`, a serve
        /// at the front ends first (the host says so with `segment-sent`).
        fn send_queued_after(&mut self, peer: u64, serves_end: bool) {
            let Some(mut queue) = self.queues.remove(&peer) else { return };
            if serves_end && let Some(Outgoing::Serve(handle, end)) = queue.pop_front() {
                let size = self.segments.get(&handle).map_or(1000, |s| s.size);
                if let Some(entry) = self.peers.get_mut(&peer) {
                    entry.1.remove(&handle);
                }
                if let Some(v) = self.viewer_of(peer)
                    && self.viewers[v].peer == Some(peer)
                {
                    self.viewers[v].bytes_since_header = true;
                }
                if let Some(end) = end {
                    self.hear(peer, &end);
                }
                self.events.push(Event::SegmentSent(SegmentSent {
                    peer,
                    handle,
                    bytes: size,
                    complete: true,
                }));
            }
            while let Some(Outgoing::Message(_)) = queue.front() {
                if let Some(Outgoing::Message(data)) = queue.pop_front() {
                    self.hear(peer, &data);
                }
            }
            if self.peers.contains_key(&peer) && !queue.is_empty() {
                self.queues.insert(peer, queue);
            }
        }

        fn send_queued(&mut self, peer: u64) {
            self.send_queued_after(peer, false);
        }

        /// A viewer hears a message of the policy's.
        fn hear(&mut self, peer: u64, data: &[u8]) {
            let Some(v) = self.viewer_of(peer) else { return };
            if self.viewers[v].peer != Some(peer) {
                return;
            }
            let body = wire::Joiner::default().push(data).unwrap().unwrap();
            let viewer = &mut self.viewers[v];
            let mut short = false;
            match wire::decode(&body).unwrap() {
                PeerCommand::SegmentsAnnouncement { loaded, .. } => {
                    viewer.announced = loaded.into_iter().collect();
                }
                PeerCommand::SegmentData { id, request, .. }
                    if viewer.asking == Some((id, request)) =>
                {
                    viewer.bytes_since_header = false;
                }
                PeerCommand::SegmentAbsent { id, request }
                    if viewer.asking == Some((id, request)) =>
                {
                    viewer.asking = None;
                }
                PeerCommand::SegmentDataSendingCompleted { id, request }
                    if viewer.asking == Some((id, request)) =>
                {
                    viewer.asking = None;
                    short = !viewer.bytes_since_header;
                }
                _ => {}
            }
            self.short_ends += u64::from(short);
        }

        /// What the tracker does with a text from the policy.
        fn tracker_hears(&mut self, conn: u64, text: &str) {
            let json: serde_json::Value = serde_json::from_str(text).unwrap();
            let info_hash = json["info_hash"].as_str().unwrap_or_default().to_string();
            if let Some(offers) = json["offers"].as_array() {
                for offer in offers {
                    let offer_id = offer["offer_id"].as_str().unwrap().to_string();
                    let peer: u64 = offer["offer"]["sdp"]
                        .as_str()
                        .unwrap()
                        .trim_start_matches("offer ")
                        .parse()
                        .unwrap();
                    self.offers.push((peer, offer_id, info_hash.clone()));
                }
                let reply = format!(
                    r#"{{"action":"announce","info_hash":"{info_hash}","interval":120,"complete":0,"incomplete":{}}}"#,
                    VIEWERS + 1
                );
                self.events.push(Event::TrackerText(TrackerText { conn, text: reply }));
            }
            // Answers to viewers' offers: the viewer takes them (see `PeerAnswer`).
            if !info_hash.is_empty() {
                self.info_hash = Some(info_hash);
            }
        }
    }

    /// A step of the world's own: time passes, timers fire, fetches end, viewers act.
    fn world_step(world: &mut World, asked: &mut Vec<(usize, i64, i64)>) {
        world.now += world.rng.below(400);
        let due: Vec<u64> =
            world.timers.iter().filter(|(_, at)| **at <= world.now).map(|(t, _)| *t).collect();
        for timer in due {
            world.timers.remove(&timer);
            world.events.push(Event::TimerFired(timer));
        }
        let fetches: Vec<(u64, (String, bool))> =
            world.fetches.iter().map(|(f, w)| (*f, w.clone())).collect();
        for (fetch, (url, from_origin)) in fetches {
            if !world.rng.chance(70) {
                continue;
            }
            world.fetches.remove(&fetch);
            if url.ends_with(".m3u8") {
                let text = if url == MANIFEST { MASTER.to_string() } else { media() };
                world.events.push(Event::TextFetched(TextFetched { fetch, url, text }));
            } else if from_origin {
                let handle = world.next_handle;
                world.next_handle += 1;
                let segment =
                    SegmentInfo { handle, url, range: None, size: 1000, tier: CacheTier::Memory };
                world.segments.insert(handle, segment.clone());
                world.events.push(Event::SegmentStored(SegmentStored { fetch, segment }));
            } else {
                world.events.push(Event::FetchFailed(superpeer_guest::FetchFailed {
                    fetch,
                    status: None,
                    reason: "not cached".into(),
                }));
            }
        }
        for t in world.trackers.values_mut() {
            *t = true;
        }
        // Serves end now and then, and what was queued behind them follows.
        let busy: Vec<u64> = world.queues.keys().copied().collect();
        for peer in busy {
            if world.rng.chance(80) {
                world.send_queued_after(peer, true);
            }
        }
        // The tracker hands a waiting offer of ours to a viewer not connected: it answers.
        if let Some(info_hash) = world.info_hash.clone()
            && !world.offers.is_empty()
            && world.rng.chance(50)
        {
            let (peer, offer_id, _) =
                world.offers.remove(world.rng.below(world.offers.len() as u64) as usize);
            let v = world.rng.below(VIEWERS as u64) as usize;
            if world.viewers[v].peer.is_none() && world.peers.contains_key(&peer) {
                let conn = *world.trackers.keys().next().unwrap_or(&0);
                let text = format!(
                    r#"{{"action":"announce","info_hash":"{info_hash}","peer_id":"{}","offer_id":"{offer_id}","answer":{{"type":"answer","sdp":"answer-of-{v}"}}}}"#,
                    world.viewers[v].peer_id
                );
                world.events.push(Event::TrackerText(TrackerText { conn, text }));
            }
        }
        for v in 0..VIEWERS {
            if world.viewers[v].asking.is_some() && world.now >= world.viewers[v].asked_at + 2000 {
                world.viewers[v].asking = None;
                world.gave_up += 1;
            }
            let viewer = &world.viewers[v];
            match (viewer.peer, viewer.open) {
                // A viewer not connected offers now and then.
                (None, _) if world.rng.chance(5) => {
                    if let (Some(info_hash), Some(conn)) =
                        (world.info_hash.clone(), world.trackers.keys().next().copied())
                    {
                        let text = format!(
                            r#"{{"action":"announce","info_hash":"{info_hash}","peer_id":"{}","offer_id":"o{v}-{}","offer":{{"type":"offer","sdp":"offer-of-{v}"}}}}"#,
                            viewer.peer_id, world.now
                        );
                        world.events.push(Event::TrackerText(TrackerText { conn, text }));
                    }
                }
                // A connected viewer asks for what it was told we have.
                (Some(peer), _)
                    if viewer.asking.is_none()
                        && world.rng.chance(30)
                        && world.peers.get(&peer).is_some_and(|p| p.0)
                        && !viewer.announced.is_empty() =>
                {
                    let ids: Vec<i64> = viewer.announced.iter().copied().collect();
                    let id = ids[world.rng.below(ids.len() as u64) as usize];
                    world.requests += 1;
                    let request = world.requests as i64;
                    world.viewers[v].asking = Some((id, request));
                    world.viewers[v].asked_at = world.now;
                    let data = wire::encode(
                        &PeerCommand::SegmentRequest { id, request, byte_from: None },
                        wire::MAX_MESSAGE,
                    )
                    .unwrap()
                    .remove(0);
                    world
                        .events
                        .push(Event::PeerMessage(superpeer_guest::PeerMessage { peer, data }));
                    asked.push((v, id, request));
                }
                // Now and then a viewer leaves.
                (Some(peer), _) if world.rng.chance(1) => {
                    world.drop_peer(peer);
                    world.events.push(Event::PeerClosed(superpeer_guest::PeerClosed {
                        peer,
                        reason: "left".into(),
                    }));
                }
                _ => {}
            }
        }
        // Channels open as the host reports them.
        for event in &world.events {
            if let Event::PeerChannelOpen(peer) = event
                && let Some(entry) = world.peers.get_mut(peer)
            {
                entry.0 = true;
                if let Some(v) = entry.2 {
                    world.viewers[v].open = true;
                }
            }
        }
    }

    fn config() -> SeedConfig {
        SeedConfig {
            channel: "aHR0cDovL28uZXhhbXBsZS92b2QvbWFzdGVyLm0zdTg".into(),
            manifest_url: Some(MANIFEST.into()),
            trackers: vec!["ws://t/".into()],
            live: false,
            max_connections: 8,
            label: String::new(),
            settings: vec![("identities".into(), "2.3".into())],
            scout: false,
        }
    }

    #[test]
    fn across_swaps_and_faults_ids_are_never_reused_and_viewers_are_always_answered() {
        let mut swaps = 0;
        let mut faults = 0;
        let mut answered = 0;
        for seed in 1..=60u64 {
            let mut world = World::new(seed);
            let config = config();
            let mut instance = Instance::init(&config, None, &world.state(), seed).unwrap();
            let mut last_snapshot: Option<(u64, Vec<u8>)> = None;
            let mut random = {
                let mut n = seed;
                move || {
                    n = n.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    n >> 1
                }
            };
            for _ in 0..400 {
                let mut asked = Vec::new();
                world_step(&mut world, &mut asked);
                let roll = world.rng.below(100);
                // The runner snapshots a new instance after its first turn.
                let mut fresh = false;
                if roll < 2 {
                    // A hot swap: a snapshot now, a new instance from it and the host's state.
                    swaps += 1;
                    world.kept =
                        world.peers.iter().filter(|(_, p)| p.0).map(|(peer, _)| *peer).collect();
                    let snapshot = instance.snapshot();
                    instance =
                        Instance::init(&config, Some(&snapshot), &world.state(), random()).unwrap();
                    world.events.insert(0, Event::Started);
                    fresh = true;
                } else if roll < 4 {
                    // A fault on this turn's events: a new instance starts from the last
                    // periodic snapshot (or none) and the host's state, and the host hands
                    // it the events again.
                    faults += 1;
                    let prior = last_snapshot.as_ref().map(|(_, s)| s.as_slice());
                    instance = Instance::init(&config, prior, &world.state(), random()).unwrap();
                    world.events.insert(0, Event::Started);
                    fresh = true;
                }
                let events = std::mem::take(&mut world.events);
                let commands = instance.handle(events, world.now, &mut random);
                world.carry_out(commands, &asked);
                world.kept.clear();
                if fresh || last_snapshot.as_ref().is_none_or(|(at, _)| world.now >= at + 1000) {
                    last_snapshot = Some((world.now, instance.snapshot()));
                }
            }
            answered += world.answered;
            assert_eq!(world.gave_up, 0, "seed {seed}: viewers were left waiting");
            assert_eq!(world.short_ends, 0, "seed {seed}: segments ended before their bytes");
            assert!(
                world.viewers.iter().any(|v| v.peer.is_some()),
                "seed {seed}: nobody connected at the end"
            );
        }
        assert!(swaps > 100 && faults > 100, "{swaps} swaps, {faults} faults");
        assert!(answered > 1000, "only {answered} requests checked");
    }

    /// A snapshot in the layout of the builds before the shared segments crate
    /// (`pml-st01`), written by one of them: a World of seed 7 after 120 turns, with
    /// seven viewers open, three of them being served, thirty segments held and
    /// fourteen offers and answers pending. A new build taking over from it keeps every
    /// viewer and fetches nothing again.
    #[test]
    fn a_snapshot_of_the_layout_before_the_shared_segments_crate_keeps_every_viewer() {
        let snapshot = include_bytes!("../tests/fixtures/pml-st01.bin");
        let base = 4_294_967_296u64;
        let open = [11, 12, 62, 70, 134, 161, 167].map(|n| base + n);
        let pending = [133, 138, 139, 141, 142, 143, 165, 166, 171, 175, 176, 187, 188, 189];
        let serving = [(base + 62, 28), (base + 70, 1), (base + 167, 21)];
        // Each handle's segment, as the old build fetched them.
        let numbers = [0, 1, 3, 4, 5, 8, 2, 6, 7, 9, 10, 12, 11, 13, 14, 15, 16, 18, 19, 17];
        let numbers = numbers.into_iter().chain([20, 21, 22, 23, 24, 25, 26, 28, 27, 29]);
        let state = HostState {
            trackers: vec![TrackerState { conn: base + 7, url: "ws://t/".into(), open: true }],
            peers: open
                .iter()
                .chain(&pending.map(|n| base + n))
                .map(|&peer| PeerState {
                    peer,
                    open: open.contains(&peer),
                    serving: serving.iter().filter(|(p, _)| *p == peer).map(|(_, h)| *h).collect(),
                })
                .collect(),
            fetches: vec![],
            requests: vec![],
            segments: numbers
                .enumerate()
                .map(|(index, n)| SegmentInfo {
                    handle: index as u64 + 1,
                    url: format!("http://o.example/vod/seg{n}.ts"),
                    range: None,
                    size: 1000,
                    tier: CacheTier::Memory,
                })
                .collect(),
            timers: vec![(base + 190, 245)],
        };
        let mut random = || 4;
        let mut instance = Instance::init(&config(), Some(snapshot), &state, 99).unwrap();
        let out = instance.handle(vec![Event::Started], 24_600, &mut random);
        let closed: Vec<u64> = out
            .iter()
            .filter_map(|c| if let Command::PeerClose(c) = c { Some(c.peer) } else { None })
            .collect();
        assert!(closed.is_empty(), "closed {closed:?}");
        let reads: Vec<(u64, String)> = out
            .iter()
            .filter_map(|c| {
                if let Command::FetchText(f) = c { Some((f.fetch, f.url.clone())) } else { None }
            })
            .collect();
        let [(fetch, url)] = &reads[..] else { panic!("{out:?}") };
        assert_eq!(url, "http://o.example/vod/720p.m3u8", "the playlist is read again");

        let text = media();
        let fetched = Event::TextFetched(TextFetched { fetch: *fetch, url: url.clone(), text });
        let out = instance.handle(vec![fetched], 24_650, &mut random);
        assert!(
            !out.iter().any(|c| matches!(
                c,
                Command::FetchSegment(_) | Command::Evict(_) | Command::PeerClose(_)
            )),
            "nothing fetched again, dropped or closed: {out:?}"
        );
        let told: BTreeMap<u64, Vec<i64>> = out
            .iter()
            .filter_map(|c| match c {
                Command::PeerSend(s) => {
                    let body = wire::Joiner::default().push(&s.data).unwrap().unwrap();
                    match wire::decode(&body).unwrap() {
                        PeerCommand::SegmentsAnnouncement { loaded, .. } => Some((s.peer, loaded)),
                        _ => None,
                    }
                }
                _ => None,
            })
            .collect();
        assert_eq!(told.keys().copied().collect::<Vec<_>>(), open, "every open viewer hears");
        assert!(told.values().all(|loaded| *loaded == (0..30).collect::<Vec<i64>>()), "{told:?}");

        let ask = PeerCommand::SegmentRequest { id: 8, request: 77, byte_from: None };
        let data = wire::encode(&ask, wire::MAX_MESSAGE).unwrap().remove(0);
        let message = Event::PeerMessage(superpeer_guest::PeerMessage { peer: open[0], data });
        let out = instance.handle(vec![message], 24_700, &mut random);
        assert!(
            out.iter().any(
                |c| matches!(c, Command::ServeSegment(s) if s.peer == open[0] && s.handle == 6)
            ),
            "served from the host's copy: {out:?}"
        );
    }
}
