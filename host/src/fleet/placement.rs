//! Which nodes of a fleet seed which channel: rendezvous (highest random weight)
//! hashing over the live nodes, as many nodes as a channel asks for, within each node's
//! capacity, higher priority first.
//!
//! Pure and deterministic: every node computes the same placement from the same view of
//! the fleet, so nodes agree without talking to each other. It must never depend on
//! the order nodes or seeds were listed in, on time, or on anything but its input.

use std::collections::{BTreeMap, BTreeSet};

/// A live node: its name and how many channels it can seed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub name: String,
    pub capacity: usize,
}

/// A channel to place: its key (the channel id in one spelling), how many nodes should
/// seed it, and its priority (higher first when the fleet is full).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Want {
    pub channel: String,
    pub replicas: usize,
    pub priority: i64,
}

/// A channel's viewers now, over all the nodes that run it, and how many nodes those are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Load {
    pub viewers: usize,
    pub nodes: usize,
}

/// Share of `maxConnections` at which a channel's workers count as nearly full, and the
/// share below which one node fewer would still not be: between the two the count
/// stays, so a channel near a threshold does not come and go.
const RAISE_AT: f64 = 0.8;
const LOWER_BELOW: f64 = 0.5;

/// How many nodes a channel should run on: what its seed asks for, raised while its
/// workers near `maxConnections` (one node more once the viewers fill 80% of the
/// nodes running it), lowered again once they would fill under half of one node fewer;
/// at most `max`. Every node computes it from the same records.
pub fn replicas(asked: usize, max_connections: usize, load: Load, max: usize) -> usize {
    let asked = asked.clamp(1, max.max(1));
    let per_node = max_connections.max(1) as f64;
    let viewers = load.viewers as f64;
    let now = load.nodes.max(asked);
    let wanted = if viewers >= RAISE_AT * per_node * now as f64 {
        now + 1
    } else if now > asked && viewers < LOWER_BELOW * per_node * (now - 1) as f64 {
        now - 1
    } else {
        now
    };
    wanted.clamp(asked, max.max(asked))
}

/// Each placed channel's nodes, best ranked first; a channel the fleet has no room for
/// is absent (it waits).
pub type Placement = BTreeMap<String, Vec<String>>;

/// Places `wants` on `nodes`. A channel goes to the nodes that rank highest for it
/// (its own order of all nodes), skipping those already full; higher priority seeds
/// are placed first, so they take the room when there is not enough; ties go by channel
/// key. A node that joins or leaves moves only the channels it ranks high for.
pub fn place(nodes: &[Node], wants: &[Want]) -> Placement {
    let mut room: BTreeMap<&str, usize> =
        nodes.iter().map(|n| (n.name.as_str(), n.capacity)).collect();
    let mut order: Vec<&Want> = wants.iter().collect();
    order.sort_by(|a, b| b.priority.cmp(&a.priority).then_with(|| a.channel.cmp(&b.channel)));
    let mut placement = Placement::new();
    for want in order {
        let mut chosen = Vec::new();
        for node in rank(nodes, &want.channel) {
            if chosen.len() >= want.replicas {
                break;
            }
            let left = room.get_mut(node).expect("ranked nodes are known");
            if *left > 0 {
                *left -= 1;
                chosen.push(node.to_string());
            }
        }
        if !chosen.is_empty() {
            placement.insert(want.channel.clone(), chosen);
        }
    }
    placement
}

/// Each channel and the live nodes that run it now (their own word, in their records).
pub type Running = BTreeMap<String, Vec<String>>;

/// How many running channels may change nodes in one round: a tenth of them, at least
/// one. A channel moves by stopping on one node and then starting on another, and its
/// viewers reconnect; a node that joins takes its share a few channels at a time, not
/// all at once.
pub fn moves_per_round(channels: usize) -> usize {
    (channels / 10).max(1)
}

/// What one node does this round: the channels it runs, and those it claims (placed on
/// it but run by a node that is to give them up).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Step {
    pub run: BTreeSet<String>,
    pub claiming: BTreeSet<String>,
}

