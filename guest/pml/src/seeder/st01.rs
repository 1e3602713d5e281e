//! The seeder's state as snapshots laid it out before its streams moved to the shared
//! segments crate (`pml-st01`): read, never written, so that a swap from a build of that
//! time keeps its viewers. Everything but the streams is taken as it was; each stream
//! becomes a level whose playlist is read again, and the segments the host holds are
//! taken back by where they came from, so none is fetched again.
//!
//! Every field is here in its old order and type, since the layout is positional. It
//! must never change: it is what those builds wrote.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use serde::Deserialize;
use superpeer_guest::{FetchId, PeerId, SegmentHandle};
use superpeer_segments::{Numbering, Streams};

use super::{Measuring, PendingAnswer, Seeder, Swarm, Viewer};
use crate::context::Context;
use crate::reach::Reach;
use crate::swarm::Identity;

/// What a `pml-st01` snapshot holds of the seeder.
#[derive(Deserialize)]
pub(crate) struct SeederSt01 {
    ctx: Context,
    swarm_id: String,
    manifest_url: Option<String>,
    manifest_fetch: Option<FetchId>,
    identities: Vec<Identity>,
    streams: Vec<StreamSt01>,
    swarms: Vec<Swarm>,
    _fetches: HashMap<FetchId, FetchSt01>,
    answering: HashMap<PeerId, PendingAnswer>,
    peers: HashMap<PeerId, Viewer>,
    remotes: HashSet<(usize, String)>,
    max_peers: usize,
    reach: Reach,
    now_ms: u64,
    _orphans: HashMap<(String, Option<(u64, u64)>), StoredSt01>,
    _uses: u64,
}

#[derive(Deserialize)]
struct StreamSt01 {
    playlist_url: String,
    _playlist_fetch: Option<FetchId>,
    _segments: BTreeMap<i64, StoredSt01>,
    _target_duration_ms: u64,
    _newest: Option<u64>,
    _ended: bool,
    _changed: bool,
    _last_use: BTreeMap<i64, u64>,
    _probe_from: Option<i64>,
    _probes_in_flight: usize,
    _failed: BTreeMap<i64, (u32, u64)>,
}

#[derive(Deserialize)]
#[allow(dead_code)] // Read for the layout only.
enum StoredSt01 {
    Fetching(FetchId),
    Probing(FetchId),
    Ready { handle: SegmentHandle, size: u64, on_disk: bool },
}

#[derive(Deserialize)]
#[allow(dead_code)] // Read for the layout only.
enum FetchSt01 {
    Manifest,
    Playlist(usize),
    Segment(usize, i64),
    Probe(usize, i64),
}

impl SeederSt01 {
    /// The seeder as this build keeps it: its streams' levels in the same order (swarms
    /// name them by index), to be read again when the instance takes over.
    pub(crate) fn into_current(self) -> Seeder {
        let playlists = self.streams.into_iter().map(|s| s.playlist_url).collect();
        Seeder {
            ctx: self.ctx,
            swarm_id: self.swarm_id,
            manifest_url: self.manifest_url,
            manifest_fetch: self.manifest_fetch,
            identities: self.identities,
            streams: Streams::with_levels(Numbering::VodPosition, playlists),
            changed: BTreeSet::new(),
            swarms: self.swarms,
            answering: self.answering,
            peers: self.peers,
            remotes: self.remotes,
            max_peers: self.max_peers,
            reach: self.reach,
            now_ms: self.now_ms,
            offer_allowance: HashMap::new(),
            measuring: Measuring::default(),
        }
    }
}
