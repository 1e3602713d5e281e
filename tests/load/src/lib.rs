//! superpeer-load: many simulated p2p-media-loader viewers in one process, for load
//! tests of a super peer (or any WebTorrent peer that serves p2p-media-loader).
//!
//! Each viewer does what the browser library does on the wire: it announces in the
//! swarm on a real WebTorrent tracker with a WebRTC offer, connects to whoever answers
//! (an `rtc` peer connection on its own UDP socket: ICE, DTLS, SCTP), waits for the
//! peer's segment announcement, and requests announced segments one at a time with the
//! p2p-media-loader 2.x wire protocol, either as fast as they come or at a set pace.
//! Every segment received is checked byte for byte against the origin's copy. It
//! measures the time from request to last byte, failures, and its own CPU, and prints
//! one JSON summary on stdout. It never decides pass or fail: the caller does.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use futures_util::{SinkExt, StreamExt};
use rtc::peer_connection::configuration::RTCConfigurationBuilder;
use rtc::peer_connection::event::{RTCDataChannelEvent, RTCPeerConnectionEvent};
use rtc::peer_connection::message::{RTCMessage, TaggedRTCMessage};
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::transport::{
    CandidateConfig, CandidateHostConfig, RTCIceCandidate, RTCIceCandidateInit,
};
use rtc::peer_connection::{RTCPeerConnection, RTCPeerConnectionBuilder};
use rtc::sansio::Protocol;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::net::UdpSocket;
use tokio_tungstenite::tungstenite::Message;

// The default policy's codec for the same protocol: one implementation, tested there
// against the reference vectors.
#[path = "../../../guest/pml/src/wire.rs"]
#[allow(dead_code)]
mod wire;

use wire::PeerCommand;

#[derive(Debug, Clone, clap::Parser)]
#[command(
    about = "Simulated p2p-media-loader viewers: real WebRTC, real tracker, every byte checked"
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
}

/// What one viewer saw.
#[derive(Debug, Default)]
struct Seen {
    connected: bool,
    connect_ms: Option<f64>,
    segments: u64,
    bytes: u64,
    latencies_ms: Vec<f64>,
    failures: Vec<String>,
    /// Connected, then lost the connection before the end.
    dropped: bool,
}

/// A segment as the origin has it.
#[derive(Debug)]
struct Expected {
    size: usize,
    sha256: [u8; 32],
}

/// How long a viewer waits for a segment's next bytes before counting it failed
/// (p2p-media-loader gives up after 2 s without bytes; this only bounds a stuck test).
const SEGMENT_PATIENCE: Duration = Duration::from_secs(10);
const CONNECT_PATIENCE: Duration = Duration::from_secs(30);

