//! Which segments a seeder holds, whatever protocol its viewers speak: a stream's levels
//! (read from its manifest, numbered as hls.js numbers them, or given by the policy),
//! each level's playlist reloaded while it is live, the newest segments of a live window
//! kept, the start of a VOD fetched ahead and the rest fetched where viewers ask, each
//! fetch started once and retried with back-off when the origin fails it; what the disk
//! cache already has of a VOD, and what an earlier instance left in the host's cache,
//! taken instead of fetched again.
//!
//! Pure: it returns commands and reports what viewers should hear as [`Change`]s; the
//! policy owns its timers' names (it wraps [`StreamTimer`]). It must never speak to a
//! viewer or know a protocol's segment ids: levels and segment numbers (media sequence,
//! or a VOD's positions, see [`Numbering`]) are all it names segments by.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use superpeer_guest::host::info as log;
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

/// How many fetches may be in flight before asking the disk cache about more VOD
/// segments waits: well under the host's limit, so a probe is never turned away.
pub const PROBE_BUDGET: usize = 64;
/// How the host says a fetch was refused for want of memory (its reason's words).
const MEMORY_FULL: &str = "memory budget";

/// The timers this part of a policy needs; the policy names them as its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum StreamTimer {
    /// Fetch the manifest again after a failure.
    Manifest,
    /// Reload a level's playlist.
    Reload(usize),
}

/// How viewers number a level's segments. A live playlist's are always numbered by
/// media sequence; a VOD's by media sequence too, or by position in the playlist (the
/// first listed is 0), as p2p-media-loader numbers them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Numbering {
    MediaSequence,
    VodPosition,
}

/// What changed in what a policy tells its viewers: a segment on its way from the
/// origin, held, dropped once held, or given up on while loading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Loading { level: usize, sn: i64 },
    Held { level: usize, sn: i64 },
    Dropped { level: usize, sn: i64 },
    Abandoned { level: usize, sn: i64 },
}

impl Change {
    /// The level whose segments changed.
    pub fn level(&self) -> usize {
        match *self {
            Change::Loading { level, .. }
            | Change::Held { level, .. }
            | Change::Dropped { level, .. }
            | Change::Abandoned { level, .. } => level,
        }
    }
}

/// A segment held, as a policy serves it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    pub handle: SegmentHandle,
    pub size: u64,
}

/// A segment as viewers are told of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Announced {
    /// On its way from the origin.
    Loading,
    Held,
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

/// Where a segment comes from: its URL and byte range.
type Source = (String, Option<(u64, u64)>);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
enum Slot {
    Fetching(FetchId),
    /// Asking the host whether its disk cache has it (never announced).
    Probing(FetchId),
    Ready {
        handle: SegmentHandle,
        size: u64,
        on_disk: bool,
    },
}

impl Slot {
    fn ready(segment: &SegmentInfo) -> Slot {
        Slot::Ready {
            handle: segment.handle,
            size: segment.size,
            on_disk: segment.tier != CacheTier::Memory,
        }
    }

    /// Whether it costs the worker's memory: the disk cache has a cap of its own,
    /// which the host enforces; only memory is the policy's to bound.
    fn in_memory(&self) -> bool {
        matches!(self, Slot::Fetching(_) | Slot::Ready { on_disk: false, .. })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
enum Fetching {
    Manifest,
    Playlist(usize),
    Segment(usize, i64),
    /// A `disk-if-cached` fetch.
    Probe(usize, i64),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Level {
    playlist_url: String,
    playlist_fetch: Option<FetchId>,
    target_duration_ms: u64,
    ended: bool,
    newest: Option<i64>,
    /// Every segment the playlist lists, by the number viewers know it by. Not in the
    /// snapshot (a VOD playlist's may be large): a new instance reads the playlist again.
    #[serde(skip)]
    sources: BTreeMap<i64, Source>,
    segments: BTreeMap<i64, Slot>,
    /// Failed segments: the next wait, and when they may be fetched again.
    failed: BTreeMap<i64, (u64, u64)>,
    /// When each VOD segment was last asked for, in asks.
    last_use: BTreeMap<i64, u64>,
    /// VOD: the next segment to ask the disk cache about, until all have been.
    probe_from: Option<i64>,
    probes_in_flight: usize,
    /// Every segment was asked about once: a new instance does not ask again.
    probed: bool,
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
            probe_from: None,
            probes_in_flight: 0,
            probed: false,
        }
    }
}

/// A stream's levels and the segments held of each.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Streams {
    /// The manifest this part reads, if any; a policy that reads it itself adds levels
    /// with [`Streams::add_level`].
    manifest_url: Option<String>,
    numbering: Numbering,
    /// The manifest's fetch, until it is read.
    manifest_fetch: Option<FetchId>,
    levels: Vec<Level>,
    fetches: BTreeMap<FetchId, Fetching>,
    /// Asks counted, the clock of `last_use`.
    asks: u64,
    /// Segments the host holds that no level claims yet (an earlier instance fetched
    /// them), by source: taken when a playlist lists them, instead of fetched again.
    orphans: BTreeMap<Source, Slot>,
}

