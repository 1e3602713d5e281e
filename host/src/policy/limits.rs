//! The limits a policy runs under, one validated struct.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::dataplane::MAX_DATACHANNEL_MESSAGE;

/// Every limit the host enforces on policies. Defaults suit a worker that seeds one
/// channel; each is checked by [`PolicyLimits::validate`] at start-up.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PolicyLimits {
    /// Longest one `handle` call may run before it is interrupted. The same work costs
    /// more CPU time on a busy machine: on two cores shared with browsers playing
    /// video, single events took the SwarmCloud policy up to 4 ms, against a few
    /// microseconds on an idle one.
    #[serde(with = "millis")]
    pub call_deadline: Duration,
    /// What a `handle` call's deadline grows by per MiB of payload it is handed
    /// (`wire::payload_bytes`): reading a 2 MiB playlist takes longer than answering a
    /// message, and a policy must not fault for an input the host let through.
    #[serde(with = "millis")]
    pub deadline_per_input_mib: Duration,
    /// What a `handle` call's deadline grows by per thousand events it is handed: each
    /// costs the host its conversion and the policy its decision, and the busiest turns
    /// (a flood of offers, a thousand viewers asking at once, the backlog a restart
    /// hands over) are exactly those of a loaded machine, where a fault would hurt most.
    #[serde(with = "millis")]
    pub deadline_per_thousand_events: Duration,
    /// Longest `init`, `describe` or `snapshot` may run. `init` may parse a snapshot and
    /// `snapshot` writes the whole state, so both take time in proportion to it (a
    /// flood of offers makes a 170 KB snapshot), which `call_deadline` is not sized for.
    /// An instance's first `handle` call (its `started` turn, where it takes over what
    /// it restored: playlists, segments, every viewer) starts from it too.
    #[serde(with = "millis")]
    pub init_deadline: Duration,
    /// Most linear memory one instance may grow to, in bytes; growing past it traps.
    pub memory_bytes: usize,
    /// Most commands one `handle` call may return; more is a fault.
    pub max_commands_per_call: usize,
    /// Most bytes the host copies out of one call (commands, log lines); more is a
    /// fault.
    pub max_output_bytes: usize,
    /// Most events handed to one `handle` call; a larger turn is split.
    pub max_events_per_call: usize,
    /// Most payload bytes (texts, messages) handed to one `handle` call; a larger turn
    /// is split (a single larger event still goes alone).
    pub max_input_bytes: usize,
    /// Longest tracker text frame or SDP a command may carry, in bytes.
    pub max_text_bytes: usize,
    /// Longest message `peer-send` may carry, in bytes.
    pub max_message_bytes: usize,
    /// Longest URL a command may carry, in bytes.
    pub max_url_bytes: usize,
    /// Largest DataChannel message a serve may use, in bytes.
    pub max_chunk_bytes: u32,
    /// Most tracker connections open or opening at once.
    pub max_trackers: usize,
    /// Most fetches in flight at once.
    pub max_fetches: usize,
    /// Most HTTP requests to trackers in flight at once.
    pub max_requests: usize,
    /// Most offers of the policy's own waiting for an answer at once. They do not count
    /// as connections (`maxConnections`) until answered: most offers a tracker relays
    /// reach viewers that are already connected, or nobody, and are never answered.
    pub max_pending_offers: usize,
    /// Peers answered (or whose answer was taken) but not open yet, beyond the seed's
    /// `maxConnections`: only open DataChannels count as viewers, and an offer costs
    /// its sender nothing, so a policy answers more than it keeps.
    pub max_connecting_peers: usize,
    /// Most timers pending at once.
    pub max_timers: usize,
    /// Longest delay a timer may be set for.
    #[serde(with = "millis")]
    pub max_timer_delay: Duration,
    /// Most log lines one call may write; further lines are counted and dropped.
    pub max_log_lines_per_call: u32,
    /// Most log lines an instance may write per second of worker time.
    pub max_log_lines_per_second: u32,
    /// Longest log line, in bytes; longer lines are cut.
    pub max_log_line_bytes: usize,
    /// Most events held while no instance runs (during a restart back-off); the oldest
    /// are dropped past it.
    pub max_pending_events: usize,
    /// How often the running instance's state is snapshotted, for restarts after a fault.
    #[serde(with = "millis")]
    pub snapshot_interval: Duration,
    /// Largest snapshot kept, in bytes; a larger one is a fault.
    pub max_snapshot_bytes: usize,
    /// First wait before restarting a faulted instance; doubles on each further fault.
    #[serde(with = "millis")]
    pub restart_backoff: Duration,
    /// Longest wait between restarts.
    #[serde(with = "millis")]
    pub max_restart_backoff: Duration,
    /// This many faults within `rollback_window` roll back to the previous policy.
    pub rollback_after_faults: usize,
    #[serde(with = "millis")]
    pub rollback_window: Duration,
    /// Largest component accepted, in bytes.
    pub max_component_bytes: usize,
    /// Most instances alive at once in this process (pooling allocator slots). Each
    /// runner holds one, plus one for a swap in progress.
    pub max_instances: u32,
}

