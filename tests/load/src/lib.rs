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

/// A connection of a viewer's, as the viewer sees it.
#[derive(Debug)]
struct Link {
    commands: mpsc::UnboundedSender<ToLink>,
    /// The peer at the other end, once known (an answer names it).
    remote: Option<String>,
    open: bool,
    /// The segments it announced.
    has: BTreeSet<i64>,
    /// When our offer on it was made, while it waits for an answer.
    offered: Option<(Instant, String)>,
}

/// A request in flight.
#[derive(Debug, Clone, Copy)]
struct Asked {
    link: u64,
    id: i64,
    at: Instant,
}

type Tracker =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// One simulated viewer.
struct Viewer {
    index: usize,
    args: Arc<Args>,
    origin: Arc<Vec<Segment>>,
    started: Instant,
    /// The end of the run; moved forward if the run is stopped early.
    deadline: tokio::sync::watch::Receiver<Instant>,
    peer_id: String,
    /// Every simulated viewer's peer id (for `--isolated`).
    swarm: Arc<Vec<String>>,
    links: HashMap<u64, Link>,
    next_link: u64,
    /// Peer ids connected: one connection per peer (attempts still connecting may be
    /// several; the first to open wins).
    remotes: HashSet<String>,
    events: mpsc::UnboundedSender<(u64, FromLink)>,
    inbox: mpsc::UnboundedReceiver<(u64, FromLink)>,
    interval: Duration,
    asked: Option<Asked>,
    request: i64,
    cursor: usize,
    /// What it got (for `--share`).
    have: BTreeSet<i64>,
    rng: rand::rngs::SmallRng,
    role: Role,
    /// The connection a hostile viewer misbehaves on.
    misbehaving_on: Option<u64>,
}

impl Viewer {
    fn new(
        index: usize,
        args: Arc<Args>,
        origin: Arc<Vec<Segment>>,
        swarm: Arc<Vec<String>>,
        started: Instant,
        deadline: tokio::sync::watch::Receiver<Instant>,
    ) -> Viewer {
        let rng = rand::rngs::SmallRng::from_os_rng();
        let (events, inbox) = mpsc::unbounded_channel();
        Viewer {
            index,
            args,
            origin,
            started,
            deadline,
            peer_id: swarm[index].clone(),
            swarm,
            links: HashMap::new(),
            next_link: 0,
            remotes: HashSet::new(),
            events,
            inbox,
            interval: DEFAULT_INTERVAL,
            asked: None,
            request: 0,
            cursor: index,
            have: BTreeSet::new(),
            rng,
            role: Role::Viewer,
            misbehaving_on: None,
        }
    }

    /// From joining the swarm to the end of the run.
    async fn watch(&mut self, seen: &mut Seen) -> anyhow::Result<()> {
        let joined = Instant::now();
        let (mut tracker, _) = tokio_tungstenite::connect_async(self.args.tracker.as_str())
            .await
            .context("tracker unreachable")?;
        self.announce(&mut tracker, Some("started"), seen).await?;
        let mut announce_at = Instant::now() + self.interval;
        let mut next_request = self.first_request_time(joined);
        loop {
            let now = Instant::now();
            let deadline = *self.deadline.borrow();
            if now >= deadline + DRAIN {
                if self.asked.is_some() {
                    seen.fail(self.started, "request unanswered at the end");
                }
                break;
            }
            if now >= deadline && self.asked.is_none() {
                break;
            }
            if self.role == Role::Viewer
                && now < deadline
                && self.asked.is_none()
                && now >= next_request
            {
                self.ask(now);
                // A paced viewer keeps its own rhythm: the next request one pace after
                // this slot, or, if it had nobody to ask, at its next slot (so viewers
                // that met their peer at the same moment still ask at different ones).
                let pace = Duration::from_millis(self.args.pace_ms);
                if !pace.is_zero() {
                    while next_request <= now {
                        next_request += pace;
                    }
                }
            }
            // What is due is done here, whichever branch woke the loop.
            self.expire_offers(now);
            if now >= announce_at && now < deadline {
                self.announce(&mut tracker, None, seen).await?;
                announce_at = now + self.interval;
            }
            let expiry = self.links.values().filter_map(|l| l.offered.as_ref()).map(|o| o.0).min();
            // A request that could not be made (no peer has segments yet) waits for an
            // announcement, not for its time again.
            let request_at = (self.asked.is_none() && next_request > now).then_some(next_request);
            let wake = [
                Some(announce_at),
                request_at,
                expiry.map(|at| at + OFFER_TIMEOUT),
                Some(deadline),
                Some(deadline + DRAIN),
            ]
            .into_iter()
            .flatten()
            .filter(|at| *at > now)
            .min()
            .unwrap_or(now + Duration::from_millis(100));
            tokio::select! {
                message = tracker.next() => {
                    let text = match message {
                        Some(Ok(Message::Text(text))) => text.to_string(),
                        Some(Ok(_)) => continue,
                        Some(Err(e)) => bail!("tracker connection failed: {e}"),
                        None => bail!("the tracker closed the connection"),
                    };
                    self.on_tracker(&mut tracker, &text, seen).await?;
                }
                Some((link, event)) = self.inbox.recv() => {
                    self.on_link(link, event, joined, seen);
                }
                Ok(()) = self.deadline.changed() => {}
                () = tokio::time::sleep_until(wake.into()) => {}
            }
        }
        let _ = self.announce(&mut tracker, Some("stopped"), seen).await;
        let _ = tracker.close(None).await;
        if !seen.connected && self.role == Role::Viewer {
            seen.fail(self.started, "never met a peer with segments");
        }
        Ok(())
    }