/// One node's step towards `target`, from what every live node says it runs and
/// claims. A channel moves between live nodes by a handover: the node it is placed on
/// claims it (at most `budget` claims at once, so a node that joins takes its share a
/// few channels a round), the node running it gives it up once it sees the claim, and
/// the claimer starts it once nobody outside the target runs it: it stops before it
/// starts. A channel that runs nowhere (new, or its node died) is started at once.
/// Nothing new is started until the live nodes have held still (`settled`). What this
/// node runs that the target places nowhere (a seed removed, or one the fleet has no
/// room for) is not in the step: it stops.
pub fn step(
    me: &str,
    target: &Placement,
    running: &Running,
    claims: &Running,
    budget: usize,
    settled: bool,
) -> Step {
    let runs = |channel: &str, node: &str| {
        running.get(channel).is_some_and(|nodes| nodes.iter().any(|n| n == node))
    };
    let mut next = Step::default();
    for (channel, placed) in target {
        let here = placed.iter().any(|n| n == me);
        if runs(channel, me) {
            // Kept where it is placed; given up elsewhere once a node it is placed on
            // (and that does not run it yet) claims it, or once it runs on every node
            // it is placed on without this one.
            let claimed = placed.iter().any(|n| {
                !runs(channel, n) && claims.get(channel).is_some_and(|c| c.iter().any(|m| m == n))
            });
            let covered = placed.iter().all(|n| runs(channel, n));
            if here || !(claimed || covered) {
                next.run.insert(channel.clone());
            }
        } else if here && settled {
            let others_outside = running
                .get(channel)
                .is_some_and(|nodes| nodes.iter().any(|n| n != me && !placed.contains(n)));
            if !others_outside {
                next.run.insert(channel.clone());
            } else if next.claiming.len() < budget {
                next.claiming.insert(channel.clone());
            }
        }
    }
    next
}

/// Every node, highest weight for `channel` first (ties, which need equal hashes, by
/// name).
pub fn rank<'a>(nodes: &'a [Node], channel: &str) -> Vec<&'a str> {
    let mut ranked: Vec<(u64, &str)> =
        nodes.iter().map(|n| (weight(&n.name, channel), n.name.as_str())).collect();
    ranked.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(b.1)));
    ranked.into_iter().map(|(_, name)| name).collect()
}