impl Streams {
    /// Streams whose levels come from `manifest_url` (see [`Streams::start`]), or from
    /// the policy if none.
    pub fn new(manifest_url: Option<String>, numbering: Numbering) -> Self {
        Streams {
            manifest_url,
            numbering,
            manifest_fetch: None,
            levels: Vec::new(),
            fetches: BTreeMap::new(),
            asks: 0,
            orphans: BTreeMap::new(),
        }
    }

    /// Levels whose playlists are known but not read yet: what an earlier layout of a
    /// policy's state can still say. [`Streams::resume`] reads them.
    pub fn with_levels(numbering: Numbering, playlist_urls: Vec<String>) -> Self {
        let mut streams = Streams::new(None, numbering);
        streams.levels = playlist_urls.into_iter().map(Level::new).collect();
        streams
    }

    /// Fetches the manifest (once; again after [`StreamTimer::Manifest`]).
    pub fn start<K: Ord + Clone>(&mut self, lend: &mut Lend<'_, K>) {
        if let Some(url) = self.manifest_url.clone()
            && self.levels.is_empty()
            && self.manifest_fetch.is_none()
        {
            let fetch = self.fetch_text(url, Fetching::Manifest, lend);
            self.manifest_fetch = Some(fetch);
        }
    }

    /// A level the policy found (in a manifest it reads itself); its playlist is
    /// fetched now. Returns its index.
    pub fn add_level<K: Ord + Clone>(
        &mut self,
        playlist_url: String,
        lend: &mut Lend<'_, K>,
    ) -> usize {
        self.levels.push(Level::new(playlist_url));
        let index = self.levels.len() - 1;
        self.reload(index, lend);
        index
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
    /// when due), what the host holds that no level claims is kept aside for the
    /// playlists to claim, and every playlist is read again (the snapshot has no
    /// sources), which also sets again any reload timer that was lost.
    pub fn resume<K: Ord + Clone>(&mut self, state: &HostState, lend: &mut Lend<'_, K>) {
        let fetching = |fetch: &FetchId| state.fetches.contains(fetch);
        let held = |handle: SegmentHandle| state.segments.iter().any(|s| s.handle == handle);
        self.fetches.retain(|fetch, _| fetching(fetch));
        self.manifest_fetch = self.manifest_fetch.filter(fetching);
        for level in &mut self.levels {
            let mut unanswered: Option<i64> = None;
            level.segments.retain(|sn, slot| match slot {
                Slot::Fetching(fetch) => fetching(fetch),
                Slot::Probing(fetch) => {
                    let asked = fetching(fetch);
                    if !asked && unanswered.is_none_or(|first| *sn < first) {
                        unanswered = Some(*sn);
                    }
                    asked
                }
                Slot::Ready { handle, .. } => held(*handle),
            });
            // Questions to the disk cache that ended unheard are asked again.
            if let Some(first) = unanswered {
                level.probe_from = Some(level.probe_from.map_or(first, |from| from.min(first)));
                level.probed = false;
            }
            level.probes_in_flight =
                level.segments.values().filter(|s| matches!(s, Slot::Probing(_))).count();
            level.playlist_fetch = level.playlist_fetch.filter(fetching);
        }
        self.orphans.retain(|_, slot| matches!(slot, Slot::Ready { handle, .. } if held(*handle)));
        self.start(lend);
        for index in 0..self.levels.len() {
            if self.levels[index].playlist_fetch.is_none() {
                self.reload(index, lend);
            }
        }
        let claimed: Vec<SegmentHandle> = self.held_handles().collect();
        let unclaimed: Vec<SegmentInfo> =
            state.segments.iter().filter(|s| !claimed.contains(&s.handle)).cloned().collect();
        self.adopt(&unclaimed, lend);
    }

    /// Segments the host holds that no level knows (an earlier instance fetched them):
    /// each is taken by the level that lists it, or kept aside until the playlists are
    /// read, then dropped if none does.
    pub fn adopt<K: Ord + Clone>(&mut self, segments: &[SegmentInfo], lend: &mut Lend<'_, K>) {
        for segment in segments {
            let source = (segment.url.clone(), segment.range.map(|r| (r.start, r.end)));
            let listed = self.levels.iter().enumerate().find_map(|(index, level)| {
                let sn = level.sources.iter().find(|(_, s)| **s == source).map(|(sn, _)| *sn)?;
                (!level.segments.contains_key(&sn)).then_some((index, sn))
            });
            if let Some((index, sn)) = listed {
                self.levels[index].segments.insert(sn, Slot::ready(segment));
                lend.changes.push(Change::Held { level: index, sn });
            } else if self.all_read() {
                lend.out.push(Command::Evict(segment.handle));
            } else {
                self.orphans.insert(source, Slot::ready(segment));
            }
        }
    }

    /// Whether every level's playlist has been read since this instance began.
    fn all_read(&self) -> bool {
        !self.levels.is_empty() && self.levels.iter().all(|l| !l.sources.is_empty())
    }

    fn held_handles(&self) -> impl Iterator<Item = SegmentHandle> + '_ {
        self.levels
            .iter()
            .flat_map(|l| l.segments.values())
            .chain(self.orphans.values())
            .filter_map(|slot| match slot {
                Slot::Ready { handle, .. } => Some(*handle),
                _ => None,
            })
    }

