//! WebRTC for a worker: every viewer on one UDP socket, the worker as an ICE-lite agent
//! that answers viewers' offers and makes offers of its own, DTLS and SCTP DataChannels
//! from the sans-I/O `rtc` crate.
//!
//! Owns the peer connections, the demultiplexing of datagrams (by the ICE username of
//! STUN requests, then by source address) and the per-viewer send queue that streams
//! segment bytes with back-pressure. It never parses the viewers' protocol: messages
//! go to the policy as they came.
//!
//! An offer waiting for its answer is a connection object and an entry in the deadline
//! set, nothing more: no DTLS or SCTP state exists until the answer is taken, and an
//! offer not answered within its time is dropped by the deadline that every connection
//! already has.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::policy::wire::{
    Event, MessageSize, PeerClosed, PeerId, PeerMessage, SdpReady, SegmentHandle, SegmentSent,
};
use bytes::{Bytes, BytesMut};
use rtc::peer_connection::RTCPeerConnection;
use rtc::peer_connection::RTCPeerConnectionBuilder;
use rtc::peer_connection::certificate::{CertificateParams, RTCCertificate};
use rtc::peer_connection::configuration::RTCConfigurationBuilder;
use rtc::peer_connection::configuration::setting_engine::{
    SctpMaxMessageSize, SettingEngineBuilder,
};
use rtc::peer_connection::event::{RTCDataChannelEvent, RTCPeerConnectionEvent};
use rtc::peer_connection::message::{RTCMessage, TaggedRTCMessage};
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::state::RTCPeerConnectionState;
use rtc::peer_connection::transport::{
    CandidateConfig, CandidateHostConfig, RTCIceCandidate, RTCIceCandidateInit,
};
use rtc::sansio::Protocol;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};

/// Bytes queued in a DataChannel beyond which a viewer's serve waits: enough to keep
/// the link busy (64 KiB a round trip: 5 Mbit/s at 100 ms, far more nearer), little
/// enough that one viewer holds little memory (they are kept until acknowledged).
const SEND_HIGH_WATER: usize = 64 << 10;
/// The largest DataChannel message either side may send (announced in the answer); a
/// policy's messages and serves are held within it (`PolicyLimits`), since a message
/// the connection refuses would hold up the viewer's queue.
pub const MAX_MESSAGE_BYTES: u32 = 64 << 10;
/// The largest SCTP packet we send: the library's own default (the IPv6 minimum MTU
/// after TURN and DTLS overheads), set here so a segment's messages can be cut to
/// whole packets of it.
const SCTP_MTU: u32 = 1191;
/// Where the DataChannel reports it has room again.
const SEND_LOW_WATER: u32 = 32 << 10;
/// What a viewer's send queue may hold (beyond what its DataChannel already took):
/// message bytes and items. A viewer that does not read fills it and is closed; it
/// must never grow the worker's memory.
const MAX_QUEUED_MESSAGE_BYTES: usize = 1 << 20;
const MAX_QUEUED_ITEMS: usize = 1024;
/// Why a viewer was closed for not reading.
pub const SEND_QUEUE_FULL: &str = "send queue full: the viewer is not reading";
/// Source addresses a connection may hold at once: a viewer uses one, a few while its
/// network changes; the oldest gives way to a newer one.
const MAX_ADDRESSES_PER_PEER: usize = 4;
/// Why a viewer was closed for acknowledging nothing newer than it had for
/// [`DataPlaneLimits::stall_timeout`](super::DataPlaneLimits::stall_timeout).
pub const STALLED: &str = "stalled: nothing sent to it acknowledged for too long";
/// Why an offer was dropped: nobody answered it in time.
pub const OFFER_UNANSWERED: &str = "offer not answered in time";

/// Datagrams to send, in order: what one connection wrote in one go (to one address,
/// but for the moments its address changes). The caller sends them; the WebRTC layer
/// never touches a socket.
#[derive(Debug)]
pub struct Transmit {
    pub datagrams: Vec<(SocketAddr, BytesMut)>,
}

/// One DataChannel message: bytes, or a string (which browsers hand to the page as a
/// string, not an ArrayBuffer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Binary(Bytes),
    Text(String),
}

impl Message {
    fn len(&self) -> usize {
        match self {
            Message::Binary(bytes) => bytes.len(),
            Message::Text(text) => text.len(),
        }
    }
}

