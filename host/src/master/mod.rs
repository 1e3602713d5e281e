//! The master: keeps the list of seeds, runs worker processes for them, restarts the
//! ones that die, measures them, and hot-swaps their policy.
//!
//! One task owns all of this state ([`Master::run`], this file); the HTTP layer and the
//! workers' I/O tasks talk to it through a channel (`handle.rs`). What it shows is made
//! in `views.rs`, worker processes are started in `process.rs`. It must never block
//! that task on a worker: every worker has its own reader, writer and waiter tasks.

pub mod autoseed;
mod candidates;
pub mod config;
mod handle;
pub mod history;
mod process;
pub mod procfs;
pub mod scheduler;
pub mod seeds;
mod views;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, oneshot};

use crate::counters::Counters;
use crate::dataplane::disk::DiskCacheConfig;
use crate::ipc::{FromWorker, ToWorker, WorkerReport, WorkerStart};
use crate::policy::{AdmittedPolicy, PolicyMeta};
use crate::protocol::Protocol;
use autoseed::AutoSeed;
use candidates::Scout;
pub use candidates::{CandidatesView, FleetRound};
use config::MasterConfig;
use handle::Message;
pub use handle::{MasterError, MasterHandle, PolicyTarget};
use history::{History, WorkerReading};
use process::{CpuMeter, restart_delay, spawn_process};
use scheduler::{Action, SeedView, WorkerView};
use seeds::{SeedItem, SeedRecord, SeedStore};
pub use views::{
    HistoryView, MasterStats, PingView, PolicyIdentity, PolicyView, SeedPolicy, StatsView,
    WorkerStats,
};

/// How often the master re-plans and measures.
const TICK: Duration = Duration::from_secs(1);
/// A worker that has run this long without dying resets its seed's crash count.
const HEALTHY_AFTER: Duration = Duration::from_secs(60);
/// How long a worker may take to stop cleanly before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// Window over which `averageUplink` is computed.
const UPLINK_WINDOW: Duration = Duration::from_secs(60);
/// Sizing: memory and upload one worker is planned for.
const MEMORY_PER_WORKER: u64 = 512 << 20;
const MBPS_PER_WORKER: u64 = 1000;

struct Seed {
    item: SeedItem,
    /// What a newer version saved with the seed; written back as it came.
    newer: BTreeMap<String, serde_json::Value>,
    seed_from_ms: u64,
    restarts: u32,
    crashes: u32,
    retry_at: Option<Instant>,
    policy: Option<Arc<AdmittedPolicy>>,
}

impl Seed {
    fn new(record: SeedRecord) -> Self {
        Seed {
            item: record.item,
            newer: record.newer,
            seed_from_ms: now_ms(),
            restarts: 0,
            crashes: 0,
            retry_at: None,
            policy: None,
        }
    }

