//! SwarmCloud viewers: the unmodified SwarmCloud web SDK (`swarmcloud-hls` 2.9.10, its
//! own build of hls.js, installed from npm at test time) in headless Chromium, a
//! SwarmCloud-compatible tracker and signal relays (`tests/support/swarmcloud.mjs`),
//! ffmpeg-made HLS, and `superpeer serve` seeding the channel as a `swarmcloud` seed.
//!
//! A lone viewer (nobody in the swarm but superpeer) must play without a stall, get at
//! least half its bytes over P2P, every one of them the origin's; a viewer whose token
//! differs from the seed's must not be served; with the main relay gone the backup
//! carries the signalling; and one master serves p2p-media-loader and SwarmCloud
//! viewers of two channels at once.
//!
//! Needs Chromium and ffmpeg (`just system-deps`) and the npm packages in
//! `tests/support` (`just node-deps`).

// Helpers panic on purpose: a broken fixture should fail the test that uses it.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::sync::Mutex;

use serde_json::{Value, json};
use superpeer::policy::EMBEDDED_SWARMCLOUD_POLICY;

#[path = "support/harness.rs"]
mod harness;

use harness::*;

/// Seconds each viewer plays.
const PLAY_SECONDS: u32 = 30;
/// hls.js's buffer for a VOD: the SDK's build sets 40 s, all of which a viewer fetches
/// over HTTP in its first second, before any peer is connected. A site with a super
/// peer buffers less, as the SDK's build does for live streams.
const VOD_BUFFER_SECONDS: u32 = 12;

/// Chromium, ffmpeg and superpeer share two cores: one stream at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// An origin, a tracker and relays, and a master that knows the tracker as zone `lab`.
/// Fields drop in order: the helpers stop before their directory goes.
struct World {
    origin: HlsOrigin,
    tracker: SwarmCloudService,
    relays: Vec<SwarmCloudService>,
    /// The relays' URLs, as the seed and the viewers are configured with them.
    relay_urls: Vec<String>,
    master: Superpeer,
    dir: TempDir,
}

impl World {
    fn start(test: &str, kind: &str, relays: usize) -> World {
        let dir = data_dir(test);
        let origin = HlsOrigin::start(&dir.join("media"), kind);
        let tracker = SwarmCloudService::tracker();
        let relays: Vec<SwarmCloudService> =
            (0..relays).map(|_| SwarmCloudService::signal()).collect();
        // The tracker is on this machine: an internal address fetches may reach only
        // when the operator allows it.
        let env = format!("originAllow=127.0.0.1\ntrackerZones=lab={}\n", tracker.url);
        std::fs::write(dir.join(ENV_FILE), env).unwrap();
        let master = Superpeer::start(&dir);
        let relay_urls = relays.iter().map(|r| r.url.clone()).collect();
        World { origin, tracker, relays, relay_urls, master, dir }
    }

    /// The channel as the viewers' SDK names it: with the relay when they use one.
    fn channel(&self) -> String {
        let single = (self.relay_urls.len() == 1).then(|| self.relay_urls[0].as_str());
        swarmcloud_channel(&self.origin.manifest, single)
    }

    /// Seeds the channel for SwarmCloud viewers and waits until the worker is on every
    /// relay with segments cached, as an operator seeds ahead of the audience.
    fn seed(&self, token: &str, live: bool) {
        let mut item = json!({
            "channel": self.channel(), "protocol": "swarmcloud", "trackerZone": "lab",
            "url": self.origin.manifest, "keepAlive": true, "live": live, "token": token,
            "signal1": self.relay_urls[0],
        });
        if let Some(backup) = self.relay_urls.get(1) {
            item["signal2"] = json!(backup);
        }
        self.master.ok("POST", "/seed", json!({"list": [item]}));
        let relays = self.relay_urls.len();
        self.master.wait_for("the worker on its relays with segments", |stats| {
            stats["workers"].as_object().unwrap().values().any(|w| {
                w["protocol"] == "swarmcloud"
                    && w["trackers"] == relays
                    && w["segments"].as_u64() >= Some(3)
                    && w["state"] == "running"
            })
        });
    }

    /// The viewer page for this world's stream.
    fn page(&self, token: Option<&str>, live: bool) -> String {
        let mut page = format!(
            "{}/swarmcloud.html?manifest={}&announce={}&signal={}&live={live}",
            self.origin.url,
            percent_encode(&self.origin.manifest),
            percent_encode(&self.tracker.url),
            percent_encode(&self.relay_urls[0]),
        );
        if let Some(backup) = self.relay_urls.get(1) {
            page.push_str(&format!("&backup={}", percent_encode(backup)));
        }
        if let Some(token) = token {
            page.push_str(&format!("&token={token}"));
        }
        page.push_str(&if live {
            format!("&liveSync={LIVE_SYNC_SEGMENTS}")
        } else {
            format!("&buffer={VOD_BUFFER_SECONDS}")
        });
        page
    }