    /// Paced viewers ask at every moment, not in step: viewer i of n first asks at i/n
    /// of the pace into a period, counted from the run's start.
    fn first_request_time(&self, now: Instant) -> Instant {
        if self.args.pace_ms == 0 {
            return now;
        }
        let pace = Duration::from_millis(self.args.pace_ms);
        let phase = pace * self.index as u32 / self.args.viewers.max(1) as u32;
        let start = self.started + phase;
        let periods = now.saturating_duration_since(start).as_millis().div_ceil(pace.as_millis());
        start + pace * periods as u32
    }

    /// Announces, with five fresh offers unless it is leaving.
    async fn announce(
        &mut self,
        tracker: &mut Tracker,
        event: Option<&str>,
        seen: &mut Seen,
    ) -> anyhow::Result<()> {
        let mut offers = Vec::new();
        if event != Some("stopped") {
            for _ in 0..OFFERS {
                let Ok(socket) = udp_socket() else { continue };
                let local = socket.local_addr()?;
                let Ok((connection, sdp)) = offering_connection(local) else { continue };
                let offer_id: String =
                    (0..20).map(|_| char::from(self.rng.random_range(b'a'..=b'z'))).collect();
                let link = self.spawn_link(connection, socket, local);
                if let Some(state) = self.links.get_mut(&link) {
                    state.offered = Some((Instant::now(), offer_id.clone()));
                }
                offers.push(json!({"offer": {"type": "offer", "sdp": sdp}, "offer_id": offer_id}));
            }
        }
        seen.offers_sent += offers.len() as u64;
        let mut message = json!({
            "action": "announce", "info_hash": self.args.info_hash, "peer_id": self.peer_id,
            "numwant": OFFERS, "uploaded": 0, "downloaded": 0, "offers": offers,
        });
        if let Some(event) = event {
            message["event"] = json!(event);
        }
        tracker.send(Message::text(message.to_string())).await.context("tracker connection failed")
    }

