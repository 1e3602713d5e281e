//! What the master shows: the answers of `/stats`, `/ping`, `/policy` and `/history`,
//! and how they are made from the master's state.
//!
//! Read-only: building a view never changes the master's state, and every figure in a
//! view comes from a worker's report or the master's own measurements (so `/stats` and
//! `/metrics`, which renders the same [`StatsView`], never disagree).

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

use super::seeds::SeedItem;
use super::{Master, history, procfs, seeds};
use crate::counters::Counters;
use crate::policy::wire::SeedConfig;
use crate::policy::{AdmittedPolicy, PolicyLimits, PolicyMeta};
use crate::protocol::{Protocol, TrackerZones};

#[derive(Debug, Clone, Serialize)]
pub struct PingView {
    /// Workers running now.
    pub workers: usize,
    /// Workers this machine takes, given cores, memory and the operator's limits.
    pub capacity: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct PolicyView {
    /// The default protocol's policy.
    pub policy: PolicyIdentity,
    pub previous: Option<PolicyIdentity>,
    /// Each protocol's policy, and the one it replaced.
    pub protocols: BTreeMap<Protocol, ProtocolPolicy>,
    /// Channels that run a policy of their own.
    pub channels: BTreeMap<String, PolicyIdentity>,
    pub limits: PolicyLimits,
}

/// What a seed runs: the policy (its channel's own, when a seed of that channel has
/// one, else its protocol's) and the seed its worker is told, trackers included. The one
/// place both a posted seed's check and a worker's start get them from.
#[derive(Debug, Clone)]
pub struct SeedPolicy {
    pub policies: BTreeMap<Protocol, Arc<AdmittedPolicy>>,
    pub channels: Vec<(String, Arc<AdmittedPolicy>)>,
    pub default_trackers: Vec<String>,
    pub default_protocol: Protocol,
    pub tracker_zones: TrackerZones,
}

impl SeedPolicy {
    /// The protocol of a worker seeding `item`, the policy it runs and the seed it is
    /// told; why not, for a seed this master cannot run (a protocol or tracker zone it
    /// does not know).
    pub fn worker_seed(
        &self,
        item: &SeedItem,
    ) -> Result<(Protocol, Arc<AdmittedPolicy>, SeedConfig), String> {
        let protocol = item.protocol(self.default_protocol)?;
        let own = self.channels.iter().find(|(c, _)| seeds::same_channel(c, &item.channel));
        let policy = match own {
            Some((_, policy)) => policy.clone(),
            None => self.policies.get(&protocol).cloned().ok_or("no policy for the protocol")?,
        };
        let signals = item.trackers(&self.default_trackers);
        let trackers = protocol.trackers(signals, &item.tracker_zone, &self.tracker_zones)?;
        Ok((protocol, policy, item.worker_seed(trackers)))
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ProtocolPolicy {
    pub policy: PolicyIdentity,
    pub previous: Option<PolicyIdentity>,
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
    /// The default protocol's policy.
    pub policy: PolicyIdentity,
    /// Each protocol's policy.
    pub policies: BTreeMap<Protocol, PolicyIdentity>,
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
    /// Times this seed's worker died and was restarted.
    pub restarts: u32,
    /// The protocol its viewers speak.
    pub protocol: Protocol,
    pub policy: Option<PolicyMeta>,
    /// `starting`, `running` or `stopping`.
    pub state: &'static str,
    pub label: String,
    pub policy_stats: crate::policy::PolicyStats,
    /// `uploaded`, `downloaded`, `segmentsServed`, ...: this worker's counters.
    #[serde(flatten)]
    pub counters: Counters,
}

/// Mbit/s between the oldest and newest samples of a byte counter.
pub(super) fn rate_mbps(samples: &VecDeque<(Instant, u64)>) -> f64 {
    match (samples.front(), samples.back()) {
        (Some((t0, b0)), Some((t1, b1))) if t1 > t0 => {
            (b1.saturating_sub(*b0) as f64 * 8.0) / t1.duration_since(*t0).as_secs_f64() / 1e6
        }
        _ => 0.0,
    }
}

impl Master {
    pub(super) fn policy_view(&self) -> PolicyView {
        let default = self.config.default_protocol;
        let protocols: BTreeMap<Protocol, ProtocolPolicy> = self
            .policies
            .iter()
            .map(|(protocol, policy)| {
                let previous = self.previous_policies.get(protocol).map(|p| p.as_ref().into());
                (*protocol, ProtocolPolicy { policy: policy.as_ref().into(), previous })
            })
            .collect();
        PolicyView {
            policy: protocols[&default].policy.clone(),
            previous: protocols[&default].previous.clone(),
            protocols,
            channels: self
                .seeds
                .iter()
                .filter_map(|s| s.policy.as_deref().map(|p| (s.item.channel.clone(), p.into())))
                .collect(),
            limits: self.config.policy_limits.clone(),
        }
    }

    pub(super) fn history_view(&self, after: Option<u64>) -> HistoryView {
        HistoryView {
            interval_seconds: super::TICK.as_secs(),
            span_seconds: history::HISTORY_SPAN.as_secs(),
            latest: self.history.latest(),
            samples: self.history.after(after),
        }
    }

    pub(super) fn seed_policy(&self) -> SeedPolicy {
        let channels = self
            .seeds
            .iter()
            .filter_map(|s| Some((s.item.channel.clone(), s.policy.clone()?)))
            .collect();
        SeedPolicy {
            policies: self.policies.clone(),
            channels,
            default_trackers: self.config.default_trackers.clone(),
            default_protocol: self.config.default_protocol,
            tracker_zones: self.config.tracker_zones.clone(),
        }
    }

    pub(super) fn stats(&self) -> StatsView {
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
                    average_uplink: rate_mbps(&w.uplink),
                    disk_cache_size: w.report.disk_cache_size,
                    memory: w.memory,
                    peers: w.report.viewers,
                    trackers: w.report.trackers,
                    segments: w.report.segments,
                    memory_cache_size: w.report.memory_cache_size,
                    cpu: w.cpu.percent,
                    cpu_seconds: w.cpu.seconds(),
                    restarts: seed.map_or(0, |s| s.restarts),
                    protocol: w.protocol,
                    policy: w.policy.clone(),
                    state: match (w.stopping, &w.policy) {
                        (Some(_), _) => "stopping",
                        (None, None) => "starting",
                        (None, Some(_)) => "running",
                    },
                    label: item.map(|i| i.label.clone()).unwrap_or_default(),
                    policy_stats: w.report.policy.clone(),
                    counters: w.report.counters,
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
                policy: self.policies[&self.config.default_protocol].as_ref().into(),
                policies: self
                    .policies
                    .iter()
                    .map(|(p, policy)| (*p, policy.as_ref().into()))
                    .collect(),
                peers: workers.values().map(|w| u64::from(w.peers)).sum(),
                worker_restarts: self.worker_restarts,
                totals: self.retired + workers.values().map(|w| w.counters).sum(),
            },
            workers,
        }
    }
}
