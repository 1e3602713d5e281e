use super::streams::*;
use super::*;
use superpeer_guest::{
    CacheTier, PeerClosed, SdpReady, SegmentInfo, SegmentStored, TextFetched, TrackerText,
};

const MANIFEST: &str = "http://o.example/live/master.m3u8";
const MASTER: &str = "#EXTM3U
#EXT-X-STREAM-INF:BANDWIDTH=1280000,CODECS=\"avc1.4d401f,mp4a.40.2\",RESOLUTION=1280x720
720p.m3u8
";

use superpeer_hls::example_media as media;
use superpeer_segments::{PROBE_BUDGET, VOD_HELD, VOD_PREFETCH};

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

/// What `pick` takes from each of `out`'s commands that it matches.
fn picked<T>(out: &[Command], pick: impl Fn(&Command) -> Option<T>) -> Vec<T> {
    out.iter().filter_map(pick).collect()
}

fn texts(out: &[Command]) -> Vec<(u64, String)> {
    picked(out, |c| match c {
        Command::FetchText(f) => Some((f.fetch, f.url.clone())),
        _ => None,
    })
}

/// Segment fetches from the origin.
fn segments(out: &[Command]) -> Vec<(u64, String)> {
    picked(out, |c| match c {
        Command::FetchSegment(f) if f.tier != CacheTier::DiskIfCached => {
            Some((f.fetch, f.url.clone()))
        }
        _ => None,
    })
}

/// Questions to the disk cache.
fn probes(out: &[Command]) -> Vec<(u64, String)> {
    picked(out, |c| match c {
        Command::FetchSegment(f) if f.tier == CacheTier::DiskIfCached => {
            Some((f.fetch, f.url.clone()))
        }
        _ => None,
    })
}

/// Starts `seeder` and hands it `text` as the manifest at `url`, with the trackers
/// `open`; what it commanded then.
fn read_manifest(seeder: &mut Seeder, url: &str, text: &str, open: &[ConnId]) -> Vec<Command> {
    let mut out = Vec::new();
    seeder.start(&mut out);
    let (fetch, _) = texts(&out)[0].clone();
    out.clear();
    seeder.handle(&fetched(fetch, url, text), open, &mut random(), &mut out);
    out
}

/// A seeder that has read the master playlist, with one tracker open.
fn started() -> (Seeder, u64) {
    let mut seeder =
        Seeder::new(MANIFEST.into(), Some(MANIFEST.into()), 10, Settings::default(), false);
    let out = read_manifest(&mut seeder, MANIFEST, MASTER, &[7]);
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
        seeder.handle(&fetched(reload, url, &media(100, 3, false)), &[], &mut random(), &mut out);
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
    let ready = Event::PeerAnswerReady(SdpReady { peer: answer.peer, sdp: "v=0 answer".into() });
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
    let mut seeder = Seeder::new(url.into(), Some(url.into()), 10, Settings::default(), false);
    let mut out = read_manifest(&mut seeder, url, &media(5, 3, true), &[]);
    assert_eq!((seeder.streams.levels(), seeder.swarms.len()), (1, 2));
    let (playlist, playlist_url) = texts(&out)[0].clone();
    assert_eq!(playlist_url, url);
    out.clear();
    seeder.handle(&fetched(playlist, url, &media(5, 3, true)), &[], &mut random(), &mut out);
    assert_eq!(seeder.streams.announced(0).map(|(id, _)| id).collect::<Vec<_>>(), [0, 1, 2]);
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
            != swarm::stream_short_id(&Rendition { bitrate: Some(0.0), ..Rendition::default() })
    );

    let audio = rendition_of_audio(&master, &master.media[0]);
    assert_eq!(audio.codecs.as_deref(), Some("mp4a.40.2"), "from the first variant of its group");
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
    let playable: Vec<&str> = playable_variants(&master).iter().map(|v| v.uri.as_str()).collect();
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

/// The peer commands sent, in order: messages, and the ends of serves.
fn sent(out: &[Command]) -> Vec<PeerCommand> {
    out.iter()
        .filter_map(|c| match c {
            Command::PeerSend(s) => Some(&s.data),
            Command::ServeSegment(s) => s.end.as_ref(),
            _ => None,
        })
        .map(|data| wire::decode(&Joiner::default().push(data).unwrap().unwrap()).unwrap())
        .collect()
}

fn message(peer: PeerId, command: &PeerCommand) -> Event {
    let data = wire::encode(command, wire::MAX_MESSAGE).unwrap().remove(0);
    Event::PeerMessage(superpeer_guest::PeerMessage { peer, data })
}

