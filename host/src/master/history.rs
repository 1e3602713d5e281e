//! What the master remembers of its workers beyond their current reports: counters that
//! survive a worker's exit (so totals never go backwards, as Prometheus counters must
//! not) and a short history of uplink and peers for the monitor's charts.
//!
//! Pure bookkeeping with time passed in; it must never read a clock or a process.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::ipc::WorkerReport;

/// How far back [`History`] reaches.
pub const HISTORY_SPAN: Duration = Duration::from_secs(600);

/// Counters of one worker, or summed over workers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Counters {
    /// Bytes of segments sent to viewers.
    pub uploaded: u64,
    /// Bytes fetched from the origin.
    pub downloaded: u64,
    /// Segments sent to a viewer to their last byte.
    pub segments_served: u64,
    /// Origin fetches that failed after their retries.
    pub fetch_errors: u64,
    /// Policy calls that faulted (trap, deadline, memory limit, bad output).
    pub policy_traps: u64,
    /// Times a policy was rolled back to its previous version after repeated faults.
    pub policy_rollbacks: u64,
    /// Hot swaps of the policy that took effect.
    pub policy_swaps: u64,
}

impl Counters {
    pub fn of(report: &WorkerReport) -> Self {
        Counters {
            uploaded: report.uploaded,
            downloaded: report.downloaded,
            segments_served: report.segments_served,
            fetch_errors: report.fetch_errors,
            policy_traps: report.policy.faults,
            policy_rollbacks: report.policy.rollbacks,
            policy_swaps: report.policy.swaps,
        }
    }
}

impl std::ops::Add for Counters {
    type Output = Counters;

    fn add(self, other: Counters) -> Counters {
        Counters {
            uploaded: self.uploaded + other.uploaded,
            downloaded: self.downloaded + other.downloaded,
            segments_served: self.segments_served + other.segments_served,
            fetch_errors: self.fetch_errors + other.fetch_errors,
            policy_traps: self.policy_traps + other.policy_traps,
            policy_rollbacks: self.policy_rollbacks + other.policy_rollbacks,
            policy_swaps: self.policy_swaps + other.policy_swaps,
        }
    }
}

impl std::iter::Sum for Counters {
    fn sum<I: Iterator<Item = Counters>>(iter: I) -> Counters {
        iter.fold(Counters::default(), |a, b| a + b)
    }
}

/// One point of the monitor's charts.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Sample {
    /// Wall-clock time, ms since the Unix epoch.
    pub at: u64,
    /// Upload of all workers since the previous sample, Mbit/s.
    pub uplink_mbps: f64,
    pub peers: u64,
    /// The same per worker, keyed by pid.
    pub workers: BTreeMap<String, WorkerSample>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkerSample {
    pub uplink_mbps: f64,
    pub peers: u32,
}

/// What a worker looks like at a sample: its pid, bytes uploaded so far and peers.
#[derive(Debug, Clone, Copy)]
pub struct WorkerReading {
    pub pid: u32,
    pub uploaded: u64,
    pub peers: u32,
}

/// Uplink and peers over the last [`HISTORY_SPAN`].
#[derive(Debug, Default)]
pub struct History {
    samples: VecDeque<(Instant, Sample)>,
    /// The previous reading's time and bytes uploaded per pid, for rates.
    previous: Option<(Instant, BTreeMap<u32, u64>)>,
}

