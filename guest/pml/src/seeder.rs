//! What the default policy does for one channel: read the stream's playlists, work out
//! the swarm of every rendition as p2p-media-loader viewers do, announce in each swarm
//! on every open tracker, keep the announces fresh, answer the offers viewers send, and
//! keep the segments viewers will ask for in the host's cache.
//!
//! Pure state machine: events in, commands out, time only through timers the host
//! fires. Randomness (peer ids) comes in as a function.

use std::collections::{BTreeMap, HashMap};

use superpeer_guest::{
    CacheTier, Command, ConnId, Event, FetchId, FetchSegment, FetchText, PeerAnswer, PeerId,
    SegmentHandle, TimerId, TimerSet, TrackerSend,
};

use crate::announce::{self, AnnounceEvent, TrackerMessage};
use crate::playlist::{self, MediaPlaylist};
use crate::swarm::{self, Rendition, StreamKind};

/// Timer ids from here up are the seeder's: two per swarm (reload, announce).
const TIMER_BASE: TimerId = 2 << 32;
/// Re-announce interval until a tracker says otherwise (p2p-media-loader's default).
const DEFAULT_ANNOUNCE_SECONDS: u64 = 30;
/// Live segments kept: the playlist's window, at most this many.
const LIVE_WINDOW: usize = 12;
/// VOD segments fetched ahead from the start.
const VOD_PREFETCH: usize = 10;
/// Wait before fetching a playlist again after a failure.
const RETRY_MS: u64 = 2_000;

/// Where a segment comes from: its URL and byte range.
type Source = (String, Option<(u64, u64)>);

#[derive(Debug, Clone, PartialEq)]
enum Stored {
    Fetching(FetchId),
    Ready { handle: SegmentHandle, size: u64 },
}

/// One rendition's swarm.
#[derive(Debug)]
struct Swarm {
    kind: StreamKind,
    info_hash: String,
    peer_id: String,
    playlist_url: String,
    playlist_fetch: Option<FetchId>,
    /// Segments by the id viewers use for them.
    segments: BTreeMap<i64, Stored>,
    /// Where each segment comes from, by id.
    sources: BTreeMap<i64, Source>,
    target_duration_ms: u64,
    ended: bool,
    announce_seconds: u64,
}

/// An offer being answered: where to send the answer.
#[derive(Debug, Clone)]
struct PendingAnswer {
    conn: ConnId,
    swarm: usize,
    remote_peer_id: String,
    offer_id: String,
}

#[derive(Debug)]
pub(crate) struct Seeder {
    swarm_id: String,
    manifest_url: Option<String>,
    live: bool,
    manifest_fetch: Option<FetchId>,
    swarms: Vec<Swarm>,
    next_id: u64,
    fetches: HashMap<FetchId, Fetch>,
    answering: HashMap<PeerId, PendingAnswer>,
    peers: HashMap<PeerId, usize>,
    max_peers: usize,
    /// Segments the host holds that no swarm claims yet (an earlier instance fetched
    /// them), by source: adopted instead of fetched again.
    orphans: HashMap<Source, (SegmentHandle, u64)>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Fetch {
    Manifest,
    Playlist(usize),
    Segment(usize, i64),
}

impl Seeder {
    pub(crate) fn new(
        swarm_id: String,
        manifest_url: Option<String>,
        live: bool,
        max_peers: usize,
    ) -> Self {
        Seeder {
            swarm_id,
            manifest_url,
            live,
            manifest_fetch: None,
            swarms: Vec::new(),
            next_id: 0,
            fetches: HashMap::new(),
            answering: HashMap::new(),
            peers: HashMap::new(),
            max_peers,
            orphans: HashMap::new(),
        }
    }

    /// Takes note of segments the host already holds (from `host-state`).
    pub(crate) fn adopt(&mut self, segments: &[superpeer_guest::SegmentInfo]) {
        for s in segments {
            let range = s.range.map(|r| (r.start, r.end));
            self.orphans.insert((s.url.clone(), range), (s.handle, s.size));
        }
    }

    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn fetch_text(&mut self, url: String, what: Fetch, out: &mut Vec<Command>) -> FetchId {
        let fetch = self.id();
        self.fetches.insert(fetch, what);
        out.push(Command::FetchText(FetchText { fetch, url }));
        fetch
    }

