//! Hostile parties against real master and worker processes: an origin that points at
//! internal services, an API client that holds connections open or sends bodies too
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

/// Serves `app` on 127.0.0.1:0 from a thread of its own; returns its base URL.
fn serve(app: axum::Router) -> String {
    let (found, address) = mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            found.send(format!("http://{}", listener.local_addr().unwrap())).unwrap();
            axum::serve(listener, app).await.unwrap();
        });
    });
    address.recv_timeout(PATIENCE).unwrap()
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

    // The other channel is seeded in full, and nobody faulted.
    master.wait_for("the good channel cached", |s| {
        worker_of(s, &good.channel()).is_some_and(|w| w["segments"] == 4 && w["trackers"] == 1)
    });
    for (pid, worker) in running_workers(&master.stats()) {
        assert_eq!(worker["policyStats"]["faults"], 0, "worker {pid} faulted");
    }
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
