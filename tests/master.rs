//! The master with real worker processes, over real HTTP on a port chosen by the OS:
//! seeding, kill -9 of a worker, master restarts, stop and restart endpoints, policy
//! swaps reaching the workers, and priority when capacity runs out.
//!
//! Every test starts its own `superpeer serve` with its own data directory, and stops
//! it (and so its workers) when it ends, pass or fail.

// Helpers panic on purpose: a broken fixture should fail the test that uses it.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

#[path = "support/harness.rs"]
mod harness;
#[path = "support/prometheus.rs"]
mod prometheus;
#[path = "support/viewer.rs"]
mod viewer;

use harness::*;

fn channel(name: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .encode(format!("http://127.0.0.1:9/{name}/master.m3u8"))
}

/// Whether a worker has exited and been reaped: the master lists it until then.
fn gone(stats: &Value, pid: u32) -> bool {
    stats["workers"].get(pid.to_string()).is_none()
}

fn one_worker(stats: &Value, channel: &str) -> Option<u32> {
    match workers_of(stats, channel).as_slice() {
        [(pid, _)] => Some(*pid),
        _ => None,
    }
}

fn guest(name: &str) -> Vec<u8> {
    std::fs::read(format!("{}/{name}.wasm", env!("SUPERPEER_GUEST_DIR"))).unwrap()
}

#[test]
fn a_seed_survives_kill_9_of_its_worker_and_a_master_restart() {
    let dir = data_dir("survives");
    let live = channel("live");
    let master = Superpeer::start(&dir);
    let answer = master.ok(
        "POST",
        "/seed",
        json!({"list": [{"channel": live, "keepAlive": true, "label": "news"}]}),
    );
    assert_eq!(answer, json!({"accepted": 1, "seeds": 1}));

    let stats = master.wait_for("a measured worker", |s| {
        workers_of(s, &live).first().is_some_and(|(_, w)| w["memory"].as_u64() > Some(0))
    });
    let (first, worker) = workers_of(&stats, &live).remove(0);
    assert_eq!(worker["policy"]["name"], "pml");
    assert_eq!(
        (worker["keepAlive"].clone(), worker["label"].clone()),
        (json!(true), json!("news"))
    );
    assert_eq!(worker["restarts"], 0);
    assert_eq!(
        master.ok("GET", &format!("/stats/{first}"), Value::Null)["worker"]["channelId"],
        live
    );
    let by_channel = master.ok("GET", &format!("/stats/{live}"), Value::Null);
    assert!(by_channel["workers"][first.to_string()].is_object(), "{by_channel}");

    signal("KILL", first);
    let stats = master.wait_for("a replacement worker", |s| {
        one_worker(s, &live).is_some_and(|p| p != first) && gone(s, first)
    });
    let second = one_worker(&stats, &live).unwrap();
    assert_eq!(workers_of(&stats, &live)[0].1["restarts"], 1);
    assert!(exits(first));

    // SIGTERM stops the workers with the master; the seed list stays on disk.
    master.stop();
    assert!(exits(second), "worker {second} outlived its master");
    let master = Superpeer::start(&dir);
    let stats =
        master.wait_for("the seed back after a restart", |s| one_worker(s, &live).is_some());
    assert_eq!(stats["master"]["seeds"], 1);

    // Stopping removes the seed, for good.
    let pid = one_worker(&stats, &live).unwrap();
    assert_eq!(master.ok("POST", &format!("/stop/{pid}"), Value::Null), json!({"stopped": live}));
    master.wait_for("no workers", |s| s["workers"].as_object().unwrap().is_empty());
    let saved: Value =
        serde_json::from_slice(&std::fs::read(dir.join("seeds.json")).unwrap()).unwrap();
    assert_eq!(saved, json!([]));
    assert!(exits(pid));
    master.stop();
}

