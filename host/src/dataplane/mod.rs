//! A worker's I/O: tracker WebSockets, origin fetches, the segment store and the disk
//! cache. It
//! carries out the commands the policy runner admitted and turns what happens into
//! policy events.
//!
//! Every connection and fetch runs in a task of its own on the worker's event loop and
//! reports through one bounded channel, so a slow or hostile remote end can only stall
//! itself. It must never interpret a protocol: texts go to the policy as they came.

mod budget;
pub mod disk;
mod fetch;
pub mod origin;
mod store;
mod tracker;
mod udp;
mod webrtc;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

use crate::policy::wire::{
    self, ByteRange, CacheTier, Command, ConnId, Event, FetchFailed, FetchId, SegmentHandle,
    SegmentInfo, SegmentSent, SegmentStored, ServeSegment, TextFetched,
};
pub use store::{Held, SegmentStore};

/// Limits of the data plane; defaults suit a worker seeding one channel.
#[derive(Debug, Clone, PartialEq)]
pub struct DataPlaneLimits {
    /// Largest text frame accepted from a tracker; a larger one closes the connection.
    pub max_tracker_text: usize,
    /// Largest playlist accepted from the origin: a larger one fails as a fetch and never
    /// reaches the policy (20,000 segments with URLs of 100 bytes fit).
    pub max_text_bytes: usize,
    /// Largest segment accepted from the origin.
    pub max_segment_bytes: usize,
    /// Longest a tracker connection may take to open.
    pub connect_timeout: Duration,
    /// Longest one fetch attempt may take.
    pub fetch_timeout: Duration,
    /// Attempts per fetch (the first included) when the origin fails or times out.
    pub fetch_attempts: u32,
    /// The UDP address all of the worker's viewers reach it on; its port is ignored
    /// when `udp_ports` is set.
    pub udp_bind: SocketAddr,
    /// The ports the worker may take (first and last, inclusive), for firewalls that
    /// open a range; any free port when unset.
    pub udp_ports: Option<(u16, u16)>,
    /// The address put in ICE candidates, when it is not the bound one (a server behind
    /// 1:1 NAT advertises its public IP).
    pub advertise_ip: Option<IpAddr>,
    /// Where segments the policy asks to keep on disk go; in memory when unset.
    pub disk_cache: Option<disk::DiskCacheConfig>,
    /// How long an offer of ours waits for its answer before it is dropped (the policy
    /// usually withdraws it sooner).
    pub offer_timeout: Duration,
    /// How long a viewer may leave every byte sent to it since its last acknowledgement
    /// unacknowledged before it is closed: one that stops acknowledging (a hostile
    /// client keeping its ICE alive, a frozen machine) would otherwise hold a viewer's
    /// place as long as it liked. A minute is SCTP's longest retransmission timeout, so
    /// a live path answers within it.
    pub stall_timeout: Duration,
    /// Which internal addresses fetches may reach (none but the manifest's host and
    /// port, unless allowed).
    pub origins: origin::OriginRules,
    /// Bytes of segments held in memory and of fetches in flight, together, at most; a
    /// fetch past it fails.
    pub memory_budget: u64,
}