    /// Bytes superpeer's workers sent viewers.
    fn uploaded(&self) -> u64 {
        uploaded_by_workers(&self.master.stats())
    }

    /// What the tracker logged of `kind` ("announce", "peers", ...).
    fn tracker_events(&self, kind: &str) -> Vec<Value> {
        self.tracker
            .service
            .lines
            .lock()
            .unwrap()
            .iter()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .filter(|event| event["event"] == kind)
            .collect()
    }

    /// The announces the tracker took: of viewers, or of super peers.
    fn announces(&self, of_super_peers: bool) -> Vec<Value> {
        let announces = self.tracker_events("announce");
        announces.into_iter().filter(|event| event["super"] == of_super_peers).collect()
    }

    /// The channels viewers announced to the tracker.
    fn announced_channels(&self) -> Vec<String> {
        self.announces(false).iter().map(|e| e["channel"].as_str().unwrap().to_string()).collect()
    }
}

/// What a viewer saw, in a line: for assertion messages.
fn brief(viewer: &Value) -> String {
    let keys = ["failed", "timedOut", "playedSeconds", "stalls", "errors", "p2pBytes", "httpBytes"];
    let head: serde_json::Map<String, Value> =
        keys.iter().map(|k| (k.to_string(), viewer[*k].clone())).collect();
    format!(
        "{} console {} segments: {}",
        Value::Object(head),
        viewer["console"],
        loaded_sources(viewer)
    )
}

/// The viewer played without trouble and got at least half its bytes over P2P, each
/// the origin's; returns its P2P bytes.
fn assert_served(viewer: &Value, media: &Path, origin: &str) -> u64 {
    let brief = assert_played_the_origins_bytes(viewer, media, origin);
    let p2p = viewer["p2pBytes"].as_u64().unwrap();
    let http = viewer["httpBytes"].as_u64().unwrap();
    assert!(2 * p2p >= p2p + http, "less than half the bytes came over P2P: {brief}");
    p2p
}

/// The viewer played without trouble and, from the first segment superpeer served it,
/// got every later one over P2P, each the origin's. What it loads over HTTP before
/// that depends on how long its SDK takes to give up on a dead relay, not on
/// superpeer.
fn assert_served_once_reached(viewer: &Value, media: &Path, origin: &str) {
    let brief = assert_played_the_origins_bytes(viewer, media, origin);
    let sources: Vec<&str> = viewer["loaded"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["source"].as_str().unwrap_or("?"))
        .collect();
    let Some(reached) = sources.iter().position(|s| *s == "p2p") else {
        panic!("never reached over P2P: {brief}");
    };
    assert!(sources[reached..].iter().all(|s| *s == "p2p"), "HTTP after P2P: {brief}");
    assert!(sources.len() - reached >= 3, "reached too late to tell: {brief}");
}

/// The viewer played without trouble, and each segment it got over P2P was the
/// origin's; returns what to say about it.
fn assert_played_the_origins_bytes(viewer: &Value, media: &Path, origin: &str) -> String {
    let brief = brief(viewer);
    eprintln!("{brief}");
    assert_eq!(viewer["failed"], Value::Null, "{brief}");
    assert_eq!(viewer["timedOut"], false, "{brief}");
    assert_eq!(viewer["stalls"], 0, "the picture stopped: {brief}");
    let p2p_fragments =
        viewer["loaded"].as_array().unwrap().iter().filter(|s| s["source"] == "p2p").count();
    assert_eq!(viewer["p2pHashes"].as_object().unwrap().len(), p2p_fragments, "{brief}");
    let checked = assert_all_from_origin(&json!({"viewers": [viewer]}), media, origin);
    assert_eq!(checked, p2p_fragments);
    brief
}

