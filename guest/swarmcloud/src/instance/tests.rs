//! A worker's life as the host, the tracker, the relay and viewers meet the policy.

use superpeer_guest::{
    CacheTier, CancelServe, HttpRequest, HttpResponse, MessageSize, PeerAcceptAnswer, PeerMessage,
    PeerState, SdpReady, SegmentInfo, SegmentStored, ServeSegment, TextFetched, TrackerState,
    TrackerText,
};

use super::*;

const CHANNEL: &str = "Y2hhbm5lbA==";
const VOD: &str = "#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2,\ns0.ts\n#EXTINF:2,\ns1.ts\n#EXTINF:2,\ns2.ts\n#EXT-X-ENDLIST\n";

fn config(token: &str, max_connections: u32) -> SeedConfig {
    SeedConfig {
        channel: CHANNEL.into(),
        manifest_url: Some("http://o/vod.m3u8".into()),
        trackers: vec!["http://t/v1".into(), "ws://s1/".into(), "ws://s2/".into()],
        live: false,
        max_connections,
        label: String::new(),
        settings: vec![("token".into(), token.into())],
        scout: false,
    }
}

fn empty() -> HostState {
    HostState {
        trackers: vec![],
        peers: vec![],
        fetches: vec![],
        requests: vec![],
        segments: vec![],
        timers: vec![],
    }
}

/// The policy and what the host knows of it.
struct Host {
    instance: Instance,
    now: u64,
    next_handle: u64,
    segments: Vec<SegmentInfo>,
    peers: Vec<PeerId>,
    signals: Vec<(ConnId, String)>,
}

impl Host {
    fn new(config: &SeedConfig) -> Host {
        let instance = Instance::init(config, None, &empty(), 7).unwrap();
        Host { instance, now: 0, next_handle: 1, segments: vec![], peers: vec![], signals: vec![] }
    }

    fn step(&mut self, events: Vec<Event>) -> Vec<Command> {
        self.now += 100;
        let out = self.instance.handle(events, self.now, 1_700_000_000_000 + self.now);
        for command in &out {
            match command {
                Command::TrackerConnect(c) => self.signals.push((c.conn, c.url.clone())),
                Command::PeerAnswer(a) => self.peers.push(a.peer),
                Command::PeerClose(c) => self.peers.retain(|p| *p != c.peer),
                _ => {}
            }
        }
        out
    }

    /// Started, announced, the VOD read and held, the relays open.
    fn running(config: &SeedConfig) -> Host {
        let mut host = Host::new(config);
        let out = host.step(vec![Event::Started]);
        let announce = requests(&out).remove(0);
        assert_eq!(announce.url, "http://t/v1/channel");
        let body: serde_json::Value = serde_json::from_slice(&announce.body).unwrap();
        assert_eq!(
            (body["channel"].as_str(), body["super"].as_bool()),
            (Some(CHANNEL), Some(true))
        );
        let manifest = fetch_texts(&out).remove(0);
        let reply = br#"{"ret":0,"data":{"id":"sp1","report_interval":5,"peers":[{"id":"v0"}]}}"#;
        let out = host.step(vec![
            Event::HttpResponse(HttpResponse {
                request: announce.request,
                status: 200,
                headers: vec![],
                body: reply.to_vec(),
            }),
            Event::TextFetched(TextFetched {
                fetch: manifest,
                url: "http://o/vod.m3u8".into(),
                text: VOD.into(),
            }),
        ]);
        let urls: Vec<&str> = host.signals.iter().map(|(_, url)| url.as_str()).collect();
        assert_eq!(urls, ["ws://s1/?id=sp1&p=web&v=2.9.10", "ws://s2/?id=sp1&p=web&v=2.9.10"]);
        let mut events: Vec<Event> =
            host.signals.iter().map(|(conn, _)| Event::TrackerConnected(*conn)).collect();
        for fetch in segment_fetches(&out) {
            let segment = SegmentInfo {
                handle: host.next_handle,
                url: String::new(),
                range: None,
                size: 150_000,
                tier: CacheTier::Disk,
            };
            host.next_handle += 1;
            host.segments.push(segment.clone());
            events.push(Event::SegmentStored(SegmentStored { fetch, segment }));
        }
        host.step(events);
        host
    }

