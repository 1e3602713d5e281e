//! Test policy that misbehaves on request, to prove the host contains it.
//!
//! The setting `mode` picks the misbehaviour (`loop`, `memory`, `panic`, `flood`,
//! `bulk`, `logs`, `snapshot`, `reject`, `slow`) and `when` picks the moment: `init`,
//! `snapshot`, or `handle` (the default) on any `timer-fired` event. Other events are
//! answered politely, so a test can see the instance working before it misbehaves.

use superpeer_guest::{
    Command, Event, HostState, Policy, PolicyInfo, SeedConfig, TimerSet, TrackerSend, host,
};

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Loop,
    Memory,
    Panic,
    Flood,
    Bulk,
    Logs,
    /// Panics when asked for a snapshot.
    Snapshot,
    Reject,
    /// Works far longer than a millisecond, then carries on as if nothing happened: a
    /// large state being written out.
    Slow,
}

struct Misbehave {
    mode: Mode,
    in_snapshot: bool,
}

impl Mode {
    fn act(self) -> Vec<Command> {
        match self {
            Mode::Loop => loop {
                std::hint::black_box(());
            },
            Mode::Memory => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            Mode::Panic => panic!("misbehave: panicking on purpose"),
            // Past the count limit, within what the host copies out of one call (so
            // the count is what faults).
            Mode::Flood => (0..10_000u64)
                .map(|timer| Command::TimerSet(TimerSet { timer, after_ms: 1 }))
                .collect(),
            // 12 MiB of tracker text in 12 commands: each within the per-command limit
            // once checked, but more than the host copies out of one call.
            Mode::Bulk => (0..12u64)
                .map(|conn| Command::TrackerSend(TrackerSend { conn, text: "x".repeat(1 << 20) }))
                .collect(),
            Mode::Logs => {
                for i in 0..10_000 {
                    host::error(&format!("line {i}\nforged: second line\u{1b}[31m"));
                }
                Vec::new()
            }
            Mode::Slow => {
                let mut x = 1u64;
                for i in 0..200_000_000u64 {
                    x = std::hint::black_box(x.wrapping_mul(6_364_136_223_846_793_005) ^ i);
                }
                std::hint::black_box(x);
                Vec::new()
            }
            Mode::Snapshot | Mode::Reject => Vec::new(),
        }
    }
}

impl Policy for Misbehave {
    fn describe() -> PolicyInfo {
        PolicyInfo { name: "misbehave".into(), version: "0.0.1".into() }
    }

    fn init(config: SeedConfig, _: Option<Vec<u8>>, _: HostState) -> Result<Self, String> {
        let setting =
            |key: &str| config.settings.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str());
        let mode = match setting("mode") {
            Some("loop") => Mode::Loop,
            Some("memory") => Mode::Memory,
            Some("panic") => Mode::Panic,
            Some("flood") => Mode::Flood,
            Some("bulk") => Mode::Bulk,
            Some("logs") => Mode::Logs,
            Some("snapshot") => Mode::Snapshot,
            Some("reject") => Mode::Reject,
            Some("slow") => Mode::Slow,
            other => return Err(format!("unknown mode {other:?}")),
        };
        if setting("when") == Some("init") {
            if mode == Mode::Reject {
                return Err("rejecting on purpose".into());
            }
            mode.act();
        }
        Ok(Misbehave { mode, in_snapshot: setting("when") == Some("snapshot") })
    }

    fn handle(&mut self, events: Vec<Event>) -> Vec<Command> {
        if !self.in_snapshot && events.iter().any(|e| matches!(e, Event::TimerFired(_))) {
            return self.mode.act();
        }
        Vec::new()
    }

    fn snapshot(&self) -> Vec<u8> {
        if self.mode == Mode::Snapshot {
            panic!("misbehave: refusing to snapshot");
        }
        if self.in_snapshot {
            self.mode.act();
        }
        b"state".to_vec()
    }
}

superpeer_guest::export_policy!(Misbehave);