/// A VOD seeder with a 200-segment playlist, one viewer with an open channel, and
/// the first segments stored.
fn vod_serving() -> (Seeder, PeerId, u64) {
    let (seeder, peer, handle, _) = vod_serving_with_disk(|_| false);
    (seeder, peer, handle)
}

/// [`vod_serving`] with a disk cache that has segment `n` (as `5000 + n`) where
/// `on_disk(n)`; also every question asked of it, in batches.
fn vod_serving_with_disk(on_disk: fn(u64) -> bool) -> (Seeder, PeerId, u64, Vec<Vec<String>>) {
    let url = "http://o.example/vod/index.m3u8";
    let mut seeder = Seeder::new(url.into(), Some(url.into()), 10, Settings::default(), false);
    let mut out = read_manifest(&mut seeder, url, &media(0, 200, true), &[7]);
    let (playlist, _) = texts(&out)[0].clone();
    out.clear();
    seeder.handle(&fetched(playlist, url, &media(0, 200, true)), &[7], &mut random(), &mut out);
    let mut handle = 1000;
    store_all(&mut seeder, &out, &mut handle);
    let mut batches = Vec::new();
    let mut batch = probes(&out);
    while !batch.is_empty() {
        assert!(batch.len() <= PROBE_BUDGET);
        batches.push(batch.iter().map(|(_, url)| url.clone()).collect());
        let mut next = Vec::new();
        for (fetch, url) in batch {
            let n: u64 = url
                .trim_start_matches("http://o.example/vod/seg")
                .trim_end_matches(".ts")
                .parse()
                .unwrap();
            let event = if on_disk(n) {
                let segment = SegmentInfo {
                    handle: 5000 + n,
                    url,
                    range: None,
                    size: 10,
                    tier: CacheTier::Disk,
                };
                Event::SegmentStored(SegmentStored { fetch, segment })
            } else {
                Event::FetchFailed(superpeer_guest::FetchFailed {
                    fetch,
                    status: None,
                    reason: "not cached".into(),
                })
            };
            seeder.handle(&event, &[7], &mut random(), &mut next);
        }
        batch = probes(&next);
    }
    let peer = connect_viewer(&mut seeder);
    seeder.handle(&Event::PeerChannelOpen(peer), &[7], &mut random(), &mut Vec::new());
    (seeder, peer, handle, batches)
}

/// Answers every segment fetch in `out` as stored in memory (no disk cache, or
/// `noUseDiskCache`), with handles counting up.
fn store_all(seeder: &mut Seeder, out: &[Command], handle: &mut u64) {
    for (fetch, url) in segments(out) {
        *handle += 1;
        let segment =
            SegmentInfo { handle: *handle, url, range: None, size: 10, tier: CacheTier::Memory };
        seeder.handle(
            &Event::SegmentStored(SegmentStored { fetch, segment }),
            &[],
            &mut random(),
            &mut Vec::new(),
        );
    }
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
    let mut seeder = Seeder::new(swarm_id.into(), Some(url.into()), 10, Settings::default(), false);
    read_manifest(&mut seeder, url, manifest, &[]);
    seeder
        .swarms
        .iter()
        .map(|s| {
            let playlist = seeder.streams.playlist_url(s.stream).unwrap();
            (playlist.rsplit('/').next().unwrap().to_string(), s.identity, s.info_hash.clone())
        })
        .collect()
}

fn offers_in(out: &[Command]) -> Vec<PeerId> {
    picked(out, |c| match c {
        Command::PeerOffer(peer) => Some(*peer),
        _ => None,
    })
}

fn closed_in(out: &[Command]) -> Vec<(PeerId, String)> {
    picked(out, |c| match c {
        Command::PeerClose(c) => Some((c.peer, c.reason.clone())),
        _ => None,
    })
}