    async fn on_tracker(
        &mut self,
        tracker: &mut Tracker,
        text: &str,
        seen: &mut Seen,
    ) -> anyhow::Result<()> {
        let Ok(message) = serde_json::from_str::<Value>(text) else { return Ok(()) };
        if let Some(reason) = message["failure reason"].as_str() {
            seen.fail(self.started, format!("tracker: {reason}"));
            return Ok(());
        }
        if let Some(interval) = message["interval"].as_u64() {
            self.interval = Duration::from_secs(interval.max(10));
        }
        let from = message["peer_id"].as_str().unwrap_or_default().to_string();
        // Another simulated viewer, when viewers cannot reach each other.
        let unreachable = self.args.isolated && self.swarm.contains(&from);
        if let Some(sdp) = message["offer"]["sdp"].as_str() {
            *seen.offers_from.entry(from.clone()).or_default() += 1;
            // As p2p-media-loader's tracker client does: a peer already connected is
            // refused; with one still connecting this is another attempt, and the first
            // of them to connect wins (the others are destroyed then).
            if from.is_empty() || self.remotes.contains(&from) || unreachable {
                return Ok(());
            }
            let Ok(socket) = udp_socket() else { return Ok(()) };
            let local = socket.local_addr()?;
            let Ok((connection, answer)) = answering_connection(local, sdp) else {
                return Ok(());
            };
            let link = self.spawn_link(connection, socket, local);
            if let Some(state) = self.links.get_mut(&link) {
                state.remote = Some(from.clone());
            }
            let reply = json!({
                "action": "announce", "info_hash": self.args.info_hash, "peer_id": self.peer_id,
                "to_peer_id": from, "offer_id": message["offer_id"],
                "answer": {"type": "answer", "sdp": answer},
            });
            seen.answers_sent += 1;
            tracker
                .send(Message::text(reply.to_string()))
                .await
                .context("tracker connection failed")?;
        } else if let (Some(sdp), Some(offer_id)) =
            (message["answer"]["sdp"].as_str(), message["offer_id"].as_str())
        {
            let Some((link, state)) = self
                .links
                .iter_mut()
                .find(|(_, l)| l.offered.as_ref().is_some_and(|(_, id)| id == offer_id))
            else {
                return Ok(());
            };
            state.offered = None;
            if from.is_empty() || self.remotes.contains(&from) || unreachable {
                let _ = state.commands.send(ToLink::Close);
                let link = *link;
                self.links.remove(&link);
                return Ok(());
            }
            state.remote = Some(from);
            let _ = state.commands.send(ToLink::Answer(sdp.to_string()));
        }
        Ok(())
    }

    fn on_link(&mut self, link: u64, event: FromLink, joined: Instant, seen: &mut Seen) {
        match event {
            FromLink::Open => {
                if let Some(remote) = self.links.get(&link).and_then(|l| l.remote.clone()) {
                    // The first connection to a peer wins; the others are destroyed.
                    let duplicate = !self.remotes.insert(remote.clone());
                    for (other, state) in &self.links {
                        let loser = if duplicate { *other == link } else { *other != link };
                        if loser && !state.open && state.remote.as_ref() == Some(&remote) {
                            let _ = state.commands.send(ToLink::Close);
                        }
                    }
                    if duplicate {
                        return;
                    }
                }
                if let Some(state) = self.links.get_mut(&link) {
                    state.open = true;
                    if self.args.share {
                        let _ = state
                            .commands
                            .send(ToLink::Announce(self.have.iter().copied().collect()));
                    }
                }
                let open = self.links.values().filter(|l| l.open).count();
                seen.links_most = seen.links_most.max(open);
            }
            FromLink::Announced(ids) => {
                let known = self.origin.len() as i64;
                if let Some(state) = self.links.get_mut(&link) {
                    state.has = ids.into_iter().filter(|id| (0..known).contains(id)).collect();
                    if !state.has.is_empty() && !seen.connected {
                        seen.connected = true;
                        seen.connect_ms = Some(joined.elapsed().as_secs_f64() * 1e3);
                    }
                    if !state.has.is_empty()
                        && self.role != Role::Viewer
                        && self.misbehaving_on.is_none()
                    {
                        self.misbehaving_on = Some(link);
                        let _ = state.commands.send(ToLink::Misbehave(self.role));
                    }
                }
            }
            FromLink::Fetched { id, outcome } => {
                let Some(asked) = self.asked.take_if(|a| a.link == link && a.id == id) else {
                    return;
                };
                match outcome {
                    Ok(bytes) => {
                        seen.completed_at.push(self.started.elapsed().as_secs_f64());
                        seen.segments += 1;
                        seen.bytes += bytes as u64;
                        seen.latencies_ms.push(asked.at.elapsed().as_secs_f64() * 1e3);
                        if self.args.share && self.have.insert(id) {
                            let ids: Vec<i64> = self.have.iter().copied().collect();
                            for state in self.links.values().filter(|l| l.open) {
                                let _ = state.commands.send(ToLink::Announce(ids.clone()));
                            }
                        }
                    }
                    Err(reason) => seen.fail(self.started, reason),
                }
            }
            FromLink::Requested { id, request } => {
                let Some(state) = self.links.get(&link) else { return };
                let bytes = (self.args.share && self.have.contains(&id))
                    .then(|| self.origin.get(id as usize).map(|s| s.bytes.clone()))
                    .flatten();
                seen.served += u64::from(bytes.is_some());
                let _ = state.commands.send(ToLink::Serve { id, request, bytes });
            }
            FromLink::Forged(sent) => seen.forged_stun += sent,
            FromLink::Closed(reason) => {
                if self.misbehaving_on == Some(link) {
                    seen.closed_for_it = true;
                }
                if let Some(state) = self.links.remove(&link) {
                    if state.open {
                        seen.links_closed += 1;
                    }
                    if let Some(remote) = state.remote.filter(|_| state.open) {
                        self.remotes.remove(&remote);
                    }
                }
                if self.asked.take_if(|a| a.link == link).is_some() {
                    seen.fail(self.started, format!("lost the connection while asking: {reason}"));
                    seen.dropped = true;
                }
            }
        }
    }

