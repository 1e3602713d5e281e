//! WebRTC for a worker: every viewer on one UDP socket, the worker as an ICE-lite agent
//! that answers viewers' offers and makes offers of its own, DTLS and SCTP DataChannels
//! from the sans-I/O `rtc` crate.
//!
//! Owns the peer connections, the demultiplexing of datagrams (by the ICE username of
//! STUN requests, then by source address) and the per-viewer send queue that streams
//! segment bytes with back-pressure. It never parses the viewers' protocol: messages
//! go to the policy as they came.
//!
//! An offer waiting for its answer is its ICE credentials and an entry in the deadline
//! set, nothing more: its SDP comes from one template, and its connection is made when
//! the answer comes (the same credentials, with the worker's one certificate and one
//! candidate, make the same offer). Most offers reach viewers already connected and are
//! never answered; a connection made for each cost the worker about 15 KB and 40 us,
//! with a thousand waiting at once in a large swarm.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

mod ice;
mod queue;

use crate::policy::wire::{Event, PeerClosed, PeerId, PeerMessage, SdpReady, SegmentHandle};
use bytes::{Bytes, BytesMut};
use ice::{generate_certificate, random_hex, random_token, stun_authentic, stun_username};
pub use queue::{Message, Serve};
use queue::{SCTP_MTU, SEND_LOW_WATER, SendQueue, unfinished};
use rtc::peer_connection::RTCPeerConnection;
use rtc::peer_connection::RTCPeerConnectionBuilder;
use rtc::peer_connection::certificate::RTCCertificate;
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

/// The largest DataChannel message either side may send (announced in the answer); a
/// policy's messages and serves are held within it (`PolicyLimits`), since a message
/// the connection refuses would hold up the viewer's queue.
pub const MAX_MESSAGE_BYTES: u32 = 64 << 10;
/// Why a viewer was closed for not reading.
pub const SEND_QUEUE_FULL: &str = "send queue full: the viewer is not reading";
/// Source addresses a connection may hold at once: a viewer uses one, a few while its
/// network changes; the oldest gives way to a newer one.
const MAX_ADDRESSES_PER_PEER: usize = 4;
/// The first bytes of a STUN Binding Request (RFC 5389: type 0x0001).
const STUN_BINDING_REQUEST: [u8; 2] = [0x00, 0x01];
/// Why a viewer was closed for acknowledging nothing newer than it had for
/// [`DataPlaneLimits::stall_timeout`](super::DataPlaneLimits::stall_timeout).
pub const STALLED: &str = "stalled: nothing sent to it acknowledged for too long";
/// How often a quiet connection (its DataChannel open, nothing of ours unacknowledged or
/// queued, nothing received lately) gets its timers run. The library asks to run every
/// connection's timers every 200 ms whatever they have to do (its ICE agent never waits
/// longer than its connectivity-check interval): five turns a second for each idle
/// viewer, about a third of a worker's time with a thousand idle viewers. A quiet
/// connection's timers are its ICE keepalive (every 2 s) and disconnection check (after
/// 5 s without a packet), which a second's delay does not hurt; retransmissions and
/// acknowledgements only run on a connection that is not quiet, and those keep their
/// times.
const QUIET_TICK: Duration = Duration::from_secs(1);
/// How long after a DTLS packet from the viewer its connection is not quiet: long enough
/// for a delayed acknowledgement (200 ms in SCTP) to go at its time.
const QUIET_AFTER_RECEIVING: Duration = Duration::from_millis(250);
/// Why an offer was dropped: nobody answered it in time.
pub const OFFER_UNANSWERED: &str = "offer not answered in time";

/// Datagrams to send, in order: what one connection wrote in one go (to one address,
/// but for the moments its address changes). The caller sends them; the WebRTC layer
/// never touches a socket.
#[derive(Debug)]
pub struct Transmit {
    pub datagrams: Vec<(SocketAddr, BytesMut)>,
}

