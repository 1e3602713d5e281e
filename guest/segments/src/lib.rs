//! Which segments a seeder holds, whatever protocol its viewers speak: a stream's
//! manifest read into levels (its renditions, numbered as hls.js numbers them), each
//! level's playlist reloaded while it is live, the newest segments of a live window
//! kept, the start of a VOD fetched ahead and the rest fetched where viewers ask, each
//! fetch started once and retried with back-off when the origin fails it.
//!
//! Pure: it returns commands and reports what became held or dropped as [`Change`]s; the
//! policy owns its timers' names (it wraps [`StreamTimer`]). It must never speak to a
//! viewer or know a protocol's segment ids: levels and media sequence numbers are all
//! it names segments by.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use superpeer_guest::{
    ByteRange, CacheTier, Command, FetchId, FetchSegment, FetchText, HostState, Ids, SegmentHandle,
    SegmentInfo, Timers,
};
use superpeer_hls as playlist;

/// Live segments kept: the playlist's newest, at most this many.
pub const LIVE_WINDOW: usize = 12;
/// VOD segments fetched ahead: from the start, and from where a viewer asks.
pub const VOD_PREFETCH: usize = 10;
/// Most VOD segments held in memory (the disk cache, capped by the host, keeps more).
pub const VOD_HELD: usize = 64;
/// The shortest wait between reloads of a live playlist, however short its segments.
pub const MIN_RELOAD_MS: u64 = 250;
/// Wait before fetching a manifest or playlist again after a failure.
pub const RETRY_MS: u64 = 2_000;
/// A segment whose fetch failed waits this long before it is fetched again, doubled
/// after each further failure up to [`SEGMENT_RETRY_MAX_MS`].
const SEGMENT_RETRY_MS: u64 = 1_000;
const SEGMENT_RETRY_MAX_MS: u64 = 30_000;

/// When to reload a live playlist. Viewers play a few segments behind the live edge and
/// fetch over HTTP what is about to play, so a new segment is worth something to them
/// only if superpeer has it within moments of its appearing. Reloading once per target
/// duration would lock onto a phase: if that phase is just before the origin adds
/// segments, every segment is seen a whole target duration late. So after a reload that
/// found a new segment the next comes a little before the following one is due, and
/// without one, reloads come every quarter of the target duration until it appears.
/// That sees each segment within a quarter target duration, for about two requests per
/// segment.
pub fn live_reload_ms(target_duration_ms: u64, grew: bool) -> u64 {
    let quarter = (target_duration_ms / 4).max(MIN_RELOAD_MS);
    if grew { target_duration_ms.saturating_sub(quarter).max(MIN_RELOAD_MS) } else { quarter }
}

/// The timers this part of a policy needs; the policy names them as its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum StreamTimer {
    /// Fetch the manifest again after a failure.
    Manifest,
    /// Reload a level's playlist.
    Reload(usize),
}

/// What became held or was dropped: what a policy tells its viewers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Held { level: usize, sn: i64 },
    Dropped { level: usize, sn: i64 },
}

/// A segment held, as a policy serves it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    pub handle: SegmentHandle,
    pub size: u64,
}

/// What the policy lends this part for one call: its ids and its timers, and how it
/// names a [`StreamTimer`].
#[derive(Debug)]
pub struct Lend<'a, K: Ord + Clone> {
    pub ids: &'a mut Ids,
    pub timers: &'a mut Timers<K>,
    pub name: fn(StreamTimer) -> K,
    pub now_ms: u64,
    pub out: &'a mut Vec<Command>,
    pub changes: &'a mut Vec<Change>,
}

impl<K: Ord + Clone> Lend<'_, K> {
    fn fetch_id(&mut self) -> FetchId {
        self.ids.fresh()
    }

    fn set(&mut self, timer: StreamTimer, after_ms: u64) {
        let command = self.timers.set(self.ids, (self.name)(timer), after_ms);
        self.out.push(command);
    }
}