    /// Asks for the next segment, from a random peer that has it.
    fn ask(&mut self, now: Instant) {
        let announced: BTreeSet<i64> =
            self.links.values().filter(|l| l.open).flat_map(|l| l.has.iter().copied()).collect();
        if announced.is_empty() {
            return;
        }
        let ids: Vec<i64> = announced.into_iter().collect();
        let id = ids[self.cursor % ids.len()];
        self.cursor += 1;
        let holders: Vec<u64> = self
            .links
            .iter()
            .filter(|(_, l)| l.open && l.has.contains(&id))
            .map(|(k, _)| *k)
            .collect();
        let link = holders[self.rng.random_range(0..holders.len())];
        self.request += 1;
        let request = self.request;
        if let Some(state) = self.links.get(&link)
            && state.commands.send(ToLink::Fetch { id, request }).is_ok()
        {
            self.asked = Some(Asked { link, id, at: now });
        }
    }

    /// Offers nobody answered in time go, as the tracker client drops them.
    fn expire_offers(&mut self, now: Instant) {
        let expired: Vec<u64> = self
            .links
            .iter()
            .filter(|(_, l)| l.offered.as_ref().is_some_and(|(at, _)| now >= *at + OFFER_TIMEOUT))
            .map(|(k, _)| *k)
            .collect();
        for link in expired {
            if let Some(state) = self.links.remove(&link) {
                let _ = state.commands.send(ToLink::Close);
            }
        }
    }

    /// The viewer leaves: every connection closes.
    fn leave(&mut self, seen: &mut Seen) {
        seen.links_open = self.links.values().filter(|l| l.open).count();
        for (_, state) in self.links.drain() {
            let _ = state.commands.send(ToLink::Close);
        }
    }

    fn spawn_link(
        &mut self,
        connection: RTCPeerConnection,
        socket: UdpSocket,
        local: SocketAddr,
    ) -> u64 {
        let link = self.next_link;
        self.next_link += 1;
        let (commands, inbox) = mpsc::unbounded_channel();
        let driver = LinkDriver {
            link,
            connection,
            socket,
            local,
            inbox,
            events: self.events.clone(),
            origin: self.origin.clone(),
            channel: None,
            joiner: wire::Joiner::default(),
            fetching: None,
            misbehaving: None,
            chunks_sent: 0,
            deaf: false,
            remote_address: None,
        };
        tokio::spawn(driver.run());
        self.links.insert(
            link,
            Link { commands, remote: None, open: false, has: BTreeSet::new(), offered: None },
        );
        link
    }
}

/// What a viewer tells one of its connections.
#[derive(Debug)]
enum ToLink {
    /// The answer to our offer on it.
    Answer(String),
    Fetch {
        id: i64,
        request: i64,
    },
    /// Answer a peer's request: the segment's bytes, or absent.
    Serve {
        id: i64,
        request: i64,
        bytes: Option<Bytes>,
    },
    Announce(Vec<i64>),
    /// Misbehave on this connection until it closes.
    Misbehave(Role),
    Close,
}

/// What a connection tells its viewer.
#[derive(Debug)]
enum FromLink {
    Open,
    Announced(Vec<i64>),
    /// A requested segment arrived whole and checked (its size), or why not.
    Fetched {
        id: i64,
        outcome: Result<usize, String>,
    },
    Requested {
        id: i64,
        request: i64,
    },
    Closed(String),
    /// Forged STUN requests sent in a round.
    Forged(u64),
}