/// What waits to go out on a viewer's DataChannel, in order.
#[derive(Debug)]
enum Outgoing {
    Message(Message),
    Serve {
        handle: SegmentHandle,
        /// None while the segment is read from disk: the viewer's queue waits at it, so
        /// what was queued after the serve still goes out after it.
        bytes: Option<Bytes>,
        next: usize,
        chunk: usize,
        sent: u64,
        /// Sent after the last byte, then emptied.
        trailer: Bytes,
    },
}

/// A segment to stream to a viewer: its bytes from `offset`, in messages of the size
/// asked for, then `trailer` (if not empty) once every byte went out. Bytes still
/// being read are none; [`Rtc::loaded`] gives them.
pub struct Serve {
    pub handle: SegmentHandle,
    pub bytes: Option<Bytes>,
    pub offset: u64,
    pub message_size: MessageSize,
    pub trailer: Vec<u8>,
}

struct Peer {
    connection: RTCPeerConnection,
    ufrag: String,
    /// Our ICE password for this connection: what a STUN request from a new address
    /// must prove it knows before the address is taken for the viewer's.
    password: String,
    channel: Option<rtc::data_channel::RTCDataChannelId>,
    queue: VecDeque<Outgoing>,
    addresses: Vec<SocketAddr>,
    /// When the connection next wants `handle_timeout`, as last asked (its entry in
    /// [`Rtc::deadlines`]).
    deadline: Option<Instant>,
    /// Until when an offer of ours waits for its answer; none once answered (or for a
    /// connection that answered a viewer's offer).
    offer_expires: Option<Instant>,
    /// Bytes sent on the DataChannel and not acknowledged, as the last turn left them;
    /// what was left right after the viewer last acknowledged some, and when it did
    /// (or last had nothing newer to acknowledge): a viewer that is sent nothing new is
    /// idle, not stalled, whatever its count rests at.
    unacknowledged: usize,
    acknowledged_level: usize,
    acknowledged_at: Instant,
}

impl Peer {
    /// Whether one more item carrying `bytes` of message fits in the send queue. The
    /// queue is short (a cap of items), so its message bytes are counted, not kept.
    /// Bytes sent on the DataChannel that the viewer has not acknowledged yet.
    fn outstanding(&mut self) -> usize {
        let Some(id) = self.channel else { return 0 };
        self.connection.data_channel(id).map_or(0, |channel| channel.outstanding_bytes())
    }

    fn has_room_for(&self, bytes: usize) -> bool {
        let queued: usize = self
            .queue
            .iter()
            .map(|item| match item {
                Outgoing::Message(message) => message.len(),
                Outgoing::Serve { trailer, .. } => trailer.len(),
            })
            .sum();
        self.queue.len() < MAX_QUEUED_ITEMS && queued + bytes <= MAX_QUEUED_MESSAGE_BYTES
    }
}

/// All of a worker's viewers.
pub struct Rtc {
    /// Datagrams written and not yet taken by [`Rtc::poll_transmit`].
    transmits: VecDeque<Transmit>,
    /// One DTLS identity for every connection of this worker: making a key per viewer
    /// would cost a key generation per connection for nothing.
    certificate: Option<RTCCertificate>,
    /// The address in our ICE candidate; datagrams are handed over as received on it.
    advertised: SocketAddr,
    /// Boxed: a connection is kilobytes, and each is taken out and put back on every
    /// turn it gets.
    peers: HashMap<PeerId, Box<Peer>>,
    /// Every connection's next deadline, soonest first. A connection's deadline changes
    /// only when it is handled, so it is asked then, never by scanning them all: the
    /// scan cost a third of the worker's time at a hundred viewers.
    deadlines: BTreeSet<(Instant, PeerId)>,
    by_ufrag: HashMap<String, PeerId>,
    by_address: HashMap<SocketAddr, PeerId>,
    /// How long an offer of ours waits for its answer.
    offer_timeout: Duration,
    /// How long a viewer may leave what was sent to it unacknowledged.
    stall_timeout: Duration,
    /// Connections whose DataChannel is open: the viewers.
    open: usize,
    /// Checks STUN message integrity; none if the platform has no provider.
    crypto: Option<Arc<dyn rtc::crypto::RTCCryptoProvider>>,
    /// STUN requests that named a connection but failed its integrity check.
    forged_stun: u64,
}

