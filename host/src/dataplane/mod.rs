//! A worker's data path: viewers' WebRTC connections, tracker WebSockets, origin
//! fetches, the segment cache in memory and on disk. It carries out the commands the
//! policy runner admitted and turns what happens into policy events.
//!
//! Two halves, in the style of str0m and quinn-proto:
//! - [`DataPlane`] (`plane.rs`) is the state machine: one input method
//!   ([`DataPlane::handle_input`]), and outputs polled as values (events for the
//!   policy, datagrams to send, I/O to start, when it next wants time). It never touches
//!   a socket, a file or a clock.
//! - [`Driver`] (`driver.rs`) is the thin loop around it: it owns the UDP socket, the
//!   tracker and fetch tasks and the disk cache, feeds their results in as inputs and
//!   carries out what the state machine asks.
//!
//! Every connection and fetch runs in a task of its own and reports through one
//! bounded channel, so a slow or hostile remote end can only stall itself. Nothing
//! here interprets a protocol: texts go to the policy as they came.

mod budget;
mod cache;
pub mod disk;
mod driver;
mod fetch;
mod http;
pub(crate) use http::{BodyError, body_within};
pub mod origin;
mod plane;
mod tracker;
mod udp;
mod webrtc;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::{Bytes, BytesMut};

use crate::policy::wire::{ByteRange, Command, ConnId, Event, FetchId, HttpRequest};
pub use cache::{Held, SegmentCache};
pub use driver::Driver;
pub use plane::DataPlane;
pub use webrtc::{MAX_MESSAGE_BYTES as MAX_DATACHANNEL_MESSAGE, Transmit};

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
    /// A disk segment's bytes were read and checked for serving (none: gone or damaged).
    DiskRead { key: String, bytes: Option<Bytes> },
    /// A `disk-if-cached` fetch looked in the disk cache: the size it found, if any.
    DiskLookedUp {
        fetch: FetchId,
        url: String,
        range: Option<ByteRange>,
        key: String,
        size: Option<u64>,
    },
    /// A UDP datagram for the WebRTC layer (mutable bytes: the library decrypts in
    /// place).
    Datagram { from: SocketAddr, data: BytesMut },
}

/// What the state machine is handed: a command, what an I/O task reported, or the time
/// it asked for.
#[derive(Debug)]
pub enum Input {
    Command(Command),
    Io(IoEvent),
    /// The moment [`DataPlane::poll_timeout`] named has come.
    Timeout,
}

impl Input {
    /// One call's commands as inputs, in order.
    pub fn commands(commands: Vec<Command>) -> Vec<Input> {
        commands.into_iter().map(Input::Command).collect()
    }
}

/// I/O the state machine asks its driver to start; the outcome comes back as an
/// [`IoEvent`]. Each runs in a task of its own.
#[derive(Debug, PartialEq)]
pub enum IoRequest {
    TrackerConnect {
        conn: ConnId,
        url: String,
    },
    TrackerSend {
        conn: ConnId,
        text: String,
    },
    TrackerClose(ConnId),
    FetchText {
        fetch: FetchId,
        url: String,
    },
    /// A segment from the origin, through the disk cache when `disk` (the state
    /// machine has decided: only when there is one and the policy asked for it).
    FetchSegment {
        fetch: FetchId,
        url: String,
        range: Option<ByteRange>,
        disk: bool,
    },
    /// Whether the disk cache has a segment ([`IoEvent::DiskLookedUp`]).
    LookUpOnDisk {
        fetch: FetchId,
        url: String,
        range: Option<ByteRange>,
    },
    CancelFetch(FetchId),
    /// An HTTP request to one of the seed's trackers ([`Event::HttpResponse`] or
    /// [`Event::HttpFailed`]).
    Http(HttpRequest),
    /// Read and check a disk segment for the serves waiting for it
    /// ([`IoEvent::DiskRead`]).
    ReadFromDisk(String),
}

/// Why a `disk-if-cached` fetch failed when the disk cache does not have the segment.
pub const NOT_CACHED: &str = "not cached";
