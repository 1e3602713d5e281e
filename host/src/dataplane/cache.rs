//! The segments a worker holds, by handle, wherever their bytes are: in memory (with
//! their share of the memory budget) or in the disk cache under a key, with the disk
//! segments read lately kept at hand and the disk reads in flight for serves.
//!
//! This is the one place that answers "where are this segment's bytes, and how does a
//! serve get them". It is pure: it never touches a file (disk reads are asked for and
//! their results handed in) and never hands a policy the bytes. The policy decides what
//! to keep; the cache holds what it is told.

use std::collections::{HashMap, VecDeque};

use bytes::Bytes;

use super::budget::Reservation;
use crate::policy::wire::{CacheTier, SegmentHandle};

/// Where a segment's bytes are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Held {
    Memory(Bytes),
    /// In the disk cache under this key; read back when served.
    Disk {
        key: String,
        size: u64,
    },
}

impl Held {
    pub fn size(&self) -> u64 {
        match self {
            Held::Memory(bytes) => bytes.len() as u64,
            Held::Disk { size, .. } => *size,
        }
    }

    pub fn tier(&self) -> CacheTier {
        match self {
            Held::Memory(_) => CacheTier::Memory,
            Held::Disk { .. } => CacheTier::Disk,
        }
    }
}

/// How a serve gets a segment's bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum ForServe {
    /// Not held (evicted, or never was).
    Gone,
    Ready(Bytes),
    /// Being read from disk: the serve waits for [`SegmentCache::read_done`]. `read`
    /// is the key to start reading, when this serve is the first to wait for it.
    Reading {
        read: Option<String>,
    },
}

/// One worker's segments.
#[derive(Debug, Default)]
pub struct SegmentCache {
    /// Each segment with its share of the worker's memory budget, given back when it
    /// goes.
    segments: HashMap<SegmentHandle, (Held, Option<Reservation>)>,
    /// Handles issued so far: the next one is one more, so none is ever reused.
    issued: u64,
    memory_bytes: u64,
    at_hand: AtHand,
    /// Disk reads in flight, by key, and the segments whose serves wait for each: one
    /// read per key however many viewers wait.
    reading: HashMap<String, Vec<SegmentHandle>>,
}

impl SegmentCache {
    /// Keeps a fetched segment: on disk when it was written there (its bytes kept at
    /// hand, as the next serve is likely soon), else in memory on its share of the
    /// budget. Returns its handle.
    pub fn keep_fetched(
        &mut self,
        bytes: Bytes,
        on_disk: Option<String>,
        reservation: Reservation,
    ) -> SegmentHandle {
        match on_disk {
            Some(key) => {
                let size = bytes.len() as u64;
                self.at_hand.put(key.clone(), bytes);
                self.insert(Held::Disk { key, size }, None)
            }
            None => self.insert(Held::Memory(bytes), Some(reservation)),
        }
    }

    /// Keeps a segment found in the disk cache (its bytes are checked when served).
    pub fn keep_on_disk(&mut self, key: String, size: u64) -> SegmentHandle {
        self.insert(Held::Disk { key, size }, None)
    }

    fn insert(&mut self, held: Held, share: Option<Reservation>) -> SegmentHandle {
        self.issued += 1;
        let handle = SegmentHandle(self.issued);
        if let Held::Memory(bytes) = &held {
            self.memory_bytes += bytes.len() as u64;
        }
        self.segments.insert(handle, (held, share));
        handle
    }

    pub fn get(&self, handle: SegmentHandle) -> Option<&Held> {
        self.segments.get(&handle).map(|(held, _)| held)
    }