    fn record(&self) -> SeedRecord {
        SeedRecord { item: self.item.clone(), newer: self.newer.clone() }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stopping {
    /// Its seed is gone or it was displaced; do not replace it for that reason.
    Retire,
    /// Replace it at once (`/restart`).
    Replace,
}

struct Worker {
    channel: String,
    protocol: Protocol,
    started: Instant,
    to_worker: mpsc::Sender<ToWorker>,
    kill: Option<oneshot::Sender<()>>,
    policy: Option<PolicyMeta>,
    report: WorkerReport,
    /// When `report` arrived; None before the first.
    reported_at: Option<Instant>,
    idle_since: Option<Instant>,
    stopping: Option<(Stopping, Instant)>,
    cpu: CpuMeter,
    memory: u64,
    uplink: VecDeque<(Instant, u64)>,
}

pub struct Master {
    config: MasterConfig,
    store: SeedStore,
    /// Each protocol's policy, and the one it replaced.
    policies: BTreeMap<Protocol, Arc<AdmittedPolicy>>,
    previous_policies: BTreeMap<Protocol, Arc<AdmittedPolicy>>,
    seeds: Vec<Seed>,
    workers: BTreeMap<u32, Worker>,
    ping_bandwidth: Option<u64>,
    ping_workers: Option<usize>,
    tx: mpsc::Sender<Message>,
    rx: mpsc::Receiver<Message>,
    started: Instant,
    cpu: CpuMeter,
    worker_log_format: String,
    /// Counters of workers that exited, so totals never go backwards.
    retired: Counters,
    worker_restarts: u64,
    history: History,
    /// The seed list on disk is behind the one in memory.
    unsaved: bool,
    /// Fleet mode: the saved seeds wait for the fleet's word until then (another node
    /// may have taken them meanwhile); past it, with etcd away, they run as saved.
    awaiting_fleet: Option<Instant>,
    /// Automatic seeding: the candidates and what their swarms hold, the scouts
    /// measuring them, where a posted list is saved, and whether the list is known yet
    /// (read from `candidatesUrl` at least once, or loaded).
    autoseed: AutoSeed,
    scouts: BTreeMap<u32, Scout>,
    candidate_store: SeedStore,
    candidates_known: bool,
    candidates_error: Option<String>,
    /// Fleet mode: the fleet's seeds at the last round, and who leads automatic seeding.
    fleet_seeded: BTreeMap<String, autoseed::Seeded>,
    fleet_leader: Option<String>,
    _data_lock: std::fs::File,
}

impl std::fmt::Debug for Master {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Master")
            .field("seeds", &self.seeds.len())
            .field("workers", &self.workers.len())
            .finish()
    }
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl Master {
    /// Loads the saved seeds; the master starts their workers once it runs.
    pub fn new(
        config: MasterConfig,
        policies: BTreeMap<Protocol, AdmittedPolicy>,
        worker_log_format: &str,
    ) -> Result<(Self, MasterHandle), seeds::StoreError> {
        let store = SeedStore::new(&config.data_dir);
        let data_lock = store.lock()?;
        let saved = store.load()?;
        if !saved.is_empty() {
            tracing::info!(seeds = saved.len(), file = %store.path().display(), "seeds restored");
        }
        let seeds = saved.into_iter().map(Seed::new).collect();
        let candidate_store = SeedStore::named(&config.data_dir, "candidates.json");
        let mut autoseed = AutoSeed::default();
        let candidates_known = config.autoseed.candidates_url.is_none();
        if candidates_known {
            autoseed.set_candidates(candidate_store.load()?.into_iter().map(|r| r.item).collect());
        }
        let (tx, rx) = mpsc::channel(256);
        let handle = MasterHandle { tx: tx.clone() };
        let awaiting_fleet = config
            .fleet
            .as_ref()
            .map(|fleet| Instant::now() + 2 * Duration::from_secs(fleet.lease_seconds));
        let master = Master {
            awaiting_fleet,
            config,
            store,
            policies: policies.into_iter().map(|(p, policy)| (p, Arc::new(policy))).collect(),
            previous_policies: BTreeMap::new(),
            seeds,
            workers: BTreeMap::new(),
            ping_bandwidth: None,
            ping_workers: None,
            tx,
            rx,
            started: Instant::now(),
            cpu: CpuMeter::default(),
            worker_log_format: worker_log_format.to_string(),
            retired: Counters::default(),
            worker_restarts: 0,
            history: History::default(),
            unsaved: false,
            autoseed,
            scouts: BTreeMap::new(),
            candidate_store,
            candidates_known,
            candidates_error: None,
            fleet_seeded: BTreeMap::new(),
            fleet_leader: None,
            _data_lock: data_lock,
        };
        Ok((master, handle))
    }

    /// Runs until [`MasterHandle::shutdown`]; stops every worker before returning.
    pub async fn run(mut self) {
        if let Some(url) = self.config.autoseed.candidates_url.clone() {
            let every = self.config.autoseed.scout_every;
            tokio::spawn(candidates::read_candidates_every(url, every, self.tx.clone()));
        }
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                message = self.rx.recv() => match message {
                    Some(Message::Shutdown(reply)) => {
                        self.stop_everything().await;
                        let _ = reply.send(());
                        return;
                    }
                    Some(message) => self.on_message(message),
                    None => return,
                },
                _ = tick.tick() => self.on_tick(),
            }
        }
    }

