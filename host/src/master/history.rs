//! What the master remembers of its workers beyond their current reports: a short
//! history of uplink and peers for the monitor's charts.
//!
//! Pure bookkeeping with time passed in; it must never read a clock or a process.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use serde::Serialize;

/// How far back [`History`] reaches.
pub const HISTORY_SPAN: Duration = Duration::from_secs(600);

/// A worker that has not reported for this long is shown sending nothing, not its
/// last rate (workers report every second).
const SILENT_AFTER: Duration = Duration::from_secs(3);

/// One point of the monitor's charts.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Sample {
    /// Numbers samples in order, from 1: the cursor for `GET /history?after=`, which
    /// the wall clock could not be (it may step back).
    pub seq: u64,
    /// Wall-clock time, ms since the Unix epoch.
    pub at: u64,
    /// Upload of all workers, Mbit/s: each worker's rate between its last two reports.
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

/// What a worker looks like at a sample: its pid, when it last reported (None before
/// its first report), the bytes it had uploaded then, and its peers.
#[derive(Debug, Clone, Copy)]
pub struct WorkerReading {
    pub pid: u32,
    pub reported_at: Option<Instant>,
    pub uploaded: u64,
    pub peers: u32,
}

/// A worker's last report as the history saw it, and the rate it gave.
#[derive(Debug, Clone, Copy)]
struct LastReport {
    at: Instant,
    uploaded: u64,
    mbps: f64,
}

/// Uplink and peers over the last [`HISTORY_SPAN`].
#[derive(Debug, Default)]
pub struct History {
    samples: VecDeque<(Instant, Sample)>,
    last_reports: BTreeMap<u32, LastReport>,
    last_seq: u64,
}

impl History {
    /// Adds a sample. A worker's uplink is the rate between its last two reports, timed
    /// by when they arrived: workers report on their own clock, so bytes counted
    /// between this master's samples would alternate between nothing and double. A new
    /// worker starts at zero rather than with a spike of everything it ever sent.
    pub fn record(&mut self, now: Instant, at_ms: u64, workers: &[WorkerReading]) {
        let mut reports = BTreeMap::new();
        let per_worker: BTreeMap<String, WorkerSample> = workers
            .iter()
            .map(|w| {
                let last = self.last_reports.get(&w.pid).copied();
                let report = match (w.reported_at, last) {
                    (Some(at), Some(last)) if at > last.at => {
                        let seconds = at.duration_since(last.at).as_secs_f64();
                        let bytes = w.uploaded.saturating_sub(last.uploaded);
                        Some(LastReport {
                            at,
                            uploaded: w.uploaded,
                            mbps: bytes as f64 * 8.0 / seconds / 1e6,
                        })
                    }
                    (_, Some(last)) => Some(last),
                    (Some(at), None) => Some(LastReport { at, uploaded: w.uploaded, mbps: 0.0 }),
                    (None, None) => None,
                };
                if let Some(report) = report {
                    reports.insert(w.pid, report);
                }
                let uplink_mbps = report
                    .filter(|r| now.saturating_duration_since(r.at) <= SILENT_AFTER)
                    .map_or(0.0, |r| r.mbps);
                let sample = WorkerSample { uplink_mbps, peers: w.peers };
                (w.pid.to_string(), sample)
            })
            .collect();
        // Workers that are gone are forgotten with this.
        self.last_reports = reports;
        self.last_seq += 1;
        let sample = Sample {
            seq: self.last_seq,
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
    }

    /// The number of the newest sample (0 before the first).
    pub fn latest(&self) -> u64 {
        self.last_seq
    }

    /// Samples after the one numbered `after` (all of them without it), oldest first.
    pub fn after(&self, after: Option<u64>) -> Vec<Sample> {
        self.samples
            .iter()
            .map(|(_, s)| s)
            .filter(|s| after.is_none_or(|after| s.seq > after))
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(pid: u32, reported_at: Instant, uploaded: u64, peers: u32) -> WorkerReading {
        WorkerReading { pid, reported_at: Some(reported_at), uploaded, peers }
    }

    #[test]
    fn rates_come_from_bytes_between_reports_per_worker() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut history = History::default();
        history.record(t0, 1_000, &[reading(7, t0, 5_000_000, 3)]);
        // Worker 7's next report came 1 s after its first with 1.25 MB more (10 Mbit/s);
        // worker 9 is new.
        let t1 = t0 + ms(1_000);
        history.record(
            t1,
            2_000,
            &[reading(7, t0 + ms(1_000), 6_250_000, 4), reading(9, t1, 80_000_000, 2)],
        );
        let samples = history.after(None);
        assert_eq!(samples.len(), 2);
        assert_eq!(samples[0].uplink_mbps, 0.0, "no rate before a second report");
        assert_eq!(samples[0].peers, 3);
        let last = &samples[1];
        assert!((last.workers["7"].uplink_mbps - 10.0).abs() < 1e-9);
        assert_eq!(last.workers["9"].uplink_mbps, 0.0, "a new worker starts at zero");
        assert!((last.uplink_mbps - 10.0).abs() < 1e-9);
        assert_eq!(last.peers, 6);
        assert_eq!((samples[0].seq, last.seq), (1, 2));
        assert_eq!(history.after(Some(1)), vec![last.clone()]);
        assert!(history.after(Some(2)).is_empty());
    }

    #[test]
    fn a_sample_without_a_new_report_keeps_the_last_rate_instead_of_zero() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut history = History::default();
        history.record(t0, 0, &[reading(7, t0, 0, 1)]);
        history.record(t0 + s(1), 1, &[reading(7, t0 + s(1), 1_000_000, 1)]);
        // No report arrived between these two samples.
        history.record(t0 + s(2), 2, &[reading(7, t0 + s(1), 1_000_000, 1)]);
        // Then one with two seconds' worth.
        history.record(t0 + s(3), 3, &[reading(7, t0 + s(3), 3_000_000, 1)]);
        let rates: Vec<f64> = history.after(None).iter().map(|s| s.uplink_mbps).collect();
        assert_eq!(rates, vec![0.0, 8.0, 8.0, 8.0]);
    }

    #[test]
    fn a_worker_that_stops_reporting_is_shown_sending_nothing() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut history = History::default();
        history.record(t0, 0, &[reading(7, t0, 0, 1)]);
        history.record(t0 + s(1), 1, &[reading(7, t0 + s(1), 1_000_000, 1)]);
        history.record(t0 + s(4), 4, &[reading(7, t0 + s(1), 1_000_000, 1)]);
        history.record(t0 + s(5), 5, &[reading(7, t0 + s(1), 1_000_000, 1)]);
        let rates: Vec<f64> = history.after(None).iter().map(|s| s.uplink_mbps).collect();
        assert_eq!(rates, vec![0.0, 8.0, 8.0, 0.0]);
    }

    #[test]
    fn old_samples_fall_out_of_the_span() {
        let t0 = Instant::now();
        let mut history = History::default();
        history.record(t0, 0, &[]);
        history.record(t0 + HISTORY_SPAN, 1, &[]);
        history.record(t0 + HISTORY_SPAN + Duration::from_secs(1), 2, &[]);
        let kept: Vec<u64> = history.after(None).iter().map(|s| s.at).collect();
        assert_eq!(kept, vec![1, 2]);
    }
}