#[test]
fn one_master_serves_swarmcloud_viewers_of_a_live_stream_and_pml_viewers_of_a_vod() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let world = World::start("swarmcloud-mixed", "live", 1);
    world.seed("tk", true);
    // A p2p-media-loader channel on the same master, through a WebTorrent tracker.
    let vod = HlsOrigin::start(&world.dir.join("vod-media"), "vod");
    let webtorrent = Tracker::start();
    world.master.ok(
        "POST",
        "/seed",
        json!({"list": [{"channel": vod.channel(), "keepAlive": true, "signal1": webtorrent.url}]}),
    );
    world.master.wait_for("the p2p-media-loader worker with segments", |stats| {
        stats["workers"].as_object().unwrap().values().any(|w| {
            w["protocol"] == "pml" && w["trackers"] == 1 && w["segments"].as_u64() >= Some(1)
        })
    });

    // While the SwarmCloud viewer is being served, a new SwarmCloud policy is uploaded:
    // its worker swaps, the viewer goes on, the other protocol's worker is not asked.
    let page = world.page(Some("tk"), true);
    let watching = std::thread::spawn(move || watch(&page, 1, PLAY_SECONDS).remove(0));
    let serving =
        |stats: &Value| {
            stats["workers"].as_object().unwrap().values().any(|w| {
                w["protocol"] == "swarmcloud" && w["uploaded"].as_u64().is_some_and(|n| n > 0)
            })
        };
    world.master.wait_for("the SwarmCloud viewer served", serving);
    for bad in ["/policy?protocol=webtorrent", "/policy?protocol=pml&channel=YQ"] {
        let (status, body) = world.master.request("POST", bad, EMBEDDED_SWARMCLOUD_POLICY);
        assert_eq!(status, 400, "{bad}: {body}");
    }
    let (status, body) =
        world.master.request("POST", "/policy?protocol=swarmcloud", EMBEDDED_SWARMCLOUD_POLICY);
    assert_eq!((status, body["workers"].clone()), (200, json!(1)), "{body}");
    world.master.wait_for("the SwarmCloud worker swapped", |stats| {
        stats["workers"]
            .as_object()
            .unwrap()
            .values()
            .any(|w| w["protocol"] == "swarmcloud" && w["policyStats"]["swaps"] == 1)
    });
    let viewer = &watching.join().unwrap();
    let p2p = assert_served(viewer, &world.dir.join("media"), &world.origin.url);
    assert_eq!(world.announced_channels(), [world.channel()], "the channel, as the SDK names it");

    let pml_page = format!(
        "{}/player.html?manifest={}&trackers={}&highDemand=4",
        vod.url,
        percent_encode(&vod.manifest),
        percent_encode(&webtorrent.url)
    );
    let pml_viewer = &watch(&pml_page, 1, 20)[0];
    let pml_p2p = pml_viewer["p2pBytes"].as_u64().unwrap();
    let pml_http = pml_viewer["httpBytes"].as_u64().unwrap();
    assert!(2 * pml_p2p >= pml_p2p + pml_http, "{}", brief(pml_viewer));
    assert_all_from_origin(
        &json!({"viewers": [pml_viewer]}),
        &world.dir.join("vod-media"),
        &vod.url,
    );

    // Each protocol's worker is shown as such, and counted what its viewer got (in its
    // next report: workers report once a second).
    let uploaded = |stats: &Value, protocol: &str| {
        let workers = stats["workers"].as_object().unwrap();
        let worker = workers.values().find(|w| w["protocol"] == protocol);
        worker.and_then(|w| w["uploaded"].as_u64()).unwrap_or(0)
    };
    let stats = world.master.wait_for("each viewer's P2P bytes counted as uploaded", |stats| {
        uploaded(stats, "swarmcloud") >= p2p && uploaded(stats, "pml") >= pml_p2p
    });
    let workers: Vec<&Value> = stats["workers"].as_object().unwrap().values().collect();
    for protocol in ["pml", "swarmcloud"] {
        assert_eq!(stats["master"]["policies"][protocol]["name"], protocol, "{stats:#}");
    }
    let swaps = |protocol: &str| {
        workers.iter().find(|w| w["protocol"] == protocol).unwrap()["policyStats"]["swaps"].clone()
    };
    assert_eq!((swaps("swarmcloud"), swaps("pml")), (json!(1), json!(0)), "{stats:#}");
    let (_, policy) = world.master.request("GET", "/policy", b"");
    assert_eq!(policy["protocols"]["swarmcloud"]["previous"]["name"], "swarmcloud", "{policy:#}");
    assert_eq!(policy["protocols"]["pml"]["previous"], Value::Null, "{policy:#}");
    world.master.stop();
}

#[test]
fn a_lone_swarmcloud_viewer_of_a_vod_gets_most_of_it_from_superpeer() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let world = World::start("swarmcloud-vod", "vod", 1);
    world.seed("", false);
    let viewer = &watch(&world.page(None, false), 1, PLAY_SECONDS)[0];
    let p2p = assert_served(viewer, &world.dir.join("media"), &world.origin.url);
    // In the worker's next report: workers report once a second.
    world.master.wait_for(&format!("the viewer's {p2p} P2P bytes counted as uploaded"), |stats| {
        uploaded_by_workers(stats) >= p2p
    });
    world.master.stop();
}

