//! Hostile parties against real master and worker processes: an origin that points at
//! internal services or sends segments that are slow, endless or huge, a tracker that
//! floods fake offers, an API client that holds connections open or sends bodies too
//! large, and the secrets a worker (which parses what strangers send) must not hold.
//! Each test asserts that nothing was reached or lost that should not be, and that
//! the other channels kept being served.

// Helpers panic on purpose: a broken fixture should fail the test that uses it.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;

use serde_json::{Value, json};

#[path = "support/harness.rs"]
mod harness;

use harness::*;

/// Runs `server` on a listener at 127.0.0.1:0, on a thread and runtime of its own;
/// returns the listener's address.
fn listen<F>(server: impl FnOnce(tokio::net::TcpListener) -> F + Send + 'static) -> String
where
    F: Future<Output = ()>,
{
    let (found, address) = mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            found.send(listener.local_addr().unwrap().to_string()).unwrap();
            server(listener).await;
        });
    });
    address.recv_timeout(PATIENCE).unwrap()
}

/// Serves `app` on 127.0.0.1:0 from a thread of its own; returns its base URL.
fn serve(app: axum::Router) -> String {
    let address = listen(|listener| async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{address}")
}

/// An internal service (a metadata endpoint, a database's HTTP port) that counts the
/// requests that reached it.
fn internal_service() -> (String, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let counted = hits.clone();
    let app = axum::Router::new().fallback(move || async move {
        counted.fetch_add(1, Ordering::SeqCst);
        "instance-credentials: AKIA-SECRET"
    });
    (serve(app), hits)
}

fn running_workers(stats: &Value) -> Vec<(u32, Value)> {
    stats["workers"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(_, w)| w["state"] == "running")
        .map(|(pid, w)| (pid.parse().unwrap(), w.clone()))
        .collect()
}

fn worker_of(stats: &Value, channel: &str) -> Option<Value> {
    running_workers(stats).into_iter().find(|(_, w)| w["channelId"] == channel).map(|(_, w)| w)
}

/// The channel of `good` (four segments) is seeded in full beside a hostile one, and
/// no worker's policy faulted.
fn good_channel_served_and_nobody_faulted(master: &Superpeer, good: &VodOrigin) {
    master.wait_for("the good channel cached", |s| {
        worker_of(s, &good.channel()).is_some_and(|w| w["segments"] == 4 && w["trackers"] == 1)
    });
    for (pid, worker) in running_workers(&master.stats()) {
        let slowest = &worker["policyStats"]["slowest_call_us"];
        eprintln!("worker {pid}: slowest policy call {slowest} us of CPU");
        assert_eq!(worker["policyStats"]["faults"], 0, "worker {pid} faulted");
    }
}

/// A live origin whose media playlist lists its own first segment and then segments
/// at an internal service: by address, through a redirect of its own, and through a
/// name that resolves to it; the master playlist's variant URL carries a signature.
fn hostile_live_origin(internal: &str) -> String {
    use axum::http::StatusCode;
    use axum::routing::get;
    let port = internal.rsplit(':').next().unwrap().to_string();
    let media = format!(
        "#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXT-X-MEDIA-SEQUENCE:7\n\
         #EXTINF:1,\ns7.ts\n\
         #EXTINF:1,\n{internal}/s8.ts\n\
         #EXTINF:1,\nredirect-s9.ts\n\
         #EXTINF:1,\nhttp://localhost:{port}/s10.ts\n"
    );
    let to_internal = format!("{internal}/s9.ts");
    let app = axum::Router::new()
        .route(
            "/live/master.m3u8",
            get(|| async {
                "#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=1280000,CODECS=\"avc1.4d401f,mp4a.40.2\",RESOLUTION=1280x720\n720p.m3u8?signature=s3cret-signature\n"
            }),
        )
        .route("/live/720p.m3u8", get(move || async move { media.clone() }))
        .route("/live/s7.ts", get(|| async { vec![0x47u8; 1880] }))
        .route(
            "/live/redirect-s9.ts",
            get(move || async move { (StatusCode::FOUND, [("location", to_internal)]) }),
        );
    format!("{}/live/master.m3u8", serve(app))
}

#[test]
fn a_hostile_origin_reaches_no_internal_service_and_other_channels_keep_being_served() {
    let dir = data_dir("hostile-origin");
    let (internal, internal_hits) = internal_service();
    let hostile = channel_of(&hostile_live_origin(&internal));
    let good = VodOrigin::start(4, 4000);
    let tracker = Tracker::start();
    let master = Superpeer::start(&dir);
    let seed = |channel: &str| json!({"list": [{"channel": channel, "keepAlive": true, "signal1": tracker.url}]});
    master.ok("POST", "/seed", seed(&hostile));
    master.ok("POST", "/seed", seed(&good.channel()));

    // The hostile channel's worker tries each segment of its window, and is refused the
    // three that point inside, with the reason logged; its own segment it caches.
    master.wait_for("the internal segments refused", |s| {
        worker_of(s, &hostile).is_some_and(|w| w["fetchErrors"].as_u64() >= Some(3))
    });
    master.wait_for("the hostile origin's own segment cached", |s| {
        worker_of(s, &hostile).is_some_and(|w| w["segments"].as_u64() >= Some(1))
    });
    let log = master.log.lock().unwrap().clone();
    let refused: Vec<&String> = log.iter().filter(|l| l.contains("origin fetch refused")).collect();
    for why in ["is a loopback address", "resolves only to internal addresses"] {
        assert!(refused.iter().any(|l| l.contains(why)), "no refusal saying {why:?}: {refused:#?}");
    }
    assert_eq!(internal_hits.load(Ordering::SeqCst), 0, "the internal service was reached");

    good_channel_served_and_nobody_faulted(&master, &good);
    // Signed URLs are logged without their signature.
    let log = master.log.lock().unwrap().clone();
    assert!(log.iter().any(|l| l.contains("720p.m3u8")), "the playlist is never logged");
    let leaked: Vec<&String> = log.iter().filter(|l| l.contains("s3cret-signature")).collect();
    assert!(leaked.is_empty(), "a signature was logged: {leaked:#?}");
    assert_eq!(internal_hits.load(Ordering::SeqCst), 0, "the internal service was reached");
    master.stop();
}

#[test]
fn workers_hold_no_secret_and_the_seed_list_is_the_users_alone() {
    use std::os::unix::fs::PermissionsExt;
    let dir = data_dir("secrets");
    let good = VodOrigin::start(2, 1000);
    let tracker = Tracker::start();
    let master = Superpeer::start_with_env(
        &dir,
        &[],
        &[("SUPERPEER_ACCESS_TOKEN", TOKEN), ("AWS_SECRET_ACCESS_KEY", "cloud-secret")],
    );
    seed_vod(&master, &good, &tracker, 2, json!({}));
    let (pid, _) = running_workers(&master.stats()).remove(0);
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let environ = String::from_utf8_lossy(&environ);
    for secret in [TOKEN, "cloud-secret", "SUPERPEER_ACCESS_TOKEN", "AWS_SECRET"] {
        assert!(!environ.contains(secret), "the worker's environment holds {secret:?}");
    }
    assert!(environ.contains("RUST_LOG="), "the worker still gets its log levels");

    let mode =
        |path: &std::path::Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700, "the data directory");
    assert_eq!(mode(&dir.join("seeds.json")), 0o600, "the seed list (viewer tokens)");
    master.stop();
}