struct Peer {
    connection: RTCPeerConnection,
    ufrag: String,
    /// Our ICE password for this connection: what a STUN request from a new address
    /// must prove it knows before the address is taken for the viewer's.
    password: String,
    channel: Option<rtc::data_channel::RTCDataChannelId>,
    queue: SendQueue,
    addresses: Vec<SocketAddr>,
    /// When the connection next wants `handle_timeout`, as last asked (its entry in
    /// [`Rtc::deadlines`]).
    deadline: Option<Instant>,
    /// Bytes sent on the DataChannel and not acknowledged, as the last turn left them;
    /// what was left right after the viewer last acknowledged some, and when it did
    /// (or last had nothing newer to acknowledge): a viewer that is sent nothing new is
    /// idle, not stalled, whatever its count rests at.
    unacknowledged: usize,
    acknowledged_level: usize,
    acknowledged_at: Instant,
    /// When the last DTLS datagram from the viewer came, and from where: the path its
    /// DataChannel takes.
    received_at: Instant,
    dtls_from: Option<SocketAddr>,
}

/// An offer of ours waiting for its answer: what the answer needs to make the
/// connection, and until when it waits (its entry in [`Rtc::deadlines`]).
struct Offered {
    ufrag: String,
    password: String,
    expires: Instant,
}

