//! superpeer-load: a swarm of simulated p2p-media-loader viewers in one process, for load
//! tests of a super peer (or any WebTorrent peer that serves p2p-media-loader).
//!
//! Each viewer does on the wire what the browser library does (p2p-media-loader 2.x with
//! bittorrent-tracker's client). It opens its own WebSocket to the tracker and announces
//! with five offers, each a WebRTC connection of its own (`rtc`: its own UDP socket, ICE,
//! DTLS, SCTP), and again with five new ones every interval the tracker asks for; offers
//! nobody answered go after 50 s. It answers the offers the tracker relays to it, takes
//! the answers to its own, and never keeps two connections to one peer id: of several
//! attempts at one peer (both sides offered at once) the first to connect wins and the
//! others are destroyed, as the library's tracker client does. Nobody takes
//! turns: a viewer meets whoever the tracker hands its offers to and whoever offers to
//! it, as in a real swarm, where a peer that only answers meets few.
//!
//! Over each connection it speaks the 2.x wire protocol: it asks for segments, one at a
//! time, from peers that announced them (a random one of those that have it), either as
//! fast as they come or at a set pace, and checks each against the origin's copy. With
//! `--share` viewers also announce what they got and serve it to each other (the
//! library's default); without it they run as with `isP2PUploadDisabled`, so the peer
//! under test is the only one with segments to give. A request still unanswered when the
//! run ends (after a grace for the last ones) is a failure, as is a viewer that never met
//! a peer with segments.
//!
//! It measures the time from request to last byte, failures, and its own CPU, and prints
//! one JSON summary on stdout at the end of the run (the command ends the run early on
//! SIGTERM or SIGINT, as if its time were up). It never decides pass or fail: the
//! caller does.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use rand::{Rng, SeedableRng};
use rtc::peer_connection::configuration::RTCConfigurationBuilder;
use rtc::peer_connection::event::{RTCDataChannelEvent, RTCPeerConnectionEvent};
use rtc::peer_connection::message::{RTCMessage, TaggedRTCMessage};
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::state::RTCPeerConnectionState;
use rtc::peer_connection::transport::{
    CandidateConfig, CandidateHostConfig, RTCIceCandidate, RTCIceCandidateInit,
};
use rtc::peer_connection::{RTCPeerConnection, RTCPeerConnectionBuilder};
use rtc::sansio::Protocol;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

// The default policy's codec for the same protocol: one implementation, tested there
// against the reference vectors.
#[path = "../../../guest/pml/src/wire.rs"]
#[allow(dead_code)]
mod wire;

use wire::PeerCommand;

mod connection;
mod link;
mod viewer;

use connection::udp_socket;
pub use connection::{answering_connection, binding_request, offering_connection, sdp_value};
use viewer::Viewer;