    /// How a serve of `handle` gets its bytes.
    pub fn for_serve(&mut self, handle: SegmentHandle) -> ForServe {
        match self.segments.get(&handle) {
            None => ForServe::Gone,
            Some((Held::Memory(bytes), _)) => ForServe::Ready(bytes.clone()),
            Some((Held::Disk { key, .. }, _)) => {
                if let Some(bytes) = self.at_hand.get(key) {
                    return ForServe::Ready(bytes);
                }
                match self.reading.get_mut(key) {
                    Some(waiting) => {
                        if !waiting.contains(&handle) {
                            waiting.push(handle);
                        }
                        ForServe::Reading { read: None }
                    }
                    None => {
                        self.reading.insert(key.clone(), vec![handle]);
                        ForServe::Reading { read: Some(key.clone()) }
                    }
                }
            }
        }
    }

    /// A disk read finished: the segments whose serves waited for it, and of those the
    /// ones no longer held. Without bytes (the copy is gone or damaged: another worker
    /// or the cap evicted it, or the disk failed) every segment waiting is dropped; with
    /// them, the bytes stay at hand.
    pub fn read_done(
        &mut self,
        key: String,
        bytes: Option<&Bytes>,
    ) -> (Vec<SegmentHandle>, Vec<SegmentHandle>) {
        let waiting = self.reading.remove(&key).unwrap_or_default();
        let evicted = match bytes {
            Some(bytes) => {
                self.at_hand.put(key, bytes.clone());
                Vec::new()
            }
            None => waiting.iter().copied().filter(|h| self.remove(*h).is_some()).collect(),
        };
        (waiting, evicted)
    }

    /// Drops a segment (and gives back its share of the budget); what it was, if there
    /// was one. A disk copy stays: other workers may hold it, and the disk cache's cap
    /// bounds the disk.
    pub fn remove(&mut self, handle: SegmentHandle) -> Option<Held> {
        let (held, _) = self.segments.remove(&handle)?;
        if let Held::Memory(bytes) = &held {
            self.memory_bytes -= bytes.len() as u64;
        }
        Some(held)
    }

    /// Segment bytes in memory, disk segments kept at hand included.
    pub fn memory_bytes(&self) -> u64 {
        self.memory_bytes + self.at_hand.bytes()
    }

    /// Bytes of the segments held in memory, on the memory budget (disk segments kept
    /// at hand are not).
    pub fn budgeted_bytes(&self) -> u64 {
        self.memory_bytes
    }

    pub fn len(&self) -> usize {
        self.segments.len()
    }

    pub fn is_empty(&self) -> bool {
        self.segments.is_empty()
    }
}

/// Disk segments at hand in memory: the most recently used within [`Self::BUDGET`],
/// and beyond it every one a viewer is being sent (so viewers sent the same segment at
/// once share one copy). Without it each serve read and hashed its own copy: at a
/// hundred viewers a hundred copies of the same segment, and with viewers cycling
/// through more segments than a fixed count kept, a read for every serve.
#[derive(Debug, Default)]
struct AtHand(VecDeque<(String, Bytes)>);

impl AtHand {
    /// Bytes kept, unless segments being sent take more.
    const BUDGET: u64 = 32 << 20;

    fn get(&mut self, key: &str) -> Option<Bytes> {
        let at = self.0.iter().position(|(k, _)| k == key)?;
        let entry = self.0.remove(at)?;
        let bytes = entry.1.clone();
        self.0.push_back(entry);
        Some(bytes)
    }

    fn put(&mut self, key: String, bytes: Bytes) {
        self.0.retain(|(k, _)| *k != key);
        self.0.push_back((key, bytes));
        // Least recently used first; a segment still being sent costs nothing to keep
        // (its bytes are held by the serve anyway) and stays shareable.
        let mut total = self.bytes();
        let mut at = 0;
        while total > Self::BUDGET && at < self.0.len() {
            if self.0[at].1.is_unique() {
                total -= self.0[at].1.len() as u64;
                self.0.remove(at);
            } else {
                at += 1;
            }
        }
    }