/// `superpeer serve` with `args` and no access token: its address once listening, or
/// its exit status and stderr.
fn serve_without_token(dir: &std::path::Path, args: &[&str]) -> Result<String, String> {
    use std::io::{BufRead, BufReader};
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_superpeer"))
        .args(["serve", "--port", "0", "--env-file"])
        .arg(dir.join("absent.env"))
        .arg("--data-dir")
        .arg(dir)
        .args(args)
        .env_remove("SUPERPEER_ACCESS_TOKEN")
        .env("SUPERPEER_LOG_FORMAT", "text")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = Vec::new();
    for line in BufReader::new(child.stderr.take().unwrap()).lines().map_while(Result::ok) {
        if let Some(at) = line.find("superpeer listening on http://") {
            let address = line[at + "superpeer listening on http://".len()..].to_string();
            let _ = child.kill();
            let _ = child.wait();
            return Ok(address);
        }
        lines.push(line);
    }
    let status = child.wait().unwrap();
    Err(format!("{status}: {}", lines.join("\n")))
}

#[test]
fn without_a_token_the_api_is_open_to_this_machine_only() {
    let dir = data_dir("protected");
    let address = serve_without_token(&dir, &[]).unwrap();
    assert!(address.starts_with("127.0.0.1:"), "listening on {address}");
    let refused = serve_without_token(&dir, &["--bind", "0.0.0.0"]).unwrap_err();
    assert!(refused.contains("bindAddress") && refused.contains("set accessToken"), "{refused}");
}

