//! The master: keeps the list of seeds, runs worker processes for them, restarts the
//! ones that die, measures them, and hot-swaps their policy.
//!
//! One task owns all of this state ([`Master::run`]); the HTTP layer and the workers'
//! I/O tasks talk to it through a channel. It must never block that task on a worker:
//! every worker has its own reader, writer and waiter tasks.

pub mod config;
pub mod history;
pub mod procfs;
pub mod scheduler;
pub mod seeds;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use crate::dataplane::disk::DiskCacheConfig;
use crate::ipc::{FromWorker, ToWorker, WorkerReport, WorkerStart, read_frame, write_frame};
use crate::policy::{AdmittedPolicy, PolicyLimits, PolicyMeta};
use config::MasterConfig;
use history::{Counters, History, WorkerReading};
use scheduler::{Action, SeedView, WorkerView};
use seeds::{SeedItem, SeedStore};

/// How often the master re-plans and measures.
const TICK: Duration = Duration::from_secs(1);
/// First wait before restarting a worker that died; doubles per crash up to the last.
const FIRST_RESTART_DELAY: Duration = Duration::from_millis(500);
const LAST_RESTART_DELAY: Duration = Duration::from_secs(30);
/// A worker that has run this long without dying resets its seed's crash count.
const HEALTHY_AFTER: Duration = Duration::from_secs(60);
/// How long a worker may take to stop cleanly before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// Window over which `averageUplink` is computed.
const UPLINK_WINDOW: Duration = Duration::from_secs(60);
/// Sizing: memory and upload one worker is planned for.
const MEMORY_PER_WORKER: u64 = 512 << 20;
const MBPS_PER_WORKER: u64 = 1000;

/// Why a request to the master could not be done.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MasterError {
    #[error("no worker with pid {0}")]
    NoSuchWorker(u32),
    #[error("no seed for channel {0:?}")]
    NoSuchChannel(String),
    #[error("could not save the seed list: {0}")]
    Persist(String),
    #[error("superpeer is shutting down")]
    ShuttingDown,
    #[error("the seed list would hold {would} seeds, more than maxSeeds ({max})")]
    TooManySeeds { would: usize, max: usize },
}

type Reply<T> = oneshot::Sender<T>;

enum Message {
    Seed(Vec<SeedItem>, Reply<Result<usize, MasterError>>),
    Ping {
        bandwidth_mbps: Option<u64>,
        workers: Option<usize>,
        reply: Reply<PingView>,
    },
    Stats(Reply<StatsView>),
    History(Option<u64>, Reply<HistoryView>),
    StopAll(Reply<Result<usize, MasterError>>),
    Stop(String, Reply<Result<String, MasterError>>),
    RestartAll(Reply<usize>),
    Restart(u32, Reply<Result<(), MasterError>>),
    SetPolicy(Arc<AdmittedPolicy>, Option<String>, Reply<Result<usize, MasterError>>),
    Policy(Reply<PolicyView>),
    SeedPolicy(Reply<SeedPolicy>),
    Shutdown(Reply<()>),
    FromWorker(u32, Box<FromWorker>),
    /// A worker's channel delivered something that is not a frame.
    ChannelBroken(u32, String),
    Exited(u32, Option<i32>),
}

/// The HTTP layer's handle on the master.
#[derive(Debug, Clone)]
pub struct MasterHandle {
    tx: mpsc::Sender<Message>,
}

impl MasterHandle {
    async fn ask<T>(&self, make: impl FnOnce(Reply<T>) -> Message) -> Result<T, MasterError> {
        let (reply, answer) = oneshot::channel();
        self.tx.send(make(reply)).await.map_err(|_| MasterError::ShuttingDown)?;
        answer.await.map_err(|_| MasterError::ShuttingDown)
    }