/// A node's weight for a channel: 64-bit FNV-1a of both, length-prefixed so that no two
/// pairs hash the same input, then mixed (splitmix64's finaliser) so that similar names
/// get unrelated weights. Stable across versions and machines: every node must compute
/// the same.
fn weight(node: &str, channel: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in [node, channel] {
        for byte in (part.len() as u64).to_le_bytes().iter().chain(part.as_bytes()) {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    hash ^= hash >> 30;
    hash = hash.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    hash ^= hash >> 27;
    hash = hash.wrapping_mul(0x94d0_49bb_1331_11eb);
    hash ^ (hash >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(names: &[&str], capacity: usize) -> Vec<Node> {
        names.iter().map(|n| Node { name: n.to_string(), capacity }).collect()
    }

    fn wants(count: usize) -> Vec<Want> {
        (0..count)
            .map(|n| Want { channel: format!("channel-{n}"), replicas: 1, priority: 100 })
            .collect()
    }

    fn moved(before: &Placement, after: &Placement) -> usize {
        before.iter().filter(|(channel, nodes)| after.get(*channel) != Some(nodes)).count()
    }

    #[test]
    fn channels_spread_over_the_nodes_and_every_node_computes_the_same() {
        let fleet = nodes(&["a", "b", "c"], 100);
        let placement = place(&fleet, &wants(300));
        assert_eq!(placement.len(), 300);
        let mut per_node: BTreeMap<&str, usize> = BTreeMap::new();
        for nodes in placement.values() {
            *per_node.entry(nodes[0].as_str()).or_default() += 1;
        }
        assert!(per_node.values().all(|n| (70..=130).contains(n)), "{per_node:?}");
        // Listed in another order, the answer is the same.
        let mut shuffled = fleet.clone();
        shuffled.reverse();
        let mut reversed = wants(300);
        reversed.reverse();
        assert_eq!(place(&shuffled, &reversed), placement);
    }

    #[test]
    fn a_node_that_leaves_moves_only_its_own_channels_and_one_that_comes_back_takes_them_back() {
        let fleet = nodes(&["a", "b", "c", "d"], 1000);
        let before = place(&fleet, &wants(400));
        let without_c: Vec<Node> = fleet.iter().filter(|n| n.name != "c").cloned().collect();
        let after = place(&without_c, &wants(400));
        let on_c = before.values().filter(|nodes| nodes[0] == "c").count();
        assert_eq!(moved(&before, &after), on_c, "only c's channels move");
        assert_eq!(place(&fleet, &wants(400)), before, "c back: as before");
    }

    #[test]
    fn replicas_go_to_distinct_nodes_within_capacity_and_priority_decides_who_waits() {
        let fleet = nodes(&["a", "b", "c"], 2);
        let mut asked = vec![
            Want { channel: "big".into(), replicas: 3, priority: 100 },
            Want { channel: "low".into(), replicas: 2, priority: 1 },
            Want { channel: "high".into(), replicas: 2, priority: 500 },
        ];
        asked.extend((0..3).map(|n| Want { channel: format!("c{n}"), replicas: 1, priority: 50 }));
        let placement = place(&fleet, &asked);
        let big = &placement["big"];
        assert_eq!(big.len(), 3);
        assert!(big.iter().all(|n| big.iter().filter(|m| *m == n).count() == 1), "{big:?}");
        assert_eq!(placement["high"].len(), 2);
        let used: usize = placement.values().map(Vec::len).sum();
        assert_eq!(used, 6, "every place taken, none twice: {placement:?}");
        assert!(!placement.contains_key("low"), "the lowest priority waits: {placement:?}");
    }

    #[test]
    fn a_busy_channel_gets_another_node_and_gives_it_back_once_quiet() {
        let load = |viewers, nodes| Load { viewers, nodes };
        // Asked for one, 80 viewers a worker.
        assert_eq!(replicas(1, 80, load(0, 0), 64), 1, "not running yet: as asked");
        assert_eq!(replicas(1, 80, load(63, 1), 64), 1);
        assert_eq!(replicas(1, 80, load(64, 1), 64), 2, "80% full: one more");
        // Spread over two, the same viewers keep both (no coming and going).
        assert_eq!(replicas(1, 80, load(64, 2), 64), 2);
        assert_eq!(replicas(1, 80, load(40, 2), 64), 2);
        assert_eq!(replicas(1, 80, load(39, 2), 64), 1, "under half of one: back to one");
        assert_eq!(replicas(1, 80, load(200, 3), 64), 4);
        assert_eq!(replicas(3, 80, load(0, 3), 64), 3, "never under what the seed asks");
        assert_eq!(replicas(1, 80, load(10_000, 64), 64), 64, "at most the cap");
    }

    /// Rounds of a fleet in step: every node takes its step from what all said in the
    /// round before. Returns the rounds taken and, each round, how many channels `c`
    /// ran; fails if a channel ever ran both where it is placed and where it is not.
    fn rounds(
        fleet: &[Node],
        target: &Placement,
        mut running: Running,
        budget: usize,
    ) -> (usize, Vec<usize>) {
        let mut claims = Running::new();
        let mut on_c = Vec::new();
        for round in 1..100 {
            let mut next_running = Running::new();
            let mut next_claims = Running::new();
            for node in fleet {
                let step = step(&node.name, target, &running, &claims, budget, true);
                assert!(step.claiming.len() <= budget);
                for channel in step.run {
                    next_running.entry(channel).or_default().push(node.name.clone());
                }
                for channel in step.claiming {
                    next_claims.entry(channel).or_default().push(node.name.clone());
                }
            }
            for (channel, nodes) in &next_running {
                let placed = &target[channel];
                let before = running.get(channel);
                let started = nodes
                    .iter()
                    .any(|n| placed.contains(n) && !before.is_some_and(|b| b.contains(n)));
                let outside = nodes.iter().any(|n| !placed.contains(n));
                assert!(
                    !(started && outside),
                    "round {round}: {channel} started while it still ran elsewhere: {nodes:?}"
                );
            }
            on_c.push(next_running.values().filter(|n| n.iter().any(|m| m == "c")).count());
            if next_running == running && next_claims == claims {
                return (round, on_c);
            }
            running = next_running;
            claims = next_claims;
        }
        panic!("never settled: {running:?}");
    }

    #[test]
    fn a_node_that_joins_takes_its_share_a_few_channels_a_round_by_handover() {
        let three = nodes(&["a", "b", "c"], 100);
        let two: Vec<Node> = three.iter().filter(|n| n.name != "c").cloned().collect();
        let mut asked = wants(40);
        let running: Running = place(&two, &asked);
        // c joins, and a channel is added that runs nowhere yet.
        asked.push(Want { channel: "new".into(), replicas: 1, priority: 100 });
        let target = place(&three, &asked);
        let to_c = target.values().filter(|n| n[0] == "c").count();
        assert!(to_c > 8, "c's share: {to_c}");
        let budget = moves_per_round(running.len());
        assert_eq!(budget, 4);
        let (_, on_c) = rounds(&three, &target, running, budget);
        assert_eq!(*on_c.last().unwrap(), to_c, "c ends with its share: {on_c:?}");
        assert!(on_c[0] <= 1, "only the new channel at once: {on_c:?}");
        for pair in on_c.windows(2) {
            assert!(pair[1] <= pair[0] + budget, "at most {budget} a round: {on_c:?}");
        }
    }

    #[test]
    fn a_dead_nodes_channels_start_elsewhere_at_once() {
        let three = nodes(&["a", "b", "c"], 100);
        let two: Vec<Node> = three.iter().filter(|n| n.name != "c").cloned().collect();
        let asked = wants(40);
        let before = place(&three, &asked);
        // c died: its channels run nowhere.
        let running: Running = before
            .iter()
            .filter(|(_, n)| n[0] != "c")
            .map(|(ch, n)| (ch.clone(), n.clone()))
            .collect();
        let target = place(&two, &asked);
        let mut all = Running::new();
        for node in &two {
            let step = step(&node.name, &target, &running, &Running::new(), 1, true);
            assert!(step.claiming.is_empty(), "nothing to hand over");
            for channel in step.run {
                all.entry(channel).or_default().push(node.name.clone());
            }
        }
        assert_eq!(all, target, "in one round");
    }

    #[test]
    fn no_nodes_places_nothing() {
        assert!(place(&[], &wants(3)).is_empty());
        assert!(place(&nodes(&["a"], 0), &wants(3)).is_empty());
    }
}
