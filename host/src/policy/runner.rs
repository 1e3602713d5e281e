//! Runs one worker's policy: feeds it events, admits its commands, contains its
//! faults, and swaps it for a new version without losing an event.
//!
//! IO-free, with time passed in: the worker's event loop calls [`PolicyRunner::handle`]
//! once per turn and wakes up by [`PolicyRunner::next_wakeup`]. It must never carry out
//! a command itself (that is the worker's job) and never let a fault escape: after a
//! fault the instance is discarded, restarted from the last snapshot with back-off,
//! and after repeated faults the previous policy version takes over. The events of the
//! call that faulted are handed to the next instance once more: a viewer's request
//! among them would otherwise never be answered.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::engine::{Clock, CompiledPolicy, PolicyEngine, PolicyInstance, PolicyMeta};
use super::error::{Fault, PolicyError};
use super::tables::Tables;
use super::wire::{self, Command, Event, SeedConfig};

/// The runner's policy stats, as the control plane reports them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PolicyStats {
    pub policy: Option<PolicyMeta>,
    /// The version a rollback would return to.
    pub previous: Option<PolicyMeta>,
    /// `running`, or `restarting` while waiting out a back-off.
    pub state: String,
    pub calls: u64,
    pub events: u64,
    pub commands: u64,
    pub commands_rejected: u64,
    /// Events lost: in two calls that faulted, or past the pending-queue limit.
    pub events_dropped: u64,
    /// Events of a call that faulted, handed to the next instance once more.
    pub events_redelivered: u64,
    pub faults: u64,
    pub faults_by_kind: std::collections::BTreeMap<String, u64>,
    pub restarts: u64,
    pub rollbacks: u64,
    pub swaps: u64,
    pub swaps_rejected: u64,
    /// How long the last hot swap held up the worker's event loop, in microseconds
    /// (loading the new version, saving the running one's state, starting the new one).
    pub last_swap_pause_us: Option<u64>,
    pub log_lines: u64,
    pub log_lines_dropped: u64,
    /// Time spent inside policy code, in microseconds.
    pub busy_us: u64,
    /// The most CPU time one `handle` call took, in microseconds, over every instance
    /// of this worker: how near the policy comes to `call_deadline`.
    pub slowest_call_us: u64,
    pub snapshot_bytes: usize,
    pub last_fault: Option<FaultReport>,
    /// The viewers in the seed's swarms as the policy last said (`swarm-size`), this
    /// worker not counted; none if it never said.
    pub swarm_size: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FaultReport {
    pub policy: String,
    pub fault: Fault,
    pub message: String,
    /// Worker time of the fault, in milliseconds.
    pub at_ms: u64,
}

/// What a successful hot swap did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SwapReport {
    pub from: PolicyMeta,
    pub to: PolicyMeta,
    /// How long the event loop was held: snapshot, instantiate and init.
    pub pause: Duration,
    pub snapshot_bytes: usize,
}

/// A policy version with the snapshot to start it from.
struct Version {
    policy: CompiledPolicy,
    /// For the previous version: its state when it was swapped out.
    snapshot: Option<Vec<u8>>,
}

/// The least time between two snapshots taken because the policy spoke to a tracker
/// (besides the periodic ones): it speaks every turn while it reaches a swarm.
const SNAPSHOT_AFTER_SPEAKING: Duration = Duration::from_millis(100);

pub struct PolicyRunner {
    engine: PolicyEngine,
    config: SeedConfig,
    current: Version,
    previous: Option<Version>,
    instance: Option<PolicyInstance>,
    tables: Tables,
    /// The current instance's last snapshot, and when it was taken.
    snapshot: Option<Vec<u8>>,
    snapshot_at: Duration,
    /// A new instance (a restart, a swap) is snapshotted after its first turn, so the ids
    /// it handed out are past the mark the instance after it starts from, even if this
    /// one faults before the next periodic snapshot.
    snapshot_soon: bool,
    /// Events waiting for an instance (during a restart back-off).
    pending: VecDeque<Event>,
    /// What the policy must hear about its refused commands; queued at the next turn,
    /// so a policy that asks again at once costs a turn, never a loop.
    to_tell: Vec<Event>,
    /// The first `again` pending events were in a call that faulted: the tables know
    /// them already, and a second fault drops them, so an event that makes the policy
    /// fault costs two faults, not a loop.
    again: usize,
    /// The instance has not had its `started` yet.
    start_due: bool,
    recent_faults: VecDeque<Duration>,
    retry_at: Option<Duration>,
    stats: PolicyStats,
    /// Guest time and log counters of instances already discarded.
    retired_busy: Duration,
    retired_slowest: Duration,
    retired_log: (u64, u64),
}