impl std::fmt::Debug for Rtc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rtc")
            .field("advertised", &self.advertised)
            .field("peers", &self.peers.len())
            .finish()
    }
}

impl Rtc {
    pub fn new(advertised: SocketAddr, offer_timeout: Duration, stall_timeout: Duration) -> Self {
        let certificate = generate_certificate()
            .map_err(
                |e| tracing::warn!(error = %e, "no shared DTLS certificate; one per connection"),
            )
            .ok();
        Rtc {
            transmits: VecDeque::new(),
            certificate,
            advertised,
            peers: HashMap::new(),
            by_ufrag: HashMap::new(),
            by_address: HashMap::new(),
            deadlines: BTreeSet::new(),
            offer_timeout,
            stall_timeout,
            open: 0,
            crypto: rtc::crypto::default_provider().ok(),
            forged_stun: 0,
        }
    }

    /// Source addresses taken for connections, all together.
    pub fn addresses(&self) -> usize {
        self.by_address.len()
    }

    /// STUN requests dropped for failing their integrity check.
    pub fn forged_stun(&self) -> u64 {
        self.forged_stun
    }

    /// Viewers: connections with an open DataChannel.
    pub fn viewers(&self) -> usize {
        self.open
    }

    /// Offers of ours still waiting for an answer.
    pub fn offers_pending(&self) -> usize {
        self.peers.values().filter(|p| p.offer_expires.is_some()).count()
    }

    /// Answers a viewer's offer; returns the answer (or why not) as a policy event.
    pub fn answer(&mut self, peer: PeerId, offer: String, now: Instant) -> Vec<Event> {
        let (ufrag, password) = (random_token(12), random_token(24));
        let answered = self.connection(&ufrag, &password, now).and_then(|mut connection| {
            let offer =
                RTCSessionDescription::offer(offer).map_err(|e| format!("bad offer: {e}"))?;
            connection
                .set_remote_description(now, offer)
                .map_err(|e| format!("offer refused: {e}"))?;
            self.add_host_candidate(&mut connection)?;
            let answer = connection.create_answer(None).map_err(|e| format!("no answer: {e}"))?;
            connection
                .set_local_description(now, answer.clone())
                .map_err(|e| format!("answer refused: {e}"))?;
            Ok((connection, answer.sdp))
        });
        match answered {
            Ok((connection, sdp)) => {
                self.add(peer, ufrag, password, connection, None);
                let mut events = vec![Event::PeerAnswerReady(SdpReady { peer, sdp })];
                events.extend(self.drain(peer, now));
                events
            }
            Err(reason) => vec![Event::PeerClosed(PeerClosed { peer, reason })],
        }
    }

    /// Makes an offer, as a browser viewer would (one reliable, ordered DataChannel with a
    /// random 40-hex-character label), with our host candidate and no trickle. It waits
    /// for [`Rtc::accept_answer`] until the offer timeout.
    pub fn offer(&mut self, peer: PeerId, now: Instant) -> Vec<Event> {
        let (ufrag, password) = (random_token(12), random_token(24));
        let offered = self.connection(&ufrag, &password, now).and_then(|mut connection| {
            connection
                .create_data_channel(&random_hex(40), None)
                .map_err(|e| format!("no data channel: {e}"))?;
            self.add_host_candidate(&mut connection)?;
            let offer = connection.create_offer(None).map_err(|e| format!("no offer: {e}"))?;
            connection
                .set_local_description(now, offer.clone())
                .map_err(|e| format!("offer refused: {e}"))?;
            Ok((connection, offer.sdp))
        });
        match offered {
            Ok((connection, sdp)) => {
                self.add(peer, ufrag, password, connection, Some(now + self.offer_timeout));
                let mut events = vec![Event::PeerOfferReady(SdpReady { peer, sdp })];
                events.extend(self.drain(peer, now));
                events
            }
            Err(reason) => vec![Event::PeerClosed(PeerClosed { peer, reason })],
        }
    }

