//! The disk cache with real processes: `superpeer serve` seeding an ffmpeg-made VOD stream
//! whose worker is killed with SIGKILL while it writes segments, then restarted.
//! Whatever moment the kill lands on, nothing damaged may stay where it could be
//! served, and a restarted worker must take what is cached from disk, not the origin.

// Helpers panic on purpose: a broken fixture should fail the test that uses it.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use superpeer::dataplane::disk::{self, DiskCache, DiskCacheConfig};

#[path = "support/harness.rs"]
mod harness;

use harness::*;

/// The default policy fetches this many VOD segments ahead.
const PREFETCHED: u64 = 10;

fn files_ending(dir: &Path, suffix: &str) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|name| name.ends_with(suffix))
                .collect()
        })
        .unwrap_or_default()
}

/// The running worker that is none of `killed` (the master lists a killed worker until
/// it has noticed the exit).
fn running_worker(master: &Superpeer, killed: &[u32]) -> (u32, Value) {
    let fresh = |(pid, worker): (&String, &Value)| {
        let pid: u32 = pid.parse().ok()?;
        (worker["state"] == "running" && !killed.contains(&pid)).then(|| (pid, worker.clone()))
    };
    let stats = master.wait_for("a running worker", |s| {
        s["workers"].as_object().unwrap().iter().any(|w| fresh(w).is_some())
    });
    stats["workers"].as_object().unwrap().iter().find_map(fresh).unwrap()
}

fn segment_hits(origin: &str) -> BTreeMap<String, u64> {
    http_get_json(&format!("{origin}/hits.json"))
        .as_object()
        .unwrap()
        .iter()
        .filter(|(path, _)| path.ends_with(".ts"))
        .map(|(path, hits)| (path.clone(), hits.as_u64().unwrap()))
        .collect()
}