    fn bytes(&self) -> u64 {
        self.0.iter().map(|(_, bytes)| bytes.len() as u64).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::budget::MemoryBudget;

    fn segment(n: u8) -> Bytes {
        Bytes::from(vec![n; 8 << 20])
    }

    #[test]
    fn handles_are_never_reused_and_sizes_add_up() {
        let budget = MemoryBudget::new(1 << 20);
        let mut cache = SegmentCache::default();
        let a = cache.keep_fetched(Bytes::from_static(b"abc"), None, budget.reservation());
        let b = cache.keep_fetched(Bytes::from_static(b"de"), None, budget.reservation());
        assert_ne!(a, b);
        assert_eq!(cache.memory_bytes(), 5);
        assert!(cache.remove(a).is_some());
        assert!(cache.remove(a).is_none());
        let c = cache.keep_on_disk("k".into(), 1000);
        assert!(c != a && c != b);
        assert_eq!((cache.memory_bytes(), cache.len()), (2, 2), "disk bytes are not memory");
        assert_eq!(cache.get(b), Some(&Held::Memory(Bytes::from_static(b"de"))));
        assert_eq!(cache.get(c).map(Held::size), Some(1000));
    }

    #[test]
    fn a_disk_segment_is_read_once_for_every_serve_waiting_and_then_kept_at_hand() {
        let mut cache = SegmentCache::default();
        let one = cache.keep_on_disk("k".into(), 3);
        let two = cache.keep_on_disk("k".into(), 3);
        assert_eq!(cache.for_serve(one), ForServe::Reading { read: Some("k".into()) });
        assert_eq!(cache.for_serve(two), ForServe::Reading { read: None }, "one read per key");
        assert_eq!(cache.for_serve(one), ForServe::Reading { read: None });
        let bytes = Bytes::from_static(b"abc");
        assert_eq!(cache.read_done("k".into(), Some(&bytes)), (vec![one, two], vec![]));
        assert_eq!(cache.for_serve(two), ForServe::Ready(bytes));
        assert_eq!(cache.for_serve(SegmentHandle(99)), ForServe::Gone);

        // A copy that is gone takes its segments with it.
        let three = cache.keep_on_disk("gone".into(), 3);
        assert!(matches!(cache.for_serve(three), ForServe::Reading { read: Some(_) }));
        let four = cache.keep_on_disk("gone".into(), 3);
        assert_eq!(cache.for_serve(four), ForServe::Reading { read: None });
        cache.remove(four);
        assert_eq!(cache.read_done("gone".into(), None), (vec![three, four], vec![three]));
        assert_eq!(cache.for_serve(three), ForServe::Gone);
        assert_eq!(cache.len(), 2);
    }

    #[test]
    fn segments_at_hand_keep_the_recent_within_budget_and_all_being_sent() {
        let mut kept = AtHand::default();
        // Eight 8 MiB segments: four fit the 32 MiB budget.
        let sending = segment(0);
        kept.put("0".into(), sending.clone());
        for n in 1..8 {
            kept.put(n.to_string(), segment(n));
        }
        assert!(
            kept.get("0").is_some_and(|b| b.as_ptr() == sending.as_ptr()),
            "in use: kept, shared"
        );
        assert!(kept.get("1").is_none() && kept.get("3").is_none(), "oldest unused went first");
        assert!((5..8).all(|n| kept.get(&n.to_string()).is_some()));
        assert_eq!(kept.bytes(), AtHand::BUDGET);

        // Used again, a segment becomes the most recent: the next put evicts another.
        assert!(kept.get("5").is_some());
        drop(sending);
        kept.put("8".into(), segment(8));
        assert!(kept.get("5").is_some() && kept.get("8").is_some());
        assert!(kept.get("0").is_none(), "no longer sent and least recently used");
        assert_eq!(kept.bytes(), AtHand::BUDGET);

        // Segments being sent stay, whatever the budget.
        let all: Vec<Bytes> = (10..20).map(segment).collect();
        for (n, bytes) in all.iter().enumerate() {
            kept.put(format!("s{n}"), bytes.clone());
        }
        assert_eq!(kept.bytes(), 10 * (8 << 20));
    }
}
