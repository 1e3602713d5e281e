//! The default policy, for unmodified p2p-media-loader viewers.
//!
//! It keeps the worker's tracker connections up (one WebSocket per tracker, reconnected
//! with exponential back-off; connections that outlive an instance are adopted), reads
//! the stream's playlists, joins the swarm of every rendition as each generation of
//! p2p-media-loader viewers (2.3.x and 2.2.x) computes it, reaches the viewers there with
//! offers of its own and answers theirs, keeps the segments they will ask for in the
//! host's cache (the live window, the start of a VOD), and serves them over the peer
//! wire protocol.
//!
//! It must stay free of I/O: it only returns commands.

pub mod announce;
mod context;
pub mod instance;
pub mod playlist;
pub mod reach;
mod seeder;
pub mod settings;
pub mod swarm;
mod trackers;
pub mod wire;

use instance::Instance;
use superpeer_guest::{Command, Event, HostState, Policy, PolicyInfo, SeedConfig};

/// The component's glue: the host's clock and randomness for an [`Instance`].
struct Pml(Instance);

impl Policy for Pml {
    fn describe() -> PolicyInfo {
        PolicyInfo { name: "pml".into(), version: env!("CARGO_PKG_VERSION").into() }
    }

    fn init(config: SeedConfig, prior: Option<Vec<u8>>, state: HostState) -> Result<Self, String> {
        let random = superpeer_guest::host::random_u64();
        Instance::init(&config, prior.as_deref(), &state, random).map(Pml)
    }

    fn handle(&mut self, events: Vec<Event>) -> Vec<Command> {
        let now_ms = superpeer_guest::host::monotonic_ms();
        self.0.handle(events, now_ms, &mut superpeer_guest::host::random_u64)
    }

    fn snapshot(&self) -> Vec<u8> {
        self.0.snapshot()
    }
}

superpeer_guest::export_policy!(Pml);
