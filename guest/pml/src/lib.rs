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
pub use superpeer_hls as playlist;
pub mod reach;
mod seeder;
pub mod settings;
pub mod swarm;
pub mod wire;

use instance::Instance;
use superpeer_guest::{Command, Event, HostState, Policy, PolicyInfo, SeedConfig};

/// The component's glue: the host's clock and randomness for an [`Instance`].
struct Pml {
    instance: Instance,
    #[cfg(feature = "faulty")]
    fault: faulty::Fault,
}

impl Policy for Pml {
    fn describe() -> PolicyInfo {
        let suffix = if cfg!(feature = "faulty") { "-faulty" } else { "" };
        PolicyInfo { name: "pml".into(), version: format!("{}{suffix}", env!("CARGO_PKG_VERSION")) }
    }

    fn init(config: SeedConfig, prior: Option<Vec<u8>>, state: HostState) -> Result<Self, String> {
        let random = superpeer_guest::host::random_u64();
        let instance = Instance::init(&config, prior.as_deref(), &state, random)?;
        Ok(Pml {
            instance,
            #[cfg(feature = "faulty")]
            fault: faulty::Fault::new(&config, prior.as_deref()),
        })
    }

    fn handle(&mut self, events: Vec<Event>) -> Vec<Command> {
        let now_ms = superpeer_guest::host::monotonic_ms();
        #[cfg(feature = "faulty")]
        self.fault.check(now_ms, &events);
        self.instance.handle(events, now_ms, &mut superpeer_guest::host::random_u64)
    }

    fn snapshot(&self) -> Vec<u8> {
        let snapshot = self.instance.snapshot();
        #[cfg(feature = "faulty")]
        let snapshot = self.fault.mark(snapshot);
        snapshot
    }
}

superpeer_guest::export_policy!(Pml);

/// The test build's fault on demand: `faultAfterMs` (a seed setting) after the instance
/// starts, it panics once, and only once in the worker's life, after a snapshot has
/// recorded that it would (the instance restarted from that snapshot does not fault),
/// in a call that holds a viewer's message (a request, when viewers are asking), the
/// worst moment for them.
///
/// The record is a trailer the default policy's snapshot reader ignores, so a swap back
/// to the default policy continues as well.
#[cfg(feature = "faulty")]
mod faulty {
    use std::cell::Cell;

    use superpeer_guest::{Event, SeedConfig};

    const ARMED: &[u8] = b"|pml-faulty:armed|";

    #[derive(Debug)]
    pub struct Fault {
        after_ms: Option<u64>,
        started_ms: Option<u64>,
        /// This worker's instances have faulted, or this one is about to.
        armed: bool,
        armed_here: bool,
        snapshotted: Cell<bool>,
    }

    impl Fault {
        pub fn new(config: &SeedConfig, prior: Option<&[u8]>) -> Fault {
            let after_ms = config
                .settings
                .iter()
                .find(|(key, _)| key == "faultAfterMs")
                .and_then(|(_, value)| value.trim().parse().ok());
            let armed = prior.is_some_and(|p| p.ends_with(ARMED));
            Fault {
                after_ms,
                started_ms: None,
                armed,
                armed_here: false,
                snapshotted: Cell::new(false),
            }
        }

        pub fn check(&mut self, now_ms: u64, events: &[Event]) {
            let started = *self.started_ms.get_or_insert(now_ms);
            if let Some(after) = self.after_ms
                && !self.armed
                && now_ms >= started + after
            {
                self.armed = true;
                self.armed_here = true;
            }
            let viewer_speaks = events.iter().any(|e| matches!(e, Event::PeerMessage(_)));
            if self.armed_here && self.snapshotted.get() && viewer_speaks {
                panic!("faulting on demand (pml-faulty)");
            }
        }

        pub fn mark(&self, mut snapshot: Vec<u8>) -> Vec<u8> {
            if self.armed {
                snapshot.extend_from_slice(ARMED);
                self.snapshotted.set(self.armed_here);
            }
            snapshot
        }
    }
}
