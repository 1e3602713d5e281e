//! The default policy's parsers of untrusted input as fuzz targets: each takes any
//! bytes and panics only on a bug (a parser that panics, or a command that does not
//! survive being encoded and decoded again). `tests/fuzz.rs` runs them on generated
//! inputs; `tests/afl` (`just fuzz`) under AFL++, guided by coverage. Each comes with
//! valid examples to start from.

#![allow(clippy::unwrap_used, dead_code)]

use superpeer_policy_pml::wire::{self, Joiner, PeerCommand};
use superpeer_policy_pml::{announce, playlist};

/// A parser to fuzz: its name, valid examples and the check.
pub struct Target {
    pub name: &'static str,
    pub examples: fn() -> Vec<Vec<u8>>,
    pub check: fn(&[u8]),
}

pub const TARGETS: [Target; 3] = [
    Target { name: "peer-wire", examples: peer_wire_examples, check: peer_wire },
    Target { name: "tracker-json", examples: tracker_examples, check: tracker_message },
    Target { name: "playlists", examples: playlist_examples, check: playlist },
];

pub fn target(name: &str) -> Option<&'static Target> {
    TARGETS.iter().find(|t| t.name == name)
}

fn peer_wire_examples() -> Vec<Vec<u8>> {
    let commands = [
        PeerCommand::SegmentsAnnouncement { loaded: vec![100, 101, 102, 356], loading: vec![103] },
        PeerCommand::SegmentRequest { id: 101, request: 5, byte_from: Some(4) },
        PeerCommand::SegmentData { id: 7, request: 1, size: 1880 },
        PeerCommand::SegmentAbsent { id: 9, request: 2 },
    ];
    commands.iter().flat_map(|c| wire::encode(c, wire::MAX_MESSAGE).unwrap()).collect()
}

/// The peer wire codec and the chunk joiner: what decodes encodes to a form that
/// survives the trip (a request from byte 0 is written as a whole request).
fn peer_wire(input: &[u8]) {
    if let Ok(command) = wire::decode(input) {
        let trip = |command: &PeerCommand| {
            let mut joiner = Joiner::default();
            let body = wire::encode(command, wire::MAX_MESSAGE)
                .unwrap()
                .iter()
                .find_map(|chunk| joiner.push(chunk).unwrap())
                .unwrap();
            wire::decode(&body).unwrap()
        };
        let settled = trip(&command);
        assert_eq!(trip(&settled), settled);
    }
    let mut joiner = Joiner::default();
    for chunk in input.chunks(7) {
        if joiner.push(chunk).is_err() {
            break;
        }
    }
}

fn tracker_examples() -> Vec<Vec<u8>> {
    vec![
        br#"{"action":"announce","info_hash":"aaaaaaaaaaaaaaaaaaaa","peer_id":"-PM0203-viewer000001","offer_id":"o1","offer":{"type":"offer","sdp":"v=0"}}"#.to_vec(),
        br#"{"action":"announce","info_hash":"aaaaaaaaaaaaaaaaaaaa","peer_id":"-PM0203-viewer000001","offer_id":"o1","answer":{"type":"answer","sdp":"v=0"}}"#.to_vec(),
        br#"{"action":"announce","info_hash":"aaaaaaaaaaaaaaaaaaaa","interval":120,"complete":3,"incomplete":6}"#.to_vec(),
        br#"{"failure reason":"invalid info_hash","warning message":"slow down"}"#.to_vec(),
    ]
}

/// Tracker JSON, as a WebSocket tracker sends it.
fn tracker_message(input: &[u8]) {
    let _ = announce::parse(&String::from_utf8_lossy(input));
}

fn playlist_examples() -> Vec<Vec<u8>> {
    vec![
        b"#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=1280000,CODECS=\"avc1.4d401f,mp4a.40.2\",RESOLUTION=1280x720,AUDIO=\"aud\"\n720p.m3u8?sig=1\n#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID=\"aud\",NAME=\"en\",URI=\"../audio/en.m3u8\"\n".to_vec(),
        b"#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:7\n#EXTINF:2.0,\ns7.ts\n#EXT-X-BYTERANGE:1000@0\n#EXTINF:2,\nhttps://cdn.example/v/s8.mp4\n#EXT-X-BYTERANGE:500\n#EXTINF:2,\n/abs/s9.mp4\n#EXT-X-ENDLIST\n".to_vec(),
    ]
}

/// Master and media playlists, URL resolution and attribute lists.
fn playlist(input: &[u8]) {
    let text = String::from_utf8_lossy(input);
    let base = "https://o.example/live/sub/master.m3u8?x=1";
    if playlist::is_master(&text) {
        let _ = playlist::parse_master(&text, base);
    }
    let media = playlist::parse_media(&text, base);
    for segment in &media.segments {
        if let Some((start, end)) = segment.range {
            assert!(start <= end, "{start}..{end}");
        }
    }
    let _ = playlist::resolve(base, &text);
    let _ = playlist::attributes(&text);
    assert!(!playlist::without_query(&text).contains('?'));
}