    /// Whether the stream is a VOD (or a live stream that ended), once its playlists
    /// are read.
    pub fn ended(&self) -> bool {
        !self.levels.is_empty() && self.levels.iter().all(|l| l.ended)
    }

    /// The number of levels so far.
    pub fn levels(&self) -> usize {
        self.levels.len()
    }

    /// A level's playlist URL.
    pub fn playlist_url(&self, level: usize) -> Option<&str> {
        self.levels.get(level).map(|l| l.playlist_url.as_str())
    }

    /// Segment `sn` of `level`, if it is held.
    pub fn get(&self, level: usize, sn: i64) -> Option<Held> {
        match self.levels.get(level)?.segments.get(&sn)? {
            Slot::Ready { handle, size, .. } => Some(Held { handle: *handle, size: *size }),
            Slot::Fetching(_) | Slot::Probing(_) => None,
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

    /// What viewers of `level` are told of: segments held and those on their way from
    /// the origin (not those the disk cache is being asked about), oldest first.
    pub fn announced(&self, level: usize) -> impl Iterator<Item = (i64, Announced)> + '_ {
        self.levels.get(level).into_iter().flat_map(|level| {
            level.segments.iter().filter_map(|(sn, slot)| match slot {
                Slot::Ready { .. } => Some((*sn, Announced::Held)),
                Slot::Fetching(_) => Some((*sn, Announced::Loading)),
                Slot::Probing(_) => None,
            })
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
            Some(Fetching::Segment(..) | Fetching::Probe(..)) | None => {}
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
            // Read as a failed fetch: tried again later, never worked through.
            log(&format!(
                "playlist {} lists {} segments; read again later",
                playlist::without_query(url),
                media.segments.len(),
            ));
            lend.set(StreamTimer::Reload(index), RETRY_MS);
            return;
        }
        // Viewers tell live from VOD by `#EXT-X-ENDLIST` alone (an EVENT playlist is
        // live until it ends), and number segments accordingly.
        let live = !media.ended;
        level.target_duration_ms = ((media.target_duration * 1000.0) as u64).max(1000);
        level.ended = media.ended;
        let newest = media.segments.last().map(|s| s.sequence as i64);
        let grew = newest > level.newest;
        level.newest = newest.max(level.newest);
        let by_position = !live && self.numbering == Numbering::VodPosition;
        level.sources = media
            .segments
            .iter()
            .enumerate()
            .map(|(position, s)| {
                let sn = if by_position { position as i64 } else { s.sequence as i64 };
                (sn, (s.uri.clone(), s.range))
            })
            .collect();
        let wanted: Vec<i64> = if live {
            level.sources.keys().rev().take(LIVE_WINDOW).rev().copied().collect()
        } else {
            level.sources.keys().take(VOD_PREFETCH).copied().collect()
        };
        if live {
            // Segments that left the live window go.
            let stale: Vec<i64> =
                level.segments.keys().filter(|sn| !wanted.contains(sn)).copied().collect();
            for sn in stale {
                self.drop_segment(index, sn, lend);
            }
            self.levels[index].failed.retain(|sn, _| wanted.contains(sn));
        } else if !level.probed && level.probe_from.is_none() {
            // What earlier workers cached is found by asking the disk cache, in batches.
            level.probe_from = level.sources.keys().next().copied();
        }
        self.claim_orphans(index, live.then_some(&wanted[..]), lend);
        for sn in wanted {
            self.ensure(index, sn, lend);
        }
        if live {
            let after = live_reload_ms(self.levels[index].target_duration_ms, grew);
            lend.set(StreamTimer::Reload(index), after);
        }
        if self.all_read() {
            // What nobody listed is nobody's: the host must not keep it.
            let orphans = std::mem::take(&mut self.orphans);
            lend.out.extend(orphans.into_values().filter_map(|slot| match slot {
                Slot::Ready { handle, .. } => Some(Command::Evict(handle)),
                _ => None,
            }));
        }
        self.probe(lend);
    }

    /// Takes the segments kept aside that level `index` lists (only those among `only`,
    /// if given).
    fn claim_orphans<K: Ord + Clone>(
        &mut self,
        index: usize,
        only: Option<&[i64]>,
        lend: &mut Lend<'_, K>,
    ) {
        if self.orphans.is_empty() {
            return;
        }
        let level = &mut self.levels[index];
        for (sn, source) in &level.sources {
            if only.is_some_and(|only| !only.contains(sn)) || level.segments.contains_key(sn) {
                continue;
            }
            if let Some(slot) = self.orphans.remove(source) {
                level.segments.insert(*sn, slot);
                lend.changes.push(Change::Held { level: index, sn: *sn });
            }
        }
    }

    fn drop_segment<K: Ord + Clone>(&mut self, index: usize, sn: i64, lend: &mut Lend<'_, K>) {
        let level = &mut self.levels[index];
        level.last_use.remove(&sn);
        match level.segments.remove(&sn) {
            Some(Slot::Ready { handle, .. }) => {
                lend.out.push(Command::Evict(handle));
                lend.changes.push(Change::Dropped { level: index, sn });
            }
            Some(Slot::Fetching(fetch)) => {
                self.fetches.remove(&fetch);
                lend.out.push(Command::FetchCancel(fetch));
                lend.changes.push(Change::Abandoned { level: index, sn });
            }
            Some(Slot::Probing(fetch)) => {
                self.fetches.remove(&fetch);
                level.probes_in_flight -= 1;
                lend.out.push(Command::FetchCancel(fetch));
            }
            None => {}
        }
    }

    /// Makes sure segment `sn` of level `index` is held or on its way, unless its last
    /// fetch failed too recently; whether a fetch was started for it.
    fn ensure<K: Ord + Clone>(&mut self, index: usize, sn: i64, lend: &mut Lend<'_, K>) -> bool {
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
        let tier = if level.ended { CacheTier::Disk } else { CacheTier::Memory };
        self.fetches.insert(fetch, Fetching::Segment(index, sn));
        lend.out.push(Command::FetchSegment(FetchSegment {
            fetch,
            url,
            range: range.map(|(start, end)| ByteRange { start, end }),
            tier,
        }));
        lend.changes.push(Change::Loading { level: index, sn });
        true
    }

    /// Asks the disk cache about the next batch of a VOD's segments once the last batch
    /// is answered; what it has is held (and told) without asking the origin.
    fn probe<K: Ord + Clone>(&mut self, lend: &mut Lend<'_, K>) {
        for index in 0..self.levels.len() {
            let budget = PROBE_BUDGET.saturating_sub(self.fetches.len());
            let level = &self.levels[index];
            let (Some(from), 0) = (level.probe_from, level.probes_in_flight) else { continue };
            if level.sources.is_empty() {
                continue;
            }
            if budget == 0 {
                break;
            }
            let batch: Vec<(i64, Source)> = level
                .sources
                .range(from..)
                .filter(|(sn, _)| !level.segments.contains_key(sn))
                .take(budget)
                .map(|(sn, source)| (*sn, source.clone()))
                .collect();
            let next = match batch.last() {
                Some((last, _)) => level.sources.range(last + 1..).next().map(|(sn, _)| *sn),
                None => None,
            };
            for (sn, (url, range)) in batch {
                let fetch = lend.fetch_id();
                self.fetches.insert(fetch, Fetching::Probe(index, sn));
                let level = &mut self.levels[index];
                level.segments.insert(sn, Slot::Probing(fetch));
                level.probes_in_flight += 1;
                lend.out.push(Command::FetchSegment(FetchSegment {
                    fetch,
                    url,
                    range: range.map(|(start, end)| ByteRange { start, end }),
                    tier: CacheTier::DiskIfCached,
                }));
            }
            let level = &mut self.levels[index];
            level.probe_from = next;
            level.probed = next.is_none();
        }
    }

    /// A segment fetch completed.
    pub fn on_stored<K: Ord + Clone>(
        &mut self,
        fetch: FetchId,
        segment: &SegmentInfo,
        lend: &mut Lend<'_, K>,
    ) {
        let (index, sn) = match self.fetches.remove(&fetch) {
            Some(Fetching::Segment(index, sn) | Fetching::Probe(index, sn)) => (index, sn),
            // A fetch an earlier instance started.
            _ => return self.adopt(std::slice::from_ref(segment), lend),
        };
        let level = &mut self.levels[index];
        match level.segments.get(&sn) {
            Some(Slot::Fetching(f)) if *f == fetch => {}
            Some(Slot::Probing(f)) if *f == fetch => level.probes_in_flight -= 1,
            // Not wanted any more: the host must not keep it for nobody.
            _ => return lend.out.push(Command::Evict(segment.handle)),
        }
        level.failed.remove(&sn);
        level.segments.insert(sn, Slot::ready(segment));
        lend.changes.push(Change::Held { level: index, sn });
        self.probe(lend);
    }

    /// A fetch failed after the host's retries, for `reason`.
    pub fn on_failed<K: Ord + Clone>(
        &mut self,
        fetch: FetchId,
        reason: &str,
        lend: &mut Lend<'_, K>,
    ) {
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
                if level.segments.get(&sn) == Some(&Slot::Fetching(fetch)) {
                    level.segments.remove(&sn);
                    lend.changes.push(Change::Abandoned { level: index, sn });
                }
                if reason.contains(MEMORY_FULL) && level.ended {
                    // For VOD, what was used longest ago goes, so the next try finds
                    // room at once (a live window is the playlist's to bound; a budget
                    // smaller than it is the operator's to raise).
                    self.evict_least_used(index, &[sn], lend);
                } else {
                    // Fetched again at a later reload (or ask) if still listed, once
                    // its wait is over.
                    let wait = level
                        .failed
                        .get(&sn)
                        .map_or(SEGMENT_RETRY_MS, |(wait, _)| (wait * 2).min(SEGMENT_RETRY_MAX_MS));
                    level.failed.insert(sn, (wait, lend.now_ms + wait));
                }
            }
            Some(Fetching::Probe(index, sn)) => {
                let level = &mut self.levels[index];
                if level.segments.get(&sn) == Some(&Slot::Probing(fetch)) {
                    level.segments.remove(&sn);
                    level.probes_in_flight -= 1;
                }
                // Not cached, and a viewer wants it or one just before it (it would
                // have been fetched ahead): from the origin then.
                let wanted = level.last_use.range(sn + 1 - VOD_PREFETCH as i64..=sn).next();
                if wanted.is_some() {
                    self.ensure(index, sn, lend);
                }
                self.probe(lend);
            }
            None => {}
        }
    }

