//! Which nodes of a fleet seed which channel: rendezvous (highest random weight)
//! hashing over the live nodes, as many nodes as a channel asks for, within each node's
//! capacity, higher priority first.
//!
//! Pure and deterministic: every node computes the same placement from the same view of
//! the fleet, so nodes agree without talking to each other. It must never depend on
//! the order nodes or seeds were listed in, on time, or on anything but its input.

use std::collections::BTreeMap;

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

    #[test]
    fn no_nodes_places_nothing() {
        assert!(place(&[], &wants(3)).is_empty());
        assert!(place(&nodes(&["a"], 0), &wants(3)).is_empty());
    }
}
