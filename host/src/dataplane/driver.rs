//! The thin loop around the data plane's state machine: it owns the worker's UDP socket,
//! the tracker connections, the fetches and the disk cache, hands what they report to
//! [`DataPlane::handle_input`], and carries out what the state machine asks (datagrams
//! to send, tasks to start).
//!
//! It makes no decision of its own: every choice about a viewer, a segment or a count
//! is the state machine's, and every protocol's the policy's.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

use super::udp::{self, DatagramReceiver, DatagramSender};
use super::{
    DataPlane, DataPlaneLimits, Input, IoEvent, IoRequest, budget, disk, fetch, http, origin,
    tracker,
};
use crate::policy::wire::{ByteRange, ConnId, Event, FetchId};

/// A worker's data plane with its I/O.
#[derive(Debug)]
pub struct Driver {
    plane: DataPlane,
    limits: DataPlaneLimits,
    events: mpsc::Sender<IoEvent>,
    receiver: DatagramReceiver,
    sender: DatagramSender,
    /// Datagrams being sent (kept for its capacity).
    outgoing: Vec<(SocketAddr, bytes::BytesMut)>,
    udp_addr: SocketAddr,
    fetcher: fetch::Fetcher,
    disk: Option<Arc<disk::DiskCache>>,
    trackers: HashMap<ConnId, tracker::Tracker>,
    /// Connections the policy closed whose last frames may still be on their way.
    closing_trackers: Vec<tokio::task::JoinHandle<()>>,
    /// Fetches and disk look-ups in flight, so a `fetch-cancel` can stop them.
    fetches: HashMap<FetchId, AbortHandle>,
}

impl Driver {
    /// A data plane and the channel its tasks report on, for the event loop to drain
    /// (as [`Input::Io`]). Binds the worker's UDP socket; must run inside the worker's
    /// runtime.
    pub fn new(limits: DataPlaneLimits) -> std::io::Result<(Self, mpsc::Receiver<IoEvent>)> {
        let (events, inbox) = mpsc::channel(1024);
        let socket = match limits.udp_ports {
            Some(range) => udp::bind_in(limits.udp_bind.ip(), range)?,
            None => udp::bind(limits.udp_bind)?,
        };
        let socket = Arc::new(tokio::net::UdpSocket::from_std(socket)?);
        let bound = socket.local_addr()?;
        let advertised = SocketAddr::new(limits.advertise_ip.unwrap_or(bound.ip()), bound.port());
        tracing::info!(%bound, %advertised, "WebRTC socket ready");
        let fetcher = fetch::Fetcher {
            origins: origin::Origins::new(limits.origins.clone(), limits.connect_timeout)
                .map_err(std::io::Error::other)?,
            limits: limits.clone(),
            budget: budget::MemoryBudget::new(limits.memory_budget),
        };
        // A cache that cannot be opened costs restarts their cached segments, not the
        // stream: carry on in memory.
        let disk = limits.disk_cache.as_ref().and_then(|config| match disk::DiskCache::open(config) {
            Ok(cache) => Some(Arc::new(cache)),
            Err(e) => {
                tracing::error!(dir = %config.dir.display(), error = %e, "disk cache unusable; caching in memory only");
                None
            }
        });
        let plane =
            DataPlane::new(advertised, disk.is_some(), limits.offer_timeout, limits.stall_timeout);
        let driver = Driver {
            plane,
            limits,
            events,
            receiver: DatagramReceiver::new(socket.clone()),
            sender: DatagramSender::new(socket),
            outgoing: Vec::new(),
            udp_addr: bound,
            fetcher,
            disk,
            trackers: HashMap::new(),
            closing_trackers: Vec::new(),
            fetches: HashMap::new(),
        };
        Ok((driver, inbox))
    }

    /// Hands `inputs` to the state machine one by one, sending its datagrams and
    /// starting its I/O after each (so one call's serves never pile up a call's worth
    /// of datagrams), and returns the events for the policy. Datagrams go one at a time
    /// too: handing the library all of a viewer's datagrams of one turn before it writes
    /// its next packets saved no CPU beyond the noise and held 27-62 KB more a viewer
    /// (side by side, 25-250 light viewers).
    pub fn handle(&mut self, inputs: impl IntoIterator<Item = Input>) -> Vec<Event> {
        for input in inputs {
            if let Input::Io(event) = &input {
                self.settle(event);
            }
            self.plane.handle_input(input, Instant::now());
            self.carry_out();
        }
        std::iter::from_fn(|| self.plane.poll_event()).collect()
    }

    /// Until the I/O has something for the state machine, and what: every datagram
    /// waiting on the UDP socket (up to a batch), or the next report of a task (a
    /// fetch, a tracker connection, the disk). Cancel-safe, for the event loop's
    /// `select!`: what it has not returned stays where it was.
    pub async fn next_inputs(&mut self, io: &mut mpsc::Receiver<IoEvent>) -> Vec<Input> {
        tokio::select! {
            () = self.receiver.readable() => self
                .receiver
                .take_waiting(udp::RECEIVE_BATCH)
                .into_iter()
                .map(|(from, data)| Input::Io(IoEvent::Datagram { from, data }))
                .collect(),
            // The driver keeps a sender, so the channel never ends while it lives.
            Some(happened) = io.recv() => vec![Input::Io(happened)],
        }
    }

    /// When [`Input::Timeout`] is next due.
    pub fn next_timeout(&mut self) -> Option<Instant> {
        self.plane.poll_timeout()
    }

    pub fn plane(&self) -> &DataPlane {
        &self.plane
    }

    /// The address the worker's UDP socket is bound to.
    pub fn udp_addr(&self) -> SocketAddr {
        self.udp_addr
    }

