//! One connection of a viewer's: its UDP socket, its WebRTC state and the 2.x wire
//! protocol on its DataChannel, driven by what its viewer tells it.
//!
//! It never decides what to ask for; its viewer does.

use super::*;

/// What a viewer tells one of its connections.
#[derive(Debug)]
pub(crate) enum ToLink {
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
pub(crate) enum FromLink {
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
pub(crate) struct Fetching {
    pub(crate) id: i64,
    pub(crate) request: i64,
    pub(crate) size: Option<usize>,
    pub(crate) received: usize,
    pub(crate) hasher: Sha256,
    pub(crate) last_progress: Instant,
}

/// One connection: its socket, its timers, the viewer's commands and the wire protocol.
pub(crate) struct LinkDriver {
    pub(crate) link: u64,
    pub(crate) connection: RTCPeerConnection,
    pub(crate) socket: UdpSocket,
    pub(crate) local: SocketAddr,
    pub(crate) inbox: mpsc::UnboundedReceiver<ToLink>,
    pub(crate) events: mpsc::UnboundedSender<(u64, FromLink)>,
    pub(crate) origin: Arc<Vec<Segment>>,
    pub(crate) channel: Option<rtc::data_channel::RTCDataChannelId>,
    pub(crate) joiner: wire::Joiner,
    pub(crate) fetching: Option<Fetching>,
    pub(crate) misbehaving: Option<Role>,
    /// Chunks of the endless command sent so far.
    pub(crate) chunks_sent: u64,
    /// Drops every datagram but STUN unread ([`Role::Unread`]).
    pub(crate) deaf: bool,
    /// Where the other peer's datagrams come from.
    pub(crate) remote_address: Option<SocketAddr>,
}

impl LinkDriver {
    pub(crate) async fn run(mut self) {
        let reason =
            self.drive().await.err().map_or("closed by the viewer".into(), |e| format!("{e:#}"));
        let _ = self.connection.close();
        self.flush();
        let _ = self.events.send((self.link, FromLink::Closed(reason)));
    }

    pub(crate) async fn drive(&mut self) -> anyhow::Result<()> {
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

    pub(crate) fn on_command(&mut self, command: ToLink) -> anyhow::Result<()> {
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
    pub(crate) fn misbehave(&mut self) -> anyhow::Result<()> {
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
    pub(crate) fn forge_stun(&mut self) {
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
    pub(crate) fn poll(&mut self) -> anyhow::Result<()> {
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

    pub(crate) fn on_peer_command(&mut self, command: PeerCommand) {
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
    pub(crate) fn check(&self, fetching: Fetching) -> Result<usize, String> {
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

    pub(crate) fn report(&self, event: FromLink) {
        let _ = self.events.send((self.link, event));
    }

    pub(crate) fn send(&mut self, command: &PeerCommand) -> anyhow::Result<()> {
        for message in wire::encode(command, wire::MAX_MESSAGE).map_err(|e| anyhow!("{e}"))? {
            self.send_raw(&message)?;
        }
        Ok(())
    }

    pub(crate) fn send_raw(&mut self, data: &[u8]) -> anyhow::Result<()> {
        let id = self.channel.context("no channel")?;
        self.connection
            .data_channel(id)
            .context("channel gone")?
            .send(Instant::now(), data.into())
            .map_err(|e| anyhow!("{e}"))?;
        self.flush();
        Ok(())
    }

    pub(crate) fn flush(&mut self) {
        while let Some(datagram) = self.connection.poll_write() {
            let _ = self.socket.try_send_to(&datagram.message, datagram.transport.peer_addr);
        }
    }
}
