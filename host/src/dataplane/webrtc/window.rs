//! A viewer's send window: how many bytes its DataChannel may hold unacknowledged
//! before the viewer's send queue waits, sized by the round trip to that viewer.
//!
//! Everything handed to a DataChannel is kept by the `rtc` crate until the viewer
//! acknowledges it, so the window is most of what a busy viewer costs in memory. A
//! fixed window is too small for a distant viewer: one 100 ms away was held to a
//! window per round trip (64 KiB: 5 Mbit/s). The window is therefore a round trip's
//! worth of [`WINDOW_RATE`], from the shortest round trip seen, within fixed bounds.
//!
//! A window that follows the path's own bandwidth does not work here: measured as BBR
//! does (delivery rate) or as TCP Vegas does (round trips beyond the shortest), a
//! viewer whose process is busy acknowledges in bursts that read as a fast path or a
//! queue by turns, and windows grew to the bound without serving anyone sooner (a
//! worker's viewers share its CPU, which is the limit when they are near).
//!
//! It owns that measurement and the bounds. It never reads the clock or touches the
//! connection: the send queue tells it what it handed over and what the DataChannel
//! still counts as outstanding, with the time.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// The smallest window. A viewer on a short path needs far less to be kept busy, but a
/// smaller one costs CPU: a segment then takes more round trips, each a wake-up and a
/// send of its own (16 KiB here cost 10-30% more CPU per GB for viewers of a 1 or
/// 4.2 Mbit/s stream, and 20-30% longer segment times, for 80 KB less per greedy
/// viewer, in runs side by side).
pub(super) const MIN_WINDOW: usize = 64 << 10;
/// The largest window, whatever the path: what one viewer can make the worker hold
/// (20 Mbit/s to a viewer 100 ms away).
pub(super) const MAX_WINDOW: usize = 256 << 10;
/// What a viewer may be sent at, in bytes a second, up to the bounds: 40 Mbit/s, ten
/// times a 4 Mbit/s stream, so a viewer fetches a segment in a tenth of its duration.
const WINDOW_RATE: f64 = 5e6;
/// How long the shortest round trip seen stands before a longer one may replace it (a
/// path that got longer, a viewer that moved), as BBR's.
const MIN_RTT_LIFETIME: Duration = Duration::from_secs(10);
/// Hand-overs remembered until they are acknowledged; past it, the last one grows (its
/// round trip then reads a little long).
const MAX_TRACKED: usize = 64;

/// Bytes handed to the DataChannel up to and including one message.
#[derive(Debug, Clone, Copy)]
struct HandedOver {
    /// Bytes handed over in all, this message's included.
    through: u64,
    at: Instant,
}

/// One viewer's send window.
#[derive(Debug)]
pub(super) struct SendWindow {
    handed_over: u64,
    acknowledged: u64,
    unacknowledged: VecDeque<HandedOver>,
    /// The shortest round trip seen, and when.
    min_rtt: Option<(Duration, Instant)>,
    limit: usize,
}

impl Default for SendWindow {
    fn default() -> Self {
        SendWindow {
            handed_over: 0,
            acknowledged: 0,
            unacknowledged: VecDeque::new(),
            min_rtt: None,
            limit: MIN_WINDOW,
        }
    }
}

impl SendWindow {
    /// Whether the DataChannel, with `outstanding` bytes unacknowledged, takes more.
    pub(super) fn has_room(&self, outstanding: usize) -> bool {
        outstanding < self.limit
    }

    /// The window now.
    #[cfg(test)]
    pub(super) fn limit(&self) -> usize {
        self.limit
    }

    /// `bytes` were handed to the DataChannel at `now`.
    pub(super) fn handed_over(&mut self, bytes: usize, now: Instant) {
        self.handed_over += bytes as u64;
        if self.unacknowledged.len() >= MAX_TRACKED
            && let Some(last) = self.unacknowledged.back_mut()
        {
            last.through = self.handed_over;
            return;
        }
        self.unacknowledged.push_back(HandedOver { through: self.handed_over, at: now });
    }

    /// The DataChannel counts `outstanding` bytes unacknowledged at `now`: the newest
    /// message acknowledged since the last look gives a round trip.
    pub(super) fn outstanding(&mut self, outstanding: usize, now: Instant) {
        // The channel's count only falls as the viewer acknowledges; a count above what
        // was handed over (a message of the library's own) tells nothing.
        let acknowledged = self.handed_over.saturating_sub(outstanding as u64);
        if acknowledged <= self.acknowledged {
            return;
        }
        self.acknowledged = acknowledged;
        let mut newest = None;
        while let Some(first) = self.unacknowledged.front()
            && first.through <= acknowledged
        {
            newest = self.unacknowledged.pop_front();
        }
        let Some(message) = newest else { return };
        let rtt = now.saturating_duration_since(message.at);
        if rtt.is_zero() {
            return;
        }
        if self.min_rtt.is_some_and(|(shortest, at)| {
            rtt > shortest && now.saturating_duration_since(at) <= MIN_RTT_LIFETIME
        }) {
            return;
        }
        self.min_rtt = Some((rtt, now));
        let window = WINDOW_RATE * rtt.as_secs_f64();
        self.limit = (window as usize).clamp(MIN_WINDOW, MAX_WINDOW);
    }
}

#[cfg(test)]
mod tests {
    use super::{MAX_TRACKED, MAX_WINDOW, MIN_WINDOW, SendWindow, WINDOW_RATE};
    use std::collections::VecDeque;
    use std::time::{Duration, Instant};

