//! The master's side of automatic seeding: the candidate list (posted and saved, or
//! read from `candidatesUrl`), the scouts that measure the candidates not seeded, and
//! the seeds `autoseed.rs` decides to start or give back. The decisions are
//! `autoseed.rs`'s; this file carries them out. It must never start or stop a seed the
//! operator posted.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use super::autoseed::{self, CandidateView, Decision, SCOUT_TIMEOUT, SCOUTS_AT_ONCE, Seeded};
use super::handle::Message;
use super::process::spawn_process;
use super::seeds::{self, SeedItem, SeedRecord};
use super::{Master, MasterError, STOP_GRACE, Seed};
use crate::dataplane::{BodyError, body_within};
use crate::ipc::{FromWorker, ToWorker};

/// The largest candidate list read from `candidatesUrl` (a thousand items with room).
const MAX_CANDIDATES_BYTES: usize = 4 << 20;
/// Memory a scout may use for segments: it fetches none.
pub(super) const SCOUT_MEMORY_BUDGET: u64 = 8 << 20;

/// What the fleet hands its master each turn for automatic seeding.
#[derive(Debug, Clone, Default)]
pub struct FleetRound {
    /// The fleet's candidate list (unless this node reads `candidatesUrl`).
    pub candidates: Vec<SeedItem>,
    /// Every seed in the fleet's list, by key.
    pub seeded: BTreeMap<String, Seeded>,
    /// The viewers each seeded channel's swarms hold, as its nodes' workers said.
    pub measured: BTreeMap<String, u64>,
    /// Seeds the fleet has room for.
    pub room: usize,
    /// The node that scouts and decides, and whether it is this one.
    pub leader: String,
    pub lead: bool,
}

/// A worker measuring one candidate.
#[derive(Debug)]
pub(super) struct Scout {
    key: String,
    started: Instant,
    to_worker: mpsc::Sender<ToWorker>,
    kill: Option<oneshot::Sender<()>>,
    /// When it was asked to stop (it said a size, or took too long).
    stopping: Option<Instant>,
}

impl Scout {
    /// Kills its process (once).
    fn kill(&mut self) {
        if let Some(kill) = self.kill.take() {
            let _ = kill.send(());
        }
    }
}

/// What `GET /candidates` shows.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CandidatesView {
    /// `candidatesUrl`, or `posted` (`POST /candidates`).
    pub source: String,
    /// Why the last read of `candidatesUrl` failed (the list read before stays).
    pub error: Option<String>,
    pub threshold: u64,
    pub grace_seconds: u64,
    pub scouts: usize,
    /// Fleet mode: the node that scouts and decides (it has the scouts' measures).
    pub leader: Option<String>,
    pub candidates: Vec<CandidateView>,
}

impl Master {
    /// `POST /candidates` on one machine: the new list, saved before it is taken.
    pub(super) fn set_candidates(&mut self, items: Vec<SeedItem>) -> Result<usize, MasterError> {
        if self.config.autoseed.candidates_url.is_some() {
            return Err(MasterError::CandidatesFromUrl);
        }
        let records: Vec<SeedRecord> = items.iter().cloned().map(SeedRecord::from).collect();
        self.candidate_store.save(&records).map_err(|e| MasterError::Persist(e.to_string()))?;
        let count = items.len();
        self.autoseed.set_candidates(items);
        self.candidates_known = true;
        Ok(count)
    }

    /// A read of `candidatesUrl` finished; a failed one keeps the list read before.
    pub(super) fn candidates_read(&mut self, result: Result<Vec<SeedItem>, String>) {
        match result {
            Ok(items) => {
                self.candidates_error = None;
                self.autoseed.set_candidates(items);
                self.candidates_known = true;
            }
            Err(error) => {
                if self.candidates_error.as_ref() != Some(&error) {
                    tracing::warn!(%error, "could not read the candidate list; keeping the last one");
                }
                self.candidates_error = Some(error);
            }
        }
    }

    pub(super) fn candidates_view(&self) -> CandidatesView {
        let config = &self.config.autoseed;
        let seeded =
            if self.config.fleet.is_some() { self.fleet_seeded.clone() } else { self.seeded() };
        CandidatesView {
            source: config.candidates_url.clone().unwrap_or_else(|| "posted".into()),
            error: self.candidates_error.clone(),
            threshold: config.threshold,
            grace_seconds: config.grace.as_secs(),
            scouts: self.scouts.len(),
            leader: self.fleet_leader.clone(),
            candidates: self.autoseed.view(self.since_start(Instant::now()), &seeded),
        }
    }

