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
pub mod playlist;
pub mod reach;
mod seeder;
pub mod settings;
pub mod swarm;
mod trackers;
pub mod wire;

use base64::Engine as _;
use seeder::Seeder;
use superpeer_guest::{Command, ConnId, Event, HostState, Policy, PolicyInfo, SeedConfig};
use trackers::Trackers;

struct Pml {
    trackers: Trackers,
    seeder: Seeder,
}

impl Policy for Pml {
    fn describe() -> PolicyInfo {
        PolicyInfo { name: "pml".into(), version: env!("CARGO_PKG_VERSION").into() }
    }

    fn init(config: SeedConfig, prior: Option<Vec<u8>>, state: HostState) -> Result<Self, String> {
        let settings = settings::parse(&config.settings)?;
        let trackers = Trackers::new(&config.trackers, &state, prior.as_deref().unwrap_or(&[]))?;
        let swarm_id = swarm_id(&config.channel, config.manifest_url.as_deref());
        let max_connections = config.max_connections as usize;
        let mut seeder = Seeder::new(swarm_id, config.manifest_url, max_connections, settings);
        seeder.adopt(&state.segments);
        seeder.adopt_peers(&state);
        for (conn, url) in trackers.open_with_urls() {
            seeder.tracker_adopted(conn, url);
        }
        Ok(Pml { trackers, seeder })
    }

    fn handle(&mut self, events: Vec<Event>) -> Vec<Command> {
        let mut commands = Vec::new();
        self.seeder.begin_turn(superpeer_guest::host::monotonic_ms());
        self.trackers.start(&mut commands);
        let mut random = superpeer_guest::host::random_u64;
        for event in events {
            match &event {
                Event::Started => self.seeder.start(&mut commands),
                Event::Stopping => {
                    let open: Vec<ConnId> = self.trackers.open().collect();
                    self.seeder.stop(&open, &mut commands);
                    self.trackers.stop(&mut commands);
                    continue;
                }
                Event::TrackerConnected(conn) => {
                    self.trackers.connected(*conn);
                    if let Some(url) = self.trackers.url(*conn) {
                        self.seeder.tracker_open(*conn, &url, &mut random, &mut commands);
                    }
                }
                Event::TrackerClosed(closed) => {
                    self.trackers.closed(closed.conn, &closed.reason, &mut commands)
                }
                Event::TimerFired(timer) => self.trackers.timer(*timer, &mut commands),
                _ => {}
            }
            let open: Vec<ConnId> = self.trackers.open().collect();
            self.seeder.handle(&event, &open, &mut random, &mut commands);
        }
        self.seeder.flush(&mut commands);
        commands
    }

    fn snapshot(&self) -> Vec<u8> {
        self.trackers.snapshot()
    }
}

/// The swarm id viewers use: what the channel id encodes (p2p-media-loader's default is
/// the manifest URL without its query), else the manifest URL itself.
fn swarm_id(channel: &str, manifest_url: Option<&str>) -> String {
    use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
    let trimmed = channel.trim().trim_end_matches('=');
    STANDARD_NO_PAD
        .decode(trimmed)
        .or_else(|_| URL_SAFE_NO_PAD.decode(trimmed))
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .filter(|id| !id.is_empty())
        .unwrap_or_else(|| {
            manifest_url
                .map_or(channel.to_string(), |url| url.split('?').next().unwrap_or(url).to_string())
        })
}

superpeer_guest::export_policy!(Pml);
