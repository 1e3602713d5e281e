//! The limits a policy runs under, one validated struct.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::dataplane::MAX_DATACHANNEL_MESSAGE;

/// Every limit the host enforces on policies. Defaults suit a worker that seeds one
/// channel; each is checked by [`PolicyLimits::validate`] at start-up.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PolicyLimits {
    /// Longest one `handle` call may run before it is interrupted.
    #[serde(with = "millis")]
    pub call_deadline: Duration,
    /// What a `handle` call's deadline grows by per MiB of payload it is handed
    /// (`wire::payload_bytes`): reading a 2 MiB playlist takes longer than answering a
    /// message, and a policy must not fault for an input the host let through.
    #[serde(with = "millis")]
    pub deadline_per_input_mib: Duration,
    /// Longest `init`, `describe` or `snapshot` may run. `init` may parse a snapshot and
    /// `snapshot` writes the whole state, so both take time in proportion to it (a
    /// flood of offers makes a 170 KB snapshot), which `call_deadline` is not sized for.
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
            call_deadline: Duration::from_millis(5),
            deadline_per_input_mib: Duration::from_millis(20),
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
            max_pending_offers: 1024,
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
    fn limits_read_from_json_in_milliseconds() {
        let limits: PolicyLimits = serde_json::from_str(r#"{"call_deadline": 20}"#).unwrap();
        assert_eq!(limits.call_deadline, Duration::from_millis(20));
        assert!(serde_json::from_str::<PolicyLimits>(r#"{"no_such": 1}"#).is_err());
    }
}