impl Default for PolicyLimits {
    fn default() -> Self {
        PolicyLimits {
            call_deadline: Duration::from_millis(10),
            deadline_per_input_mib: Duration::from_millis(20),
            deadline_per_thousand_events: Duration::from_millis(50),
            init_deadline: Duration::from_millis(100),
            memory_bytes: 64 << 20,
            max_commands_per_call: 4096,
            max_output_bytes: 8 << 20,
            max_events_per_call: 1024,
            max_input_bytes: 1 << 20,
            max_text_bytes: 64 << 10,
            max_message_bytes: 64 << 10,
            max_url_bytes: 4096,
            max_chunk_bytes: 64 << 10,
            max_trackers: 32,
            max_fetches: 256,
            max_requests: 16,
            max_pending_offers: 4096,
            max_connecting_peers: 128,
            max_timers: 4096,
            max_timer_delay: Duration::from_secs(24 * 3600),
            max_log_lines_per_call: 64,
            max_log_lines_per_second: 200,
            max_log_line_bytes: 1024,
            max_pending_events: 16_384,
            snapshot_interval: Duration::from_secs(1),
            max_snapshot_bytes: 16 << 20,
            restart_backoff: Duration::from_millis(50),
            max_restart_backoff: Duration::from_secs(10),
            rollback_after_faults: 3,
            rollback_window: Duration::from_secs(60),
            max_component_bytes: 32 << 20,
            max_instances: 32,
        }
    }
}

/// A limit that makes no sense, named by its field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("policy limit `{field}` {problem}")]
pub struct LimitError {
    pub field: &'static str,
    pub problem: String,
}

impl PolicyLimits {
    pub fn validate(&self) -> Result<(), LimitError> {
        fn check(ok: bool, field: &'static str, problem: &str) -> Result<(), LimitError> {
            if ok { Ok(()) } else { Err(LimitError { field, problem: problem.to_string() }) }
        }
        let ms = Duration::from_millis;
        check(
            (ms(1)..=ms(10_000)).contains(&self.call_deadline),
            "call_deadline",
            "must be between 1 ms and 10 s",
        )?;
        check(
            (self.call_deadline..=ms(60_000)).contains(&self.init_deadline),
            "init_deadline",
            "must be at least call_deadline and at most 60 s",
        )?;
        check(
            (1 << 20..=4 << 30).contains(&self.memory_bytes),
            "memory_bytes",
            "must be between 1 MiB and 4 GiB",
        )?;
        check(self.max_commands_per_call >= 1, "max_commands_per_call", "must be at least 1")?;
        check(self.max_output_bytes >= 64 << 10, "max_output_bytes", "must be at least 64 KiB")?;
        check(self.max_events_per_call >= 1, "max_events_per_call", "must be at least 1")?;
        check(self.max_input_bytes >= 64 << 10, "max_input_bytes", "must be at least 64 KiB")?;
        check(self.max_text_bytes >= 1024, "max_text_bytes", "must be at least 1 KiB")?;
        check(
            (1024..=MAX_DATACHANNEL_MESSAGE as usize).contains(&self.max_message_bytes),
            "max_message_bytes",
            "must be between 1 KiB and 64 KiB (the DataChannel message limit)",
        )?;
        check(self.max_url_bytes >= 64, "max_url_bytes", "must be at least 64")?;
        check(
            (1024..=MAX_DATACHANNEL_MESSAGE).contains(&self.max_chunk_bytes),
            "max_chunk_bytes",
            "must be between 1 KiB and 64 KiB (the DataChannel message limit)",
        )?;
        check(
            self.deadline_per_input_mib <= Duration::from_secs(1),
            "deadline_per_input_mib",
            "must be at most 1 s",
        )?;
        check(
            self.deadline_per_thousand_events <= Duration::from_secs(10),
            "deadline_per_thousand_events",
            "must be at most 10 s",
        )?;
        check(self.max_timers >= 1, "max_timers", "must be at least 1")?;
        check(self.max_fetches >= 1, "max_fetches", "must be at least 1")?;
        check(self.max_requests >= 1, "max_requests", "must be at least 1")?;
        check(self.max_pending_offers >= 1, "max_pending_offers", "must be at least 1")?;
        check(self.max_trackers >= 1, "max_trackers", "must be at least 1")?;
        check(self.max_pending_events >= 1, "max_pending_events", "must be at least 1")?;
        check(
            self.restart_backoff <= self.max_restart_backoff,
            "restart_backoff",
            "must not exceed max_restart_backoff",
        )?;
        check(self.rollback_after_faults >= 1, "rollback_after_faults", "must be at least 1")?;
        check(
            self.max_instances >= 2,
            "max_instances",
            "must be at least 2 (one running, one swapping in)",
        )?;
        Ok(())
    }