impl Peer {
    /// Bytes sent on the DataChannel that the viewer has not acknowledged yet.
    fn outstanding(&mut self) -> usize {
        let Some(id) = self.channel else { return 0 };
        self.connection.data_channel(id).map_or(0, |channel| channel.outstanding_bytes())
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
    /// Offers of ours waiting for their answers.
    offered: HashMap<PeerId, Offered>,
    /// Our offers' SDP, made once by a connection of this worker; an offer is it with
    /// its own ICE credentials.
    offer_template: Option<String>,
    /// Every connection's next deadline and every offer's expiry, soonest first. A
    /// connection's deadline changes only when it is handled, so it is asked then, never
    /// by scanning them all: the scan cost a third of the worker's time at a hundred
    /// viewers.
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
            offered: HashMap::new(),
            offer_template: None,
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
        self.offered.len()
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
                self.add(peer, ufrag, password, connection);
                let mut events = vec![Event::PeerAnswerReady(SdpReady { peer, sdp })];
                events.extend(self.drain(peer, now));
                events
            }
            Err(reason) => vec![closed(peer, reason)],
        }
    }

    /// Makes an offer, as a browser viewer would (one reliable, ordered DataChannel with a
    /// random 40-hex-character label), with our host candidate and no trickle. It waits
    /// for [`Rtc::accept_answer`] until the offer timeout.
    pub fn offer(&mut self, peer: PeerId, now: Instant) -> Vec<Event> {
        let (ufrag, password) = (random_token(12), random_token(24));
        let sdp = match self.offer_sdp(&ufrag, &password, now) {
            Ok(sdp) => sdp,
            Err(reason) => return vec![closed(peer, reason)],
        };
        // A second offer under one id replaces the first.
        self.withdraw_offer(peer);
        let expires = now + self.offer_timeout;
        self.by_ufrag.insert(ufrag.clone(), peer);
        self.deadlines.insert((expires, peer));
        self.offered.insert(peer, Offered { ufrag, password, expires });
        vec![Event::PeerOfferReady(SdpReady { peer, sdp })]
    }

    /// The SDP of an offer with these ICE credentials: the template with them in place
    /// of its own. Without the worker's one certificate there is no template: a
    /// connection made at the answer would have a key of its own, not the one offered.
    fn offer_sdp(&mut self, ufrag: &str, password: &str, now: Instant) -> Result<String, String> {
        if self.certificate.is_none() {
            return Err("no DTLS certificate to offer with".into());
        }
        if self.offer_template.is_none() {
            let (_, sdp) = self.offering_connection(&random_token(12), &random_token(24), now)?;
            self.offer_template = Some(sdp);
        }
        let template = self.offer_template.as_deref().unwrap_or_default();
        Ok(with_ice_credentials(template, ufrag, password))
    }

    /// A connection that has made our offer with these credentials, and the offer.
    fn offering_connection(
        &self,
        ufrag: &str,
        password: &str,
        now: Instant,
    ) -> Result<(RTCPeerConnection, String), String> {
        let mut connection = self.connection(ufrag, password, now)?;
        connection
            .create_data_channel(&random_hex(40), None)
            .map_err(|e| format!("no data channel: {e}"))?;
        self.add_host_candidate(&mut connection)?;
        let offer = connection.create_offer(None).map_err(|e| format!("no offer: {e}"))?;
        connection
            .set_local_description(now, offer.clone())
            .map_err(|e| format!("offer refused: {e}"))?;
        Ok((connection, offer.sdp))
    }

    /// Completes an offer of ours with the viewer's answer: makes the connection that
    /// offered it; a bad answer closes it.
    pub fn accept_answer(&mut self, peer: PeerId, answer: String, now: Instant) -> Vec<Event> {
        let Some(offered) = self.withdraw_offer(peer) else { return Vec::new() };
        let made = self.offering_connection(&offered.ufrag, &offered.password, now).and_then(
            |(mut connection, _)| {
                let answer = RTCSessionDescription::answer(answer)
                    .map_err(|e| format!("bad answer: {e}"))?;
                connection
                    .set_remote_description(now, answer)
                    .map_err(|e| format!("answer refused: {e}"))?;
                Ok(connection)
            },
        );
        match made {
            Ok(connection) => {
                self.add(peer, offered.ufrag, offered.password, connection);
                self.drain(peer, now)
            }
            Err(reason) => vec![closed(peer, reason)],
        }
    }

    /// Takes an offer of ours out of the tables (it may be waiting for nothing else).
    fn withdraw_offer(&mut self, peer: PeerId) -> Option<Offered> {
        let offered = self.offered.remove(&peer)?;
        self.deadlines.remove(&(offered.expires, peer));
        self.by_ufrag.remove(&offered.ufrag);
        Some(offered)
    }

    fn add(
        &mut self,
        peer: PeerId,
        ufrag: String,
        password: String,
        connection: RTCPeerConnection,
    ) {
        self.by_ufrag.insert(ufrag.clone(), peer);
        self.peers.insert(
            peer,
            Box::new(Peer {
                connection,
                ufrag,
                password,
                channel: None,
                queue: SendQueue::default(),
                addresses: Vec::new(),
                deadline: None,
                unacknowledged: 0,
                acknowledged_level: 0,
                acknowledged_at: Instant::now(),
                received_at: Instant::now(),
                dtls_from: None,
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
    pub fn receive(&mut self, from: SocketAddr, datagram: BytesMut, now: Instant) -> Vec<Event> {
        let data = &datagram[..];
        let peer =
            match stun_username(data).and_then(|user| user.split(':').next().map(String::from)) {
                Some(ufrag) => self.by_ufrag.get(&ufrag).copied(),
                None => self.by_address.get(&from).copied(),
            };
        let Some(peer) = peer else { return Vec::new() };
        // None for an offer whose answer has not come: a viewer may check before its
        // answer reaches us, and checks again (the library too refuses a check before
        // it knows the viewer's credentials).
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
        // STUN (a first byte of 0 to 3, RFC 7983) arms no SCTP timer; DTLS may.
        if data.first().is_some_and(|first| *first > 3) {
            state.received_at = now;
            state.dtls_from = Some(from);
        }
        let check_on_path = state.channel.is_some()
            && state.dtls_from == Some(from)
            && data.starts_with(&STUN_BINDING_REQUEST);
        let _ = state.connection.handle_read(TaggedBytesMut {
            now,
            transport: TransportContext {
                local_addr: self.advertised,
                peer_addr: from,
                ecn: None,
                transport_protocol: TransportProtocol::UDP,
            },
            message: datagram,
        });
        if check_on_path {
            // The library's ICE-lite agent checks back every check it answers (RFC 8445
            // has a lite agent send none): half of an idle viewer's packets were these
            // checks and their answers. On the path the DataChannel already takes they
            // tell nobody anything: the viewer keeps it alive with its own checks, which
            // are answered, and the library's liveness is what it receives. A check from
            // any other address (a viewer whose network changed) is still checked back:
            // what the library makes of a new path is left to it.
            flush_but(&mut state.connection, &mut self.transmits, |to, data| {
                to == from && data.starts_with(&STUN_BINDING_REQUEST)
            });
        }
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
            if self.offered.get(&peer).is_some_and(|offered| offered.expires <= now) {
                self.withdraw_offer(peer);
                events.push(closed(peer, OFFER_UNANSWERED.into()));
                continue;
            }
            let Some(state) = self.peers.get_mut(&peer) else { continue };
            let _ = state.connection.handle_timeout(now);
            events.extend(self.drain(peer, now));
        }
        events
    }

    /// Queues one message for the viewer, after whatever is queued already; a viewer
    /// whose queue is full is closed instead.
    pub fn send(&mut self, peer: PeerId, message: Message, now: Instant) -> Vec<Event> {
        let Some(state) = self.peers.get_mut(&peer) else { return Vec::new() };
        if state.queue.push_message(message).is_err() {
            return self.drop_peer(peer, SEND_QUEUE_FULL.into());
        }
        self.drain(peer, now)
    }

    /// Queues a segment for the viewer, after whatever is queued already; a viewer
    /// whose queue is full is closed instead.
    pub fn serve(&mut self, peer: PeerId, serve: Serve, now: Instant) -> Vec<Event> {
        let Some(state) = self.peers.get_mut(&peer) else { return Vec::new() };
        if let Err(serve) = state.queue.push_serve(serve) {
            let mut events = vec![unfinished(peer, serve.handle, 0)];
            events.extend(self.drop_peer(peer, SEND_QUEUE_FULL.into()));
            return events;
        }
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
        let mut events = Vec::new();
        let given: Vec<PeerId> = self
            .peers
            .iter_mut()
            .filter_map(|(&peer, state)| {
                state.queue.give(peer, handle, &bytes, &mut events).then_some(peer)
            })
            .collect();
        for peer in given {
            events.extend(self.drain(peer, now));
        }
        events
    }

    /// Drops a queued or running serve; reports it incomplete if it had started.
    pub fn cancel(&mut self, peer: PeerId, handle: SegmentHandle) -> Vec<Event> {
        self.peers.get_mut(&peer).map_or_else(Vec::new, |state| state.queue.cancel(peer, handle))
    }

    pub fn close(&mut self, peer: PeerId) {
        self.withdraw_offer(peer);
        if let Some(mut state) = self.peers.remove(&peer) {
            let _ = state.connection.close();
            flush(&mut state.connection, &mut self.transmits);
            self.forget(peer, &state);
        }
    }

    /// Closes every connection (DTLS close_notify, so viewers know at once).
    pub fn close_all(&mut self) {
        let peers: Vec<PeerId> = self.peers.keys().chain(self.offered.keys()).copied().collect();
        for peer in peers {
            self.close(peer);
        }
    }

    /// Closes a connection for a reason of ours and reports it closed.
    fn drop_peer(&mut self, peer: PeerId, reason: String) -> Vec<Event> {
        let Some(mut state) = self.peers.remove(&peer) else { return Vec::new() };
        let mut events = state.queue.abandon(peer);
        let _ = state.connection.close();
        flush(&mut state.connection, &mut self.transmits);
        self.forget(peer, &state);
        events.push(closed(peer, reason));
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
                    tracing::trace!(peer = peer.0, bytes = message.data.len(), "peer message");
                    events.push(Event::PeerMessage(PeerMessage {
                        peer,
                        data: message.data.to_vec(),
                    }));
                }
            }
            if let Some(channel) = state.channel {
                progressed |= state.queue.pump(
                    &mut state.connection,
                    channel,
                    peer,
                    now,
                    &mut events,
                    &mut self.transmits,
                );
            }
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
        let mut timers = state.connection.poll_timeout();
        let quiet = state.channel.is_some()
            && state.unacknowledged == 0
            && state.queue.is_empty()
            && now.saturating_duration_since(state.received_at) >= QUIET_AFTER_RECEIVING;
        if quiet {
            timers = timers.map(|at| at.max(now + QUIET_TICK));
        }
        // A viewer with bytes unacknowledged is due when it would stall, if nothing is
        // sooner.
        let deadline = [timers, stalls_at].into_iter().flatten().min();
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

/// A connection or offer of ours closed for `reason`, as the policy hears it.
fn closed(peer: PeerId, reason: String) -> Event {
    tracing::debug!(peer = peer.0, %reason, "peer connection closed");
    Event::PeerClosed(PeerClosed { peer, reason })
}

/// `sdp` with these ICE credentials in place of its own.
fn with_ice_credentials(sdp: &str, ufrag: &str, password: &str) -> String {
    sdp.split_inclusive('\n')
        .map(|line| {
            let ending = &line[line.trim_end_matches(['\r', '\n']).len()..];
            if line.starts_with("a=ice-ufrag:") {
                format!("a=ice-ufrag:{ufrag}{ending}")
            } else if line.starts_with("a=ice-pwd:") {
                format!("a=ice-pwd:{password}{ending}")
            } else {
                line.to_string()
            }
        })
        .collect()
}

/// Takes what a connection wrote as one [`Transmit`].
fn flush(connection: &mut RTCPeerConnection, transmits: &mut VecDeque<Transmit>) {
    flush_but(connection, transmits, |_, _| false);
}

/// [`flush`], dropping the datagrams `unsent` picks (by address and bytes).
fn flush_but(
    connection: &mut RTCPeerConnection,
    transmits: &mut VecDeque<Transmit>,
    unsent: impl Fn(SocketAddr, &[u8]) -> bool,
) {
    let mut datagrams = Vec::new();
    while let Some(datagram) = connection.poll_write() {
        let to = datagram.transport.peer_addr;
        if !unsent(to, &datagram.message) {
            datagrams.push((to, datagram.message));
        }
    }
    if !datagrams.is_empty() {
        transmits.push_back(Transmit { datagrams });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The SDP without its origin line, which names the session that made it.
    fn without_origin(sdp: &str) -> String {
        sdp.lines().filter(|line| !line.starts_with("o=")).collect::<Vec<_>>().join("\n")
    }

    #[test]
    fn an_offer_from_the_template_is_what_its_connection_offers() {
        let now = Instant::now();
        let advertised: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let mut rtc = Rtc::new(advertised, Duration::from_secs(15), Duration::from_secs(30));
        let mut sdps = Vec::new();
        for peer in [1, 2] {
            let events = rtc.offer(PeerId(peer), now);
            let [Event::PeerOfferReady(ready)] = events.as_slice() else { panic!("{events:?}") };
            sdps.push(ready.sdp.clone());
        }
        assert_eq!(rtc.offers_pending(), 2);
        assert_eq!(rtc.peers.len(), 0, "no connection is made for an offer");
        for (peer, sdp) in [PeerId(1), PeerId(2)].into_iter().zip(&sdps) {
            let offered = &rtc.offered[&peer];
            assert!(sdp.contains(&format!("a=ice-ufrag:{}\r\n", offered.ufrag)), "{sdp}");
            assert!(sdp.contains(&format!("a=ice-pwd:{}\r\n", offered.password)), "{sdp}");
            let (_, made) =
                rtc.offering_connection(&offered.ufrag, &offered.password, now).unwrap();
            assert_eq!(without_origin(sdp), without_origin(&made));
        }
        assert_ne!(without_origin(&sdps[0]), without_origin(&sdps[1]));
    }

    #[test]
    fn an_unanswered_offer_expires_and_a_withdrawn_one_is_forgotten() {
        let now = Instant::now();
        let advertised: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let mut rtc = Rtc::new(advertised, Duration::from_secs(15), Duration::from_secs(30));
        rtc.offer(PeerId(1), now);
        rtc.offer(PeerId(2), now);
        assert_eq!(rtc.next_timeout(), Some(now + Duration::from_secs(15)));
        rtc.close(PeerId(2));
        let events = rtc.timeout(now + Duration::from_secs(15));
        let [Event::PeerClosed(closed)] = events.as_slice() else { panic!("{events:?}") };
        assert_eq!((closed.peer, closed.reason.as_str()), (PeerId(1), OFFER_UNANSWERED));
        assert_eq!(rtc.offers_pending(), 0);
        assert!(rtc.by_ufrag.is_empty() && rtc.deadlines.is_empty());
        assert!(rtc.accept_answer(PeerId(1), "v=0".into(), now).is_empty(), "no offer to answer");
    }
}