#[test]
fn a_viewer_whose_token_differs_from_the_seeds_is_not_served() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let world = World::start("swarmcloud-token", "vod", 1);
    world.seed("the-operators", false);
    let viewer = &watch(&world.page(Some("another-sites"), false), 1, 15)[0];
    let brief = brief(viewer);
    assert_eq!(viewer["failed"], Value::Null, "{brief}");
    assert!(viewer["playedSeconds"].as_f64().unwrap() >= 15.0, "{brief}");
    assert_eq!(viewer["p2pBytes"], 0, "a super peer of another token was used: {brief}");
    assert_eq!(world.uploaded(), 0);
    world.master.stop();
}

#[test]
fn with_the_main_signal_relay_gone_viewers_are_reached_through_the_backup_and_back() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let mut world = World::start("swarmcloud-backup", "vod", 2);
    world.seed("", false);
    let relays_up = |world: &World, count: u64, what: &str| {
        world.master.wait_for(what, |stats| {
            stats["workers"].as_object().unwrap().values().any(|w| w["trackers"] == count)
        });
    };
    // The main relay dies after superpeer connected to it, before the viewer comes.
    let main = world.relays.remove(0);
    let main_port = main.service.port;
    signal("KILL", main.service.child.id());
    drop(main);
    relays_up(&world, 1, "the worker down to the backup relay");
    // The viewer is configured with both, as the site was.
    let page = world.page(None, false);
    let viewer = &watch(&page, 1, 20)[0];
    assert_served_once_reached(viewer, &world.dir.join("media"), &world.origin.url);

    // The main relay comes back where it was, and the backup dies: the next viewer is
    // reached through the main one again.
    world.relays.insert(0, SwarmCloudService::signal_on(main_port));
    relays_up(&world, 2, "the worker back on the main relay");
    let backup = world.relays.remove(1);
    signal("KILL", backup.service.child.id());
    drop(backup);
    relays_up(&world, 1, "the worker down to the main relay");
    let viewer = &watch(&page, 1, 20)[0];
    assert_served_once_reached(viewer, &world.dir.join("media"), &world.origin.url);
    world.master.stop();
}

#[test]
fn viewers_who_were_in_the_swarm_first_are_reached_and_served() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    const VIEWERS: usize = 6;
    let world = World::start("swarmcloud-first", "vod", 1);
    // The viewers come first and find only each other.
    let page = world.page(None, false);
    let watching = std::thread::spawn(move || watch(&page, VIEWERS, 45));
    // The SDK asks the tracker for peers when it announces and once more when it meets
    // its first peers; after that it asks its peers, who never name a super peer.
    let asked = |world: &World| {
        let askers: std::collections::BTreeSet<String> =
            world.tracker_events("peers").iter().map(|e| e["peer_id"].to_string()).collect();
        askers.len()
    };
    let deadline = std::time::Instant::now() + PATIENCE;
    while world.announces(false).len() < VIEWERS || asked(&world) < VIEWERS {
        assert!(std::time::Instant::now() < deadline, "the viewers did not all ask for peers");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // Then superpeer is seeded: it must find them itself.
    world.seed("", false);
    world.master.wait_for("superpeer connected to every viewer", |stats| {
        stats["workers"].as_object().unwrap().values().any(|w| w["peers"] == VIEWERS)
    });
    let viewers = watching.join().unwrap();
    let superpeer = world.announces(true)[0]["peer_id"].as_str().unwrap().to_string();
    let briefs: Vec<String> = viewers.iter().map(brief).collect();
    // Every viewer had superpeer among its peers, as its SDK reported them. Who serves
    // what among peers is the viewers' scheduling (here a viewer fetching the whole VOD
    // before the others came is common), so only that superpeer served bytes is asked.
    for viewer in &viewers {
        let peers: Vec<&str> =
            viewer["everConnected"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
        assert!(peers.contains(&superpeer.as_str()), "{peers:?}: {}", brief(viewer));
    }
    assert!(world.uploaded() > 0, "superpeer served none of them: {briefs:#?}");
    assert_all_from_origin(
        &json!({ "viewers": viewers }),
        &world.dir.join("media"),
        &world.origin.url,
    );
    for viewer in &viewers {
        assert_eq!(viewer["failed"], Value::Null, "{}", brief(viewer));
    }
    world.master.stop();
}