/// Runs the viewers to the end and returns the summary.
pub async fn run(args: Args) -> anyhow::Result<serde_json::Value> {
    let expected = Arc::new(origin_segments(&args.media).await?);
    let cpu_before = own_cpu_seconds();
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.seconds);
    let args = Arc::new(args);
    let mut viewers = Vec::new();
    for index in 0..args.viewers {
        let (shared, expected) = (args.clone(), expected.clone());
        viewers.push(tokio::spawn(async move {
            let mut seen = Seen::default();
            if let Err(e) = watch(index, &shared, &expected, deadline, &mut seen).await {
                seen.failures.push(format!("{e:#}"));
            }
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
    let elapsed = started.elapsed().as_secs_f64();
    let mut latencies: Vec<f64> = all.iter().flat_map(|s| s.latencies_ms.iter().copied()).collect();
    latencies.sort_by(f64::total_cmp);
    let mut connects: Vec<f64> = all.iter().filter_map(|s| s.connect_ms).collect();
    connects.sort_by(f64::total_cmp);
    let bytes: u64 = all.iter().map(|s| s.bytes).sum();
    let mut reasons: HashMap<String, usize> = HashMap::new();
    for failure in all.iter().flat_map(|s| &s.failures) {
        *reasons.entry(failure.clone()).or_default() += 1;
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
        "connect_ms_p50": percentile(&connects, 0.50),
        "connect_ms_p99": percentile(&connects, 0.99),
        "failures": all.iter().map(|s| s.failures.len()).sum::<usize>(),
        "dropped": all.iter().filter(|s| s.dropped).count(),
        "failure_reasons": reasons,
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

/// Every segment of the media playlist, fetched once, by the id viewers give it.
async fn origin_segments(media: &str) -> anyhow::Result<Vec<Expected>> {
    let http = reqwest::Client::new();
    let playlist = http.get(media).send().await?.error_for_status()?.text().await?;
    let base = media.rsplit_once('/').map_or(media, |(base, _)| base);
    let mut segments = Vec::new();
    for line in playlist.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let url = if line.contains("://") { line.to_string() } else { format!("{base}/{line}") };
        let bytes = http.get(&url).send().await?.error_for_status()?.bytes().await?;
        segments.push(Expected { size: bytes.len(), sha256: Sha256::digest(&bytes).into() });
    }
    if segments.is_empty() {
        bail!("{media} lists no segments");
    }
    Ok(segments)
}

/// One viewer, from joining the swarm to `deadline`.
async fn watch(
    index: usize,
    args: &Args,
    expected: &[Expected],
    deadline: Instant,
    seen: &mut Seen,
) -> anyhow::Result<()> {
    let joined = Instant::now();
    let mut peer = Peer::new().await?;
    let answer = signal(index, args, &peer.offer_sdp).await?;
    peer.connection
        .set_remote_description(Instant::now(), RTCSessionDescription::answer(answer)?)
        .map_err(|e| anyhow!("answer refused: {e}"))?;

    // Connected once the DataChannel is open and the peer said what it has.
    let mut loaded: Vec<i64> = Vec::new();
    let connect_by = Instant::now() + CONNECT_PATIENCE;
    while loaded.is_empty() {
        for command in peer.step(connect_by).await? {
            if let PeerCommand::SegmentsAnnouncement { loaded: ids, .. } = command {
                loaded = ids.into_iter().filter(|&id| (id as usize) < expected.len()).collect();
            }
        }
        if Instant::now() > connect_by {
            bail!("no announcement within {CONNECT_PATIENCE:?}");
        }
    }
    seen.connected = true;
    seen.connect_ms = Some(joined.elapsed().as_secs_f64() * 1e3);

    let mut request = 0i64;
    let mut next_id = index % loaded.len();
    if args.pace_ms > 0 {
        // Real audiences ask at every moment, not in step: viewer i of n asks at
        // i/n of the pace into each period, counted from the run's start.
        let pace = Duration::from_millis(args.pace_ms);
        let phase = pace * index as u32 / args.viewers.max(1) as u32;
        let start = deadline - Duration::from_secs(args.seconds) + phase;
        let elapsed = Instant::now().saturating_duration_since(start);
        let periods = elapsed.as_millis().div_ceil(pace.as_millis()) as u32;
        if let Err(e) = peer.idle_until((start + pace * periods).min(deadline)).await {
            seen.dropped = true;
            bail!("{e:#}");
        }
    }
    while Instant::now() < deadline {
        let id = loaded[next_id % loaded.len()];
        next_id += 1;
        request += 1;
        let asked = Instant::now();
        match peer.fetch(id, request, deadline).await {
            Ok(bytes) => {
                let want = &expected[id as usize];
                if bytes.len() != want.size
                    || <[u8; 32]>::from(Sha256::digest(&bytes)) != want.sha256
                {
                    seen.failures.push("segment bytes differ from the origin's".into());
                } else {
                    seen.segments += 1;
                    seen.bytes += bytes.len() as u64;
                    seen.latencies_ms.push(asked.elapsed().as_secs_f64() * 1e3);
                }
            }
            Err(Fetch::Deadline) => break,
            Err(Fetch::Failed(reason)) => seen.failures.push(reason),
            Err(Fetch::Lost(reason)) => {
                seen.failures.push(reason);
                seen.dropped = true;
                break;
            }
        }
        if args.pace_ms > 0 {
            let next = asked + Duration::from_millis(args.pace_ms);
            if let Err(e) = peer.idle_until(next.min(deadline)).await {
                seen.failures.push(format!("{e:#}"));
                seen.dropped = true;
                break;
            }
        }
    }
    Ok(())
}

/// Offers per announce, as browsers send them; the tracker relays each to a different
/// peer of the swarm.
const OFFERS: usize = 5;
/// Viewers waiting for an answer at once. The tracker relays offers to random peers of
/// the swarm and simulated viewers answer nobody, so at most `OFFERS - 1` of them wait
/// at a time: with them and the seeder the swarm has no more peers than an announce
/// has offers, and every announce reaches the seeder. A viewer leaves the swarm once
/// answered; the connection itself is set up concurrently with the others'.
static SIGNALLING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(OFFERS - 1);
/// How long to wait for an answer before announcing the offer again (the tracker may
/// have relayed it to a viewer that was just leaving).
const ANSWER_PATIENCE: Duration = Duration::from_secs(3);

/// Announces with an offer and returns the SDP of the first answer to it.
async fn signal(index: usize, args: &Args, offer: &str) -> anyhow::Result<String> {
    let _turn = SIGNALLING.acquire().await?;
    let (mut tracker, _) = tokio_tungstenite::connect_async(args.tracker.as_str())
        .await
        .context("tracker unreachable")?;
    // 20-character ids, as the browser library makes them.
    let peer_id = format!("-PM0203-{:012}", index);
    let attempts = (CONNECT_PATIENCE.as_secs() / ANSWER_PATIENCE.as_secs()).max(1);
    for attempt in 0..attempts {
        // One connection, one offer; under several ids so it reaches several peers.
        let offer_ids: Vec<String> =
            (0..OFFERS).map(|n| format!("load{index:010}{attempt:04}{n:02}")).collect();
        let offers: Vec<_> = offer_ids
            .iter()
            .map(|id| json!({"offer": {"type": "offer", "sdp": offer}, "offer_id": id}))
            .collect();
        let announce = json!({
            "action": "announce", "info_hash": args.info_hash, "peer_id": peer_id,
            "numwant": OFFERS, "uploaded": 0, "downloaded": 0, "event": "started",
            "offers": offers,
        });
        tracker.send(Message::text(announce.to_string())).await?;
        let answer = tokio::time::timeout(ANSWER_PATIENCE, async {
            while let Some(message) = tracker.next().await {
                let Ok(text) = message?.into_text() else { continue };
                let Ok(reply) = serde_json::from_str::<serde_json::Value>(&text) else { continue };
                if offer_ids.iter().any(|id| reply["offer_id"] == id.as_str())
                    && let Some(sdp) = reply["answer"]["sdp"].as_str()
                {
                    return Ok(sdp.to_string());
                }
            }
            bail!("the tracker closed before an answer came")
        })
        .await;
        if let Ok(answer) = answer {
            let _ = tracker.close(None).await;
            return answer;
        }
    }
    bail!("no answer within {CONNECT_PATIENCE:?}")
}

enum Fetch {
    Deadline,
    /// This segment failed; the connection may serve the next.
    Failed(String),
    /// The connection is gone.
    Lost(String),
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

/// A viewer's UDP socket on 127.0.0.1. Its receive buffer is raised as a browser's is
/// (Chromium asks for about 1 MiB): with the default, a sender's burst overflows it
/// whenever this process is busy, and each lost datagram costs a retransmission
/// timeout, which would be measured as superpeer's latency.
fn udp_socket() -> std::io::Result<UdpSocket> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)?;
    let _ = socket.set_recv_buffer_size(1 << 20);
    socket.set_nonblocking(true)?;
    socket.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())?;
    UdpSocket::from_std(socket.into())
}

/// A viewer's WebRTC end: one peer connection on its own UDP socket.
struct Peer {
    connection: RTCPeerConnection,
    socket: UdpSocket,
    local: SocketAddr,
    channel: Option<rtc::data_channel::RTCDataChannelId>,
    offer_sdp: String,
    joiner: wire::Joiner,
    buffer: Vec<u8>,
    /// Raw segment bytes received since the last step.
    data: Vec<Vec<u8>>,
}

impl Peer {
    async fn new() -> anyhow::Result<Peer> {
        let socket = udp_socket()?;
        let local = socket.local_addr()?;
        let (connection, offer_sdp) = offering_connection(local)?;
        Ok(Peer {
            connection,
            socket,
            local,
            channel: None,
            offer_sdp,
            joiner: wire::Joiner::default(),
            buffer: vec![0; 65_536],
            data: Vec::new(),
        })
    }

    /// Sends what is due, waits for one datagram or timer (at most until `until`),
    /// and returns the commands that completed.
    /// Keeps the connection going until `until` without asking for anything, as a
    /// browser does between requests: it acknowledges what arrives and runs its timers.
    /// A viewer that stopped reading instead would leave the sender's last packets
    /// unacknowledged until its retransmission timer fired, and shrink its window.
    async fn idle_until(&mut self, until: Instant) -> anyhow::Result<()> {
        while Instant::now() < until {
            self.step(until).await?;
            self.data.clear();
        }
        Ok(())
    }

    async fn step(&mut self, until: Instant) -> anyhow::Result<Vec<PeerCommand>> {
        self.flush();
        let timer = self.connection.poll_timeout().unwrap_or(until).min(until);
        tokio::select! {
            received = self.socket.recv_from(&mut self.buffer) => {
                let (len, from) = received?;
                let transport = TransportContext {
                    local_addr: self.local,
                    peer_addr: from,
                    ecn: None,
                    transport_protocol: TransportProtocol::UDP,
                };
                let message = self.buffer[..len].into();
                let _ = self.connection.handle_read(TaggedBytesMut { now: Instant::now(), transport, message });
            }
            () = tokio::time::sleep_until(timer.into()) => {
                let _ = self.connection.handle_timeout(Instant::now());
            }
        }
        let mut commands = Vec::new();
        while let Some(event) = self.connection.poll_event() {
            match event {
                RTCPeerConnectionEvent::OnDataChannel(RTCDataChannelEvent::OnOpen(id)) => {
                    self.channel = Some(id);
                }
                RTCPeerConnectionEvent::OnDataChannel(RTCDataChannelEvent::OnClose(_)) => {
                    bail!("the peer closed the channel");
                }
                _ => {}
            }
        }
        while let Some(TaggedRTCMessage { message, .. }) = self.connection.poll_read() {
            let RTCMessage::DataChannelMessage(_, message) = message else { continue };
            if wire::is_command_chunk(&message.data) {
                let joined = self.joiner.push(&message.data).map_err(|e| anyhow!("{e}"))?;
                if let Some(body) = joined {
                    commands.push(wire::decode(&body).map_err(|e| anyhow!("{e}"))?);
                }
            } else {
                self.data.push(message.data.to_vec());
            }
        }
        self.flush();
        Ok(commands)
    }

    fn flush(&mut self) {
        while let Some(datagram) = self.connection.poll_write() {
            let _ = self.socket.try_send_to(&datagram.message, datagram.transport.peer_addr);
        }
    }

    fn send(&mut self, command: &PeerCommand) -> anyhow::Result<()> {
        let id = self.channel.context("no channel")?;
        for message in wire::encode(command, wire::MAX_MESSAGE).map_err(|e| anyhow!("{e}"))? {
            self.connection
                .data_channel(id)
                .context("channel gone")?
                .send(Instant::now(), message.as_slice().into())
                .map_err(|e| anyhow!("{e}"))?;
        }
        self.flush();
        Ok(())
    }

    /// Requests segment `id` and returns its bytes once the sender says it is complete.
    async fn fetch(&mut self, id: i64, request: i64, deadline: Instant) -> Result<Vec<u8>, Fetch> {
        let lost = |e: anyhow::Error| Fetch::Lost(format!("{e:#}"));
        self.data.clear();
        self.send(&PeerCommand::SegmentRequest { id, request, byte_from: None }).map_err(lost)?;
        let mut size: Option<usize> = None;
        let mut bytes = Vec::new();
        let mut last_progress = Instant::now();
        loop {
            if Instant::now() > deadline {
                return Err(Fetch::Deadline);
            }
            if last_progress.elapsed() > SEGMENT_PATIENCE {
                return Err(Fetch::Failed("no bytes for too long".into()));
            }
            let commands =
                self.step(deadline.min(last_progress + SEGMENT_PATIENCE)).await.map_err(lost)?;
            if !self.data.is_empty() {
                last_progress = Instant::now();
                for chunk in self.data.drain(..) {
                    bytes.extend_from_slice(&chunk);
                }
            }
            for command in commands {
                match command {
                    PeerCommand::SegmentData { id: got, request: r, size: s }
                        if got == id && r == request =>
                    {
                        size = Some(s as usize);
                        last_progress = Instant::now();
                    }
                    PeerCommand::SegmentDataSendingCompleted { id: got, request: r }
                        if got == id && r == request =>
                    {
                        return match size {
                            Some(size) if size == bytes.len() => Ok(bytes),
                            _ => Err(Fetch::Failed(format!(
                                "completed with {} bytes of {size:?}",
                                bytes.len()
                            ))),
                        };
                    }
                    PeerCommand::SegmentAbsent { id: got, .. } if got == id => {
                        return Err(Fetch::Failed("absent".into()));
                    }
                    _ => {}
                }
            }
        }
    }
}
