//! Automatic seeding: of the candidate channels an operator lists, seed those whose
//! swarms hold at least `autoSeedViewers` viewers, the hottest first while there is
//! room, and give back those that stayed below it for `autoSeedGraceSeconds`.
//!
//! The size of a swarm is the policy's to measure (only it knows the swarms a stream's
//! viewers are in): a candidate that is not seeded is measured by a scout, a worker
//! that asks its trackers without joining (`seed-config.scout`); a seeded one by its
//! own worker. Both say it with `swarm-size`.
//!
//! Pure bookkeeping with time passed in; the master starts and stops the scouts and
//! adds and removes the seeds. It must never touch a seed the operator posted: a
//! channel posted by hand is the operator's, candidate or not.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use base64::Engine as _;
use serde::Serialize;

use super::seeds::{self, PostedItem, SeedItem, SeedRequest};

/// Scouts running at once: each is a worker process for a few seconds.
pub const SCOUTS_AT_ONCE: usize = 2;
/// How long a scout may take to say a size (a manifest, a tracker connection, a
/// scrape); past it, it is stopped and the candidate counts as not measured.
pub const SCOUT_TIMEOUT: Duration = Duration::from_secs(30);

/// `candidatesUrl`, `autoSeedViewers`, `autoSeedGraceSeconds`, `scoutIntervalSeconds`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AutoSeedConfig {
    /// Where the candidate list is read from (every `scout_every`); when unset it is
    /// posted to `/candidates`.
    pub candidates_url: Option<String>,
    /// A candidate whose swarms hold at least this many viewers is seeded.
    pub threshold: u64,
    /// An automatic seed below the threshold for this long is given back.
    pub grace: Duration,
    /// How often a candidate that is not seeded is measured again.
    pub scout_every: Duration,
}

impl Default for AutoSeedConfig {
    fn default() -> Self {
        AutoSeedConfig {
            candidates_url: None,
            threshold: 10,
            grace: Duration::from_secs(300),
            scout_every: Duration::from_secs(60),
        }
    }
}

/// How a channel is seeded now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Seeded {
    /// Posted by the operator: never touched here.
    Manual,
    /// Started here from the candidate list.
    Auto,
}

impl Seeded {
    /// How `item`'s seed came to be.
    pub fn of(item: &SeedItem) -> Seeded {
        if item.auto { Seeded::Auto } else { Seeded::Manual }
    }
}

/// What [`AutoSeed::decide`] asks of the master.
#[derive(Debug, Default, PartialEq)]
pub struct Decision {
    /// Candidates to seed now (their items, `auto` set), hottest first.
    pub seed: Vec<SeedItem>,
    /// Automatic seeds to stop, by key (`seeds::channel_key`): cold for the grace
    /// period, or no longer candidates.
    pub release: Vec<String>,
}

#[derive(Debug, Clone, Default)]
struct Measure {
    viewers: Option<u64>,
    at: Option<Duration>,
    error: Option<String>,
    /// Since when an automatic seed has been below the threshold.
    cold_since: Option<Duration>,
}

/// The candidates and what is known of each.
#[derive(Debug, Default)]
pub struct AutoSeed {
    candidates: BTreeMap<String, SeedItem>,
    measures: BTreeMap<String, Measure>,
}

/// One candidate as `GET /candidates` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CandidateView {
    pub channel: String,
    pub url: Option<String>,
    pub label: String,
    /// The viewers in its swarms at the last measure, superpeer not counted.
    pub viewers: Option<u64>,
    /// How long ago that was, in seconds.
    pub measured_seconds_ago: Option<u64>,
    /// Why the last measure failed.
    pub error: Option<String>,
    pub seeded: Option<Seeded>,
    /// An automatic seed below the threshold: for how long, in seconds.
    pub cold_seconds: Option<u64>,
}

impl AutoSeed {
    /// Takes a new candidate list; what was measured of those still listed is kept.
    pub fn set_candidates(&mut self, items: Vec<SeedItem>) {
        self.candidates =
            items.into_iter().map(|item| (seeds::channel_key(&item.channel), item)).collect();
        self.measures.retain(|key, _| self.candidates.contains_key(key));
    }