    /// Completes an offer of ours with the viewer's answer; a bad answer closes it.
    pub fn accept_answer(&mut self, peer: PeerId, answer: String, now: Instant) -> Vec<Event> {
        let Some(state) = self.peers.get_mut(&peer) else { return Vec::new() };
        if state.offer_expires.is_none() {
            return Vec::new();
        }
        let accepted = RTCSessionDescription::answer(answer)
            .map_err(|e| format!("bad answer: {e}"))
            .and_then(|answer| {
                state
                    .connection
                    .set_remote_description(now, answer)
                    .map_err(|e| format!("answer refused: {e}"))
            });
        match accepted {
            Ok(()) => {
                state.offer_expires = None;
                self.drain(peer, now)
            }
            Err(reason) => self.drop_peer(peer, reason),
        }
    }

    fn add(
        &mut self,
        peer: PeerId,
        ufrag: String,
        password: String,
        connection: RTCPeerConnection,
        offer_expires: Option<Instant>,
    ) {
        self.by_ufrag.insert(ufrag.clone(), peer);
        self.peers.insert(
            peer,
            Box::new(Peer {
                connection,
                ufrag,
                password,
                channel: None,
                queue: VecDeque::new(),
                addresses: Vec::new(),
                deadline: None,
                offer_expires,
                unacknowledged: 0,
                acknowledged_level: 0,
                acknowledged_at: Instant::now(),
            }),
        );
    }

    /// A connection of this worker: ICE-lite with the given ufrag, the shared
    /// certificate, no mDNS.
    fn connection(
        &self,
        ufrag: &str,
        password: &str,
        now: Instant,
    ) -> Result<RTCPeerConnection, String> {
        let engine = SettingEngineBuilder::new()
            .with_lite(true)
            .with_ice_credentials(ufrag.to_string(), password.to_string())
            .with_multicast_dns_mode(rtc::ice::mdns::MulticastDnsMode::Disabled)
            // The library keeps a zeroed buffer of this size per connection (a third of
            // an idle one's memory). p2p-media-loader splits commands at 64 KiB and
            // would break on a smaller limit (a large VOD announcement exceeds 16).
            .with_sctp_max_message_size(SctpMaxMessageSize::Bounded(MAX_MESSAGE_BYTES))
            .with_sctp_mtu(SCTP_MTU)
            // What a viewer can make us hold in reassembly (1 MiB by default, for a
            // message it never finishes): room for two of the largest messages.
            .with_sctp_max_receive_buffer_size(2 * MAX_MESSAGE_BYTES)
            .build();
        let mut configuration = RTCConfigurationBuilder::new();
        if let Some(certificate) = &self.certificate {
            configuration = configuration.with_certificates(vec![certificate.clone()]);
        }
        RTCPeerConnectionBuilder::new()
            .with_configuration(configuration.build())
            .with_setting_engine(engine)
            .build(now)
            .map_err(|e| format!("could not create a connection: {e}"))
    }

    /// Our one candidate, then the end of candidates: the SDP carries them all (viewers
    /// do not trickle).
    fn add_host_candidate(&self, connection: &mut RTCPeerConnection) -> Result<(), String> {
        let candidate = CandidateHostConfig {
            base_config: CandidateConfig {
                network: "udp".to_owned(),
                address: self.advertised.ip().to_string(),
                port: self.advertised.port(),
                component: 1,
                ..Default::default()
            },
            ..Default::default()
        }
        .new_candidate_host()
        .map_err(|e| format!("host candidate: {e}"))?;
        let init = RTCIceCandidate::from(&candidate)
            .to_json()
            .map_err(|e| format!("host candidate: {e}"))?;
        connection.add_local_candidate(init).map_err(|e| format!("host candidate: {e}"))?;
        let _ = connection.add_local_candidate(RTCIceCandidateInit::default());
        Ok(())
    }

