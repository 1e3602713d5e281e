//! A worker's memory budget for segment bytes: what the store holds in memory and what
//! fetches in flight have read so far, together, never past the limit. A fetch takes
//! its bytes as they arrive and fails when the budget has no room; a segment kept in
//! memory keeps its share until it is evicted.
//!
//! Owns the count and the reservations (released when dropped, so a cancelled or
//! failed fetch gives its bytes back); never decides what to evict: the policy does,
//! hearing `fetch-failed` when the budget refused.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// The budget: its limit and the bytes taken.
#[derive(Debug)]
pub struct MemoryBudget {
    limit: u64,
    used: AtomicU64,
}

impl MemoryBudget {
    pub fn new(limit: u64) -> Arc<MemoryBudget> {
        Arc::new(MemoryBudget { limit, used: AtomicU64::new(0) })
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Bytes taken now.
    #[cfg(test)]
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// An empty reservation, to grow as bytes arrive.
    pub fn reservation(self: &Arc<Self>) -> Reservation {
        Reservation { budget: self.clone(), bytes: 0 }
    }
}

/// Bytes taken from a budget; given back when dropped.
#[derive(Debug)]
pub struct Reservation {
    budget: Arc<MemoryBudget>,
    bytes: u64,
}

impl Reservation {
    /// Takes `more` bytes; false (and nothing taken) if the budget has no room.
    pub fn grow(&mut self, more: u64) -> bool {
        let before = self.budget.used.fetch_add(more, Ordering::Relaxed);
        if before + more > self.budget.limit {
            self.budget.used.fetch_sub(more, Ordering::Relaxed);
            return false;
        }
        self.bytes += more;
        true
    }

    /// Grows to hold `at_most` bytes in all, or as much of it as the budget has room
    /// for; false (and nothing taken) without room for `at_least`.
    pub fn grow_to(&mut self, at_least: u64, at_most: u64) -> bool {
        let used = &self.budget.used;
        let mut before = used.load(Ordering::Relaxed);
        loop {
            let room = self.budget.limit.saturating_sub(before);
            let more = at_most.saturating_sub(self.bytes).min(room);
            if self.bytes + more < at_least {
                return false;
            }
            match used.compare_exchange_weak(
                before,
                before + more,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    self.bytes += more;
                    return true;
                }
                Err(now) => before = now,
            }
        }
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Gives back what is beyond `bytes`.
    pub fn shrink_to(&mut self, bytes: u64) {
        let given = self.bytes.saturating_sub(bytes);
        self.budget.used.fetch_sub(given, Ordering::Relaxed);
        self.bytes -= given;
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_stay_within_the_limit_and_give_back_when_dropped() {
        let budget = MemoryBudget::new(100);
        let mut a = budget.reservation();
        let mut b = budget.reservation();
        assert!(a.grow(60));
        assert!(!b.grow(41), "past the limit");
        assert!(b.grow(40));
        assert_eq!(budget.used(), 100);
        drop(a);
        assert_eq!(budget.used(), 40);
        assert!(b.grow(60));
        drop(b);
        assert_eq!(budget.used(), 0);

        // Growing to a size: all of it, or what there is room for, or nothing.
        let mut c = budget.reservation();
        assert!(c.grow_to(10, 30));
        assert_eq!(c.bytes(), 30);
        let mut d = budget.reservation();
        assert!(d.grow_to(50, 90));
        assert_eq!((d.bytes(), budget.used()), (70, 100), "what was left");
        assert!(!c.grow_to(31, 40), "no room");
        assert!(c.grow_to(20, 40), "holds enough already");
        assert_eq!(c.bytes(), 30);
        c.shrink_to(5);
        assert_eq!(budget.used(), 75);
    }
}