    pub fn candidates(&self) -> impl Iterator<Item = &SeedItem> {
        self.candidates.values()
    }

    pub fn is_candidate(&self, key: &str) -> bool {
        self.candidates.contains_key(key)
    }

    /// A measure of a candidate's swarms (by a scout or its seed's worker).
    pub fn measured(&mut self, key: &str, viewers: u64, now: Duration) {
        if self.candidates.contains_key(key) {
            let measure = self.measures.entry(key.to_string()).or_default();
            (measure.viewers, measure.at, measure.error) = (Some(viewers), Some(now), None);
        }
    }

    /// Forgets what was measured of a channel whose seed went (stopped, evicted, given
    /// back): it is measured again before it may be seeded again.
    pub fn forget(&mut self, key: &str) {
        self.measures.remove(key);
    }

    /// A scout that said nothing: the candidate waits for the next round.
    pub fn failed(&mut self, key: &str, error: String, now: Duration) {
        if self.candidates.contains_key(key) {
            let measure = self.measures.entry(key.to_string()).or_default();
            (measure.at, measure.error) = (Some(now), Some(error));
        }
    }

    /// Candidates to scout now, at most `room`: not seeded, not being scouted, and not
    /// measured within `every`; the least recently measured first.
    pub fn scouts_due(
        &self,
        now: Duration,
        seeded: &BTreeMap<String, Seeded>,
        scouting: &BTreeSet<String>,
        every: Duration,
        room: usize,
    ) -> Vec<SeedItem> {
        let mut due: Vec<(Option<Duration>, &SeedItem)> = self
            .candidates
            .iter()
            .filter(|(key, _)| !seeded.contains_key(*key) && !scouting.contains(*key))
            .map(|(key, item)| (self.measures.get(key).and_then(|m| m.at), item))
            .filter(|(at, _)| at.is_none_or(|at| now >= at + every))
            .collect();
        due.sort_by_key(|(at, _)| *at);
        due.into_iter().take(room).map(|(_, item)| item.clone()).collect()
    }

    /// What to seed and what to give back now, with room for `free` more seeds.
    pub fn decide(
        &mut self,
        now: Duration,
        seeded: &BTreeMap<String, Seeded>,
        free: usize,
        config: &AutoSeedConfig,
    ) -> Decision {
        let mut decision = Decision::default();
        for (key, how) in seeded {
            if *how != Seeded::Auto {
                continue;
            }
            let Some(item) = self.candidates.get(key) else {
                decision.release.push(key.clone());
                continue;
            };
            let measure = self.measures.entry(key.clone()).or_default();
            match measure.viewers {
                Some(viewers) if viewers < config.threshold => {
                    let since = *measure.cold_since.get_or_insert(now);
                    if now.saturating_sub(since) >= config.grace && !item.keep_alive {
                        decision.release.push(key.clone());
                    }
                }
                _ => measure.cold_since = None,
            }
        }
        let mut hot: Vec<(u64, &SeedItem)> = self
            .candidates
            .iter()
            .filter(|(key, _)| !seeded.contains_key(*key))
            .filter_map(|(key, item)| Some((self.measures.get(key)?.viewers?, item)))
            .filter(|(viewers, _)| *viewers >= config.threshold)
            .collect();
        hot.sort_by_key(|(viewers, _)| std::cmp::Reverse(*viewers));
        decision.seed = hot
            .into_iter()
            .take(free)
            .map(|(_, item)| SeedItem { auto: true, ..item.clone() })
            .collect();
        decision
    }

    /// The candidates as `GET /candidates` shows them.
    pub fn view(&self, now: Duration, seeded: &BTreeMap<String, Seeded>) -> Vec<CandidateView> {
        self.candidates
            .iter()
            .map(|(key, item)| {
                let measure = self.measures.get(key).cloned().unwrap_or_default();
                let ago = |at: Duration| now.saturating_sub(at).as_secs();
                let seeded = seeded.get(key).copied();
                CandidateView {
                    channel: item.channel.clone(),
                    url: item.manifest_url(),
                    label: item.label.clone(),
                    viewers: measure.viewers,
                    measured_seconds_ago: measure.at.map(ago),
                    error: measure.error,
                    seeded,
                    cold_seconds: measure.cold_since.filter(|_| seeded.is_some()).map(ago),
                }
            })
            .collect()
    }
}

