//! The default policy, for unmodified p2p-media-loader viewers.
//!
//! This version keeps the worker's tracker connections up: it opens one WebSocket per
//! configured tracker, and when one closes it reconnects after an exponential back-off
//! (1 s doubling to 60 s, reset once a connection opens). Connections that are already
//! open when an instance starts (after a restart or a hot swap) are adopted, not opened
//! twice. The swarm, announce and peer wire protocol of p2p-media-loader build on this.
//!
//! It must stay free of I/O: it only returns commands.

pub mod announce;
pub mod playlist;
pub mod swarm;
mod trackers;
pub mod wire;

use superpeer_guest::{Command, Event, HostState, Policy, PolicyInfo, SeedConfig};
use trackers::Trackers;

struct Pml {
    trackers: Trackers,
}

impl Policy for Pml {
    fn describe() -> PolicyInfo {
        PolicyInfo { name: "pml".into(), version: env!("CARGO_PKG_VERSION").into() }
    }

    fn init(config: SeedConfig, prior: Option<Vec<u8>>, state: HostState) -> Result<Self, String> {
        let trackers = Trackers::new(&config.trackers, &state, prior.as_deref().unwrap_or(&[]))?;
        Ok(Pml { trackers })
    }

    fn handle(&mut self, events: Vec<Event>) -> Vec<Command> {
        let mut commands = Vec::new();
        self.trackers.start(&mut commands);
        for event in events {
            match event {
                Event::TrackerConnected(conn) => self.trackers.connected(conn),
                Event::TrackerClosed(closed) => {
                    self.trackers.closed(closed.conn, &closed.reason, &mut commands)
                }
                Event::TimerFired(timer) => self.trackers.timer(timer, &mut commands),
                _ => {}
            }
        }
        commands
    }

    fn snapshot(&self) -> Vec<u8> {
        self.trackers.snapshot()
    }
}

superpeer_guest::export_policy!(Pml);