#[test]
fn restarts_and_policy_swaps_reach_the_workers() {
    let dir = data_dir("swaps");
    let (a, b) = (channel("a"), channel("b"));
    let master = Superpeer::start_with(&dir, &["--max-workers", "2"]);
    master.ok(
        "POST",
        "/seed",
        json!({"list": [{"channel": a, "keepAlive": true}, {"channel": b, "keepAlive": true}]}),
    );
    let stats = master
        .wait_for("two workers", |s| one_worker(s, &a).is_some() && one_worker(s, &b).is_some());
    let (pid_a, pid_b) = (one_worker(&stats, &a).unwrap(), one_worker(&stats, &b).unwrap());

    master.ok("POST", &format!("/restart/{pid_a}"), Value::Null);
    master.wait_for("a restarted", |s| {
        one_worker(s, &a).is_some_and(|p| p != pid_a) && gone(s, pid_a)
    });
    assert!(exits(pid_a));

    let (status, answer) = master.request("POST", "/policy", &guest("superpeer_test_counter_v2"));
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["workers"], 2);
    let all_counter = |s: &Value| {
        [&a, &b]
            .iter()
            .all(|c| workers_of(s, c).iter().all(|(_, w)| w["policy"]["name"] == "counter"))
            && workers_of(s, &a).len() == 1
            && workers_of(s, &b).len() == 1
    };
    let stats = master.wait_for("both workers on the new policy", all_counter);
    assert_eq!(one_worker(&stats, &b), Some(pid_b), "a swap keeps the worker process");
    // The worker's own figures arrive with its next stats report.
    let stats = master.wait_for("b's figures after the swap", |s| {
        s["workers"][pid_b.to_string()]["policyStats"]["swaps"] == 1
    });
    let swapped = &stats["workers"][pid_b.to_string()]["policyStats"];
    assert!(swapped["last_swap_pause_us"].as_u64().is_some_and(|us| us > 0), "{swapped}");

    let embedded = export_default_policy(&dir);
    let (status, answer) = master.request("POST", &format!("/policy?channel={b}"), &embedded);
    assert_eq!((status, answer["workers"].clone()), (200, json!(1)), "{answer}");
    master.wait_for("b alone back on pml", |s| {
        workers_of(s, &b).iter().all(|(_, w)| w["policy"]["name"] == "pml")
            && workers_of(s, &a).iter().all(|(_, w)| w["policy"]["name"] == "counter")
    });
    let policy = master.ok("GET", "/policy", Value::Null);
    assert_eq!(policy["policy"]["name"], "counter");
    assert_eq!(policy["channels"][&b]["name"], "pml");

    let before = master.stats();
    assert_eq!(master.ok("POST", "/restart_all", Value::Null), json!({"restarting": 2}));
    master.wait_for("every worker replaced", |s| {
        [&a, &b].iter().all(|c| one_worker(s, c).is_some_and(|p| one_worker(&before, c) != Some(p)))
            && s["workers"].as_object().unwrap().len() == 2
    });

    assert_eq!(master.ok("POST", "/stop_all", Value::Null), json!({"stopped": 2}));
    let stats = master.wait_for("no workers", |s| s["workers"].as_object().unwrap().is_empty());
    assert_eq!(stats["master"]["seeds"], 0);
    master.stop();
}

#[test]
fn a_higher_priority_seed_displaces_a_lower_one_when_full() {
    let dir = data_dir("priority");
    let (low, high) = (channel("low"), channel("high"));
    let master = Superpeer::start(&dir);
    assert_eq!(master.ok("POST", "/ping", json!({"workers": 1}))["capacity"], 1);
    master.ok(
        "POST",
        "/seed",
        json!({"list": [{"channel": low, "priority": 10, "keepAlive": true}]}),
    );
    let stats = master.wait_for("the low seed's worker", |s| one_worker(s, &low).is_some());
    let low_pid = one_worker(&stats, &low).unwrap();

    master.ok("POST", "/seed", json!({"list": [{"channel": high, "priority": 200}]}));
    let stats = master.wait_for("the high seed in the only slot", |s| {
        one_worker(s, &high).is_some() && gone(s, low_pid)
    });
    assert_eq!(stats["workers"].as_object().unwrap().len(), 1);
    assert_eq!(stats["master"]["seeds"], 2, "the displaced seed waits for room");
    assert!(exits(low_pid));
    master.stop();
}