    /// Bytes in the disk cache directory (all workers') as last measured, or 0 without
    /// one; a stale figure is measured again off the event loop.
    pub fn disk_cache_size(&self) -> u64 {
        let Some(disk) = &self.disk else { return 0 };
        let (size, measure) = disk.last_size();
        if measure {
            let disk = disk.clone();
            tokio::task::spawn_blocking(move || disk.measure());
        }
        size
    }

    /// Ends the worker's connections politely: tells every viewer the connection is
    /// closed, and lets every tracker connection send what was queued for it (the
    /// policy's goodbyes) and close, waiting at most `grace` for them.
    pub async fn shutdown(mut self, io: mpsc::Receiver<IoEvent>, grace: Duration) {
        self.plane.close_all();
        self.carry_out();
        // Tasks that report from now on find nobody listening and end at once.
        drop(io);
        let mut tasks = std::mem::take(&mut self.closing_trackers);
        for (_, tracker) in self.trackers.drain() {
            let _ = tracker.outgoing.send(tracker::Outgoing::Close);
            tasks.push(tracker.task);
        }
        let all_closed = async {
            for task in tasks {
                let _ = task.await;
            }
        };
        if tokio::time::timeout(grace, all_closed).await.is_err() {
            tracing::warn!(?grace, "tracker connections did not close in time");
        }
    }

    /// Forgets the task handles of what just ended.
    fn settle(&mut self, event: &IoEvent) {
        let fetch = match event {
            IoEvent::Policy(Event::TextFetched(done)) => done.fetch,
            IoEvent::Policy(Event::FetchFailed(failed)) => failed.fetch,
            IoEvent::SegmentFetched { fetch, .. } | IoEvent::DiskLookedUp { fetch, .. } => *fetch,
            IoEvent::Policy(Event::TrackerClosed(closed)) => {
                self.trackers.remove(&closed.conn);
                return;
            }
            _ => return,
        };
        self.fetches.remove(&fetch);
    }

    /// Sends what the state machine wrote and starts what it asked for.
    fn carry_out(&mut self) {
        // All of them in one go: a run to one viewer leaves in as few GSO sends as
        // the kernel allows, however many messages it was written as.
        while let Some(transmit) = self.plane.poll_transmit() {
            self.outgoing.extend(transmit.datagrams);
        }
        if !self.outgoing.is_empty() {
            self.sender.send(&self.outgoing);
            self.outgoing.clear();
        }
        while let Some(request) = self.plane.poll_io() {
            self.start(request);
        }
    }

    fn start(&mut self, request: IoRequest) {
        match request {
            IoRequest::TrackerConnect { conn, url } => {
                let tracker = tracker::spawn(conn, url, self.events.clone(), &self.limits);
                self.trackers.insert(conn, tracker);
            }
            IoRequest::TrackerSend { conn, text } => {
                if let Some(tracker) = self.trackers.get(&conn) {
                    let _ = tracker.outgoing.send(tracker::Outgoing::Text(text));
                }
            }
            IoRequest::TrackerClose(conn) => {
                if let Some(tracker) = self.trackers.remove(&conn) {
                    let _ = tracker.outgoing.send(tracker::Outgoing::Close);
                    self.closing_trackers.retain(|task| !task.is_finished());
                    self.closing_trackers.push(tracker.task);
                }
            }
            IoRequest::FetchText { fetch, url } => self.fetch(fetch, url, None, fetch::Kind::Text),
            IoRequest::LookUpOnDisk { fetch, url, range } => {
                let key = disk::key(&url, range);
                let look = key.clone();
                let task = self.on_disk(
                    move |disk| disk.cached_size(&look),
                    move |size| IoEvent::DiskLookedUp { fetch, url, range, key, size },
                );
                self.fetches.insert(fetch, task);
            }
            IoRequest::FetchSegment { fetch, url, range, disk } => {
                let disk = if disk { self.disk.clone() } else { None };
                self.fetch(fetch, url, range, fetch::Kind::Segment { disk });
            }
            IoRequest::Http(request) => http::spawn(
                request,
                self.fetcher.origins.clone(),
                self.limits.max_tracker_text,
                self.limits.fetch_timeout,
                self.events.clone(),
            ),
            IoRequest::CancelFetch(fetch) => {
                if let Some(task) = self.fetches.remove(&fetch) {
                    task.abort();
                }
            }
            IoRequest::ReadFromDisk(key) => {
                let read = key.clone();
                self.on_disk(
                    move |disk| disk.read(&read),
                    move |bytes: Option<Bytes>| IoEvent::DiskRead { key, bytes },
                );
            }
        }
    }

    fn fetch(&mut self, fetch: FetchId, url: String, range: Option<ByteRange>, kind: fetch::Kind) {
        let task = fetch::spawn(fetch, url, range, kind, self.fetcher.clone(), self.events.clone());
        self.fetches.insert(fetch, task);
    }

    /// Runs `work` on the disk cache on the blocking pool (none without a cache) and
    /// reports its result to the event loop as `report` makes it.
    fn on_disk<T: Send + 'static>(
        &self,
        work: impl FnOnce(&disk::DiskCache) -> Option<T> + Send + 'static,
        report: impl FnOnce(Option<T>) -> IoEvent + Send + 'static,
    ) -> AbortHandle {
        let disk = self.disk.clone();
        let events = self.events.clone();
        let task = tokio::spawn(async move {
            let done = tokio::task::spawn_blocking(move || disk.and_then(|disk| work(&disk)));
            let _ = events.send(report(done.await.ok().flatten())).await;
        });
        task.abort_handle()
    }
}