/// A segment being received: its size once announced, and its bytes hashed as they come.
struct Fetching {
    id: i64,
    request: i64,
    size: Option<usize>,
    received: usize,
    hasher: Sha256,
    last_progress: Instant,
}

/// One connection: its socket, its timers, the viewer's commands and the wire protocol.
struct LinkDriver {
    link: u64,
    connection: RTCPeerConnection,
    socket: UdpSocket,
    local: SocketAddr,
    inbox: mpsc::UnboundedReceiver<ToLink>,
    events: mpsc::UnboundedSender<(u64, FromLink)>,
    origin: Arc<Vec<Segment>>,
    channel: Option<rtc::data_channel::RTCDataChannelId>,
    joiner: wire::Joiner,
    fetching: Option<Fetching>,
    misbehaving: Option<Role>,
    /// Chunks of the endless command sent so far.
    chunks_sent: u64,
    /// Drops every datagram but STUN unread ([`Role::Unread`]).
    deaf: bool,
    /// Where the other peer's datagrams come from.
    remote_address: Option<SocketAddr>,
}

impl LinkDriver {
    async fn run(mut self) {
        let reason =
            self.drive().await.err().map_or("closed by the viewer".into(), |e| format!("{e:#}"));
        let _ = self.connection.close();
        self.flush();
        let _ = self.events.send((self.link, FromLink::Closed(reason)));
    }

