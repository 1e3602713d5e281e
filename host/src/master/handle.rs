//! The master task's mailbox: the messages it takes, and [`MasterHandle`], the HTTP
//! layer's way to ask it things and wait for the answer.
//!
//! Owns no state; every answer comes from the master task. It must never hold the
//! master's state itself, nor answer for it.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::autoseed::Decision;
use super::candidates::{CandidatesView, FleetRound};
use super::seeds::{SeedItem, SeedRecord};
use super::views::{HistoryView, PingView, PolicyView, SeedPolicy, StatsView};
use crate::ipc::FromWorker;
use crate::policy::AdmittedPolicy;
use crate::protocol::Protocol;

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
    #[error("the candidate list is read from candidatesUrl; change it there")]
    CandidatesFromUrl,
}

pub(super) type Reply<T> = oneshot::Sender<T>;

/// What the master task is asked or told, by the HTTP layer and by its workers' tasks.
pub(super) enum Message {
    Seed(Vec<SeedItem>, Reply<Result<usize, MasterError>>),
    Assign(Vec<SeedRecord>, Reply<()>),
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
    SetPolicy(Arc<AdmittedPolicy>, PolicyTarget, Reply<Result<usize, MasterError>>),
    Policy(Reply<PolicyView>),
    SeedPolicy(Reply<SeedPolicy>),
    SetCandidates(Vec<SeedItem>, Reply<Result<usize, MasterError>>),
    Candidates(Reply<CandidatesView>),
    /// A read of `candidatesUrl` finished.
    CandidatesRead(Result<Vec<SeedItem>, String>),
    FleetAutoSeed(Box<FleetRound>, Reply<Decision>),
    Shutdown(Reply<()>),
    FromWorker(u32, Box<FromWorker>),
    /// A worker's channel delivered something that is not a frame.
    ChannelBroken(u32, String),
    Exited(u32, Option<i32>),
}

/// Whose workers a new policy replaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyTarget {
    /// One channel's, which keeps it until its seed goes.
    Channel(String),
    /// Every seed's of a protocol (the default protocol's when `None`), channels with
    /// a policy of their own included.
    Protocol(Option<Protocol>),
}

/// The HTTP layer's handle on the master.
#[derive(Debug, Clone)]
pub struct MasterHandle {
    pub(super) tx: mpsc::Sender<Message>,
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
    /// Fleet mode: the seeds this node runs now, all of them (the fleet's placement
    /// decides); seeds not among them stop.
    pub async fn assign(&self, records: Vec<SeedRecord>) -> Result<(), MasterError> {
        self.ask(|r| Message::Assign(records, r)).await
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
        target: PolicyTarget,
    ) -> Result<usize, MasterError> {
        self.ask(|r| Message::SetPolicy(policy, target, r)).await?
    }
    pub async fn policy(&self) -> Result<PolicyView, MasterError> {
        self.ask(Message::Policy).await
    }

    /// The policy new seeds start with, for checking their settings before they are
    /// taken.
    pub async fn seed_policy(&self) -> Result<SeedPolicy, MasterError> {
        self.ask(Message::SeedPolicy).await
    }
    /// Replaces the candidate list of automatic seeding; how many there are.
    pub async fn set_candidates(&self, items: Vec<SeedItem>) -> Result<usize, MasterError> {
        self.ask(|r| Message::SetCandidates(items, r)).await?
    }
    pub async fn candidates(&self) -> Result<CandidatesView, MasterError> {
        self.ask(Message::Candidates).await
    }
    /// Fleet mode: this turn's automatic seeding; what to write to the fleet's list
    /// (nothing unless this node leads).
    pub async fn fleet_auto_seed(&self, round: FleetRound) -> Result<Decision, MasterError> {
        self.ask(|r| Message::FleetAutoSeed(Box::new(round), r)).await
    }
    /// Stops every worker cleanly and ends the master task.
    pub async fn shutdown(&self) {
        let _ = self.ask(Message::Shutdown).await;
    }
}