    fn on_message(&mut self, message: Message) {
        match message {
            Message::Seed(items, reply) => {
                let _ = reply.send(self.add_seeds(items));
                self.schedule();
            }
            Message::Assign(records, reply) => {
                self.assign(records);
                let _ = reply.send(());
                self.schedule();
            }
            Message::Ping { bandwidth_mbps, workers, reply } => {
                self.ping_bandwidth = bandwidth_mbps.or(self.ping_bandwidth);
                self.ping_workers = workers.or(self.ping_workers);
                let _ =
                    reply.send(PingView { workers: self.workers.len(), capacity: self.capacity() });
                self.schedule();
            }
            Message::Stats(reply) => {
                let _ = reply.send(self.stats());
            }
            Message::History(after, reply) => {
                let _ = reply.send(self.history_view(after));
            }
            Message::StopAll(reply) => {
                let count = self.seeds.len();
                let result = self.save(&[]).map(|()| {
                    for seed in self.seeds.drain(..) {
                        self.autoseed.forget(&seeds::channel_key(&seed.item.channel));
                    }
                    let pids: Vec<u32> = self.workers.keys().copied().collect();
                    for pid in pids {
                        self.stop_worker(pid, Stopping::Retire);
                    }
                    count
                });
                let _ = reply.send(result);
            }
            Message::Stop(id, reply) => {
                let _ = reply.send(self.stop_seed(&id));
            }
            Message::RestartAll(reply) => {
                let pids: Vec<u32> = self.workers.keys().copied().collect();
                for pid in &pids {
                    self.stop_worker(*pid, Stopping::Replace);
                }
                let _ = reply.send(pids.len());
            }
            Message::Restart(pid, reply) => {
                let result = if self.workers.contains_key(&pid) {
                    self.stop_worker(pid, Stopping::Replace);
                    Ok(())
                } else {
                    Err(MasterError::NoSuchWorker(pid))
                };
                let _ = reply.send(result);
            }
            Message::SetPolicy(policy, target, reply) => {
                let _ = reply.send(self.set_policy(policy, target));
            }
            Message::Policy(reply) => {
                let _ = reply.send(self.policy_view());
            }
            Message::SeedPolicy(reply) => {
                let _ = reply.send(self.seed_policy());
            }
            Message::SetCandidates(items, reply) => {
                let _ = reply.send(self.set_candidates(items));
            }
            Message::Candidates(reply) => {
                let _ = reply.send(self.candidates_view());
            }
            Message::CandidatesRead(result) => self.candidates_read(result),
            Message::FleetAutoSeed(round, reply) => {
                let _ = reply.send(self.fleet_auto_seed(*round));
            }
            Message::Shutdown(_) => unreachable!("handled by run"),
            Message::FromWorker(pid, message) => {
                if !self.on_scout_message(pid, &message) {
                    self.on_worker_message(pid, *message);
                }
            }
            Message::ChannelBroken(pid, error) => {
                tracing::warn!(pid, %error, "bad message from worker; killing it");
                if self.kill_scout(pid) {
                    return;
                }
                if let Some(kill) = self.workers.get_mut(&pid).and_then(|w| w.kill.take()) {
                    let _ = kill.send(());
                }
            }
            Message::Exited(pid, code) => {
                if !self.on_scout_exit(pid, code) {
                    self.on_exit(pid, code);
                }
            }
        }
    }

    fn add_seeds(&mut self, items: Vec<SeedItem>) -> Result<usize, MasterError> {
        // Linear in the seeds: each id is decoded once.
        let mut known: HashMap<String, usize> = self
            .seeds
            .iter()
            .enumerate()
            .map(|(at, s)| (seeds::channel_key(&s.item.channel), at))
            .collect();
        let mut list: Vec<SeedRecord> = self.seeds.iter().map(Seed::record).collect();
        let mut placed = Vec::with_capacity(items.len());
        for item in &items {
            let at = *known.entry(seeds::channel_key(&item.channel)).or_insert(list.len());
            match list.get_mut(at) {
                // A re-seed updates the options (what a newer version saved with them
                // goes: the operator's latest word is the item); the first spelling of
                // the id stays.
                Some(existing) => {
                    let channel = existing.item.channel.clone();
                    *existing = SeedItem { channel, ..item.clone() }.into();
                }
                None => list.push(item.clone().into()),
            }
            placed.push(at);
        }
        // Past the cap only by adding seeds: updating those there is always possible, and
        // automatic seeds make room for the operator's.
        let mut released = Vec::new();
        if list.len() > self.config.max_seeds && list.len() > self.seeds.len() {
            let excess = list.len() - self.config.max_seeds;
            let posted: HashSet<usize> = placed.iter().copied().collect();
            released = (self.seeds.iter().enumerate())
                .filter(|(at, s)| s.item.auto && !posted.contains(at))
                .map(|(_, s)| s.item.channel.clone())
                .take(excess)
                .collect();
            if released.len() < excess {
                return Err(MasterError::TooManySeeds {
                    would: list.len() - released.len(),
                    max: self.config.max_seeds,
                });
            }
            list.retain(|r| !released.contains(&r.item.channel));
        }
        // Saved first: what the API acknowledges is what a restart brings back.
        self.save(&list)?;
        for (item, at) in items.into_iter().zip(placed) {
            match self.seeds.get_mut(at) {
                // Running workers keep their options until they restart.
                Some(seed) => {
                    seed.item = SeedItem { channel: seed.item.channel.clone(), ..item };
                    seed.newer.clear();
                }
                None => {
                    tracing::info!(channel = %item.channel, label = %item.label, "seed added");
                    self.seeds.push(Seed::new(item.into()));
                }
            }
        }
        for channel in released {
            tracing::info!(%channel, "automatic seed given back to make room for a posted one");
            self.remove_seed(&channel);
        }
        Ok(self.seeds.len())
    }

