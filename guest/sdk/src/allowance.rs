//! A token bucket with time passed in: how a policy keeps one sender (a viewer's
//! messages, a tracker's offers) from costing the others, without a clock of its own.
//!
//! Pure: no host calls.

use serde::{Deserialize, Serialize};

/// What a sender may still send at once, refilled at a rate up to a burst. Its
/// snapshot encoding is a pair `(f64, u64)`, as the default policy has always kept it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Allowance {
    left: f64,
    counted_ms: u64,
}

impl Allowance {
    /// A full bucket of `burst` at `now_ms`.
    pub fn full(burst: f64, now_ms: u64) -> Self {
        Allowance { left: burst, counted_ms: now_ms }
    }

    /// Takes one at `now_ms` after refilling `per_second` up to `burst`; false (and
    /// nothing taken) once the sender goes faster than that.
    pub fn take(&mut self, now_ms: u64, per_second: f64, burst: f64) -> bool {
        let elapsed = now_ms.saturating_sub(self.counted_ms) as f64 / 1000.0;
        self.counted_ms = now_ms.max(self.counted_ms);
        self.left = (self.left + elapsed * per_second).min(burst);
        if self.left < 1.0 {
            return false;
        }
        self.left -= 1.0;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_rate_and_nothing_more() {
        let mut allowance = Allowance::full(3.0, 0);
        assert!((0..3).all(|_| allowance.take(0, 10.0, 3.0)));
        assert!(!allowance.take(0, 10.0, 3.0), "the burst is spent");
        assert!(allowance.take(100, 10.0, 3.0), "one more after a tenth of a second");
        assert!(!allowance.take(100, 10.0, 3.0));
        // A long silence refills up to the burst, never past it.
        assert_eq!((0..10).filter(|_| allowance.take(60_000, 10.0, 3.0)).count(), 3);
        // A clock read earlier than the last (another instance's) takes nothing back.
        assert!(!allowance.take(10, 10.0, 3.0));
    }

    #[test]
    fn the_snapshot_encoding_is_a_pair() {
        let pair = postcard::to_allocvec(&(2.5f64, 7u64)).unwrap();
        let ours = postcard::to_allocvec(&Allowance { left: 2.5, counted_ms: 7 }).unwrap();
        assert_eq!(pair, ours);
    }
}
