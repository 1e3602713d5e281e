//! A fleet, for real: a single-node etcd and three superpeer masters on this machine,
//! with their worker processes, an HLS origin made by ffmpeg, and processes killed for
//! real (kill -9 of a master, of etcd).
//!
//! What must hold: seeds posted to one node spread over all; every channel runs on
//! exactly as many nodes as it asks for; a dead node's channels move to the next nodes
//! in rank once its lease expires, and come back when it does; without etcd nothing
//! stops and changes are refused; with etcd back the fleet takes changes again.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};

#[path = "support/harness.rs"]
mod harness;

use harness::*;

/// How long a silent node keeps its channels: short, so the test is short.
const LEASE_SECONDS: u64 = 3;
const CHANNELS: usize = 12;

struct Node {
    name: &'static str,
    master: Option<Superpeer>,
    dir: TempDir,
}

impl Node {
    fn start(name: &'static str, etcd: &EtcdServer) -> Node {
        let dir = data_dir(&format!("fleet-{name}"));
        let env = format!(
            "etcdEndpoints={}\nnodeName={name}\nfleetLeaseSeconds={LEASE_SECONDS}\nmaxWorkers=8\n\
             originAllow=127.0.0.1\n",
            etcd.url
        );
        std::fs::write(dir.join(ENV_FILE), env).unwrap();
        let master = Some(Superpeer::start(&dir));
        Node { name, master, dir }
    }

    fn master(&self) -> &Superpeer {
        self.master.as_ref().expect("running")
    }

    /// The channels this node runs workers for.
    fn running(&self) -> BTreeSet<String> {
        let stats = self.master().stats();
        stats["workers"]
            .as_object()
            .unwrap()
            .values()
            .map(|w| w["channelId"].as_str().unwrap().to_string())
            .collect()
    }

    fn fleet(&self) -> Value {
        self.master().ok("GET", "/fleet", Value::Null)
    }
}

fn channel(n: usize) -> String {
    base64::engine::general_purpose::STANDARD.encode(format!("fleet-test-channel-{n}"))
}

/// Each channel and the nodes running it.
fn placement(nodes: &[&Node]) -> BTreeMap<String, Vec<&'static str>> {
    let mut placement: BTreeMap<String, Vec<&'static str>> = BTreeMap::new();
    for node in nodes {
        for channel in node.running() {
            placement.entry(channel).or_default().push(node.name);
        }
    }
    placement
}

