//! The data plane's state machine: viewers' connections, the segment cache and the
//! worker's counters, changed only by [`DataPlane::handle_input`] and read out through
//! the `poll_*` methods, as str0m's `Rtc` and quinn-proto's `Connection` are.
//!
//! It owns what the data plane knows; it must never touch a socket, a file or a task
//! (those are the driver's), and it is told the time, never reads it. Counters change
//! in one place: as events drain ([`DataPlane::poll_event`]), and for bytes from the
//! origin, as they arrive.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::cache::{ForServe, SegmentCache};
use super::webrtc::{self, Message, Rtc, Transmit};
use super::{Input, IoEvent, IoRequest, NOT_CACHED};
use crate::counters::Counters;
use crate::policy::wire::{
    CacheTier, Command, Event, FetchFailed, FetchSegment, SegmentInfo, SegmentSent, SegmentStored,
    ServeSegment, TextFetched,
};

/// The worker's data plane.
#[derive(Debug)]
pub struct DataPlane {
    rtc: Rtc,
    cache: SegmentCache,
    /// Whether the driver has a disk cache: without one, segments asked for on disk are
    /// kept in memory and `disk-if-cached` finds nothing.
    disk: bool,
    events: VecDeque<Event>,
    io: VecDeque<IoRequest>,
    counters: Counters,
}

impl DataPlane {
    /// A data plane whose viewers reach it at `advertised`.
    pub fn new(
        advertised: SocketAddr,
        disk: bool,
        offer_timeout: Duration,
        stall_timeout: Duration,
    ) -> Self {
        DataPlane {
            rtc: Rtc::new(advertised, offer_timeout, stall_timeout),
            cache: SegmentCache::default(),
            disk,
            events: VecDeque::new(),
            io: VecDeque::new(),
            counters: Counters::default(),
        }
    }

    /// The one way in: a command, what an I/O task reported, or the time it asked for.
    pub fn handle_input(&mut self, input: Input, now: Instant) {
        match input {
            Input::Command(command) => self.command(command, now),
            Input::Io(event) => self.io_event(event, now),
            Input::Timeout => {
                let events = self.rtc.timeout(now);
                self.events.extend(events);
            }
        }
    }

    /// The next event for the policy; what it counts is counted here.
    pub fn poll_event(&mut self) -> Option<Event> {
        let event = self.events.pop_front()?;
        match &event {
            Event::SegmentSent(sent) => {
                self.counters.uploaded += sent.bytes;
                self.counters.segments_served += u64::from(sent.complete);
            }
            // A segment looked up only in the disk cache and not found there is not an
            // error.
            Event::FetchFailed(failed) if failed.reason != NOT_CACHED => {
                self.counters.fetch_errors += 1;
            }
            Event::TextFetched(TextFetched { text, .. }) => {
                self.counters.downloaded += text.len() as u64;
            }
            _ => {}
        }
        Some(event)
    }

