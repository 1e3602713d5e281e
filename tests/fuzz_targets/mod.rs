//! The host's parsers of untrusted input as fuzz targets: master/worker frames, `.env`,
//! `/seed` bodies and channel ids, `originAllow` entries and URLs, and datagrams at a
//! worker's WebRTC socket (STUN demultiplexing, then the WebRTC library's own parsers
//! for an address that is a viewer's). Each starts with its valid examples and a check
//! that panics only on a bug. `tests/fuzz.rs` runs them on generated inputs;
//! `tests/afl` (`just fuzz`) under AFL++, guided by coverage.

#![allow(clippy::unwrap_used, dead_code)]

use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Instant;

use bytes::BytesMut;
use superpeer::dataplane::origin::{AllowEntry, OriginRules, redact};
use superpeer::dataplane::{DataPlane, DataPlaneLimits, Input, IoEvent};
use superpeer::ipc::{FromWorker, ToWorker, WorkerReport, read_frame};
use superpeer::master::config::{MasterConfig, parse_env};
use superpeer::master::seeds::{self, SeedRequest};
use superpeer::policy::wire::{Command, Event, PeerAnswer, PeerId};

/// A check of one input: panics only on a bug.
pub type Check = Box<dyn FnMut(&[u8])>;

/// A target, started: its valid examples and its check.
pub struct Fuzzing {
    pub examples: Vec<Vec<u8>>,
    pub check: Check,
}

/// A parser to fuzz: its name and how to start it (some need a runtime or a worker's
/// data plane, made once and fed every input).
pub struct Target {
    pub name: &'static str,
    pub start: fn() -> Fuzzing,
}

pub const TARGETS: [Target; 5] = [
    Target { name: "ipc-frames", start: ipc_frames },
    Target { name: "env-files", start: env_files },
    Target { name: "seeds-and-channels", start: seeds_and_channels },
    Target { name: "origin-rules", start: origin_rules },
    Target { name: "datagrams", start: datagrams },
];

pub fn target(name: &str) -> Option<&'static Target> {
    TARGETS.iter().find(|t| t.name == name)
}

fn frame(json: &str) -> Vec<u8> {
    let mut bytes = (json.len() as u32).to_be_bytes().to_vec();
    bytes.extend(json.as_bytes());
    bytes
}

