//! Which channels get workers: capacity, priority, scale-up and idle eviction.
//!
//! Pure decisions with time passed in; the master carries out the [`Action`]s. It must
//! never act itself, and never displace a seed for one of the same or lower priority.

use std::time::Duration;

/// How the master sizes and trims its workers. Validated with the master's config.
#[derive(Debug, Clone, PartialEq)]
pub struct Rules {
    /// Fewer viewers than this makes a worker idle.
    pub min_viewers: u32,
    /// How long a worker may stay idle before it is evicted (`keepAlive` seeds keep
    /// their first worker regardless).
    pub idle_grace: Duration,
    /// A channel gets another worker when all its workers are at least this full
    /// (viewers / maxConnections).
    pub scale_up_at: f64,
    /// Most workers one channel may have.
    pub max_workers_per_channel: usize,
}

impl Default for Rules {
    fn default() -> Self {
        Rules {
            min_viewers: 1,
            idle_grace: Duration::from_secs(600),
            scale_up_at: 0.9,
            max_workers_per_channel: 8,
        }
    }
}

/// A seed as the scheduler sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct SeedView {
    pub channel: String,
    pub priority: i64,
    pub keep_alive: bool,
    pub max_connections: u32,
    /// A worker of this seed is being replaced (crashed and waiting out its back-off,
    /// or restarting on request): no new one yet, and it still holds its place.
    pub restarting: bool,
}

/// A running worker as the scheduler sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerView {
    pub pid: u32,
    pub channel: String,
    pub viewers: u32,
    /// Since when it has had fewer than `min_viewers` (its start, if never more).
    pub idle_since: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Start a worker for this channel.
    Spawn { channel: String },
    /// Stop this worker; its seed stays.
    Stop { pid: u32, reason: StopReason },
    /// Stop the seed's last worker and forget the seed.
    Unseed { channel: String, reason: StopReason },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum StopReason {
    /// Too few viewers for longer than the grace period.
    Idle,
    /// Its slot went to a seed of higher priority.
    Displaced,
}

/// How many workers this machine takes: one per core unless the operator says how many
/// (`maxWorkers`), within memory and bandwidth, and within `/ping`'s `workers`.
pub fn capacity(
    cores: usize,
    max_workers: Option<usize>,
    memory_bytes: u64,
    memory_per_worker: u64,
    bandwidth_mbps: Option<u64>,
    mbps_per_worker: u64,
    ping_workers: Option<usize>,
) -> usize {
    let by_memory = (memory_bytes / memory_per_worker.max(1)) as usize;
    let by_bandwidth =
        bandwidth_mbps.map_or(usize::MAX, |b| b.div_ceil(mbps_per_worker.max(1)) as usize);
    let base = max_workers.unwrap_or(cores);
    base.min(by_memory).min(by_bandwidth).min(ping_workers.unwrap_or(usize::MAX)).max(1)
}

