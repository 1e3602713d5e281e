//! What the policy's parts share and hand over to the next instance: one id allocator,
//! the timers by what they are for, and the snapshot format.
//!
//! Pure: no host calls.

use serde::{Deserialize, Serialize};
use superpeer_guest::{Ids, Timers};

/// What each of the policy's timers is for.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Timer {
    /// Fetch the manifest again after a failure.
    Manifest,
    /// The seeder's heartbeat: announces and offers are planned, and offers expire.
    Reach,
    /// Reload a stream's playlist (its index).
    Reload(usize),
    /// Connect to a tracker again (its index in the seed's list).
    Reconnect(usize),
}

/// Ids and timers, for every part of the policy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Context {
    pub ids: Ids,
    pub timers: Timers<Timer>,
}

/// The first bytes of this policy's snapshots and their layout's version: a snapshot
/// without them (another policy's, or an older layout) is not read as one.
pub const SNAPSHOT_MAGIC: &[u8; 8] = b"pml-st02";
/// The layout before the shared segments crate, still read (`seeder::st01`).
const SNAPSHOT_MAGIC_ST01: &[u8; 8] = b"pml-st01";

/// Encodes `value` as this policy's snapshot.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    superpeer_guest::continuity::encode_snapshot(SNAPSHOT_MAGIC, value)
}

/// Reads a snapshot written by [`encode`]; `None` for anything else.
pub fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Option<T> {
    superpeer_guest::continuity::decode_snapshot(SNAPSHOT_MAGIC, bytes)
}

/// Reads a snapshot in the `pml-st01` layout; `None` for anything else.
pub fn decode_st01<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Option<T> {
    superpeer_guest::continuity::decode_snapshot(SNAPSHOT_MAGIC_ST01, bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshots_round_trip_and_nothing_else_is_read() {
        let mut ctx = Context::default();
        let _ = ctx.timers.set(&mut ctx.ids, Timer::Reload(3), 100);
        let bytes = encode(&ctx);
        assert_eq!(decode::<Context>(&bytes), Some(ctx.clone()));
        // What a test build appends after the state (see lib.rs) is not in the way.
        let mut marked = bytes.clone();
        marked.extend_from_slice(b"|trailer|");
        assert_eq!(decode::<Context>(&marked), Some(ctx));
        assert_eq!(decode::<Context>(&bytes[SNAPSHOT_MAGIC.len()..]), None, "no magic");
        assert_eq!(decode::<Context>(&[1, 2, 3, 4, 5, 6, 7, 8]), None, "another policy's");
        assert_eq!(decode::<Context>(b""), None);
    }
}
