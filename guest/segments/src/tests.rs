use superpeer_guest::{Command, SegmentInfo};

use super::*;

/// A policy's side of a test: its ids, timers and what came out.
struct Policy {
    ids: Ids,
    timers: Timers<StreamTimer>,
    out: Vec<Command>,
    changes: Vec<Change>,
    now_ms: u64,
}

impl Policy {
    fn new() -> Self {
        Policy { ids: Ids::new(), timers: Timers::new(), out: vec![], changes: vec![], now_ms: 0 }
    }

    fn lend(&mut self) -> Lend<'_, StreamTimer> {
        Lend {
            ids: &mut self.ids,
            timers: &mut self.timers,
            name: |t| t,
            now_ms: self.now_ms,
            out: &mut self.out,
            changes: &mut self.changes,
        }
    }

    fn texts(&mut self) -> Vec<(FetchId, String)> {
        self.out
            .drain(..)
            .filter_map(|c| match c {
                Command::FetchText(f) => Some((f.fetch, f.url)),
                _ => None,
            })
            .collect()
    }

    /// Fetches from the origin (not questions to the disk cache).
    fn segment_fetches(&self) -> Vec<(FetchId, String)> {
        self.out
            .iter()
            .filter_map(|c| match c {
                Command::FetchSegment(f) if f.tier != CacheTier::DiskIfCached => {
                    Some((f.fetch, f.url.clone()))
                }
                _ => None,
            })
            .collect()
    }

    /// Questions to the disk cache.
    fn probes(&self) -> Vec<(FetchId, String)> {
        self.out
            .iter()
            .filter_map(|c| match c {
                Command::FetchSegment(f) if f.tier == CacheTier::DiskIfCached => {
                    Some((f.fetch, f.url.clone()))
                }
                _ => None,
            })
            .collect()
    }

    /// Answers every question to the disk cache with "not there", until none is left.
    fn nothing_on_disk(&mut self, streams: &mut Streams) {
        loop {
            let probes = self.probes();
            if probes.is_empty() {
                return;
            }
            self.out.retain(
                |c| !matches!(c, Command::FetchSegment(f) if f.tier == CacheTier::DiskIfCached),
            );
            for (fetch, _) in probes {
                streams.on_failed(fetch, "not in the disk cache", &mut self.lend());
            }
        }
    }
}

use superpeer_hls::example_media as media;

fn held(changes: &[Change]) -> Vec<(usize, i64)> {
    changes
        .iter()
        .filter_map(|c| match c {
            Change::Held { level, sn } => Some((*level, *sn)),
            _ => None,
        })
        .collect()
}

const MASTER: &str = "#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=2000000\nhigh.m3u8\n#EXT-X-STREAM-INF:BANDWIDTH=500000\nlow.m3u8\n";

fn store(streams: &mut Streams, policy: &mut Policy, fetch: FetchId, handle: u64) {
    let segment = SegmentInfo {
        handle,
        url: String::new(),
        range: None,
        size: 1000,
        tier: CacheTier::Memory,
    };
    streams.on_stored(fetch, &segment, &mut policy.lend());
}

#[test]
fn levels_are_numbered_as_hls_js_numbers_them() {
    let mut policy = Policy::new();
    let mut streams = Streams::new(Some("http://o/m.m3u8".into()), Numbering::MediaSequence);
    streams.start(&mut policy.lend());
    let (fetch, url) = policy.texts().remove(0);
    streams.on_text(fetch, &url, MASTER, &mut policy.lend());
    let urls: Vec<String> = policy.texts().into_iter().map(|(_, url)| url).collect();
    assert_eq!(urls, ["http://o/low.m3u8", "http://o/high.m3u8"], "lowest bandwidth first");
    assert_eq!(streams.levels(), 2);
}

#[test]
fn a_live_window_follows_the_playlist_and_says_what_it_holds_and_drops() {
    let mut policy = Policy::new();
    let mut streams = Streams::new(Some("http://o/live.m3u8".into()), Numbering::MediaSequence);
    streams.start(&mut policy.lend());
    let (fetch, url) = policy.texts().remove(0);
    streams.on_text(fetch, &url, &media(100, 20, false), &mut policy.lend());
    let fetches = policy.segment_fetches();
    assert_eq!(fetches.len(), LIVE_WINDOW, "the newest {LIVE_WINDOW}");
    assert_eq!(fetches[0].1, "http://o/seg108.ts");
    for (handle, (fetch, _)) in fetches.iter().enumerate() {
        store(&mut streams, &mut policy, *fetch, handle as u64 + 1);
    }
    assert_eq!(held(&policy.changes).len(), LIVE_WINDOW);
    assert_eq!(streams.get(0, 119).map(|h| h.size), Some(1000));
    assert!(policy.timers.pending(&StreamTimer::Reload(0)), "live playlists are reloaded");

    // Two new segments: the two oldest go.
    policy.out.clear();
    policy.changes.clear();
    streams.on_timer(StreamTimer::Reload(0), &mut policy.lend());
    let (fetch, url) = policy.texts().remove(0);
    streams.on_text(fetch, &url, &media(102, 20, false), &mut policy.lend());
    assert_eq!(
        policy.changes,
        [
            Change::Dropped { level: 0, sn: 108 },
            Change::Dropped { level: 0, sn: 109 },
            Change::Loading { level: 0, sn: 120 },
            Change::Loading { level: 0, sn: 121 },
        ]
    );
    assert_eq!(policy.out.iter().filter(|c| matches!(c, Command::Evict(_))).count(), 2);
    assert_eq!(policy.segment_fetches().len(), 2, "the two new ones");
}