    /// A datagram arrived on the socket.
    pub fn receive(&mut self, from: SocketAddr, data: &[u8], now: Instant) -> Vec<Event> {
        let peer =
            match stun_username(data).and_then(|user| user.split(':').next().map(String::from)) {
                Some(ufrag) => self.by_ufrag.get(&ufrag).copied(),
                None => self.by_address.get(&from).copied(),
            };
        let Some(peer) = peer else { return Vec::new() };
        let Some(state) = self.peers.get_mut(&peer) else { return Vec::new() };
        if !state.addresses.contains(&from) {
            // A STUN request with our ufrag and a valid MESSAGE-INTEGRITY (keyed by our
            // password, which only the viewer we answered knows) is how a viewer's
            // address becomes known; an address already taken by another viewer stays
            // with it. Anything else from a new address is dropped here, unlogged,
            // before the library sees it.
            if self.by_address.get(&from).is_some_and(|p| *p != peer) {
                return Vec::new();
            }
            // Without a crypto provider nothing can be checked (nor would DTLS work).
            let authentic = self
                .crypto
                .as_ref()
                .is_some_and(|provider| stun_authentic(data, &state.password, provider.crypto()));
            if !authentic {
                self.forged_stun += 1;
                return Vec::new();
            }
            if state.addresses.len() >= MAX_ADDRESSES_PER_PEER {
                let oldest = state.addresses.remove(0);
                if self.by_address.get(&oldest) == Some(&peer) {
                    self.by_address.remove(&oldest);
                }
            }
            self.by_address.insert(from, peer);
            state.addresses.push(from);
        }
        let _ = state.connection.handle_read(TaggedBytesMut {
            now,
            transport: TransportContext {
                local_addr: self.advertised,
                peer_addr: from,
                ecn: None,
                transport_protocol: TransportProtocol::UDP,
            },
            message: BytesMut::from(data),
        });
        self.drain(peer, now)
    }

    /// The earliest moment a connection needs [`Rtc::timeout`].
    pub fn next_timeout(&mut self) -> Option<Instant> {
        self.deadlines.first().map(|(at, _)| *at)
    }

    pub fn timeout(&mut self, now: Instant) -> Vec<Event> {
        let due: Vec<PeerId> =
            self.deadlines.iter().take_while(|(at, _)| *at <= now).map(|(_, peer)| *peer).collect();
        let mut events = Vec::new();
        for peer in due {
            let Some(state) = self.peers.get_mut(&peer) else { continue };
            if state.offer_expires.is_some_and(|at| at <= now) {
                events.extend(self.drop_peer(peer, OFFER_UNANSWERED.into()));
                continue;
            }
            let _ = state.connection.handle_timeout(now);
            events.extend(self.drain(peer, now));
        }
        events
    }

    /// Queues one message for the viewer, after whatever is queued already; a viewer
    /// whose queue is full is closed instead.
    pub fn send(&mut self, peer: PeerId, message: Message, now: Instant) -> Vec<Event> {
        let Some(state) = self.peers.get_mut(&peer) else { return Vec::new() };
        if !state.has_room_for(message.len()) {
            return self.drop_peer(peer, SEND_QUEUE_FULL.into());
        }
        state.queue.push_back(Outgoing::Message(message));
        self.drain(peer, now)
    }

    /// Queues a segment for the viewer, after whatever is queued already; a viewer
    /// whose queue is full is closed instead.
    pub fn serve(&mut self, peer: PeerId, serve: Serve, now: Instant) -> Vec<Event> {
        let Some(state) = self.peers.get_mut(&peer) else { return Vec::new() };
        if !state.has_room_for(serve.trailer.len()) {
            let mut events = vec![Event::SegmentSent(SegmentSent {
                peer,
                handle: serve.handle,
                bytes: 0,
                complete: false,
            })];
            events.extend(self.drop_peer(peer, SEND_QUEUE_FULL.into()));
            return events;
        }
        state.queue.push_back(Outgoing::Serve {
            handle: serve.handle,
            bytes: serve.bytes,
            next: serve.offset as usize,
            chunk: match serve.message_size {
                MessageSize::AtMost(size) => whole_packets(size),
                MessageSize::Exactly(size) => size.max(1),
            } as usize,
            sent: 0,
            trailer: Bytes::from(serve.trailer),
        });
        self.drain(peer, now)
    }

    /// Gives the serves of `handle` waiting for their bytes what the disk read brought:
    /// the bytes, and they go out in their turn; or none, and they end unsent.
    pub fn loaded(
        &mut self,
        handle: SegmentHandle,
        bytes: Option<Bytes>,
        now: Instant,
    ) -> Vec<Event> {
        let mut given = Vec::new();
        let mut events = Vec::new();
        for (&peer, state) in &mut self.peers {
            let mut waited = false;
            state.queue.retain_mut(|item| match item {
                Outgoing::Serve { handle: h, bytes: slot @ None, .. } if *h == handle => {
                    waited = true;
                    *slot = bytes.clone();
                    if slot.is_none() {
                        events.push(Event::SegmentSent(SegmentSent {
                            peer,
                            handle,
                            bytes: 0,
                            complete: false,
                        }));
                    }
                    slot.is_some()
                }
                _ => true,
            });
            if waited {
                given.push(peer);
            }
        }
        for peer in given {
            events.extend(self.drain(peer, now));
        }
        events
    }