    /// Fleet mode: runs exactly `records` (what the fleet's placement gives this node).
    /// Seeds kept keep their state and workers (their options change at the next
    /// restart, as a re-seed's do); those not among them stop. Saved locally too, so a
    /// restart while etcd is away seeds what this node had.
    fn assign(&mut self, records: Vec<SeedRecord>) {
        self.awaiting_fleet = None;
        let keyed: BTreeMap<String, SeedRecord> =
            records.into_iter().map(|r| (seeds::channel_key(&r.item.channel), r)).collect();
        let mut gone = Vec::new();
        let mut kept = HashSet::new();
        for seed in &mut self.seeds {
            let key = seeds::channel_key(&seed.item.channel);
            match keyed.get(&key) {
                Some(record) => {
                    seed.item =
                        SeedItem { channel: seed.item.channel.clone(), ..record.item.clone() };
                    seed.newer = record.newer.clone();
                    kept.insert(key);
                }
                None => gone.push(seed.item.channel.clone()),
            }
        }
        for channel in gone {
            self.remove_seed(&channel);
        }
        for (key, record) in keyed {
            if !kept.contains(&key) {
                tracing::info!(channel = %record.item.channel, "seed placed on this node");
                self.seeds.push(Seed::new(record));
            }
        }
        let _ = self.persist();
    }

    /// The seed a channel id names, in whatever spelling.
    fn find_seed(&self, channel: &str) -> Option<&Seed> {
        self.seeds.iter().find(|s| seeds::same_channel(&s.item.channel, channel))
    }

    fn stop_seed(&mut self, id: &str) -> Result<String, MasterError> {
        let pid = id.parse::<u32>().ok();
        let by_pid = pid.and_then(|pid| self.workers.get(&pid)).map(|w| w.channel.clone());
        let channel =
            match (by_pid.or_else(|| self.find_seed(id).map(|s| s.item.channel.clone())), pid) {
                (Some(channel), _) => channel,
                (None, Some(pid)) => return Err(MasterError::NoSuchWorker(pid)),
                (None, None) => return Err(MasterError::NoSuchChannel(id.to_string())),
            };
        let list: Vec<SeedRecord> =
            self.seeds.iter().filter(|s| s.item.channel != channel).map(Seed::record).collect();
        self.save(&list)?;
        self.remove_seed(&channel);
        Ok(channel)
    }

    fn remove_seed(&mut self, channel: &str) {
        // Measured again before it may be seeded again automatically.
        self.autoseed.forget(&seeds::channel_key(channel));
        self.seeds.retain(|s| s.item.channel != channel);
        let pids: Vec<u32> = self
            .workers
            .iter()
            .filter(|(_, w)| w.channel == channel)
            .map(|(pid, _)| *pid)
            .collect();
        for pid in pids {
            self.stop_worker(pid, Stopping::Retire);
        }
        tracing::info!(channel, "seed removed");
    }

    fn persist(&mut self) -> Result<(), MasterError> {
        let records: Vec<SeedRecord> = self.seeds.iter().map(Seed::record).collect();
        self.save(&records)
    }

    /// Writes `records` as the seed list; on failure the list is marked for another try
    /// on every tick, so an eviction or a stop never comes undone by a restart.
    fn save(&mut self, records: &[SeedRecord]) -> Result<(), MasterError> {
        self.store.save(records).map(|()| self.unsaved = false).map_err(|e| {
            tracing::error!(error = %e, "could not save the seed list");
            self.unsaved = true;
            MasterError::Persist(e.to_string())
        })
    }