    /// A path of `rtt` that carries `rate` bytes a second: what the window lets out is
    /// acknowledged a round trip after the path has carried it. Returns the bytes
    /// acknowledged and the window, after `span` of a viewer taking all it is sent in
    /// 16 KiB messages (the default policy's).
    fn greedy_over(rtt: Duration, rate: f64, span: Duration) -> (u64, usize) {
        let message = 16 << 10;
        let start = Instant::now();
        let mut window = SendWindow::default();
        let mut now = start;
        // When each message's last byte is acknowledged, and its end.
        let mut in_flight: VecDeque<(Instant, u64)> = VecDeque::new();
        let (mut sent, mut acknowledged, mut path_free_at) = (0u64, 0u64, start);
        while now < start + span {
            while in_flight.front().is_some_and(|(at, _)| *at <= now) {
                acknowledged = in_flight.pop_front().unwrap().1;
            }
            window.outstanding((sent - acknowledged) as usize, now);
            while window.has_room((sent - acknowledged) as usize) {
                sent += message as u64;
                window.handed_over(message, now);
                path_free_at =
                    path_free_at.max(now) + Duration::from_secs_f64(message as f64 / rate);
                in_flight.push_back((path_free_at + rtt, sent));
            }
            now += Duration::from_micros(100);
        }
        (acknowledged, window.limit())
    }

    fn mbits(bytes: u64, span: Duration) -> f64 {
        bytes as f64 * 8.0 / span.as_secs_f64() / 1e6
    }

    #[test]
    fn a_viewer_on_a_short_path_has_the_smallest_window_and_is_kept_busy() {
        // 0.2 ms away, 200 Mbit/s.
        let span = Duration::from_secs(2);
        let (acknowledged, window) = greedy_over(Duration::from_micros(200), 25e6, span);
        assert_eq!(window, MIN_WINDOW);
        assert!(mbits(acknowledged, span) >= 180.0, "{:.0} Mbit/s", mbits(acknowledged, span));
    }

    #[test]
    fn a_distant_viewer_gets_a_round_trip_of_the_window_rate_within_the_bound() {
        // 20 ms away on 100 Mbit/s: a round trip of 40 Mbit/s (a fixed 64 KiB window
        // gave 26).
        let span = Duration::from_secs(10);
        let (acknowledged, window) = greedy_over(Duration::from_millis(20), 12.5e6, span);
        let expected = WINDOW_RATE * 0.020;
        assert!((expected..expected * 1.1).contains(&(window as f64)), "window {window}");
        assert!(mbits(acknowledged, span) >= 36.0, "{:.1} Mbit/s", mbits(acknowledged, span));

        // 100 ms away on 25 Mbit/s: the bound, 20 Mbit/s (a fixed 64 KiB gave 5).
        let (acknowledged, window) = greedy_over(Duration::from_millis(100), 3.125e6, span);
        assert_eq!(window, MAX_WINDOW);
        assert!(mbits(acknowledged, span) >= 18.0, "{:.1} Mbit/s", mbits(acknowledged, span));
    }

    #[test]
    fn a_shorter_round_trip_shrinks_the_window_at_once_and_a_longer_one_only_in_time() {
        let start = Instant::now();
        let mut window = SendWindow::default();
        let round_trip = |window: &mut SendWindow, at: Duration, rtt: Duration| {
            window.handed_over(1_000, start + at);
            window.outstanding(0, start + at + rtt);
        };
        round_trip(&mut window, Duration::ZERO, Duration::from_millis(20));
        assert_eq!(window.limit(), (WINDOW_RATE * 0.020) as usize);
        round_trip(&mut window, Duration::from_secs(1), Duration::from_millis(16));
        assert_eq!(window.limit(), (WINDOW_RATE * 0.016) as usize);
        // A longer round trip is a slow moment, until the shortest is old.
        round_trip(&mut window, Duration::from_secs(2), Duration::from_millis(40));
        assert_eq!(window.limit(), (WINDOW_RATE * 0.016) as usize);
        round_trip(&mut window, Duration::from_secs(12), Duration::from_millis(40));
        assert_eq!(window.limit(), (WINDOW_RATE * 0.040) as usize);
    }

    #[test]
    fn what_was_never_handed_over_or_is_not_newly_acknowledged_measures_nothing() {
        let now = Instant::now();
        let mut window = SendWindow::default();
        // The library's own bytes outstanding, nothing of ours: no measurement.
        window.outstanding(5_000, now + Duration::from_millis(5));
        assert!(window.min_rtt.is_none());
        window.handed_over(100_000, now);
        window.outstanding(100_000, now + Duration::from_millis(1));
        window.outstanding(150_000, now + Duration::from_millis(2));
        assert!(window.min_rtt.is_none());
        // Acknowledged at the very instant it was handed over: no round trip to read.
        window.outstanding(0, now);
        assert!(window.min_rtt.is_none());
        assert_eq!(window.limit(), MIN_WINDOW);
    }

    #[test]
    fn remembered_hand_overs_are_bounded_and_the_last_one_grows() {
        let now = Instant::now();
        let mut window = SendWindow::default();
        for n in 0..10_000u32 {
            window.handed_over(10, now + Duration::from_micros(n.into()));
        }
        assert_eq!(window.unacknowledged.len(), MAX_TRACKED);
        assert_eq!(window.unacknowledged.back().unwrap().through, 100_000);
        window.outstanding(0, now + Duration::from_millis(20));
        assert!(window.unacknowledged.is_empty());
        assert!(window.min_rtt.is_some());
    }
}
