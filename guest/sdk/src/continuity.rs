//! What a policy needs to hand its work over to the next instance (after a hot swap, a
//! fault or a rollback) without confusing it with anything else: ids that are never
//! reused in a worker's life, and timers named by what they are for.
//!
//! The host keeps every live id (connections, peers, fetches, HTTP requests, timers) in
//! `host-state`
//! and replays it to a fresh instance; an id that was closed may still have an event on
//! its way. So a new instance starts its ids past everything the host knows and past
//! what the previous instance had handed out by its last snapshot, with a margin for
//! what it handed out after (a fault loses everything since the snapshot).
//!
//! Pure: no host calls; randomness comes in as a value.

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::{Command, HostState, TimerId, TimerSet};

/// A snapshot: `value` behind the policy's `magic` bytes, which name the policy and its
/// layout's version (postcard: compact, and quick enough to take every second with a
/// thousand viewers). Nothing a policy keeps fails to encode; if it did, an empty
/// snapshot would start the next instance afresh rather than wrongly.
pub fn encode_snapshot<T: Serialize>(magic: &[u8; 8], value: &T) -> Vec<u8> {
    postcard::to_extend(value, magic.to_vec()).unwrap_or_default()
}

/// A snapshot written by [`encode_snapshot`] with the same `magic`; `None` for anything
/// else (another policy's, another layout). Bytes after the value are ignored.
pub fn decode_snapshot<T: DeserializeOwned>(magic: &[u8; 8], bytes: &[u8]) -> Option<T> {
    postcard::from_bytes(bytes.strip_prefix(magic)?).ok()
}

/// Ids a previous instance may have handed out after its last snapshot: more than any
/// policy makes between two snapshots (the host takes one every second, and a call
/// returns at most a few thousand commands), so a new instance starting this far past
/// the snapshot's mark meets none of them.
pub const MARGIN: u64 = 1 << 32;

/// A source of ids for connections, peers, fetches, HTTP requests and timers, one space
/// for all.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ids {
    next: u64,
}

impl Ids {
    /// The first instance's ids (no snapshot, nothing live).
    pub fn new() -> Ids {
        Ids { next: 1 }
    }

    /// A fresh instance's ids: past every id `state` shows, past `saved` (the previous
    /// instance's allocator, from its snapshot) plus [`MARGIN`]. Without a saved one (a
    /// snapshot another policy wrote, or none) an instance cannot know how far an
    /// earlier one went: it starts at a random place far past the host's ids
    /// (`random` is the host's randomness), where meeting an old id is as likely as
    /// guessing it.
    pub fn resume(saved: Option<&Ids>, state: &HostState, random: u64) -> Ids {
        let live = state
            .trackers
            .iter()
            .map(|t| t.conn)
            .chain(state.peers.iter().map(|p| p.peer))
            .chain(state.fetches.iter().copied())
            .chain(requests(state))
            .chain(state.timers.iter().map(|(t, _)| *t))
            .max()
            .unwrap_or(0);
        let past = match saved {
            Some(saved) => saved.next.saturating_add(MARGIN),
            None => live.saturating_add(MARGIN).saturating_add(random % (MARGIN << 16)),
        };
        Ids { next: past.max(live.saturating_add(1)) }
    }

    /// A new id, never handed out before in this worker's life.
    pub fn fresh(&mut self) -> u64 {
        let id = self.next;
        self.next = self.next.saturating_add(1);
        id
    }

    /// Where the next id will come from: ids below it may be in use.
    pub fn mark(&self) -> u64 {
        self.next
    }
}

impl Default for Ids {
    fn default() -> Self {
        Ids::new()
    }
}

/// Timers named by a key of the policy's (what they are for) instead of hand-picked
/// ids: setting a key's timer again moves it, and a timer that fires names its key.
/// Kept in the snapshot; a new instance learns which are still pending from the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(bound(serialize = "K: Serialize", deserialize = "K: Deserialize<'de> + Ord"))]
pub struct Timers<K> {
    by_key: BTreeMap<K, TimerId>,
    by_id: BTreeMap<TimerId, K>,
}

impl<K: Ord + Clone> Default for Timers<K> {
    fn default() -> Self {
        Timers { by_key: BTreeMap::new(), by_id: BTreeMap::new() }
    }
}