#[test]
fn a_vod_starts_held_and_grows_where_viewers_ask_one_fetch_per_ask() {
    let mut policy = Policy::new();
    let mut streams = Streams::new(Some("http://o/vod.m3u8".into()), Numbering::MediaSequence);
    streams.start(&mut policy.lend());
    let (fetch, url) = policy.texts().remove(0);
    streams.on_text(fetch, &url, &media(0, 100, true), &mut policy.lend());
    assert_eq!(policy.segment_fetches().len(), VOD_PREFETCH);
    assert!(!policy.timers.pending(&StreamTimer::Reload(0)), "a VOD is read once");
    policy.nothing_on_disk(&mut streams);
    policy.out.clear();
    streams.demand(0, 50, &mut policy.lend());
    assert_eq!(policy.segment_fetches().len(), 1, "one fetch per ask");
    assert_eq!(policy.segment_fetches()[0].1, "http://o/seg50.ts");
    streams.demand(0, 50, &mut policy.lend());
    assert_eq!(policy.segment_fetches()[1].1, "http://o/seg51.ts");
    policy.out.clear();
    streams.demand(0, 5000, &mut policy.lend());
    assert!(policy.out.is_empty(), "what the playlist does not list is not fetched");
}

#[test]
fn a_failed_segment_waits_longer_after_each_failure() {
    let mut policy = Policy::new();
    let mut streams = Streams::new(Some("http://o/live.m3u8".into()), Numbering::MediaSequence);
    streams.start(&mut policy.lend());
    let (fetch, url) = policy.texts().remove(0);
    let playlist = media(0, 1, false);
    streams.on_text(fetch, &url, &playlist, &mut policy.lend());
    for wait in [1_000, 2_000, 4_000] {
        let (fetch, _) = policy.segment_fetches()[0].clone();
        policy.out.clear();
        streams.on_failed(fetch, "status 503", &mut policy.lend());
        // A reload before the wait is over does not fetch it.
        streams.on_timer(StreamTimer::Reload(0), &mut policy.lend());
        let (reload, url) = policy.texts().remove(0);
        streams.on_text(reload, &url, &playlist, &mut policy.lend());
        assert!(policy.segment_fetches().is_empty(), "fetched again before {wait} ms");
        policy.now_ms += wait;
        policy.out.clear();
        streams.on_timer(StreamTimer::Reload(0), &mut policy.lend());
        let (reload, url) = policy.texts().remove(0);
        streams.on_text(reload, &url, &playlist, &mut policy.lend());
        assert_eq!(policy.segment_fetches().len(), 1, "fetched again after {wait} ms");
    }
}

#[test]
fn a_new_instance_forgets_what_the_host_lost_and_drops_what_nobody_claims() {
    let mut policy = Policy::new();
    let mut streams = Streams::new(Some("http://o/live.m3u8".into()), Numbering::MediaSequence);
    streams.start(&mut policy.lend());
    let (fetch, url) = policy.texts().remove(0);
    streams.on_text(fetch, &url, &media(0, 3, false), &mut policy.lend());
    let fetches = policy.segment_fetches();
    store(&mut streams, &mut policy, fetches[0].0, 7);
    let state = HostState {
        trackers: vec![],
        peers: vec![],
        // The second fetch is still on its way; the third was lost.
        fetches: vec![fetches[1].0],
        requests: vec![],
        segments: [7, 99]
            .map(|handle| SegmentInfo {
                handle,
                url: String::new(),
                range: None,
                size: 1,
                tier: CacheTier::Memory,
            })
            .to_vec(),
        timers: vec![],
    };
    policy.out.clear();
    streams.resume(&state, &mut policy.lend());
    assert_eq!(streams.get(0, 0).map(|h| h.handle), Some(7));
    assert!(policy.out.contains(&Command::Evict(99)), "{:?}", policy.out);
    assert!(!policy.out.contains(&Command::Evict(7)));
    assert_eq!(policy.texts().len(), 1, "the playlist is read again");
}