impl Default for DataPlaneLimits {
    fn default() -> Self {
        DataPlaneLimits {
            max_tracker_text: 64 << 10,
            max_text_bytes: 2 << 20,
            max_segment_bytes: 64 << 20,
            connect_timeout: Duration::from_secs(10),
            fetch_timeout: Duration::from_secs(20),
            fetch_attempts: 3,
            udp_bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            udp_ports: None,
            advertise_ip: None,
            disk_cache: None,
            offer_timeout: Duration::from_secs(60),
            stall_timeout: Duration::from_secs(60),
            origins: origin::OriginRules::default(),
            memory_budget: 256 << 20,
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
        /// Its key in the disk cache, when it is there.
        on_disk: Option<String>,
        /// False when the disk cache had it.
        from_origin: bool,
        /// Its bytes' share of the memory budget, kept while held in memory.
        reservation: budget::Reservation,
    },
    /// A tracker connection opened or closed (for the figures).
    TrackerUp(ConnId),
    TrackerDown(ConnId),
    /// A disk segment's bytes were read and checked for serving (none: gone or damaged).
    DiskRead {
        key: String,
        bytes: Option<Bytes>,
    },
    /// A `disk-if-cached` fetch looked in the disk cache: the size it found, if any.
    DiskLookedUp {
        fetch: FetchId,
        url: String,
        range: Option<ByteRange>,
        key: String,
        size: Option<u64>,
    },
    /// A UDP datagram for the WebRTC layer.
    Datagram {
        from: SocketAddr,
        data: Bytes,
    },
}

/// The worker's data plane.
#[derive(Debug)]
pub struct DataPlane {
    limits: DataPlaneLimits,
    events: mpsc::Sender<IoEvent>,
    fetcher: fetch::Fetcher,
    trackers: HashMap<ConnId, tracker::Tracker>,
    /// Connections the policy closed whose last frames may still be on their way.
    closing_trackers: Vec<tokio::task::JoinHandle<()>>,
    trackers_open: usize,
    fetches: HashMap<FetchId, AbortHandle>,
    store: SegmentStore,
    rtc: webrtc::Rtc,
    udp_addr: SocketAddr,
    disk: Option<Arc<disk::DiskCache>>,
    read_segments: ReadSegments,
    /// Disk reads in flight for serving, by key, and the segments whose serves wait for
    /// each: file I/O and hashing happen off the event loop, once per key.
    disk_reads: HashMap<String, Vec<SegmentHandle>>,
    downloaded: u64,
    uploaded: u64,
    segments_served: u64,
    fetch_errors: u64,
}

impl DataPlane {
    /// A data plane and the channel its tasks report on, for the event loop to drain.
    /// Binds the worker's UDP socket; must run inside the worker's runtime.
    pub fn new(limits: DataPlaneLimits) -> std::io::Result<(Self, mpsc::Receiver<IoEvent>)> {
        let (events, inbox) = mpsc::channel(1024);
        let socket = match limits.udp_ports {
            Some(range) => udp_socket_in(limits.udp_bind.ip(), range)?,
            None => udp_socket(limits.udp_bind)?,
        };
        let socket = Arc::new(tokio::net::UdpSocket::from_std(socket)?);
        let bound = socket.local_addr()?;
        let advertised = SocketAddr::new(limits.advertise_ip.unwrap_or(bound.ip()), bound.port());
        tracing::info!(%bound, %advertised, "WebRTC socket ready");
        spawn_receiver(socket.clone(), events.clone());
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
        let rtc = webrtc::Rtc::new(socket, advertised, limits.offer_timeout, limits.stall_timeout);
        let plane = DataPlane {
            limits,
            events,
            fetcher,
            trackers: HashMap::new(),
            closing_trackers: Vec::new(),
            trackers_open: 0,
            fetches: HashMap::new(),
            store: SegmentStore::default(),
            rtc,
            udp_addr: bound,
            disk,
            read_segments: ReadSegments::default(),
            disk_reads: HashMap::new(),
            downloaded: 0,
            uploaded: 0,
            segments_served: 0,
            fetch_errors: 0,
        };
        Ok((plane, inbox))
    }

    /// Carries out one call's commands in order; a serve's end (see
    /// [`wire::ends_serve`]) goes with the serve.
    pub fn carry_out_all(&mut self, commands: Vec<Command>) -> Vec<Event> {
        let mut events = Vec::new();
        let mut commands = commands.into_iter().peekable();
        while let Some(command) = commands.next() {
            match command {
                Command::ServeSegment(serve) => {
                    let end = match commands.next_if(|next| wire::ends_serve(&serve, next)) {
                        Some(Command::PeerSend(send)) => send.data,
                        _ => Vec::new(),
                    };
                    tracing::trace!(?serve, ?end, "carry out");
                    let sent = self.serve(serve, end, Instant::now());
                    self.count_uploads(&sent);
                    events.extend(sent);
                }
                command => events.extend(self.carry_out(command)),
            }
        }
        events
    }