#[derive(Debug, Clone, clap::Parser)]
#[command(
    about = "A swarm of simulated p2p-media-loader viewers: real WebRTC, real tracker, every byte checked"
)]
pub struct Args {
    /// WebTorrent tracker URL (ws:// or wss://).
    #[arg(long)]
    pub tracker: String,
    /// The swarm's info hash, as viewers compute it (20 characters).
    #[arg(long)]
    pub info_hash: String,
    /// The VOD media playlist of that swarm: viewers number its segments by position
    /// and every segment received is compared with the one fetched from here.
    #[arg(long)]
    pub media: String,
    /// How many viewers.
    #[arg(long, default_value_t = 10)]
    pub viewers: usize,
    /// How long they watch, from the first viewer's start.
    #[arg(long, default_value_t = 20)]
    pub seconds: u64,
    /// Milliseconds from one segment's request to the next (0: the next as soon as the
    /// last arrived, as a VOD viewer filling its buffer does). Paced viewers spread
    /// their requests evenly over the pace, as an audience does.
    #[arg(long, default_value_t = 0)]
    pub pace_ms: u64,
    /// Milliseconds between viewers joining.
    #[arg(long, default_value_t = 5)]
    pub ramp_ms: u64,
    /// Viewers announce what they got and serve it to each other, as the library does by
    /// default; without it only the peer under test has segments to give.
    #[arg(long)]
    pub share: bool,
    /// Viewers cannot connect to each other, as behind NATs that block browser-to-browser
    /// links (what a super peer is for): they drop each other's offers and answers, and
    /// only other peers (the one under test) reach them. Spares this process the
    /// viewer-to-viewer connections, which real viewers make on machines of their own.
    #[arg(long)]
    pub isolated: bool,
    /// More viewers that, once they meet a peer with segments, send it a command in
    /// chunks that never ends.
    #[arg(long, default_value_t = 0)]
    pub hostile_endless: usize,
    /// More viewers that, once they meet a peer with segments, ask it for segments as fast
    /// as they can.
    #[arg(long, default_value_t = 0)]
    pub hostile_flood: usize,
    /// More viewers that, once they meet a peer with segments, ask it for every segment
    /// and then acknowledge nothing: every datagram it sends them but STUN is dropped
    /// unread, so their ICE stays alive and their connection open.
    #[arg(long, default_value_t = 0)]
    pub hostile_unread: usize,
    /// More viewers that, once they meet a peer with segments, send it STUN binding
    /// requests naming their connection with it but keyed with a wrong password, 100
    /// every 10 ms, each from a new address in 127.0.0.0/8.
    #[arg(long, default_value_t = 0)]
    pub hostile_stun: usize,
}

impl Args {
    /// `viewers` viewers of `media` in the swarm `info_hash` at `tracker`, everything else
    /// as the command's defaults.
    pub fn new(tracker: &str, info_hash: &str, media: &str, viewers: usize) -> Args {
        let viewers = viewers.to_string();
        <Args as clap::Parser>::parse_from([
            "superpeer-load",
            "--tracker",
            tracker,
            "--info-hash",
            info_hash,
            "--media",
            media,
            "--viewers",
            &viewers,
        ])
    }
}

/// How a viewer behaves once it meets a peer with segments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Viewer,
    /// Sends a command in 60 KB chunks, one every 10 ms, that never ends.
    EndlessCommand,
    /// Sends segment requests, 20 every 10 ms.
    RequestFlood,
    /// Asks for every segment, then drops whatever comes but STUN.
    Unread,
    /// Sends forged STUN binding requests from new addresses.
    ForgedStun,
}

/// Forged STUN requests a [`Role::ForgedStun`] viewer sends per round.
const FORGED_PER_ROUND: usize = 100;

/// Offers per announce, and peers asked for, as the library's tracker client sends them.
const OFFERS: usize = 5;
/// How long the tracker client keeps an offer nobody answered.
const OFFER_TIMEOUT: Duration = Duration::from_secs(50);
/// Re-announce interval until the tracker says otherwise (the client's default).
const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);
/// How long a viewer waits for a segment's next bytes before counting it failed
/// (p2p-media-loader gives up after 2 s without bytes; this only bounds a stuck run).
const SEGMENT_PATIENCE: Duration = Duration::from_secs(10);
/// After the run, how long requests still in flight may take to complete before they
/// count as unanswered.
const DRAIN: Duration = Duration::from_secs(5);

/// What one viewer saw.
#[derive(Debug, Default)]
struct Seen {
    /// Met a peer that announced segments.
    connected: bool,
    connect_ms: Option<f64>,
    segments: u64,
    bytes: u64,
    latencies_ms: Vec<f64>,
    failures: Vec<String>,
    /// When each failure happened, in seconds from the start of the run.
    failed_at: Vec<f64>,
    /// Lost a connection while a request on it was in flight.
    dropped: bool,
    /// Open connections the other side closed (or that failed), asking or not.
    links_closed: u64,
    /// Peers connected at the end, and at most at once.
    links_open: usize,
    links_most: usize,
    offers_sent: u64,
    answers_sent: u64,
    /// Segments served to other viewers (`--share`).
    served: u64,
    /// Offers the tracker relayed to this viewer, by the peer that made them.
    offers_from: HashMap<String, u64>,
    /// When each segment arrived whole, in seconds from the start of the run.
    completed_at: Vec<f64>,
    role: Option<Role>,
    /// A misbehaving viewer's connection was closed by the peer it misbehaved with.
    closed_for_it: bool,
    /// Forged STUN requests sent ([`Role::ForgedStun`]).
    forged_stun: u64,
}