/// Whether the server closed `stream` (read gives end of file or a reset); false while
/// it is still open.
fn closed_by_server(stream: &mut std::net::TcpStream) -> bool {
    use std::io::Read;
    stream.set_read_timeout(Some(std::time::Duration::from_millis(5))).unwrap();
    let mut byte = [0u8; 512];
    match stream.read(&mut byte) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => {
            !matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)
        }
    }
}

fn open_descriptors(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count()
}

#[test]
fn slow_clients_are_cut_off_and_never_hold_more_than_the_connection_cap() {
    use std::io::Write;
    const CAP: usize = 16;
    let dir = data_dir("slowloris");
    let env = format!("apiMaxConnections={CAP}\napiHeaderTimeoutSeconds=2\n");
    std::fs::write(dir.join(ENV_FILE), env).unwrap();
    let master = Superpeer::start(&dir);
    let baseline = open_descriptors(master.pid());

    // Ten times the cap, each with half a request that never ends.
    let mut slow: Vec<std::net::TcpStream> = (0..10 * CAP)
        .map(|_| {
            let mut stream = std::net::TcpStream::connect(&master.addr).unwrap();
            stream.write_all(b"GET /stats HTTP/1.1\r\nHost: superpeer\r\nX-Slow: ").unwrap();
            stream
        })
        .collect();
    // A client of good faith among them is answered once a slot frees.
    let addr = master.addr.clone();
    let (answered, answer) = mpsc::channel();
    let good = std::thread::spawn(move || {
        let mut stream = std::net::TcpStream::connect(&addr).unwrap();
        let request = format!(
            "GET /stats HTTP/1.1\r\nHost: superpeer\r\nX-ACCESS-TOKEN: {TOKEN}\r\nConnection: close\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).unwrap();
        let mut response = String::new();
        std::io::Read::read_to_string(&mut stream, &mut response).unwrap();
        answered.send(response).unwrap();
    });

    let deadline = std::time::Instant::now() + PATIENCE;
    let mut most = 0;
    while !slow.is_empty() {
        most = most.max(open_descriptors(master.pid()));
        slow.retain_mut(|stream| !closed_by_server(stream));
        assert!(
            std::time::Instant::now() < deadline,
            "{} slow connections still open after {PATIENCE:?}",
            slow.len()
        );
    }
    // The cap, plus the answering connection's short-lived descriptors.
    assert!(most <= baseline + CAP + 2, "the master held {most} descriptors ({baseline} idle)");
    let response = answer.recv_timeout(PATIENCE).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    good.join().unwrap();
    master.stop();
}

#[test]
fn a_body_too_large_gets_a_413_the_client_can_read_and_seeds_are_capped() {
    let dir = data_dir("oversized");
    std::fs::write(dir.join(ENV_FILE), "maxSeeds=1000\n").unwrap();
    let master = Superpeer::start(&dir);
    // The whole body is written before the answer is read, as simple clients do.
    let (status, answer) = master.request("POST", "/seed", &vec![b' '; 64 << 20]);
    assert_eq!(status, 413);
    assert!(answer["error"].as_str().is_some_and(|e| !e.is_empty()), "{answer}");

    // A thousand items at once are taken; one more seed is refused, saying why.
    let list: Vec<Value> = (0..1000)
        .map(|n| json!({"channel": channel_of(&format!("http://127.0.0.1:9/c{n}/master.m3u8"))}))
        .collect();
    let answer = master.ok("POST", "/seed", json!({ "list": list }));
    assert_eq!(answer["seeds"], 1000);
    let one_more =
        json!({"list": [{"channel": channel_of("http://127.0.0.1:9/more/master.m3u8")}]});
    let (status, answer) = master.request("POST", "/seed", one_more.to_string().as_bytes());
    assert_eq!(status, 400, "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("maxSeeds"), "{answer}");
    // Workers are listed with their memory from the first look.
    let stats = master.stats();
    let workers = stats["workers"].as_object().unwrap();
    assert!(!workers.is_empty(), "{stats}");
    for (pid, worker) in workers {
        assert!(worker["memory"].as_u64() > Some(0), "worker {pid}: {worker}");
    }
    master.stop();
}

/// An origin serving a VOD whose media playlist has `entries` segments (each line of
/// the playlist padded to `line_bytes`), and one whose playlist is `huge_bytes` long.
fn large_playlist_origin(entries: usize, line_bytes: usize, huge_bytes: usize) -> String {
    use axum::routing::get;
    use std::fmt::Write as _;
    let mut media = String::from(
        "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:2\n#EXT-X-PLAYLIST-TYPE:VOD\n",
    );
    for n in 0..entries {
        let name = format!("seg{n}.ts?");
        let pad = line_bytes.saturating_sub(name.len() + 14);
        write!(media, "#EXTINF:2.000,\n{name}{}\n", "p".repeat(pad)).unwrap();
    }
    media.push_str("#EXT-X-ENDLIST\n");
    let huge = format!("{media}{}", "#EXT-X-COMMENT:padding\n".repeat(huge_bytes / 23));
    let master = "#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=1280000,CODECS=\"avc1.4d401f,mp4a.40.2\",RESOLUTION=1280x720\n720p.m3u8\n";
    let app = axum::Router::new()
        .route("/big/master.m3u8", get(move || async move { master }))
        .route("/huge/master.m3u8", get(move || async move { master }))
        .route("/big/720p.m3u8", get(move || async move { media.clone() }))
        .route("/huge/720p.m3u8", get(move || async move { huge.clone() }))
        .route("/{dir}/{name}", get(|| async { vec![0x47u8; 1880] }));
    serve(app)
}

#[test]
fn the_largest_playlist_allowed_is_handled_within_the_deadline_and_a_larger_one_is_refused() {
    let dir = data_dir("large-playlists");
    // The host's cap on a playlist's size, and the default policy's on its segments
    // (README, Security): a playlist at both.
    let max_bytes = superpeer::dataplane::DataPlaneLimits::default().max_text_bytes;
    let entries = 20_000;
    let line_bytes = (max_bytes - 200) / entries - 2;
    let base = large_playlist_origin(entries, line_bytes, 7 << 20);
    let (big, huge) = (format!("{base}/big/master.m3u8"), format!("{base}/huge/master.m3u8"));
    let tracker = Tracker::start();
    let master = Superpeer::start(&dir);
    for manifest in [&big, &huge] {
        let item =
            json!({"channel": channel_of(manifest), "keepAlive": true, "signal1": tracker.url});
        master.ok("POST", "/seed", json!({ "list": [item] }));
    }
    // The largest allowed: read, its first segments fetched, no fault.
    let big_stats = master.wait_for("the large VOD prefetched", |s| {
        worker_of(s, &channel_of(&big)).is_some_and(|w| w["segments"].as_u64() >= Some(10))
    });
    // The one over the limit: refused as a fetch, never handed to the policy.
    master.wait_for("the huge playlist refused", |s| {
        worker_of(s, &channel_of(&huge)).is_some_and(|w| w["fetchErrors"].as_u64() >= Some(1))
    });
    let big = worker_of(&big_stats, &channel_of(&big)).unwrap();
    assert_eq!(big["policyStats"]["faults"], 0, "{big}");
    for (pid, worker) in running_workers(&master.stats()) {
        assert_eq!(worker["policyStats"]["faults"], 0, "worker {pid} faulted: {worker}");
    }
    master.stop();
}

#[test]
fn segments_held_and_fetched_stay_within_the_memory_budget() {
    use axum::routing::get;
    use std::fmt::Write as _;
    const BUDGET: u64 = 40 << 20;
    const SEGMENT: usize = 16 << 20;
    let dir = data_dir("memory-budget");
    std::fs::write(dir.join(ENV_FILE), format!("memoryBudget={}M\n", BUDGET >> 20)).unwrap();
    // A live window of twelve large segments: 192 MiB if all were held.
    let mut media = String::from("#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:0\n");
    for n in 0..12 {
        write!(media, "#EXTINF:2,\ns{n}.ts\n").unwrap();
    }
    let app = axum::Router::new()
        .route("/live/720p.m3u8", get(move || async move { media.clone() }))
        .route("/live/{name}", get(|| async { vec![0x47u8; SEGMENT] }));
    let manifest = format!("{}/live/720p.m3u8", serve(app));
    let channel = channel_of(&manifest);
    let tracker = Tracker::start();
    let master = Superpeer::start(&dir);
    let item = json!({"channel": channel, "keepAlive": true, "signal1": tracker.url});
    master.ok("POST", "/seed", json!({ "list": [item] }));

    // Two fit; the others are refused as fetches, which the policy hears.
    let stats = master.wait_for("fetches refused by the budget", |s| {
        worker_of(s, &channel).is_some_and(|w| {
            w["segments"].as_u64() >= Some(2) && w["fetchErrors"].as_u64() >= Some(10)
        })
    });
    let worker = worker_of(&stats, &channel).unwrap();
    assert!(worker["memoryCacheSize"].as_u64() <= Some(BUDGET), "{worker}");
    let log = master.log.lock().unwrap().clone();
    assert!(log.iter().any(|l| l.contains("memory budget is full")), "no refusal logged");
    // The process: the budget, plus what any worker needs, far from the 192 MiB window.
    let rss = worker["memory"].as_u64().unwrap();
    assert!(rss < BUDGET + (96 << 20), "worker resident memory {} MiB", rss >> 20);
    assert_eq!(worker["policyStats"]["faults"], 0);
    master.stop();
}

/// Counts the bodies that ended: dropped by the server because the client hung up (the
/// bodies it goes with never end by themselves).
struct HungUp(Arc<AtomicUsize>);

impl Drop for HungUp {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// Two live origins on one server, each with a window of two good segments and a bad
/// one: at `/endless/` a segment that never ends, at `/slow/` one that trickles a byte
/// every 50 ms forever. Counts how often superpeer hung up on each bad one.
fn slow_and_endless_origins() -> (String, Arc<AtomicUsize>, String, Arc<AtomicUsize>) {
    use axum::body::Body;
    use axum::routing::get;
    use futures_util::stream;
    let media = |bad: &str| {
        format!(
            "#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXT-X-MEDIA-SEQUENCE:0\n\
             #EXTINF:1,\ngood0.ts\n#EXTINF:1,\n{bad}\n#EXTINF:1,\ngood2.ts\n"
        )
    };
    let (endless_media, slow_media) = (media("endless.ts"), media("slow.ts"));
    let endless = Arc::new(AtomicUsize::new(0));
    let slow = Arc::new(AtomicUsize::new(0));
    let (endless_hung_up, slow_hung_up) = (endless.clone(), slow.clone());
    let good = || async { vec![0x47u8; 1880] };
    let app = axum::Router::new()
        .route("/endless/720p.m3u8", get(move || async move { endless_media }))
        .route("/slow/720p.m3u8", get(move || async move { slow_media }))
        .route("/endless/{good}", get(good))
        .route("/slow/{good}", get(good))
        .route(
            "/endless/endless.ts",
            get(move || {
                let hung_up = HungUp(endless_hung_up.clone());
                let chunks = stream::repeat_with(move || {
                    let _held = &hung_up;
                    Ok::<_, std::io::Error>(vec![0x47u8; 64 << 10])
                });
                async move { Body::from_stream(chunks) }
            }),
        )
        .route(
            "/slow/slow.ts",
            get(move || {
                let hung_up = HungUp(slow_hung_up.clone());
                let drip = stream::unfold(hung_up, |hung_up| async move {
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    Some((Ok::<_, std::io::Error>(vec![0x47u8]), hung_up))
                });
                async move { Body::from_stream(drip) }
            }),
        );
    let base = serve(app);
    (format!("{base}/endless/720p.m3u8"), endless, format!("{base}/slow/720p.m3u8"), slow)
}

#[test]
fn slow_and_endless_segments_are_cut_off_within_budget_and_other_channels_keep_being_served() {
    const BUDGET: u64 = 40 << 20;
    let dir = data_dir("slow-endless-origin");
    let env = format!("memoryBudget={}M\noriginTimeoutSeconds=2\nmaxWorkers=3\n", BUDGET >> 20);
    std::fs::write(dir.join(ENV_FILE), env).unwrap();
    let (endless_manifest, endless, slow_manifest, slow) = slow_and_endless_origins();
    let (endless_channel, slow_channel) =
        (channel_of(&endless_manifest), channel_of(&slow_manifest));
    let good = VodOrigin::start(4, 4000);
    let tracker = Tracker::start();
    let master = Superpeer::start(&dir);
    let seed = |channel: &str| json!({"list": [{"channel": channel, "keepAlive": true, "signal1": tracker.url}]});
    for channel in [&endless_channel, &slow_channel, &good.channel()] {
        master.ok("POST", "/seed", seed(channel));
    }

    // The endless segment is cut off at the budget, the slow one at the timeout (each
    // attempt, then the policy hears it failed); the good ones are held.
    let held_and_failed = |s: &Value, channel: &str| {
        worker_of(s, channel).is_some_and(|w| {
            w["fetchErrors"].as_u64() >= Some(1) && w["segments"].as_u64() >= Some(2)
        })
    };
    let stats = master.wait_for("the bad segments cut off and the good ones held", |s| {
        endless.load(Ordering::SeqCst) >= 1
            && slow.load(Ordering::SeqCst) >= 3
            && held_and_failed(s, &endless_channel)
            && held_and_failed(s, &slow_channel)
    });
    let log = master.log.lock().unwrap().clone();
    let over_budget: Vec<&String> =
        log.iter().filter(|l| l.contains("memory budget is full")).collect();
    assert!(over_budget.iter().any(|l| l.contains("endless.ts")), "the endless one ran on");
    assert!(!over_budget.iter().any(|l| l.contains("slow.ts")), "{over_budget:#?}");
    let worker = worker_of(&stats, &endless_channel).unwrap();
    assert!(worker["memoryCacheSize"].as_u64() <= Some(BUDGET), "{worker}");
    // Resident memory: a worker's own, plus the largest fetch buffer (the budget) and
    // what the allocator keeps of the buffers it grew through; never the 64 MiB a
    // segment may have, again and again.
    let baseline =
        worker_of(&stats, &good.channel()).map_or(64 << 20, |w| w["memory"].as_u64().unwrap());
    let rss = worker["memory"].as_u64().unwrap();
    assert!(rss < baseline + 3 * BUDGET, "worker resident memory {} MiB", rss >> 20);
    good_channel_served_and_nobody_faulted(&master, &good);
    master.stop();
}

/// A tracker that floods superpeer with offers that never connect (real SDP, nobody
/// behind it) and answers its announces with garbage, forwarding nothing real. Counts
/// the fake offers it sent.
fn hostile_tracker() -> (String, Arc<AtomicUsize>) {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let sent = Arc::new(AtomicUsize::new(0));
    let counted = sent.clone();
    let address = listen(move |listener| async move {
        let local = std::net::SocketAddr::from(([127, 0, 0, 1], 9));
        let (_, sdp) = superpeer_load::offering_connection(local).unwrap();
        let mut n = 0u64;
        while let Ok((stream, _)) = listener.accept().await {
            let Ok(mut socket) = tokio_tungstenite::accept_async(stream).await else {
                continue;
            };
            // Once superpeer has announced a swarm: garbage, a swarm that looks
            // large, and fifty fake offers every 100 ms, whatever it sends.
            let mut info_hash: Option<String> = None;
            let mut tick = tokio::time::interval(std::time::Duration::from_millis(100));
            loop {
                tokio::select! {
                    message = socket.next() => {
                        let Some(Ok(Message::Text(text))) = message else { break };
                        let announce: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                        let Some(hash) = announce["info_hash"].as_str() else { continue };
                        info_hash = Some(hash.to_string());
                        let size = json!({"action": "announce", "info_hash": hash,
                            "interval": 10, "complete": 50, "incomplete": 50});
                        let mut replies = vec![size.to_string()];
                        replies.extend(["not json", "{\"action\":42}", "[[[[[[[[", "{\"info_hash\":null}"].map(String::from));
                        for reply in replies {
                            let _ = socket.send(Message::text(reply)).await;
                        }
                    }
                    _ = tick.tick() => {
                        let Some(hash) = &info_hash else { continue };
                        for _ in 0..50 {
                            n += 1;
                            let offer = json!({
                                "action": "announce", "info_hash": hash,
                                "peer_id": format!("-PM0203-fake{n:08}"),
                                "offer_id": format!("fakeoffer{n:011}"),
                                "offer": {"type": "offer", "sdp": sdp},
                            });
                            if socket.send(Message::text(offer.to_string())).await.is_err() {
                                break;
                            }
                            counted.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                }
            }
        }
    });
    (format!("ws://{address}"), sent)
}

#[test]
fn a_tracker_flooding_fake_offers_and_garbage_keeps_no_real_viewer_out() {
    let dir = data_dir("hostile-tracker");
    let origin = VodOrigin::start(10, 64 << 10);
    let tracker = Tracker::start();
    let (hostile, fakes) = hostile_tracker();
    let master = Superpeer::start(&dir);
    // Room for the real viewers and a little more: fakes that counted would take it.
    let seed = json!({"list": [{
        "channel": origin.channel(), "keepAlive": true, "maxConnections": 10,
        "signal1": tracker.url, "signal2": hostile,
        "settings": {"offersPerAnnounce": 82},
    }]});
    master.ok("POST", "/seed", seed);
    master.wait_for("the flood under way", |s| {
        fakes.load(Ordering::SeqCst) >= 400
            && running_workers(s).first().is_some_and(|(_, w)| w["segments"] == 10)
    });

    let args = superpeer_load::Args {
        seconds: 15,
        ramp_ms: 100,
        ..superpeer_load::Args::new(&tracker.url, &origin.info_hash(), &origin.media(), 8)
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let summary = runtime.block_on(superpeer_load::run(args)).unwrap();
    let stats = master.stats();
    assert_eq!(summary["connected"], 8, "{summary}\n{stats:#}");
    assert_eq!(summary["failures"], 0, "{summary}\n{stats:#}");
    assert!(fakes.load(Ordering::SeqCst) >= 4000, "the flood went on");

    // Fakes were never viewers: no more than the real ones counted, no second worker.
    let stats = master.stats();
    let workers = running_workers(&stats);
    assert_eq!(workers.len(), 1, "{stats}");
    let (_, worker) = &workers[0];
    assert!(worker["peers"].as_u64() <= Some(8), "{worker}");
    assert_eq!(worker["policyStats"]["faults"], 0, "{worker}");
    master.stop();
}

/// Log lines that mention STUN, ICE or integrity: what a flood of forged STUN would
/// fill the log with if each packet were logged.
fn stun_log_lines(master: &Superpeer) -> usize {
    let log = master.log.lock().unwrap();
    log.iter()
        .filter(|l| ["STUN", "stun", "integrity", "ufrag"].iter().any(|w| l.contains(w)))
        .count()
}

#[test]
fn viewers_that_stop_acknowledging_or_forge_stun_are_handled_alone() {
    let dir = data_dir("hostile-viewers");
    // The deadline is not the subject here (see tests/viewers.rs).
    let env = "viewerStallSeconds=30\npolicyLimits={\"call_deadline\":50}\n";
    std::fs::write(dir.join(ENV_FILE), env).unwrap();
    let origin = VodOrigin::start(10, 256 << 10);
    let tracker = Tracker::start();
    let master = Superpeer::start(&dir);
    seed_vod(&master, &origin, &tracker, 10, json!({"offersPerAnnounce": 82}));
    let baseline = master.wait_for("the worker", |s| !running_workers(s).is_empty());
    let baseline = running_workers(&baseline)[0].1["memory"].as_u64().unwrap();
    let logged_before = stun_log_lines(&master);
    // Eight viewers; two that ask for everything and then acknowledge nothing while
    // keeping their ICE alive; two that forge STUN requests naming their connection
    // from ever new addresses (and otherwise behave).
    let args = superpeer_load::Args {
        seconds: 120,
        ramp_ms: 100,
        hostile_unread: 2,
        hostile_stun: 2,
        ..superpeer_load::Args::new(&tracker.url, &origin.info_hash(), &origin.media(), 8)
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let run = std::thread::spawn(move || {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime
            .block_on(superpeer_load::run_until(args, async {
                let _ = stopped.await;
            }))
            .unwrap()
    });
    // All twelve connect; the two that acknowledge nothing are closed (30 s after they
    // stopped) while everyone else is still watching (the run, stopped below, has not
    // ended).
    master.wait_for("all twelve connected", |s| {
        running_workers(s).first().is_some_and(|(_, w)| w["peers"] == 12)
    });
    master.wait_for("the two that acknowledge nothing closed", |s| {
        running_workers(s).first().is_some_and(|(_, w)| w["peers"] == 10)
    });
    assert!(!run.is_finished(), "the run ended before they were closed");
    let _ = stop.send(());
    let summary = run.join().unwrap();
    let stats = master.stats();
    assert_eq!(summary["connected"], 8, "{summary}\n{stats:#}");
    assert_eq!(summary["failures"], 0, "{summary}\n{stats:#}");
    assert!(summary["segments"].as_u64() >= Some(8 * 10), "{summary}");
    assert!(summary["forged_stun_sent"].as_u64() >= Some(10_000), "{summary}");
    // Forged requests were dropped unlogged and cost no memory.
    let logged = stun_log_lines(&master) - logged_before;
    assert!(logged < 10, "{logged} log lines about STUN");
    let (_, worker) = &running_workers(&stats)[0];
    let rss = worker["memory"].as_u64().unwrap();
    assert!(rss < baseline + (64 << 20), "worker resident memory {} MiB", rss >> 20);
    assert_eq!(worker["policyStats"]["faults"], 0, "{worker}");
    master.stop();
}