    /// How each seeded channel came to be, by key.
    fn seeded(&self) -> BTreeMap<String, Seeded> {
        self.seeds
            .iter()
            .map(|s| (seeds::channel_key(&s.item.channel), Seeded::of(&s.item)))
            .collect()
    }

    /// Every tick: candidates seeded or given back as their swarms say, and scouts
    /// started for those due a measure. Not before the list is known (a list that
    /// could not be read yet would give back every automatic seed).
    pub(super) fn auto_seed(&mut self, now: Instant) {
        self.expire_scouts(now);
        // Fleet mode: the fleet's seed list is in etcd, not this master's to change.
        if !self.candidates_known || self.config.fleet.is_some() {
            return;
        }
        let at = self.since_start(now);
        let seeded = self.seeded();
        let room = self.capacity().min(self.config.max_seeds).saturating_sub(self.seeds.len());
        let decision = self.autoseed.decide(at, &seeded, room, &self.config.autoseed);
        let changed = !decision.seed.is_empty() || !decision.release.is_empty();
        for key in decision.release {
            let channel = self
                .seeds
                .iter()
                .find(|s| s.item.auto && seeds::channel_key(&s.item.channel) == key)
                .map(|s| s.item.channel.clone());
            if let Some(channel) = channel {
                tracing::info!(%channel, "automatic seed given back: its swarms went cold");
                self.remove_seed(&channel);
            }
        }
        for item in decision.seed {
            tracing::info!(channel = %item.channel, label = %item.label, "automatic seed: its swarms are busy");
            self.seeds.push(Seed::new(item.into()));
        }
        if changed {
            let _ = self.persist();
        }
        let seeded = self.seeded();
        self.start_scouts(at, &seeded);
    }

    /// Fleet mode, every turn of the fleet: the fleet's candidates, seeds and the swarm
    /// sizes the nodes' workers said. The node that leads automatic seeding (`lead`)
    /// also scouts and decides; the fleet writes the decision to etcd.
    pub(super) fn fleet_auto_seed(&mut self, round: FleetRound) -> Decision {
        let at = self.since_start(Instant::now());
        if self.config.autoseed.candidates_url.is_none() {
            self.autoseed.set_candidates(round.candidates);
            self.candidates_known = true;
        }
        // A seed that went since the last round is measured again before it may be
        // seeded again, as on one machine.
        for key in self.fleet_seeded.keys().filter(|key| !round.seeded.contains_key(*key)) {
            self.autoseed.forget(key);
        }
        for (key, viewers) in &round.measured {
            self.autoseed.measured(key, *viewers, at);
        }
        self.fleet_seeded = round.seeded;
        self.fleet_leader = Some(round.leader.clone());
        if !round.lead || !self.candidates_known {
            return Decision::default();
        }
        let decision =
            self.autoseed.decide(at, &self.fleet_seeded, round.room, &self.config.autoseed);
        let mut seeded = self.fleet_seeded.clone();
        seeded.extend(decision.seed.iter().map(|i| (seeds::channel_key(&i.channel), Seeded::Auto)));
        self.start_scouts(at, &seeded);
        decision
    }

    /// Scouts for the candidates due a measure, as many as may run.
    fn start_scouts(&mut self, at: std::time::Duration, seeded: &BTreeMap<String, Seeded>) {
        let scouting: BTreeSet<String> = self.scouts.values().map(|s| s.key.clone()).collect();
        let room = SCOUTS_AT_ONCE.saturating_sub(self.scouts.len());
        let every = self.config.autoseed.scout_every;
        for item in self.autoseed.scouts_due(at, seeded, &scouting, every, room) {
            self.spawn_scout(&item, at);
        }
    }