#[test]
fn bad_requests_over_http_get_a_4xx_and_harm_no_worker() {
    let dir = data_dir("bad-requests");
    let live = channel("live");
    let master = Superpeer::start(&dir);
    master.ok("POST", "/seed", json!({"list": [{"channel": live, "keepAlive": true}]}));
    let stats = master.wait_for("a worker", |s| one_worker(s, &live).is_some());
    let pid = one_worker(&stats, &live).unwrap();

    let seed = json!({"list": [{"channel": channel("other")}]}).to_string();
    for token in [None, Some("wrong"), Some("")] {
        let (status, body) = master.request_as(token, "POST", "/seed", seed.as_bytes());
        assert_eq!(status, 401, "{token:?}: {body}");
        assert!(body["error"].is_string());
    }
    let huge = vec![b' '; 2 << 20];
    let cases: &[(&str, &str, &[u8], u16)] = &[
        ("POST", "/seed", b"{\"list\": [", 400),
        ("POST", "/seed", b"{\"list\": [{\"channel\": true}]}", 400),
        ("POST", "/seed", b"\xff\xfe", 400),
        ("POST", "/seed", &huge, 413),
        ("POST", "/ping", b"[]", 400),
        ("POST", "/stop/999999999", b"", 404),
        ("POST", "/restart/-1", b"", 400),
        ("GET", "/stats/not-a-channel", b"", 404),
        ("POST", "/policy", b"\0asm\x0d\0\x01\0", 422),
        ("PUT", "/stats", b"", 405),
        ("POST", "/seed", b"{\"list\": [{\"channel\": \"YQ\", \"replicas\": 0}]}", 400),
        ("POST", "/seed", b"{\"list\": [{\"channel\": \"YQ\", \"auto\": true}]}", 400),
        ("POST", "/seed", b"{\"list\": [{\"channel\": \"YQ\", \"priority\": 1e12}]}", 400),
        ("POST", "/candidates", b"{\"list\": [", 400),
        ("POST", "/candidates", b"ftp://o.example/a.m3u8", 400),
        ("POST", "/candidates", b"http://o.example/a.m3u8\nnot a url", 400),
        (
            "POST",
            "/candidates",
            b"{\"list\": [{\"url\": \"http://o.example/a.m3u8\", \"x\": 1}]}",
            400,
        ),
        ("POST", "/candidates", b"\xff\xfe", 400),
        ("POST", "/candidates", &huge, 413),
        // Not in a fleet.
        ("GET", "/fleet", b"", 404),
    ];
    for (method, path, body, expected) in cases {
        let (status, answer) = master.request(method, path, body);
        assert_eq!(status, *expected, "{method} {path}: {answer}");
        assert!(answer["error"].is_string(), "{method} {path}: {answer}");
    }
    let stats = master.stats();
    assert_eq!(one_worker(&stats, &live), Some(pid), "the worker is untouched");
    assert_eq!(stats["master"]["seeds"], 1, "nothing bad was taken");
    let candidates = master.ok("GET", "/candidates", Value::Null);
    assert_eq!(candidates["candidates"], json!([]), "no bad candidate was taken: {candidates}");
    master.stop();
}

#[test]
fn an_idle_seed_is_evicted_after_its_grace_period_unless_kept_alive() {
    let dir = data_dir("idle");
    let (idle, kept) = (channel("idle"), channel("kept"));
    let master = Superpeer::start_with(&dir, &["--idle-grace-seconds", "1"]);
    master.ok(
        "POST",
        "/seed",
        json!({"list": [{"channel": idle}, {"channel": kept, "keepAlive": true}]}),
    );
    // With no viewers at all, the seed that is not kept alive goes once its grace ends.
    let stats = master.wait_for("the idle seed evicted", |s| {
        s["master"]["seeds"] == 1
            && workers_of(s, &idle).is_empty()
            && one_worker(s, &kept).is_some()
    });
    assert!(workers_of(&stats, &kept).iter().all(|(_, w)| w["keepAlive"] == true));
    let saved: Value =
        serde_json::from_slice(&std::fs::read(dir.join("seeds.json")).unwrap()).unwrap();
    assert_eq!(saved.as_array().unwrap().len(), 1);
    assert_eq!(saved[0]["channel"], kept);
    master.stop();
}