    /// Each worker's memory budget for segments: `memoryBudget`, else half this
    /// machine's memory shared by as many workers as it takes, between 64 MiB and 1 GiB.
    fn memory_budget(&self) -> u64 {
        self.config.memory_budget.unwrap_or_else(|| {
            let total = procfs::total_memory_bytes().unwrap_or(4 << 30);
            (total / 2 / self.capacity().max(1) as u64).clamp(64 << 20, 1 << 30)
        })
    }

    fn capacity(&self) -> usize {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let memory = procfs::total_memory_bytes().unwrap_or(u64::MAX);
        scheduler::capacity(
            cores,
            self.config.max_workers,
            memory,
            MEMORY_PER_WORKER,
            self.ping_bandwidth.or(self.config.bandwidth_mbps),
            MBPS_PER_WORKER,
            self.ping_workers,
        )
    }

    fn on_tick(&mut self) {
        let now = Instant::now();
        if self.unsaved {
            let _ = self.persist();
        }
        self.cpu.sample(now, procfs::cpu_seconds(std::process::id()));
        let mut overdue = Vec::new();
        for (pid, worker) in &mut self.workers {
            worker.cpu.sample(now, procfs::cpu_seconds(*pid));
            worker.memory = procfs::rss_bytes(*pid).unwrap_or(worker.memory);
            if let Some((_, since)) = worker.stopping
                && now.duration_since(since) > STOP_GRACE
                && let Some(kill) = worker.kill.take()
            {
                overdue.push(*pid);
                let _ = kill.send(());
            }
        }
        for pid in overdue {
            tracing::warn!(pid, "worker did not stop in time; killed");
        }
        let readings: Vec<WorkerReading> = self
            .workers
            .iter()
            .map(|(pid, w)| WorkerReading {
                pid: *pid,
                reported_at: w.reported_at,
                uploaded: w.report.counters.uploaded,
                peers: w.report.viewers,
            })
            .collect();
        self.history.record(now, now_ms(), &readings);
        self.auto_seed(now);
        self.schedule();
    }