    /// Adds or updates seeds (by channel); returns how many seeds there are now.
    pub async fn seed(&self, items: Vec<SeedItem>) -> Result<usize, MasterError> {
        self.ask(|r| Message::Seed(items, r)).await?
    }
    pub async fn ping(
        &self,
        bandwidth_mbps: Option<u64>,
        workers: Option<usize>,
    ) -> Result<PingView, MasterError> {
        self.ask(|reply| Message::Ping { bandwidth_mbps, workers, reply }).await
    }
    pub async fn stats(&self) -> Result<StatsView, MasterError> {
        self.ask(Message::Stats).await
    }
    /// Uplink and peers samples after the one numbered `after` (every one kept without).
    pub async fn history(&self, after: Option<u64>) -> Result<HistoryView, MasterError> {
        self.ask(|reply| Message::History(after, reply)).await
    }

    pub async fn stop_all(&self) -> Result<usize, MasterError> {
        self.ask(Message::StopAll).await?
    }
    /// Stops a seed (all of its workers), named by one of its workers' pid or by its
    /// channel id; returns its channel.
    pub async fn stop(&self, id: String) -> Result<String, MasterError> {
        self.ask(|r| Message::Stop(id, r)).await?
    }
    pub async fn restart_all(&self) -> Result<usize, MasterError> {
        self.ask(Message::RestartAll).await
    }
    pub async fn restart(&self, pid: u32) -> Result<(), MasterError> {
        self.ask(|r| Message::Restart(pid, r)).await?
    }
    /// Makes `policy` the one workers run (of one channel, or all); running workers
    /// swap it in. Returns how many were asked to.
    pub async fn set_policy(
        &self,
        policy: Arc<AdmittedPolicy>,
        channel: Option<String>,
    ) -> Result<usize, MasterError> {
        self.ask(|r| Message::SetPolicy(policy, channel, r)).await?
    }
    pub async fn policy(&self) -> Result<PolicyView, MasterError> {
        self.ask(Message::Policy).await
    }