#[test]
fn channel_ids_match_in_any_spelling_and_stop_works_by_channel() {
    use base64::Engine as _;
    let dir = data_dir("spelling");
    let master = Superpeer::start(&dir);
    // Bytes that differ between the standard and URL-safe alphabets.
    let id = "http://127.0.0.1:9/a?>>?/master.m3u8";
    let standard = base64::engine::general_purpose::STANDARD.encode(id);
    let url_safe = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(id);
    assert_ne!(standard, url_safe);
    master.ok("POST", "/seed", json!({"list": [{"channel": standard, "keepAlive": true}]}));
    let answer = master.ok(
        "POST",
        "/seed",
        json!({"list": [{"channel": url_safe, "keepAlive": true, "label": "again"}]}),
    );
    assert_eq!(answer["seeds"], 1, "the same swarm, spelled differently, is one seed");
    let stats = master.wait_for("its worker", |s| one_worker(s, &standard).is_some());
    let pid = one_worker(&stats, &standard).unwrap();
    assert!(
        master.ok("GET", &format!("/stats/{url_safe}"), Value::Null)["workers"][pid.to_string()]
            .is_object()
    );

    assert_eq!(
        master.ok("POST", &format!("/stop/{url_safe}"), Value::Null),
        json!({"stopped": standard})
    );
    master.wait_for("no workers", |s| s["workers"].as_object().unwrap().is_empty());
    assert!(exits(pid));
    let (status, body) = master.request("POST", &format!("/stop/{url_safe}"), b"");
    assert_eq!(status, 404, "{body}");
    master.stop();
}

#[test]
fn a_second_master_on_the_same_data_directory_is_refused() {
    let dir = data_dir("lock");
    let first = Superpeer::start(&dir);
    let second = Command::new(env!("CARGO_BIN_EXE_superpeer"))
        .args(["serve", "--port", "0", "--bind", "127.0.0.1"])
        .arg("--data-dir")
        .arg(&*dir)
        .arg("--env-file")
        .arg(dir.join("absent.env"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!second.status.success());
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(stderr.contains("another superpeer uses this data directory"), "{stderr}");
    first.stop();
}

#[test]
fn invalid_configuration_stops_start_up_naming_the_key() {
    let dir = data_dir("config");
    std::fs::write(dir.join(".env"), "listenPort=eighty\n").unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_superpeer"))
        .args(["serve", "--env-file"])
        .arg(dir.join(".env"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("`listenPort`") && stderr.contains("not a number"), "{stderr}");
}

#[test]
fn a_worker_keeps_a_connection_to_a_real_tracker() {
    let dir = data_dir("tracker");
    let tracker = Tracker::start();
    let live = channel("live");
    let master = Superpeer::start(&dir);
    master.ok(
        "POST",
        "/seed",
        json!({"list": [{"channel": live, "keepAlive": true, "signal1": tracker.url}]}),
    );
    let stats = master.wait_for("a tracker connection", |s| {
        workers_of(s, &live).first().is_some_and(|(_, w)| w["trackers"] == 1)
    });
    let (_, worker) = workers_of(&stats, &live).remove(0);
    assert_eq!(worker["policyStats"]["faults"], 0);

    // The tracker goes away: the connection is reported closed.
    drop(tracker);
    master.wait_for("the tracker connection gone", |s| {
        workers_of(s, &live).first().is_some_and(|(_, w)| w["trackers"] == 0)
    });
    master.stop();
}

/// A small HLS origin on 127.0.0.1:0 serving a live master playlist, its media playlist
/// (three segments, target duration 1 s) and the segments; counts requests per path.
struct Origin {
    base: String,
    hits: Arc<Mutex<std::collections::BTreeMap<String, usize>>>,
}

impl Origin {
    fn start() -> Origin {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let hits: Arc<Mutex<std::collections::BTreeMap<String, usize>>> = Arc::default();
        let counter = hits.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { break };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut request = String::new();
                if reader.read_line(&mut request).is_err() {
                    continue;
                }
                // Drain the headers.
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                    line.clear();
                }
                let path = request.split_whitespace().nth(1).unwrap_or("/").to_string();
                *counter.lock().unwrap().entry(path.clone()).or_default() += 1;
                let body: Vec<u8> = match path.as_str() {
                    "/live/master.m3u8" => b"#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=1280000,CODECS=\"avc1.4d401f,mp4a.40.2\",RESOLUTION=1280x720\n720p.m3u8\n".to_vec(),
                    "/live/720p.m3u8" => b"#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXT-X-MEDIA-SEQUENCE:7\n#EXTINF:1,\ns7.ts\n#EXTINF:1,\ns8.ts\n#EXTINF:1,\ns9.ts\n".to_vec(),
                    p if p.starts_with("/live/s") => vec![0x47; 1880],
                    _ => Vec::new(),
                };
                let status = if body.is_empty() { "404 Not Found" } else { "200 OK" };
                let head = format!(
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(head.as_bytes()).and_then(|()| stream.write_all(&body));
            }
        });
        Origin { base, hits }
    }

    fn hits(&self, path: &str) -> usize {
        self.hits.lock().unwrap().get(path).copied().unwrap_or(0)
    }
}