impl std::fmt::Debug for PolicyRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyRunner")
            .field("policy", self.current.policy.meta())
            .field("running", &self.instance.is_some())
            .finish_non_exhaustive()
    }
}

impl PolicyRunner {
    /// Starts a policy for a worker. Fails if the first instance cannot start: a worker
    /// with no working policy has nothing to fall back to.
    pub fn start(
        engine: PolicyEngine,
        policy: CompiledPolicy,
        config: SeedConfig,
        clock: Clock,
    ) -> Result<Self, PolicyError> {
        let tables = Tables::default();
        let instance = start_instance(&engine, &policy, &config, None, &tables, clock)
            .map_err(|fault| PolicyError::Start { policy: policy.meta().to_string(), fault })?;
        let stats = PolicyStats {
            policy: Some(policy.meta().clone()),
            state: "running".to_string(),
            ..Default::default()
        };
        Ok(PolicyRunner {
            engine,
            config,
            current: Version { policy, snapshot: None },
            previous: None,
            instance: Some(instance),
            tables,
            snapshot: None,
            snapshot_at: clock.monotonic,
            snapshot_soon: false,
            pending: VecDeque::new(),
            to_tell: Vec::new(),
            again: 0,
            start_due: true,
            recent_faults: VecDeque::new(),
            retry_at: None,
            stats,
            retired_busy: Duration::ZERO,
            retired_slowest: Duration::ZERO,
            retired_log: (0, 0),
        })
    }

    /// Starts `policy` once on a scratch instance with a neutral seed, as a worker
    /// would, and throws the instance away: the check an upload passes before it may
    /// replace anything.
    pub fn canary(engine: &PolicyEngine, policy: &CompiledPolicy) -> Result<(), PolicyError> {
        // A seed with everything a protocol's seed may need (a manifest, a tracker API,
        // a WebSocket tracker) at addresses that are never reached: a canary's commands
        // are not carried out.
        let seed = SeedConfig {
            channel: "Y2FuYXJ5".into(),
            manifest_url: Some("http://canary.invalid/master.m3u8".into()),
            trackers: vec!["http://canary.invalid/v1".into(), "ws://canary.invalid/".into()],
            live: true,
            max_connections: 80,
            label: "canary".into(),
            settings: Vec::new(),
            scout: false,
        };
        Self::start(engine.clone(), policy.clone(), seed, Clock::default()).map(drop)
    }

    /// Hands the policy everything that happened since the last turn and returns the
    /// commands it gave that passed the host's checks, in order. A large turn is split
    /// into several calls (`max_events_per_call`, `max_input_bytes`).
    pub fn handle(&mut self, clock: Clock, events: Vec<Event>) -> Vec<Command> {
        self.stats.events += events.len() as u64;
        self.pending.extend(std::mem::take(&mut self.to_tell));
        self.pending.extend(events);

        if self.instance.is_none() {
            if self.retry_at.is_some_and(|at| clock.monotonic < at) {
                self.trim_pending();
                return Vec::new();
            }
            self.restart(clock);
        }
        let mut admitted = Vec::new();
        while self.instance.is_some() && (self.start_due || !self.pending.is_empty()) {
            let (batch, again) = self.next_batch();
            admitted.extend(self.call(clock, batch, again));
        }
        if self.instance.is_some() {
            // What the policy says to trackers is who it is in their swarms (peer ids,
            // offer ids): a snapshot soon after means an instance restarted from it
            // speaks as the same peer, instead of leaving a stranger listed there.
            let spoke = admitted
                .iter()
                .any(|c| matches!(c, Command::TrackerSend(_) | Command::HttpRequest(_)));
            let gap_done = clock.monotonic >= self.snapshot_at + SNAPSHOT_AFTER_SPEAKING;
            self.snapshot_soon |= spoke && gap_done;
            self.maybe_snapshot(clock);
        } else {
            self.trim_pending();
        }
        admitted
    }