/// What to change so that the workers fit the seeds, the capacity and the rules.
/// `leaving` is how many workers are on their way out: their slots are not free yet.
pub fn plan(
    now: Duration,
    seeds: &[SeedView],
    workers: &[WorkerView],
    leaving: usize,
    capacity: usize,
    rules: &Rules,
) -> Vec<Action> {
    let mut actions = Vec::new();
    let mut running: Vec<&WorkerView> = workers.iter().collect();
    let seed_of = |channel: &str| seeds.iter().find(|s| s.channel == channel);

    // Idle workers: extra ones go; a seed's last one goes with the seed unless it is
    // kept alive.
    let idle =
        |w: &WorkerView| w.idle_since.is_some_and(|t| now.saturating_sub(t) >= rules.idle_grace);
    for seed in seeds {
        let mine: Vec<&WorkerView> =
            running.iter().copied().filter(|w| w.channel == seed.channel).collect();
        let mut left = mine.len();
        for worker in mine.iter().filter(|w| idle(w)) {
            if left > 1 {
                actions.push(Action::Stop { pid: worker.pid, reason: StopReason::Idle });
                running.retain(|w| w.pid != worker.pid);
                left -= 1;
            } else if !seed.keep_alive {
                actions.push(Action::Unseed {
                    channel: seed.channel.clone(),
                    reason: StopReason::Idle,
                });
                running.retain(|w| w.pid != worker.pid);
                left -= 1;
            }
        }
    }
    // Workers of seeds that are gone (stopped through the API) are the master's to
    // stop; they take no slot here.
    running.retain(|w| seed_of(&w.channel).is_some());
    let unseeded: Vec<&str> = actions
        .iter()
        .filter_map(|a| match a {
            Action::Unseed { channel, .. } => Some(channel.as_str()),
            _ => None,
        })
        .collect();

    // Highest priority first; the stable sort keeps the operator's order among equals.
    let mut order: Vec<&SeedView> =
        seeds.iter().filter(|s| !unseeded.contains(&s.channel.as_str())).collect();
    order.sort_by_key(|s| std::cmp::Reverse(s.priority));
    let held = seeds.iter().filter(|s| s.restarting).count() + leaving;
    // Over capacity (the operator lowered a limit): the lowest priority goes first,
    // extra workers before a channel's only one.
    while running.len() + held > capacity {
        let Some(pid) = lowest(&running, seeds, i64::MAX) else { break };
        actions.push(Action::Stop { pid, reason: StopReason::Displaced });
        running.retain(|w| w.pid != pid);
    }
    let mut used = running.len() + held;
    for seed in order {
        if seed.restarting {
            continue;
        }
        let mine: Vec<&WorkerView> =
            running.iter().copied().filter(|w| w.channel == seed.channel).collect();
        let full = |w: &&WorkerView| {
            f64::from(w.viewers) >= rules.scale_up_at * f64::from(seed.max_connections)
        };
        let wants_one = mine.is_empty()
            || (mine.len() < rules.max_workers_per_channel && mine.iter().all(full));
        if !wants_one {
            continue;
        }
        if used < capacity {
            used += 1;
        } else {
            let Some(pid) = lowest(&running, seeds, seed.priority) else { continue };
            actions.push(Action::Stop { pid, reason: StopReason::Displaced });
            running.retain(|w| w.pid != pid);
        }
        actions.push(Action::Spawn { channel: seed.channel.clone() });
    }
    actions
}

