//! Automatic seeding on one machine, with real viewers. Three candidate channels (one
//! ffmpeg VOD, three swarm ids) are listed at `candidatesUrl`; unmodified
//! p2p-media-loader viewers in headless Chromium are already watching two of them on a
//! real tracker before superpeer starts: three 2.3 viewers on the busy one, one 2.2
//! and one 2.3 viewer on the warm one (two swarms per rendition, counted together),
//! nobody on the empty one. With `autoSeedViewers=2`:
//! - scouts measure every candidate without joining any swarm (the empty one is
//!   measured at 0 and never seeded);
//! - the busy and warm channels are seeded automatically, and their workers connect to
//!   the viewers there;
//! - once the busy channel's viewers leave, its seed is given back after the grace,
//!   while the warm one stays seeded.
//!
//! The same across a fleet (a real etcd, three masters): the candidates are posted to
//! one node, the node that leads automatic seeding scouts and writes the automatic
//! seeds to the fleet's list, every node shows them, and when that leader is killed
//! with `kill -9` another takes over and gives the emptied channel back.
//!
//! Needs Chromium, ffmpeg and etcd (`just system-deps`) and the npm packages in
//! `tests/support` (`just node-deps`).

// Helpers panic on purpose: a broken fixture should fail the test that uses it.
#![allow(clippy::unwrap_used)]

use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};

#[path = "support/harness.rs"]
mod harness;

use harness::*;

/// A long VOD of small segments: the viewers are still loading while the test runs.
const MEDIA: &[&str] = &["--seconds", "600", "--size", "160x90", "--video-bitrate", "100k"];

/// Automatic seeding's settings in both tests: seeded from two viewers, given back
/// after 3 s below that, candidates not seeded measured every 2 s.
const AUTOSEED_ENV: &str = "autoSeedViewers=2\nautoSeedGraceSeconds=3\nscoutIntervalSeconds=2\n";

/// Chromium swarms, several masters and ffmpeg's origin share two cores: one test at a
/// time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// The candidates: three swarm ids of `origin`'s stream, on `tracker`.
fn candidate_list(origin: &HlsOrigin, tracker: &str) -> Value {
    let items: Vec<Value> = ["busy", "warm", "empty"]
        .iter()
        .map(|id| json!({"channel": channel(id), "url": origin.manifest, "signal1": tracker, "label": id}))
        .collect();
    json!({ "list": items })
}

fn channel(swarm_id: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(swarm_id)
}

/// The candidate `swarm_id` as `GET /candidates` shows it (null before the list is read).
fn candidate(view: &Value, swarm_id: &str) -> Value {
    let id = channel(swarm_id);
    let listed =
        view["candidates"].as_array().unwrap().iter().find(|c| c["channel"] == id.as_str());
    listed.cloned().unwrap_or(Value::Null)
}

/// Viewers of `swarm_id` who watch with the page's p2p-media-loader `generations`.
fn viewers(origin: &HlsOrigin, tracker: &str, swarm_id: &str, generations: &str) -> Swarm {
    let page = format!(
        "{}/swarm.html?viewers={generations}&manifest={}&trackers={}&swarmId={swarm_id}&highDemand=4",
        origin.url,
        percent_encode(&origin.manifest),
        percent_encode(tracker),
    );
    let swarm = Swarm::start(&page);
    swarm.wait_until("every viewer playing", Duration::from_secs(90), |viewers| {
        viewers.iter().all(|v| v["played"].as_f64() >= Some(4.0))
    });
    swarm
}

/// The busy channel's viewers leave: waits until its automatic seed is given back,
/// and checks the warm one stays and the empty one was never seeded; the candidates
/// then.
fn empty_and_give_back(busy: Swarm, master: &Superpeer, what: &str) -> Value {
    drop(busy.finish());
    let emptied = Instant::now();
    let view = master.wait_for_path("the emptied seed given back", "/candidates", |v| {
        candidate(v, "busy")["seeded"].is_null()
    });
    eprintln!("{what} was given back {:?} after its viewers left", emptied.elapsed());
    assert_eq!(candidate(&view, "warm")["seeded"], "auto", "{view:#}");
    assert_eq!(candidate(&view, "empty")["seeded"], Value::Null, "{view:#}");
    view
}

/// The pid and stats of the worker seeding `swarm_id`, once it runs.
fn worker_of(stats: &Value, swarm_id: &str) -> Option<Value> {
    let id = channel(swarm_id);
    stats["workers"].as_object()?.values().find(|w| w["channelId"] == id.as_str()).cloned()
}