    /// Drops a queued or running serve; reports it incomplete if it had started.
    pub fn cancel(&mut self, peer: PeerId, handle: SegmentHandle) -> Vec<Event> {
        let Some(state) = self.peers.get_mut(&peer) else { return Vec::new() };
        let mut events = Vec::new();
        state.queue.retain(|item| match item {
            Outgoing::Serve { handle: h, sent, .. } if *h == handle => {
                events.push(Event::SegmentSent(SegmentSent {
                    peer,
                    handle,
                    bytes: *sent,
                    complete: false,
                }));
                false
            }
            _ => true,
        });
        events
    }

    pub fn close(&mut self, peer: PeerId) {
        if let Some(mut state) = self.peers.remove(&peer) {
            let _ = state.connection.close();
            flush(&mut state.connection, &mut self.transmits);
            self.forget(peer, &state);
        }
    }

    /// Closes every connection (DTLS close_notify, so viewers know at once).
    pub fn close_all(&mut self) {
        let peers: Vec<PeerId> = self.peers.keys().copied().collect();
        for peer in peers {
            self.close(peer);
        }
    }

    /// Closes a connection for a reason of ours and reports it closed.
    fn drop_peer(&mut self, peer: PeerId, reason: String) -> Vec<Event> {
        let Some(mut state) = self.peers.remove(&peer) else { return Vec::new() };
        tracing::debug!(peer, %reason, "peer connection closed");
        let mut events = Vec::new();
        for item in state.queue.drain(..) {
            if let Outgoing::Serve { handle, sent, .. } = item {
                events.push(Event::SegmentSent(SegmentSent {
                    peer,
                    handle,
                    bytes: sent,
                    complete: false,
                }));
            }
        }
        let _ = state.connection.close();
        flush(&mut state.connection, &mut self.transmits);
        self.forget(peer, &state);
        events.push(Event::PeerClosed(PeerClosed { peer, reason }));
        events
    }

    fn forget(&mut self, peer: PeerId, state: &Peer) {
        if state.channel.is_some() {
            self.open -= 1;
        }
        if let Some(at) = state.deadline {
            self.deadlines.remove(&(at, peer));
        }
        self.by_ufrag.remove(&state.ufrag);
        for address in &state.addresses {
            if self.by_address.get(address) == Some(&peer) {
                self.by_address.remove(address);
            }
        }
    }