    /// Takes the next call's worth of pending events. The tables learn of them now, as
    /// the policy does: a restarted instance is told the state up to here and gets the
    /// rest as events; only the events of a call that faulted reach it a second time.
    fn next_batch(&mut self) -> (Vec<Event>, usize) {
        let limits = self.engine.limits();
        let mut batch = Vec::new();
        if std::mem::take(&mut self.start_due) {
            batch.push(Event::Started);
        }
        let mut bytes = 0;
        let mut count = 0;
        for event in &self.pending {
            let size = wire::payload_bytes(event);
            let taken = batch.len() + count;
            if taken == limits.max_events_per_call
                || (taken > 0 && bytes + size > limits.max_input_bytes)
            {
                break;
            }
            bytes += size;
            count += 1;
        }
        let again = count.min(self.again);
        self.again -= again;
        for (index, event) in self.pending.drain(..count).enumerate() {
            if index >= again {
                self.tables.observe(&event);
            }
            batch.push(event);
        }
        (batch, again)
    }

    /// One `handle` call, on `batch`, whose first `again` events (after a `started`)
    /// were in a call that faulted. A fault loses the instance; the rest of the batch
    /// goes back to the front of the queue for the next one, which gets its own
    /// `started`.
    fn call(&mut self, clock: Clock, batch: Vec<Event>, again: usize) -> Vec<Command> {
        let Some(instance) = self.instance.as_mut() else { return Vec::new() };
        self.stats.calls += 1;
        let max = self.engine.limits().max_commands_per_call;
        let result = instance.handle(clock, &batch).and_then(|commands| {
            if commands.len() > max {
                Err(Fault::TooManyCommands { count: commands.len(), max })
            } else {
                Ok(commands)
            }
        });
        match result {
            Ok(commands) => self.admit(clock, commands),
            Err(fault) => {
                let mut events = batch.into_iter().filter(|e| *e != Event::Started);
                self.stats.events_dropped += events.by_ref().take(again).count() as u64;
                let first_time: Vec<Event> = events.collect();
                self.stats.events_redelivered += first_time.len() as u64;
                self.again += first_time.len();
                for event in first_time.into_iter().rev() {
                    self.pending.push_front(event);
                }
                self.fault(clock, fault);
                Vec::new()
            }
        }
    }

    /// Replaces the running policy with `policy` at this event boundary. The new
    /// version starts from the running one's snapshot and the host's tables; if it
    /// cannot start, the running one stays, untouched.
    pub fn swap(
        &mut self,
        clock: Clock,
        policy: CompiledPolicy,
    ) -> Result<SwapReport, PolicyError> {
        let started = Instant::now();
        // Without a fresh snapshot the new version would miss what the running one
        // learned since the last periodic snapshot: refuse rather than lose it.
        if let Some(instance) = self.instance.as_mut() {
            let snapshot = instance.snapshot(clock);
            let kept = snapshot.and_then(|snapshot| self.keep_snapshot(clock, snapshot));
            if let Err(fault) = kept {
                self.stats.swaps_rejected += 1;
                self.fault(clock, fault.clone());
                return Err(PolicyError::SwapAborted(fault));
            }
        }
        let snapshot = self.snapshot.clone();
        let instance = match start_instance(
            &self.engine,
            &policy,
            &self.config,
            snapshot.as_deref(),
            &self.tables,
            clock,
        ) {
            Ok(instance) => instance,
            Err(fault) => {
                self.stats.swaps_rejected += 1;
                tracing::warn!(policy = %policy.meta(), %fault, "hot swap rejected; keeping {}", self.current.policy.meta());
                return Err(PolicyError::Start { policy: policy.meta().to_string(), fault });
            }
        };
        let from = self.current.policy.meta().clone();
        let to = policy.meta().clone();
        let old = std::mem::replace(&mut self.current, Version { policy, snapshot: None });
        self.previous = Some(Version { policy: old.policy, snapshot: snapshot.clone() });
        self.replace_instance(Some(instance));
        self.start_due = true;
        self.snapshot_soon = true;
        self.recent_faults.clear();
        self.retry_at = None;
        self.stats.swaps += 1;
        let report = SwapReport {
            from,
            to,
            pause: started.elapsed(),
            snapshot_bytes: snapshot.as_ref().map_or(0, Vec::len),
        };
        tracing::info!(from = %report.from, to = %report.to, pause_us = report.pause.as_micros() as u64, "policy swapped");
        Ok(report)
    }