impl Seen {
    fn fail(&mut self, started: Instant, reason: impl Into<String>) {
        self.failed_at.push(started.elapsed().as_secs_f64());
        self.failures.push(reason.into());
    }
}

/// A segment as the origin has it.
#[derive(Debug)]
struct Segment {
    bytes: Bytes,
    sha256: [u8; 32],
}

/// Runs the viewers to the end and returns the summary.
pub async fn run(args: Args) -> anyhow::Result<Value> {
    run_until(args, std::future::pending()).await
}

/// Runs the viewers until the end, or until `stop` completes (the run's time is then up
/// at once), and returns the summary.
pub async fn run_until(
    args: Args,
    stop: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<Value> {
    raise_open_file_limit();
    let origin = Arc::new(origin_segments(&args.media).await?);
    let cpu_before = own_cpu_seconds();
    let started = Instant::now();
    let (end, deadline) = tokio::sync::watch::channel(started + Duration::from_secs(args.seconds));
    tokio::spawn(async move {
        stop.await;
        let _ = end.send(Instant::now());
    });
    let args = Arc::new(args);
    let everyone = args.viewers
        + args.hostile_endless
        + args.hostile_flood
        + args.hostile_unread
        + args.hostile_stun;
    let peer_ids: Arc<Vec<String>> = Arc::new((0..everyone).map(|_| random_peer_id()).collect());
    let mut viewers = Vec::new();
    for index in 0..everyone {
        let role = match index {
            i if i < args.viewers => Role::Viewer,
            i if i < args.viewers + args.hostile_endless => Role::EndlessCommand,
            i if i < args.viewers + args.hostile_endless + args.hostile_flood => Role::RequestFlood,
            i if i < everyone - args.hostile_stun => Role::Unread,
            _ => Role::ForgedStun,
        };
        if *deadline.borrow() <= Instant::now() {
            break;
        }
        let (shared, origin, deadline) = (args.clone(), origin.clone(), deadline.clone());
        let swarm = peer_ids.clone();
        viewers.push(tokio::spawn(async move {
            let mut seen = Seen { role: Some(role), ..Seen::default() };
            let mut viewer = Viewer::new(index, shared, origin, swarm, started, deadline);
            viewer.role = role;
            if let Err(e) = viewer.watch(&mut seen).await {
                seen.fail(started, format!("{e:#}"));
            }
            viewer.leave(&mut seen);
            seen
        }));
        tokio::time::sleep(Duration::from_millis(args.ramp_ms)).await;
    }
    let mut all = Vec::new();
    for viewer in viewers {
        all.push(viewer.await.unwrap_or_else(|e| Seen {
            failures: vec![format!("viewer task failed: {e}")],
            ..Seen::default()
        }));
    }
    let (hostile, all): (Vec<Seen>, Vec<Seen>) =
        all.into_iter().partition(|s| s.role.is_some_and(|r| r != Role::Viewer));
    // Segments completed in each second of the run, for looking at a moment (a swap).
    let mut per_second: Vec<u64> = Vec::new();
    for at in all.iter().flat_map(|s| &s.completed_at) {
        let second = *at as usize;
        if per_second.len() <= second {
            per_second.resize(second + 1, 0);
        }
        per_second[second] += 1;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let mut latencies: Vec<f64> = all.iter().flat_map(|s| s.latencies_ms.iter().copied()).collect();
    latencies.sort_by(f64::total_cmp);
    let mut connects: Vec<f64> = all.iter().filter_map(|s| s.connect_ms).collect();
    connects.sort_by(f64::total_cmp);
    let mut links: Vec<f64> = all.iter().map(|s| s.links_most as f64).collect();
    links.sort_by(f64::total_cmp);
    let bytes: u64 = all.iter().map(|s| s.bytes).sum();
    let mut reasons: HashMap<String, usize> = HashMap::new();
    for failure in all.iter().flat_map(|s| &s.failures) {
        *reasons.entry(failure.clone()).or_default() += 1;
    }
    let mut failed_at: Vec<f64> = all.iter().flat_map(|s| s.failed_at.iter().copied()).collect();
    failed_at.sort_by(f64::total_cmp);
    let mut offers_from: HashMap<&str, u64> = HashMap::new();
    for (peer, count) in all.iter().flat_map(|s| &s.offers_from) {
        *offers_from.entry(peer).or_default() += count;
    }
    Ok(json!({
        "viewers": args.viewers,
        "connected": all.iter().filter(|s| s.connected).count(),
        "segments": all.iter().map(|s| s.segments).sum::<u64>(),
        "bytes": bytes,
        "seconds": elapsed,
        "mbps": bytes as f64 * 8.0 / elapsed / 1e6,
        "segment_ms_p50": percentile(&latencies, 0.50),
        "segment_ms_p99": percentile(&latencies, 0.99),
        "segment_ms_max": latencies.last(),
        "connect_ms_p50": percentile(&connects, 0.50),
        "connect_ms_p99": percentile(&connects, 0.99),
        "peers_p50": percentile(&links, 0.50),
        "offers_sent": all.iter().map(|s| s.offers_sent).sum::<u64>(),
        "answers_sent": all.iter().map(|s| s.answers_sent).sum::<u64>(),
        "served_to_viewers": all.iter().map(|s| s.served).sum::<u64>(),
        "offers_received_from": offers_from,
        "segments_per_second": per_second,
        "hostile": hostile.len(),
        "hostile_closed": hostile.iter().filter(|s| s.closed_for_it).count(),
        "forged_stun_sent": hostile.iter().map(|s| s.forged_stun).sum::<u64>(),
        "failures": all.iter().map(|s| s.failures.len()).sum::<usize>(),
        "dropped": all.iter().filter(|s| s.dropped).count(),
        "links_closed": all.iter().map(|s| s.links_closed).sum::<u64>(),
        "failure_reasons": reasons,
        "failed_at_s": failed_at,
        "load_cpu_seconds": own_cpu_seconds() - cpu_before,
    }))
}

fn percentile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let at = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted.get(at).copied()
}

/// CPU seconds this process has used (user + system), from `/proc/self/stat`.
fn own_cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else { return 0.0 };
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    // utime and stime are fields 14 and 15; after the command they are 12 and 13.
    let ticks: f64 = [11, 12].iter().filter_map(|&i| fields.get(i)?.parse::<f64>().ok()).sum();
    ticks / 100.0
}

/// Every connection has a socket of its own, as in a browser: hundreds of viewers need
/// thousands of descriptors.
fn raise_open_file_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

/// Every segment of the media playlist, fetched once, by the id viewers give it.
async fn origin_segments(media: &str) -> anyhow::Result<Vec<Segment>> {
    let http = reqwest::Client::new();
    let playlist = http.get(media).send().await?.error_for_status()?.text().await?;
    let base = media.rsplit_once('/').map_or(media, |(base, _)| base);
    let mut segments = Vec::new();
    for line in playlist.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let url = if line.contains("://") { line.to_string() } else { format!("{base}/{line}") };
        let bytes = http.get(&url).send().await?.error_for_status()?.bytes().await?;
        segments.push(Segment { sha256: Sha256::digest(&bytes).into(), bytes });
    }
    if segments.is_empty() {
        bail!("{media} lists no segments");
    }
    Ok(segments)
}

/// A peer id as the library makes them: `-PM0203-` and twelve letters or digits.
fn random_peer_id() -> String {
    const SYMBOLS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rngs::SmallRng::from_os_rng();
    let random = (0..12).map(|_| char::from(SYMBOLS[rng.random_range(0..SYMBOLS.len())]));
    "-PM0203-".chars().chain(random).collect()
}
