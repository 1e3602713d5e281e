//! Test policy: answers each `timer-fired(id)` with `timer-set { timer: id, after-ms }`,
//! where `after-ms` is the running count of events this policy (across instances) has
//! seen, plus a per-version marker; `timer-fired(u64::MAX)` makes it panic. The count lives in the snapshot, so a test can see
//! that a restart or a hot swap neither loses nor repeats an event.

use superpeer_guest::{Command, Event, HostState, Policy, PolicyInfo, SeedConfig, TimerSet};

/// Added to every `after-ms` so a test can tell which version answered.
#[cfg(not(feature = "v2"))]
const VERSION_MARK: u64 = 0;
#[cfg(feature = "v2")]
const VERSION_MARK: u64 = 1_000_000;

/// A timer id that makes the counter panic, to test restarts from a snapshot.
const POISON: u64 = u64::MAX;

struct Counter {
    seen: u64,
}

impl Policy for Counter {
    fn describe() -> PolicyInfo {
        PolicyInfo {
            name: "counter".into(),
            version: if cfg!(feature = "v2") { "2.0.0" } else { "1.0.0" }.into(),
        }
    }

    fn init(config: SeedConfig, prior: Option<Vec<u8>>, _: HostState) -> Result<Self, String> {
        if config.settings.iter().any(|(k, _)| k == "reject") {
            return Err("asked to reject by the `reject` setting".into());
        }
        // Its own snapshots are 8 bytes; another policy's (a swap from it) count nothing.
        let seen = prior
            .as_deref()
            .and_then(|bytes| <[u8; 8]>::try_from(bytes).ok())
            .map_or(0, u64::from_le_bytes);
        Ok(Counter { seen })
    }

    fn handle(&mut self, events: Vec<Event>) -> Vec<Command> {
        let mut commands = Vec::with_capacity(events.len());
        for event in events {
            if event == Event::Started {
                continue;
            }
            self.seen += 1;
            if event == Event::TimerFired(POISON) {
                panic!("poisoned after {} events", self.seen);
            }
            if let Event::TimerFired(timer) = event {
                commands.push(Command::TimerSet(TimerSet {
                    timer,
                    after_ms: VERSION_MARK + self.seen,
                }));
            }
        }
        commands
    }

    fn snapshot(&self) -> Vec<u8> {
        self.seen.to_le_bytes().to_vec()
    }
}

superpeer_guest::export_policy!(Counter);