/// A candidate list, as posted to `/candidates` or served at `candidatesUrl`: the
/// body of a `/seed` (items may name only a `url`: the channel is then the URL without
/// its query, as p2p-media-loader names a swarm), or plain text with one manifest URL
/// per line (`#` starts a comment).
pub fn parse_candidates(text: &str) -> Result<Vec<SeedItem>, String> {
    let trimmed = text.trim_start();
    if trimmed.starts_with('{') {
        let mut request: SeedRequest =
            serde_json::from_str(trimmed).map_err(|e| format!("not a candidate list: {e}"))?;
        for PostedItem { item, .. } in &mut request.list {
            if item.channel.trim().is_empty()
                && let Some(url) = &item.url
            {
                item.channel = channel_of_url(url);
            }
        }
        if request.list.is_empty() {
            return Ok(Vec::new());
        }
        seeds::validate(&request).map_err(|e| e.to_string())?;
        return Ok(request.into_items());
    }
    let mut items = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        if !(line.starts_with("http://") || line.starts_with("https://"))
            || reqwest::Url::parse(line).is_err()
        {
            return Err(format!("line {}: {line:?} is not an http(s) manifest URL", number + 1));
        }
        let item: SeedItem = serde_json::from_value(serde_json::json!({
            "channel": channel_of_url(line),
            "url": line,
        }))
        .map_err(|e| e.to_string())?;
        items.push(item);
    }
    if items.len() > seeds::MAX_ITEMS {
        return Err(format!("{} candidates; at most {}", items.len(), seeds::MAX_ITEMS));
    }
    Ok(items)
}