fn ipc_frames() -> Fuzzing {
    let report = serde_json::to_string(&FromWorker::Report(Box::default())).unwrap();
    let examples = vec![
        frame(r#"{"type":"stop"}"#),
        frame(&report),
        frame(&serde_json::to_string(&WorkerReport::default()).unwrap()),
        frame(r#"{"type":"swap","policy":{"bytes":"AAAA"}}"#),
    ];
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let check = move |input: &[u8]| {
        runtime.block_on(async {
            let _ = read_frame::<_, ToWorker>(&mut &input[..]).await;
            let _ = read_frame::<_, FromWorker>(&mut &input[..]).await;
        });
    };
    Fuzzing { examples, check: Box::new(check) }
}

fn env_files() -> Fuzzing {
    let examples = vec![
        b"listenPort=9000\nexport accessToken=\"s3cret\"\nsignal1='wss://t.example/'\n".to_vec(),
        b"# comment\ncacheSize=20G\nudpPorts=40000-40999\noriginAllow=10.0.0.0/8,cdn.lan:8443\n"
            .to_vec(),
        b"policyLimits={\"call_deadline\":{\"secs\":0,\"nanos\":5000000}}\nbindAddress=::1\n"
            .to_vec(),
    ];
    let none = Default::default();
    let check = move |input: &[u8]| {
        if let Ok(values) = parse_env(&String::from_utf8_lossy(input)) {
            let _ = MasterConfig::from_values(&values, &none);
        }
    };
    Fuzzing { examples, check: Box::new(check) }
}

fn seeds_and_channels() -> Fuzzing {
    let examples = vec![
        br#"{"list":[{"channel":"aHR0cDovL28uZXhhbXBsZS9tLm0zdTg=","live":true,"maxConnections":80,"signal1":"wss://t.example/"}]}"#.to_vec(),
        br#"{"list":[{"channel":"aHR0cDovL28uZXhhbXBsZS9hPz4-Pw","url":"https://o.example/a.m3u8","settings":{"identities":["2.3"]},"priority":3,"keepAlive":true}]}"#.to_vec(),
    ];
    let check = |input: &[u8]| {
        if let Ok(request) = serde_json::from_slice::<SeedRequest>(input) {
            let _ = seeds::validate(&request);
            for item in request.into_items() {
                let _ = item.manifest_url();
                assert!(seeds::same_channel(&item.channel, &item.channel));
            }
        }
        let text = String::from_utf8_lossy(input);
        if let Ok(decoded) = seeds::decode_channel(&text) {
            assert_eq!(seeds::channel_key(&text), decoded);
        }
    };
    Fuzzing { examples, check: Box::new(check) }
}

fn origin_rules() -> Fuzzing {
    let examples = vec![
        b"cdn.lan:8443".to_vec(),
        b"10.0.0.0/8".to_vec(),
        b"[::1]:9000".to_vec(),
        b"http://127.0.0.1:8080/live/s1.ts?token=x#t".to_vec(),
        b"https://user:pw@[fe80::1%25eth0]:443/a/../b".to_vec(),
        b"http://169.254.169.254/latest/meta-data/".to_vec(),
    ];
    let rules = OriginRules::new(
        Some("http://127.0.0.1:8080/live/master.m3u8"),
        superpeer::dataplane::origin::parse_allow_list("cdn.lan:8443,10.0.0.0/8").unwrap(),
    );
    let check = move |input: &[u8]| {
        let text = String::from_utf8_lossy(input);
        if let Ok(entry) = AllowEntry::from_str(&text) {
            assert_eq!(AllowEntry::from_str(&entry.to_string()), Ok(entry), "{text:?}");
        }
        // Nothing of a query or fragment survives, but the mark that there was one.
        let shown = redact(&text);
        assert!(!shown.trim_end_matches("?…").contains(['?', '#']), "{text:?} -> {shown}");
        if let Ok(url) = url::Url::parse(&text) {
            let _ = rules.route(&url);
        }
    };
    Fuzzing { examples, check: Box::new(check) }
}

/// Datagrams at a worker's socket, from the address of a viewer that proved it knows
/// its connection's password and from strangers; strangers never take an address. The
/// data plane's state machine alone: no socket, no runtime.
fn datagrams() -> Fuzzing {
    let local = SocketAddr::from(([127, 0, 0, 1], 9));
    let limits = DataPlaneLimits::default();
    let mut plane = DataPlane::new(local, false, limits.offer_timeout, limits.stall_timeout);
    let (_, offer) = superpeer_load::offering_connection(local).unwrap();
    let answer = Input::Command(Command::PeerAnswer(PeerAnswer { peer: PeerId(1), offer }));
    plane.handle_input(answer, Instant::now());
    let Some(Event::PeerAnswerReady(answer)) = plane.poll_event() else { panic!("no answer") };
    let ufrag = superpeer_load::sdp_value(&answer.sdp, "a=ice-ufrag:").unwrap();
    let password = superpeer_load::sdp_value(&answer.sdp, "a=ice-pwd:").unwrap();
    // The viewer's address becomes known, as with a real viewer's first request.
    let viewer_address = SocketAddr::from(([127, 0, 0, 1], 40_000));
    let genuine = superpeer_load::binding_request(&format!("{ufrag}:viewer"), password);
    let datagram = |from, data| Input::Io(IoEvent::Datagram { from, data });
    plane.handle_input(datagram(viewer_address, BytesMut::from(&genuine[..])), Instant::now());
    assert_eq!(plane.viewer_addresses(), 1);
    let examples = vec![
        genuine.to_vec(),
        superpeer_load::binding_request(&format!("{ufrag}:forger"), "wrong").to_vec(),
        // A DTLS record header, as the handshake begins.
        b"\x16\xfe\xfd\x00\x00\x00\x00\x00\x00\x00\x00\x00\x40\x01\x00\x00\x34\x00\x00".to_vec(),
    ];
    let mut n = 0u32;
    let check = move |input: &[u8]| {
        n = n.wrapping_add(1);
        // From the viewer's address (into the WebRTC library) and from strangers.
        let from = if n.is_multiple_of(2) {
            viewer_address
        } else {
            SocketAddr::from(([10, 0, (n >> 8) as u8, n as u8], 50_000))
        };
        plane.handle_input(datagram(from, BytesMut::from(input)), Instant::now());
        while plane.poll_event().is_some() || plane.poll_transmit().is_some() {}
        assert!(plane.viewer_addresses() <= 1 + 4, "strangers took addresses");
    };
    Fuzzing { examples, check: Box::new(check) }
}
