//! Test policy that sleeps on the system clock. Sleeping blocks inside the host, where
//! no deadline can interrupt it, so the host offers no clock but its own and refuses
//! a component that imports one.

use std::time::Duration;

use superpeer_guest::{Command, Event, HostState, Policy, PolicyInfo, SeedConfig};

struct Sleeper;

impl Policy for Sleeper {
    fn describe() -> PolicyInfo {
        PolicyInfo { name: "sleeper".into(), version: "0.0.1".into() }
    }

    fn init(_: SeedConfig, _: Option<Vec<u8>>, _: HostState) -> Result<Self, String> {
        Ok(Sleeper)
    }

    fn handle(&mut self, _: Vec<Event>) -> Vec<Command> {
        std::thread::sleep(Duration::from_secs(3600));
        Vec::new()
    }
}

superpeer_guest::export_policy!(Sleeper);