/// Waits until the channels in `expected` run on exactly one of `nodes` each, and no
/// other channel runs; fails at once if one runs on two. Returns the placement.
fn settle(
    nodes: &[&Node],
    expected: &BTreeSet<String>,
    what: &str,
) -> BTreeMap<String, Vec<&'static str>> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let now = placement(nodes);
        let doubled: Vec<_> = now.iter().filter(|(_, on)| on.len() > 1).collect();
        // A channel moves by stopping on one node and starting on the next: never on
        // two at once, when one node at a time changes its mind.
        assert!(doubled.is_empty(), "{what}: channels on two nodes: {doubled:?}");
        if now.keys().cloned().collect::<BTreeSet<_>>() == *expected {
            return now;
        }
        assert!(Instant::now() < deadline, "{what}: timed out; running {now:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_fleet_spreads_channels_takes_over_a_dead_node_and_holds_without_etcd() {
    let dir = data_dir("fleet-origin");
    let origin = HlsOrigin::start(&dir.join("media"), "vod");
    let mut etcd = EtcdServer::start();
    let a = Node::start("node-a", &etcd);
    let mut b = Node::start("node-b", &etcd);
    let c = Node::start("node-c", &etcd);
    for node in [&a, &b, &c] {
        node.master().wait_for("the node in the fleet", |_| {
            node.fleet()["nodes"].as_array().is_some_and(|nodes| nodes.len() == 3)
        });
    }

    // Twelve channels, posted to one node.
    let list: Vec<Value> = (0..CHANNELS)
        .map(|n| json!({"channel": channel(n), "url": origin.manifest, "live": false, "keepAlive": true}))
        .collect();
    let answer = a.master().ok("POST", "/seed", json!({ "list": list }));
    assert_eq!(answer["seeds"], CHANNELS, "{answer}");
    let all: BTreeSet<String> = (0..CHANNELS).map(channel).collect();
    let before = settle(&[&a, &b, &c], &all, "spread over three nodes");
    for node in [&a, &b, &c] {
        let count = before.values().filter(|on| on.contains(&node.name)).count();
        assert!(count > 0, "{} seeds nothing: {before:?}", node.name);
    }
    // Any node shows the whole fleet, and so does its monitor page.
    let view = c.fleet();
    assert_eq!(view["seeds"], CHANNELS, "{view:#}");
    assert_eq!(view["etcd"], "ok");
    let page = format!("http://{}/", c.master().addr);
    let report = drive_monitor(&page, &dir.join("fleet.png"), &["--fleet", "3"]);
    let rows: Vec<Vec<String>> = serde_json::from_value(report["fleetRows"].clone()).unwrap();
    let names: BTreeSet<&str> = rows.iter().map(|r| r[0].as_str()).collect();
    assert_eq!(names, BTreeSet::from(["node-a", "node-b", "node-c"]), "{report}");
    let placed: usize = rows.iter().map(|r| r[3].parse::<usize>().unwrap()).sum();
    assert_eq!(placed, CHANNELS, "{report}");
    assert!(report["fleetStatus"].as_str().unwrap().contains("etcd ok"), "{report}");
    assert_eq!(report["pageErrors"], json!([]), "{report}");
    assert_eq!(report["foreign"], json!([]), "{report}");

    // kill -9 of a master: its channels go to the others once its lease expires.
    let on_b: Vec<&String> =
        before.iter().filter(|(_, on)| on[0] == b.name).map(|(c, _)| c).collect();
    let killed_at = Instant::now();
    signal("KILL", b.master().pid());
    let _ = b.master.take();
    let after = settle(&[&a, &c], &all, "b's channels taken over");
    eprintln!("b's {} channels taken over {:?} after kill -9", on_b.len(), killed_at.elapsed());
    let moved = before.iter().filter(|(ch, on)| after[*ch] != **on).count();
    assert_eq!(moved, on_b.len(), "only b's channels moved: {before:?} -> {after:?}");

    // b back: it takes back what it had, and nothing else moves.
    b.master = Some(Superpeer::start(&b.dir));
    let deadline = Instant::now() + PATIENCE;
    let mut steps = Vec::new();
    let back = loop {
        let now = settle(&[&a, &b, &c], &all, "b back");
        let on_b = now.values().filter(|on| on.contains(&b.name)).count();
        if steps.last() != Some(&on_b) {
            steps.push(on_b);
        }
        if now == before {
            eprintln!("b took back its channels in steps: {steps:?}");
            break now;
        }
        assert!(Instant::now() < deadline, "not rebalanced as before: {before:?} -> {now:?}");
        std::thread::sleep(Duration::from_millis(200));
    };

    // etcd gone: nothing stops, and changes are refused with a reason.
    etcd.kill();
    for node in [&a, &b, &c] {
        node.master().wait_for("the node noticing etcd is gone", |_| node.fleet()["etcd"] != "ok");
    }
    let extra = channel(CHANNELS);
    let item = json!({"list": [{"channel": extra, "url": origin.manifest, "live": false}]});
    let (status, refused) = a.master().request("POST", "/seed", item.to_string().as_bytes());
    assert_eq!(status, 503, "{refused}");
    assert!(refused["error"].as_str().unwrap().contains("etcd"), "{refused}");
    // Past a whole lease, every channel still runs where it did.
    std::thread::sleep(Duration::from_secs(LEASE_SECONDS + 1));
    assert_eq!(placement(&[&a, &b, &c]), back, "something stopped without etcd");

    // etcd back: the same placement, and changes are taken again.
    etcd.resume();
    for node in [&a, &b, &c] {
        node.master().wait_for("the node back on etcd", |_| node.fleet()["etcd"] == "ok");
    }
    a.master().ok("POST", "/seed", item);
    let mut more = all.clone();
    more.insert(extra.clone());
    let last = settle(&[&a, &b, &c], &more, "a new seed after etcd came back");
    assert!(all.iter().all(|ch| last[ch] == back[ch]), "{back:?} -> {last:?}");

    // Stopped through another node, a seed leaves the fleet's list; then all of them.
    let path = format!("/stop/{}", extra.replace('/', "%2F"));
    assert_eq!(c.master().ok("POST", &path, Value::Null)["stopped"], extra.as_str());
    let (status, answer) = c.master().request("POST", &path, b"");
    assert_eq!(status, 404, "{answer}");
    settle(&[&a, &b, &c], &all, "the stopped seed gone");
    assert_eq!(b.master().ok("POST", "/stop_all", Value::Null)["stopped"], CHANNELS);
    settle(&[&a, &b, &c], &BTreeSet::new(), "every seed gone");
    for node in [a, b, c] {
        node.master.expect("running").stop();
    }
}
