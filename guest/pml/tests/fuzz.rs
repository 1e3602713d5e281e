//! The default policy's parsers of untrusted input on generated inputs (random bytes
//! and mutated valid examples, `superpeer-fuzzing`): the peer wire codec and chunk
//! joiner, tracker JSON, playlists and URL resolution. None may panic; what decodes
//! must encode back to the same command. `just fuzz` runs a million inputs each.

#![allow(clippy::unwrap_used, clippy::print_stdout)]

use superpeer_fuzzing::{inputs, run};
use superpeer_policy_pml::wire::{self, Joiner, PeerCommand};
use superpeer_policy_pml::{announce, playlist};

#[test]
fn peer_wire_commands_and_chunks() {
    let commands = [
        PeerCommand::SegmentsAnnouncement { loaded: vec![100, 101, 102, 356], loading: vec![103] },
        PeerCommand::SegmentRequest { id: 101, request: 5, byte_from: Some(4) },
        PeerCommand::SegmentData { id: 7, request: 1, size: 1880 },
        PeerCommand::SegmentAbsent { id: 9, request: 2 },
    ];
    let examples: Vec<Vec<u8>> =
        commands.iter().flat_map(|c| wire::encode(c, wire::MAX_MESSAGE).unwrap()).collect();
    println!(
        "{}",
        run("peer wire", &examples, inputs(50_000), |input| {
            if let Ok(command) = wire::decode(input) {
                // What decodes, encodes, to a form that survives the trip (a request
                // from byte 0 is written as a whole request).
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
        })
    );
}

#[test]
fn tracker_messages() {
    let examples = vec![
        br#"{"action":"announce","info_hash":"aaaaaaaaaaaaaaaaaaaa","peer_id":"-PM0203-viewer000001","offer_id":"o1","offer":{"type":"offer","sdp":"v=0"}}"#.to_vec(),
        br#"{"action":"announce","info_hash":"aaaaaaaaaaaaaaaaaaaa","peer_id":"-PM0203-viewer000001","offer_id":"o1","answer":{"type":"answer","sdp":"v=0"}}"#.to_vec(),
        br#"{"action":"announce","info_hash":"aaaaaaaaaaaaaaaaaaaa","interval":120,"complete":3,"incomplete":6}"#.to_vec(),
        br#"{"failure reason":"invalid info_hash","warning message":"slow down"}"#.to_vec(),
    ];
    println!(
        "{}",
        run("tracker JSON", &examples, inputs(50_000), |input| {
            let _ = announce::parse(&String::from_utf8_lossy(input));
        })
    );
}

#[test]
fn playlists_and_urls() {
    let examples = vec![
        b"#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=1280000,CODECS=\"avc1.4d401f,mp4a.40.2\",RESOLUTION=1280x720,AUDIO=\"aud\"\n720p.m3u8?sig=1\n#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID=\"aud\",NAME=\"en\",URI=\"../audio/en.m3u8\"\n".to_vec(),
        b"#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:7\n#EXTINF:2.0,\ns7.ts\n#EXT-X-BYTERANGE:1000@0\n#EXTINF:2,\nhttps://cdn.example/v/s8.mp4\n#EXT-X-BYTERANGE:500\n#EXTINF:2,\n/abs/s9.mp4\n#EXT-X-ENDLIST\n".to_vec(),
    ];
    println!(
        "{}",
        run("playlists", &examples, inputs(50_000), |input| {
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
        })
    );
}
