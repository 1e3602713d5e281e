//! The SwarmCloud policy: superpeer as a super peer of the SwarmCloud (CDNBye) web SDK
//! 2.9's swarms, DataChannel protocol "8".
//!
//! The protocol's wire formats are each pure and total (bad input is an error, never a
//! panic): how the SDK names a channel ([`channel`]), its tracker's HTTP API
//! ([`tracker`]), its signal relay ([`signal`]) and what peers say on a DataChannel
//! ([`peer`]). [`instance`] drives them: the decisions of one worker, with time passed
//! in. What every protocol's policy needs (connection upkeep, ids and timers, playlists,
//! which segments to hold) comes from the shared guest crates, not from here.
//!
//! It must stay free of I/O: it only returns commands.

pub mod channel;
pub mod instance;
pub mod peer;
pub mod signal;
pub mod tracker;

use superpeer_guest::{Command, Event, HostState, Policy, PolicyInfo, SeedConfig};

/// The component's glue: the host's clocks and randomness for an [`instance::Instance`].
#[derive(Debug)]
struct SwarmCloud(instance::Instance);

impl Policy for SwarmCloud {
    fn describe() -> PolicyInfo {
        PolicyInfo { name: "swarmcloud".into(), version: env!("CARGO_PKG_VERSION").into() }
    }

    fn init(config: SeedConfig, prior: Option<Vec<u8>>, state: HostState) -> Result<Self, String> {
        let random = superpeer_guest::host::random_u64();
        instance::Instance::init(&config, prior.as_deref(), &state, random).map(SwarmCloud)
    }

    fn handle(&mut self, events: Vec<Event>) -> Vec<Command> {
        let now_ms = superpeer_guest::host::monotonic_ms();
        let wall_ms = superpeer_guest::host::wall_clock_ms();
        self.0.handle(events, now_ms, wall_ms)
    }

    fn snapshot(&self) -> Vec<u8> {
        self.0.snapshot()
    }
}

superpeer_guest::export_policy!(SwarmCloud);
