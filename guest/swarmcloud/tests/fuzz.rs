//! The SwarmCloud policy's parsers of untrusted input, and the policy itself, on
//! generated inputs (random bytes and mutated valid examples, `superpeer-fuzzing`):
//! what viewers say on a DataChannel, what relays and the tracker send, channel ids.
//! None may panic; a DataChannel message that decodes encodes back to the same
//! message; and a worker's instance fed any of it as a viewer's, a relay's or the
//! tracker's words closes at most that viewer and goes on serving the others.

#![allow(clippy::unwrap_used, clippy::print_stdout)]

use superpeer_fuzzing::{inputs, run};
use superpeer_guest::{
    CacheTier, Command, Event, HostState, HttpResponse, MessageSize, PeerMessage, SdpReady,
    SeedConfig, SegmentInfo, SegmentStored, TextFetched, TrackerText,
};
use superpeer_policy_swarmcloud::instance::Instance;
use superpeer_policy_swarmcloud::peer::Message;
use superpeer_policy_swarmcloud::signal::Incoming;
use superpeer_policy_swarmcloud::{channel, tracker};

fn peer_examples() -> Vec<Vec<u8>> {
    [
        r#"{"event":"METADATA","field":{"0":[1,2,3]},"platform":"WEB","channel":"Y2g=","sequential":true,"peers":3}"#,
        r#"{"event":"REQUEST","sn":12,"level":0,"seg_id":"0-12","urgent":true,"reverse":true}"#,
        r#"{"event":"HAVE","sn":13,"level":1,"seg_id":"1-13","complete":true}"#,
        r#"{"event":"PIECE_CANCEL","sn":12,"level":0,"seg_id":"0-12"}"#,
        r#"{"event":"STATS","total_conns":4,"level":0}"#,
        r#"{"event":"PIECE","sn":1,"level":0,"seg_id":"0-1","size":130000,"attachments":3}"#,
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect()
}

fn relay_examples() -> Vec<Vec<u8>> {
    [
        r#"{"action":"signal","from_peer_id":"v1","data":{"type":"offer","sdp":"v=0"}}"#,
        r#"{"action":"signal","from_peer_id":"v1","data":"{\"type\":\"candidate\",\"candidate\":{\"candidate\":\"a\"}}"}"#,
        r#"{"action":"signal","from_peer_id":"v1"}"#,
        r#"{"action":"reject","from_peer_id":"v1","reason":"no","fatal":true}"#,
        r#"{"action":"ver","ver":26}"#,
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect()
}

fn tracker_examples() -> Vec<Vec<u8>> {
    [
        r#"{"ret":0,"data":{"id":"p1","report_interval":20,"peers":[{"id":"v1"}],"signal":"ws://s/"}}"#,
        r#"{"ret":-1,"data":{"code":5001,"msg":"busy"}}"#,
        r#"{"ret":0,"data":{}}"#,
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect()
}

#[test]
fn datachannel_messages() {
    let check = |input: &[u8]| {
        if let Some(message) = Message::decode(input) {
            let again = Message::decode(message.encode().as_bytes()).unwrap();
            assert_eq!(again, message);
        }
    };
    println!("{}", run("swarmcloud-peer", &peer_examples(), inputs(50_000), check));
}

#[test]
fn relay_and_tracker_texts_and_channel_ids() {
    let check = |input: &[u8]| {
        let text = String::from_utf8_lossy(input);
        let _ = Incoming::decode(&text);
        let _ = tracker::parse::<tracker::Announced>(input);
        let _ = tracker::parse::<serde_json::Value>(input);
        let _ = channel::decode(&text);
        if let Some(id) = channel::id(&text, channel::Signals::Single(&text)) {
            assert!(channel::decode(&id).is_some(), "{text:?} -> {id}");
        }
    };
    let mut examples = relay_examples();
    examples.extend(tracker_examples());
    examples.push(b"http://127.0.0.1:8710/live/master.m3u8?x=1".to_vec());
    println!("{}", run("swarmcloud-texts", &examples, inputs(50_000), check));
}

/// A running instance with one viewer connected and ready (under a peer id no example
/// names): the instance, the relay connection and the viewer's peer.
fn running() -> (Instance, u64, u64) {
    let config = SeedConfig {
        channel: "Y2g=".into(),
        manifest_url: Some("http://o/vod.m3u8".into()),
        trackers: vec!["http://t/v1".into(), "ws://s/".into()],
        live: false,
        max_connections: 10,
        label: String::new(),
        settings: vec![],
        scout: false,
    };
    let empty = HostState {
        trackers: vec![],
        peers: vec![],
        fetches: vec![],
        requests: vec![],
        segments: vec![],
        timers: vec![],
    };
    let mut instance = Instance::init(&config, None, &empty, 1).unwrap();
    let out = instance.handle(vec![Event::Started], 1, 1);
    let find = |out: &[Command], pick: fn(&Command) -> Option<u64>| out.iter().find_map(pick);
    let request =
        find(&out, |c| if let Command::HttpRequest(r) = c { Some(r.request) } else { None })
            .unwrap();
    let manifest =
        find(&out, |c| if let Command::FetchText(f) = c { Some(f.fetch) } else { None }).unwrap();
    let reply = br#"{"ret":0,"data":{"id":"sp","report_interval":20,"peers":[]}}"#.to_vec();
    let media = "#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2,\ns0.ts\n#EXT-X-ENDLIST\n";
    let out = instance.handle(
        vec![
            Event::HttpResponse(HttpResponse {
                request,
                status: 200,
                headers: vec![],
                body: reply,
            }),
            Event::TextFetched(TextFetched {
                fetch: manifest,
                url: "http://o/vod.m3u8".into(),
                text: media.into(),
            }),
        ],
        2,
        2,
    );
    let conn = find(&out, |c| if let Command::TrackerConnect(t) = c { Some(t.conn) } else { None })
        .unwrap();
    let fetch = find(&out, |c| if let Command::FetchSegment(f) = c { Some(f.fetch) } else { None })
        .unwrap();
    let segment = SegmentInfo {
        handle: 77,
        url: String::new(),
        range: None,
        size: 100,
        tier: CacheTier::Disk,
    };
    let offer =
        r#"{"action":"signal","from_peer_id":"viewer-zz9","data":{"type":"offer","sdp":"v=0"}}"#;
    let out = instance.handle(
        vec![
            Event::TrackerConnected(conn),
            Event::SegmentStored(SegmentStored { fetch, segment }),
            Event::TrackerText(TrackerText { conn, text: offer.into() }),
        ],
        3,
        3,
    );
    let peer =
        find(&out, |c| if let Command::PeerAnswer(a) = c { Some(a.peer) } else { None }).unwrap();
    let metadata = br#"{"event":"METADATA","channel":"Y2g=","field":{}}"#.to_vec();
    instance.handle(
        vec![
            Event::PeerAnswerReady(SdpReady { peer, sdp: "v=0".into() }),
            Event::PeerChannelOpen(peer),
            Event::PeerMessage(PeerMessage { peer, data: metadata }),
        ],
        4,
        4,
    );
    (instance, conn, peer)
}

#[test]
fn an_instance_fed_garbage_closes_at_most_the_one_who_sent_it() {
    let (mut instance, conn, viewer) = running();
    let mut examples = peer_examples();
    examples.extend(relay_examples());
    examples.extend(tracker_examples());
    let mut now = 10;
    let mut liar = 1_000_000u64;
    let check = |input: &[u8]| {
        now += 1;
        liar += 1;
        let text = String::from_utf8_lossy(input).into_owned();
        let out = instance.handle(
            vec![
                // A stranger's message, the relay's text, a reply to no request.
                Event::PeerMessage(PeerMessage { peer: liar, data: input.to_vec() }),
                Event::TrackerText(TrackerText { conn, text }),
                Event::HttpResponse(HttpResponse {
                    request: liar,
                    status: 200,
                    headers: vec![],
                    body: input.to_vec(),
                }),
            ],
            now,
            now,
        );
        assert!(
            !out.iter().any(|c| matches!(c, Command::PeerClose(p) if p.peer == viewer)),
            "the viewer was closed for others' words: {out:?}"
        );
    };
    println!("{}", run("swarmcloud-instance", &examples, inputs(20_000), check));
    // The viewer is still served.
    let request = br#"{"event":"REQUEST","sn":0,"level":0,"urgent":true}"#.to_vec();
    let out = instance.handle(
        vec![Event::PeerMessage(PeerMessage { peer: viewer, data: request })],
        now + 1,
        now + 1,
    );
    assert!(
        out.iter().any(|c| matches!(c, Command::ServeSegment(s) if s.message_size == MessageSize::Exactly(64_000))),
        "{out:?}"
    );
}
