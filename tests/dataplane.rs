//! The worker's data plane against real local servers on ports chosen by the OS: an
//! HTTP origin that counts its requests, and a WebSocket tracker.

// Helpers panic on purpose: a broken fixture should fail the test that uses it.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use superpeer::dataplane::disk::{self, DiskCache, DiskCacheConfig};
use superpeer::dataplane::origin::{OriginRules, parse_allow_list};
use superpeer::dataplane::{DataPlaneLimits, Driver, Held, Input, IoEvent};
use superpeer::policy::wire::{
    ByteRange, CacheTier, Command, ConnId, Event, FetchId, FetchSegment, FetchText, HttpRequest,
    RequestId, TrackerConnect, TrackerSend,
};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

#[path = "support/harness.rs"]
mod harness;

const SEGMENT: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";

/// An origin on 127.0.0.1:0: a playlist, a segment (ranges honoured), a 404, a 500
/// and a large file. Returns its base URL and its request counter.
async fn origin() -> (String, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let count = |hits: Arc<AtomicUsize>| move || hits.fetch_add(1, Ordering::SeqCst);
    let (h1, h2, h3, h4) =
        (count(hits.clone()), count(hits.clone()), count(hits.clone()), count(hits.clone()));
    let app = Router::new()
        .route(
            "/live.m3u8",
            get(move || async move {
                h1();
                "#EXTM3U\n#EXTINF:2,\nseg0.ts\n"
            }),
        )
        .route(
            "/seg0.ts",
            get(move |headers: HeaderMap| async move {
                h2();
                let range = headers.get("range").and_then(|v| v.to_str().ok()).and_then(|r| {
                    let (a, b) = r.strip_prefix("bytes=")?.split_once('-')?;
                    Some((a.parse::<usize>().ok()?, b.parse::<usize>().ok()?))
                });
                match range {
                    Some((a, b)) => (StatusCode::PARTIAL_CONTENT, SEGMENT[a..=b].to_vec()),
                    None => (StatusCode::OK, SEGMENT.to_vec()),
                }
            }),
        )
        .route(
            "/broken",
            get(move || async move {
                h3();
                StatusCode::INTERNAL_SERVER_ERROR
            }),
        )
        .route(
            "/big",
            get(move || async move {
                h4();
                vec![7u8; 4096]
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (base, hits)
}

/// Limits for tests whose local servers all count as the origin.
fn limits() -> DataPlaneLimits {
    DataPlaneLimits {
        origins: OriginRules::new(None, parse_allow_list("127.0.0.1").unwrap()),
        max_segment_bytes: 1024,
        fetch_attempts: 3,
        connect_timeout: Duration::from_secs(10),
        ..DataPlaneLimits::default()
    }
}

/// The next event the policy would get.
async fn next(plane: &mut Driver, io: &mut mpsc::Receiver<IoEvent>) -> Event {
    loop {
        let happened =
            tokio::time::timeout(Duration::from_secs(30), io.recv()).await.unwrap().unwrap();
        if let Some(event) = plane.handle([Input::Io(happened)]).pop() {
            return event;
        }
    }
}

#[tokio::test]
async fn fetches_playlists_and_segments_from_the_origin() {
    let (base, hits) = origin().await;
    let (mut plane, mut io) = Driver::new(limits()).unwrap();

    plane.handle([Input::Command(Command::FetchText(FetchText {
        fetch: FetchId(1),
        url: format!("{base}/live.m3u8"),
    }))]);
    let Event::TextFetched(playlist) = next(&mut plane, &mut io).await else {
        panic!("no playlist")
    };
    assert_eq!(playlist.fetch, FetchId(1));
    assert_eq!(playlist.text, "#EXTM3U\n#EXTINF:2,\nseg0.ts\n");
    assert_eq!(playlist.url, format!("{base}/live.m3u8"));

    let range = Some(ByteRange { start: 10, end: 20 });
    let url = format!("{base}/seg0.ts");
    plane.handle([Input::Command(Command::FetchSegment(FetchSegment {
        fetch: FetchId(2),
        url,
        range,
        tier: CacheTier::Memory,
    }))]);
    let Event::SegmentStored(stored) = next(&mut plane, &mut io).await else {
        panic!("no segment")
    };
    assert_eq!((stored.fetch, stored.segment.size, stored.segment.range), (FetchId(2), 10, range));
    let Some(Held::Memory(bytes)) = plane.plane().cache().get(stored.segment.handle) else {
        panic!("a memory-tier segment is held in memory")
    };
    assert_eq!(bytes.as_ref(), &SEGMENT[10..20], "the stored bytes are the origin's");
    assert_eq!(plane.plane().counters().downloaded, playlist.text.len() as u64 + 10);

    // Eviction drops the bytes and says so.
    let evicted = plane.handle([Input::Command(Command::Evict(stored.segment.handle))]);
    assert_eq!(evicted, vec![Event::SegmentEvicted(stored.segment.handle)]);
    assert!(plane.plane().cache().is_empty());
    assert_eq!(hits.load(Ordering::SeqCst), 2, "one request per fetch");
}

#[tokio::test]
async fn failures_are_retried_only_when_worth_it_and_limits_hold() {
    let (base, hits) = origin().await;
    let (mut plane, mut io) = Driver::new(limits()).unwrap();
    let segment = |fetch, path: &str| {
        Command::FetchSegment(FetchSegment {
            fetch,
            url: format!("{base}{path}"),
            range: None,
            tier: CacheTier::Memory,
        })
    };

    plane.handle([Input::Command(segment(FetchId(1), "/missing"))]);
    let Event::FetchFailed(failed) = next(&mut plane, &mut io).await else { panic!() };
    assert_eq!(failed.status, Some(404));
    assert_eq!(hits.load(Ordering::SeqCst), 0, "unrouted paths are not counted");

    plane.handle([Input::Command(segment(FetchId(2), "/broken"))]);
    let Event::FetchFailed(failed) = next(&mut plane, &mut io).await else { panic!() };
    assert_eq!((failed.fetch, failed.status), (FetchId(2), Some(500)));
    assert_eq!(hits.load(Ordering::SeqCst), 3, "a 5xx is retried up to the attempt limit");

    plane.handle([Input::Command(segment(FetchId(3), "/big"))]);
    let Event::FetchFailed(failed) = next(&mut plane, &mut io).await else { panic!() };
    assert!(failed.reason.contains("1024-byte limit"), "{}", failed.reason);
    assert!(plane.plane().cache().is_empty());

    let refused = format!("http://127.0.0.1:{}/x", closed_port());
    plane.handle([Input::Command(Command::FetchText(FetchText {
        fetch: FetchId(4),
        url: refused,
    }))]);
    let Event::FetchFailed(failed) = next(&mut plane, &mut io).await else { panic!() };
    assert_eq!((failed.fetch, failed.status), (FetchId(4), None));
}

/// An internal service on 127.0.0.1:0 that counts its requests; the secret it holds
/// must never reach a worker.
async fn internal_service() -> (u16, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let counted = hits.clone();
    let app = Router::new().fallback(move || async move {
        counted.fetch_add(1, Ordering::SeqCst);
        "secret"
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (port, hits)
}

#[tokio::test]
async fn fetches_reach_the_manifests_host_and_allowed_ones_but_no_other_internal_address() {
    let (secret_port, secret_hits) = internal_service().await;
    // The origin redirects to the internal service, directly and through a name.
    let secret = format!("http://127.0.0.1:{secret_port}/latest/meta-data");
    let by_name = format!("http://localhost:{secret_port}/by-name");
    let (to_secret, to_name) = (secret.clone(), by_name.clone());
    let app = Router::new()
        .route("/live.m3u8", get(|| async { "#EXTM3U\n" }))
        .route("/hop", get(|| async { (StatusCode::FOUND, [("location", "/live.m3u8")]) }))
        .route(
            "/to-secret",
            get(move || async move { (StatusCode::FOUND, [("location", to_secret)]) }),
        )
        .route(
            "/to-name",
            get(move || async move { (StatusCode::FOUND, [("location", to_name)]) }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let manifest = format!("{base}/live.m3u8?signature=s3cret");
    let limits = DataPlaneLimits {
        origins: OriginRules::new(Some(&manifest), Vec::new()),
        ..DataPlaneLimits::default()
    };
    let (mut plane, mut io) = Driver::new(limits).unwrap();
    let fetch = |plane: &mut Driver, id, url: &str| {
        plane.handle([Input::Command(Command::FetchText(FetchText {
            fetch: id,
            url: url.to_string(),
        }))]);
    };

    // The manifest's own host and port, through a redirect of its own: fetched.
    fetch(&mut plane, FetchId(1), &format!("{base}/hop"));
    let Event::TextFetched(text) = next(&mut plane, &mut io).await else { panic!("not fetched") };
    assert_eq!((text.fetch, text.url), (FetchId(1), format!("{base}/live.m3u8")));

    // Another port of the same address, directly, through a redirect, through a name
    // that resolves to it, and through a redirect to that name: refused, with reasons.
    let attempts = [
        (2, secret.clone(), "loopback address"),
        (3, format!("{base}/to-secret"), "loopback address"),
        (4, by_name.clone(), "resolves only to internal addresses"),
        (5, format!("{base}/to-name"), "resolves only to internal addresses"),
    ];
    for (id, url, why) in attempts {
        fetch(&mut plane, FetchId(id), &url);
        let Event::FetchFailed(failed) = next(&mut plane, &mut io).await else {
            panic!("{url} was fetched")
        };
        assert_eq!((failed.fetch, failed.status), (FetchId(id), None));
        assert!(
            failed.reason.starts_with("refused: ") && failed.reason.contains(why),
            "{url}: {}",
            failed.reason
        );
    }
    assert_eq!(secret_hits.load(Ordering::SeqCst), 0, "the internal service was reached");

    // Allowed by the operator, it is reached.
    let allowed = OriginRules::new(
        Some(&manifest),
        parse_allow_list(&format!("localhost:{secret_port}")).unwrap(),
    );
    let (mut plane, mut io) =
        Driver::new(DataPlaneLimits { origins: allowed, ..DataPlaneLimits::default() }).unwrap();
    fetch(&mut plane, FetchId(6), &by_name);
    let Event::TextFetched(text) = next(&mut plane, &mut io).await else { panic!("not fetched") };
    assert_eq!(text.text, "secret");
    assert_eq!(secret_hits.load(Ordering::SeqCst), 1);
}

/// A tracker's HTTP API on 127.0.0.1:0: `/v1/echo` answers a POST with its method,
/// content type and body; `/v1/refuse` answers 503 with a JSON error; `/v1/huge` sends
/// more than a tracker text may be.
async fn tracker_api() -> String {
    let app = Router::new()
        .route(
            "/v1/echo",
            axum::routing::post(|headers: HeaderMap, body: String| async move {
                let kind = headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("");
                ([("x-tracker", "yes")], format!("POST {kind} {body}"))
            }),
        )
        .route("/v1/refuse", get(|| async { (StatusCode::SERVICE_UNAVAILABLE, r#"{"ret":-1}"#) }))
        .route("/v1/huge", get(|| async { vec![b'x'; 100 << 10] }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/v1", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    base
}

#[tokio::test]
async fn http_requests_reach_the_seeds_trackers_only_and_come_back_whatever_their_status() {
    let tracker = tracker_api().await;
    let (secret_port, secret_hits) = internal_service().await;
    let trackers = [format!("{tracker}/channel"), "wss://tracker.example/announce".to_string()];
    // The manifest's host is no tracker: only the trackers' hosts and ports are. A
    // tracker on an internal address needs allowing, as an origin would.
    let rules = |allow: &str| {
        OriginRules::new(Some("http://origin.example/live.m3u8"), parse_allow_list(allow).unwrap())
            .with_trackers(&trackers)
    };
    let request = |plane: &mut Driver, id, method: &str, url: String, body: &[u8]| {
        plane.handle([Input::Command(Command::HttpRequest(HttpRequest {
            request: id,
            method: method.into(),
            url,
            headers: vec![("content-type".into(), "application/json".into())],
            body: body.to_vec(),
        }))]);
    };
    let (mut plane, mut io) =
        Driver::new(DataPlaneLimits { origins: rules(""), ..DataPlaneLimits::default() }).unwrap();
    request(&mut plane, RequestId(9), "GET", format!("{tracker}/refuse"), b"");
    let Event::HttpFailed(refused) = next(&mut plane, &mut io).await else { panic!() };
    assert!(refused.reason.contains("loopback address"), "{}", refused.reason);

    let limits = DataPlaneLimits { origins: rules("127.0.0.1"), ..DataPlaneLimits::default() };
    let (mut plane, mut io) = Driver::new(limits).unwrap();

    request(&mut plane, RequestId(1), "POST", format!("{tracker}/echo"), br#"{"channel":"c"}"#);
    let Event::HttpResponse(response) = next(&mut plane, &mut io).await else { panic!() };
    assert_eq!((response.request, response.status), (RequestId(1), 200));
    assert_eq!(response.body, br#"POST application/json {"channel":"c"}"#);
    assert!(response.headers.contains(&("x-tracker".into(), "yes".into())));

    // An error status is the tracker's answer, not a failure: the policy reads it.
    request(&mut plane, RequestId(2), "GET", format!("{tracker}/refuse"), b"");
    let Event::HttpResponse(response) = next(&mut plane, &mut io).await else { panic!() };
    assert_eq!(
        (response.request, response.status, &response.body[..]),
        (RequestId(2), 503, &br#"{"ret":-1}"#[..])
    );

    // Too large a body, another port of the tracker's address, another host: failures
    // with their reasons, and the internal service never reached.
    let failures = [
        (3, format!("{tracker}/huge"), "over the limit"),
        (4, format!("http://127.0.0.1:{secret_port}/v1/channel"), "not one of the seed's trackers"),
        (5, "http://origin.example/live.m3u8".to_string(), "not one of the seed's trackers"),
    ];
    for (id, url, why) in failures {
        request(&mut plane, RequestId(id), "GET", url.clone(), b"");
        let Event::HttpFailed(failed) = next(&mut plane, &mut io).await else {
            panic!("{url} answered")
        };
        assert_eq!(failed.request, RequestId(id));
        assert!(failed.reason.contains(why), "{url}: {}", failed.reason);
    }
    assert_eq!(secret_hits.load(Ordering::SeqCst), 0, "the internal service was reached");
}

/// The SwarmCloud-compatible tracker and signal relay of `tests/support` answer the
/// host as the SDK's servers would: an announce through `http-request` lists earlier
/// members (super peers first), the relay forwards a viewer's offer to us by peer id
/// over a `tracker-connect` connection, and says when a peer we signal is not there.
#[tokio::test]
async fn the_swarmcloud_tracker_and_relay_answer_through_the_data_plane() {
    let tracker = harness::SwarmCloudService::tracker();
    let relay = harness::SwarmCloudService::signal();
    let origins = OriginRules::new(None, parse_allow_list("127.0.0.1").unwrap())
        .with_trackers(std::slice::from_ref(&tracker.url));
    let (mut plane, mut io) =
        Driver::new(DataPlaneLimits { origins, ..DataPlaneLimits::default() }).unwrap();
    let channel = "MTI3LjAuMC4xJTNBOCUyRmxpdmUlMkZtYXN0ZXIlN0MlNUI4JTVE";

    // A viewer first, then superpeer: superpeer's reply lists the viewer.
    let viewer = reqwest::Client::new()
        .post(format!("{}/channel", tracker.url))
        .body(json!({"channel": channel, "version": "2.9.10"}).to_string())
        .send()
        .await
        .unwrap();
    let viewer: Value = serde_json::from_slice(&viewer.bytes().await.unwrap()).unwrap();
    let viewer_id = viewer["data"]["id"].as_str().unwrap().to_string();
    plane.handle([Input::Command(Command::HttpRequest(HttpRequest {
        request: RequestId(1),
        method: "POST".into(),
        url: format!("{}/channel", tracker.url),
        headers: Vec::new(),
        body: json!({"channel": channel, "super": true}).to_string().into_bytes(),
    }))]);
    let Event::HttpResponse(response) = next(&mut plane, &mut io).await else { panic!() };
    let announced: Value = serde_json::from_slice(&response.body).unwrap();
    assert_eq!(
        (announced["ret"].clone(), announced["data"]["report_interval"].clone()),
        (json!(0), json!(20))
    );
    assert_eq!(announced["data"]["peers"], json!([{"id": viewer_id}]));
    let our_id = announced["data"]["id"].as_str().unwrap().to_string();

    // On the relay, under that id; the viewer's offer comes to us.
    let url = format!("{}/?id={our_id}&p=web&v=0.2.0", relay.url);
    plane
        .handle([Input::Command(Command::TrackerConnect(TrackerConnect { conn: ConnId(2), url }))]);
    assert_eq!(next(&mut plane, &mut io).await, Event::TrackerConnected(ConnId(2)));
    let Event::TrackerText(ver) = next(&mut plane, &mut io).await else { panic!() };
    assert_eq!(serde_json::from_str::<Value>(&ver.text).unwrap()["action"], "ver");
    let (mut socket, _) =
        tokio_tungstenite::connect_async(format!("{}/?id={viewer_id}", relay.url)).await.unwrap();
    let _ver = socket.next().await;
    let offer =
        json!({"action": "signal", "to_peer_id": our_id, "data": {"type": "offer", "sdp": "v=0"}});
    socket.send(Message::text(offer.to_string())).await.unwrap();
    let Event::TrackerText(relayed) = next(&mut plane, &mut io).await else { panic!() };
    assert_eq!(
        serde_json::from_str::<Value>(&relayed.text).unwrap(),
        json!({"action": "signal", "from_peer_id": viewer_id, "data": {"type": "offer", "sdp": "v=0"}})
    );

    // Signalling a peer that is not there comes back without data.
    let text =
        json!({"action": "signal", "to_peer_id": "gone", "data": {"type": "answer", "sdp": "v=0"}});
    plane.handle([Input::Command(Command::TrackerSend(TrackerSend {
        conn: ConnId(2),
        text: text.to_string(),
    }))]);
    let Event::TrackerText(not_found) = next(&mut plane, &mut io).await else { panic!() };
    assert_eq!(
        serde_json::from_str::<Value>(&not_found.text).unwrap(),
        json!({"action": "signal", "from_peer_id": "gone"})
    );
}

/// A port nothing listens on.
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[tokio::test]
async fn tracker_texts_flow_both_ways_and_closes_are_reported() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let mut socket = tokio_tungstenite::accept_async(stream).await.unwrap();
        let hello = socket.next().await.unwrap().unwrap();
        socket.send(Message::text(format!("echo {}", hello.to_text().unwrap()))).await.unwrap();
        socket.close(None).await.unwrap();
    });
    let (mut plane, mut io) = Driver::new(limits()).unwrap();
    plane
        .handle([Input::Command(Command::TrackerConnect(TrackerConnect { conn: ConnId(9), url }))]);
    assert_eq!(next(&mut plane, &mut io).await, Event::TrackerConnected(ConnId(9)));
    plane.handle([Input::Command(Command::TrackerSend(TrackerSend {
        conn: ConnId(9),
        text: "announce".into(),
    }))]);
    let Event::TrackerText(text) = next(&mut plane, &mut io).await else { panic!() };
    assert_eq!((text.conn, text.text.as_str()), (ConnId(9), "echo announce"));
    let Event::TrackerClosed(closed) = next(&mut plane, &mut io).await else { panic!() };
    assert_eq!(closed.conn, ConnId(9));
    server.await.unwrap();

    let refused = format!("ws://127.0.0.1:{}", closed_port());
    plane.handle([Input::Command(Command::TrackerConnect(TrackerConnect {
        conn: ConnId(10),
        url: refused,
    }))]);
    let Event::TrackerClosed(closed) = next(&mut plane, &mut io).await else { panic!() };
    assert!(closed.reason.contains("could not connect"), "{}", closed.reason);
}

#[tokio::test]
async fn an_oversized_tracker_frame_closes_only_that_connection() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let mut socket = tokio_tungstenite::accept_async(stream).await.unwrap();
        let _ = socket.send(Message::text("x".repeat(128 << 10))).await;
        let _ = socket.next().await;
    });
    let (mut plane, mut io) = Driver::new(limits()).unwrap();
    plane
        .handle([Input::Command(Command::TrackerConnect(TrackerConnect { conn: ConnId(1), url }))]);
    assert_eq!(next(&mut plane, &mut io).await, Event::TrackerConnected(ConnId(1)));
    let Event::TrackerClosed(closed) = next(&mut plane, &mut io).await else { panic!() };
    assert!(closed.reason.contains("failed"), "{}", closed.reason);
}

#[tokio::test]
async fn workers_take_their_udp_port_from_the_configured_range_or_say_it_is_full() {
    // A port that was free a moment ago: the range is that one port.
    let port = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let ranged = DataPlaneLimits { udp_ports: Some((port, port)), ..limits() };
    let (first, _io) = Driver::new(ranged.clone()).unwrap();
    assert_eq!(first.udp_addr().port(), port);

    let Err(error) = Driver::new(ranged) else { panic!("the only port is taken") };
    assert_eq!(error.kind(), std::io::ErrorKind::AddrInUse);
    assert!(error.to_string().contains(&format!("no free UDP port in {port}-{port}")), "{error}");
}

/// An origin of numbered segments (`/vod/<n>`, 600 bytes each, different per n); counts
/// its requests.
async fn segment_origin() -> (String, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let counted = hits.clone();
    let app = Router::new().route(
        "/vod/{n}",
        get(move |axum::extract::Path(n): axum::extract::Path<u8>| async move {
            counted.fetch_add(1, Ordering::SeqCst);
            vec![n; 600]
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/vod", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (base, hits)
}

/// Asks `plane` for segments 0..count on the disk tier; the segments it then holds.
async fn fetch_to_disk(
    plane: &mut Driver,
    io: &mut mpsc::Receiver<IoEvent>,
    base: &str,
    count: u8,
) -> Vec<superpeer::policy::wire::SegmentInfo> {
    for n in 0..count {
        plane.handle([Input::Command(Command::FetchSegment(FetchSegment {
            fetch: FetchId(u64::from(n)),
            url: format!("{base}/{n}"),
            range: None,
            tier: CacheTier::Disk,
        }))]);
    }
    let mut stored = Vec::new();
    while stored.len() < usize::from(count) {
        match next(plane, io).await {
            Event::SegmentStored(s) => stored.push(s.segment),
            other => panic!("{other:?}"),
        }
    }
    stored
}

#[tokio::test]
async fn disk_segments_are_fetched_once_by_two_workers_and_again_by_none_after_a_restart() {
    let dir = std::env::temp_dir().join(format!("superpeer-dataplane-disk-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let cache = DiskCacheConfig { dir: dir.clone(), max_bytes: 1 << 20 };
    let with_cache = || DataPlaneLimits { disk_cache: Some(cache.clone()), ..limits() };
    let (base, hits) = segment_origin().await;

    // Two workers of one channel want the same ten segments at the same moment.
    let (mut first, mut first_io) = Driver::new(with_cache()).unwrap();
    let (mut second, mut second_io) = Driver::new(with_cache()).unwrap();
    let (a, b) = tokio::join!(
        fetch_to_disk(&mut first, &mut first_io, &base, 10),
        fetch_to_disk(&mut second, &mut second_io, &base, 10)
    );
    assert_eq!(hits.load(Ordering::SeqCst), 10, "each segment fetched from the origin once");
    assert!(a.iter().chain(&b).all(|s| s.tier == CacheTier::Disk && s.size == 600));
    assert_eq!(
        first.plane().counters().downloaded + second.plane().counters().downloaded,
        10 * 600
    );
    assert_eq!(first.plane().cache().budgeted_bytes(), 0, "disk segments take no memory budget");
    drop((first, first_io, second, second_io));

    // A restarted worker finds them all on disk, intact.
    let (mut restarted, mut restarted_io) = Driver::new(with_cache()).unwrap();
    let again = fetch_to_disk(&mut restarted, &mut restarted_io, &base, 10).await;
    assert_eq!(hits.load(Ordering::SeqCst), 10, "no new origin requests after a restart");
    assert_eq!(restarted.plane().counters().downloaded, 0);
    assert!(restarted.disk_cache_size() >= 10 * 600, "measured as it opened");
    assert!(again.iter().all(|s| s.tier == CacheTier::Disk));
    let on_disk = DiskCache::open(&cache).unwrap();
    for n in 0..10u8 {
        let bytes = on_disk.read(&disk::key(&format!("{base}/{n}"), None)).unwrap();
        assert_eq!(bytes.as_ref(), &[n; 600][..]);
    }

    // The policy evicts segment 3: the handle goes, the shared file stays for others.
    let third = again.iter().find(|s| s.url.ends_with("/3")).unwrap();
    let evicted = restarted.handle([Input::Command(Command::Evict(third.handle))]);
    assert_eq!(evicted, vec![Event::SegmentEvicted(third.handle)]);
    assert!(on_disk.read(&disk::key(&third.url, None)).is_some());
    on_disk.remove(&disk::key(&third.url, None));

    // Asking only the disk: what is there is held, what is not (segment 3, now deleted)
    // fails, and the origin hears of neither. The disk is looked at off the event loop.
    let probe = |fetch: u64, n: u8| {
        Command::FetchSegment(FetchSegment {
            fetch: FetchId(fetch),
            url: format!("{base}/{n}"),
            range: None,
            tier: CacheTier::DiskIfCached,
        })
    };
    assert_eq!(restarted.handle([Input::Command(probe(100, 5))]), vec![]);
    let Event::SegmentStored(found) = next(&mut restarted, &mut restarted_io).await else {
        panic!()
    };
    assert_eq!(
        (found.fetch, found.segment.size, found.segment.tier),
        (FetchId(100), 600, CacheTier::Disk)
    );
    assert_eq!(restarted.handle([Input::Command(probe(101, 3))]), vec![]);
    let Event::FetchFailed(missing) = next(&mut restarted, &mut restarted_io).await else {
        panic!()
    };
    assert_eq!((missing.fetch, missing.reason.as_str()), (FetchId(101), "not cached"));
    assert_eq!(hits.load(Ordering::SeqCst), 10);
    let _ = std::fs::remove_dir_all(&dir);
}
