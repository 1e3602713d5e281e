//! The segments a worker holds, by handle: bytes in memory, or a key into the disk cache.
//! The policy decides what to keep; the store only holds what it is told and never hands
//! a policy the bytes.

use std::collections::HashMap;

use bytes::Bytes;

use super::budget::Reservation;
use crate::policy::wire::SegmentHandle;

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
}

#[derive(Debug, Default)]
pub struct SegmentStore {
    /// Each segment with its share of the worker's memory budget, given back when it
    /// goes.
    segments: HashMap<SegmentHandle, (Held, Option<Reservation>)>,
    next: SegmentHandle,
    memory_bytes: u64,
}

impl SegmentStore {
    /// Keeps a segment; returns the handle that names it until removed.
    pub fn insert(&mut self, held: Held) -> SegmentHandle {
        self.insert_reserved(held, None)
    }

    /// Keeps a segment with its share of the memory budget.
    pub fn insert_reserved(&mut self, held: Held, share: Option<Reservation>) -> SegmentHandle {
        self.next += 1;
        if let Held::Memory(bytes) = &held {
            self.memory_bytes += bytes.len() as u64;
        }
        self.segments.insert(self.next, (held, share));
        self.next
    }

    pub fn get(&self, handle: SegmentHandle) -> Option<&Held> {
        self.segments.get(&handle).map(|(held, _)| held)
    }

    /// Drops a segment (and gives back its share of the budget); what it was, if there
    /// was one.
    pub fn remove(&mut self, handle: SegmentHandle) -> Option<Held> {
        let (held, _) = self.segments.remove(&handle)?;
        if let Held::Memory(bytes) = &held {
            self.memory_bytes -= bytes.len() as u64;
        }
        Some(held)
    }

    /// Bytes held in memory.
    pub fn memory_bytes(&self) -> u64 {
        self.memory_bytes
    }

    pub fn len(&self) -> usize {
        self.segments.len()
    }

    pub fn is_empty(&self) -> bool {
        self.segments.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_are_never_reused_and_sizes_add_up() {
        let mut store = SegmentStore::default();
        let a = store.insert(Held::Memory(Bytes::from_static(b"abc")));
        let b = store.insert(Held::Memory(Bytes::from_static(b"de")));
        assert_ne!(a, b);
        assert_eq!(store.memory_bytes(), 5);
        assert!(store.remove(a).is_some());
        assert!(store.remove(a).is_none());
        let c = store.insert(Held::Disk { key: "k".into(), size: 1000 });
        assert!(c != a && c != b);
        assert_eq!((store.memory_bytes(), store.len()), (2, 2), "disk bytes are not memory");
        assert_eq!(store.get(b), Some(&Held::Memory(Bytes::from_static(b"de"))));
        assert_eq!(store.get(c).map(Held::size), Some(1000));
    }
}
