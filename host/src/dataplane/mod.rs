//! A worker's I/O: tracker WebSockets, origin fetches and the segment store. It
//! carries out the commands the policy runner admitted and turns what happens into
//! policy events.
//!
//! Every connection and fetch runs in a task of its own on the worker's event loop and
//! reports through one bounded channel, so a slow or hostile remote end can only stall
//! itself. It must never interpret a protocol: texts go to the policy as they came.

mod fetch;
mod store;
mod tracker;

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

use crate::policy::wire::{
    ByteRange, CacheTier, Command, ConnId, Event, FetchFailed, FetchId, PeerClosed, SegmentInfo,
    SegmentStored, TextFetched,
};
pub use store::SegmentStore;

/// Limits of the data plane; defaults suit a worker seeding one channel.
#[derive(Debug, Clone, PartialEq)]
pub struct DataPlaneLimits {
    /// Largest text frame accepted from a tracker; a larger one closes the connection.
    pub max_tracker_text: usize,
    /// Largest playlist accepted from the origin.
    pub max_text_bytes: usize,
    /// Largest segment accepted from the origin.
    pub max_segment_bytes: usize,
    /// Longest a tracker connection may take to open.
    pub connect_timeout: Duration,
    /// Longest one fetch attempt may take.
    pub fetch_timeout: Duration,
    /// Attempts per fetch (the first included) when the origin fails or times out.
    pub fetch_attempts: u32,
}

impl Default for DataPlaneLimits {
    fn default() -> Self {
        DataPlaneLimits {
            max_tracker_text: 64 << 10,
            max_text_bytes: 8 << 20,
            max_segment_bytes: 64 << 20,
            connect_timeout: Duration::from_secs(10),
            fetch_timeout: Duration::from_secs(20),
            fetch_attempts: 3,
        }
    }
}

/// What the I/O tasks report to the event loop.
#[derive(Debug)]
pub enum IoEvent {
    /// Something to hand to the policy as it is.
    Policy(Event),
    /// A segment's bytes arrived; the store takes them on the loop.
    SegmentFetched {
        fetch: FetchId,
        url: String,
        range: Option<ByteRange>,
        bytes: Bytes,
    },
    /// A tracker connection opened or closed (for the figures).
    TrackerUp(ConnId),
    TrackerDown(ConnId),
}

/// The worker's data plane.
#[derive(Debug)]
pub struct DataPlane {
    limits: DataPlaneLimits,
    events: mpsc::Sender<IoEvent>,
    http: reqwest::Client,
    trackers: HashMap<ConnId, mpsc::UnboundedSender<tracker::Outgoing>>,
    trackers_open: usize,
    fetches: HashMap<FetchId, AbortHandle>,
    store: SegmentStore,
    downloaded: u64,
}

impl DataPlane {
    /// A data plane and the channel its tasks report on, for the event loop to drain.
    pub fn new(limits: DataPlaneLimits) -> (Self, mpsc::Receiver<IoEvent>) {
        let (events, inbox) = mpsc::channel(1024);
        let http = reqwest::Client::builder()
            .user_agent(concat!("superpeer/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(limits.connect_timeout)
            .build()
            .unwrap_or_default();
        let plane = DataPlane {
            limits,
            events,
            http,
            trackers: HashMap::new(),
            trackers_open: 0,
            fetches: HashMap::new(),
            store: SegmentStore::default(),
            downloaded: 0,
        };
        (plane, inbox)
    }

    /// Carries out one admitted command; returns the events it causes at once.
    pub fn carry_out(&mut self, command: Command) -> Vec<Event> {
        let refuse = |peer| vec![Event::PeerClosed(PeerClosed { peer, reason: NO_WEBRTC.into() })];
        match command {
            Command::TrackerConnect(c) => {
                let outgoing = tracker::spawn(c.conn, c.url, self.events.clone(), &self.limits);
                self.trackers.insert(c.conn, outgoing);
            }
            Command::TrackerSend(s) => {
                if let Some(tracker) = self.trackers.get(&s.conn) {
                    let _ = tracker.send(tracker::Outgoing::Text(s.text));
                }
            }
            Command::TrackerClose(conn) => {
                if let Some(tracker) = self.trackers.remove(&conn) {
                    let _ = tracker.send(tracker::Outgoing::Close);
                }
            }
            Command::FetchText(f) => self.fetch(f.fetch, f.url, None, fetch::Kind::Text),
            Command::FetchSegment(f) => self.fetch(f.fetch, f.url, f.range, fetch::Kind::Segment),
            Command::FetchCancel(fetch) => {
                if let Some(task) = self.fetches.remove(&fetch) {
                    task.abort();
                }
            }
            Command::Evict(handle) => {
                if self.store.remove(handle) {
                    return vec![Event::SegmentEvicted(handle)];
                }
            }
            // WebRTC is the next layer; until then a peer cannot be connected.
            Command::PeerOffer(peer) => return refuse(peer),
            Command::PeerAnswer(a) => return refuse(a.peer),
            // Timers live in the runner's tables; nothing can be open or served to a
            // peer without WebRTC, so the runner admits none of the rest.
            Command::TimerSet(_)
            | Command::TimerCancel(_)
            | Command::PeerAcceptAnswer(_)
            | Command::PeerSend(_)
            | Command::ServeSegment(_)
            | Command::CancelServe(_)
            | Command::PeerClose(_) => {}
        }
        Vec::new()
    }

    fn fetch(&mut self, fetch: FetchId, url: String, range: Option<ByteRange>, kind: fetch::Kind) {
        let task = fetch::spawn(
            fetch,
            url,
            range,
            kind,
            self.http.clone(),
            self.events.clone(),
            &self.limits,
        );
        self.fetches.insert(fetch, task);
    }

    /// Turns what a task reported into the event the policy gets.
    pub fn on_io(&mut self, event: IoEvent) -> Option<Event> {
        match event {
            IoEvent::Policy(event) => {
                match &event {
                    Event::TextFetched(TextFetched { fetch, text, .. }) => {
                        self.fetches.remove(fetch);
                        self.downloaded += text.len() as u64;
                    }
                    Event::FetchFailed(FetchFailed { fetch, .. }) => {
                        self.fetches.remove(fetch);
                    }
                    Event::TrackerClosed(closed) => {
                        self.trackers.remove(&closed.conn);
                    }
                    _ => {}
                }
                Some(event)
            }
            IoEvent::SegmentFetched { fetch, url, range, bytes } => {
                self.fetches.remove(&fetch);
                self.downloaded += bytes.len() as u64;
                let size = bytes.len() as u64;
                let handle = self.store.insert(bytes);
                let segment = SegmentInfo { handle, url, range, size, tier: CacheTier::Memory };
                Some(Event::SegmentStored(SegmentStored { fetch, segment }))
            }
            IoEvent::TrackerUp(_) => {
                self.trackers_open += 1;
                None
            }
            IoEvent::TrackerDown(_) => {
                self.trackers_open = self.trackers_open.saturating_sub(1);
                None
            }
        }
    }

    /// Bytes fetched from the origin so far.
    pub fn downloaded(&self) -> u64 {
        self.downloaded
    }

    pub fn trackers_open(&self) -> usize {
        self.trackers_open
    }

    pub fn store(&self) -> &SegmentStore {
        &self.store
    }
}

/// Why peer commands fail in this version.
const NO_WEBRTC: &str = "not available: this superpeer version has no WebRTC yet";