    /// The deadline of a `handle` call handed `events` events carrying `payload` bytes;
    /// `starting` when the call is an instance's first, its `started` turn.
    pub fn handle_deadline(&self, events: usize, payload: usize, starting: bool) -> Duration {
        let base = if starting { self.init_deadline } else { self.call_deadline };
        // Multiplied before divided: a rate under 1 ms per unit still counts.
        let per_input = self.deadline_per_input_mib.as_nanos() * payload as u128 / (1 << 20);
        let per_event = self.deadline_per_thousand_events.as_nanos() * events as u128 / 1000;
        let extra = u64::try_from(per_input + per_event).unwrap_or(u64::MAX);
        base.saturating_add(Duration::from_nanos(extra))
    }
}

mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(value.as_millis() as u64)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        u64::deserialize(deserializer).map(Duration::from_millis)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        PolicyLimits::default().validate().unwrap();
    }

    #[test]
    fn a_bad_limit_is_named() {
        let limits = PolicyLimits { memory_bytes: 10, ..PolicyLimits::default() };
        let error = limits.validate().unwrap_err();
        assert_eq!(error.field, "memory_bytes");
        assert!(error.to_string().contains("memory_bytes"), "{error}");
    }

    #[test]
    fn a_call_has_more_time_for_more_events_and_more_payload_and_its_first_turn_the_most() {
        let ms = Duration::from_millis;
        let limits = PolicyLimits::default();
        assert_eq!(limits.handle_deadline(1, 0, false), ms(10) + Duration::from_micros(50));
        // A whole batch of small events: 1,024 of them are 51 ms more.
        assert_eq!(limits.handle_deadline(1024, 0, false), ms(10) + Duration::from_micros(51_200));
        // A 2 MiB playlist alone: 40 ms more.
        assert_eq!(limits.handle_deadline(0, 2 << 20, false), ms(50));
        // The first turn of an instance takes over its state, as init reads it.
        assert_eq!(limits.handle_deadline(0, 0, true), ms(100));
        let none = PolicyLimits {
            deadline_per_input_mib: Duration::ZERO,
            deadline_per_thousand_events: Duration::ZERO,
            ..limits
        };
        assert_eq!(none.handle_deadline(1024, 1 << 20, false), ms(10));
    }

    #[test]
    fn limits_read_from_json_in_milliseconds() {
        let limits: PolicyLimits = serde_json::from_str(r#"{"call_deadline": 20}"#).unwrap();
        assert_eq!(limits.call_deadline, Duration::from_millis(20));
        assert!(serde_json::from_str::<PolicyLimits>(r#"{"no_such": 1}"#).is_err());
    }
}