/// The worker to give up first among those of priority below `below`: the lowest
/// priority, and a channel's extra worker before its only one.
fn lowest(running: &[&WorkerView], seeds: &[SeedView], below: i64) -> Option<u32> {
    running
        .iter()
        .filter_map(|w| seeds.iter().find(|s| s.channel == w.channel).map(|s| (w, s.priority)))
        .filter(|(_, priority)| *priority < below)
        .min_by_key(|(w, priority)| {
            let alone = running.iter().filter(|o| o.channel == w.channel).count() == 1;
            (*priority, alone)
        })
        .map(|(w, _)| w.pid)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: Duration = Duration::from_secs(10_000);

    fn seed(channel: &str, priority: i64) -> SeedView {
        SeedView {
            channel: channel.into(),
            priority,
            keep_alive: false,
            max_connections: 10,
            restarting: false,
        }
    }

    fn worker(pid: u32, channel: &str, viewers: u32) -> WorkerView {
        WorkerView { pid, channel: channel.into(), viewers, idle_since: None }
    }

    fn spawn(channel: &str) -> Action {
        Action::Spawn { channel: channel.into() }
    }

    #[test]
    fn every_seed_gets_a_worker_in_priority_order_within_capacity() {
        let seeds = [seed("low", 1), seed("high", 300), seed("mid", 100)];
        assert_eq!(
            plan(NOW, &seeds, &[], 0, 2, &Rules::default()),
            vec![spawn("high"), spawn("mid")]
        );
        let running = [worker(1, "high", 3), worker(2, "mid", 3)];
        assert_eq!(
            plan(NOW, &seeds, &running, 0, 2, &Rules::default()),
            vec![],
            "no displacement upwards"
        );
    }

    #[test]
    fn higher_priority_displaces_the_lowest() {
        let seeds = [seed("a", 50), seed("b", 10), seed("new", 100)];
        let running = [worker(1, "a", 5), worker(2, "b", 5)];
        assert_eq!(
            plan(NOW, &seeds, &running, 0, 2, &Rules::default()),
            vec![Action::Stop { pid: 2, reason: StopReason::Displaced }, spawn("new")]
        );
        let equal = [seed("a", 50), seed("b", 100), seed("new", 50)];
        assert_eq!(
            plan(NOW, &equal, &running, 0, 2, &Rules::default()),
            vec![],
            "equal priority waits"
        );
    }

    #[test]
    fn a_full_channel_gets_another_worker_and_an_idle_extra_one_goes() {
        let seeds = [seed("a", 100)];
        let busy = [worker(1, "a", 9)];
        assert_eq!(plan(NOW, &seeds, &busy, 0, 4, &Rules::default()), vec![spawn("a")]);
        let half = [worker(1, "a", 9), worker(2, "a", 4)];
        assert_eq!(plan(NOW, &seeds, &half, 0, 4, &Rules::default()), vec![]);
        let mut idle = worker(2, "a", 0);
        idle.idle_since = Some(NOW - Duration::from_secs(601));
        assert_eq!(
            plan(NOW, &seeds, &[worker(1, "a", 5), idle], 0, 4, &Rules::default()),
            vec![Action::Stop { pid: 2, reason: StopReason::Idle }]
        );
    }

    #[test]
    fn idle_seeds_are_evicted_after_the_grace_period_unless_kept_alive() {
        let mut idle = worker(1, "a", 0);
        idle.idle_since = Some(NOW - Duration::from_secs(599));
        let seeds = [seed("a", 100)];
        assert_eq!(
            plan(NOW, &seeds, &[idle.clone()], 0, 4, &Rules::default()),
            vec![],
            "still in grace"
        );
        idle.idle_since = Some(NOW - Duration::from_secs(600));
        assert_eq!(
            plan(NOW, &seeds, &[idle.clone()], 0, 4, &Rules::default()),
            vec![Action::Unseed { channel: "a".into(), reason: StopReason::Idle }]
        );
        let kept = [SeedView { keep_alive: true, ..seed("a", 100) }];
        assert_eq!(plan(NOW, &kept, &[idle], 0, 4, &Rules::default()), vec![]);
    }

    #[test]
    fn lowering_capacity_stops_the_lowest_priority_first() {
        let seeds = [seed("a", 50), seed("b", 10), seed("c", 100)];
        let running = [worker(1, "a", 5), worker(2, "b", 5), worker(3, "c", 5), worker(4, "c", 9)];
        let stop = |pid| Action::Stop { pid, reason: StopReason::Displaced };
        assert_eq!(plan(NOW, &seeds, &running, 0, 2, &Rules::default()), vec![stop(2), stop(1)]);
        assert_eq!(
            plan(NOW, &seeds, &running, 1, 4, &Rules::default()),
            vec![stop(2)],
            "a worker still leaving holds its slot"
        );
    }

    #[test]
    fn a_restarting_seed_keeps_its_slot() {
        let seeds = [SeedView { restarting: true, ..seed("crashed", 100) }, seed("other", 1)];
        assert_eq!(plan(NOW, &seeds, &[], 0, 1, &Rules::default()), vec![]);
    }

    #[test]
    fn capacity_is_the_tightest_limit() {
        let gib = 1 << 30;
        assert_eq!(capacity(8, None, 64 * gib, gib / 2, None, 200, None), 8);
        assert_eq!(capacity(8, None, 2 * gib, gib / 2, None, 200, None), 4);
        assert_eq!(capacity(8, None, 64 * gib, gib / 2, Some(500), 200, None), 3);
        assert_eq!(capacity(8, Some(5), 64 * gib, gib / 2, None, 200, Some(2)), 2);
        assert_eq!(
            capacity(2, Some(6), 64 * gib, gib / 2, None, 200, None),
            6,
            "the operator knows"
        );
        assert_eq!(capacity(8, None, 0, gib / 2, None, 200, Some(0)), 1, "never below one");
    }
}