#[test]
fn kill_9_while_caching_leaves_nothing_damaged_and_a_restart_asks_the_origin_for_nothing() {
    let dir = data_dir("cache-kill");
    let media = dir.join("media");
    let origin = HlsOrigin::start(&media, "vod");
    let origin_url = origin.url.clone();
    let master = Superpeer::start(&dir);
    master.ok("POST", "/seed", json!({"list": [{"channel": origin.channel(), "keepAlive": true}]}));
    let cache_dir = dir.join("cache");

    // Kill the worker the moment it starts writing into the cache, three times over;
    // the master restarts it each time.
    let mut caught_writing = 0;
    let mut killed = Vec::new();
    for _ in 0..3 {
        let (pid, _) = running_worker(&master, &killed);
        let deadline = Instant::now() + PATIENCE;
        loop {
            let partial = !files_ending(&cache_dir, ".part").is_empty();
            let written = files_ending(&cache_dir, ".seg").len() as u64;
            if partial || written > 0 {
                signal("KILL", pid);
                caught_writing += usize::from(partial);
                break;
            }
            assert!(Instant::now() < deadline, "the worker never wrote to the cache");
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(exits(pid), "worker {pid} survived SIGKILL");
        killed.push(pid);
        if files_ending(&cache_dir, ".seg").len() as u64 == PREFETCHED {
            break;
        }
    }
    eprintln!("killed {caught_writing} time(s) with a segment file half-written");

    // A worker that is left alone caches what the policy prefetches.
    master.wait_for("every prefetched segment cached", |s| {
        s["workers"].as_object().unwrap().values().any(|w| {
            w["state"] == "running"
                && w["segments"].as_u64() == Some(PREFETCHED)
                && w["diskCacheSize"].as_u64() > Some(0)
        })
    });
    assert!(files_ending(&cache_dir, ".part").is_empty(), "half-written files remain");
    assert!(files_ending(&cache_dir, ".lock").is_empty(), "lock files outlive their use");
    // Every file in the cache is one of the segments and holds exactly the origin's bytes.
    let cache =
        DiskCache::open(&DiskCacheConfig { dir: cache_dir.clone(), max_bytes: 1 << 40 }).unwrap();
    let segments: BTreeMap<String, Vec<u8>> = (0..PREFETCHED)
        .map(|n| {
            let url = format!("{origin_url}/vod/seg{n:05}.ts");
            let bytes = std::fs::read(media.join(format!("vod/seg{n:05}.ts"))).unwrap();
            (disk::key(&url, None), bytes)
        })
        .collect();
    let cached = files_ending(&cache_dir, ".seg");
    assert_eq!(cached.len() as u64, PREFETCHED, "{cached:?}");
    for name in cached {
        let key = name.trim_end_matches(".seg");
        let expected = segments.get(key).unwrap_or_else(|| panic!("{name} is no segment of ours"));
        assert_eq!(cache.read(key).as_deref(), Some(&expected[..]), "{name} is damaged");
    }

    // A restart takes them all from disk: the origin sees no segment request.
    let before = segment_hits(&origin_url);
    let (pid, _) = running_worker(&master, &killed);
    signal("KILL", pid);
    assert!(exits(pid));
    killed.push(pid);
    master.wait_for("the restarted worker holding every segment again", |s| {
        s["workers"].as_object().unwrap().iter().any(|(p, w)| {
            p.parse().is_ok_and(|p: u32| !killed.contains(&p))
                && w["state"] == "running"
                && w["segments"].as_u64() == Some(PREFETCHED)
        })
    });
    assert_eq!(segment_hits(&origin_url), before, "the restarted worker asked the origin");
    master.stop();
}

#[test]
fn a_no_use_disk_cache_seed_keeps_its_segments_in_memory() {
    let dir = data_dir("cache-memory");
    let origin = HlsOrigin::start(&dir.join("media"), "vod");
    let master = Superpeer::start(&dir);
    let seed =
        json!({"list": [{"channel": origin.channel(), "keepAlive": true, "noUseDiskCache": true}]});
    master.ok("POST", "/seed", seed);
    let stats = master.wait_for("the prefetched segments held", |s| {
        s["workers"]
            .as_object()
            .unwrap()
            .values()
            .any(|w| w["segments"].as_u64() == Some(PREFETCHED))
    });
    let (_, worker) = running_worker(&master, &[]);
    assert_eq!(worker["diskCacheSize"], 0, "{stats}");
    assert!(worker["memoryCacheSize"].as_u64() > Some(0));
    assert!(files_ending(&dir.join("cache"), ".seg").is_empty());
    master.stop();
}

#[test]
fn two_workers_of_one_channel_share_the_cache_and_fetch_each_segment_once() {
    let dir = data_dir("cache-shared");
    let origin = HlsOrigin::start(&dir.join("media"), "vod");
    let origin_url = origin.url.clone();
    let channel = origin.channel();
    // Two masters (each with its own seed list) on one machine, one cache directory: a
    // worker of each seeds the channel, started at the same moment.
    let shared = dir.join("shared-cache");
    let masters: Vec<Superpeer> = ["a", "b"]
        .iter()
        .map(|name| {
            let own = dir.join(name);
            std::fs::create_dir_all(&own).unwrap();
            Superpeer::start_with(&own, &["--cache-dir", shared.to_str().unwrap()])
        })
        .collect();
    let seed = json!({"list": [{"channel": channel, "keepAlive": true}]});
    std::thread::scope(|scope| {
        for master in &masters {
            let seed = seed.clone();
            scope.spawn(move || master.ok("POST", "/seed", seed));
        }
    });
    for master in &masters {
        master.wait_for("the prefetched segments held", |s| {
            s["workers"]
                .as_object()
                .unwrap()
                .values()
                .any(|w| w["state"] == "running" && w["segments"].as_u64() == Some(PREFETCHED))
        });
    }
    let hits = segment_hits(&origin_url);
    assert_eq!(hits.len() as u64, PREFETCHED, "{hits:?}");
    assert!(hits.values().all(|&n| n == 1), "a segment was fetched twice: {hits:?}");
    for master in masters {
        master.stop();
    }
}