    /// The first thing to do: read the manifest.
    pub(crate) fn start(&mut self, out: &mut Vec<Command>) {
        if self.manifest_fetch.is_none()
            && self.swarms.is_empty()
            && let Some(url) = self.manifest_url.clone()
        {
            self.manifest_fetch = Some(self.fetch_text(url, Fetch::Manifest, out));
        }
    }

    /// Announces every swarm on a tracker connection that just opened.
    pub(crate) fn tracker_open(&mut self, conn: ConnId, out: &mut Vec<Command>) {
        for swarm in &self.swarms {
            out.push(announce_on(conn, swarm, Some(AnnounceEvent::Started)));
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
                    out.push(timer(TIMER_BASE - 1, RETRY_MS));
                }
                Some(Fetch::Playlist(index)) => {
                    self.swarms[index].playlist_fetch = None;
                    out.push(timer(reload_timer(index), RETRY_MS));
                }
                Some(Fetch::Segment(index, id)) => {
                    // Fetched again at the next reload if still listed.
                    self.swarms[index].segments.remove(&id);
                }
                _ => {}
            },
            Event::SegmentStored(stored) => match self.fetches.remove(&stored.fetch) {
                Some(Fetch::Segment(index, id)) => {
                    let ready =
                        Stored::Ready { handle: stored.segment.handle, size: stored.segment.size };
                    self.swarms[index].segments.insert(id, ready);
                }
                // A fetch an earlier instance started.
                _ => self.adopt(std::slice::from_ref(&stored.segment)),
            },
            Event::SegmentEvicted(handle) => {
                for swarm in &mut self.swarms {
                    swarm
                        .segments
                        .retain(|_, s| *s != Stored::Ready { handle: *handle, size: size_of(s) });
                }
            }
            Event::TimerFired(timer_id) => self.on_timer(*timer_id, open_trackers, out),
            Event::TrackerText(text) => self.on_tracker_text(text.conn, &text.text, out),
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
                    self.peers.insert(ready.peer, pending.swarm);
                }
            }
            Event::PeerClosed(closed) => {
                self.answering.remove(&closed.peer);
                self.peers.remove(&closed.peer);
            }
            _ => {}
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
        let renditions: Vec<(StreamKind, Rendition, String)> = if playlist::is_master(text) {
            let master = playlist::parse_master(text, url);
            let main = master
                .variants
                .iter()
                .map(|v| (StreamKind::Main, rendition_of_variant(v), v.uri.clone()));
            let audio =
                master.media.iter().filter(|m| m.attribute("TYPE") == Some("AUDIO")).filter_map(
                    |m| {
                        let uri = m.uri.clone()?;
                        let codecs = audio_codecs_of_group(&master, m.attribute("GROUP-ID"));
                        Some((StreamKind::Secondary, rendition_of_audio(m, codecs), uri))
                    },
                );
            main.chain(audio).collect()
        } else {
            // A media playlist alone is one rendition that has no attributes.
            vec![(StreamKind::Main, Rendition::default(), url.to_string())]
        };
        for (kind, rendition, playlist_url) in renditions {
            let short = swarm::stream_short_id(&rendition);
            let stream_swarm_id = swarm::stream_swarm_id(&self.swarm_id, kind, &short);
            let index = self.swarms.len();
            self.swarms.push(Swarm {
                kind,
                info_hash: swarm::info_hash(&stream_swarm_id),
                peer_id: swarm::peer_id(&mut *random),
                playlist_url: playlist_url.clone(),
                playlist_fetch: None,
                segments: BTreeMap::new(),
                sources: BTreeMap::new(),
                target_duration_ms: 0,
                ended: false,
                announce_seconds: DEFAULT_ANNOUNCE_SECONDS,
            });
            let fetch = self.fetch_text(playlist_url, Fetch::Playlist(index), out);
            self.swarms[index].playlist_fetch = Some(fetch);
            for conn in open_trackers {
                out.push(announce_on(*conn, &self.swarms[index], Some(AnnounceEvent::Started)));
            }
            out.push(timer(announce_timer(index), DEFAULT_ANNOUNCE_SECONDS * 1000));
        }
    }

    fn on_playlist(&mut self, index: usize, url: &str, text: &str, out: &mut Vec<Command>) {
        let media = playlist::parse_media(text, url);
        let live = self.live && !media.ended;
        let swarm = &mut self.swarms[index];
        swarm.playlist_fetch = None;
        swarm.target_duration_ms = ((media.target_duration * 1000.0) as u64).max(1000);
        swarm.ended = media.ended;
        let wanted = wanted_segments(&media, live);
        // Segments that left the live window go from the cache.
        let keep: Vec<i64> = wanted.iter().map(|(id, ..)| *id).collect();
        let stale: Vec<(i64, Stored)> = swarm
            .segments
            .iter()
            .filter(|(id, _)| live && !keep.contains(id))
            .map(|(id, s)| (*id, s.clone()))
            .collect();
        for (id, stored) in stale {
            swarm.segments.remove(&id);
            swarm.sources.remove(&id);
            if let Stored::Ready { handle, .. } = stored {
                out.push(Command::Evict(handle));
            }
        }
        let missing: Vec<(i64, Source)> =
            wanted.into_iter().filter(|(id, _)| !swarm.segments.contains_key(id)).collect();
        for (id, (uri, range)) in missing {
            if let Some((handle, size)) = self.orphans.remove(&(uri.clone(), range)) {
                let swarm = &mut self.swarms[index];
                swarm.segments.insert(id, Stored::Ready { handle, size });
                swarm.sources.insert(id, (uri, range));
                continue;
            }
            let fetch = self.id();
            self.fetches.insert(fetch, Fetch::Segment(index, id));
            let swarm = &mut self.swarms[index];
            swarm.segments.insert(id, Stored::Fetching(fetch));
            swarm.sources.insert(id, (uri.clone(), range));
            out.push(Command::FetchSegment(FetchSegment {
                fetch,
                url: uri,
                range: range.map(|(start, end)| superpeer_guest::ByteRange { start, end }),
                tier: if live { CacheTier::Memory } else { CacheTier::Disk },
            }));
        }
        if live {
            out.push(timer(reload_timer(index), self.swarms[index].target_duration_ms));
        }
    }

    fn on_timer(&mut self, timer_id: TimerId, open_trackers: &[ConnId], out: &mut Vec<Command>) {
        if timer_id == TIMER_BASE - 1 {
            self.start(out);
            return;
        }
        let Some(offset) = timer_id.checked_sub(TIMER_BASE) else { return };
        let index = (offset / 2) as usize;
        if index >= self.swarms.len() {
            return;
        }
        if offset % 2 == 0 {
            if self.swarms[index].playlist_fetch.is_none() {
                let url = self.swarms[index].playlist_url.clone();
                let fetch = self.fetch_text(url, Fetch::Playlist(index), out);
                self.swarms[index].playlist_fetch = Some(fetch);
            }
        } else {
            for conn in open_trackers {
                out.push(announce_on(*conn, &self.swarms[index], None));
            }
            out.push(timer(timer_id, self.swarms[index].announce_seconds * 1000));
        }
    }

    fn on_tracker_text(&mut self, conn: ConnId, text: &str, out: &mut Vec<Command>) {
        match announce::parse(text) {
            Ok(TrackerMessage::Offer { info_hash, peer_id, offer_id, sdp }) => {
                let Some(index) = self.swarms.iter().position(|s| s.info_hash == info_hash) else {
                    return;
                };
                if self.peers.len() + self.answering.len() >= self.max_peers {
                    return;
                }
                let peer = self.id();
                self.answering.insert(
                    peer,
                    PendingAnswer { conn, swarm: index, remote_peer_id: peer_id, offer_id },
                );
                out.push(Command::PeerAnswer(PeerAnswer { peer, offer: sdp }));
            }
            Ok(TrackerMessage::Interval { info_hash, interval, .. }) => {
                if let Some(swarm) = self.swarms.iter_mut().find(|s| s.info_hash == info_hash) {
                    swarm.announce_seconds = interval.clamp(10, 3600);
                }
            }
            Ok(TrackerMessage::Failure(reason)) => log(&format!("tracker refused: {reason}")),
            Ok(TrackerMessage::Warning(_) | TrackerMessage::Ignored) => {}
            Err(error) => log(&format!("unreadable tracker message: {error}")),
        }
    }

    /// Swarms announced, segments held, viewers connected: for tests and logs.
    #[cfg(test)]
    fn figures(&self) -> (usize, usize, usize) {
        let held = self
            .swarms
            .iter()
            .flat_map(|s| s.segments.values())
            .filter(|s| matches!(s, Stored::Ready { .. }))
            .count();
        (self.swarms.len(), held, self.peers.len())
    }
}

