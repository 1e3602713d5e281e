//! The viewers' side of an instance: the signal relays' messages (offers, answers,
//! not found), the DataChannel protocol (METADATA, REQUEST and PIECE, cancels, HAVE),
//! and telling viewers what is held.

use superpeer_guest::{
    CancelServe, Command, ConnId, MessageSize, PeerAcceptAnswer, PeerAnswer, PeerId, ServeSegment,
    TrackerSend,
};

use super::*;
use crate::peer::{self, FRAME_BYTES, Message, Metadata};
use crate::signal::{Incoming, Outgoing, SignalData};

impl Instance {
    /// The signal connection to answer `via` through: that one while it is open, else
    /// any open one.
    pub(super) fn signal_conn(&self, via: ConnId) -> Option<ConnId> {
        let links = self.state.signals.as_ref()?;
        links.open().find(|c| *c == via).or_else(|| links.open().next())
    }

    pub(super) fn on_signal(&mut self, conn: ConnId, text: &str, out: &mut Vec<Command>) {
        let Some(message) = Incoming::decode(text) else { return };
        match message {
            Incoming::Signal { from, data: Some(SignalData::Offer(sdp)) } => {
                self.on_offer(conn, from, sdp, out)
            }
            Incoming::Signal { from, data: Some(SignalData::Answer(sdp)) } => {
                let offered = self.peers_of(&from).find(|(_, v)| !v.open && v.offered.is_some());
                if let Some((peer, _)) = offered {
                    out.push(Command::PeerAcceptAnswer(PeerAcceptAnswer { peer, answer: sdp }));
                }
            }
            // Not found: a viewer we answered left the relay before our answer came.
            Incoming::Signal { from, data: None } | Incoming::Reject { from, .. } => {
                let gone: Vec<PeerId> =
                    self.peers_of(&from).filter(|(_, v)| !v.open).map(|(peer, _)| peer).collect();
                for peer in gone {
                    self.state.viewers.remove(&peer);
                    out.push(close(peer, "the viewer left the signal relay"));
                }
            }
            // An ICE-lite answerer needs no candidates; our connections never renegotiate.
            Incoming::Signal { .. } | Incoming::Version(_) | Incoming::Pong => {}
            Incoming::Close(reason) => log(&format!("a signal relay closes us: {reason}")),
        }
    }

    pub(super) fn on_offer(
        &mut self,
        conn: ConnId,
        from: String,
        sdp: String,
        out: &mut Vec<Command>,
    ) {
        // Offers crossed (ours to it, its to us): the SDK answers ours only when its id
        // is the greater, and drops its own; otherwise it keeps its own, and so do we.
        let ours = self.state.tracker.peer_id.as_deref().unwrap_or_default();
        let crossed = self.peers_of(&from).any(|(_, v)| !v.open && v.offered.is_some());
        if crossed && from.as_str() > ours {
            return;
        }
        let connecting = self.state.viewers.values().filter(|v| !v.open).count();
        // A viewer offering again (its last connection failed) replaces its old one.
        let earlier: Vec<PeerId> = self.peers_of(&from).map(|(peer, _)| peer).collect();
        for peer in &earlier {
            self.state.viewers.remove(peer);
            out.push(close(*peer, "the viewer offered again"));
        }
        if self.state.viewers.len() >= self.seed.max_connections || connecting >= MAX_CONNECTING {
            let text = Outgoing::Reject {
                to_peer_id: from,
                reason: format!("peers reach limit {}", self.seed.max_connections),
                fatal: false,
            }
            .encode();
            out.push(Command::TrackerSend(TrackerSend { conn, text }));
            return;
        }
        let peer = self.state.ids.fresh();
        self.state.viewers.insert(peer, Viewer::new(from, conn, self.now_ms, false));
        out.push(Command::PeerAnswer(PeerAnswer { peer, offer: sdp }));
    }

    pub(super) fn on_peer_message(
        &mut self,
        peer: PeerId,
        data: &[u8],
        out: &mut Vec<Command>,
        changes: &mut Vec<Change>,
    ) {
        let now_ms = self.now_ms;
        let Some(viewer) = self.state.viewers.get_mut(&peer) else { return };
        if !viewer.allowance.take(now_ms, MESSAGES_PER_SECOND, MESSAGE_BURST) {
            self.state.viewers.remove(&peer);
            out.push(close(peer, "sends too many messages"));
            return;
        }
        // Binary messages would be a segment the viewer uploads: we never ask for one.
        if data.first() != Some(&b'{') {
            return;
        }
        let Some(message) = Message::decode(data) else {
            self.state.viewers.remove(&peer);
            out.push(close(peer, "sent a message that is not the protocol's"));
            return;
        };
        match message {
            Message::Metadata(metadata) => {
                if metadata.channel != self.seed.channel {
                    self.state.viewers.remove(&peer);
                    out.push(close(peer, "is a viewer of another channel"));
                    return;
                }
                viewer.ready = true;
                // We said ours first to a viewer we offered to.
                if viewer.offered.is_none() {
                    let ours = Message::Metadata(self.metadata());
                    send(peer, &ours, out);
                }
            }
            Message::Request(request) => self.on_request(peer, request, out, changes),
            Message::PieceCancel(_) => {
                if let Some(handle) = viewer.serving.take() {
                    out.push(Command::CancelServe(CancelServe { peer, handle }));
                    send(peer, &Message::PieceAbort { reason: Some("cancelled".into()) }, out);
                }
            }
            Message::Have(have) => {
                // Where a VOD viewer is: what it will ask for next is fetched.
                if let Ok(level) = usize::try_from(have.level) {
                    let next = have.sn.saturating_add(1);
                    self.streams(out, changes, |streams, lend| streams.demand(level, next, lend));
                }
            }
            Message::GetPeers => send(peer, &Message::Peers { peers: Vec::new() }, out),
            Message::Close { .. } => {
                self.state.viewers.remove(&peer);
                out.push(close(peer, "the viewer closed"));
            }
            Message::Stats { .. }
            | Message::PieceAck(_)
            | Message::Lost(_)
            | Message::Piece(_)
            | Message::PieceNotFound(_)
            | Message::PieceAbort { .. }
            | Message::Choke
            | Message::Unchoke
            | Message::Peers { .. }
            | Message::Unknown => {}
        }
    }

