//! The tracker's side of an instance: announcing, figures every `report_interval`,
//! asking for the swarm's peers and offering to those not connected, leaving.

use superpeer_guest::links::Links;
use superpeer_guest::{Command, HttpRequest, PeerId, RequestId};

use super::*;
use crate::tracker::{self, Announce, Announced, NodeCall, ReplyError};

impl Instance {
    pub(super) fn request(
        &mut self,
        call: Call,
        url: String,
        body: String,
        out: &mut Vec<Command>,
    ) {
        let request = self.post(url, body, out);
        self.state.tracker.pending = Some((request, call));
    }

    /// A POST to the tracker, as the SDK sends them: JSON as plain text (a CORS simple
    /// request).
    fn post(&mut self, url: String, body: String, out: &mut Vec<Command>) -> RequestId {
        let request = self.state.ids.fresh();
        out.push(Command::HttpRequest(HttpRequest {
            request,
            method: "POST".into(),
            url,
            headers: vec![("content-type".into(), "text/plain;charset=UTF-8".into())],
            body: body.into_bytes(),
        }));
        request
    }

    pub(super) fn announce(&mut self, out: &mut Vec<Command>) {
        let announce =
            Announce::new(&self.seed.channel, self.wall_ms / 1000, SDK_VERSION, self.seed.live);
        let body = serde_json::to_string(&announce).unwrap_or_default();
        self.request(Call::Announce, tracker::announce_url(&self.seed.tracker), body, out);
    }

    pub(super) fn report(&mut self, leaving: bool, out: &mut Vec<Command>) {
        let Some(peer_id) = self.state.tracker.peer_id.clone() else { return };
        let url =
            tracker::node_url(&self.seed.tracker, &self.seed.channel, &peer_id, NodeCall::Stats);
        let share_kb = std::mem::take(&mut self.state.tracker.unreported) / 1024;
        let body = tracker::stats_body(self.connected() as u32 + 1, share_kb, leaving);
        self.request(Call::Report, url, body, out);
    }

    /// A round of reaching viewers who were there first: offers of ours that were not
    /// answered in time are withdrawn, and the tracker is asked for the swarm's peers.
    pub(super) fn reach(&mut self, out: &mut Vec<Command>) {
        self.set(Timer::Reach, REACH_MS, out);
        let now_ms = self.now_ms;
        let stale: Vec<PeerId> = self
            .state
            .viewers
            .iter()
            .filter(|(_, v)| !v.open && v.offered.is_some_and(|at| now_ms >= at + OFFER_MS))
            .map(|(peer, _)| *peer)
            .collect();
        for peer in stale {
            self.state.viewers.remove(&peer);
            out.push(close(peer, "our offer was not answered in time"));
        }
        let Some(peer_id) = self.state.tracker.peer_id.clone() else { return };
        let relays_open = self.state.signals.as_ref().is_some_and(|l| l.open().next().is_some());
        if self.state.tracker.asking.is_some() || !relays_open || self.room_to_offer() == 0 {
            return;
        }
        let mut exclusions: Vec<&str> =
            self.state.viewers.values().map(|v| v.remote.as_str()).collect();
        exclusions.truncate(MAX_EXCLUSIONS);
        let body = serde_json::json!({ "exclusions": exclusions }).to_string();
        let url =
            tracker::node_url(&self.seed.tracker, &self.seed.channel, &peer_id, NodeCall::Peers);
        self.state.tracker.asking = Some(self.post(url, body, out));
    }

    /// How many more offers of ours may wait now.
    pub(super) fn room_to_offer(&self) -> usize {
        let offering =
            self.state.viewers.values().filter(|v| !v.open && v.offered.is_some()).count();
        let connecting = self.state.viewers.values().filter(|v| !v.open).count();
        let room = self.seed.max_connections.saturating_sub(self.state.viewers.len());
        room.min(MAX_OFFERING.saturating_sub(offering))
            .min(MAX_CONNECTING.saturating_sub(connecting))
            .min(OFFERS_PER_ROUND)
    }