/// A real tracker, the live origin, and superpeer seeding its stream with the live
/// window cached and the tracker connected.
struct Live {
    tracker: Tracker,
    origin: Origin,
    manifest: String,
    channel: String,
    master: Superpeer,
}

impl Live {
    fn seeded(dir: &Path) -> Live {
        let tracker = Tracker::start();
        let origin = Origin::start();
        let manifest = format!("{}/live/master.m3u8", origin.base);
        let channel = channel_of(&manifest);
        let master = Superpeer::start(dir);
        let seed =
            json!({"list": [{"channel": channel, "keepAlive": true, "signal1": tracker.url}]});
        master.ok("POST", "/seed", seed);
        master.wait_for("the live window cached", |s| {
            workers_of(s, &channel)
                .first()
                .is_some_and(|(_, w)| w["segments"] == 3 && w["trackers"] == 1)
        });
        Live { tracker, origin, manifest, channel, master }
    }
}

#[test]
fn a_worker_announces_in_the_swarm_and_caches_the_live_window_once() {
    let dir = data_dir("seeding");
    let Live { tracker, origin, manifest: _, channel, master } = Live::seeded(&dir);
    // The tracker has superpeer in two swarms: the one rendition as p2p-media-loader 2.3
    // and as 2.2 viewers name it.
    let stats_url = format!("{}/stats.json", tracker.url.replacen("ws://", "http://", 1));
    let deadline = Instant::now() + PATIENCE;
    loop {
        let stats = http_get_json(&stats_url);
        if stats["torrents"] == 2 && stats["peersAll"] == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "never announced: {stats}");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Reloads of the live playlist fetch nothing twice.
    let deadline = Instant::now() + PATIENCE;
    while origin.hits("/live/720p.m3u8") < 3 {
        assert!(Instant::now() < deadline, "the live playlist is not reloaded");
        std::thread::sleep(Duration::from_millis(50));
    }
    for segment in ["/live/s7.ts", "/live/s8.ts", "/live/s9.ts"] {
        assert_eq!(origin.hits(segment), 1, "{segment} fetched once");
    }
    let stats = master.stats();
    let (_, worker) = workers_of(&stats, &channel).remove(0);
    assert_eq!(worker["memoryCacheSize"], 3 * 1880);
    assert!(worker["downloaded"].as_u64() >= Some(3 * 1880));
    assert_eq!(worker["policyStats"]["faults"], 0);
    master.stop();
}

#[test]
fn a_viewer_finds_superpeer_through_the_tracker_and_downloads_a_segment_over_webrtc() {
    let dir = data_dir("viewer");
    // The origin serves on its own thread; only the tracker must stay alive.
    let Live { tracker, origin: _, manifest, channel, master } = Live::seeded(&dir);

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let received = runtime.block_on(view(&tracker.url, &info_hash_of_720p(&manifest), 7));
    // SegmentData header, then the bytes, then SendingCompleted.
    let commands: Vec<&Vec<u8>> = received.iter().filter(|m| m.starts_with(b"cstr")).collect();
    assert!(commands.iter().any(|m| m[4] == 2), "a SegmentData header");
    let data: Vec<u8> =
        received.iter().filter(|m| !m.starts_with(b"cstr")).flatten().copied().collect();
    assert_eq!(data, vec![0x47; 1880], "the origin's bytes, through superpeer");

    let stats = master.wait_for("the upload counted", |s| {
        workers_of(s, &channel).first().is_some_and(|(_, w)| w["uploaded"] == 1880)
    });
    assert_eq!(workers_of(&stats, &channel)[0].1["policyStats"]["faults"], 0);
    master.stop();
}