    /// Records how long a whole hot swap held up the event loop, as the worker measured it.
    pub fn record_swap_pause(&mut self, pause: Duration) {
        self.stats.last_swap_pause_us = Some(pause.as_micros() as u64);
    }

    /// When the runner needs a turn even if nothing happens: the earliest policy timer
    /// or a restart after back-off.
    pub fn next_wakeup(&self) -> Option<Duration> {
        [self.retry_at, self.tables.next_timer()].into_iter().flatten().min()
    }

    /// Whether a turn now would do something even with no new events: a fresh
    /// instance's `started`, or a restart that is due.
    pub fn wants_turn(&self, now: Duration) -> bool {
        match &self.instance {
            Some(_) => self.start_due || !self.pending.is_empty() || !self.to_tell.is_empty(),
            None => self.retry_at.is_some_and(|at| at <= now),
        }
    }

    /// When a faulted instance will be restarted, if one is waiting.
    pub fn restart_at(&self) -> Option<Duration> {
        self.retry_at
    }

    /// Fires the policy timers that are due: events for the next [`PolicyRunner::handle`].
    pub fn take_due_timers(&mut self, now: Duration) -> Vec<Event> {
        self.tables.take_due_timers(now).into_iter().map(Event::TimerFired).collect()
    }

    pub fn tables(&self) -> &Tables {
        &self.tables
    }

    pub fn policy(&self) -> &PolicyMeta {
        self.current.policy.meta()
    }

    pub fn stats(&self) -> PolicyStats {
        let mut stats = self.stats.clone();
        stats.policy = Some(self.current.policy.meta().clone());
        stats.previous = self.previous.as_ref().map(|v| v.policy.meta().clone());
        stats.state = if self.instance.is_some() { "running" } else { "restarting" }.to_string();
        let (written, dropped) = self.instance.as_ref().map_or((0, 0), |i| i.log_counts());
        stats.log_lines = self.retired_log.0 + written;
        stats.log_lines_dropped = self.retired_log.1 + dropped;
        let busy =
            self.retired_busy + self.instance.as_ref().map_or(Duration::ZERO, PolicyInstance::busy);
        stats.busy_us = busy.as_micros() as u64;
        let slowest = self
            .instance
            .as_ref()
            .map_or(Duration::ZERO, PolicyInstance::slowest_handle)
            .max(self.retired_slowest);
        stats.slowest_call_us = slowest.as_micros() as u64;
        stats.snapshot_bytes = self.snapshot.as_ref().map_or(0, Vec::len);
        stats
    }

    fn admit(&mut self, clock: Clock, commands: Vec<Command>) -> Vec<Command> {
        let limits = self.engine.limits();
        let max_peers = self.config.max_connections as usize;
        let scout = self.config.scout;
        let admitted = self.tables.admit_all(clock.monotonic, commands, limits, max_peers, scout);
        for rejection in &admitted.refused {
            tracing::debug!(policy = %self.current.policy.meta(), %rejection, "command rejected");
        }
        self.stats.commands_rejected += admitted.refused.len() as u64;
        self.stats.commands += admitted.commands.len() as u64;
        self.to_tell.extend(admitted.to_tell);
        let mut commands = admitted.commands;
        commands.retain(|command| match command {
            Command::SwarmSize(size) => {
                self.stats.swarm_size = Some(*size);
                false
            }
            _ => true,
        });
        commands
    }

    fn maybe_snapshot(&mut self, clock: Clock) {
        let due = self.snapshot_at + self.engine.limits().snapshot_interval;
        if clock.monotonic < due && !std::mem::take(&mut self.snapshot_soon) {
            return;
        }
        let Some(instance) = self.instance.as_mut() else {
            return;
        };
        let snapshot = instance.snapshot(clock);
        if let Err(fault) = snapshot.and_then(|snapshot| self.keep_snapshot(clock, snapshot)) {
            self.fault(clock, fault);
        }
    }