fn size_of(stored: &Stored) -> u64 {
    match stored {
        Stored::Ready { size, .. } => *size,
        Stored::Fetching(_) => 0,
    }
}

fn reload_timer(index: usize) -> TimerId {
    TIMER_BASE + 2 * index as u64
}

fn announce_timer(index: usize) -> TimerId {
    TIMER_BASE + 2 * index as u64 + 1
}

fn timer(timer: TimerId, after_ms: u64) -> Command {
    Command::TimerSet(TimerSet { timer, after_ms })
}

fn announce_on(conn: ConnId, swarm: &Swarm, event: Option<AnnounceEvent>) -> Command {
    let text = announce::announce(&swarm.info_hash, &swarm.peer_id, event, 0, 0);
    let _ = swarm.kind;
    Command::TrackerSend(TrackerSend { conn, text })
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

/// A variant's attributes as hls.js reports them for a level.
pub(crate) fn rendition_of_variant(variant: &playlist::Variant) -> Rendition {
    let bitrate = variant.attribute("BANDWIDTH").and_then(|b| b.parse().ok()).unwrap_or(0);
    if bitrate == 0 {
        return Rendition { bitrate: Some(0), ..Rendition::default() };
    }
    let (width, height) = variant
        .attribute("RESOLUTION")
        .and_then(|r| r.split_once('x'))
        .map_or((None, None), |(w, h)| (w.parse().ok(), h.parse().ok()));
    Rendition {
        bitrate: Some(bitrate),
        codecs: variant.attribute("CODECS").map(video_codecs).filter(|c| !c.is_empty()),
        width,
        height,
        frame_rate: variant.attribute("FRAME-RATE").map(String::from),
        video_range: variant.attribute("VIDEO-RANGE").map(String::from),
        ..Rendition::default()
    }
}

/// An audio rendition's attributes as hls.js reports them for an audio track.
pub(crate) fn rendition_of_audio(media: &playlist::Media, codecs: Option<String>) -> Rendition {
    Rendition {
        bitrate: Some(0),
        codecs,
        language: media.attribute("LANGUAGE").map(String::from),
        channels: media.attribute("CHANNELS").map(String::from),
        name: media.attribute("NAME").map(String::from),
        ..Rendition::default()
    }
}

/// The video codecs of a CODECS list (hls.js keeps them apart from audio codecs).
fn video_codecs(codecs: &str) -> String {
    codecs.split(',').map(str::trim).filter(|c| !is_audio_codec(c)).collect::<Vec<_>>().join(",")
}

fn is_audio_codec(codec: &str) -> bool {
    let kind = codec.split('.').next().unwrap_or("").to_ascii_lowercase();
    matches!(
        kind.as_str(),
        "mp4a"
            | "ac-3"
            | "ec-3"
            | "ac-4"
            | "opus"
            | "flac"
            | "mp3"
            | "alac"
            | "dtsc"
            | "dtse"
            | "dtsh"
            | "dtsl"
            | "fLaC"
    )
}

/// The audio codecs of the variants that use an audio group.
fn audio_codecs_of_group(master: &playlist::MasterPlaylist, group: Option<&str>) -> Option<String> {
    let group = group?;
    let variant = master.variants.iter().find(|v| v.attribute("AUDIO") == Some(group))?;
    let audio: Vec<&str> = variant
        .attribute("CODECS")?
        .split(',')
        .map(str::trim)
        .filter(|c| is_audio_codec(c))
        .collect();
    (!audio.is_empty()).then(|| audio.join(","))
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
        CacheTier, SdpReady, SegmentInfo, SegmentStored, TextFetched, TrackerText,
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

    fn random() -> impl FnMut() -> u64 {
        let mut n = 0;
        move || {
            n += 1;
            n
        }
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
        let mut seeder = Seeder::new(MANIFEST.into(), Some(MANIFEST.into()), true, 10);
        let mut out = Vec::new();
        seeder.start(&mut out);
        let (manifest, _) = texts(&out)[0].clone();
        out.clear();
        seeder.handle(&fetched(manifest, MANIFEST, MASTER), &[7], &mut random(), &mut out);
        let (playlist, url) = texts(&out)[0].clone();
        assert_eq!(url, "http://o.example/live/720p.m3u8");
        let announces: Vec<&Command> =
            out.iter().filter(|c| matches!(c, Command::TrackerSend(s) if s.conn == 7)).collect();
        assert_eq!(announces.len(), 1, "announced on the open tracker at once");
        (seeder, playlist)
    }

    #[test]
    fn announces_each_rendition_with_the_info_hash_viewers_compute() {
        let (seeder, _) = started();
        // hls.js gives the level its video codec only.
        let expected = swarm::info_hash(&swarm::stream_swarm_id(
            MANIFEST,
            StreamKind::Main,
            &swarm::stream_short_id(&Rendition {
                bitrate: Some(1_280_000),
                codecs: Some("avc1.4d401f".into()),
                width: Some(1280),
                height: Some(720),
                ..Rendition::default()
            }),
        ));
        assert_eq!(seeder.swarms[0].info_hash, expected);
        assert!(seeder.swarms[0].peer_id.starts_with("-PM0203-"));
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
        assert!(out.contains(&timer(reload_timer(0), 2000)), "reload at the target duration");
        for (i, (fetch, url)) in wanted.iter().enumerate() {
            let segment = SegmentInfo {
                handle: 50 + i as u64,
                url: url.clone(),
                range: None,
                size: 10,
                tier: CacheTier::Memory,
            };
            seeder.handle(
                &Event::SegmentStored(SegmentStored { fetch: *fetch, segment }),
                &[],
                &mut random(),
                &mut out,
            );
        }
        assert_eq!(seeder.figures(), (1, 3, 0));

        // The reload: 100 left the window, 103 and 104 joined.
        out.clear();
        seeder.handle(&Event::TimerFired(reload_timer(0)), &[], &mut random(), &mut out);
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
        let mut seeder = Seeder::new(url.into(), Some(url.into()), false, 10);
        let mut out = Vec::new();
        seeder.start(&mut out);
        let (manifest, _) = texts(&out)[0].clone();
        out.clear();
        seeder.handle(&fetched(manifest, url, &media(5, 3, true)), &[], &mut random(), &mut out);
        assert_eq!(seeder.swarms.len(), 1);
        let (playlist, playlist_url) = texts(&out)[0].clone();
        assert_eq!(playlist_url, url);
        out.clear();
        seeder.handle(&fetched(playlist, url, &media(5, 3, true)), &[], &mut random(), &mut out);
        assert_eq!(seeder.swarms[0].segments.keys().copied().collect::<Vec<_>>(), [0, 1, 2]);
        assert!(
            !out.iter().any(|c| matches!(c, Command::TimerSet(t) if t.timer == reload_timer(0))),
            "VOD is not reloaded"
        );
    }

    #[test]
    fn segments_an_earlier_instance_fetched_are_adopted_not_fetched_again() {
        let mut seeder = Seeder::new(MANIFEST.into(), Some(MANIFEST.into()), true, 10);
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
            seeder.swarms[0].segments.get(&101),
            Some(&Stored::Ready { handle: 77, size: 9 })
        );
    }

    #[test]
    fn a_failed_manifest_is_fetched_again_later() {
        let mut seeder = Seeder::new(MANIFEST.into(), Some(MANIFEST.into()), true, 10);
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
        assert_eq!(out, vec![timer(TIMER_BASE - 1, RETRY_MS)]);
        out.clear();
        seeder.handle(&Event::TimerFired(TIMER_BASE - 1), &[], &mut random(), &mut out);
        assert_eq!(texts(&out).len(), 1);
    }
}