#[test]
fn busy_candidates_are_seeded_by_themselves_and_an_emptied_one_is_given_back() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let dir = data_dir("autoseed");
    let media = dir.join("media");
    let origin = HlsOrigin::start_with(&media, "vod", MEDIA);
    let tracker = Tracker::start();
    let list = candidate_list(&origin, &tracker.url);
    std::fs::write(media.join("candidates.json"), list.to_string()).unwrap();
    std::fs::write(
        dir.join(ENV_FILE),
        format!("candidatesUrl={}/candidates.json\n{AUTOSEED_ENV}maxSeeds=2\n", origin.url),
    )
    .unwrap();

    // The viewers were there first.
    let busy = viewers(&origin, &tracker.url, "busy", "2.3,2.3,2.3");
    let warm = viewers(&origin, &tracker.url, "warm", "2.2,2.3");
    let master = Superpeer::start(&dir);

    let view = master.wait_for_path("the busy and warm channels seeded", "/candidates", |v| {
        candidate(v, "busy")["seeded"] == "auto"
            && candidate(v, "warm")["seeded"] == "auto"
            && candidate(v, "empty")["viewers"] == 0
    });
    eprintln!("candidates once seeded: {view:#}");
    assert_eq!(candidate(&view, "empty")["seeded"], Value::Null, "{view:#}");
    assert_eq!(view["source"], format!("{}/candidates.json", origin.url));
    let (status, answer) = master.request("POST", "/candidates", b"http://o.example/a.m3u8");
    assert_eq!(status, 409, "the list is candidatesUrl's: {answer}");
    // The monitor page shows them.
    let page = format!("http://{}/", master.addr);
    let report = drive_monitor(&page, &dir.join("candidates.png"), &["--candidates", "3"]);
    let rows: Vec<Vec<String>> = serde_json::from_value(report["candidatesRows"].clone()).unwrap();
    let row = |label: &str| rows.iter().find(|r| r[0] == label).cloned().unwrap_or_default();
    assert_eq!(row("busy")[3], "auto", "{report}");
    assert_eq!(row("warm")[3], "auto", "{report}");
    assert_eq!((&row("empty")[1][..], &row("empty")[3][..]), ("0", ""), "{report}");
    assert!(
        report["candidatesStatus"].as_str().unwrap().contains("seeded from 2 viewers"),
        "{report}"
    );
    assert_eq!(report["pageErrors"], json!([]), "{report}");

    // The automatic seeds are real: their workers reach the viewers already there.
    let stats = master.wait_for("both automatic seeds connected to viewers", |stats| {
        ["busy", "warm"]
            .iter()
            .all(|id| worker_of(stats, id).is_some_and(|w| w["peers"].as_u64() >= Some(1)))
    });
    assert!(worker_of(&stats, "empty").is_none(), "{stats:#}");

    // The busy channel empties: its seed is given back after the grace; the warm one
    // stays, and the empty one was never seeded.
    empty_and_give_back(busy, &master, "the busy channel's seed");
    assert!(
        master.stats()["workers"]
            .as_object()
            .unwrap()
            .values()
            .all(|w| w["state"] != "running" || w["channelId"] != channel("busy").as_str()),
        "its worker stopped"
    );
    let log = master.log.lock().unwrap().join("\n");
    assert!(log.contains("automatic seed given back"), "{log}");

    // Seeds posted by the operator come first: with maxSeeds 2, a second one takes the
    // automatic seed's place, and the candidate is not seeded again while there is no
    // room, busy as it is.
    let posted =
        |id: &str| json!({"channel": channel(id), "url": origin.manifest, "signal1": tracker.url});
    master.ok("POST", "/seed", json!({"list": [posted("empty")]}));
    master.ok("POST", "/seed", json!({"list": [posted("busy")]}));
    let view = master.wait_for_path("the warm one measured again", "/candidates", |v| {
        candidate(v, "warm")["viewers"].as_u64() >= Some(2)
    });
    for (id, seeded) in
        [("warm", Value::Null), ("busy", json!("manual")), ("empty", json!("manual"))]
    {
        assert_eq!(candidate(&view, id)["seeded"], seeded, "{id}: {view:#}");
    }
    drop(warm);
    master.stop();
}

/// A master of the fleet on `etcd`.
fn fleet_node(name: &str, etcd: &EtcdServer) -> (Superpeer, TempDir) {
    let dir = data_dir(&format!("autoseed-fleet-{name}"));
    let env = format!(
        "etcdEndpoints={}\nnodeName={name}\nfleetLeaseSeconds=3\nmaxSeeds=2\n{AUTOSEED_ENV}",
        etcd.url
    );
    std::fs::write(dir.join(ENV_FILE), env).unwrap();
    (Superpeer::start(&dir), dir)
}

type Nodes = [Option<(Superpeer, TempDir)>];

/// The master of node `at`, which must be running.
fn node(nodes: &Nodes, at: usize) -> &Superpeer {
    &nodes[at].as_ref().unwrap().0
}

