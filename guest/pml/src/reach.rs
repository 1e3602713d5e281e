//! Reaching a swarm's viewers: when each swarm announces on each tracker, how many offers
//! of our own each announce carries, and the offers until they are answered, withdrawn
//! or expired.
//!
//! A peer that only answers meets about five viewers per announce round however large
//! the swarm, and none of those who announced before it joined (they announce again
//! only every couple of minutes). So superpeer offers: an announce carries up to the
//! tracker's number of offers, which the tracker hands to as many random members of the
//! swarm. Members already connected to us ignore theirs (a viewer destroys a second
//! connection to a peer id it knows), so a round makes enough offers to fill the free
//! connections at the share of members not yet reached, never more than the tracker
//! forwards. A round that cannot offer to every member misses each one not yet reached
//! with the same odds however few are left, so rounds come fast until nobody is missing,
//! and slow down while they bring nobody.
//!
//! Pure bookkeeping with time passed in; the seeder turns its decisions into commands.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use superpeer_guest::{ConnId, PeerId};

use crate::announce::Offer;

/// Offers per announce when a tracker has no setting of its own: what every known
/// tracker forwards (aquatic_ws forwards at most 10, wt-tracker 20, bittorrent-tracker
/// 82).
pub const DEFAULT_OFFERS_PER_ANNOUNCE: usize = 10;
/// The most offers an announce may carry: bittorrent-tracker forwards no more.
pub const MAX_OFFERS_PER_ANNOUNCE: usize = 82;
/// How long an offer waits for its answer. A viewer answers once its ICE gathering is
/// done (simple-peer gives it 5 s), then the tracker relays it. Most offers reach
/// viewers already connected and wait in vain, so this and [`MAX_PENDING_OFFERS`] set
/// how many offers a second a large swarm gets.
pub const OFFER_TIMEOUT_MS: u64 = 15_000;
/// The time between two announces of one swarm on one tracker while offering, when one
/// round offers to every member of the swarm.
pub const MIN_ROUND_GAP_MS: u64 = 1_000;
/// The time between them while a round cannot offer to every member: each round then
/// reaches only its share of those missing, and at one a second the last of a swarm of
/// hundreds were met after 10 to 20 s (a viewer that waits that long plays from the
/// origin, or gives up).
pub const FAST_ROUND_GAP_MS: u64 = 250;
/// How long rounds go on at their pace without any answer before they slow down: an
/// answer takes a viewer's ICE gathering (up to 5 s with simple-peer) and two relays.
pub const ANSWER_WAIT_MS: u64 = 5_000;
/// Rounds that bring nobody slow down only once they have made this many times the
/// offers that should have found one of the members not yet reached (the tracker hands
/// each to a random member): one that can be reached is missed by all of them with odds
/// of e^-5, under 1%. With the last of a thousand viewers left, an answer takes a
/// thousand offers on average; [`ANSWER_WAIT_MS`] of rounds of 82 make about 1,700,
/// after which a viewer that can be reached was still missed with odds of one in five,
/// and from then on each round came twice as late.
pub const MISSES_BEFORE_SLOWING: u64 = 5;
/// How long an announce waits for the host to make its offers (it makes them at once;
/// one it refused never comes, and the announce goes without it).
pub const BATCH_WAIT_MS: u64 = 1_000;
/// The longest a swarm goes without announcing, so without hearing from the tracker how
/// large the swarm is: viewers who join after we reached everyone are offered to within
/// this (their own offers reach us only by chance). Trackers ask for an announce every
/// couple of minutes; one more every few seconds per swarm is little beside a swarm's
/// viewers' own.
pub const SIZE_CHECK_MS: u64 = 10_000;
/// The most offers waiting for answers at once (the host has a bound of its own), so at
/// most this many every [`OFFER_TIMEOUT_MS`]: about 270 a second, most of what rounds of
/// 82 every [`FAST_ROUND_GAP_MS`] make (328). A viewer not yet met is found at that rate
/// over the swarm's size: with 1,000 waiting (67 a second), each of the last of a
/// thousand took 15 s on average. An offer waiting costs the host its credentials and
/// this policy its id (its SDP is dropped once sent); a viewer already connected that
/// the tracker hands one to makes a connection object for it and destroys it at once.
pub const MAX_PENDING_OFFERS: usize = 4096;
/// Why an offer is withdrawn after [`OFFER_TIMEOUT_MS`].
pub const OFFER_UNANSWERED: &str = "offer not answered in time";