impl History {
    /// Adds a sample; a worker's uplink is its bytes since the previous sample (a new
    /// worker's count starts at its first reading, so it never shows a spike).
    pub fn record(&mut self, now: Instant, at_ms: u64, workers: &[WorkerReading]) {
        let elapsed = self.previous.as_ref().map(|(t, _)| now.saturating_duration_since(*t));
        let mbps = |bytes: u64| match elapsed {
            Some(d) if !d.is_zero() => bytes as f64 * 8.0 / d.as_secs_f64() / 1e6,
            _ => 0.0,
        };
        let before = self.previous.as_ref().map(|(_, b)| b);
        let per_worker: BTreeMap<String, WorkerSample> = workers
            .iter()
            .map(|w| {
                let earlier = before.and_then(|b| b.get(&w.pid)).copied().unwrap_or(w.uploaded);
                let sample = WorkerSample {
                    uplink_mbps: mbps(w.uploaded.saturating_sub(earlier)),
                    peers: w.peers,
                };
                (w.pid.to_string(), sample)
            })
            .collect();
        let sample = Sample {
            at: at_ms,
            // Folded from +0.0: an empty `sum` of floats is -0.0.
            uplink_mbps: per_worker.values().fold(0.0, |sum, w| sum + w.uplink_mbps),
            peers: per_worker.values().map(|w| u64::from(w.peers)).sum(),
            workers: per_worker,
        };
        self.samples.push_back((now, sample));
        while self
            .samples
            .front()
            .is_some_and(|(t, _)| now.saturating_duration_since(*t) > HISTORY_SPAN)
        {
            self.samples.pop_front();
        }
        self.previous = Some((now, workers.iter().map(|w| (w.pid, w.uploaded)).collect()));
    }

    /// Samples taken after `since_ms` (all of them without it), oldest first.
    pub fn since(&self, since_ms: Option<u64>) -> Vec<Sample> {
        self.samples
            .iter()
            .map(|(_, s)| s)
            .filter(|s| since_ms.is_none_or(|since| s.at > since))
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(pid: u32, uploaded: u64, peers: u32) -> WorkerReading {
        WorkerReading { pid, uploaded, peers }
    }

    #[test]
    fn rates_come_from_bytes_between_samples_per_worker() {
        let t0 = Instant::now();
        let mut history = History::default();
        history.record(t0, 1_000, &[reading(7, 5_000_000, 3)]);
        // One second later worker 7 sent 1.25 MB more (10 Mbit/s); worker 9 is new.
        let t1 = t0 + Duration::from_secs(1);
        history.record(t1, 2_000, &[reading(7, 6_250_000, 4), reading(9, 80_000_000, 2)]);
        let samples = history.since(None);
        assert_eq!(samples.len(), 2);
        assert_eq!(samples[0].uplink_mbps, 0.0, "no rate before a second reading");
        assert_eq!(samples[0].peers, 3);
        let last = &samples[1];
        assert!((last.workers["7"].uplink_mbps - 10.0).abs() < 1e-9);
        assert_eq!(last.workers["9"].uplink_mbps, 0.0, "a new worker starts at zero");
        assert!((last.uplink_mbps - 10.0).abs() < 1e-9);
        assert_eq!(last.peers, 6);
        assert_eq!(history.since(Some(1_000)), vec![last.clone()]);
        assert!(history.since(Some(2_000)).is_empty());
    }

    #[test]
    fn old_samples_fall_out_of_the_span() {
        let t0 = Instant::now();
        let mut history = History::default();
        history.record(t0, 0, &[]);
        history.record(t0 + HISTORY_SPAN, 1, &[]);
        history.record(t0 + HISTORY_SPAN + Duration::from_secs(1), 2, &[]);
        let kept: Vec<u64> = history.since(None).iter().map(|s| s.at).collect();
        assert_eq!(kept, vec![1, 2]);
    }

    #[test]
    fn counters_sum_field_by_field() {
        let report = WorkerReport {
            uploaded: 10,
            downloaded: 20,
            segments_served: 3,
            fetch_errors: 1,
            ..WorkerReport::default()
        };
        let total: Counters = [Counters::of(&report), Counters::of(&report)].into_iter().sum();
        assert_eq!(total.uploaded, 20);
        assert_eq!(total.downloaded, 40);
        assert_eq!(total.segments_served, 6);
        assert_eq!(total.fetch_errors, 2);
    }
}
