//! The host's parsers of untrusted input on generated inputs (random bytes and mutated
//! valid examples, `superpeer-fuzzing`): master/worker frames, `.env`, `/seed` bodies and
//! channel ids, `originAllow` entries and URLs, and datagrams at a worker's WebRTC
//! socket (STUN demultiplexing, then the WebRTC library's own parsers for an address
//! that is a viewer's). None may panic; a bad datagram must not cost the viewer that
//! was there. `just fuzz` runs a million inputs each; `just test` a short run.

// Helpers panic on purpose: a broken fixture should fail the test that uses it.
#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::net::SocketAddr;
use std::str::FromStr;

use superpeer::dataplane::origin::{AllowEntry, OriginRules, redact};
use superpeer::dataplane::{DataPlane, DataPlaneLimits, IoEvent};
use superpeer::ipc::{FromWorker, ToWorker, WorkerReport, read_frame};
use superpeer::master::config::{MasterConfig, parse_env};
use superpeer::master::seeds::{self, SeedRequest};
use superpeer::policy::wire::{Command, Event, PeerAnswer};
use superpeer_fuzzing::{inputs, run};

#[path = "support/viewer.rs"]
mod viewer;

fn frame(json: &str) -> Vec<u8> {
    let mut bytes = (json.len() as u32).to_be_bytes().to_vec();
    bytes.extend(json.as_bytes());
    bytes
}

#[test]
fn master_and_worker_frames() {
    let report = serde_json::to_string(&FromWorker::Report(Box::default())).unwrap();
    let examples = vec![
        frame(r#"{"type":"stop"}"#),
        frame(&report),
        frame(&serde_json::to_string(&WorkerReport::default()).unwrap()),
        frame(r#"{"type":"swap","policy":{"bytes":"AAAA"}}"#),
    ];
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    println!(
        "{}",
        run("ipc frames", &examples, inputs(20_000), |input| {
            runtime.block_on(async {
                let _ = read_frame::<_, ToWorker>(&mut &input[..]).await;
                let _ = read_frame::<_, FromWorker>(&mut &input[..]).await;
            });
        })
    );
}

#[test]
fn env_files() {
    let examples = vec![
        b"listenPort=9000\nexport accessToken=\"s3cret\"\nsignal1='wss://t.example/'\n".to_vec(),
        b"# comment\ncacheSize=20G\nudpPorts=40000-40999\noriginAllow=10.0.0.0/8,cdn.lan:8443\n"
            .to_vec(),
        b"policyLimits={\"call_deadline\":{\"secs\":0,\"nanos\":5000000}}\nbindAddress=::1\n"
            .to_vec(),
    ];
    let none = Default::default();
    println!(
        "{}",
        run(".env", &examples, inputs(20_000), |input| {
            if let Ok(values) = parse_env(&String::from_utf8_lossy(input)) {
                let _ = MasterConfig::from_values(&values, &none);
            }
        })
    );
}

#[test]
fn seed_requests_and_channel_ids() {
    let examples = vec![
        br#"{"list":[{"channel":"aHR0cDovL28uZXhhbXBsZS9tLm0zdTg=","live":true,"maxConnections":80,"signal1":"wss://t.example/"}]}"#.to_vec(),
        br#"{"list":[{"channel":"aHR0cDovL28uZXhhbXBsZS9hPz4-Pw","url":"https://o.example/a.m3u8","settings":{"identities":["2.3"]},"priority":3,"keepAlive":true}]}"#.to_vec(),
    ];
    println!(
        "{}",
        run("seed bodies and channel ids", &examples, inputs(20_000), |input| {
            if let Ok(request) = serde_json::from_slice::<SeedRequest>(input) {
                let _ = seeds::validate(&request);
                for item in &request.list {
                    let _ = item.manifest_url();
                    assert!(seeds::same_channel(&item.channel, &item.channel));
                }
            }
            let text = String::from_utf8_lossy(input);
            if let Ok(decoded) = seeds::decode_channel(&text) {
                assert_eq!(seeds::channel_key(&text), decoded);
            }
        })
    );
}

#[test]
fn origin_rules_and_urls() {
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
    println!(
        "{}",
        run("originAllow entries and URLs", &examples, inputs(20_000), |input| {
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
        })
    );
}

#[test]
fn datagrams_at_a_workers_socket() {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let _entered = runtime.enter();
    let (mut plane, _io) = DataPlane::new(DataPlaneLimits::default()).unwrap();
    let local = SocketAddr::from(([127, 0, 0, 1], 9));
    let (_, offer) = superpeer_load::offering_connection(local).unwrap();
    let Some(Event::PeerAnswerReady(answer)) =
        plane.carry_out(Command::PeerAnswer(PeerAnswer { peer: 1, offer })).pop()
    else {
        panic!("no answer")
    };
    let ufrag = viewer::sdp_value(&answer.sdp, "a=ice-ufrag:");
    let password = viewer::sdp_value(&answer.sdp, "a=ice-pwd:");
    // The viewer's address becomes known, as with a real viewer's first request.
    let viewer_address = SocketAddr::from(([127, 0, 0, 1], 40_000));
    let genuine = viewer::binding_request(&format!("{ufrag}:viewer"), password);
    plane.on_io(IoEvent::Datagram { from: viewer_address, data: genuine.clone() });
    assert_eq!(plane.viewer_addresses(), 1);

    let examples = vec![
        genuine.to_vec(),
        viewer::binding_request(&format!("{ufrag}:forger"), "wrong").to_vec(),
        // A DTLS record header, as the handshake begins.
        b"\x16\xfe\xfd\x00\x00\x00\x00\x00\x00\x00\x00\x00\x40\x01\x00\x00\x34\x00\x00".to_vec(),
    ];
    let mut n = 0u32;
    println!(
        "{}",
        run("datagrams", &examples, inputs(5_000), |input| {
            n = n.wrapping_add(1);
            // From the viewer's address (into the WebRTC library) and from strangers.
            let from = if n.is_multiple_of(2) {
                viewer_address
            } else {
                SocketAddr::from(([10, 0, (n >> 8) as u8, n as u8], 50_000))
            };
            plane.on_io(IoEvent::Datagram { from, data: input.to_vec().into() });
        })
    );
    assert!(plane.viewer_addresses() <= 1 + 4, "strangers took addresses");
}