impl<K: Ord + Clone> Timers<K> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Fires `key` after `after_ms` (moving its timer if one is pending).
    pub fn set(&mut self, ids: &mut Ids, key: K, after_ms: u64) -> Command {
        let timer = match self.by_key.get(&key) {
            Some(timer) => *timer,
            None => {
                let timer = ids.fresh();
                self.by_key.insert(key.clone(), timer);
                self.by_id.insert(timer, key);
                timer
            }
        };
        Command::TimerSet(TimerSet { timer, after_ms })
    }

    /// Cancels `key`'s timer, if one is pending.
    pub fn cancel(&mut self, key: &K) -> Option<Command> {
        let timer = self.by_key.remove(key)?;
        self.by_id.remove(&timer);
        Some(Command::TimerCancel(timer))
    }

    /// A timer fired: its key, if it was one of these (and is no longer pending).
    pub fn fired(&mut self, timer: TimerId) -> Option<K> {
        let key = self.by_id.remove(&timer)?;
        self.by_key.remove(&key);
        Some(key)
    }

    pub fn pending(&self, key: &K) -> bool {
        self.by_key.contains_key(key)
    }

    /// The timer id of `key`'s pending timer.
    pub fn id_of(&self, key: &K) -> Option<TimerId> {
        self.by_key.get(key).copied()
    }

    /// Takes over an earlier instance's timers: those the host still has pending stay;
    /// the keys of the others are returned (they fired, or were cancelled, while no
    /// instance of this policy heard it), so the policy can set them again.
    pub fn resume(&mut self, state: &HostState) -> Vec<K> {
        let pending: std::collections::BTreeSet<TimerId> =
            state.timers.iter().map(|(timer, _)| *timer).collect();
        let lost: Vec<TimerId> =
            self.by_id.keys().filter(|t| !pending.contains(t)).copied().collect();
        lost.into_iter()
            .filter_map(|timer| {
                let key = self.by_id.remove(&timer)?;
                self.by_key.remove(&key);
                Some(key)
            })
            .collect()
    }

    /// Timer ids of these, for checking that nothing else uses them.
    pub fn ids(&self) -> impl Iterator<Item = TimerId> + '_ {
        self.by_id.keys().copied()
    }
}

/// The HTTP requests in flight, in the world versions that have them.
fn requests(state: &HostState) -> impl Iterator<Item = u64> + '_ {
    #[cfg(not(feature = "wit-0-1-0"))]
    return state.requests.iter().copied();
    #[cfg(feature = "wit-0-1-0")]
    {
        let _ = state;
        std::iter::empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{PeerState, TrackerState};

    fn state(peers: &[u64], timers: &[u64]) -> HostState {
        HostState {
            trackers: vec![TrackerState { conn: 3, url: "ws://t".into(), open: true }],
            peers: peers
                .iter()
                .map(|&peer| PeerState { peer, open: true, serving: vec![] })
                .collect(),
            fetches: vec![9],
            requests: vec![],
            segments: vec![],
            timers: timers.iter().map(|&t| (t, 100)).collect(),
        }
    }

    #[test]
    fn ids_start_past_everything_the_host_and_the_last_snapshot_know() {
        let mut first = Ids::new();
        let a = first.fresh();
        let saved = first.clone();
        // Handed out after the snapshot, then the instance faulted.
        let lost: Vec<u64> = (0..1000).map(|_| first.fresh()).collect();
        let mut second = Ids::resume(Some(&saved), &state(&[40], &[]), 0);
        let b = second.fresh();
        assert!(b > a && b > 40 && lost.iter().all(|id| b > *id), "{b}");
        // A live id beyond the mark still wins.
        let live = saved.mark() + MARGIN + 10;
        assert!(Ids::resume(Some(&saved), &state(&[live], &[]), 0).fresh() > live);
        // An HTTP request in flight is a live id too.
        let request = HostState { requests: vec![live], ..state(&[], &[]) };
        assert!(Ids::resume(Some(&saved), &request, 0).fresh() > live);
        // Nothing saved: far past the host's ids, at a random place.
        let mut blind = Ids::resume(None, &state(&[40], &[]), 12345);
        assert!(blind.fresh() >= 40 + MARGIN + 12345);
        assert_ne!(
            Ids::resume(None, &state(&[], &[]), 1).fresh(),
            Ids::resume(None, &state(&[], &[]), 2).fresh()
        );
    }

    #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
    enum Key {
        Tick,
        Reload(usize),
    }

    #[test]
    fn timers_are_named_by_their_keys_and_taken_over_by_a_new_instance() {
        let mut ids = Ids::new();
        let mut timers = Timers::new();
        let Command::TimerSet(tick) = timers.set(&mut ids, Key::Tick, 500) else { panic!() };
        let Command::TimerSet(again) = timers.set(&mut ids, Key::Tick, 250) else { panic!() };
        assert_eq!(tick.timer, again.timer, "setting a pending key moves its timer");
        let Command::TimerSet(reload) = timers.set(&mut ids, Key::Reload(2), 100) else { panic!() };
        assert_ne!(reload.timer, tick.timer);
        assert_eq!(timers.fired(reload.timer), Some(Key::Reload(2)));
        assert_eq!(timers.fired(reload.timer), None, "fired once");
        assert_eq!(timers.fired(12345), None, "not one of these");

        let Command::TimerSet(reload) = timers.set(&mut ids, Key::Reload(2), 100) else { panic!() };
        // The next instance: the host still has the tick pending; the reload fired
        // while no instance heard it.
        let mut next: Timers<Key> = timers.clone();
        let lost = next.resume(&state(&[], &[tick.timer]));
        assert_eq!(lost, [Key::Reload(2)]);
        assert!(next.pending(&Key::Tick) && !next.pending(&Key::Reload(2)));
        assert_eq!(next.fired(tick.timer), Some(Key::Tick));
        assert_eq!(next.fired(reload.timer), None);
        assert_eq!(timers.cancel(&Key::Tick), Some(Command::TimerCancel(tick.timer)));
        assert_eq!(timers.cancel(&Key::Tick), None);
    }
}