/// A swarm on a tracker connection.
pub type LinkKey = (usize, ConnId);

/// What a swarm should do on a tracker now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    Nothing,
    /// Announce without offers (the first announce, or the periodic one).
    Announce,
    /// Make this many offers, then announce with them.
    Offers(usize),
}

/// How a swarm stands, for [`Reach::plan`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Need {
    /// Viewers of this swarm connected or being connected.
    pub connected: usize,
    /// Connections left in the worker's budget (`maxConnections`), for all swarms.
    pub free: usize,
    /// The budget itself.
    pub max: usize,
}

/// An announce to send now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Due {
    pub key: LinkKey,
    /// The swarm's first announce on this connection (`event: started`).
    pub first: bool,
    pub offers: Vec<Offer>,
    /// Offers made for this announce that did not come back in time: withdraw them.
    pub withdrawn: Vec<PeerId>,
}

#[derive(Debug, Serialize, Deserialize)]
struct PendingOffer {
    key: LinkKey,
    offer_id: String,
    /// `None` until the host made it; empty once an announce carried it (the snapshot
    /// then need not).
    sdp: Option<String>,
    expires_ms: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct Link {
    started: bool,
    last_announce_ms: Option<u64>,
    next_round_ms: u64,
    gap_ms: u64,
    /// The wait after a round that brought someone: [`FAST_ROUND_GAP_MS`] while one
    /// round cannot offer to everyone missing.
    base_gap_ms: u64,
    rounds: u64,
    /// When the last answer came, or the first round went out.
    last_fruit_ms: u64,
    /// Offers made since then, and how many the last round expected to make per answer
    /// (members over members not yet reached). Not in the snapshot, whose layout they
    /// would change: a new instance counts afresh.
    #[serde(skip)]
    offers_since_fruit: u64,
    #[serde(skip)]
    offers_per_answer: u64,
    /// Members of the swarm besides us, from the tracker's last reply.
    others: Option<u64>,
    /// A viewer offered to us since the last announce: the swarm may have grown.
    grown: bool,
    /// Offers being made for the next announce, and when they were asked for.
    batch: Option<(Vec<PeerId>, u64)>,
}

impl Default for Link {
    fn default() -> Self {
        Link {
            started: false,
            last_announce_ms: None,
            next_round_ms: 0,
            gap_ms: MIN_ROUND_GAP_MS,
            base_gap_ms: MIN_ROUND_GAP_MS,
            rounds: 0,
            last_fruit_ms: 0,
            offers_since_fruit: 0,
            offers_per_answer: 0,
            others: None,
            grown: false,
            batch: None,
        }
    }
}

/// How many offers an announce may carry on each tracker.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OfferLimits {
    /// For trackers not named in `by_url`.
    pub default: Option<usize>,
    pub by_url: Vec<(String, usize)>,
}

impl OfferLimits {
    pub fn for_url(&self, url: &str) -> usize {
        let named = self.by_url.iter().find(|(u, _)| same_tracker(u, url)).map(|(_, n)| *n);
        named.or(self.default).unwrap_or(DEFAULT_OFFERS_PER_ANNOUNCE)
    }
}