/// The channel id of a stream viewers name by its manifest URL.
fn channel_of_url(url: &str) -> String {
    let swarm_id = url.split('?').next().unwrap_or(url);
    base64::engine::general_purpose::STANDARD.encode(swarm_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn candidate(name: &str) -> SeedItem {
        parse_candidates(&format!("http://o.example/{name}/master.m3u8")).unwrap().remove(0)
    }

    fn key(name: &str) -> String {
        seeds::channel_key(&candidate(name).channel)
    }

    fn config() -> AutoSeedConfig {
        AutoSeedConfig { threshold: 5, grace: 10 * S, ..AutoSeedConfig::default() }
    }

    #[test]
    fn the_hottest_candidates_above_the_threshold_are_seeded_within_room() {
        let mut auto = AutoSeed::default();
        auto.set_candidates(["a", "b", "c", "d"].map(candidate).to_vec());
        auto.measured(&key("a"), 6, S);
        auto.measured(&key("b"), 40, S);
        auto.measured(&key("c"), 4, S);
        auto.measured(&key("d"), 9, S);
        let none = BTreeMap::new();
        let decision = auto.decide(2 * S, &none, 2, &config());
        let seeded: Vec<String> =
            decision.seed.iter().map(|i| seeds::channel_key(&i.channel)).collect();
        assert_eq!(seeded, [key("b"), key("d")], "hottest first, within room");
        assert!(decision.seed.iter().all(|i| i.auto));
        assert!(decision.release.is_empty());
        assert!(auto.decide(2 * S, &none, 0, &config()).seed.is_empty(), "no room, no seed");
    }

    #[test]
    fn a_cold_automatic_seed_goes_after_the_grace_but_never_a_manual_or_kept_alive_one() {
        let mut auto = AutoSeed::default();
        let mut kept = candidate("k");
        kept.keep_alive = true;
        auto.set_candidates(vec![candidate("a"), candidate("m"), kept]);
        let seeded: BTreeMap<String, Seeded> = [
            (key("a"), Seeded::Auto),
            (key("m"), Seeded::Manual),
            (key("k"), Seeded::Auto),
            (key("gone"), Seeded::Auto),
        ]
        .into();
        for name in ["a", "m", "k"] {
            auto.measured(&key(name), 1, S);
        }
        let first = auto.decide(S, &seeded, 10, &config());
        assert_eq!(first.release, [key("gone")], "no longer a candidate: at once");
        assert!(auto.decide(10 * S, &seeded, 10, &config()).release.contains(&key("gone")));
        assert!(!auto.decide(10 * S, &seeded, 10, &config()).release.contains(&key("a")));
        // Warm again within the grace: the clock starts over.
        auto.measured(&key("a"), 7, 5 * S);
        assert!(!auto.decide(12 * S, &seeded, 10, &config()).release.contains(&key("a")));
        auto.measured(&key("a"), 0, 13 * S);
        assert!(!auto.decide(13 * S, &seeded, 10, &config()).release.contains(&key("a")));
        let late = auto.decide(23 * S, &seeded, 10, &config());
        assert_eq!(late.release, [key("a"), key("gone")], "{late:?}");
        assert!(late.seed.is_empty(), "seeded ones are not seeded again");
        let view = auto.view(23 * S, &seeded);
        let a = view.iter().find(|v| seeds::channel_key(&v.channel) == key("a")).unwrap();
        assert_eq!((a.viewers, a.cold_seconds, a.seeded), (Some(0), Some(10), Some(Seeded::Auto)));
    }

    #[test]
    fn scouts_go_to_candidates_not_seeded_least_recently_measured_first() {
        let mut auto = AutoSeed::default();
        auto.set_candidates(["a", "b", "c", "d"].map(candidate).to_vec());
        auto.measured(&key("a"), 1, 10 * S);
        auto.failed(&key("b"), "no answer".into(), 5 * S);
        let seeded: BTreeMap<String, Seeded> = [(key("c"), Seeded::Manual)].into();
        let none = BTreeSet::new();
        let due = |auto: &AutoSeed, now, scouting: &BTreeSet<String>, room| {
            auto.scouts_due(now, &seeded, scouting, 60 * S, room)
                .iter()
                .map(|i| seeds::channel_key(&i.channel))
                .collect::<Vec<_>>()
        };
        assert_eq!(due(&auto, 20 * S, &none, 5), [key("d")], "never measured; c is seeded");
        assert_eq!(due(&auto, 70 * S, &none, 5), [key("d"), key("b"), key("a")]);
        assert_eq!(due(&auto, 70 * S, &none, 1), [key("d")]);
        let scouting: BTreeSet<String> = [key("d")].into();
        assert_eq!(due(&auto, 70 * S, &scouting, 1), [key("b")]);
    }

    #[test]
    fn candidate_lists_read_as_operators_write_them() {
        let items = parse_candidates(
            "# channels\nhttp://o.example/a/master.m3u8?token=1\n\n https://o.example/b.m3u8 # b\n",
        )
        .unwrap();
        assert_eq!(items.len(), 2);
        assert_eq!(
            seeds::decode_channel(&items[0].channel).unwrap(),
            "http://o.example/a/master.m3u8"
        );
        assert_eq!(items[0].url.as_deref(), Some("http://o.example/a/master.m3u8?token=1"));
        assert_eq!(items[1].max_connections, 80, "the seed defaults");

        let json = r#"{"list": [{"url": "http://o.example/c.m3u8", "priority": 5},
                                {"channel": "c3dhcm0", "url": "http://o.example/d.m3u8"}]}"#;
        let items = parse_candidates(json).unwrap();
        assert_eq!(seeds::decode_channel(&items[0].channel).unwrap(), "http://o.example/c.m3u8");
        assert_eq!((items[0].priority, &items[1].channel[..]), (5, "c3dhcm0"));
        assert_eq!(parse_candidates(r#"{"list": []}"#).unwrap(), []);

        for bad in [
            "ftp://o.example/a.m3u8",
            "not a url",
            r#"{"list": [{"url": "http://o.example/c.m3u8", "colour": 1}]}"#,
            r#"{"list": [{"label": "no channel"}]}"#,
            r#"{"list": [{"url": "http://o.example/c.m3u8", "auto": true}]}"#,
            "{not json",
        ] {
            assert!(parse_candidates(bad).is_err(), "{bad}");
        }
    }
}