/// What an operator sees of a worker that served a viewer: `/metrics` as Prometheus
/// reads it with the worker's real counters, log lines that carry the worker's pid and
/// channel, and the monitor page in Chromium (the worker's row, both charts, a restart
/// from the row's button, a screenshot).
#[test]
fn metrics_logs_and_the_monitor_page_show_a_worker_that_served_a_viewer() {
    let dir = data_dir("monitor");
    let Live { tracker, origin: _origin, manifest, channel, master } = Live::seeded(&dir);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(view(&tracker.url, &info_hash_of_720p(&manifest), 7));
    let stats = master.wait_for("the served segment counted", |s| {
        workers_of(s, &channel).first().is_some_and(|(_, w)| w["segmentsServed"] == 1)
    });
    let (pid, worker) = workers_of(&stats, &channel).remove(0);
    assert_eq!(worker["uploaded"], 1880);

    let (status, _, _) = master.request_raw("GET", "/metrics", "", b"");
    assert_eq!(status, 401, "metrics need the token");
    let bearer = format!("Authorization: Bearer {TOKEN}\r\n");
    let (status, head, text) = master.request_raw("GET", "/metrics", &bearer, b"");
    assert_eq!(status, 200);
    assert!(
        head.to_ascii_lowercase().contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    let metrics = prometheus::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let pid_label = pid.to_string();
    let of_worker = |name: &str| {
        metrics.value(name, &[("pid", &pid_label)]).unwrap_or_else(|| panic!("{name}\n{text}"))
    };
    assert_eq!(of_worker("superpeer_worker_uploaded_bytes_total"), 1880.0);
    assert_eq!(of_worker("superpeer_worker_segments_served_total"), 1.0);
    assert!(of_worker("superpeer_worker_downloaded_bytes_total") >= 3.0 * 1880.0);
    assert_eq!(of_worker("superpeer_worker_fetch_errors_total"), 0.0);
    assert_eq!(of_worker("superpeer_worker_policy_traps_total"), 0.0);
    assert!(of_worker("superpeer_worker_cpu_seconds_total") > 0.0);
    assert!(of_worker("superpeer_worker_resident_memory_bytes") > 1e6);
    assert_eq!(
        metrics.value("superpeer_worker_info", &[("pid", &pid_label), ("channel", &channel)]),
        Some(1.0)
    );
    let total = |name: &str| metrics.value(name, &[]).unwrap_or_else(|| panic!("{name}"));
    assert_eq!(total("superpeer_uploaded_bytes_total"), 1880.0);
    assert_eq!(total("superpeer_segments_served_total"), 1.0);
    assert_eq!(total("superpeer_workers"), 1.0);
    assert_eq!(total("superpeer_seeds"), 1.0);
    assert_eq!(total("superpeer_worker_restarts_total"), 0.0);
    for family in [
        "superpeer_peers",
        "superpeer_policy_rollbacks_total",
        "superpeer_policy_swaps_total",
        "superpeer_fetch_errors_total",
    ] {
        assert!(metrics.value(family, &[]).is_some(), "{family}");
    }

    // A label is the API user's text: the page must show it, not run it.
    let label = "<img src=x onerror=\"document.title='owned'\"><b>news</b>";
    let reseed = json!({"list": [{"channel": channel, "keepAlive": true, "signal1": tracker.url, "label": label}]});
    master.ok("POST", "/seed", reseed);

    // The worker's own log lines name it.
    let tag = format!("worker{{pid={pid} channel={channel:?}}}");
    let logged =
        master.log.lock().unwrap().iter().any(|l| l.contains(&tag) && l.contains("worker started"));
    assert!(logged, "no `worker started` line tagged {tag}");

    let screenshot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("monitor.png");
    let _ = std::fs::remove_file(&screenshot);
    let page = format!("http://{}/", master.addr);
    let driven = drive_monitor(&page, &screenshot, &[]);
    assert_eq!(driven["before"], pid_label, "the page showed the worker: {driven}");
    assert_eq!(driven["channel"], channel);
    assert!(driven["row"].as_str().unwrap().contains("1.9 KB"), "uploaded in the row: {driven}");
    assert!(driven["row"].as_str().unwrap().contains(label), "the label as text: {driven}");
    assert_eq!(driven["title"], "superpeer monitor", "no markup of the label ran");
    assert!(driven["uplinkPoints"].as_u64() >= Some(2), "{driven}");
    assert!(driven["peersPoints"].as_u64() >= Some(2), "{driven}");
    assert!(driven["refusal"].as_str().unwrap().contains("refused"), "{driven}");
    assert_eq!(driven["foreign"], json!([]), "the page loaded nothing from elsewhere");
    assert_eq!(driven["pageErrors"], json!([]));
    let after: u32 = driven["after"].as_str().unwrap().parse().unwrap();
    assert_ne!(after, pid);
    let stats = master.stats();
    assert_eq!(one_worker(&stats, &channel), Some(after), "the new pid is the channel's worker");
    assert!(gone(&stats, pid));
    // The exited worker's upload still counts in the totals.
    let (_, _, text) = master.request_raw("GET", "/metrics", &bearer, b"");
    let metrics = prometheus::parse(&text).unwrap();
    assert_eq!(metrics.value("superpeer_uploaded_bytes_total", &[]), Some(1880.0));
    assert_eq!(metrics.value("superpeer_segments_served_total", &[]), Some(1.0));
    let png = std::fs::read(&screenshot).unwrap();
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000, "a screenshot");
    eprintln!("monitor screenshot: {}", screenshot.display());
    master.stop();
}