/// Which nodes run a worker for `swarm_id`, and its viewers there.
fn running(nodes: &[&Superpeer], swarm_id: &str) -> Vec<u64> {
    nodes
        .iter()
        .filter_map(|n| worker_of(&n.stats(), swarm_id))
        .map(|w| w["peers"].as_u64().unwrap_or(0))
        .collect()
}

#[test]
fn across_a_fleet_the_leader_seeds_busy_candidates_and_another_takes_over_when_it_dies() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let dir = data_dir("autoseed-fleet");
    let origin = HlsOrigin::start_with(&dir.join("media"), "vod", MEDIA);
    let tracker = Tracker::start();
    let etcd = EtcdServer::start();
    let names = ["node-a", "node-b", "node-c"];
    let mut nodes: Vec<Option<(Superpeer, TempDir)>> =
        names.iter().map(|name| Some(fleet_node(name, &etcd))).collect();
    for at in 0..3 {
        node(&nodes, at).wait_for_path("the node in the fleet", "/fleet", |fleet| {
            fleet["nodes"].as_array().is_some_and(|nodes| nodes.len() == 3)
        });
    }

    // The viewers were there first; the candidates are posted to one node.
    let busy = viewers(&origin, &tracker.url, "busy", "2.3,2.3,2.3");
    let warm = viewers(&origin, &tracker.url, "warm", "2.2,2.3");
    node(&nodes, 0).ok("POST", "/candidates", candidate_list(&origin, &tracker.url));

    // Every node sees the automatic seeds in the fleet's list; the leader has measured
    // the empty one (its scouts are the only ones).
    let seeded = |v: &Value| {
        candidate(v, "busy")["seeded"] == "auto" && candidate(v, "warm")["seeded"] == "auto"
    };
    let view =
        node(&nodes, 1).wait_for_path("the busy and warm channels seeded", "/candidates", seeded);
    let leader = view["leader"].as_str().unwrap().to_string();
    let lead = names.iter().position(|n| *n == leader).unwrap();
    eprintln!("the leader is {leader}");
    let view = node(&nodes, lead).wait_for_path("the empty one measured", "/candidates", |v| {
        candidate(v, "empty")["viewers"] == 0
    });
    assert!(seeded(&view) && candidate(&view, "empty")["seeded"].is_null(), "{view:#}");

    // The seeds run in the fleet, once each, and reach the viewers already there.
    let deadline = Instant::now() + PATIENCE;
    loop {
        let live: Vec<&Superpeer> = nodes.iter().flatten().map(|(m, _)| m).collect();
        let (on_busy, on_warm) = (running(&live, "busy"), running(&live, "warm"));
        assert!(on_busy.len() <= 1 && on_warm.len() <= 1, "on two nodes: {on_busy:?} {on_warm:?}");
        if on_busy.iter().chain(&on_warm).filter(|peers| **peers >= 1).count() == 2 {
            assert!(running(&live, "empty").is_empty());
            break;
        }
        assert!(Instant::now() < deadline, "timed out: busy {on_busy:?}, warm {on_warm:?}");
        std::thread::sleep(Duration::from_millis(200));
    }

    // The leader dies; another takes its place once its lease is gone, and gives the
    // emptied channel back while the warm one stays.
    let (dead, _dir) = nodes[lead].take().unwrap();
    signal("KILL", dead.pid());
    let survivor = (0..3).find(|at| *at != lead).unwrap();
    let view = node(&nodes, survivor).wait_for_path("a new leader", "/candidates", |v| {
        v["leader"].as_str().is_some_and(|l| l != leader)
    });
    eprintln!("the new leader is {}", view["leader"]);
    empty_and_give_back(busy, node(&nodes, survivor), "the fleet's seed of busy");

    // Seeds posted by the operator come first: past the fleet's maxSeeds (2), they take
    // the automatic seed's place in the same write.
    let posted =
        |id: &str| json!({"channel": channel(id), "url": origin.manifest, "signal1": tracker.url});
    let answer = node(&nodes, survivor).ok(
        "POST",
        "/seed",
        json!({"list": [posted("empty"), posted("busy")]}),
    );
    assert_eq!(answer["seeds"], 2, "{answer}");
    let view = node(&nodes, survivor).wait_for_path("the posted seeds in", "/candidates", |v| {
        candidate(v, "busy")["seeded"] == "manual" && candidate(v, "empty")["seeded"] == "manual"
    });
    assert_eq!(candidate(&view, "warm")["seeded"], Value::Null, "{view:#}");
    drop(warm);
    drop(dead);
    for (master, _) in nodes.iter_mut().flat_map(Option::take) {
        master.stop();
    }
}