    async fn drive(&mut self) -> anyhow::Result<()> {
        let mut buffer = vec![0u8; 65_536];
        loop {
            self.flush();
            let patience = self.fetching.as_ref().map(|f| f.last_progress + SEGMENT_PATIENCE);
            let mischief = self.misbehaving.map(|_| Instant::now() + Duration::from_millis(10));
            let wake = [self.connection.poll_timeout(), patience, mischief]
                .into_iter()
                .flatten()
                .min()
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                received = self.socket.recv_from(&mut buffer) => {
                    let (len, from) = received?;
                    // Deaf: ICE kept alive (STUN, first byte below 4), nothing else
                    // read, so nothing acknowledged.
                    if self.deaf && buffer[..len].first().is_none_or(|b| *b >= 4) {
                        continue;
                    }
                    self.remote_address = Some(from);
                    let transport = TransportContext {
                        local_addr: self.local,
                        peer_addr: from,
                        ecn: None,
                        transport_protocol: TransportProtocol::UDP,
                    };
                    let message = buffer[..len].into();
                    let _ = self.connection.handle_read(TaggedBytesMut { now: Instant::now(), transport, message });
                }
                () = tokio::time::sleep_until(wake.into()) => {
                    let _ = self.connection.handle_timeout(Instant::now());
                    self.misbehave()?;
                    if let Some(f) = self.fetching.take_if(|f| f.last_progress.elapsed() >= SEGMENT_PATIENCE) {
                        // As the library does: the request is cancelled, and bytes of it
                        // still on their way are ignored (they come before the next
                        // request's header).
                        let _ = self.send(&PeerCommand::CancelSegmentRequest { id: f.id, request: f.request });
                        let reason = match f.size {
                            None => "no answer to the request",
                            Some(size) if f.received >= size => "every byte, then no SegmentDataSendingCompleted",
                            Some(_) => "no bytes for too long",
                        };
                        self.report(FromLink::Fetched { id: f.id, outcome: Err(reason.into()) });
                    }
                }
                command = self.inbox.recv() => match command {
                    None | Some(ToLink::Close) => return Ok(()),
                    Some(command) => self.on_command(command)?,
                },
            }
            self.poll()?;
        }
    }

    fn on_command(&mut self, command: ToLink) -> anyhow::Result<()> {
        match command {
            ToLink::Answer(sdp) => {
                let answer = RTCSessionDescription::answer(sdp)?;
                self.connection
                    .set_remote_description(Instant::now(), answer)
                    .map_err(|e| anyhow!("answer refused: {e}"))?;
            }
            ToLink::Fetch { id, request } => {
                self.send(&PeerCommand::SegmentRequest { id, request, byte_from: None })?;
                self.fetching = Some(Fetching {
                    id,
                    request,
                    size: None,
                    received: 0,
                    hasher: Sha256::new(),
                    last_progress: Instant::now(),
                });
            }
            ToLink::Serve { id, request, bytes: Some(bytes) } => {
                self.send(&PeerCommand::SegmentData { id, request, size: bytes.len() as i64 })?;
                for chunk in bytes.chunks(wire::MAX_MESSAGE) {
                    self.send_raw(chunk)?;
                }
                self.send(&PeerCommand::SegmentDataSendingCompleted { id, request })?;
            }
            ToLink::Serve { id, request, bytes: None } => {
                self.send(&PeerCommand::SegmentAbsent { id, request })?;
            }
            ToLink::Announce(loaded) => {
                self.send(&PeerCommand::SegmentsAnnouncement { loaded, loading: vec![] })?;
            }
            ToLink::Misbehave(Role::Unread) => {
                let ids = 0..self.origin.len() as i64;
                for (request, id) in ids.enumerate() {
                    let request = request as i64;
                    self.send(&PeerCommand::SegmentRequest { id, request, byte_from: None })?;
                }
                self.deaf = true;
            }
            ToLink::Misbehave(role) => self.misbehaving = Some(role),
            ToLink::Close => {}
        }
        Ok(())
    }

    /// One round of a hostile viewer's mischief.
    fn misbehave(&mut self) -> anyhow::Result<()> {
        match self.misbehaving {
            Some(Role::EndlessCommand) => {
                // The first chunk of a command, then continuations, never the last.
                let mut chunk =
                    if self.chunks_sent == 0 { b"cstr".to_vec() } else { b"dstr".to_vec() };
                chunk.resize(60_000, 0);
                chunk.extend_from_slice(b"dend");
                self.send_raw(&chunk)?;
                self.chunks_sent += 1;
            }
            Some(Role::RequestFlood) => {
                for n in 0..20 {
                    let request =
                        PeerCommand::SegmentRequest { id: n % 3, request: n, byte_from: None };
                    self.send(&request)?;
                }
            }
            Some(Role::ForgedStun) => self.forge_stun(),
            Some(Role::Viewer | Role::Unread) | None => {}
        }
        Ok(())
    }

    /// A round of STUN binding requests that name this connection (the other peer's
    /// ufrag and ours, as ours would) but are keyed with a wrong password, each from a
    /// new address.
    fn forge_stun(&mut self) {
        let (Some(to), Some(remote), Some(local)) = (
            self.remote_address,
            self.connection.remote_description().map(|d| d.sdp.clone()),
            self.connection.local_description().map(|d| d.sdp),
        ) else {
            return;
        };
        let (Some(theirs), Some(ours)) =
            (sdp_value(&remote, "a=ice-ufrag:"), sdp_value(&local, "a=ice-ufrag:"))
        else {
            return;
        };
        let forged = binding_request(&format!("{theirs}:{ours}"), "not-the-password");
        let mut random = rand::rngs::SmallRng::from_os_rng();
        let mut sent = 0;
        for _ in 0..FORGED_PER_ROUND {
            let (b, c, d) = (random.random(), random.random(), random.random_range(2..255));
            let Ok(socket) = std::net::UdpSocket::bind((std::net::Ipv4Addr::new(127, b, c, d), 0))
            else {
                continue;
            };
            sent += u64::from(socket.send_to(&forged, to).is_ok());
        }
        self.report(FromLink::Forged(sent));
    }

    /// Runs what the connection has for us: state changes, messages.
    fn poll(&mut self) -> anyhow::Result<()> {
        while let Some(event) = self.connection.poll_event() {
            match event {
                RTCPeerConnectionEvent::OnDataChannel(RTCDataChannelEvent::OnOpen(id))
                    if self.channel.is_none() =>
                {
                    self.channel = Some(id);
                    self.report(FromLink::Open);
                }
                RTCPeerConnectionEvent::OnDataChannel(RTCDataChannelEvent::OnClose(_)) => {
                    bail!("the peer closed the channel");
                }
                RTCPeerConnectionEvent::OnConnectionStateChangeEvent(
                    state @ (RTCPeerConnectionState::Failed
                    | RTCPeerConnectionState::Closed
                    | RTCPeerConnectionState::Disconnected),
                ) => bail!("connection {state}"),
                _ => {}
            }
        }
        while let Some(TaggedRTCMessage { message, .. }) = self.connection.poll_read() {
            let RTCMessage::DataChannelMessage(_, message) = message else { continue };
            if wire::is_command_chunk(&message.data) {
                let joined = self.joiner.push(&message.data).map_err(|e| anyhow!("{e}"))?;
                if let Some(body) = joined {
                    let command = wire::decode(&body).map_err(|e| anyhow!("{e}"))?;
                    self.on_peer_command(command);
                }
            } else if let Some(f) = self.fetching.as_mut().filter(|f| f.size.is_some()) {
                // Bytes before the request's header are an earlier request's, as the
                // library reads them.
                f.hasher.update(&message.data);
                f.received += message.data.len();
                f.last_progress = Instant::now();
            }
        }
        Ok(())
    }

    fn on_peer_command(&mut self, command: PeerCommand) {
        let current = |f: &Fetching, id: i64, request: i64| f.id == id && f.request == request;
        match command {
            PeerCommand::SegmentsAnnouncement { loaded, .. } => {
                self.report(FromLink::Announced(loaded))
            }
            PeerCommand::SegmentRequest { id, request, .. } => {
                self.report(FromLink::Requested { id, request })
            }
            PeerCommand::SegmentData { id, request, size } => {
                if let Some(f) = self.fetching.as_mut().filter(|f| current(f, id, request)) {
                    f.size = Some(size as usize);
                    f.last_progress = Instant::now();
                }
            }
            PeerCommand::SegmentDataSendingCompleted { id, request } => {
                if let Some(f) = self.fetching.take_if(|f| current(f, id, request)) {
                    let outcome = self.check(f);
                    self.report(FromLink::Fetched { id, outcome });
                }
            }
            PeerCommand::SegmentAbsent { id, request } => {
                if self.fetching.take_if(|f| current(f, id, request)).is_some() {
                    self.report(FromLink::Fetched { id, outcome: Err("absent".into()) });
                }
            }
            PeerCommand::CancelSegmentRequest { .. } => {}
        }
    }

    /// Whether a completed segment is the origin's, byte for byte.
    fn check(&self, fetching: Fetching) -> Result<usize, String> {
        let want = self.origin.get(fetching.id as usize).ok_or("a segment the origin has not")?;
        if fetching.size != Some(fetching.received) {
            return Err(format!(
                "completed with {} bytes of {:?}",
                fetching.received, fetching.size
            ));
        }
        let hash: [u8; 32] = fetching.hasher.finalize().into();
        if fetching.received != want.bytes.len() || hash != want.sha256 {
            return Err("segment bytes differ from the origin's".into());
        }
        Ok(fetching.received)
    }

    fn report(&self, event: FromLink) {
        let _ = self.events.send((self.link, event));
    }

    fn send(&mut self, command: &PeerCommand) -> anyhow::Result<()> {
        for message in wire::encode(command, wire::MAX_MESSAGE).map_err(|e| anyhow!("{e}"))? {
            self.send_raw(&message)?;
        }
        Ok(())
    }

    fn send_raw(&mut self, data: &[u8]) -> anyhow::Result<()> {
        let id = self.channel.context("no channel")?;
        self.connection
            .data_channel(id)
            .context("channel gone")?
            .send(Instant::now(), data.into())
            .map_err(|e| anyhow!("{e}"))?;
        self.flush();
        Ok(())
    }

    fn flush(&mut self) {
        while let Some(datagram) = self.connection.poll_write() {
            let _ = self.socket.try_send_to(&datagram.message, datagram.transport.peer_addr);
        }
    }
}