type Source = (String, Option<(u64, u64)>);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
enum Slot {
    Fetching(FetchId),
    Ready { handle: SegmentHandle, size: u64 },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
enum Fetching {
    Manifest,
    Playlist(usize),
    Segment(usize, i64),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Level {
    playlist_url: String,
    playlist_fetch: Option<FetchId>,
    target_duration_ms: u64,
    ended: bool,
    newest: Option<i64>,
    /// Every segment the playlist lists, by media sequence number.
    sources: BTreeMap<i64, Source>,
    segments: BTreeMap<i64, Slot>,
    /// Failed segments: the next wait, and when they may be fetched again.
    failed: BTreeMap<i64, (u64, u64)>,
    /// When each VOD segment was last asked for, in asks.
    last_use: BTreeMap<i64, u64>,
}

impl Level {
    fn new(playlist_url: String) -> Self {
        Level {
            playlist_url,
            playlist_fetch: None,
            target_duration_ms: 0,
            ended: false,
            newest: None,
            sources: BTreeMap::new(),
            segments: BTreeMap::new(),
            failed: BTreeMap::new(),
            last_use: BTreeMap::new(),
        }
    }
}

/// A stream's levels and the segments held of each.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Streams {
    manifest_url: String,
    /// The manifest's fetch, until it is read.
    manifest_fetch: Option<FetchId>,
    levels: Vec<Level>,
    fetches: BTreeMap<FetchId, Fetching>,
    /// Asks counted, the clock of `last_use`.
    asks: u64,
}

impl Streams {
    pub fn new(manifest_url: String) -> Self {
        Streams {
            manifest_url,
            manifest_fetch: None,
            levels: Vec::new(),
            fetches: BTreeMap::new(),
            asks: 0,
        }
    }

    /// Fetches the manifest (once; again after [`StreamTimer::Manifest`]).
    pub fn start<K: Ord + Clone>(&mut self, lend: &mut Lend<'_, K>) {
        if self.levels.is_empty() && self.manifest_fetch.is_none() {
            let fetch = self.fetch_text(self.manifest_url.clone(), Fetching::Manifest, lend);
            self.manifest_fetch = Some(fetch);
        }
    }

    fn fetch_text<K: Ord + Clone>(
        &mut self,
        url: String,
        what: Fetching,
        lend: &mut Lend<'_, K>,
    ) -> FetchId {
        let fetch = lend.fetch_id();
        self.fetches.insert(fetch, what);
        lend.out.push(Command::FetchText(FetchText { fetch, url }));
        fetch
    }

    /// Takes over from an earlier instance's state (its snapshot) squared with the
    /// host's: fetches and segments the host no longer has are forgotten (fetched again
    /// when due), and playlists whose reload timer was lost are reloaded.
    pub fn resume<K: Ord + Clone>(
        &mut self,
        state: &HostState,
        lost: &[StreamTimer],
        lend: &mut Lend<'_, K>,
    ) {
        self.fetches.retain(|fetch, _| state.fetches.contains(fetch));
        let held = |handle: SegmentHandle| state.segments.iter().any(|s| s.handle == handle);
        let fetching = |fetch: FetchId| state.fetches.contains(&fetch);
        if self.manifest_fetch.is_some_and(|f| !fetching(f)) {
            self.manifest_fetch = None;
        }
        for level in &mut self.levels {
            level.segments.retain(|_, slot| match slot {
                Slot::Fetching(fetch) => fetching(*fetch),
                Slot::Ready { handle, .. } => held(*handle),
            });
            if level.playlist_fetch.is_some_and(|f| !fetching(f)) {
                level.playlist_fetch = None;
            }
        }
        self.start(lend);
        for index in 0..self.levels.len() {
            let level = &self.levels[index];
            let reload_lost = lost.contains(&StreamTimer::Reload(index));
            if level.playlist_fetch.is_none()
                && (reload_lost || (!level.ended && level.sources.is_empty()))
            {
                self.reload(index, lend);
            }
        }
        // Whatever the host holds that no level claims is an earlier instance's: dropped.
        let claimed: Vec<SegmentHandle> = self.held_handles().collect();
        for segment in state.segments.iter().filter(|s| !claimed.contains(&s.handle)) {
            lend.out.push(Command::Evict(segment.handle));
        }
    }

