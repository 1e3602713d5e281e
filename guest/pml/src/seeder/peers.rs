//! The viewer side of the seeder: what trackers relay (offers, answers, swarm sizes)
//! and what viewers say on their DataChannels (requests, cancels), answered from the
//! streams' caches within each viewer's limits.
//!
//! Pure: it only returns commands. It must never decide what a stream keeps; that is
//! the shared segments part's (`superpeer-segments`).

use super::*;

impl Seeder {
    pub(super) fn on_tracker_text(&mut self, conn: ConnId, text: &str, out: &mut Vec<Command>) {
        match announce::parse(text) {
            Ok(TrackerMessage::Offer { info_hash, peer_id, offer_id, sdp }) => {
                let Some(swarm) = self.swarm_of(&info_hash) else { return };
                // A viewer we do not know: the swarm may be larger than we counted.
                if self.remotes.contains(&(swarm, peer_id.clone())) {
                    return;
                }
                self.reach.grown(swarm);
                // An offer the host would refuse to answer (over its limit on a
                // command's text) is not taken: it would hold a place for nothing.
                if self.viewers_open() >= self.max_peers
                    || sdp.len() > MAX_SDP_BYTES
                    || !self.offer_allowed(conn)
                {
                    return;
                }
                let pending = self.pending_peers();
                if pending.len() >= MAX_PENDING_PEERS {
                    let oldest = pending[0];
                    self.forget_peer(oldest);
                    out.push(close(oldest, "not connected in time for a newer viewer"));
                }
                self.remotes.insert((swarm, peer_id.clone()));
                let peer = self.id();
                let since_ms = self.now_ms;
                let pending =
                    PendingAnswer { conn, swarm, remote_peer_id: peer_id, offer_id, since_ms };
                self.answering.insert(peer, pending);
                out.push(Command::PeerAnswer(PeerAnswer { peer, offer: sdp }));
            }
            Ok(TrackerMessage::Answer { info_hash, peer_id, offer_id, sdp }) => {
                let Some((peer, (swarm, _))) = self.reach.answered(&offer_id, conn, self.now_ms)
                else {
                    return;
                };
                if self.swarms[swarm].info_hash != info_hash {
                    out.push(close(peer, "answered from another swarm"));
                } else if self.viewers_open() >= self.max_peers {
                    out.push(close(peer, "no room for another viewer"));
                } else if !self.remotes.insert((swarm, peer_id.clone())) {
                    out.push(close(peer, "already connected to this viewer"));
                } else {
                    self.peers.insert(peer, Viewer::new(swarm, peer_id, self.now_ms));
                    out.push(Command::PeerAcceptAnswer(PeerAcceptAnswer { peer, answer: sdp }));
                }
            }
            Ok(TrackerMessage::Interval { info_hash, interval, complete, incomplete }) => {
                if let Some(swarm) = self.swarm_of(&info_hash) {
                    self.swarms[swarm].announce_seconds = interval.clamp(10, 3600);
                    self.reach.swarm_size((swarm, conn), complete, incomplete);
                }
            }
            Ok(TrackerMessage::Scrape(sizes)) if self.measuring.scout => {
                for (info_hash, members) in sizes {
                    if let Some(swarm) = self.swarm_of(&info_hash) {
                        self.measuring.scraped.insert((swarm, conn), members);
                    }
                }
            }
            Ok(TrackerMessage::Failure(reason)) => log(&format!("tracker refused: {reason}")),
            Ok(
                TrackerMessage::Warning(_) | TrackerMessage::Ignored | TrackerMessage::Scrape(_),
            ) => {}
            Err(error) => log(&format!("unreadable tracker message: {error}")),
        }
    }

    pub(super) fn swarm_of(&self, info_hash: &str) -> Option<usize> {
        self.swarms.iter().position(|s| s.info_hash == info_hash)
    }

    /// The end of a turn: announces whose offers are made go out, and the viewers of
    /// every stream whose segments changed hear what it has now, so a burst of changes
    /// makes one announcement.
    pub(crate) fn flush(&mut self, out: &mut Vec<Command>) {
        self.say_swarm_size(out);
        for due in self.reach.take_due(self.now_ms) {
            let (index, conn) = due.key;
            let swarm = &self.swarms[index];
            let event = due.first.then_some(AnnounceEvent::Started);
            let mut offers = due.offers;
            let mut text = announce::announce(&swarm.info_hash, &swarm.peer_id, event, &offers);
            let mut withdrawn = due.withdrawn;
            while text.len() > MAX_ANNOUNCE_BYTES
                && let Some(last) = offers.pop()
            {
                if let Some(peer) = self.reach.peer_of(&last.offer_id) {
                    self.reach.forget(peer);
                    withdrawn.push(peer);
                }
                text = announce::announce(&swarm.info_hash, &swarm.peer_id, event, &offers);
            }
            out.push(Command::TrackerSend(TrackerSend { conn, text }));
            out.extend(withdrawn.into_iter().map(|peer| close(peer, "offer withdrawn")));
        }
        for level in std::mem::take(&mut self.changed) {
            let message = announcement(&self.streams, level);
            for (peer, viewer) in &self.peers {
                if viewer.open && self.swarms[viewer.swarm].stream == level {
                    send(*peer, &message, out);
                }
            }
        }
    }