#[test]
fn a_vod_is_numbered_by_position_where_viewers_number_it_so() {
    let mut policy = Policy::new();
    let mut streams = Streams::new(None, Numbering::VodPosition);
    let level = streams.add_level("http://o/vod.m3u8".into(), &mut policy.lend());
    let (fetch, url) = policy.texts().remove(0);
    streams.on_text(fetch, &url, &media(500, 20, true), &mut policy.lend());
    let (first, url) = policy.segment_fetches()[0].clone();
    assert_eq!(url, "http://o/seg500.ts");
    store(&mut streams, &mut policy, first, 1);
    assert_eq!(streams.get(level, 0).map(|h| h.handle), Some(1), "the first listed is 0");
    // A live playlist keeps its media sequence numbers.
    let mut policy = Policy::new();
    let mut streams = Streams::new(None, Numbering::VodPosition);
    streams.add_level("http://o/live.m3u8".into(), &mut policy.lend());
    let (fetch, url) = policy.texts().remove(0);
    streams.on_text(fetch, &url, &media(500, 3, false), &mut policy.lend());
    let fetches = policy.segment_fetches();
    store(&mut streams, &mut policy, fetches[0].0, 1);
    assert!(streams.get(0, 500).is_some());
}

#[test]
fn a_new_instance_from_a_snapshot_takes_back_what_the_host_holds_by_where_it_came_from() {
    use superpeer_guest::continuity::{decode_snapshot, encode_snapshot};
    let mut policy = Policy::new();
    let mut streams = Streams::new(Some("http://o/vod.m3u8".into()), Numbering::VodPosition);
    streams.start(&mut policy.lend());
    let (fetch, url) = policy.texts().remove(0);
    streams.on_text(fetch, &url, &media(0, 200, true), &mut policy.lend());
    let fetches = policy.segment_fetches();
    for (handle, (fetch, _)) in fetches.iter().enumerate().take(3) {
        store(&mut streams, &mut policy, *fetch, handle as u64 + 1);
    }
    let saved = encode_snapshot(b"test-st1", &streams);
    let mut streams: Streams = decode_snapshot(b"test-st1", &saved).unwrap();
    // The host holds the three, and two more nobody asked this instance for: one the
    // playlist lists (an earlier instance fetched it), one it does not.
    let segment = |handle: u64, name: &str| SegmentInfo {
        handle,
        url: format!("http://o/{name}"),
        range: None,
        size: 1000,
        tier: CacheTier::Disk,
    };
    let state = HostState {
        trackers: vec![],
        peers: vec![],
        fetches: vec![],
        requests: vec![],
        segments: vec![
            segment(1, "seg0.ts"),
            segment(2, "seg1.ts"),
            segment(3, "seg2.ts"),
            segment(40, "seg20.ts"),
            segment(41, "gone.ts"),
        ],
        timers: vec![],
    };
    policy.out.clear();
    policy.changes.clear();
    streams.resume(&state, &mut policy.lend());
    assert!(!policy.out.iter().any(|c| matches!(c, Command::Evict(_))), "kept until read");
    let (fetch, url) = policy.texts().remove(0);
    policy.out.clear();
    streams.on_text(fetch, &url, &media(0, 200, true), &mut policy.lend());
    assert_eq!(streams.get(0, 20).map(|h| h.handle), Some(40), "taken by where it came from");
    assert_eq!(streams.get(0, 1).map(|h| h.handle), Some(2), "the snapshot's own kept");
    assert!(held(&policy.changes).contains(&(0, 20)), "viewers hear of it");
    assert!(policy.out.contains(&Command::Evict(41)), "what no playlist lists goes");
    assert!(
        !policy.segment_fetches().iter().any(|(_, url)| url.ends_with("seg1.ts")),
        "nothing held is fetched again"
    );
    // The questions to the disk cache the earlier instance asked went unanswered: asked
    // again, from the first, but for what is held.
    let asked: Vec<String> = policy.probes().into_iter().map(|(_, url)| url).collect();
    assert_eq!(asked.first().map(String::as_str), Some("http://o/seg10.ts"), "{asked:?}");
    assert!(!asked.iter().any(|url| url.ends_with("seg20.ts")), "{asked:?}");
}

#[test]
fn a_vods_segments_in_the_disk_cache_are_asked_about_in_batches_and_held_without_the_origin() {
    let mut policy = Policy::new();
    let mut streams = Streams::new(Some("http://o/vod.m3u8".into()), Numbering::MediaSequence);
    streams.start(&mut policy.lend());
    let (fetch, url) = policy.texts().remove(0);
    streams.on_text(fetch, &url, &media(0, 200, true), &mut policy.lend());
    let mut asked = 0;
    let mut rounds = 0;
    loop {
        let batch = policy.probes();
        if batch.is_empty() {
            break;
        }
        rounds += 1;
        asked += batch.len();
        policy.out.clear();
        for (n, (fetch, _)) in batch.iter().enumerate() {
            // Every other one is on disk.
            if n % 2 == 0 {
                let segment = SegmentInfo {
                    handle: 1000 + fetch,
                    url: String::new(),
                    range: None,
                    size: 10,
                    tier: CacheTier::Disk,
                };
                streams.on_stored(*fetch, &segment, &mut policy.lend());
            } else {
                streams.on_failed(*fetch, "not in the disk cache", &mut policy.lend());
            }
        }
    }
    assert_eq!(asked, 200 - VOD_PREFETCH, "each segment not on its way asked about once");
    assert!(rounds > 1, "in batches");
    assert!(held(&policy.changes).len() >= 95, "{} held", held(&policy.changes).len());
    assert!(policy.segment_fetches().is_empty(), "nobody asked: nothing from the origin");
}