    /// The next datagrams to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.rtc.poll_transmit()
    }

    /// The next I/O to start.
    pub fn poll_io(&mut self) -> Option<IoRequest> {
        self.io.pop_front()
    }

    /// When [`Input::Timeout`] is next due.
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        self.rtc.next_timeout()
    }

    fn command(&mut self, command: Command, now: Instant) {
        tracing::trace!(?command, "carry out");
        let events = match command {
            Command::ServeSegment(serve) => return self.serve(serve, now),
            Command::HttpRequest(request) => self.request(IoRequest::Http(request)),
            Command::FetchSegment(f) => self.fetch_segment(f),
            Command::TrackerConnect(c) => {
                self.request(IoRequest::TrackerConnect { conn: c.conn, url: c.url })
            }
            Command::TrackerSend(t) => {
                self.request(IoRequest::TrackerSend { conn: t.conn, text: t.text })
            }
            Command::TrackerClose(conn) => self.request(IoRequest::TrackerClose(conn)),
            Command::FetchText(f) => {
                self.request(IoRequest::FetchText { fetch: f.fetch, url: f.url })
            }
            Command::FetchCancel(fetch) => self.request(IoRequest::CancelFetch(fetch)),
            Command::Evict(handle) => match self.cache.remove(handle) {
                Some(_) => vec![Event::SegmentEvicted(handle)],
                None => Vec::new(),
            },
            Command::PeerAnswer(a) => self.rtc.answer(a.peer, a.offer, now),
            Command::PeerSend(s) => self.rtc.send(s.peer, Message::Binary(s.data.into()), now),
            Command::PeerSendText(s) => self.rtc.send(s.peer, Message::Text(s.text), now),
            Command::CancelServe(c) => self.rtc.cancel(c.peer, c.handle),
            Command::PeerClose(c) => {
                tracing::debug!(peer = c.peer.0, reason = %c.reason, "policy closed a peer");
                self.rtc.close(c.peer);
                Vec::new()
            }
            Command::PeerOffer(peer) => self.rtc.offer(peer, now),
            Command::PeerAcceptAnswer(a) => self.rtc.accept_answer(a.peer, a.answer, now),
            // Timers live in the runner's tables, the swarm's size in its figures.
            Command::TimerSet(_) | Command::TimerCancel(_) | Command::SwarmSize(_) => Vec::new(),
        };
        self.events.extend(events);
    }

    /// Queues I/O for the driver; nothing happened yet.
    fn request(&mut self, request: IoRequest) -> Vec<Event> {
        self.io.push_back(request);
        Vec::new()
    }

    /// Where a segment is fetched to; a fetch that may come only from a disk cache
    /// this worker does not have fails at once.
    fn fetch_segment(&mut self, f: FetchSegment) -> Vec<Event> {
        let (fetch, url, range) = (f.fetch, f.url, f.range);
        let request = match (f.tier, self.disk) {
            (CacheTier::DiskIfCached, true) => IoRequest::LookUpOnDisk { fetch, url, range },
            (CacheTier::DiskIfCached, false) => {
                let reason = NOT_CACHED.into();
                return vec![Event::FetchFailed(FetchFailed { fetch, status: None, reason })];
            }
            (CacheTier::Disk, disk) => IoRequest::FetchSegment { fetch, url, range, disk },
            (CacheTier::Memory, _) => IoRequest::FetchSegment { fetch, url, range, disk: false },
        };
        self.request(request)
    }

    /// Queues a serve and its end. A disk segment not at hand is read by the driver and
    /// the serve waits in the viewer's queue meanwhile; a segment no longer held is
    /// reported sent short.
    fn serve(&mut self, s: ServeSegment, now: Instant) {
        let bytes = match self.cache.for_serve(s.handle) {
            ForServe::Gone => {
                self.events.push_back(Event::SegmentSent(SegmentSent {
                    peer: s.peer,
                    handle: s.handle,
                    bytes: 0,
                    complete: false,
                }));
                return;
            }
            ForServe::Ready(bytes) => Some(bytes),
            ForServe::Reading { read } => {
                if let Some(key) = read {
                    self.io.push_back(IoRequest::ReadFromDisk(key));
                }
                None
            }
        };
        let serve = webrtc::Serve {
            handle: s.handle,
            bytes,
            offset: s.offset,
            message_size: s.message_size,
            trailer: s.end.unwrap_or_default(),
        };
        let events = self.rtc.serve(s.peer, serve, now);
        self.events.extend(events);
    }

    fn io_event(&mut self, event: IoEvent, now: Instant) {
        match event {
            IoEvent::Datagram { from, data } => {
                let events = self.rtc.receive(from, data, now);
                self.events.extend(events);
            }
            IoEvent::Policy(event) => self.events.push_back(event),
            IoEvent::SegmentFetched {
                fetch,
                url,
                range,
                bytes,
                on_disk,
                from_origin,
                reservation,
            } => {
                let size = bytes.len() as u64;
                if from_origin {
                    self.counters.downloaded += size;
                }
                let handle = self.cache.keep_fetched(bytes, on_disk, reservation);
                let tier = self.cache.get(handle).map_or(CacheTier::Memory, |held| held.tier());
                let segment = SegmentInfo { handle, url, range, size, tier };
                self.events.push_back(Event::SegmentStored(SegmentStored { fetch, segment }));
            }
            IoEvent::DiskLookedUp { fetch, url, range, key, size } => {
                let event = match size {
                    Some(size) => {
                        let handle = self.cache.keep_on_disk(key, size);
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
                self.events.push_back(event);
            }
            // The serves waiting for the read get the bytes, or end unsent; a copy that
            // is gone or damaged is no longer held, and the policy hears so.
            IoEvent::DiskRead { key, bytes } => {
                let (waiting, evicted) = self.cache.read_done(key, bytes.as_ref());
                for handle in waiting {
                    let events = self.rtc.loaded(handle, bytes.clone(), now);
                    self.events.extend(events);
                }
                self.events.extend(evicted.into_iter().map(Event::SegmentEvicted));
            }
        }
    }

    /// Closes every connection (DTLS close_notify, so viewers know at once); the
    /// datagrams that say so are then to send.
    pub fn close_all(&mut self) {
        self.rtc.close_all();
    }

    /// Counted so far: uploads, downloads, segments served, fetch errors.
    pub fn counters(&self) -> Counters {
        self.counters
    }

    pub fn cache(&self) -> &SegmentCache {
        &self.cache
    }

    /// Viewers: connections whose DataChannel is open. Connections still being set up
    /// and offers waiting for an answer are not viewers yet.
    pub fn viewers(&self) -> usize {
        self.rtc.viewers()
    }

    /// Offers of ours waiting for an answer.
    pub fn offers_pending(&self) -> usize {
        self.rtc.offers_pending()
    }

    /// Source addresses taken for viewers' connections, all together (each only after
    /// a STUN request proved it knows that connection's password; a few per viewer).
    pub fn viewer_addresses(&self) -> usize {
        self.rtc.addresses()
    }

    /// STUN requests dropped for failing their integrity check.
    pub fn forged_stun(&self) -> u64 {
        self.rtc.forged_stun()
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::dataplane::budget::MemoryBudget;
    use crate::policy::wire::{
        ConnId, FetchId, FetchSegment, MessageSize, PeerId, SegmentHandle, TrackerConnect,
    };

    fn plane(disk: bool) -> DataPlane {
        let at = SocketAddr::from(([127, 0, 0, 1], 9));
        DataPlane::new(at, disk, Duration::from_secs(60), Duration::from_secs(60))
    }

    fn events(plane: &mut DataPlane) -> Vec<Event> {
        std::iter::from_fn(|| plane.poll_event()).collect()
    }

    fn fetch(fetch: u64, tier: CacheTier) -> Input {
        let url = format!("http://o.example/{fetch}");
        Input::Command(Command::FetchSegment(FetchSegment {
            fetch: FetchId(fetch),
            url,
            range: None,
            tier,
        }))
    }

    #[test]
    fn io_is_asked_for_as_values_and_counted_once_as_it_drains() {
        let now = Instant::now();
        let mut plane = plane(false);
        let connect =
            Command::TrackerConnect(TrackerConnect { conn: ConnId(1), url: "ws://t/".into() });
        plane.handle_input(Input::Command(connect.clone()), now);
        let connect = IoRequest::TrackerConnect { conn: ConnId(1), url: "ws://t/".into() };
        assert_eq!(plane.poll_io(), Some(connect));
        // Without a disk cache: `disk` becomes memory, `disk-if-cached` finds nothing
        // (which is no fetch error).
        plane.handle_input(fetch(1, CacheTier::Disk), now);
        let Some(IoRequest::FetchSegment { disk, .. }) = plane.poll_io() else { panic!() };
        assert!(!disk, "kept in memory");
        plane.handle_input(fetch(2, CacheTier::DiskIfCached), now);
        assert_eq!(plane.poll_io(), None);
        assert!(
            matches!(&events(&mut plane)[..], [Event::FetchFailed(f)] if f.reason == NOT_CACHED)
        );
        assert_eq!(plane.counters(), Counters::default());

        let budget = MemoryBudget::new(1 << 20);
        let fetched = |fetch, from_origin| IoEvent::SegmentFetched {
            fetch,
            url: "http://o.example/s".into(),
            range: None,
            bytes: Bytes::from_static(b"12345"),
            on_disk: None,
            from_origin,
            reservation: budget.reservation(),
        };
        plane.handle_input(Input::Io(fetched(FetchId(1), true)), now);
        plane.handle_input(Input::Io(fetched(FetchId(3), false)), now);
        let failed = FetchFailed { fetch: FetchId(4), status: Some(500), reason: "500".into() };
        plane.handle_input(Input::Io(IoEvent::Policy(Event::FetchFailed(failed))), now);
        assert_eq!(events(&mut plane).len(), 3);
        let counted = plane.counters();
        assert_eq!((counted.downloaded, counted.fetch_errors), (5, 1), "disk hits are no download");
        assert_eq!(plane.cache().budgeted_bytes(), 10);
    }

    #[test]
    fn serves_of_a_disk_segment_ask_for_one_read_and_a_lost_copy_is_evicted() {
        let now = Instant::now();
        let mut plane = plane(true);
        let found = |fetch| IoEvent::DiskLookedUp {
            fetch,
            url: "http://o.example/s".into(),
            range: None,
            key: "k".into(),
            size: Some(5),
        };
        plane.handle_input(Input::Io(found(FetchId(1))), now);
        plane.handle_input(Input::Io(found(FetchId(2))), now);
        let handles: Vec<SegmentHandle> = events(&mut plane)
            .into_iter()
            .map(|e| match e {
                Event::SegmentStored(s) => s.segment.handle,
                other => panic!("{other:?}"),
            })
            .collect();
        for (peer, handle) in [(PeerId(7), handles[0]), (PeerId(8), handles[1])] {
            let message_size = MessageSize::AtMost(16 << 10);
            let serve = ServeSegment { peer, handle, offset: 0, message_size, end: None };
            plane.handle_input(Input::Command(Command::ServeSegment(serve)), now);
        }
        assert_eq!(plane.poll_io(), Some(IoRequest::ReadFromDisk("k".into())));
        assert_eq!(plane.poll_io(), None, "one read for both");
        plane.handle_input(Input::Io(IoEvent::DiskRead { key: "k".into(), bytes: None }), now);
        let evicted: Vec<Event> = events(&mut plane);
        assert_eq!(evicted, handles.iter().map(|h| Event::SegmentEvicted(*h)).collect::<Vec<_>>());
        assert!(plane.cache().is_empty());
    }
}