fn same_tracker(a: &str, b: &str) -> bool {
    a.trim_end_matches('/').eq_ignore_ascii_case(b.trim_end_matches('/'))
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Reach {
    /// From the seed's settings, not from the snapshot.
    #[serde(skip)]
    limits: OfferLimits,
    offers: HashMap<PeerId, PendingOffer>,
    by_offer_id: HashMap<String, PeerId>,
    links: BTreeMap<LinkKey, Link>,
    /// Offers per announce, by tracker connection.
    caps: HashMap<ConnId, usize>,
}

impl Reach {
    pub fn new(limits: OfferLimits) -> Self {
        Reach { limits, ..Reach::default() }
    }

    /// A tracker connection opened: how many offers its announces carry.
    pub fn tracker_open(&mut self, conn: ConnId, url: &str) {
        self.caps.insert(conn, self.limits.for_url(url));
    }

    /// A tracker connection is gone: its swarms start over on the next one, and offers
    /// sent through it can no longer be answered (returned, to withdraw).
    pub fn tracker_closed(&mut self, conn: ConnId) -> Vec<PeerId> {
        self.caps.remove(&conn);
        self.links.retain(|(_, c), _| *c != conn);
        let gone: Vec<PeerId> =
            self.offers.iter().filter(|(_, o)| o.key.1 == conn).map(|(p, _)| *p).collect();
        for peer in &gone {
            self.forget(*peer);
        }
        gone
    }

    /// Whether the swarm announced itself on this connection.
    pub fn started(&self, key: LinkKey) -> bool {
        self.links.get(&key).is_some_and(|l| l.started)
    }

    /// The tracker's count of the swarm (its reply to an announce), ourselves included.
    pub fn swarm_size(&mut self, key: LinkKey, complete: Option<u64>, incomplete: Option<u64>) {
        if complete.is_none() && incomplete.is_none() {
            return;
        }
        let size = complete.unwrap_or(0).saturating_add(incomplete.unwrap_or(0));
        self.links.entry(key).or_default().others = Some(size.saturating_sub(1));
    }

    /// Each swarm's members besides us as each tracker last said.
    pub fn others(&self) -> impl Iterator<Item = (LinkKey, u64)> + '_ {
        self.links.iter().filter_map(|(key, link)| Some((*key, link.others?)))
    }

    /// What the swarm should do on this tracker now.
    pub fn plan(&mut self, key: LinkKey, now_ms: u64, interval_ms: u64, need: Need) -> Plan {
        let cap = self.caps.get(&key.1).copied().unwrap_or(DEFAULT_OFFERS_PER_ANNOUNCE);
        let pending_room = MAX_PENDING_OFFERS.saturating_sub(self.offers.len());
        let link = self.links.entry(key).or_default();
        if link.batch.is_some() {
            return Plan::Nothing;
        }
        // Counted in u64: a tracker may claim any size, and usize is 32 bits in wasm.
        let (max, connected) = (need.max as u64, need.connected as u64);
        let target = link.others.map_or(max, |n| n.min(max));
        let missing = target.saturating_sub(connected);
        if missing > 0 && need.free > 0 && pending_room > 0 && now_ms >= link.next_round_ms {
            // The tracker hands each offer to a different random member; those already
            // connected to us ignore theirs. Enough offers that the share of members
            // not yet reached fills the free connections, as far as the tracker takes.
            let reachable = link.others.unwrap_or(cap as u64).max(1);
            let unreached = reachable.saturating_sub(connected).max(1);
            // The product fits in u128 whatever the tracker claims.
            let wanted = (u128::from((need.free as u64).min(missing)) * u128::from(reachable))
                .div_ceil(u128::from(unreached));
            let wanted = u64::try_from(wanted).unwrap_or(u64::MAX);
            let count = wanted.clamp(1, cap as u64).min(reachable).min(pending_room as u64);
            // A swarm of unknown size may be larger than one round.
            let offers_to_all = link.others.is_some_and(|others| count >= others);
            link.base_gap_ms = if offers_to_all { MIN_ROUND_GAP_MS } else { FAST_ROUND_GAP_MS };
            link.offers_per_answer = reachable.div_ceil(unreached);
            let count = count as usize;
            return Plan::Offers(count);
        }
        let every = if link.grown { MIN_ROUND_GAP_MS } else { interval_ms.min(SIZE_CHECK_MS) };
        let periodic = link.last_announce_ms.is_none_or(|at| now_ms >= at + every);
        if !link.started || periodic { Plan::Announce } else { Plan::Nothing }
    }

    /// The offers asked of the host for the swarm's next announce, with the offer ids
    /// the tracker will know them by. Once rounds have brought nobody for
    /// [`ANSWER_WAIT_MS`] and [`MISSES_BEFORE_SLOWING`] times the offers an answer
    /// should take, each doubles the wait for the next (up to the announce interval);
    /// an answer brings it back.
    pub fn offering(
        &mut self,
        key: LinkKey,
        offers: Vec<(PeerId, String)>,
        now_ms: u64,
        interval_ms: u64,
    ) {
        let link = self.links.entry(key).or_default();
        if link.rounds == 0 {
            link.last_fruit_ms = now_ms;
        }
        let fruitless = now_ms.saturating_sub(link.last_fruit_ms) > ANSWER_WAIT_MS
            && link.offers_since_fruit
                >= MISSES_BEFORE_SLOWING.saturating_mul(link.offers_per_answer);
        link.gap_ms = if fruitless {
            (link.gap_ms * 2).min(interval_ms.max(MIN_ROUND_GAP_MS))
        } else {
            link.base_gap_ms
        };
        link.offers_since_fruit += offers.len() as u64;
        link.next_round_ms = now_ms + link.gap_ms;
        link.rounds += 1;
        link.batch = Some((offers.iter().map(|(peer, _)| *peer).collect(), now_ms));
        for (peer, offer_id) in offers {
            self.by_offer_id.insert(offer_id.clone(), peer);
            let expires_ms = now_ms + OFFER_TIMEOUT_MS;
            self.offers.insert(peer, PendingOffer { key, offer_id, sdp: None, expires_ms });
        }
    }

    /// The host made an offer's SDP.
    pub fn offer_ready(&mut self, peer: PeerId, sdp: String) -> bool {
        match self.offers.get_mut(&peer) {
            Some(offer) if offer.sdp.is_none() => {
                offer.sdp = Some(sdp);
                true
            }
            _ => false,
        }
    }

    /// A plain announce was sent.
    pub fn announced(&mut self, key: LinkKey, now_ms: u64) {
        let link = self.links.entry(key).or_default();
        link.started = true;
        link.grown = false;
        link.last_announce_ms = Some(now_ms);
    }

    /// A viewer of `swarm` offered to us: one we may not have counted, so the next look
    /// at the swarm's size comes as soon as the announce rate allows, not at the next
    /// size check. Viewers joining one after another keep it coming.
    pub fn grown(&mut self, swarm: usize) {
        for (_, link) in self.links.range_mut((swarm, 0)..=(swarm, ConnId::MAX)) {
            link.grown = true;
        }
    }

    /// The announces whose offers the host has made (or that waited
    /// [`BATCH_WAIT_MS`] for them): sent now, the swarm counted as announced.
    pub fn take_due(&mut self, now_ms: u64) -> Vec<Due> {
        let made = |peer: &PeerId| self.offers.get(peer).is_none_or(|o| o.sdp.is_some());
        let ready: Vec<LinkKey> = self
            .links
            .iter()
            .filter(|(_, l)| {
                l.batch.as_ref().is_some_and(|(peers, asked)| {
                    peers.iter().all(made) || now_ms >= asked + BATCH_WAIT_MS
                })
            })
            .map(|(key, _)| *key)
            .collect();
        let mut due = Vec::new();
        for key in ready {
            let Some(link) = self.links.get_mut(&key) else { continue };
            let Some((peers, _)) = link.batch.take() else { continue };
            let first = !link.started;
            link.started = true;
            link.grown = false;
            link.last_announce_ms = Some(now_ms);
            let (mut offers, mut withdrawn) = (Vec::new(), Vec::new());
            for peer in peers {
                match self.offers.get_mut(&peer) {
                    Some(PendingOffer { sdp: Some(sdp), offer_id, .. }) => {
                        offers.push(Offer { offer_id: offer_id.clone(), sdp: std::mem::take(sdp) })
                    }
                    Some(_) => {
                        self.forget(peer);
                        withdrawn.push(peer);
                    }
                    None => {}
                }
            }
            due.push(Due { key, first, offers, withdrawn });
        }
        due
    }

    /// An answer came, on tracker connection `conn`, for one of our offers: which offer
    /// (our peer) and swarm, if it is still waiting and was sent through that
    /// connection. It waits no more either way.
    pub fn answered(
        &mut self,
        offer_id: &str,
        conn: ConnId,
        now_ms: u64,
    ) -> Option<(PeerId, LinkKey)> {
        let peer = self.by_offer_id.get(offer_id).copied()?;
        let key = self.offers.get(&peer)?.key;
        if key.1 != conn {
            return None;
        }
        self.forget(peer);
        if let Some(link) = self.links.get_mut(&key) {
            link.last_fruit_ms = now_ms;
            link.offers_since_fruit = 0;
        }
        Some((peer, key))
    }

    pub fn limits(&self) -> &OfferLimits {
        &self.limits
    }

    /// Takes the seed's settings (after a new instance read an earlier one's state).
    pub fn set_limits(&mut self, limits: OfferLimits) {
        self.limits = limits;
    }

    /// Keeps only the offers `live` says the host still has.
    pub fn retain_offers(&mut self, live: impl Fn(PeerId) -> bool) {
        let gone: Vec<PeerId> = self.offers.keys().filter(|p| !live(**p)).copied().collect();
        for peer in gone {
            self.forget(peer);
        }
    }

    /// Whether `peer` is an offer of ours waiting for its answer.
    pub fn is_offer(&self, peer: PeerId) -> bool {
        self.offers.contains_key(&peer)
    }

    /// The tracker connections swarms announced on.
    pub fn connections(&self) -> impl Iterator<Item = ConnId> + '_ {
        self.links.keys().map(|(_, conn)| *conn)
    }

    /// Our peer for an offer id still waiting.
    pub fn peer_of(&self, offer_id: &str) -> Option<PeerId> {
        self.by_offer_id.get(offer_id).copied()
    }

    /// An offer that waited too long, or that our budget cannot take; true if it was
    /// one.
    pub fn forget(&mut self, peer: PeerId) -> bool {
        match self.offers.remove(&peer) {
            Some(offer) => {
                self.by_offer_id.remove(&offer.offer_id);
                true
            }
            None => false,
        }
    }

    /// The offers that waited too long: forgotten, returned to withdraw.
    pub fn expire(&mut self, now_ms: u64) -> Vec<PeerId> {
        let expired: Vec<PeerId> =
            self.offers.iter().filter(|(_, o)| o.expires_ms <= now_ms).map(|(p, _)| *p).collect();
        for peer in &expired {
            self.forget(*peer);
        }
        expired
    }

    #[cfg(test)]
    pub fn pending(&self) -> usize {
        self.offers.len()
    }

    /// Whether a round of offers is being made, for tests and logs.
    #[cfg(test)]
    pub fn offering_now(&self, key: LinkKey) -> bool {
        self.links.get(&key).is_some_and(|l| l.batch.is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: LinkKey = (0, 7);
    const INTERVAL: u64 = 120_000;

    fn need(connected: usize, free: usize) -> Need {
        Need { connected, free, max: 80 }
    }

    /// Asks for `n` offers (peers from `first`), makes them, and returns the announce.
    fn round(reach: &mut Reach, first: PeerId, n: usize, now: u64) -> Due {
        let offers: Vec<(PeerId, String)> =
            (0..n as u64).map(|i| (first + i, format!("offer{}", first + i))).collect();
        reach.offering(KEY, offers, now, INTERVAL);
        assert!(reach.take_due(now).is_empty(), "announced only once the host made them");
        for i in 0..n as u64 {
            assert!(reach.offer_ready(first + i, format!("sdp{i}")));
        }
        let mut due = reach.take_due(now);
        assert_eq!(due.len(), 1);
        due.remove(0)
    }

    #[test]
    fn a_new_swarm_offers_at_once_then_as_the_tracker_counts_it() {
        let mut reach = Reach::new(OfferLimits::default());
        reach.tracker_open(7, "wss://t.example/");
        assert_eq!(reach.plan(KEY, 0, INTERVAL, need(0, 80)), Plan::Offers(10), "size unknown");
        let due = round(&mut reach, 1, 10, 0);
        assert!(due.first);
        assert_eq!(due.offers.len(), 10);
        assert_eq!(due.offers[0], Offer { offer_id: "offer1".into(), sdp: "sdp0".into() });
        assert!(reach.started(KEY));

        // The tracker counts 13 (us and 12 viewers); 9 answered.
        reach.swarm_size(KEY, Some(0), Some(13));
        for peer in 1..=9 {
            assert_eq!(reach.answered(&format!("offer{peer}"), 7, 0), Some((peer, KEY)));
        }
        assert_eq!(reach.answered("offer1", 7, 0), None, "answered once");
        // More were missing than one round offers to (80 possible, 10 offered): the
        // next round comes sooner than once a second.
        assert_eq!(reach.plan(KEY, 200, INTERVAL, need(9, 71)), Plan::Nothing, "too soon");
        // Three left of twelve: offers to reach them, as many as the tracker forwards.
        assert_eq!(reach.plan(KEY, FAST_ROUND_GAP_MS, INTERVAL, need(9, 71)), Plan::Offers(10));
        let due = round(&mut reach, 20, 10, FAST_ROUND_GAP_MS);
        assert!(!due.first);
        // Ten offers to twelve members may miss any of the three: the next round comes
        // as soon, however few are missing.
        let next = 2 * FAST_ROUND_GAP_MS;
        assert_eq!(reach.plan(KEY, next - 100, INTERVAL, need(9, 71)), Plan::Nothing);
        assert_eq!(reach.plan(KEY, next, INTERVAL, need(9, 71)), Plan::Offers(10));
        // All twelve reached: nothing until the next look at the swarm's size.
        let last = FAST_ROUND_GAP_MS;
        assert_eq!(reach.plan(KEY, next, INTERVAL, need(12, 68)), Plan::Nothing);
        assert_eq!(reach.plan(KEY, last + SIZE_CHECK_MS, INTERVAL, need(12, 68)), Plan::Announce);
        // A viewer's offer says the swarm may have grown: a look sooner.
        let last = last + SIZE_CHECK_MS;
        reach.announced(KEY, last);
        reach.grown(0);
        reach.grown(1);
        assert_eq!(reach.plan(KEY, last + 500, INTERVAL, need(12, 68)), Plan::Nothing);
        assert_eq!(
            reach.plan(KEY, last + MIN_ROUND_GAP_MS, INTERVAL, need(12, 68)),
            Plan::Announce
        );
    }

    #[test]
    fn offers_fill_the_free_budget_at_the_share_not_yet_reached() {
        let mut reach = Reach::new(OfferLimits { default: Some(82), by_url: vec![] });
        reach.tracker_open(7, "ws://t/");
        reach.swarm_size(KEY, None, Some(501));
        // 500 viewers, none reached, 80 connections free: 80 offers.
        assert_eq!(reach.plan(KEY, 0, INTERVAL, need(0, 80)), Plan::Offers(80));
        // 250 reached of 500, 5 free: about 10 offers bring 5.
        assert_eq!(
            reach.plan(KEY, 0, INTERVAL, Need { connected: 250, free: 5, max: 300 }),
            Plan::Offers(10)
        );
        // No budget left, or nobody else in the swarm: no offers.
        assert_eq!(
            reach.plan(KEY, 0, INTERVAL, Need { connected: 80, free: 0, max: 80 }),
            Plan::Announce
        );
        reach.swarm_size(KEY, Some(1), Some(0));
        assert_eq!(reach.plan(KEY, 0, INTERVAL, need(0, 80)), Plan::Announce);
    }

    /// Offers to every member of a swarm: another round could reach nobody new until
    /// the swarm changes, so it waits the full gap.
    #[test]
    fn a_round_that_offers_to_every_member_waits_the_full_gap() {
        let mut reach = Reach::new(OfferLimits::default());
        reach.swarm_size(KEY, None, Some(6));
        assert_eq!(reach.plan(KEY, 0, INTERVAL, need(0, 80)), Plan::Offers(5));
        round(&mut reach, 1, 5, 0);
        assert_eq!(reach.plan(KEY, MIN_ROUND_GAP_MS - 1, INTERVAL, need(0, 80)), Plan::Nothing);
        assert_eq!(reach.plan(KEY, MIN_ROUND_GAP_MS, INTERVAL, need(0, 80)), Plan::Offers(5));
    }

    #[test]
    fn rounds_that_bring_nobody_slow_down_and_an_answer_speeds_them_up() {
        let mut reach = Reach::new(OfferLimits::default());
        reach.swarm_size(KEY, None, Some(40));
        let mut now = 0;
        let mut gaps = Vec::new();
        // Room for five, of forty members: each round offers to five of them.
        let five = Need { connected: 0, free: 5, max: 5 };
        for r in 0..26u64 {
            let Plan::Offers(n) = reach.plan(KEY, now, INTERVAL, five) else {
                panic!("round {r} not due at {now}")
            };
            round(&mut reach, 100 * r + 1, n, now);
            let next = (now..)
                .step_by(50)
                .find(|t| matches!(reach.plan(KEY, *t, INTERVAL, five), Plan::Offers(_)));
            gaps.push(next.unwrap() - now);
            now = next.unwrap();
        }
        // Rounds come fast while answers may still come, then slower and slower.
        let fast = (ANSWER_WAIT_MS / FAST_ROUND_GAP_MS + 1) as usize;
        assert_eq!(gaps[..fast], [FAST_ROUND_GAP_MS; 21]);
        assert_eq!(gaps[fast..], [500, 1_000, 2_000, 4_000, 8_000]);
        for r in 26..31u64 {
            let Plan::Offers(n) = reach.plan(KEY, now, INTERVAL, five) else { panic!() };
            round(&mut reach, 100 * r + 1, n, now);
            now += 200_000;
        }
        assert_eq!(reach.links[&KEY].gap_ms, INTERVAL, "never slower than the periodic announce");
        assert!(reach.answered("offer1101", 7, now).is_some());
        let Plan::Offers(n) = reach.plan(KEY, now, INTERVAL, need(1, 79)) else { panic!() };
        round(&mut reach, 1000, n, now);
        assert!(reach.plan(KEY, now + 1_000, INTERVAL, need(1, 79)) != Plan::Nothing);
    }

    /// The last viewer of a thousand not met: an answer takes about a thousand offers,
    /// so rounds keep their pace until five times that brought nobody.
    #[test]
    fn rounds_seeking_the_last_of_a_large_swarm_keep_their_pace_until_the_odds_are_spent() {
        let mut reach = Reach::new(OfferLimits { default: Some(82), by_url: vec![] });
        reach.tracker_open(7, "ws://t/");
        reach.swarm_size(KEY, None, Some(1001));
        let one_missing = Need { connected: 999, free: 9001, max: 10_000 };
        let (mut now, mut made, mut gaps) = (0, 0u64, Vec::new());
        while made < 6_000 {
            reach.expire(now);
            if let Plan::Offers(n) = reach.plan(KEY, now, INTERVAL, one_missing) {
                round(&mut reach, 1 + made, n, now);
                gaps.push((made, reach.links[&KEY].gap_ms));
                made += n as u64;
            }
            now += 50;
        }
        // The first slower round is the first made after the odds were spent.
        let slow_from = gaps.iter().find(|(_, gap)| *gap > FAST_ROUND_GAP_MS).unwrap().0;
        let odds = MISSES_BEFORE_SLOWING * 1000;
        assert!((odds..odds + 82).contains(&slow_from), "slowed after {slow_from} offers");
        // Far past the five seconds of rounds that slow down a search expecting answers.
        assert!(now > 4 * ANSWER_WAIT_MS, "{now}");
        assert!(reach.pending() <= MAX_PENDING_OFFERS);
    }

    #[test]
    fn offers_expire_are_withdrawn_when_not_made_and_go_with_their_tracker() {
        let mut reach = Reach::new(OfferLimits::default());
        reach.offering(KEY, vec![(1, "a".into()), (2, "b".into()), (3, "c".into())], 0, INTERVAL);
        reach.offer_ready(1, "sdp".into());
        // The host refused offer 2; offer 3 closed before it was made.
        assert!(reach.forget(3));
        assert!(reach.take_due(BATCH_WAIT_MS - 1).is_empty(), "offer 2 may still come");
        let due = reach.take_due(BATCH_WAIT_MS);
        assert_eq!(due[0].offers.len(), 1);
        assert_eq!(due[0].withdrawn, [2]);
        assert_eq!(reach.pending(), 1);
        assert_eq!(reach.answered("a", 9, 0), None, "an answer through another tracker");
        assert!(reach.expire(OFFER_TIMEOUT_MS - 1).is_empty());
        assert_eq!(reach.expire(OFFER_TIMEOUT_MS), [1]);
        assert_eq!(reach.answered("a", 7, 0), None, "an expired offer's answer is not taken");

        reach.offering((1, 9), vec![(4, "d".into())], 0, INTERVAL);
        assert_eq!(reach.pending(), 1);
        assert_eq!(reach.tracker_closed(9), [4]);
        assert_eq!(reach.pending(), 0);
        assert!(!reach.started((1, 9)));
    }

    #[test]
    fn a_tracker_that_claims_any_size_gets_no_more_than_its_offers() {
        let mut reach = Reach::new(OfferLimits::default());
        reach.swarm_size(KEY, Some(u64::MAX), Some(u64::MAX));
        assert_eq!(reach.plan(KEY, 0, INTERVAL, need(0, 80)), Plan::Offers(10));
        reach.swarm_size(KEY, Some(0), Some(0));
        assert_eq!(reach.plan(KEY, 0, INTERVAL, need(0, 80)), Plan::Announce, "nobody to reach");
    }

    #[test]
    fn trackers_get_their_own_number_of_offers() {
        let limits =
            OfferLimits { default: Some(20), by_url: vec![("wss://big.example/".into(), 82)] };
        assert_eq!(limits.for_url("wss://big.example"), 82);
        assert_eq!(limits.for_url("WSS://BIG.EXAMPLE/"), 82);
        assert_eq!(limits.for_url("wss://other.example"), 20);
        assert_eq!(OfferLimits::default().for_url("wss://x"), DEFAULT_OFFERS_PER_ANNOUNCE);
        let mut reach = Reach::new(limits);
        reach.tracker_open(7, "wss://big.example");
        let need = Need { connected: 0, free: 200, max: 200 };
        assert_eq!(reach.plan(KEY, 0, INTERVAL, need), Plan::Offers(82));
    }
}
