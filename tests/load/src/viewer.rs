//! One simulated viewer: its tracker connection, its announces and offers, the
//! connections it keeps (one per peer id), and what it asks each for.
//!
//! It never touches a socket of a connection; each is a [`crate::link::LinkDriver`].

use super::*;
use crate::link::{FromLink, LinkDriver, ToLink};

/// A connection of a viewer's, as the viewer sees it.
#[derive(Debug)]
pub(crate) struct Link {
    pub(crate) commands: mpsc::UnboundedSender<ToLink>,
    /// The peer at the other end, once known (an answer names it).
    pub(crate) remote: Option<String>,
    pub(crate) open: bool,
    /// The segments it announced.
    pub(crate) has: BTreeSet<i64>,
    /// When our offer on it was made, while it waits for an answer.
    pub(crate) offered: Option<(Instant, String)>,
}

/// A request in flight.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Asked {
    pub(crate) link: u64,
    pub(crate) id: i64,
    pub(crate) at: Instant,
}

pub(crate) type Tracker =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// One simulated viewer.
pub(crate) struct Viewer {
    pub(crate) index: usize,
    pub(crate) args: Arc<Args>,
    pub(crate) origin: Arc<Vec<Segment>>,
    pub(crate) started: Instant,
    /// The end of the run; moved forward if the run is stopped early.
    pub(crate) deadline: tokio::sync::watch::Receiver<Instant>,
    pub(crate) peer_id: String,
    /// Every simulated viewer's peer id (for `--isolated`).
    pub(crate) swarm: Arc<Vec<String>>,
    pub(crate) links: HashMap<u64, Link>,
    pub(crate) next_link: u64,
    /// Peer ids connected: one connection per peer (attempts still connecting may be
    /// several; the first to open wins).
    pub(crate) remotes: HashSet<String>,
    pub(crate) events: mpsc::UnboundedSender<(u64, FromLink)>,
    pub(crate) inbox: mpsc::UnboundedReceiver<(u64, FromLink)>,
    pub(crate) interval: Duration,
    pub(crate) asked: Option<Asked>,
    pub(crate) request: i64,
    pub(crate) cursor: usize,
    /// What it got (for `--share`).
    pub(crate) have: BTreeSet<i64>,
    pub(crate) rng: rand::rngs::SmallRng,
    pub(crate) role: Role,
    /// The connection a hostile viewer misbehaves on.
    pub(crate) misbehaving_on: Option<u64>,
}

impl Viewer {
    pub(crate) fn new(
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
    pub(crate) async fn watch(&mut self, seen: &mut Seen) -> anyhow::Result<()> {
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
    pub(crate) fn first_request_time(&self, now: Instant) -> Instant {
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
    pub(crate) async fn announce(
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

    pub(crate) async fn on_tracker(
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

    pub(crate) fn on_link(&mut self, link: u64, event: FromLink, joined: Instant, seen: &mut Seen) {
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
    pub(crate) fn ask(&mut self, now: Instant) {
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
    pub(crate) fn expire_offers(&mut self, now: Instant) {
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
    pub(crate) fn leave(&mut self, seen: &mut Seen) {
        seen.links_open = self.links.values().filter(|l| l.open).count();
        for (_, state) in self.links.drain() {
            let _ = state.commands.send(ToLink::Close);
        }
    }

    pub(crate) fn spawn_link(
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