    fn held_handles(&self) -> impl Iterator<Item = SegmentHandle> + '_ {
        self.levels.iter().flat_map(|l| l.segments.values()).filter_map(|slot| match slot {
            Slot::Ready { handle, .. } => Some(*handle),
            Slot::Fetching(_) => None,
        })
    }

    /// Whether the stream is a VOD (or a live stream that ended), once its playlists
    /// are read.
    pub fn ended(&self) -> bool {
        !self.levels.is_empty() && self.levels.iter().all(|l| l.ended)
    }

    /// The number of levels read from the manifest so far.
    pub fn levels(&self) -> usize {
        self.levels.len()
    }

    /// Segment `sn` of `level`, if it is held.
    pub fn get(&self, level: usize, sn: i64) -> Option<Held> {
        match self.levels.get(level)?.segments.get(&sn)? {
            Slot::Ready { handle, size } => Some(Held { handle: *handle, size: *size }),
            Slot::Fetching(_) => None,
        }
    }

    /// Every segment held, by level, oldest first.
    pub fn held(&self) -> impl Iterator<Item = (usize, i64)> + '_ {
        self.levels.iter().enumerate().flat_map(|(index, level)| {
            level
                .segments
                .iter()
                .filter(|(_, slot)| matches!(slot, Slot::Ready { .. }))
                .map(move |(sn, _)| (index, *sn))
        })
    }

    /// Whether `fetch` is one of this part's.
    pub fn owns(&self, fetch: FetchId) -> bool {
        self.fetches.contains_key(&fetch)
    }

    /// A text fetch arrived: the manifest or a level's playlist.
    pub fn on_text<K: Ord + Clone>(
        &mut self,
        fetch: FetchId,
        url: &str,
        text: &str,
        lend: &mut Lend<'_, K>,
    ) {
        match self.fetches.remove(&fetch) {
            Some(Fetching::Manifest) => self.on_manifest(url, text, lend),
            Some(Fetching::Playlist(index)) => self.on_playlist(index, url, text, lend),
            Some(Fetching::Segment(..)) | None => {}
        }
    }

    fn on_manifest<K: Ord + Clone>(&mut self, url: &str, text: &str, lend: &mut Lend<'_, K>) {
        self.manifest_fetch = None;
        if !self.levels.is_empty() {
            return;
        }
        self.levels = levels(url, text).into_iter().map(Level::new).collect();
        if self.levels.is_empty() {
            lend.set(StreamTimer::Manifest, RETRY_MS);
            return;
        }
        if playlist::is_master(text) {
            for index in 0..self.levels.len() {
                self.reload(index, lend);
            }
        } else {
            // The manifest is the level's playlist: read as it is.
            self.on_playlist(0, url, text, lend);
        }
    }

    fn reload<K: Ord + Clone>(&mut self, index: usize, lend: &mut Lend<'_, K>) {
        let url = self.levels[index].playlist_url.clone();
        let fetch = self.fetch_text(url, Fetching::Playlist(index), lend);
        self.levels[index].playlist_fetch = Some(fetch);
    }

    fn on_playlist<K: Ord + Clone>(
        &mut self,
        index: usize,
        url: &str,
        text: &str,
        lend: &mut Lend<'_, K>,
    ) {
        let Some(level) = self.levels.get_mut(index) else { return };
        level.playlist_fetch = None;
        let media = playlist::parse_media(text, url);
        if media.segments.len() > playlist::MAX_SEGMENTS || media.segments.is_empty() {
            lend.set(StreamTimer::Reload(index), RETRY_MS);
            return;
        }
        // Viewers tell live from VOD by `#EXT-X-ENDLIST` alone.
        let live = !media.ended;
        level.target_duration_ms = ((media.target_duration * 1000.0) as u64).max(1000);
        level.ended = media.ended;
        let newest = media.segments.last().map(|s| s.sequence as i64);
        let grew = newest > level.newest;
        level.newest = newest.max(level.newest);
        level.sources =
            media.segments.iter().map(|s| (s.sequence as i64, (s.uri.clone(), s.range))).collect();
        let wanted: Vec<i64> = if live {
            let skip = media.segments.len().saturating_sub(LIVE_WINDOW);
            media.segments[skip..].iter().map(|s| s.sequence as i64).collect()
        } else {
            media.segments.iter().take(VOD_PREFETCH).map(|s| s.sequence as i64).collect()
        };
        if live {
            // Segments that left the live window go.
            let stale: Vec<i64> =
                level.segments.keys().filter(|sn| !wanted.contains(sn)).copied().collect();
            for sn in stale {
                self.drop_segment(index, sn, lend);
            }
            self.levels[index].failed.retain(|sn, _| wanted.contains(sn));
        }
        for sn in wanted {
            self.ensure(index, sn, live, lend);
        }
        if live {
            let after = live_reload_ms(self.levels[index].target_duration_ms, grew);
            lend.set(StreamTimer::Reload(index), after);
        }
    }

    fn drop_segment<K: Ord + Clone>(&mut self, index: usize, sn: i64, lend: &mut Lend<'_, K>) {
        match self.levels[index].segments.remove(&sn) {
            Some(Slot::Ready { handle, .. }) => {
                lend.out.push(Command::Evict(handle));
                lend.changes.push(Change::Dropped { level: index, sn });
            }
            Some(Slot::Fetching(fetch)) => {
                self.fetches.remove(&fetch);
                lend.out.push(Command::FetchCancel(fetch));
            }
            None => {}
        }
        self.levels[index].last_use.remove(&sn);
    }

    /// Makes sure segment `sn` of level `index` is held or on its way, unless its last
    /// fetch failed too recently; whether a fetch was started for it.
    fn ensure<K: Ord + Clone>(
        &mut self,
        index: usize,
        sn: i64,
        live: bool,
        lend: &mut Lend<'_, K>,
    ) -> bool {
        let level = &mut self.levels[index];
        if level.segments.contains_key(&sn) {
            return false;
        }
        if level.failed.get(&sn).is_some_and(|&(_, retry_at)| lend.now_ms < retry_at) {
            return false;
        }
        let Some((url, range)) = level.sources.get(&sn).cloned() else { return false };
        let fetch = lend.fetch_id();
        level.segments.insert(sn, Slot::Fetching(fetch));
        self.fetches.insert(fetch, Fetching::Segment(index, sn));
        lend.out.push(Command::FetchSegment(FetchSegment {
            fetch,
            url,
            range: range.map(|(start, end)| ByteRange { start, end }),
            tier: if live { CacheTier::Memory } else { CacheTier::Disk },
        }));
        true
    }

    /// A segment fetch completed.
    pub fn on_stored<K: Ord + Clone>(
        &mut self,
        fetch: FetchId,
        segment: &SegmentInfo,
        lend: &mut Lend<'_, K>,
    ) {
        let Some(Fetching::Segment(index, sn)) = self.fetches.remove(&fetch) else {
            // Not ours (any more): the host must not keep it for nobody.
            lend.out.push(Command::Evict(segment.handle));
            return;
        };
        let level = &mut self.levels[index];
        if level.segments.get(&sn) != Some(&Slot::Fetching(fetch)) {
            lend.out.push(Command::Evict(segment.handle));
            return;
        }
        level.failed.remove(&sn);
        level.segments.insert(sn, Slot::Ready { handle: segment.handle, size: segment.size });
        lend.changes.push(Change::Held { level: index, sn });
    }

    /// A fetch failed after the host's retries.
    pub fn on_failed<K: Ord + Clone>(&mut self, fetch: FetchId, lend: &mut Lend<'_, K>) {
        match self.fetches.remove(&fetch) {
            Some(Fetching::Manifest) => {
                self.manifest_fetch = None;
                lend.set(StreamTimer::Manifest, RETRY_MS);
            }
            Some(Fetching::Playlist(index)) => {
                self.levels[index].playlist_fetch = None;
                lend.set(StreamTimer::Reload(index), RETRY_MS);
            }
            Some(Fetching::Segment(index, sn)) => {
                let level = &mut self.levels[index];
                level.segments.remove(&sn);
                let wait = level
                    .failed
                    .get(&sn)
                    .map_or(SEGMENT_RETRY_MS, |(wait, _)| (wait * 2).min(SEGMENT_RETRY_MAX_MS));
                level.failed.insert(sn, (wait, lend.now_ms + wait));
            }
            None => {}
        }
    }

    /// The host dropped a segment (its cache's hard cap).
    pub fn on_evicted<K: Ord + Clone>(&mut self, handle: SegmentHandle, lend: &mut Lend<'_, K>) {
        for (index, level) in self.levels.iter_mut().enumerate() {
            let gone = level.segments.iter().find_map(|(sn, slot)| match slot {
                Slot::Ready { handle: h, .. } if *h == handle => Some(*sn),
                _ => None,
            });
            if let Some(sn) = gone {
                level.segments.remove(&sn);
                level.last_use.remove(&sn);
                lend.changes.push(Change::Dropped { level: index, sn });
                return;
            }
        }
    }

    /// A timer of this part's fired.
    pub fn on_timer<K: Ord + Clone>(&mut self, timer: StreamTimer, lend: &mut Lend<'_, K>) {
        match timer {
            StreamTimer::Manifest => self.start(lend),
            StreamTimer::Reload(index) if index < self.levels.len() => {
                if self.levels[index].playlist_fetch.is_none() {
                    self.reload(index, lend);
                }
            }
            StreamTimer::Reload(_) => {}
        }
    }

    /// A viewer of a VOD asked for, or has, segment `sn` of `level`: that one and the
    /// next [`VOD_PREFETCH`] are fetched (at most one new fetch per ask, so a viewer
    /// jumping all over the stream costs one fetch per jump), and at most [`VOD_HELD`]
    /// are kept in memory, the least recently asked for going first.
    pub fn demand<K: Ord + Clone>(&mut self, level: usize, sn: i64, lend: &mut Lend<'_, K>) {
        let Some(stream) = self.levels.get_mut(level) else { return };
        if !stream.ended || !stream.sources.contains_key(&sn) {
            return;
        }
        self.asks += 1;
        stream.last_use.insert(sn, self.asks);
        let ahead: Vec<i64> =
            stream.sources.range(sn..).take(VOD_PREFETCH).map(|(n, _)| *n).collect();
        for n in ahead.iter().copied() {
            if self.ensure(level, n, false, lend) {
                break;
            }
        }
        loop {
            let stream = &self.levels[level];
            if stream.segments.len() <= VOD_HELD {
                break;
            }
            let oldest = stream
                .segments
                .iter()
                .filter(|(n, slot)| matches!(slot, Slot::Ready { .. }) && !ahead.contains(n))
                .min_by_key(|(n, _)| stream.last_use.get(n).copied().unwrap_or(0))
                .map(|(n, _)| *n);
            match oldest {
                Some(n) => self.drop_segment(level, n, lend),
                None => break,
            }
        }
    }
}

/// The levels of a stream as hls.js numbers them: a media playlist is level 0; a master
/// playlist's variants, lowest bandwidth first (hls.js sorts them so; equal ones keep
/// their order).
fn levels(url: &str, text: &str) -> Vec<String> {
    if !playlist::is_master(text) {
        return if playlist::parse_media(text, url).segments.is_empty() {
            Vec::new()
        } else {
            vec![url.to_string()]
        };
    }
    let mut master = playlist::parse_master(text, url);
    master.variants.truncate(playlist::MAX_RENDITIONS);
    let bandwidth = |v: &playlist::Variant| -> u64 {
        v.attribute("BANDWIDTH").and_then(|b| b.trim().parse().ok()).unwrap_or(0)
    };
    master.variants.sort_by_key(bandwidth);
    master.variants.into_iter().map(|v| v.uri).collect()
}

#[cfg(test)]
mod tests;