    /// The next datagrams to send, in the order they were written.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// Runs a connection's outputs: datagrams to send, state changes, messages, and as
    /// much of its send queue as the DataChannel takes.
    fn drain(&mut self, peer: PeerId, now: Instant) -> Vec<Event> {
        let mut events = Vec::new();
        let Some(mut state) = self.peers.remove(&peer) else { return events };
        let mut closed: Option<String> = None;
        // What arrived since the last turn acknowledged something, or nothing newer
        // than the last acknowledgement is outstanding.
        let outstanding = state.outstanding();
        if outstanding < state.unacknowledged || outstanding <= state.acknowledged_level {
            state.acknowledged_level = outstanding;
            state.acknowledged_at = now;
        }
        loop {
            flush(&mut state.connection, &mut self.transmits);
            let mut progressed = false;
            while let Some(event) = state.connection.poll_event() {
                progressed = true;
                match event {
                    RTCPeerConnectionEvent::OnDataChannel(RTCDataChannelEvent::OnOpen(id))
                        if state.channel.is_none() =>
                    {
                        state.channel = Some(id);
                        self.open += 1;
                        if let Some(mut channel) = state.connection.data_channel(id) {
                            channel.set_buffered_amount_low_threshold(SEND_LOW_WATER);
                        }
                        events.push(Event::PeerChannelOpen(peer));
                    }
                    RTCPeerConnectionEvent::OnDataChannel(
                        RTCDataChannelEvent::OnBufferedAmountLow(_),
                    ) => {
                        events.push(Event::PeerBufferedLow(peer));
                    }
                    RTCPeerConnectionEvent::OnDataChannel(RTCDataChannelEvent::OnClose(id))
                        if Some(id) == state.channel =>
                    {
                        closed = Some("data channel closed".into());
                    }
                    RTCPeerConnectionEvent::OnConnectionStateChangeEvent(
                        s @ (RTCPeerConnectionState::Failed
                        | RTCPeerConnectionState::Closed
                        | RTCPeerConnectionState::Disconnected),
                    ) => {
                        closed = Some(format!("connection {s}"));
                    }
                    _ => {}
                }
            }
            while let Some(TaggedRTCMessage { message, .. }) = state.connection.poll_read() {
                progressed = true;
                if let RTCMessage::DataChannelMessage(_, message) = message {
                    tracing::trace!(peer, bytes = message.data.len(), "peer message");
                    events.push(Event::PeerMessage(PeerMessage {
                        peer,
                        data: message.data.to_vec(),
                    }));
                }
            }
            progressed |= pump(&mut state, peer, now, &mut events, &mut self.transmits);
            if !progressed {
                break;
            }
        }
        flush(&mut state.connection, &mut self.transmits);
        state.unacknowledged = state.outstanding();
        let stalls_at = (state.unacknowledged > state.acknowledged_level)
            .then(|| state.acknowledged_at + self.stall_timeout);
        if closed.is_none() && stalls_at.is_some_and(|at| at <= now) {
            closed = Some(STALLED.into());
        }
        if let Some(reason) = closed {
            // Back in the table for a moment, so closing it is said in one place.
            self.peers.insert(peer, state);
            events.extend(self.drop_peer(peer, reason));
            return events;
        }
        // An offer waiting for its answer is due when it expires, and a viewer with
        // bytes unacknowledged when it would stall, if nothing is sooner.
        let deadline = [state.connection.poll_timeout(), state.offer_expires, stalls_at]
            .into_iter()
            .flatten()
            .min();
        if deadline != state.deadline {
            if let Some(old) = state.deadline {
                self.deadlines.remove(&(old, peer));
            }
            if let Some(new) = deadline {
                self.deadlines.insert((new, peer));
            }
            state.deadline = deadline;
        }
        self.peers.insert(peer, state);
        events
    }
}

/// A segment's message size: the policy's, cut down to a whole number of full SCTP
/// packets. Every packet of a segment but its last then has the same size, so one
/// message's packets and the next leave in the same UDP GSO batch; a short packet at
/// the end of each message would end the batch there (four system calls where one
/// does, at 16 KiB messages).
fn whole_packets(chunk: u32) -> u32 {
    let payload = rtc::sctp::max_payload_size_for_mtu(SCTP_MTU);
    if chunk >= payload { chunk - chunk % payload } else { chunk.max(1) }
}

/// Sends queued items while the DataChannel has room; true if anything was sent. Each
/// message's datagrams are taken out of the library before the next is written: its
/// queues grow to the largest burst they ever held and keep that size (a whole send
/// window through four of them cost a viewer over 100 KB for good).
fn pump(
    state: &mut Peer,
    peer: PeerId,
    now: Instant,
    events: &mut Vec<Event>,
    transmits: &mut VecDeque<Transmit>,
) -> bool {
    let Some(id) = state.channel else { return false };
    let mut progressed = false;
    while let Some(mut channel) = state.connection.data_channel(id) {
        if channel.outstanding_bytes() >= SEND_HIGH_WATER {
            break;
        }
        let Some(item) = state.queue.front_mut() else { break };
        match item {
            Outgoing::Message(Message::Binary(bytes)) => {
                let _ = channel.send(now, BytesMut::from(&bytes[..]));
                state.queue.pop_front();
            }
            Outgoing::Message(Message::Text(text)) => {
                let _ = channel.send_text(now, std::mem::take(text));
                state.queue.pop_front();
            }
            // Still being read: everything behind it waits too.
            Outgoing::Serve { bytes: None, .. } => break,
            Outgoing::Serve { handle, bytes: Some(bytes), next, chunk, sent, trailer } => {
                if *next >= bytes.len() {
                    if !trailer.is_empty() {
                        if channel.send(now, BytesMut::from(&trailer[..])).is_err() {
                            break;
                        }
                        *trailer = Bytes::new();
                    }
                    events.push(Event::SegmentSent(SegmentSent {
                        peer,
                        handle: *handle,
                        bytes: *sent,
                        complete: true,
                    }));
                    state.queue.pop_front();
                } else {
                    let end = (*next + *chunk).min(bytes.len());
                    if channel.send(now, BytesMut::from(&bytes[*next..end])).is_err() {
                        break;
                    }
                    *sent += (end - *next) as u64;
                    *next = end;
                }
            }
        }
        flush(&mut state.connection, transmits);
        progressed = true;
    }
    progressed
}

