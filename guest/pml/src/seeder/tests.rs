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
    let mut seeder = Seeder::new(MANIFEST.into(), Some(MANIFEST.into()), 10, Settings::default());
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

    let garbage =
        Event::PeerMessage(superpeer_guest::PeerMessage { peer, data: b"cstr\x09cend".to_vec() });
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
    assert!(!probes.iter().any(|(_, u)| u.ends_with("seg5.ts")), "held ones are not asked about");
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
    assert_eq!(sent(&out), [PeerCommand::SegmentAbsent { id: 100, request: 1 }], "not held yet");
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
    let mut seeder = Seeder::new(MANIFEST.into(), Some(MANIFEST.into()), 10, Settings::default());
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
    seeder.handle(&fetched(playlist, &url, &media(100, 3, false)), &[], &mut random(), &mut out);
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
    let mut seeder = Seeder::new(MANIFEST.into(), Some(MANIFEST.into()), 10, Settings::default());
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
    let v22 =
        |kind, index: &str| Identity::V22.info_hash(&swarm::stream_swarm_id(swarm_id, kind, index));
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
    let out = turn(&mut seeder, 30, &[answer_from(&hash, b, &offer_ids[2]), offer_from(&hash, c)]);
    assert!(out.iter().any(|c| matches!(c, Command::PeerAcceptAnswer(a) if a.peer == offers[2])));
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