    /// Time since the master started: the clock automatic seeding counts in.
    fn since_start(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.started)
    }

    /// Brings workers in line with the seeds and the capacity.
    fn schedule(&mut self) {
        let now = Instant::now();
        if let Some(until) = self.awaiting_fleet {
            if now < until {
                return;
            }
            tracing::warn!(
                seeds = self.seeds.len(),
                "fleet mode: no word from etcd since starting; seeding what this node had"
            );
            self.awaiting_fleet = None;
        }
        let epoch = self.started;
        let since = |t: Instant| t.saturating_duration_since(epoch);
        let replacing = |channel: &str| {
            self.workers
                .values()
                .any(|w| w.channel == channel && matches!(w.stopping, Some((Stopping::Replace, _))))
        };
        let running = |channel: &str| {
            self.workers.values().any(|w| w.channel == channel && w.stopping.is_none())
        };
        let seeds: Vec<SeedView> = self
            .seeds
            .iter()
            .map(|s| SeedView {
                channel: s.item.channel.clone(),
                priority: s.item.scheduling_priority(),
                keep_alive: s.item.keep_alive,
                max_connections: s.item.max_connections,
                // A replacement starts once the old worker has exited: never two
                // workers of one seed in a swarm by accident.
                restarting: !running(&s.item.channel)
                    && (s.retry_at.is_some_and(|at| at > now) || replacing(&s.item.channel)),
            })
            .collect();
        let leaving = self
            .workers
            .values()
            .filter(|w| matches!(w.stopping, Some((Stopping::Retire, _))))
            .count();
        let workers: Vec<WorkerView> = self
            .workers
            .iter()
            .filter(|(_, w)| w.stopping.is_none())
            .map(|(pid, w)| WorkerView {
                pid: *pid,
                channel: w.channel.clone(),
                viewers: w.report.viewers,
                idle_since: w.idle_since.map(since),
            })
            .collect();
        let capacity = self.capacity();
        let rules = &self.config.rules;
        for action in scheduler::plan(since(now), &seeds, &workers, leaving, capacity, rules) {
            match action {
                Action::Spawn { channel } => self.spawn_worker(&channel),
                Action::Stop { pid, reason } => {
                    tracing::info!(pid, ?reason, "stopping worker");
                    self.stop_worker(pid, Stopping::Retire);
                }
                Action::Unseed { channel, reason } => {
                    tracing::info!(%channel, ?reason, "evicting seed");
                    self.remove_seed(&channel);
                    let _ = self.persist();
                }
            }
        }
    }

    /// What a worker for `item` is started with: its protocol and start message; why
    /// not, for a seed this master cannot run. A scout (`scout`) only measures.
    fn worker_start(
        &self,
        item: &SeedItem,
        scout: bool,
    ) -> Result<(Protocol, WorkerStart), String> {
        let (protocol, policy, mut worker_seed) = self.seed_policy().worker_seed(item)?;
        worker_seed.scout = scout;
        let start = WorkerStart {
            seed: worker_seed,
            policy: policy.precompiled.clone(),
            limits: self.config.policy_limits.clone(),
            udp_bind: match self.config.public_ip {
                Some(_) => std::net::SocketAddr::from(([0, 0, 0, 0], 0)),
                None => std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
            },
            udp_ports: if scout { None } else { self.config.udp_ports },
            disk_cache: (!item.no_use_disk_cache && !scout).then(|| DiskCacheConfig {
                dir: self.config.cache_dir.clone(),
                max_bytes: self.config.cache_bytes,
            }),
            advertise_ip: self.config.public_ip,
            origin_allow: self.config.origin_allow.clone(),
            memory_budget: if scout {
                candidates::SCOUT_MEMORY_BUDGET
            } else {
                self.memory_budget()
            },
            origin_timeout: self.config.origin_timeout,
            viewer_stall: self.config.viewer_stall,
        };
        Ok((protocol, start))
    }

    fn spawn_worker(&mut self, channel: &str) {
        let Some(seed) = self.seeds.iter().find(|s| s.item.channel == channel) else { return };
        let started = self.worker_start(&seed.item, false);
        let Some(seed) = self.seeds.iter_mut().find(|s| s.item.channel == channel) else { return };
        seed.retry_at = None;
        let (protocol, start) = match started {
            Ok(run) => run,
            Err(reason) => {
                tracing::error!(channel, %reason, "this seed cannot run here; it waits");
                seed.crashes += 1;
                seed.retry_at = Some(Instant::now() + restart_delay(seed.crashes));
                return;
            }
        };
        match spawn_process(&self.worker_log_format, channel, start, self.tx.clone()) {
            Ok((pid, to_worker, kill)) => {
                tracing::info!(pid, channel, "worker spawned");
                let now = Instant::now();
                self.workers.insert(
                    pid,
                    Worker {
                        channel: channel.to_string(),
                        protocol,
                        started: now,
                        to_worker,
                        kill: Some(kill),
                        policy: None,
                        report: WorkerReport::default(),
                        reported_at: None,
                        idle_since: Some(now),
                        stopping: None,
                        cpu: CpuMeter::default(),
                        memory: procfs::rss_bytes(pid).unwrap_or(0),
                        uplink: VecDeque::new(),
                    },
                );
            }
            Err(e) => {
                tracing::error!(channel, error = %e, "could not start a worker");
                seed.crashes += 1;
                seed.retry_at = Some(Instant::now() + restart_delay(seed.crashes));
            }
        }
    }

    fn stop_worker(&mut self, pid: u32, how: Stopping) {
        let Some(worker) = self.workers.get_mut(&pid) else { return };
        if worker.stopping.is_some() {
            return;
        }
        worker.stopping = Some((how, Instant::now()));
        // A full or closed channel means the worker is stuck or gone; the tick kills it
        // after the grace period.
        let _ = worker.to_worker.try_send(ToWorker::Stop);
    }

    fn on_worker_message(&mut self, pid: u32, message: FromWorker) {
        let at = self.since_start(Instant::now());
        let Some(worker) = self.workers.get_mut(&pid) else { return };
        match message {
            FromWorker::Ready { policy } => {
                tracing::info!(pid, policy = %policy, "worker ready");
                worker.policy = Some(policy);
            }
            FromWorker::Failed { reason } => {
                tracing::error!(pid, channel = %worker.channel, %reason, "worker's policy would not start");
            }
            FromWorker::Report(report) => {
                let now = Instant::now();
                if report.viewers >= self.config.rules.min_viewers {
                    worker.idle_since = None;
                } else if worker.idle_since.is_none() {
                    worker.idle_since = Some(now);
                }
                worker.uplink.push_back((now, report.counters.uploaded));
                while worker
                    .uplink
                    .front()
                    .is_some_and(|(t, _)| now.duration_since(*t) > UPLINK_WINDOW)
                {
                    worker.uplink.pop_front();
                }
                if let Some(viewers) = report.policy.swarm_size {
                    self.autoseed.measured(&seeds::channel_key(&worker.channel), viewers, at);
                }
                worker.report = *report;
                worker.reported_at = Some(now);
                if now.duration_since(worker.started) > HEALTHY_AFTER
                    && let Some(seed) =
                        self.seeds.iter_mut().find(|s| s.item.channel == worker.channel)
                {
                    seed.crashes = 0;
                }
            }
            FromWorker::Swapped { result } => match result {
                Ok(policy) => {
                    tracing::info!(pid, policy = %policy, "worker swapped its policy");
                    worker.policy = Some(policy);
                }
                Err(error) => {
                    tracing::warn!(pid, %error, "worker refused the new policy; keeps its own")
                }
            },
        }
    }

    fn on_exit(&mut self, pid: u32, code: Option<i32>) {
        let Some(worker) = self.workers.remove(&pid) else { return };
        self.retired = self.retired + worker.report.counters;
        match worker.stopping {
            Some((Stopping::Retire, _)) => {
                tracing::info!(pid, channel = %worker.channel, "worker stopped")
            }
            Some((Stopping::Replace, _)) => {
                tracing::info!(pid, channel = %worker.channel, "worker stopped for a restart");
            }
            None => {
                if let Some(seed) = self.seeds.iter_mut().find(|s| s.item.channel == worker.channel)
                {
                    seed.crashes += 1;
                    seed.restarts += 1;
                    self.worker_restarts += 1;
                    let delay = restart_delay(seed.crashes);
                    seed.retry_at = Some(Instant::now() + delay);
                    tracing::warn!(
                        pid,
                        channel = %worker.channel,
                        ?code,
                        restart_in_ms = delay.as_millis() as u64,
                        "worker died; restarting"
                    );
                }
            }
        }
        self.schedule();
    }

    fn set_policy(
        &mut self,
        policy: Arc<AdmittedPolicy>,
        target: PolicyTarget,
    ) -> Result<usize, MasterError> {
        let default = self.config.default_protocol;
        let target = match target {
            PolicyTarget::Channel(channel) => {
                let seed = self
                    .seeds
                    .iter_mut()
                    .find(|s| seeds::same_channel(&s.item.channel, &channel))
                    .ok_or(MasterError::NoSuchChannel(channel))?;
                seed.policy = Some(policy.clone());
                PolicyTarget::Channel(seed.item.channel.clone())
            }
            PolicyTarget::Protocol(protocol) => {
                let protocol = protocol.unwrap_or(default);
                if let Some(old) = self.policies.insert(protocol, policy.clone()) {
                    self.previous_policies.insert(protocol, old);
                }
                for seed in &mut self.seeds {
                    if seed.item.protocol(default).is_ok_and(|p| p == protocol) {
                        seed.policy = None;
                    }
                }
                PolicyTarget::Protocol(Some(protocol))
            }
        };
        let mut asked = 0;
        for worker in self.workers.values() {
            let targeted = match &target {
                PolicyTarget::Channel(channel) => channel == &worker.channel,
                PolicyTarget::Protocol(protocol) => Some(worker.protocol) == *protocol,
            };
            if worker.stopping.is_none() && targeted {
                let swap = ToWorker::Swap { policy: policy.precompiled.clone() };
                if worker.to_worker.try_send(swap).is_ok() {
                    asked += 1;
                }
            }
        }
        tracing::info!(policy = %policy.meta, ?target, workers = asked, "policy set");
        Ok(asked)
    }

    async fn stop_everything(&mut self) {
        self.kill_scouts();
        let pids: Vec<u32> = self.workers.keys().copied().collect();
        for pid in pids {
            self.stop_worker(pid, Stopping::Retire);
        }
        let deadline = tokio::time::Instant::now() + STOP_GRACE;
        while !self.workers.is_empty() {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(Message::Exited(pid, _))) => {
                    self.workers.remove(&pid);
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
        for (pid, worker) in &mut self.workers {
            tracing::warn!(pid, "worker did not stop in time; killed");
            if let Some(kill) = worker.kill.take() {
                let _ = kill.send(());
            }
        }
    }
}
