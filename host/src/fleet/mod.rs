//! Fleet mode: many masters share one seed list in etcd, and each channel runs on the
//! nodes that rank highest for it among the live ones (`placement.rs`).
//!
//! A node registers itself under a lease (its name, API address, capacity and what it
//! runs), renews it, reads the fleet's keys every second and hands its master the
//! seeds placed on it. The REST API writes seeds to etcd and answers once they are
//! committed; every node then sees them. A node whose lease expires (it died, or lost
//! etcd for longer than the lease) drops out of every other node's placement, and its
//! channels go to the next nodes in rank.
//!
//! When etcd cannot be reached a node keeps running what it has and refuses changes;
//! it must never stop its seeds for want of etcd. New channels are taken only once the
//! set of live nodes has held still for a moment, so nodes coming back together (etcd
//! back after an outage) do not each start everything first, and only once every node
//! that is to give a channel up says it has (a channel stops before it starts
//! elsewhere). Channels that would move between live nodes (a node joined) move a few
//! a round (`placement::step`); those of a dead node move at once.
//!
//! Automatic seeding across the fleet: the candidate list is a key in etcd, each node
//! record carries its channels' swarm sizes, and every turn each master hears the
//! candidates, the seeds and those sizes; the node first in rank for a fixed name
//! leads (its master scouts and decides), and its decisions are written here.

pub mod etcd;
pub mod placement;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

use crate::master::autoseed::Seeded;
use crate::master::config::FleetConfig;
use crate::master::seeds::{self, SeedItem, SeedRecord};
use crate::master::{FleetRound, MasterError, MasterHandle};
use etcd::{Etcd, EtcdError};
use placement::{Load, Node, Running, Want};

/// How often a node reads the fleet's keys and places channels.
const TICK: Duration = Duration::from_secs(1);
/// How long the set of live nodes must hold still before a node takes new channels.
const SETTLE: Duration = Duration::from_secs(2);
/// How long one etcd call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// What a node says of itself, under its lease.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeRecord {
    pub name: String,
    pub address: String,
    /// Channels it can seed (one worker each).
    pub capacity: usize,
    /// The channels it runs workers for now, and the viewers of each.
    #[serde(default)]
    pub channel_viewers: BTreeMap<String, u64>,
    /// Channels placed on it that another node still runs: it asks for them
    /// (`placement::step`).
    #[serde(default)]
    pub claiming: Vec<String>,
    /// The viewers in each of its channels' swarms, as its workers last said (automatic
    /// seeding's measure of a seeded channel).
    #[serde(default)]
    pub channel_swarms: BTreeMap<String, u64>,
}

/// The fleet as the last read of etcd showed it.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FleetView {
    /// This node's name.
    pub node: String,
    /// Whether the last read of etcd worked, and its error if not.
    pub etcd: String,
    pub nodes: Vec<NodeView>,
    /// Seeds in the fleet's list.
    pub seeds: usize,
    /// Seeds the fleet has no room for (they wait).
    pub waiting: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeView {
    #[serde(flatten)]
    pub record: NodeRecord,
    /// The channels it runs, and their viewers in all.
    pub running: Vec<String>,
    pub viewers: u64,
    /// Channels the placement gives it.
    pub placed: Vec<String>,
}

/// The API's side of the fleet: seed and candidate writes, and the fleet's view.
#[derive(Debug, Clone)]
pub struct FleetHandle {
    etcd: Etcd,
    prefix: String,
    max_seeds: usize,
    /// The candidate list is read from `candidatesUrl`: not the API's to change.
    candidates_from_url: bool,
    view: Arc<Mutex<FleetView>>,
}

/// The node that leads automatic seeding (scouts and decides): the one that ranks
/// first for this name among the live nodes, as every node computes alike.
const AUTOSEED_LEADER: &str = "superpeer: automatic seeding";