    /// A viewer offers through relay `relay`, is answered, opens and says METADATA.
    fn viewer(&mut self, relay: usize, remote: &str, channel: &str) -> (PeerId, Vec<Command>) {
        let conn = self.signals[relay].0;
        let offer = format!(
            r#"{{"action":"signal","from_peer_id":"{remote}","data":{{"type":"offer","sdp":"v=0 {remote}"}}}}"#
        );
        let out = self.step(vec![Event::TrackerText(TrackerText { conn, text: offer })]);
        let Some(Command::PeerAnswer(answer)) = out.first() else { return (0, out) };
        let peer = answer.peer;
        let out =
            self.step(vec![Event::PeerAnswerReady(SdpReady { peer, sdp: "v=0 ours".into() })]);
        let Some(Command::TrackerSend(sent)) = out.first() else { panic!("{out:?}") };
        assert_eq!(sent.conn, conn, "answered through the relay the offer came on");
        assert!(sent.text.contains(&format!(r#""to_peer_id":"{remote}""#)), "{}", sent.text);
        let metadata = format!(
            r#"{{"event":"METADATA","channel":"{channel}","field":{{}},"sequential":true}}"#
        );
        let out = self.step(vec![Event::PeerChannelOpen(peer), message(peer, &metadata)]);
        (peer, out)
    }

    fn state(&self) -> HostState {
        HostState {
            trackers: self
                .signals
                .iter()
                .map(|(conn, url)| TrackerState { conn: *conn, url: url.clone(), open: true })
                .collect(),
            peers: self
                .peers
                .iter()
                .map(|peer| PeerState { peer: *peer, open: true, serving: vec![] })
                .collect(),
            fetches: vec![],
            requests: vec![],
            segments: self.segments.clone(),
            timers: vec![],
        }
    }
}

fn message(peer: PeerId, text: &str) -> Event {
    Event::PeerMessage(PeerMessage { peer, data: text.as_bytes().to_vec() })
}

fn requests(out: &[Command]) -> Vec<HttpRequest> {
    out.iter()
        .filter_map(|c| if let Command::HttpRequest(r) = c { Some(r.clone()) } else { None })
        .collect()
}

fn fetch_texts(out: &[Command]) -> Vec<u64> {
    out.iter()
        .filter_map(|c| if let Command::FetchText(f) = c { Some(f.fetch) } else { None })
        .collect()
}

fn segment_fetches(out: &[Command]) -> Vec<u64> {
    out.iter()
        .filter_map(|c| if let Command::FetchSegment(f) = c { Some(f.fetch) } else { None })
        .collect()
}

/// The JSON messages sent to `peer`.
fn said(out: &[Command], peer: PeerId) -> Vec<serde_json::Value> {
    out.iter()
        .filter_map(|c| match c {
            Command::PeerSendText(s) if s.peer == peer => serde_json::from_str(&s.text).ok(),
            Command::PeerSend(s) if s.peer == peer => panic!("a binary protocol message: {s:?}"),
            _ => None,
        })
        .collect()
}

fn serves(out: &[Command]) -> Vec<ServeSegment> {
    out.iter()
        .filter_map(|c| if let Command::ServeSegment(s) = c { Some(s.clone()) } else { None })
        .collect()
}

fn closed(out: &[Command]) -> Vec<PeerId> {
    out.iter()
        .filter_map(|c| if let Command::PeerClose(p) = c { Some(p.peer) } else { None })
        .collect()
}

#[test]
fn a_viewer_is_answered_hears_what_we_hold_and_gets_segments_in_exact_frames() {
    let mut host = Host::running(&config("tk", 10));
    let (peer, out) = host.viewer(1, "v1", CHANNEL);
    let metadata = &said(&out, peer)[0];
    assert_eq!(metadata["event"], "METADATA");
    assert_eq!(metadata["channel"], CHANNEL);
    assert_eq!(metadata["super"], true);
    assert_eq!(metadata["token"], "tk");
    assert_eq!(metadata["field"], serde_json::json!({"0": [0, 1, 2]}), "an object, by level");

    let out = host.step(vec![message(
        peer,
        r#"{"event":"REQUEST","sn":1,"level":0,"seg_id":"0-1","urgent":true,"reverse":true}"#,
    )]);
    let piece = &said(&out, peer)[0];
    assert_eq!(piece["event"], "PIECE");
    assert_eq!((piece["sn"].as_i64(), piece["level"].as_i64()), (Some(1), Some(0)));
    assert_eq!((piece["size"].as_u64(), piece["attachments"].as_u64()), (Some(150_000), Some(3)));
    assert_eq!(piece["seg_id"], "0-1");
    assert!(
        piece.get("reverse").is_none(),
        "frames go in order, so the PIECE must not say reverse"
    );
    let serve = &serves(&out)[0];
    assert_eq!((serve.peer, serve.handle, serve.offset), (peer, 2, 0));
    assert_eq!(serve.message_size, MessageSize::Exactly(64_000));

    // One upload per viewer: a second request meanwhile is not found.
    let out =
        host.step(vec![message(peer, r#"{"event":"REQUEST","sn":2,"level":0,"urgent":false}"#)]);
    assert_eq!(said(&out, peer)[0]["event"], "PIECE_NOT_FOUND");
    // A cancel stops it and says so.
    let out = host
        .step(vec![message(peer, r#"{"event":"PIECE_CANCEL","sn":1,"level":0,"seg_id":"0-1"}"#)]);
    assert!(out.contains(&Command::CancelServe(CancelServe { peer, handle: 2 })), "{out:?}");
    assert_eq!(said(&out, peer)[0]["event"], "PIECE_ABORT");
    // Not held, or named otherwise: not found.
    for request in [
        r#"{"event":"REQUEST","sn":9,"level":0,"urgent":true,"seg_id":"0-9"}"#,
        r#"{"event":"REQUEST","sn":1,"level":0,"urgent":true,"seg_id":"http://o/s1.ts"}"#,
        r#"{"event":"REQUEST","sn":1,"level":-1,"urgent":true}"#,
    ] {
        let out = host.step(vec![message(peer, request)]);
        assert_eq!(said(&out, peer)[0]["event"], "PIECE_NOT_FOUND", "{request}");
        assert!(serves(&out).is_empty());
    }
    // A segment stored later is announced to it.
    let out = host.step(vec![message(
        peer,
        r#"{"event":"HAVE","sn":2,"level":0,"seg_id":"0-2","complete":true}"#,
    )]);
    assert!(segment_fetches(&out).is_empty(), "nothing past the end of the VOD");

    // STATS every 40 s.
    host.now += PEER_STATS_MS;
    let timer = host.instance.state.timers.id_of(&Timer::PeerStats).unwrap();
    let out = host.step(vec![Event::TimerFired(timer)]);
    assert_eq!(said(&out, peer)[0]["event"], "STATS");
}

#[test]
fn viewers_of_another_channel_liars_and_floods_are_closed_alone() {
    let mut host = Host::running(&config("", 10));
    let (good, out) = host.viewer(0, "good", CHANNEL);
    assert!(said(&out, good)[0].get("token").is_none(), "no token when the seed has none");
    let (other, out) = host.viewer(0, "other", "b3RoZXI=");
    assert_eq!(closed(&out), [other]);
    let (garbage, _) = host.viewer(0, "garbage", CHANNEL);
    let out = host.step(vec![message(garbage, "{not json")]);
    assert_eq!(closed(&out), [garbage]);
    let (flood, _) = host.viewer(1, "flood", CHANNEL);
    let events: Vec<Event> =
        (0..1000).map(|_| message(flood, r#"{"event":"STATS","total_conns":1}"#)).collect();
    let out = host.step(events);
    assert_eq!(closed(&out), [flood]);
    // The good one is still served.
    let out =
        host.step(vec![message(good, r#"{"event":"REQUEST","sn":0,"level":0,"urgent":true}"#)]);
    assert_eq!(serves(&out).len(), 1);
    assert_eq!(said(&out, good)[0]["seg_id"], "0-0");
}

#[test]
fn offers_past_max_connections_are_refused_through_the_relay() {
    let mut host = Host::running(&config("", 1));
    let (first, _) = host.viewer(0, "first", CHANNEL);
    assert_ne!(first, 0);
    let (none, out) = host.viewer(0, "second", CHANNEL);
    assert_eq!(none, 0);
    let Some(Command::TrackerSend(reject)) = out.first() else { panic!("{out:?}") };
    assert!(reject.text.contains(r#""action":"reject""#), "{}", reject.text);
}

#[test]
fn figures_go_to_the_tracker_and_a_refusal_announces_again_and_leaving_says_off() {
    let mut host = Host::running(&config("", 10));
    host.now += 5_000;
    let timer = host.instance.state.timers.id_of(&Timer::Report).unwrap();
    let out = host.step(vec![Event::TimerFired(timer)]);
    let report = requests(&out).remove(0);
    assert_eq!(report.url, format!("http://t/v1/channel/{CHANNEL}/node/sp1/stats"));
    let refused = br#"{"ret":-1,"data":{"code":4004,"msg":"unknown peer"}}"#.to_vec();
    let response =
        HttpResponse { request: report.request, status: 200, headers: vec![], body: refused };
    host.step(vec![Event::HttpResponse(response)]);
    let timer = host.instance.state.timers.id_of(&Timer::Announce).unwrap();
    let out = host.step(vec![Event::TimerFired(timer)]);
    assert_eq!(requests(&out)[0].url, "http://t/v1/channel");
    let out = host.step(vec![Event::Stopping]);
    assert!(out.iter().any(|c| matches!(c, Command::TrackerClose(_))), "{out:?}");
}

#[test]
fn a_new_instance_keeps_the_viewers_and_relays_of_the_one_it_replaces() {
    let config = config("", 10);
    let mut host = Host::running(&config);
    let (peer, _) = host.viewer(0, "v1", CHANNEL);
    let snapshot = host.instance.snapshot();
    host.instance = Instance::init(&config, Some(&snapshot), &host.state(), 9).unwrap();
    let out = host.step(vec![Event::Started]);
    assert!(closed(&out).is_empty(), "{out:?}");
    assert!(
        !out.iter().any(|c| matches!(c, Command::TrackerConnect(_) | Command::TrackerClose(_))),
        "{out:?}"
    );
    assert!(requests(&out).is_empty(), "no new announce: {out:?}");
    // Its timers were lost with the host's (none listed): set again, so figures, STATS
    // and offers go on.
    for timer in [Timer::Report, Timer::Reach, Timer::PeerStats] {
        assert!(host.instance.state.timers.pending(&timer), "{timer:?} not set again: {out:?}");
    }
    let out =
        host.step(vec![message(peer, r#"{"event":"REQUEST","sn":2,"level":0,"urgent":true}"#)]);
    assert_eq!(serves(&out).len(), 1, "{out:?}");

    // Another policy's state: everything is let go, and the viewer connects again.
    let mut other = Instance::init(&config, Some(b"pml-st01..."), &host.state(), 3).unwrap();
    let out = other.handle(vec![Event::Started], 0, 0);
    assert_eq!(closed(&out), [peer]);
    assert_eq!(requests(&out).len(), 1, "it announces afresh");
}

#[test]
fn a_seed_without_what_the_protocol_needs_is_refused_with_a_reason() {
    let mut no_url = config("", 10);
    no_url.manifest_url = None;
    let mut no_tracker = config("", 10);
    no_tracker.trackers.remove(0);
    let mut no_signal = config("", 10);
    no_signal.trackers.truncate(1);
    for (seed, words) in [(no_url, "`url`"), (no_tracker, "http(s)"), (no_signal, "signal")] {
        let error = Instance::init(&seed, None, &empty(), 1).unwrap_err();
        assert!(error.contains(words), "{error}");
    }
}

#[test]
fn viewers_who_were_there_first_are_offered_to_and_say_metadata_second() {
    let mut host = Host::running(&config("", 10));
    let (answered, _) = host.viewer(0, "v1", CHANNEL);
    host.now += REACH_FIRST_MS;
    let timer = host.instance.state.timers.id_of(&Timer::Reach).unwrap();
    let out = host.step(vec![Event::TimerFired(timer)]);
    let ask = requests(&out).remove(0);
    assert_eq!(ask.url, format!("http://t/v1/channel/{CHANNEL}/node/sp1/peers"));
    let body: serde_json::Value = serde_json::from_slice(&ask.body).unwrap();
    assert_eq!(body["exclusions"], serde_json::json!(["v1"]), "those connected are not asked for");

    // The tracker names us, a viewer we are connected to, and two we are not.
    let peers = br#"{"ret":0,"data":{"peers":[{"id":"sp1"},{"id":"v1"},{"id":"a0"},{"id":"z9"}]}}"#;
    let response =
        HttpResponse { request: ask.request, status: 200, headers: vec![], body: peers.to_vec() };
    let out = host.step(vec![Event::HttpResponse(response)]);
    let offers: Vec<PeerId> = out
        .iter()
        .filter_map(|c| if let Command::PeerOffer(p) = c { Some(*p) } else { None })
        .collect();
    assert_eq!(offers.len(), 2, "{out:?}");
    let (a0, z9) = (offers[0], offers[1]);
    host.peers.extend([a0, z9]);

    // Our offer goes through a relay; the viewer's answer completes it.
    let out = host.step(vec![Event::PeerOfferReady(SdpReady { peer: z9, sdp: "v=0 ours".into() })]);
    let Some(Command::TrackerSend(sent)) = out.first() else { panic!("{out:?}") };
    let signal: serde_json::Value = serde_json::from_str(&sent.text).unwrap();
    assert_eq!(
        (signal["to_peer_id"].as_str(), signal["data"]["type"].as_str()),
        (Some("z9"), Some("offer"))
    );
    let answer =
        r#"{"action":"signal","from_peer_id":"z9","data":{"type":"answer","sdp":"v=0 z9"}}"#;
    let out =
        host.step(vec![Event::TrackerText(TrackerText { conn: sent.conn, text: answer.into() })]);
    assert_eq!(
        out,
        [Command::PeerAcceptAnswer(PeerAcceptAnswer { peer: z9, answer: "v=0 z9".into() })]
    );
    // It waits for our METADATA, and says its own after it: we do not answer that.
    let out = host.step(vec![Event::PeerChannelOpen(z9)]);
    assert_eq!(said(&out, z9)[0]["event"], "METADATA");
    let metadata = format!(r#"{{"event":"METADATA","channel":"{CHANNEL}","field":{{}}}}"#);
    let out = host.step(vec![message(z9, &metadata)]);
    assert!(said(&out, z9).is_empty(), "{out:?}");
    let out = host.step(vec![message(z9, r#"{"event":"REQUEST","sn":0,"level":0,"urgent":true}"#)]);
    assert_eq!(serves(&out).len(), 1, "{out:?}");

    // An offer of a0's crossing ours: a0's id is the lesser, so the SDK keeps its own
    // offer and ignores ours; we answer it instead.
    let crossed =
        r#"{"action":"signal","from_peer_id":"a0","data":{"type":"offer","sdp":"v=0 a0"}}"#;
    let out =
        host.step(vec![Event::TrackerText(TrackerText { conn: sent.conn, text: crossed.into() })]);
    assert!(closed(&out).contains(&a0), "{out:?}");
    assert!(out.iter().any(|c| matches!(c, Command::PeerAnswer(_))), "{out:?}");
    let _ = answered;
}

#[test]
fn offers_not_answered_in_time_are_withdrawn_and_a_greater_id_keeps_ours() {
    let mut host = Host::running(&config("", 10));
    host.now += REACH_FIRST_MS;
    let timer = host.instance.state.timers.id_of(&Timer::Reach).unwrap();
    let out = host.step(vec![Event::TimerFired(timer)]);
    let ask = requests(&out).remove(0);
    let peers = br#"{"ret":0,"data":{"peers":[{"id":"zz"}]}}"#.to_vec();
    let out = host.step(vec![Event::HttpResponse(HttpResponse {
        request: ask.request,
        status: 200,
        headers: vec![],
        body: peers,
    })]);
    let Some(Command::PeerOffer(zz)) = out.first().cloned() else { panic!("{out:?}") };
    // "zz" is greater than our "sp1": the SDK answers ours and drops its own offer.
    let conn = host.signals[0].0;
    let crossed = r#"{"action":"signal","from_peer_id":"zz","data":{"type":"offer","sdp":"v=0"}}"#;
    let out = host.step(vec![Event::TrackerText(TrackerText { conn, text: crossed.into() })]);
    assert!(out.is_empty(), "{out:?}");
    // Unanswered: withdrawn at a round after its time.
    host.now += OFFER_MS;
    let timer = host.instance.state.timers.id_of(&Timer::Reach).unwrap();
    let out = host.step(vec![Event::TimerFired(timer)]);
    assert_eq!(closed(&out), [zz]);
}
