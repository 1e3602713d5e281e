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
//! Needs Chromium and ffmpeg (`just system-deps`) and the npm packages in
//! `tests/support` (`just node-deps`).

// Helpers panic on purpose: a broken fixture should fail the test that uses it.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};

#[path = "support/harness.rs"]
mod harness;

use harness::*;

/// A long VOD of small segments: the viewers are still loading while the test runs.
const MEDIA: &[&str] = &["--seconds", "600", "--size", "160x90", "--video-bitrate", "100k"];

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

/// The pid and stats of the worker seeding `swarm_id`, once it runs.
fn worker_of(stats: &Value, swarm_id: &str) -> Option<Value> {
    let id = channel(swarm_id);
    stats["workers"].as_object()?.values().find(|w| w["channelId"] == id.as_str()).cloned()
}

#[test]
fn busy_candidates_are_seeded_by_themselves_and_an_emptied_one_is_given_back() {
    let dir = data_dir("autoseed");
    let media = dir.join("media");
    let origin = HlsOrigin::start_with(&media, "vod", MEDIA);
    let tracker = Tracker::start();
    let items: Vec<Value> = ["busy", "warm", "empty"]
        .iter()
        .map(|id| {
            json!({"channel": channel(id), "url": origin.manifest, "signal1": tracker.url, "label": id})
        })
        .collect();
    let list = json!({ "list": items });
    std::fs::write(media.join("candidates.json"), list.to_string()).unwrap();
    std::fs::write(
        dir.join(ENV_FILE),
        format!(
            "candidatesUrl={}/candidates.json\nautoSeedViewers=2\nautoSeedGraceSeconds=3\n\
             scoutIntervalSeconds=2\nmaxSeeds=2\n",
            origin.url
        ),
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

    // The automatic seeds are real: their workers reach the viewers already there.
    let stats = master.wait_for("both automatic seeds connected to viewers", |stats| {
        ["busy", "warm"]
            .iter()
            .all(|id| worker_of(stats, id).is_some_and(|w| w["peers"].as_u64() >= Some(1)))
    });
    assert!(worker_of(&stats, "empty").is_none(), "{stats:#}");

    // The busy channel empties: its seed is given back after the grace; the warm one
    // stays, and the empty one was never seeded.
    drop(busy.finish());
    let emptied = Instant::now();
    let view = master.wait_for_path("the emptied seed given back", "/candidates", |v| {
        candidate(v, "busy")["seeded"].is_null()
    });
    eprintln!(
        "the busy channel's seed was given back {:?} after its viewers left",
        emptied.elapsed()
    );
    assert_eq!(candidate(&view, "warm")["seeded"], "auto", "{view:#}");
    assert_eq!(candidate(&view, "empty")["seeded"], Value::Null, "{view:#}");
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