    pub(super) fn on_request(
        &mut self,
        peer: PeerId,
        request: peer::Request,
        out: &mut Vec<Command>,
        changes: &mut Vec<Change>,
    ) {
        let level = usize::try_from(request.level).ok();
        let default_id = level.map(|_| peer::segment_id(request.level, request.sn));
        let held = level.and_then(|level| self.state.streams.get(level, request.sn));
        // A viewer that names segments otherwise (`strictSegmentId`) asks for ids we do
        // not know: not found, rather than the wrong bytes.
        let matches = request.seg_id.is_none() || request.seg_id == default_id;
        let viewer = self.state.viewers.get_mut(&peer);
        let busy = viewer.as_ref().is_none_or(|v| !v.ready || v.serving.is_some());
        match (held, matches, busy, viewer) {
            (Some(held), true, false, Some(viewer)) => {
                viewer.serving = Some(held.handle);
                let seg_id = request.seg_id.or(default_id).unwrap_or_default();
                send(peer, &peer::piece(request.level, request.sn, seg_id, held.size), out);
                out.push(Command::ServeSegment(ServeSegment {
                    peer,
                    handle: held.handle,
                    offset: 0,
                    message_size: MessageSize::Exactly(FRAME_BYTES),
                    end: None,
                }));
            }
            (held, matches, busy, _) => {
                debug(&format!(
                    "not found: level {} sn {} (held {}, id matches {matches}, busy {busy})",
                    request.level,
                    request.sn,
                    held.is_some()
                ));
                let missing = peer::Segment {
                    sn: request.sn,
                    level: request.level,
                    seg_id: request.seg_id,
                    complete: None,
                };
                send(peer, &Message::PieceNotFound(missing), out);
            }
        }
        if let Some(level) = level {
            self.streams(out, changes, |streams, lend| streams.demand(level, request.sn, lend));
        }
    }

    pub(super) fn metadata(&self) -> Metadata {
        let mut field = peer::Field::new();
        for (level, sn) in self.state.streams.held() {
            field.entry(level.to_string()).or_default().push(sn);
        }
        Metadata {
            channel: self.seed.channel.clone(),
            field: Some(field),
            platform: Some("WEB".into()),
            mobile: Some(false),
            version: Some(SDK_VERSION.into()),
            sequential: Some(true),
            peers: None,
            super_peer: Some(true),
            token: (!self.seed.token.is_empty()).then(|| self.seed.token.clone()),
        }
    }

    /// Segments held and dropped, told to every viewer that completed the handshake.
    pub(super) fn tell_viewers(&self, changes: &[Change], out: &mut Vec<Command>) {
        if changes.is_empty() {
            return;
        }
        let vod = self.state.streams.ended();
        let messages: Vec<String> = changes
            .iter()
            .filter_map(|change| {
                let (level, sn, held) = match *change {
                    Change::Held { level, sn } => (level as i64, sn, true),
                    // Live viewers forget old segments by themselves.
                    Change::Dropped { .. } if !vod => return None,
                    Change::Dropped { level, sn } => (level as i64, sn, false),
                    // Viewers hear of a segment once it is held.
                    Change::Loading { .. } | Change::Abandoned { .. } => return None,
                };
                let segment = peer::Segment {
                    sn,
                    level,
                    seg_id: Some(peer::segment_id(level, sn)),
                    complete: held.then_some(true),
                };
                Some(if held { Message::Have(segment) } else { Message::Lost(segment) }.encode())
            })
            .collect();
        for peer in self.ready_viewers() {
            out.extend(
                messages
                    .iter()
                    .map(|text| Command::PeerSendText(PeerSendText { peer, text: text.clone() })),
            );
        }
    }

    pub(super) fn ready_viewers(&self) -> Vec<PeerId> {
        self.state.viewers.iter().filter(|(_, v)| v.ready).map(|(peer, _)| *peer).collect()
    }

    pub(super) fn connected(&self) -> usize {
        self.state.viewers.values().filter(|v| v.open).count()
    }
}
