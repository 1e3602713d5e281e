//! Segment bytes held in memory, by handle. The policy decides what to keep; the store
//! only holds what it is told and never hands a policy the bytes.

use std::collections::HashMap;

use bytes::Bytes;

use crate::policy::wire::SegmentHandle;

#[derive(Debug, Default)]
pub struct SegmentStore {
    segments: HashMap<SegmentHandle, Bytes>,
    next: SegmentHandle,
    bytes: u64,
}

impl SegmentStore {
    /// Keeps `bytes`; returns the handle that names them until removed.
    pub fn insert(&mut self, bytes: Bytes) -> SegmentHandle {
        self.next += 1;
        self.bytes += bytes.len() as u64;
        self.segments.insert(self.next, bytes);
        self.next
    }

    pub fn get(&self, handle: SegmentHandle) -> Option<&Bytes> {
        self.segments.get(&handle)
    }

    /// Drops a segment; false if there was none.
    pub fn remove(&mut self, handle: SegmentHandle) -> bool {
        match self.segments.remove(&handle) {
            Some(bytes) => {
                self.bytes -= bytes.len() as u64;
                true
            }
            None => false,
        }
    }

    /// Bytes held.
    pub fn bytes(&self) -> u64 {
        self.bytes
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
        let a = store.insert(Bytes::from_static(b"abc"));
        let b = store.insert(Bytes::from_static(b"de"));
        assert_ne!(a, b);
        assert_eq!(store.bytes(), 5);
        assert!(store.remove(a));
        assert!(!store.remove(a));
        let c = store.insert(Bytes::from_static(b"f"));
        assert!(c != a && c != b);
        assert_eq!((store.bytes(), store.len()), (3, 2));
        assert_eq!(store.get(b).map(|b| b.as_ref()), Some(&b"de"[..]));
    }
}