    /// The policy new seeds start with, for checking their settings before they are
    /// taken.
    pub async fn seed_policy(&self) -> Result<SeedPolicy, MasterError> {
        self.ask(Message::SeedPolicy).await
    }
    /// Stops every worker cleanly and ends the master task.
    pub async fn shutdown(&self) {
        let _ = self.ask(Message::Shutdown).await;
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct PingView {
    /// Workers running now.
    pub workers: usize,
    /// Workers this machine takes, given cores, memory and the operator's limits.
    pub capacity: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct PolicyView {
    pub policy: PolicyIdentity,
    pub previous: Option<PolicyIdentity>,
    /// Channels that run a policy of their own.
    pub channels: BTreeMap<String, PolicyIdentity>,
    pub limits: PolicyLimits,
}

/// What a posted seed would run: the policy (a channel's own, when a seed of that
/// channel has one, else the master's) and the trackers it gets when it names none.
#[derive(Debug, Clone)]
pub struct SeedPolicy {
    pub policy: Arc<AdmittedPolicy>,
    pub channels: Vec<(String, Arc<AdmittedPolicy>)>,
    pub default_trackers: Vec<String>,
}

impl SeedPolicy {
    /// The policy a seed of `channel` runs.
    pub fn for_channel(&self, channel: &str) -> &Arc<AdmittedPolicy> {
        self.channels
            .iter()
            .find(|(c, _)| seeds::same_channel(c, channel))
            .map_or(&self.policy, |(_, policy)| policy)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct PolicyIdentity {
    #[serde(flatten)]
    pub meta: PolicyMeta,
    pub source: String,
}

impl From<&AdmittedPolicy> for PolicyIdentity {
    fn from(p: &AdmittedPolicy) -> Self {
        PolicyIdentity { meta: p.meta.clone(), source: p.source.clone() }
    }
}

/// `GET /stats`: the original dashboard's names, plus ours.
#[derive(Debug, Clone, Serialize)]
pub struct StatsView {
    pub master: MasterStats,
    pub workers: BTreeMap<String, WorkerStats>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MasterStats {
    /// Resident memory of the master process, bytes.
    pub memory: u64,
    /// Seconds since the master started.
    pub elapsed: u64,
    /// Upload of all workers over the last minute, Mbit/s.
    pub average_uplink: f64,
    /// CPU use of the master process, percent of one core.
    pub cpu: f64,
    /// CPU time of the master process so far, seconds.
    pub cpu_seconds: f64,
    pub capacity: usize,
    pub seeds: usize,
    pub policy: PolicyIdentity,
    /// Viewers connected to all workers.
    pub peers: u64,
    /// Times a worker died and was restarted, over all seeds since the master started.
    pub worker_restarts: u64,
    /// Counters over every worker since the master started, exited ones included.
    pub totals: Counters,
}

/// `GET /history`: samples for the monitor's charts.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HistoryView {
    pub interval_seconds: u64,
    pub span_seconds: u64,
    /// The `seq` of the newest sample: lower than one a client saw means this is a
    /// restarted master, whose history starts again from 1.
    pub latest: u64,
    pub samples: Vec<history::Sample>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkerStats {
    pub channel_id: String,
    pub priority: i64,
    pub is_vod: bool,
    pub keep_alive: bool,
    /// When this seed was first seeded, ms since the Unix epoch.
    pub seed_from: u64,
    /// Bytes uploaded to viewers by this worker.
    pub uploaded: u64,
    /// Bytes fetched from the origin by this worker.
    pub downloaded: u64,
    /// Mbit/s over the last minute.
    pub average_uplink: f64,
    pub disk_cache_size: u64,
    /// Resident memory, bytes, measured from /proc.
    pub memory: u64,
    pub peers: u32,
    /// Tracker connections open.
    pub trackers: u32,
    /// Segments held in memory, and their bytes.
    pub segments: u32,
    pub memory_cache_size: u64,
    /// CPU use over the last tick, percent of one core, measured from /proc.
    pub cpu: f64,
    /// CPU time of the worker process so far, seconds, measured from /proc.
    pub cpu_seconds: f64,
    /// Segments sent to a viewer to their last byte.
    pub segments_served: u64,
    /// Origin fetches that failed after their retries.
    pub fetch_errors: u64,
    /// Times this seed's worker died and was restarted.
    pub restarts: u32,
    pub policy: Option<PolicyMeta>,
    /// `starting`, `running` or `stopping`.
    pub state: &'static str,
    pub label: String,
    pub policy_stats: crate::policy::PolicyStats,
    /// The counters above as one value, for totals and metrics.
    #[serde(skip)]
    pub counters: Counters,
}

struct Seed {
    item: SeedItem,
    seed_from_ms: u64,
    restarts: u32,
    crashes: u32,
    retry_at: Option<Instant>,
    policy: Option<Arc<AdmittedPolicy>>,
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

/// CPU percent from successive readings of a process's CPU seconds.
#[derive(Debug, Default)]
struct CpuMeter {
    last: Option<(Instant, f64)>,
    percent: f64,
}

impl CpuMeter {
    /// CPU seconds at the last reading.
    fn seconds(&self) -> f64 {
        self.last.map_or(0.0, |(_, seconds)| seconds)
    }

    fn sample(&mut self, now: Instant, cpu_seconds: Option<f64>) {
        let Some(seconds) = cpu_seconds else { return };
        if let Some((at, before)) = self.last {
            let wall = now.duration_since(at).as_secs_f64();
            if wall > 0.0 {
                self.percent = ((seconds - before) / wall * 100.0).max(0.0);
            }
        }
        self.last = Some((now, seconds));
    }
}

/// Mbit/s between the oldest and newest samples of a byte counter.
fn rate_mbps(samples: &VecDeque<(Instant, u64)>) -> f64 {
    match (samples.front(), samples.back()) {
        (Some((t0, b0)), Some((t1, b1))) if t1 > t0 => {
            (b1.saturating_sub(*b0) as f64 * 8.0) / t1.duration_since(*t0).as_secs_f64() / 1e6
        }
        _ => 0.0,
    }
}

pub struct Master {
    config: MasterConfig,
    store: SeedStore,
    policy: Arc<AdmittedPolicy>,
    previous_policy: Option<Arc<AdmittedPolicy>>,
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
        policy: AdmittedPolicy,
        worker_log_format: &str,
    ) -> Result<(Self, MasterHandle), seeds::StoreError> {
        let store = SeedStore::new(&config.data_dir);
        let data_lock = store.lock()?;
        let saved = store.load()?;
        if !saved.is_empty() {
            tracing::info!(seeds = saved.len(), file = %store.path().display(), "seeds restored");
        }
        let seeds = saved
            .into_iter()
            .map(|item| Seed {
                item,
                seed_from_ms: now_ms(),
                restarts: 0,
                crashes: 0,
                retry_at: None,
                policy: None,
            })
            .collect();
        let (tx, rx) = mpsc::channel(256);
        let handle = MasterHandle { tx: tx.clone() };
        let master = Master {
            config,
            store,
            policy: Arc::new(policy),
            previous_policy: None,
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
            _data_lock: data_lock,
        };
        Ok((master, handle))
    }

    /// Runs until [`MasterHandle::shutdown`]; stops every worker before returning.
    pub async fn run(mut self) {
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
                let _ = reply.send(HistoryView {
                    interval_seconds: TICK.as_secs(),
                    span_seconds: history::HISTORY_SPAN.as_secs(),
                    latest: self.history.latest(),
                    samples: self.history.after(after),
                });
            }
            Message::StopAll(reply) => {
                let count = self.seeds.len();
                let result = self.save(&[]).map(|()| {
                    self.seeds.clear();
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
            Message::SetPolicy(policy, channel, reply) => {
                let _ = reply.send(self.set_policy(policy, channel));
            }
            Message::Policy(reply) => {
                let _ = reply.send(self.policy_view());
            }
            Message::SeedPolicy(reply) => {
                let channels = self
                    .seeds
                    .iter()
                    .filter_map(|s| Some((s.item.channel.clone(), s.policy.clone()?)))
                    .collect();
                let _ = reply.send(SeedPolicy {
                    policy: self.policy.clone(),
                    channels,
                    default_trackers: self.config.default_trackers.clone(),
                });
            }
            Message::Shutdown(_) => unreachable!("handled by run"),
            Message::FromWorker(pid, message) => self.on_worker_message(pid, *message),
            Message::ChannelBroken(pid, error) => {
                tracing::warn!(pid, %error, "bad message from worker; killing it");
                if let Some(kill) = self.workers.get_mut(&pid).and_then(|w| w.kill.take()) {
                    let _ = kill.send(());
                }
            }
            Message::Exited(pid, code) => self.on_exit(pid, code),
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
        let mut list: Vec<SeedItem> = self.seeds.iter().map(|s| s.item.clone()).collect();
        let mut placed = Vec::with_capacity(items.len());
        for item in &items {
            let at = *known.entry(seeds::channel_key(&item.channel)).or_insert(list.len());
            match list.get_mut(at) {
                // A re-seed updates the options; the first spelling of the id stays.
                Some(existing) => {
                    *existing = SeedItem { channel: existing.channel.clone(), ..item.clone() }
                }
                None => list.push(item.clone()),
            }
            placed.push(at);
        }
        // Past the cap only by adding seeds: updating those there is always possible.
        if list.len() > self.config.max_seeds && list.len() > self.seeds.len() {
            return Err(MasterError::TooManySeeds {
                would: list.len(),
                max: self.config.max_seeds,
            });
        }
        // Saved first: what the API acknowledges is what a restart brings back.
        self.save(&list)?;
        for (item, at) in items.into_iter().zip(placed) {
            match self.seeds.get_mut(at) {
                // Running workers keep their options until they restart.
                Some(seed) => seed.item = SeedItem { channel: seed.item.channel.clone(), ..item },
                None => {
                    tracing::info!(channel = %item.channel, label = %item.label, "seed added");
                    self.seeds.push(Seed {
                        item,
                        seed_from_ms: now_ms(),
                        restarts: 0,
                        crashes: 0,
                        retry_at: None,
                        policy: None,
                    });
                }
            }
        }
        Ok(self.seeds.len())
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
        let list: Vec<SeedItem> = self
            .seeds
            .iter()
            .filter(|s| s.item.channel != channel)
            .map(|s| s.item.clone())
            .collect();
        self.save(&list)?;
        self.remove_seed(&channel);
        Ok(channel)
    }

    fn remove_seed(&mut self, channel: &str) {
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
        let items: Vec<SeedItem> = self.seeds.iter().map(|s| s.item.clone()).collect();
        self.save(&items)
    }

    /// Writes `items` as the seed list; on failure the list is marked for another try
    /// on every tick, so an eviction or a stop never comes undone by a restart.
    fn save(&mut self, items: &[SeedItem]) -> Result<(), MasterError> {
        self.store.save(items).map(|()| self.unsaved = false).map_err(|e| {
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
                uploaded: w.report.uploaded,
                peers: w.report.viewers,
            })
            .collect();
        self.history.record(now, now_ms(), &readings);
        self.schedule();
    }

    /// Brings workers in line with the seeds and the capacity.
    fn schedule(&mut self) {
        let now = Instant::now();
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
                priority: s.item.priority,
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

    fn spawn_worker(&mut self, channel: &str) {
        let memory_budget = self.memory_budget();
        let Some(seed) = self.seeds.iter_mut().find(|s| s.item.channel == channel) else { return };
        seed.retry_at = None;
        let policy = seed.policy.clone().unwrap_or_else(|| self.policy.clone());
        let start = WorkerStart {
            seed: seed.item.clone(),
            trackers: seed.item.trackers(&self.config.default_trackers),
            policy: policy.precompiled.clone(),
            limits: self.config.policy_limits.clone(),
            udp_bind: match self.config.public_ip {
                Some(_) => std::net::SocketAddr::from(([0, 0, 0, 0], 0)),
                None => std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
            },
            udp_ports: self.config.udp_ports,
            disk_cache: (!seed.item.no_use_disk_cache).then(|| DiskCacheConfig {
                dir: self.config.cache_dir.clone(),
                max_bytes: self.config.cache_bytes,
            }),
            advertise_ip: self.config.public_ip,
            origin_allow: self.config.origin_allow.clone(),
            memory_budget,
            origin_timeout: self.config.origin_timeout,
            viewer_stall: self.config.viewer_stall,
        };
        match spawn_process(&self.worker_log_format, channel, start, self.tx.clone()) {
            Ok((pid, to_worker, kill)) => {
                tracing::info!(pid, channel, "worker spawned");
                let now = Instant::now();
                self.workers.insert(
                    pid,
                    Worker {
                        channel: channel.to_string(),
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
        let Some(worker) = self.workers.get_mut(&pid) else { return };
        match message {
            FromWorker::Ready { policy } => {
                tracing::info!(pid, policy = %policy, "worker ready");
                worker.policy = Some(policy);
            }
            FromWorker::Report(report) => {
                let now = Instant::now();
                if report.viewers >= self.config.rules.min_viewers {
                    worker.idle_since = None;
                } else if worker.idle_since.is_none() {
                    worker.idle_since = Some(now);
                }
                worker.uplink.push_back((now, report.uploaded));
                while worker
                    .uplink
                    .front()
                    .is_some_and(|(t, _)| now.duration_since(*t) > UPLINK_WINDOW)
                {
                    worker.uplink.pop_front();
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
        self.retired = self.retired + Counters::of(&worker.report);
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
        channel: Option<String>,
    ) -> Result<usize, MasterError> {
        let channel = match channel {
            Some(channel) => {
                let seed = self
                    .seeds
                    .iter_mut()
                    .find(|s| seeds::same_channel(&s.item.channel, &channel))
                    .ok_or(MasterError::NoSuchChannel(channel))?;
                seed.policy = Some(policy.clone());
                Some(seed.item.channel.clone())
            }
            None => {
                let old = std::mem::replace(&mut self.policy, policy.clone());
                self.previous_policy = Some(old);
                for seed in &mut self.seeds {
                    seed.policy = None;
                }
                None
            }
        };
        let mut asked = 0;
        for worker in self.workers.values() {
            if worker.stopping.is_none() && channel.as_ref().is_none_or(|c| c == &worker.channel) {
                let swap = ToWorker::Swap { policy: policy.precompiled.clone() };
                if worker.to_worker.try_send(swap).is_ok() {
                    asked += 1;
                }
            }
        }
        tracing::info!(policy = %policy.meta, ?channel, workers = asked, "policy set");
        Ok(asked)
    }

    fn policy_view(&self) -> PolicyView {
        PolicyView {
            policy: self.policy.as_ref().into(),
            previous: self.previous_policy.as_deref().map(Into::into),
            channels: self
                .seeds
                .iter()
                .filter_map(|s| s.policy.as_deref().map(|p| (s.item.channel.clone(), p.into())))
                .collect(),
            limits: self.config.policy_limits.clone(),
        }
    }

    fn stats(&self) -> StatsView {
        let workers: BTreeMap<String, WorkerStats> = self
            .workers
            .iter()
            .map(|(pid, w)| {
                // A stopping worker's seed may be gone already; it is listed until it exits.
                let seed = self.seeds.iter().find(|s| s.item.channel == w.channel);
                let item = seed.map(|s| &s.item);
                let stats = WorkerStats {
                    channel_id: w.channel.clone(),
                    priority: item.map_or(0, |i| i.priority),
                    is_vod: item.is_some_and(|i| !i.live),
                    keep_alive: item.is_some_and(|i| i.keep_alive),
                    seed_from: seed.map_or(0, |s| s.seed_from_ms),
                    uploaded: w.report.uploaded,
                    downloaded: w.report.downloaded,
                    average_uplink: rate_mbps(&w.uplink),
                    disk_cache_size: w.report.disk_cache_size,
                    memory: w.memory,
                    peers: w.report.viewers,
                    trackers: w.report.trackers,
                    segments: w.report.segments,
                    memory_cache_size: w.report.memory_cache_size,
                    cpu: w.cpu.percent,
                    cpu_seconds: w.cpu.seconds(),
                    segments_served: w.report.segments_served,
                    fetch_errors: w.report.fetch_errors,
                    restarts: seed.map_or(0, |s| s.restarts),
                    policy: w.policy.clone(),
                    state: match (w.stopping, &w.policy) {
                        (Some(_), _) => "stopping",
                        (None, None) => "starting",
                        (None, Some(_)) => "running",
                    },
                    label: item.map(|i| i.label.clone()).unwrap_or_default(),
                    policy_stats: w.report.policy.clone(),
                    counters: Counters::of(&w.report),
                };
                (pid.to_string(), stats)
            })
            .collect();
        StatsView {
            master: MasterStats {
                memory: procfs::rss_bytes(std::process::id()).unwrap_or(0),
                elapsed: self.started.elapsed().as_secs(),
                average_uplink: workers.values().fold(0.0, |sum, w| sum + w.average_uplink),
                cpu: self.cpu.percent,
                cpu_seconds: self.cpu.seconds(),
                capacity: self.capacity(),
                seeds: self.seeds.len(),
                policy: self.policy.as_ref().into(),
                peers: workers.values().map(|w| u64::from(w.peers)).sum(),
                worker_restarts: self.worker_restarts,
                totals: self.retired + workers.values().map(|w| w.counters).sum(),
            },
            workers,
        }
    }

    async fn stop_everything(&mut self) {
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

fn restart_delay(crashes: u32) -> Duration {
    let doublings = crashes.saturating_sub(1).min(16);
    FIRST_RESTART_DELAY.saturating_mul(1 << doublings).min(LAST_RESTART_DELAY)
}

/// Starts `superpeer worker` and its I/O tasks; returns its pid, its inbox and a switch
/// that kills it.
/// The environment variables a worker inherits (in any case); no other.
const WORKER_ENV: &[&str] = &["RUST_LOG", "RUST_BACKTRACE", "SSL_CERT_FILE", "SSL_CERT_DIR", "TZ"];

fn spawn_process(
    log_format: &str,
    channel: &str,
    start: WorkerStart,
    master: mpsc::Sender<Message>,
) -> std::io::Result<(u32, mpsc::Sender<ToWorker>, oneshot::Sender<()>)> {
    // Started from the running binary itself, even after an upgrade replaced the file
    // it came from (whose path then ends in " (deleted)"): master and workers stay one
    // build. `ps` still shows the binary's path.
    let binary = std::env::current_exe()?;
    let name = binary.display().to_string().trim_end_matches(" (deleted)").to_string();
    let running = std::path::Path::new("/proc/self/exe");
    let exe = if running.exists() { running.to_path_buf() } else { binary };
    let mut command = tokio::process::Command::new(exe);
    // A worker parses what strangers send; it gets no secret of the master's (the
    // access token, cloud credentials), only what it needs to log and to fetch. No
    // proxy either: its fetches go direct, where the origin rules can check them.
    command.env_clear();
    for (key, value) in std::env::vars_os() {
        if key.to_str().is_some_and(|k| WORKER_ENV.contains(&k.to_ascii_uppercase().as_str())) {
            command.env(key, value);
        }
    }
    let mut child = command
        .arg0(name)
        // `=`: a channel id may begin with `-`.
        .args(["--log-format", log_format, "worker", &format!("--channel={channel}")])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()?;
    let pid = child.id().ok_or_else(|| std::io::Error::other("worker exited at once"))?;
    let mut stdin = child.stdin.take().ok_or_else(|| std::io::Error::other("no worker stdin"))?;
    let mut stdout =
        child.stdout.take().ok_or_else(|| std::io::Error::other("no worker stdout"))?;

    let (to_worker, mut inbox) = mpsc::channel::<ToWorker>(16);
    let _ = to_worker.try_send(ToWorker::Start(Box::new(start)));
    tokio::spawn(async move {
        while let Some(message) = inbox.recv().await {
            let last = matches!(message, ToWorker::Stop);
            // After `stop` the pipe closes too, so the worker's reader ends either way.
            if write_frame(&mut stdin, &message).await.is_err() || last {
                break;
            }
        }
    });
    let reader_master = master.clone();
    tokio::spawn(async move {
        loop {
            match read_frame::<_, FromWorker>(&mut stdout).await {
                Ok(Some(message)) => {
                    if reader_master
                        .send(Message::FromWorker(pid, Box::new(message)))
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    // A worker that garbles its channel is no use: have it ended, so it
                    // is restarted.
                    let _ = reader_master.send(Message::ChannelBroken(pid, e.to_string())).await;
                    break;
                }
            }
        }
    });
    let (kill, killed) = oneshot::channel::<()>();
    tokio::spawn(async move {
        let status = tokio::select! {
            status = child.wait() => status,
            _ = killed => {
                let _ = child.start_kill();
                child.wait().await
            }
        };
        let code = status.ok().and_then(|s| s.code());
        let _ = master.send(Message::Exited(pid, code)).await;
    });
    Ok((pid, to_worker, kill))
}