    /// Queues a serve and its end (empty for none). A disk segment not at hand is read
    /// off the loop and the serve waits in the viewer's queue meanwhile; a segment no
    /// longer held is reported sent short.
    fn serve(&mut self, s: ServeSegment, end: Vec<u8>, now: Instant) -> Vec<Event> {
        let bytes = match self.store.get(s.handle) {
            None => {
                return vec![Event::SegmentSent(SegmentSent {
                    peer: s.peer,
                    handle: s.handle,
                    bytes: 0,
                    complete: false,
                })];
            }
            Some(Held::Memory(bytes)) => Some(bytes.clone()),
            Some(Held::Disk { key, .. }) => {
                let key = key.clone();
                let at_hand = self.read_segments.get(&key);
                if at_hand.is_none() {
                    self.read_from_disk(key, s.handle);
                }
                at_hand
            }
        };
        let serve = webrtc::Serve {
            handle: s.handle,
            bytes,
            offset: s.offset,
            chunk: s.chunk_size,
            trailer: end,
        };
        self.rtc.serve(s.peer, serve, now)
    }

    /// Reads and checks a disk segment on the blocking pool for the serves of `handle`;
    /// one read per key however many wait for it.
    fn read_from_disk(&mut self, key: String, handle: SegmentHandle) {
        match self.disk_reads.entry(key) {
            std::collections::hash_map::Entry::Occupied(mut waiting) => {
                if !waiting.get().contains(&handle) {
                    waiting.get_mut().push(handle);
                }
            }
            std::collections::hash_map::Entry::Vacant(entry) => {
                let key = entry.key().clone();
                entry.insert(vec![handle]);
                let read = key.clone();
                self.on_disk(
                    move |disk| disk.read(&read),
                    move |bytes| IoEvent::DiskRead { key, bytes },
                );
            }
        }
    }

    /// Hands a finished disk read to the serves waiting for it. A copy that is gone or
    /// damaged (another worker evicted it, the cap did, or the disk failed) is dropped
    /// from the store, and the policy hears it was evicted.
    fn on_disk_read(&mut self, key: String, bytes: Option<Bytes>, now: Instant) -> Vec<Event> {
        let handles = self.disk_reads.remove(&key).unwrap_or_default();
        if let Some(bytes) = &bytes {
            self.read_segments.put(key, bytes.clone());
        }
        let mut events = Vec::new();
        for handle in handles {
            events.extend(self.rtc.loaded(handle, bytes.clone(), now));
            if bytes.is_none() && self.store.remove(handle).is_some() {
                events.push(Event::SegmentEvicted(handle));
            }
        }
        events
    }