    /// The host dropped a segment (its cache's hard cap, or its disk copy went).
    pub fn on_evicted<K: Ord + Clone>(&mut self, handle: SegmentHandle, lend: &mut Lend<'_, K>) {
        self.orphans
            .retain(|_, slot| !matches!(slot, Slot::Ready { handle: h, .. } if *h == handle));
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
    /// are kept in memory, the least recently asked for going first. Numbers the
    /// playlist does not list (a viewer may ask for anything) are not kept.
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
            if self.ensure(level, n, lend) {
                break;
            }
        }
        while self.levels[level].segments.values().filter(|s| s.in_memory()).count() > VOD_HELD {
            if !self.evict_least_used(level, &ahead, lend) {
                break;
            }
        }
    }

    /// Evicts the segment of `level` held in memory that was used longest ago, other
    /// than those in `keep`; false if there is none.
    fn evict_least_used<K: Ord + Clone>(
        &mut self,
        level: usize,
        keep: &[i64],
        lend: &mut Lend<'_, K>,
    ) -> bool {
        let stream = &self.levels[level];
        let oldest = stream
            .segments
            .iter()
            .filter(|(n, slot)| {
                matches!(slot, Slot::Ready { on_disk: false, .. }) && !keep.contains(n)
            })
            .min_by_key(|(n, _)| stream.last_use.get(n).copied().unwrap_or(0))
            .map(|(n, _)| *n);
        match oldest {
            Some(n) => {
                self.drop_segment(level, n, lend);
                true
            }
            None => false,
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