fn tracker_json(out: &[Command]) -> Vec<serde_json::Value> {
    picked(out, |c| match c {
        Command::TrackerSend(s) => Some(serde_json::from_str(&s.text).unwrap()),
        _ => None,
    })
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

mod serving;

/// The host's clock for a turn at `now_ms`, then what flushing it commands.
fn flushed(seeder: &mut Seeder, now_ms: u64) -> Vec<Command> {
    seeder.begin_turn(now_ms);
    let mut out = Vec::new();
    seeder.flush(&mut out);
    out
}

fn sizes_said(out: &[Command]) -> Vec<u64> {
    picked(out, |c| match c {
        Command::SwarmSize(n) => Some(*n),
        _ => None,
    })
}

#[test]
fn a_scout_scrapes_every_swarm_and_says_their_size_without_joining_or_fetching() {
    let mut seeder =
        Seeder::new(MANIFEST.into(), Some(MANIFEST.into()), 10, Settings::default(), true);
    // One tracker is open before the manifest is read, the other opens after.
    let mut out = read_manifest(&mut seeder, MANIFEST, MASTER, &[7]);
    assert!(texts(&out).is_empty(), "no media playlist is read: {out:?}");
    seeder.tracker_open(9, "ws://u.example/", &mut random(), &mut out);
    let hashes: Vec<String> = seeder.swarms.iter().map(|s| s.info_hash.clone()).collect();
    assert_eq!(hashes.len(), 2, "both generations' swarms");
    let sent: Vec<(u64, serde_json::Value)> = picked(&out, |c| match c {
        Command::TrackerSend(s) => Some((s.conn, serde_json::from_str(&s.text).unwrap())),
        _ => None,
    });
    let scrape = serde_json::json!({"action": "scrape", "info_hash": hashes});
    assert_eq!(sent, [(7, scrape.clone()), (9, scrape)], "one scrape of all swarms each: {out:?}");
    assert!(
        out.iter().all(|c| !matches!(c, Command::PeerOffer(_) | Command::FetchSegment(_))),
        "a scout neither offers nor fetches: {out:?}"
    );

    // Nothing said before every tracker answered; then each swarm's largest count,
    // summed.
    assert!(sizes_said(&flushed(&mut seeder, 100)).is_empty());
    let reply = |a: u64, b: u64| {
        format!(
            r#"{{"action":"scrape","files":{{"{}":{{"complete":0,"incomplete":{a}}},"{}":{{"complete":1,"incomplete":{b}}}}}}}"#,
            hashes[0], hashes[1]
        )
    };
    let mut out = Vec::new();
    seeder.on_tracker_text(7, &reply(4, 2), &mut out);
    assert!(sizes_said(&flushed(&mut seeder, 150)).is_empty(), "tracker 9 has not answered");
    seeder.on_tracker_text(9, &reply(5, 0), &mut out);
    assert_eq!(sizes_said(&flushed(&mut seeder, 200)), [5 + 3]);
    assert!(sizes_said(&flushed(&mut seeder, 300)).is_empty(), "said once until it changes");

    // Scrapes again only after a while; goes without a goodbye (it never joined).
    let mut out = Vec::new();
    seeder.begin_turn(1_000);
    seeder.plan((0, 7), &mut random(), &mut out);
    assert!(out.is_empty(), "{out:?}");
    seeder.begin_turn(100 + SCRAPE_EVERY_MS);
    seeder.plan((0, 7), &mut random(), &mut out);
    assert_eq!(out.len(), 1, "{out:?}");
    let mut out = Vec::new();
    seeder.stop(&[7, 9], &mut out);
    assert!(out.is_empty(), "{out:?}");
}

#[test]
fn a_scout_whose_tracker_never_answers_says_what_the_others_counted_after_a_while() {
    let mut seeder =
        Seeder::new(MANIFEST.into(), Some(MANIFEST.into()), 10, Settings::default(), true);
    seeder.begin_turn(0);
    read_manifest(&mut seeder, MANIFEST, MASTER, &[7, 9]);
    let files: Vec<String> =
        seeder.swarms.iter().map(|s| format!(r#""{}":{{"incomplete":2}}"#, s.info_hash)).collect();
    let reply = format!(r#"{{"action":"scrape","files":{{{}}}}}"#, files.join(","));
    seeder.on_tracker_text(7, &reply, &mut Vec::new());
    assert!(sizes_said(&flushed(&mut seeder, SCRAPE_EVERY_MS - 1)).is_empty());
    assert_eq!(sizes_said(&flushed(&mut seeder, SCRAPE_EVERY_MS)), [4]);
}

#[test]
fn a_seeder_says_its_swarms_size_from_announce_replies_itself_not_counted() {
    let (mut seeder, _) = started();
    assert!(sizes_said(&flushed(&mut seeder, 10)).is_empty());
    let reply = |hash: &str, incomplete: u64| {
        format!(
            r#"{{"action":"announce","info_hash":"{hash}","interval":120,"complete":0,"incomplete":{incomplete}}}"#
        )
    };
    let (first, second) = (seeder.swarms[0].info_hash.clone(), seeder.swarms[1].info_hash.clone());
    let mut out = Vec::new();
    seeder.on_tracker_text(7, &reply(&first, 6), &mut out);
    seeder.on_tracker_text(7, &reply(&second, 3), &mut out);
    assert_eq!(sizes_said(&flushed(&mut seeder, 20)), [5 + 2]);
    seeder.on_tracker_text(7, &reply(&first, 1), &mut out);
    assert_eq!(sizes_said(&flushed(&mut seeder, 30)), [2], "all but itself left one swarm");
}