    fn keep_snapshot(&mut self, clock: Clock, snapshot: Vec<u8>) -> Result<(), Fault> {
        let max = self.engine.limits().max_snapshot_bytes;
        if snapshot.len() > max {
            return Err(Fault::Trap(format!(
                "snapshot of {} bytes is over the {max}-byte limit",
                snapshot.len()
            )));
        }
        self.snapshot = Some(snapshot);
        self.snapshot_at = clock.monotonic;
        Ok(())
    }

    /// Discards the faulted instance and decides what runs next.
    fn fault(&mut self, clock: Clock, fault: Fault) {
        let now = clock.monotonic;
        self.stats.faults += 1;
        *self.stats.faults_by_kind.entry(fault.kind().to_string()).or_default() += 1;
        let policy = self.current.policy.meta().to_string();
        tracing::warn!(policy, %fault, "policy fault; instance discarded");
        // A full host is not the policy's fault: retry, but never roll back for it.
        let counts = !matches!(fault, Fault::Capacity(_));
        self.stats.last_fault = Some(FaultReport {
            policy,
            message: fault.to_string(),
            fault,
            at_ms: now.as_millis() as u64,
        });
        self.replace_instance(None);

        let limits = self.engine.limits();
        while self
            .recent_faults
            .front()
            .is_some_and(|t| now.saturating_sub(*t) > limits.rollback_window)
        {
            self.recent_faults.pop_front();
        }
        if counts {
            self.recent_faults.push_back(now);
        }
        if self.recent_faults.len() >= limits.rollback_after_faults
            && let Some(previous) = self.previous.take()
        {
            self.stats.rollbacks += 1;
            tracing::error!(
                from = %self.current.policy.meta(),
                to = %previous.policy.meta(),
                faults = self.recent_faults.len(),
                "policy keeps faulting; rolling back"
            );
            self.current = previous;
            self.snapshot = self.current.snapshot.take();
            self.recent_faults.clear();
            // The previous version worked: try it at once.
            self.retry_at = Some(now);
            return;
        }
        // Back-off doubles with each fault still inside the window, so it only relaxes
        // once the policy has stayed healthy for a whole window.
        let doublings = self.recent_faults.len().saturating_sub(1).min(20) as u32;
        let backoff = limits.restart_backoff.saturating_mul(1 << doublings);
        self.retry_at = Some(now + backoff.min(limits.max_restart_backoff));
    }

    fn restart(&mut self, clock: Clock) {
        match start_instance(
            &self.engine,
            &self.current.policy,
            &self.config,
            self.snapshot.as_deref(),
            &self.tables,
            clock,
        ) {
            Ok(instance) => {
                tracing::info!(policy = %self.current.policy.meta(), "policy instance restarted");
                self.stats.restarts += 1;
                self.replace_instance(Some(instance));
                self.start_due = true;
                self.retry_at = None;
                self.snapshot_at = clock.monotonic;
                self.snapshot_soon = true;
            }
            Err(fault) => self.fault(clock, fault),
        }
    }

    fn replace_instance(&mut self, instance: Option<PolicyInstance>) {
        if let Some(old) = std::mem::replace(&mut self.instance, instance) {
            self.retired_busy += old.busy();
            self.retired_slowest = self.retired_slowest.max(old.slowest_handle());
            let (written, dropped) = old.log_counts();
            self.retired_log.0 += written;
            self.retired_log.1 += dropped;
        }
    }

    fn trim_pending(&mut self) {
        let max = self.engine.limits().max_pending_events;
        if self.pending.len() > max {
            let excess = self.pending.len() - max;
            // Dropped events still happened: the tables keep the facts they carry.
            let again = excess.min(self.again);
            self.again -= again;
            for event in self.pending.drain(..excess).skip(again) {
                self.tables.observe(&event);
            }
            self.stats.events_dropped += excess as u64;
        }
    }
}

fn start_instance(
    engine: &PolicyEngine,
    policy: &CompiledPolicy,
    config: &SeedConfig,
    snapshot: Option<&[u8]>,
    tables: &Tables,
    clock: Clock,
) -> Result<PolicyInstance, Fault> {
    let mut instance = engine.instantiate(policy, clock)?;
    instance.init(clock, config, snapshot, &tables.state(clock.monotonic))?;
    Ok(instance)
}