#[test]
fn json_logs_carry_each_workers_pid_and_channel() {
    let dir = data_dir("json-logs");
    let master = Superpeer::start_with(&dir, &["--log-format", "json"]);
    let channel = channel("json-logs");
    master.ok("POST", "/seed", json!({"list": [{"channel": channel}]}));
    let stats = master.wait_for("a running worker", |s| one_worker(s, &channel).is_some());
    let pid = one_worker(&stats, &channel).unwrap();
    let started = |line: &Value| line["fields"]["message"] == "worker started";
    let deadline = Instant::now() + PATIENCE;
    let line = loop {
        let lines: Vec<Value> = master
            .log
            .lock()
            .unwrap()
            .iter()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect();
        if let Some(line) = lines.into_iter().find(started) {
            break line;
        }
        assert!(Instant::now() < deadline, "no `worker started` line");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(line["level"], "INFO");
    assert_eq!(line["span"]["name"], "worker");
    assert_eq!(line["span"]["pid"], pid);
    assert_eq!(line["span"]["channel"], channel);
    master.stop();
}

/// Joins the swarm through the tracker with an offer, connects to whoever answers,
/// asks for `segment` and returns every DataChannel message received until the answer
/// ends (SegmentDataSendingCompleted or SegmentAbsent).
async fn view(tracker: &str, info_hash: &str, segment: u8) -> Vec<Vec<u8>> {
    use futures_util::{SinkExt, StreamExt};
    use rtc::peer_connection::sdp::RTCSessionDescription;
    use rtc::sansio::Protocol;
    use tokio_tungstenite::tungstenite::Message;

    let (mut viewer, offer) = viewer::Viewer::new().await;
    let (mut socket, _) = tokio_tungstenite::connect_async(tracker).await.unwrap();
    let announce = json!({
        "action": "announce", "info_hash": info_hash, "peer_id": "-PM0203-testviewer01",
        "numwant": 5, "uploaded": 0, "downloaded": 0, "event": "started",
        "offers": [{"offer": {"type": "offer", "sdp": offer}, "offer_id": "offer-of-the-viewer0"}],
    });
    socket.send(Message::text(announce.to_string())).await.unwrap();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let answer = loop {
        let message = tokio::time::timeout_at(deadline, socket.next())
            .await
            .expect("no answer came")
            .unwrap()
            .unwrap();
        let reply: Value = serde_json::from_str(message.to_text().unwrap()).unwrap();
        if let Some(sdp) = reply["answer"]["sdp"].as_str() {
            assert_eq!(reply["offer_id"], "offer-of-the-viewer0");
            break sdp.to_string();
        }
    };
    viewer
        .connection
        .set_remote_description(Instant::now(), RTCSessionDescription::answer(answer).unwrap())
        .unwrap();

    let mut buffer = vec![0u8; 65_536];
    let mut requested = false;
    loop {
        viewer.flush();
        if viewer.channel.is_some() && !requested {
            // SegmentRequest {i: segment, r: 1}, once superpeer has said what it has.
            if viewer.received.iter().any(|m| m.starts_with(b"cstr\x00")) {
                viewer.send(&[b"cstr\x01i\x01".as_slice(), &[segment], b"r\x01\x01cend"].concat());
                requested = true;
            }
        }
        if viewer.received.iter().any(|m| m.starts_with(b"cstr\x03") || m.starts_with(b"cstr\x04"))
        {
            return std::mem::take(&mut viewer.received);
        }
        let timer = viewer
            .connection
            .poll_timeout()
            .map(tokio::time::Instant::from_std)
            .unwrap_or(deadline)
            .min(deadline);
        tokio::select! {
            received = viewer.socket.recv_from(&mut buffer) => {
                let (len, from) = received.unwrap();
                viewer.receive(from, &buffer[..len]);
            }
            () = tokio::time::sleep_until(timer) => {
                assert!(tokio::time::Instant::now() < deadline, "no segment: got {:?}", viewer.received.len());
                let _ = viewer.connection.handle_timeout(Instant::now());
            }
        }
    }
}

/// A VOD segment whose disk copy vanished after the worker cached it (as when another
/// worker's cache cap takes it): the viewer that asks is told at once that it is
/// absent, never sent an end of segment without its bytes (p2p-media-loader drops the
/// connection for that), and the worker drops it from its cache.
#[test]
fn a_segment_whose_disk_copy_vanished_is_said_absent_not_ended_short() {
    let dir = data_dir("vanished");
    // Segments larger than what a worker keeps of recent disk reads and writes in
    // memory (32 MiB): serving one reads the disk.
    let origin = VodOrigin::start(3, 40 << 20);
    let tracker = Tracker::start();
    let master = Superpeer::start(&dir);
    seed_vod(&master, &origin, &tracker, 3, json!({}));
    let cache = dir.join("cache");
    let cached = || {
        std::fs::read_dir(&cache)
            .map(|e| e.flatten().filter(|f| f.path().extension() == Some("seg".as_ref())).count())
            .unwrap_or(0)
    };
    assert_eq!(cached(), 3, "held on disk");
    for file in std::fs::read_dir(&cache).unwrap().flatten() {
        std::fs::remove_file(file.path()).unwrap();
    }

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let received = runtime.block_on(view(&tracker.url, &origin.info_hash(), 1));
    let commands: Vec<u8> =
        received.iter().filter(|m| m.starts_with(b"cstr")).map(|m| m[4]).collect();
    let lengths: Vec<usize> = received.iter().map(Vec::len).collect();
    assert!(commands.contains(&4), "SegmentAbsent: {commands:?} {lengths:?}");
    assert!(!commands.contains(&3), "no end of segment without its bytes: {commands:?}");
    assert!(received.iter().all(|m| m.starts_with(b"cstr")), "no bytes of a segment");
    let stats = master.wait_for("the segment dropped from the cache", |s| {
        s["workers"].as_object().unwrap().values().any(|w| w["segments"] == 2)
    });
    let workers = stats["workers"].as_object().unwrap();
    assert!(workers.values().all(|w| w["policyStats"]["faults"] == 0), "{stats:#}");
    master.stop();
}

#[test]
fn a_stopped_seed_says_stopped_in_its_swarm_before_it_leaves() {
    let dir = data_dir("goodbye");
    let Live { tracker, origin: _origin, manifest: _, channel, master } = Live::seeded(&dir);
    let announces = |event: &str| -> Vec<Value> {
        let lines = tracker.service.lines.lock().unwrap();
        lines
            .iter()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .filter(|announce| announce["event"] == event)
            .collect()
    };
    let deadline = Instant::now() + PATIENCE;
    while announces("start").is_empty() {
        assert!(Instant::now() < deadline, "superpeer never announced `started`");
        std::thread::sleep(Duration::from_millis(20));
    }
    let pid = one_worker(&master.stats(), &channel).unwrap();

    master.ok("POST", &format!("/stop/{pid}"), Value::Null);
    assert!(exits(pid), "the worker did not exit");
    // The tracker's own clean-up of a closed socket prints no `stop` line: only the
    // worker's goodbye does.
    let started = announces("start");
    let deadline = Instant::now() + PATIENCE;
    while announces("stop").len() < started.len() {
        assert!(Instant::now() < deadline, "no `stopped` announce: {:?}", announces("stop"));
        std::thread::sleep(Duration::from_millis(20));
    }
    let stopped = announces("stop");
    assert_eq!(stopped.len(), started.len(), "one goodbye per swarm: {stopped:?}");
    for (start, stop) in started.iter().zip(&stopped) {
        assert_eq!(
            (&start["info_hash"], &start["peer_id"]),
            (&stop["info_hash"], &stop["peer_id"])
        );
    }
    master.stop();
}