/// A STUN binding request as a viewer's ICE agent sends it, its MESSAGE-INTEGRITY keyed
/// by `key`.
pub fn binding_request(username: &str, key: &str) -> Bytes {
    use rtc::stun::attributes::ATTR_USERNAME;
    use rtc::stun::fingerprint::FINGERPRINT;
    use rtc::stun::integrity::MessageIntegrity;
    use rtc::stun::message::{BINDING_REQUEST, Message, Setter, TransactionId};
    use rtc::stun::textattrs::TextAttribute;
    let mut message = Message::new();
    let Ok(provider) = rtc::crypto::default_provider() else { return Bytes::new() };
    let setters: [Box<dyn Setter + '_>; 5] = [
        Box::new(BINDING_REQUEST),
        Box::new(TransactionId::new()),
        Box::new(TextAttribute::new(ATTR_USERNAME, username.to_string())),
        Box::new(MessageIntegrity::new_short_term_integrity_with_provider(
            key.to_string(),
            provider.crypto(),
        )),
        Box::new(FINGERPRINT),
    ];
    match message.build(&setters) {
        Ok(()) => message.raw.into(),
        Err(_) => Bytes::new(),
    }
}

/// The value of an SDP attribute line (`a=ice-pwd:` ...), if the SDP has one.
pub fn sdp_value<'a>(sdp: &'a str, attribute: &str) -> Option<&'a str> {
    sdp.lines().find_map(|l| l.strip_prefix(attribute)).map(str::trim)
}