/// Takes what a connection wrote as one [`Transmit`].
fn flush(connection: &mut RTCPeerConnection, transmits: &mut VecDeque<Transmit>) {
    let mut datagrams = Vec::new();
    while let Some(datagram) = connection.poll_write() {
        datagrams.push((datagram.transport.peer_addr, datagram.message));
    }
    if !datagrams.is_empty() {
        transmits.push_back(Transmit { datagrams });
    }
}

/// The USERNAME of a STUN message, if `data` is one.
fn stun_username(data: &[u8]) -> Option<&str> {
    // STUN: top two bits zero, magic cookie at bytes 4..8.
    if data.len() < 20 || data[0] & 0xc0 != 0 || data[4..8] != [0x21, 0x12, 0xa4, 0x42] {
        return None;
    }
    let mut rest = &data[20..];
    while rest.len() >= 4 {
        let kind = u16::from_be_bytes([rest[0], rest[1]]);
        let len = u16::from_be_bytes([rest[2], rest[3]]) as usize;
        let value = rest.get(4..4 + len)?;
        if kind == 0x0006 {
            return std::str::from_utf8(value).ok();
        }
        let padded = (len + 3) & !3;
        rest = rest.get(4 + padded..)?;
    }
    None
}

/// Whether `data` is a STUN message whose MESSAGE-INTEGRITY is keyed by `password`.
fn stun_authentic(data: &[u8], password: &str, crypto: &dyn rtc::crypto::RTCCrypto) -> bool {
    use rtc::stun::integrity::MessageIntegrity;
    let mut message = rtc::stun::message::Message::new();
    message.unmarshal_binary(data).is_ok()
        && MessageIntegrity::check(&mut message, password.as_bytes(), crypto).is_ok()
}

fn generate_certificate() -> Result<RTCCertificate, String> {
    let provider = rtc::crypto::default_provider().map_err(|e| e.to_string())?;
    let params = CertificateParams::new(vec!["superpeer".to_owned()]).map_err(|e| e.to_string())?;
    RTCCertificate::generate(
        provider.crypto(),
        rtc::crypto::SignatureScheme::EcdsaP256Sha256,
        params,
    )
    .map_err(|e| e.to_string())
}

const TOKEN_SYMBOLS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
/// simple-peer's channel labels are 40 of these.
const HEX_SYMBOLS: &[u8] = b"0123456789abcdef";

fn random_token(len: usize) -> String {
    random_text(len, TOKEN_SYMBOLS)
}

fn random_hex(len: usize) -> String {
    random_text(len, HEX_SYMBOLS)
}

fn random_text(len: usize, symbols: &[u8]) -> String {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::SmallRng::from_os_rng();
    (0..len).map(|_| char::from(symbols[rng.random_range(0..symbols.len())])).collect()
}

#[cfg(test)]
mod tests {
    use super::{SCTP_MTU, stun_username, whole_packets};

    #[test]
    fn segment_messages_are_whole_packets_at_most_the_policys_size() {
        let payload = rtc::sctp::max_payload_size_for_mtu(SCTP_MTU);
        for asked in [payload, 16_000, 16_384, 65_535] {
            let cut = whole_packets(asked);
            assert_eq!(cut % payload, 0, "{asked} -> {cut}");
            assert!(cut <= asked && asked - cut < payload, "{asked} -> {cut}");
        }
        // Below one packet there is nothing to cut to: the policy's size stands.
        assert_eq!(whole_packets(500), 500);
        assert_eq!(whole_packets(0), 1);
    }

    #[test]
    fn finds_the_username_of_a_binding_request() {
        let mut message = vec![0x00, 0x01, 0x00, 0x10, 0x21, 0x12, 0xa4, 0x42];
        message.extend([7u8; 12]);
        message.extend([0x00, 0x06, 0x00, 0x09]);
        message.extend(b"abc:defgh\0\0\0");
        assert_eq!(stun_username(&message), Some("abc:defgh"));
        assert_eq!(stun_username(b"\x16\xfe\xfd not stun at all......"), None);
        assert_eq!(stun_username(&message[..22]), None);
    }
}