    fn spawn_scout(&mut self, item: &SeedItem, at: std::time::Duration) {
        let key = seeds::channel_key(&item.channel);
        let started = self.worker_start(item, true).and_then(|(_, start)| {
            spawn_process(&self.worker_log_format, &item.channel, start, self.tx.clone())
                .map_err(|e| format!("could not start a scout: {e}"))
        });
        match started {
            Ok((pid, to_worker, kill)) => {
                tracing::debug!(pid, channel = %item.channel, "scout started");
                let scout = Scout {
                    key,
                    started: Instant::now(),
                    to_worker,
                    kill: Some(kill),
                    stopping: None,
                };
                self.scouts.insert(pid, scout);
            }
            Err(reason) => self.autoseed.failed(&key, reason, at),
        }
    }

    /// Scouts that said nothing in time are stopped, and those that do not stop are
    /// killed.
    fn expire_scouts(&mut self, now: Instant) {
        let at = self.since_start(now);
        for (pid, scout) in &mut self.scouts {
            match scout.stopping {
                None if now.duration_since(scout.started) > SCOUT_TIMEOUT => {
                    let reason = format!("said no size within {} s", SCOUT_TIMEOUT.as_secs());
                    tracing::warn!(pid, %reason, "scout stopped");
                    self.autoseed.failed(&scout.key, reason, at);
                    scout.stopping = Some(now);
                    let _ = scout.to_worker.try_send(ToWorker::Stop);
                }
                Some(since) if now.duration_since(since) > STOP_GRACE => scout.kill(),
                _ => {}
            }
        }
    }

    /// A message from a scout; false if `pid` is no scout.
    pub(super) fn on_scout_message(&mut self, pid: u32, message: &FromWorker) -> bool {
        let at = self.since_start(Instant::now());
        let Some(scout) = self.scouts.get_mut(&pid) else { return false };
        if scout.stopping.is_some() {
            return true;
        }
        match message {
            FromWorker::Report(report) => {
                if let Some(viewers) = report.policy.swarm_size {
                    tracing::debug!(pid, viewers, "scout measured its candidate");
                    self.autoseed.measured(&scout.key, viewers, at);
                    scout.stopping = Some(Instant::now());
                    let _ = scout.to_worker.try_send(ToWorker::Stop);
                }
            }
            // It exits now; its reason is the candidate's error.
            FromWorker::Failed { reason } => {
                self.autoseed.failed(&scout.key, format!("the scout's policy: {reason}"), at);
                scout.stopping = Some(Instant::now());
            }
            FromWorker::Ready { .. } | FromWorker::Swapped { .. } => {}
        }
        true
    }

    /// A scout exited; false if `pid` is no scout.
    pub(super) fn on_scout_exit(&mut self, pid: u32, code: Option<i32>) -> bool {
        let Some(scout) = self.scouts.remove(&pid) else { return false };
        if scout.stopping.is_none() {
            let reason = format!("the scout exited ({code:?}) before it said a size; see its log");
            self.autoseed.failed(&scout.key, reason, self.since_start(Instant::now()));
        }
        true
    }

    /// A scout whose channel broke is killed; false if `pid` is no scout.
    pub(super) fn kill_scout(&mut self, pid: u32) -> bool {
        let Some(scout) = self.scouts.get_mut(&pid) else { return false };
        scout.kill();
        true
    }

    /// On shutdown: scouts have nothing to finish.
    pub(super) fn kill_scouts(&mut self) {
        self.scouts.values_mut().for_each(Scout::kill);
    }
}

/// Reads `candidatesUrl` now and every `scoutIntervalSeconds`, for as long as the
/// master runs.
pub(super) async fn read_candidates_every(
    url: String,
    every: std::time::Duration,
    master: mpsc::Sender<Message>,
) {
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(20))
        .build()
        .expect("an HTTP client builds");
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        let result = async {
            let mut response = client.get(&url).send().await.map_err(|e| e.to_string())?;
            if !response.status().is_success() {
                return Err(format!("{url} answered {}", response.status()));
            }
            let body =
                body_within(&mut response, MAX_CANDIDATES_BYTES).await.map_err(|e| match e {
                    BodyError::TooLarge(_) => format!("{url}: over {MAX_CANDIDATES_BYTES} bytes"),
                    BodyError::Failed(error) => error.to_string(),
                })?;
            let text = String::from_utf8(body).map_err(|_| format!("{url}: not UTF-8 text"))?;
            autoseed::parse_candidates(&text).map_err(|e| format!("{url}: {e}"))
        }
        .await;
        if master.send(Message::CandidatesRead(result)).await.is_err() {
            return;
        }
    }
}