    /// Looks a `disk-if-cached` segment up off the loop (its bytes are checked when
    /// served, like every read from disk).
    fn look_up_on_disk(&mut self, fetch: FetchId, url: String, range: Option<ByteRange>) {
        let key = disk::key(&url, range);
        let look = key.clone();
        let task = self.on_disk(
            move |disk| disk.cached_size(&look),
            move |size| IoEvent::DiskLookedUp { fetch, url, range, key, size },
        );
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

    /// Carries out one admitted command; returns the events it causes at once.
    pub fn carry_out(&mut self, command: Command) -> Vec<Event> {
        let now = Instant::now();
        tracing::trace!(?command, "carry out");
        let events = match command {
            Command::TrackerConnect(c) => {
                let tracker = tracker::spawn(c.conn, c.url, self.events.clone(), &self.limits);
                self.trackers.insert(c.conn, tracker);
                Vec::new()
            }
            Command::TrackerSend(s) => {
                if let Some(tracker) = self.trackers.get(&s.conn) {
                    let _ = tracker.outgoing.send(tracker::Outgoing::Text(s.text));
                }
                Vec::new()
            }
            Command::TrackerClose(conn) => {
                if let Some(tracker) = self.trackers.remove(&conn) {
                    let _ = tracker.outgoing.send(tracker::Outgoing::Close);
                    self.closing_trackers.retain(|task| !task.is_finished());
                    self.closing_trackers.push(tracker.task);
                }
                Vec::new()
            }
            Command::FetchText(f) => {
                self.fetch(f.fetch, f.url, None, fetch::Kind::Text);
                Vec::new()
            }
            Command::FetchSegment(f) if f.tier == CacheTier::DiskIfCached => {
                self.look_up_on_disk(f.fetch, f.url, f.range);
                Vec::new()
            }
            Command::FetchSegment(f) => {
                let disk = match f.tier {
                    CacheTier::Disk => self.disk.clone(),
                    CacheTier::Memory | CacheTier::DiskIfCached => None,
                };
                self.fetch(f.fetch, f.url, f.range, fetch::Kind::Segment { disk });
                Vec::new()
            }
            Command::FetchCancel(fetch) => {
                if let Some(task) = self.fetches.remove(&fetch) {
                    task.abort();
                }
                Vec::new()
            }
            // A disk copy stays: other workers may hold it, and the cache's cap (least
            // recently used first) bounds the disk.
            Command::Evict(handle) => match self.store.remove(handle) {
                Some(_) => vec![Event::SegmentEvicted(handle)],
                None => Vec::new(),
            },
            Command::PeerAnswer(a) => self.rtc.answer(a.peer, a.offer, now),
            Command::PeerSend(s) => self.rtc.send(s.peer, s.data, now),
            Command::ServeSegment(s) => self.serve(s, Vec::new(), now),
            Command::CancelServe(c) => self.rtc.cancel(c.peer, c.handle),
            Command::PeerClose(c) => {
                tracing::debug!(peer = c.peer, reason = %c.reason, "policy closed a peer");
                self.rtc.close(c.peer);
                Vec::new()
            }
            Command::PeerOffer(peer) => self.rtc.offer(peer, now),
            Command::PeerAcceptAnswer(a) => self.rtc.accept_answer(a.peer, a.answer, now),
            // Timers live in the runner's tables.
            Command::TimerSet(_) | Command::TimerCancel(_) => Vec::new(),
        };
        self.count_uploads(&events);
        events
    }

    fn count_uploads(&mut self, events: &[Event]) {
        for event in events {
            if let Event::SegmentSent(sent) = event {
                self.uploaded += sent.bytes;
                self.segments_served += u64::from(sent.complete);
            }
        }
    }

    /// When the WebRTC layer needs [`DataPlane::timeout`].
    pub fn next_timeout(&mut self) -> Option<Instant> {
        self.rtc.next_timeout()
    }

    pub fn timeout(&mut self) -> Vec<Event> {
        let events = self.rtc.timeout(Instant::now());
        self.count_uploads(&events);
        events
    }

    /// Segment bytes this worker holds in memory, disk segments kept at hand included.
    pub fn memory_cache_size(&self) -> u64 {
        self.store.memory_bytes() + self.read_segments.bytes()
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
        self.rtc.close_all();
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

    /// The address the worker's UDP socket is bound to.
    pub fn udp_addr(&self) -> SocketAddr {
        self.udp_addr
    }

    /// Bytes of segments sent to viewers so far.
    pub fn uploaded(&self) -> u64 {
        self.uploaded
    }

    /// Segments sent to a viewer to their last byte.
    pub fn segments_served(&self) -> u64 {
        self.segments_served
    }

    /// Playlist and segment fetches that failed after their retries (a segment looked
    /// up only in the disk cache and not found there is not an error).
    pub fn fetch_errors(&self) -> u64 {
        self.fetch_errors
    }

    /// Viewers: connections whose DataChannel is open. Connections still being set up
    /// and offers waiting for an answer are not viewers yet.
    /// Source addresses taken for viewers' connections, all together (each only after
    /// a STUN request proved it knows that connection's password; a few per viewer).
    pub fn viewer_addresses(&self) -> usize {
        self.rtc.addresses()
    }

    /// STUN requests dropped for failing their integrity check.
    pub fn forged_stun(&self) -> u64 {
        self.rtc.forged_stun()
    }

    pub fn viewers(&self) -> usize {
        self.rtc.viewers()
    }

    /// Offers of ours waiting for an answer.
    pub fn offers_pending(&self) -> usize {
        self.rtc.offers_pending()
    }

    fn fetch(&mut self, fetch: FetchId, url: String, range: Option<ByteRange>, kind: fetch::Kind) {
        let task = fetch::spawn(fetch, url, range, kind, self.fetcher.clone(), self.events.clone());
        self.fetches.insert(fetch, task);
    }

    /// Turns what a task reported into the events the policy gets.
    pub fn on_io(&mut self, event: IoEvent) -> Vec<Event> {
        let events = match event {
            IoEvent::Datagram { from, data } => self.rtc.receive(from, &data, Instant::now()),
            IoEvent::DiskRead { key, bytes } => self.on_disk_read(key, bytes, Instant::now()),
            event => return self.on_task(event).into_iter().collect(),
        };
        self.count_uploads(&events);
        events
    }

    fn on_task(&mut self, event: IoEvent) -> Option<Event> {
        match event {
            IoEvent::Policy(event) => {
                match &event {
                    Event::TextFetched(TextFetched { fetch, text, .. }) => {
                        self.fetches.remove(fetch);
                        self.downloaded += text.len() as u64;
                    }
                    Event::FetchFailed(FetchFailed { fetch, .. }) => {
                        self.fetches.remove(fetch);
                        self.fetch_errors += 1;
                    }
                    Event::TrackerClosed(closed) => {
                        self.trackers.remove(&closed.conn);
                    }
                    _ => {}
                }
                Some(event)
            }
            IoEvent::SegmentFetched {
                fetch,
                url,
                range,
                bytes,
                on_disk,
                from_origin,
                reservation,
            } => {
                self.fetches.remove(&fetch);
                let size = bytes.len() as u64;
                if from_origin {
                    self.downloaded += size;
                }
                let (held, tier, share) = match on_disk {
                    Some(key) => {
                        // Likely the next to be served: keep it at hand (within the
                        // bound of the disk segments kept in memory, not the budget).
                        self.read_segments.put(key.clone(), bytes);
                        (Held::Disk { key, size }, CacheTier::Disk, None)
                    }
                    None => (Held::Memory(bytes), CacheTier::Memory, Some(reservation)),
                };
                let handle = self.store.insert_reserved(held, share);
                let segment = SegmentInfo { handle, url, range, size, tier };
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
            IoEvent::DiskLookedUp { fetch, url, range, key, size } => {
                self.fetches.remove(&fetch);
                let event = match size {
                    Some(size) => {
                        let handle = self.store.insert(Held::Disk { key, size });
                        let segment =
                            SegmentInfo { handle, url, range, size, tier: CacheTier::Disk };
                        Event::SegmentStored(SegmentStored { fetch, segment })
                    }
                    None => Event::FetchFailed(FetchFailed {
                        fetch,
                        status: None,
                        reason: NOT_CACHED.into(),
                    }),
                };
                Some(event)
            }
            IoEvent::Datagram { .. } | IoEvent::DiskRead { .. } => None,
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

/// Why a `disk-if-cached` fetch failed when the disk cache does not have the segment.
pub const NOT_CACHED: &str = "not cached";

/// Kernel buffers for the worker's UDP socket: with dozens of viewers the default
/// buffers drop datagrams in bursts.
const UDP_BUFFER_BYTES: usize = 4 << 20;

/// The worker's UDP socket, non-blocking, with large buffers (as large as the kernel
/// allows; it caps them at its own maximum).
fn udp_socket(address: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    let domain = if address.is_ipv4() { socket2::Domain::IPV4 } else { socket2::Domain::IPV6 };
    let socket = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
    let _ = socket.set_recv_buffer_size(UDP_BUFFER_BYTES);
    let _ = socket.set_send_buffer_size(UDP_BUFFER_BYTES);
    socket.set_nonblocking(true)?;
    socket.bind(&address.into())?;
    Ok(socket.into())
}

/// Disk segments at hand in memory: the most recently used within [`Self::BUDGET`],
/// and beyond it every one a viewer is being sent (so viewers sent the same segment at
/// once share one copy). Without it each serve read and hashed its own copy: at a
/// hundred viewers a hundred copies of the same segment, and with viewers cycling
/// through more segments than a fixed count kept, a read for every serve.
#[derive(Debug, Default)]
struct ReadSegments(std::collections::VecDeque<(String, Bytes)>);

impl ReadSegments {
    /// Bytes kept, unless segments being sent take more.
    const BUDGET: u64 = 32 << 20;

    fn get(&mut self, key: &str) -> Option<Bytes> {
        let at = self.0.iter().position(|(k, _)| k == key)?;
        let entry = self.0.remove(at)?;
        let bytes = entry.1.clone();
        self.0.push_back(entry);
        Some(bytes)
    }

    fn put(&mut self, key: String, bytes: Bytes) {
        self.forget(&key);
        self.0.push_back((key, bytes));
        // Least recently used first; a segment still being sent costs nothing to keep
        // (its bytes are held by the serve anyway) and stays shareable.
        let mut total = self.bytes();
        let mut at = 0;
        while total > Self::BUDGET && at < self.0.len() {
            if self.0[at].1.is_unique() {
                total -= self.0[at].1.len() as u64;
                self.0.remove(at);
            } else {
                at += 1;
            }
        }
    }

    fn forget(&mut self, key: &str) {
        self.0.retain(|(k, _)| k != key);
    }

    fn bytes(&self) -> u64 {
        self.0.iter().map(|(_, bytes)| bytes.len() as u64).sum()
    }
}

/// Binds the first free port of `first..=last`, starting the search at a random one so
/// that workers starting together do not all race for the same port.
fn udp_socket_in(ip: IpAddr, (first, last): (u16, u16)) -> std::io::Result<std::net::UdpSocket> {
    let count = u32::from(last - first) + 1;
    let start = {
        use rand::{Rng, SeedableRng};
        rand::rngs::SmallRng::from_os_rng().random_range(0..count)
    };
    for step in 0..count {
        let port = first + ((start + step) % count) as u16;
        match udp_socket(SocketAddr::new(ip, port)) {
            Ok(socket) => return Ok(socket),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => continue,
            Err(e) => return Err(e),
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::AddrInUse,
        format!("no free UDP port in {first}-{last} on {ip}"),
    ))
}

/// Reads the worker's UDP socket and hands every datagram to the event loop.
fn spawn_receiver(socket: Arc<tokio::net::UdpSocket>, events: mpsc::Sender<IoEvent>) {
    tokio::spawn(async move {
        let mut buffer = vec![0u8; 65_536];
        loop {
            let Ok((len, from)) = socket.recv_from(&mut buffer).await else { continue };
            let data = Bytes::copy_from_slice(&buffer[..len]);
            if events.send(IoEvent::Datagram { from, data }).await.is_err() {
                break;
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segment(n: u8) -> Bytes {
        Bytes::from(vec![n; 8 << 20])
    }

    #[test]
    fn read_segments_keep_the_recent_within_budget_and_all_being_sent() {
        let mut kept = ReadSegments::default();
        // Eight 8 MiB segments: four fit the 32 MiB budget.
        let sending = segment(0);
        kept.put("0".into(), sending.clone());
        for n in 1..8 {
            kept.put(n.to_string(), segment(n));
        }
        assert!(
            kept.get("0").is_some_and(|b| b.as_ptr() == sending.as_ptr()),
            "in use: kept, shared"
        );
        assert!(kept.get("1").is_none() && kept.get("3").is_none(), "oldest unused went first");
        assert!((5..8).all(|n| kept.get(&n.to_string()).is_some()));
        assert_eq!(kept.bytes(), ReadSegments::BUDGET);

        // Used again, a segment becomes the most recent: the next put evicts another.
        assert!(kept.get("5").is_some());
        drop(sending);
        kept.put("8".into(), segment(8));
        assert!(kept.get("5").is_some() && kept.get("8").is_some());
        assert!(kept.get("0").is_none(), "no longer sent and least recently used");
        assert_eq!(kept.bytes(), ReadSegments::BUDGET);

        // Segments being sent stay, whatever the budget.
        let all: Vec<Bytes> = (10..20).map(segment).collect();
        for (n, bytes) in all.iter().enumerate() {
            kept.put(format!("s{n}"), bytes.clone());
        }
        assert_eq!(kept.bytes(), 10 * (8 << 20));
    }
}