    /// A viewer whose offer we answered becomes a viewer of that swarm.
    pub(super) fn promote(&mut self, peer: PeerId) {
        if let Some(pending) = self.answering.remove(&peer) {
            let viewer = Viewer::new(pending.swarm, pending.remote_peer_id, self.now_ms);
            self.peers.insert(peer, viewer);
        }
    }

    /// A peer's DataChannel is open: it is a viewer now, if there is room. Answers and
    /// accepted offers are not counted until they open, so this is where
    /// `maxConnections` holds; one past it is closed. False if it was.
    pub(super) fn opened(&mut self, peer: PeerId, out: &mut Vec<Command>) -> bool {
        if self.peers.get(&peer).is_some_and(|v| !v.open) && self.viewers_open() >= self.max_peers {
            self.forget_peer(peer);
            out.push(close(peer, "no room for another viewer"));
            return false;
        }
        if let Some(viewer) = self.peers.get_mut(&peer) {
            viewer.open = true;
        }
        true
    }

    pub(super) fn on_peer_message(&mut self, peer: PeerId, data: &[u8], out: &mut Vec<Command>) {
        if self.answering.contains_key(&peer) {
            // It speaks: its channel is open, and an earlier instance answered it.
            self.promote(peer);
            if !self.opened(peer, out) {
                return;
            }
        }
        let joining: usize = self.peers.values().map(|v| v.joiner.held()).sum();
        let Some(viewer) = self.peers.get_mut(&peer) else { return };
        // One viewer's troubles are its own: one that sends faster than any viewer needs
        // to, or holds more of the instance's memory in a command than its share, is
        // closed, and the instance carries on for the others.
        let refused = if !viewer.allowed(self.now_ms) {
            Some("sends too many messages".to_string())
        } else if joining + data.len() > MAX_JOINING_BYTES {
            Some("holds too much of a command".to_string())
        } else if !wire::is_command_chunk(data) {
            // Raw data would be a segment the viewer uploads; we never ask for one.
            return;
        } else {
            match viewer
                .joiner
                .push(data)
                .and_then(|body| body.map(|b| wire::decode(&b)).transpose())
            {
                Ok(Some(command)) => {
                    self.on_command(peer, command, out);
                    return;
                }
                Ok(None) => return,
                // A peer that speaks garbage loses its connection, nobody else.
                Err(error) => Some(format!("bad message: {error}")),
            }
        };
        if let Some(reason) = refused {
            self.forget_peer(peer);
            out.push(close(peer, &reason));
        }
    }

    pub(super) fn on_command(
        &mut self,
        peer: PeerId,
        command: PeerCommand,
        out: &mut Vec<Command>,
    ) {
        let Some(viewer) = self.peers.get_mut(&peer) else { return };
        let level = self.swarms[viewer.swarm].stream;
        match command {
            PeerCommand::SegmentRequest { id, request, byte_from } => {
                // A new request replaces the one being served.
                if let Some(old) = viewer.serving.take() {
                    out.push(Command::CancelServe(superpeer_guest::CancelServe {
                        peer,
                        handle: old.handle,
                    }));
                }
                let offset = byte_from.unwrap_or(0).max(0) as u64;
                match self.streams.get(level, id) {
                    Some(Held { handle, size }) if offset <= size => {
                        let header =
                            PeerCommand::SegmentData { id, request, size: (size - offset) as i64 };
                        send(peer, &header, out);
                        // The end goes with the serve: the host sends it after the last
                        // byte, or not at all if the serve fails or is cancelled.
                        // Answering `segment-sent` instead would leave the viewer
                        // waiting whenever that event reaches an instance started from
                        // a snapshot older than this request.
                        let done = PeerCommand::SegmentDataSendingCompleted { id, request };
                        superpeer_guest::serve_segment(
                            out,
                            peer,
                            handle,
                            offset,
                            SEGMENT_CHUNK,
                            one_message(&done),
                        );
                        viewer.serving = Some(Serving { id, request, handle });
                    }
                    _ => send(peer, &PeerCommand::SegmentAbsent { id, request }, out),
                }
                self.streams(out, |streams, lend| streams.demand(level, id, lend));
            }
            PeerCommand::CancelSegmentRequest { id, request } => {
                if let Some(old) = viewer.serving.take_if(|s| s.id == id && s.request == request) {
                    out.push(Command::CancelServe(superpeer_guest::CancelServe {
                        peer,
                        handle: old.handle,
                    }));
                }
            }
            // A VOD viewer asks only for what we announce, so where it is comes from what
            // it has: the segments after its newest are fetched ahead for it. A viewer
            // that joined mid-stream, or was watching before we came, is met there.
            PeerCommand::SegmentsAnnouncement { loaded, loading } => {
                if let Some(newest) = loaded.iter().chain(&loading).max().copied() {
                    self.streams(out, |streams, lend| streams.demand(level, newest + 1, lend));
                }
            }
            // What a viewer is sending matters only to peers that download.
            PeerCommand::SegmentData { .. }
            | PeerCommand::SegmentDataSendingCompleted { .. }
            | PeerCommand::SegmentAbsent { .. } => {}
        }
    }

    /// Streams, segments held, viewers connected: for tests and logs.
    #[cfg(test)]
    pub(super) fn figures(&self) -> (usize, usize, usize) {
        (self.streams.levels(), self.streams.held().count(), self.peers.len())
    }
}

pub(super) fn close(peer: PeerId, reason: &str) -> Command {
    Command::PeerClose(PeerClose { peer, reason: reason.into() })
}