/// Why a fleet request could not be done.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FleetError {
    #[error("{0}; the fleet's seed list cannot change until it is back")]
    Etcd(#[from] EtcdError),
    #[error("the seed list would hold {would} seeds, more than maxSeeds ({max})")]
    TooManySeeds { would: usize, max: usize },
    #[error("no seed for channel {0:?}")]
    NoSuchChannel(String),
    #[error("the candidate list is read from candidatesUrl; change it there")]
    CandidatesFromUrl,
    #[error(transparent)]
    Master(#[from] MasterError),
}

fn seeds_prefix(prefix: &str) -> String {
    format!("{prefix}/seeds/")
}

fn nodes_prefix(prefix: &str) -> String {
    format!("{prefix}/nodes/")
}

/// A seed's key: its channel in one spelling, so every spelling of an id is one seed.
fn seed_key(prefix: &str, channel: &str) -> String {
    seed_key_of(prefix, &seeds::channel_key(channel))
}

/// The seed key of a channel key (`seeds::channel_key`).
fn seed_key_of(prefix: &str, key: &str) -> String {
    format!("{}{}", seeds_prefix(prefix), URL_SAFE_NO_PAD.encode(key))
}

/// Where the fleet's candidate list is kept (automatic seeding).
fn candidates_key(prefix: &str) -> String {
    format!("{prefix}/candidates")
}

impl FleetHandle {
    /// Adds or updates seeds, all at once; answers once etcd committed them. A re-seed
    /// replaces the options, as on one machine, and automatic seeds make room for
    /// posted ones past `maxSeeds`.
    pub async fn seed(&self, items: Vec<SeedItem>) -> Result<usize, FleetError> {
        let existing = self.etcd.list(&seeds_prefix(&self.prefix)).await?;
        let known: BTreeSet<&str> = existing.iter().map(|kv| kv.key.as_str()).collect();
        let writes: Vec<(String, Vec<u8>)> = items
            .iter()
            .map(|item| {
                let record = serde_json::to_vec(&SeedRecord::from(item.clone()))
                    .expect("a seed record serialises");
                (seed_key(&self.prefix, &item.channel), record)
            })
            .collect();
        let added: BTreeSet<&str> =
            writes.iter().map(|(key, _)| key.as_str()).filter(|key| !known.contains(key)).collect();
        let mut would = existing.len() + added.len();
        let mut released = Vec::new();
        if !added.is_empty() && would > self.max_seeds {
            let posted: BTreeSet<&str> = writes.iter().map(|(key, _)| key.as_str()).collect();
            released = (existing.iter())
                .filter(|kv| !posted.contains(kv.key.as_str()))
                .filter(|kv| {
                    serde_json::from_slice::<SeedRecord>(&kv.value).is_ok_and(|r| r.item.auto)
                })
                .map(|kv| kv.key.clone())
                .take(would - self.max_seeds)
                .collect();
            would -= released.len();
            if would > self.max_seeds {
                return Err(FleetError::TooManySeeds { would, max: self.max_seeds });
            }
        }
        self.etcd.write(&writes, &released).await?;
        Ok(would)
    }

    /// Replaces the fleet's candidate list (automatic seeding); answers once committed.
    pub async fn set_candidates(&self, items: Vec<SeedItem>) -> Result<usize, FleetError> {
        if self.candidates_from_url {
            return Err(FleetError::CandidatesFromUrl);
        }
        let records: Vec<SeedRecord> = items.into_iter().map(SeedRecord::from).collect();
        let value = serde_json::to_vec(&records).expect("seed records serialise");
        self.etcd.put(&candidates_key(&self.prefix), &value, 0).await?;
        Ok(records.len())
    }

    /// Removes one seed, named by its channel id; answers once committed.
    pub async fn stop(&self, channel: &str) -> Result<String, FleetError> {
        if !self.etcd.delete(&seed_key(&self.prefix, channel)).await? {
            return Err(FleetError::NoSuchChannel(channel.to_string()));
        }
        Ok(channel.to_string())
    }

    /// Removes every seed; how many there were.
    pub async fn stop_all(&self) -> Result<usize, FleetError> {
        Ok(self.etcd.delete_prefix(&seeds_prefix(&self.prefix)).await? as usize)
    }

    /// The fleet as this node last saw it.
    pub fn view(&self) -> FleetView {
        self.view.lock().expect("the view's lock is never poisoned").clone()
    }
}

/// A node's part in the fleet: its lease, and what it last handed its master.
#[derive(Debug)]
pub struct Fleet {
    config: FleetConfig,
    /// Where this node's REST API is reached.
    address: String,
    etcd: Etcd,
    master: MasterHandle,
    view: Arc<Mutex<FleetView>>,
    lease: Option<i64>,
    renewed_at: Option<Instant>,
    /// The live nodes at the last read, and since when they have been those.
    nodes: BTreeSet<String>,
    nodes_since: Instant,
    /// The channels handed to the master, by key.
    assigned: BTreeMap<String, SeedRecord>,
    /// Whether the master has been told anything yet (until then it runs what it saved
    /// locally).
    told: bool,
    /// The channels this node claims, said in its record.
    claiming: Vec<String>,
    max_seeds: usize,
}

impl Fleet {
    /// A node of the fleet `config` names, reached at `address`, for `master`; and the
    /// API's handle on it.
    pub fn new(
        config: FleetConfig,
        address: String,
        master: MasterHandle,
        max_seeds: usize,
        candidates_from_url: bool,
    ) -> (Fleet, FleetHandle) {
        let etcd = Etcd::new(config.endpoints.clone(), CALL_TIMEOUT);
        let view = Arc::new(Mutex::new(FleetView {
            node: config.node_name.clone(),
            etcd: "not read yet".into(),
            ..FleetView::default()
        }));
        let handle = FleetHandle {
            etcd: etcd.clone(),
            prefix: config.prefix.clone(),
            max_seeds,
            candidates_from_url,
            view: view.clone(),
        };
        let max_seeds = handle.max_seeds;
        let fleet = Fleet {
            config,
            address,
            etcd,
            master,
            view,
            lease: None,
            renewed_at: None,
            nodes: BTreeSet::new(),
            nodes_since: Instant::now(),
            assigned: BTreeMap::new(),
            told: false,
            claiming: Vec::new(),
            max_seeds,
        };
        (fleet, handle)
    }

    /// Takes part until `shutdown`, then gives the lease back so the others take this
    /// node's channels at once.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = &mut shutdown => break,
            }
            if let Err(error) = self.turn().await {
                let text = error.to_string();
                let mut view = self.view.lock().expect("the view's lock is never poisoned");
                if view.etcd != text {
                    tracing::warn!(%error, "fleet: keeping what this node runs");
                }
                view.etcd = text;
            }
        }
        if let Some(lease) = self.lease {
            let _ = self.etcd.revoke(lease).await;
        }
    }

    /// One turn: the lease renewed, this node's record written, the fleet read, the
    /// placement worked out and this node's share handed to the master.
    async fn turn(&mut self) -> Result<(), FleetError> {
        self.renew().await?;
        let stats = self.master.stats().await?;
        let mut channel_viewers: BTreeMap<String, u64> = BTreeMap::new();
        let mut channel_swarms: BTreeMap<String, u64> = BTreeMap::new();
        for worker in stats.workers.values() {
            let key = seeds::channel_key(&worker.channel_id);
            if let Some(viewers) = worker.policy_stats.swarm_size {
                channel_swarms.insert(key.clone(), viewers);
            }
            *channel_viewers.entry(key).or_default() += u64::from(worker.peers);
        }
        let me = NodeRecord {
            name: self.config.node_name.clone(),
            address: self.address.clone(),
            capacity: stats.master.capacity,
            channel_viewers,
            claiming: self.claiming.clone(),
            channel_swarms,
        };
        let lease = self.lease.expect("renewed");
        let key = format!("{}{}", nodes_prefix(&self.config.prefix), self.config.node_name);
        self.etcd
            .put(&key, &serde_json::to_vec(&me).expect("a node record serialises"), lease)
            .await?;

        // Nodes and seeds in one read.
        let (nodes_at, seeds_at) =
            (nodes_prefix(&self.config.prefix), seeds_prefix(&self.config.prefix));
        let (mut nodes, mut records) = (Vec::<NodeRecord>::new(), BTreeMap::new());
        let mut candidates = Vec::new();
        let candidates_at = candidates_key(&self.config.prefix);
        for kv in self.etcd.list(&format!("{}/", self.config.prefix)).await? {
            if kv.key == candidates_at {
                match serde_json::from_slice::<Vec<SeedRecord>>(&kv.value) {
                    Ok(list) => candidates = list.into_iter().map(|r| r.item).collect(),
                    Err(error) => {
                        tracing::warn!(%error, "fleet: a candidate list this version cannot read");
                    }
                }
            } else if kv.key.starts_with(&nodes_at) {
                nodes.extend(serde_json::from_slice(&kv.value).ok());
            } else if kv.key.starts_with(&seeds_at) {
                match serde_json::from_slice::<SeedRecord>(&kv.value) {
                    Ok(record) => {
                        records.insert(seeds::channel_key(&record.item.channel), record);
                    }
                    Err(error) => {
                        tracing::warn!(key = kv.key, %error, "fleet: a seed this version cannot read");
                    }
                }
            }
        }

        let live: BTreeSet<String> = nodes.iter().map(|n| n.name.clone()).collect();
        if live != self.nodes {
            self.nodes = live;
            self.nodes_since = Instant::now();
        }
        let fleet: Vec<Node> =
            nodes.iter().map(|n| Node { name: n.name.clone(), capacity: n.capacity }).collect();
        let wants: Vec<Want> = records
            .iter()
            .map(|(key, record)| {
                let on: Vec<&NodeRecord> =
                    nodes.iter().filter(|n| n.channel_viewers.contains_key(key)).collect();
                let load = Load {
                    viewers: on.iter().map(|n| n.channel_viewers[key] as usize).sum(),
                    nodes: on.len(),
                };
                Want {
                    channel: key.clone(),
                    replicas: placement::replicas(
                        record.item.replicas as usize,
                        record.item.max_connections as usize,
                        load,
                        seeds::MAX_REPLICAS as usize,
                    ),
                    priority: record.item.scheduling_priority(),
                }
            })
            .collect();
        let target = placement::place(&fleet, &wants);
        let me = self.config.node_name.clone();
        let (mut running, mut claims) = (Running::new(), Running::new());
        for node in nodes.iter().filter(|n| n.name != me) {
            for channel in node.channel_viewers.keys() {
                running.entry(channel.clone()).or_default().push(node.name.clone());
            }
            for channel in &node.claiming {
                claims.entry(channel.clone()).or_default().push(node.name.clone());
            }
        }
        // This node's own part is what it decided, not what its record said a moment ago.
        for channel in self.assigned.keys() {
            running.entry(channel.clone()).or_default().push(me.clone());
        }
        let settled = self.nodes_since.elapsed() >= SETTLE;
        let budget = placement::moves_per_round(running.len());
        let step = placement::step(&me, &target, &running, &claims, budget, settled);
        let mine: BTreeMap<String, SeedRecord> = records
            .iter()
            .filter(|(key, _)| step.run.contains(*key))
            .map(|(key, record)| (key.clone(), record.clone()))
            .collect();
        self.claiming = step.claiming.into_iter().collect();
        if !self.told || mine != self.assigned {
            self.master.assign(mine.values().cloned().collect()).await?;
            self.assigned = mine;
            self.told = true;
        }

        self.auto_seed(candidates, &fleet, &nodes, &records).await?;

        let mut view = self.view.lock().expect("the view's lock is never poisoned");
        view.etcd = "ok".into();
        view.seeds = records.len();
        view.waiting = records.keys().filter(|key| !target.contains_key(*key)).cloned().collect();
        view.nodes = nodes
            .into_iter()
            .map(|record| {
                let placed = target
                    .iter()
                    .filter(|(_, nodes)| nodes.contains(&record.name))
                    .map(|(channel, _)| channel.clone())
                    .collect();
                let running = record.channel_viewers.keys().cloned().collect();
                let viewers = record.channel_viewers.values().sum();
                NodeView { record, running, viewers, placed }
            })
            .collect();
        Ok(())
    }

    /// Automatic seeding's turn: every node's master hears the fleet's candidates,
    /// seeds and swarm sizes; the leader's also scouts and decides, and the seeds it
    /// starts or gives back are written here, all at once.
    async fn auto_seed(
        &mut self,
        candidates: Vec<SeedItem>,
        fleet: &[Node],
        nodes: &[NodeRecord],
        records: &BTreeMap<String, SeedRecord>,
    ) -> Result<(), FleetError> {
        let leader = placement::rank(fleet, AUTOSEED_LEADER).first().map(|n| n.to_string());
        let Some(leader) = leader else { return Ok(()) };
        let mut measured: BTreeMap<String, u64> = BTreeMap::new();
        for (key, viewers) in nodes.iter().flat_map(|n| &n.channel_swarms) {
            let most = measured.entry(key.clone()).or_default();
            *most = (*most).max(*viewers);
        }
        let capacity: usize = fleet.iter().map(|n| n.capacity).sum();
        let asked: usize = records.values().map(|r| r.item.replicas as usize).sum();
        let round = FleetRound {
            candidates,
            seeded: records.iter().map(|(key, r)| (key.clone(), Seeded::of(&r.item))).collect(),
            measured,
            room: capacity.saturating_sub(asked).min(self.max_seeds.saturating_sub(records.len())),
            lead: leader == self.config.node_name,
            leader,
        };
        let decision = self.master.fleet_auto_seed(round).await?;
        if decision.seed.is_empty() && decision.release.is_empty() {
            return Ok(());
        }
        let prefix = &self.config.prefix;
        let puts: Vec<(String, Vec<u8>)> = (decision.seed.iter())
            .map(|item| {
                tracing::info!(channel = %item.channel, "fleet: automatic seed: its swarms are busy");
                let record = serde_json::to_vec(&SeedRecord::from(item.clone()))
                    .expect("a seed record serialises");
                (seed_key(prefix, &item.channel), record)
            })
            .collect();
        let deletes: Vec<String> = (decision.release.iter())
            .map(|key| {
                tracing::info!(channel = %key, "fleet: automatic seed given back: its swarms went cold");
                seed_key_of(prefix, key)
            })
            .collect();
        self.etcd.write(&puts, &deletes).await?;
        Ok(())
    }

    /// Keeps this node's lease: a new one if it has none or it expired, renewed a few
    /// times per lease period.
    async fn renew(&mut self) -> Result<(), FleetError> {
        let period = Duration::from_secs(self.config.lease_seconds);
        if let (Some(lease), Some(at)) = (self.lease, self.renewed_at) {
            if at.elapsed() < period / 3 {
                return Ok(());
            }
            if self.etcd.keep_alive(lease).await? {
                self.renewed_at = Some(Instant::now());
                return Ok(());
            }
            tracing::warn!("fleet: this node's lease expired; joining again");
        }
        self.lease = Some(self.etcd.grant(self.config.lease_seconds).await?);
        self.renewed_at = Some(Instant::now());
        Ok(())
    }
}