    /// The swarm's peers: offers to those we are not connected to.
    pub(super) fn offer_to(&mut self, peers: Vec<tracker::PeerRef>, out: &mut Vec<Command>) {
        let Some(via) = self.state.signals.as_ref().and_then(|l| l.open().next()) else { return };
        let ours = self.state.tracker.peer_id.clone().unwrap_or_default();
        let mut room = self.room_to_offer();
        for remote in peers.into_iter().map(|p| p.id) {
            let known = self.state.viewers.values().any(|v| v.remote == remote);
            if room == 0 || known || remote == ours || remote.is_empty() {
                continue;
            }
            room -= 1;
            let peer = self.state.ids.fresh();
            self.state.viewers.insert(peer, Viewer::new(remote, via, self.now_ms, true));
            out.push(Command::PeerOffer(peer));
        }
    }

    pub(super) fn on_reply(
        &mut self,
        request: RequestId,
        reply: Result<(u16, &[u8]), &str>,
        out: &mut Vec<Command>,
    ) {
        // The body of a successful response, or why there is none.
        let body = match reply {
            Ok((200..=299, body)) => Ok(body),
            Ok((status, _)) => {
                Err(ReplyError::Refused { code: i64::from(status), msg: "HTTP".into() })
            }
            Err(reason) => Err(ReplyError::Malformed(reason.to_string())),
        };
        if self.state.tracker.asking == Some(request) {
            self.state.tracker.asking = None;
            // A failed or refused request for peers waits for the next round.
            if let Ok(peers) = body.and_then(tracker::parse::<tracker::Peers>) {
                self.offer_to(peers.peers, out);
            }
            return;
        }
        let Some((pending, call)) = self.state.tracker.pending else { return };
        if pending != request {
            return;
        }
        self.state.tracker.pending = None;
        let result = match call {
            Call::Announce => body.and_then(tracker::parse::<Announced>).map(Some),
            // An empty reply to figures is fine.
            Call::Report => body.and_then(|body| match body.is_empty() {
                true => Ok(None),
                false => tracker::parse::<serde_json::Value>(body).map(|_| None),
            }),
        };
        match result {
            Ok(Some(announced)) => self.announced(announced, out),
            Ok(None) => {
                let seconds = self.state.tracker.report_seconds;
                self.set(Timer::Report, seconds * 1000, out);
            }
            Err(error) => {
                log(&format!("the tracker did not take our {call:?}: {error:?}"));
                if call == Call::Report {
                    // The tracker may have forgotten us: we announce again.
                    self.state.tracker.peer_id = None;
                }
                let retry = self.state.tracker.retry_ms.max(FIRST_ANNOUNCE_RETRY_MS);
                self.state.tracker.retry_ms = (retry * 2).min(LAST_ANNOUNCE_RETRY_MS);
                self.set(Timer::Announce, retry, out);
            }
        }
    }

    pub(super) fn announced(&mut self, announced: Announced, out: &mut Vec<Command>) {
        let tracker = &mut self.state.tracker;
        tracker.retry_ms = 0;
        tracker.report_seconds = announced.report_interval.max(MIN_REPORT_SECONDS);
        // The tracker's relays, when it names them, replace the seed's (as for viewers).
        let servers: Vec<String> = match &announced.signal {
            Some(main) => {
                [Some(main.clone()), announced.signal2.clone()].into_iter().flatten().collect()
            }
            None => self.seed.signals.clone(),
        };
        let token = announced.token.as_deref();
        let urls: Vec<String> = servers
            .iter()
            .map(|server| crate::signal::connect_url(server, &announced.id, SDK_VERSION, token))
            .collect();
        let same = tracker.peer_id.as_deref() == Some(announced.id.as_str())
            && tracker.signal_urls == urls;
        tracker.peer_id = Some(announced.id);
        if !same {
            if let Some(mut old) = self.state.signals.take() {
                old.stop(out);
            }
            let mut links = Links::new(&urls);
            links.start(&mut self.state.ids, out);
            self.state.signals = Some(links);
            self.state.tracker.signal_urls = urls;
        }
        let seconds = self.state.tracker.report_seconds;
        self.set(Timer::Report, seconds * 1000, out);
        if !self.state.timers.pending(&Timer::Reach) {
            self.set(Timer::Reach, REACH_FIRST_MS, out);
        }
    }

    pub(super) fn stop(&mut self, out: &mut Vec<Command>) {
        self.report(true, out);
        if let Some(links) = &mut self.state.signals {
            links.stop(out);
        }
    }
}