/// A peer connection that offers as a browser viewer does: one DataChannel with a
/// 40-hex-character label, its host candidate at `local` only, all in the offer (no
/// trickle). Returns it and the offer's SDP.
pub fn offering_connection(local: SocketAddr) -> anyhow::Result<(RTCPeerConnection, String)> {
    let mut connection = browser_connection()?;
    // A random-looking 40-hex-character label, as simple-peer makes.
    let label = format!("{:040x}", local.port() as u128 * 0x9e37_79b9_7f4a_7c15);
    connection.create_data_channel(&label, None).map_err(|e| anyhow!("{e}"))?;
    add_host_candidate(&mut connection, local)?;
    let offer = connection.create_offer(None).map_err(|e| anyhow!("{e}"))?;
    connection.set_local_description(Instant::now(), offer.clone()).map_err(|e| anyhow!("{e}"))?;
    Ok((connection, offer.sdp))
}

/// A peer connection that answers `offer` as a browser viewer does (simple-peer with
/// `trickle: false`): it takes whatever DataChannel the offerer opens, and its answer
/// carries its host candidate at `local`. Returns it and the answer's SDP.
pub fn answering_connection(
    local: SocketAddr,
    offer: &str,
) -> anyhow::Result<(RTCPeerConnection, String)> {
    let mut connection = browser_connection()?;
    let offer = RTCSessionDescription::offer(offer.to_string()).map_err(|e| anyhow!("{e}"))?;
    connection.set_remote_description(Instant::now(), offer).map_err(|e| anyhow!("{e}"))?;
    add_host_candidate(&mut connection, local)?;
    let answer = connection.create_answer(None).map_err(|e| anyhow!("{e}"))?;
    connection.set_local_description(Instant::now(), answer.clone()).map_err(|e| anyhow!("{e}"))?;
    Ok((connection, answer.sdp))
}

/// A full ICE agent, as browsers are.
fn browser_connection() -> anyhow::Result<RTCPeerConnection> {
    RTCPeerConnectionBuilder::new()
        .with_configuration(RTCConfigurationBuilder::new().build())
        .build(Instant::now())
        .map_err(|e| anyhow!("{e}"))
}

/// The one candidate a viewer on loopback has, then the end of candidates.
fn add_host_candidate(connection: &mut RTCPeerConnection, local: SocketAddr) -> anyhow::Result<()> {
    let candidate = CandidateHostConfig {
        base_config: CandidateConfig {
            network: "udp".into(),
            address: local.ip().to_string(),
            port: local.port(),
            component: 1,
            ..Default::default()
        },
        ..Default::default()
    }
    .new_candidate_host()
    .map_err(|e| anyhow!("{e}"))?;
    let candidate = RTCIceCandidate::from(&candidate).to_json().map_err(|e| anyhow!("{e}"))?;
    connection.add_local_candidate(candidate).map_err(|e| anyhow!("{e}"))?;
    let _ = connection.add_local_candidate(RTCIceCandidateInit::default());
    Ok(())
}

/// A connection's UDP socket on 127.0.0.1. Its receive buffer is raised as a browser's is
/// (Chromium asks for about 1 MiB): with the default, a sender's burst overflows it
/// whenever this process is busy, and each lost datagram costs a retransmission
/// timeout, which would be measured as the sender's latency.
fn udp_socket() -> std::io::Result<UdpSocket> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)?;
    let _ = socket.set_recv_buffer_size(1 << 20);
    socket.set_nonblocking(true)?;
    socket.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())?;
    UdpSocket::from_std(socket.into())
}
