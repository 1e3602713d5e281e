//! The master's configuration: `.env` (the original's keys and ours) overridden by
//! command-line flags, validated once at start-up with errors that name the key.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::dataplane::DataPlaneLimits;
use crate::dataplane::origin::{AllowEntry, parse_allow_list};
use crate::policy::PolicyLimits;
use crate::protocol::{Protocol, TrackerZones};
use crate::serve::HttpLimits;

use super::autoseed::AutoSeedConfig;
use super::scheduler::Rules;

/// Everything `superpeer serve` runs with.
#[derive(Debug, Clone, PartialEq)]
pub struct MasterConfig {
    /// `listenPort` (default 8080) on `bindAddress` (default 0.0.0.0 with a token,
    /// 127.0.0.1 without; another address without a token is refused).
    pub listen: SocketAddr,
    /// `accessToken`: required in `X-ACCESS-TOKEN` when set.
    pub access_token: Option<String>,
    /// `signal1`, `signal2`: default trackers (or signal relays) for seeds that name none.
    pub default_trackers: Vec<String>,
    /// `protocol` (default `pml`): the viewer protocol of seeds that name none.
    pub default_protocol: Protocol,
    /// `trackerZones`: SwarmCloud tracker APIs by `trackerZone`, over the SDK's.
    pub tracker_zones: TrackerZones,
    /// `dataDir` (default `data`): where the seed list is kept.
    pub data_dir: PathBuf,
    /// `policyFile`: a policy component to start with instead of the embedded one of
    /// the default protocol.
    pub policy_file: Option<PathBuf>,
    /// `policyLimits`: JSON overriding policy limits field by field.
    pub policy_limits: PolicyLimits,
    /// `maxWorkers`: at most this many workers (default: one per core).
    pub max_workers: Option<usize>,
    /// `bandwidth`: upload capacity of this machine in Mbit/s, for sizing.
    pub bandwidth_mbps: Option<u64>,
    /// `idleGraceSeconds` (default 600) and `minViewers` (default 1): a worker with fewer
    /// viewers for that long is evicted, unless its seed is `keepAlive`.
    pub rules: Rules,
    /// `publicIp`: the address viewers reach workers on (put in ICE candidates); workers
    /// then listen on all interfaces. Without it they listen on 127.0.0.1 only.
    pub public_ip: Option<IpAddr>,
    /// `cacheDir` (default `<dataDir>/cache`): the disk cache every worker shares.
    pub cache_dir: PathBuf,
    /// `cacheSize` (default 10G): the most the disk cache may hold, in bytes (`K`, `M`,
    /// `G`, `T` suffixes are powers of 1024).
    pub cache_bytes: u64,
    /// `udpPorts`: `first-last` (or one port): the UDP ports workers take, one each, for
    /// a firewall that opens a range. Any free port when unset.
    pub udp_ports: Option<(u16, u16)>,
    /// `originAllow`: internal hosts, host:port pairs and networks fetches may reach
    /// besides each seed's own manifest host and port.
    pub origin_allow: Vec<AllowEntry>,
    /// `maxSeeds` (default 1000): the most seeds the list holds; a `/seed` past it is
    /// refused.
    pub max_seeds: usize,
    /// `apiMaxConnections` (default 256) and `apiHeaderTimeoutSeconds` (default 10):
    /// the REST API's connection cap and how long a request's headers (or the next
    /// request on an idle connection) may take.
    pub api_limits: HttpLimits,
    /// `memoryBudget`: bytes of segments each worker holds in memory and fetches in
    /// flight, together; by default half this machine's memory shared by the workers
    /// it takes, between 64 MiB and 1 GiB.
    pub memory_budget: Option<u64>,
    /// `originTimeoutSeconds` (default 20): how long one attempt of an origin fetch may
    /// take, answer and body together (a slow or endless origin is cut off there).
    pub origin_timeout: Duration,
    /// `viewerStallSeconds` (default 60): how long a viewer may acknowledge nothing
    /// sent to it before it is closed.
    pub viewer_stall: Duration,
    /// Fleet mode (`etcdEndpoints` set): the seed list and this node's membership live
    /// in etcd, shared with the other nodes.
    pub fleet: Option<FleetConfig>,
    /// `candidatesUrl`, `autoSeedViewers` (default 10), `autoSeedGraceSeconds` (default
    /// 300) and `scoutIntervalSeconds` (default 60): automatic seeding of the busiest
    /// candidate channels.
    pub autoseed: AutoSeedConfig,
}

/// How a node takes part in a fleet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetConfig {
    /// `etcdEndpoints`: the etcd cluster's client URLs (`http://host:port`),
    /// comma-separated.
    pub endpoints: Vec<String>,
    /// `nodeName` (default: the host name): this node's name in the fleet, unique.
    pub node_name: String,
    /// `nodeAddress`: where this node's REST API is reached, as `/fleet` shows it;
    /// `http://<publicIp or 127.0.0.1>:<the port the API listens on>` when none.
    pub node_address: Option<String>,
    /// `fleetPrefix` (default `/superpeer`): the fleet's keys in etcd, for several
    /// fleets on one cluster.
    pub prefix: String,
    /// `fleetLeaseSeconds` (default 10): how long a node that stopped answering keeps
    /// its channels before the others take them.
    pub lease_seconds: u64,
}

/// A configuration problem, naming the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("configuration `{key}`: {problem}")]
pub struct ConfigError {
    pub key: String,
    pub problem: String,
}

fn bad(key: &str, problem: impl Into<String>) -> ConfigError {
    ConfigError { key: key.to_string(), problem: problem.into() }
}

/// One `.env` key: its name, its default and what it means, as `--help` shows it.
#[derive(Debug, Clone, Copy)]
pub struct Key {
    pub name: &'static str,
    pub default: &'static str,
    pub meaning: &'static str,
}

const fn key(name: &'static str, default: &'static str, meaning: &'static str) -> Key {
    Key { name, default, meaning }
}

/// The keys this version understands; any other key in `.env` is an error, so a typo
/// does not silently fall back to a default.
pub const KEYS: &[Key] = &[
    key("listenPort", "8080", "port of the REST API and monitor; 0 picks a free one"),
    key(
        "bindAddress",
        "0.0.0.0 with a token, else 127.0.0.1",
        "address the REST API listens on (beyond loopback only with accessToken)",
    ),
    key("accessToken", "none", "required in X-ACCESS-TOKEN on every request but / and /health"),
    key(
        "signal1",
        "none",
        "default tracker or signal relay (ws:// or wss://) for seeds that name none",
    ),
    key("signal2", "none", "a second default tracker or signal relay"),
    key("protocol", "pml", "viewer protocol of seeds that name none: pml or swarmcloud"),
    key(
        "trackerZones",
        "the SDK's eu, hk, us",
        "SwarmCloud tracker APIs by trackerZone: zone=http(s)://host/v1, comma-separated",
    ),
    key("dataDir", "data", "where the seed list (seeds.json) is kept"),
    key("policyFile", "embedded", "policy component (.wasm) the default protocol starts with"),
    key("policyLimits", "built in", "JSON object overriding policy limits field by field"),
    key("maxWorkers", "one per core", "most worker processes (still within memory, bandwidth)"),
    key("bandwidth", "none", "upload capacity in Mbit/s, for sizing (1000 per worker)"),
    key("idleGraceSeconds", "600", "how long a worker may have < minViewers before eviction"),
    key("minViewers", "1", "below this many viewers a worker counts as idle"),
    key("publicIp", "none", "address viewers reach workers on; without it, 127.0.0.1 only"),
    key("udpPorts", "any free", "UDP ports for workers, first-last, one per worker"),
    key("cacheDir", "<dataDir>/cache", "the disk cache every worker shares"),
    key("cacheSize", "10G", "most the disk cache holds (K, M, G, T: powers of 1024)"),
    key("apiMaxConnections", "256", "most REST API connections at once; more wait their turn"),
    key(
        "apiHeaderTimeoutSeconds",
        "10",
        "a request's headers, or an idle connection's next request, must come within this",
    ),
    key(
        "memoryBudget",
        "from the machine",
        "segment bytes a worker holds in memory and fetches at once (K, M, G)",
    ),
    key(
        "originTimeoutSeconds",
        "20",
        "one attempt of an origin fetch (answer and body) must finish within this; 3 attempts",
    ),
    key(
        "viewerStallSeconds",
        "60",
        "a viewer that acknowledges nothing sent to it for this long is closed",
    ),
    key("maxSeeds", "1000", "most seeds the seed list holds; a /seed past it is refused"),
    key(
        "etcdEndpoints",
        "none",
        "fleet mode: etcd client URLs (http://host:port), comma-separated; seeds shared by all nodes",
    ),
    key("nodeName", "the host name", "fleet mode: this node's name, unique in the fleet"),
    key(
        "nodeAddress",
        "http://<publicIp or 127.0.0.1>:<the API's port>",
        "fleet mode: where this node's REST API is reached (shown by /fleet)",
    ),
    key("fleetPrefix", "/superpeer", "fleet mode: where the fleet's keys are in etcd"),
    key(
        "fleetLeaseSeconds",
        "10",
        "fleet mode: how long a silent node keeps its channels before others take them",
    ),
    key(
        "candidatesUrl",
        "none (POST /candidates)",
        "automatic seeding: an http(s) URL listing candidate channels, read every scoutIntervalSeconds",
    ),
    key("autoSeedViewers", "10", "automatic seeding: a candidate with this many viewers is seeded"),
    key(
        "autoSeedGraceSeconds",
        "300",
        "automatic seeding: a seed below autoSeedViewers this long is given back",
    ),
    key(
        "scoutIntervalSeconds",
        "60",
        "automatic seeding: how often a candidate not seeded is measured again",
    ),
    key(
        "originAllow",
        "none",
        "internal hosts fetches may reach besides the manifest's: host, host:port, CIDR, comma-separated",
    ),
];

/// Every key, its default and meaning, one per line: the tail of `serve --help`.
pub fn key_reference() -> String {
    let width = KEYS.iter().map(|k| k.name.len()).max().unwrap_or(0);
    let mut text = String::from(".env keys (each flag above overrides its key):\n");
    for k in KEYS {
        text.push_str(&format!(
            "  {:width$}  {} (default: {})\n",
            k.name,
            k.meaning,
            k.default,
            width = width
        ));
    }
    text.push_str(
        "\nEnvironment: RUST_LOG sets log levels (default info); SUPERPEER_LOG_FORMAT,\n",
    );
    text.push_str("SUPERPEER_ACCESS_TOKEN and SUPERPEER_PUBLIC_IP stand for their flags.");
    text
}

/// Reads `KEY=VALUE` lines: `#` comments, blank lines, optional `export `, optional
/// single or double quotes around the value.
pub fn parse_env(text: &str) -> Result<BTreeMap<String, String>, ConfigError> {
    let mut values = BTreeMap::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((key, value)) = line.split_once('=') else {
            return Err(bad(&format!("line {}", number + 1), "expected KEY=VALUE"));
        };
        let key = key.trim();
        let value = value.trim();
        let value = ['"', '\'']
            .iter()
            .find_map(|q| value.strip_prefix(*q).and_then(|v| v.strip_suffix(*q)))
            .unwrap_or(value);
        values.insert(key.to_string(), value.to_string());
    }
    Ok(values)
}

impl MasterConfig {
    /// Builds the configuration from `.env` values, with `overrides` (from flags) taking
    /// precedence key by key.
    pub fn from_values(
        env: &BTreeMap<String, String>,
        overrides: &BTreeMap<String, String>,
    ) -> Result<Self, ConfigError> {
        let mut values = env.clone();
        values.extend(overrides.iter().map(|(k, v)| (k.clone(), v.clone())));
        if let Some(unknown) = values.keys().find(|k| !KEYS.iter().any(|key| key.name == *k)) {
            let known: Vec<&str> = KEYS.iter().map(|k| k.name).collect();
            return Err(bad(unknown, format!("unknown key; known keys: {}", known.join(", "))));
        }
        let get = |key: &str| values.get(key).map(String::as_str).filter(|v| !v.is_empty());
        fn number<T: std::str::FromStr>(
            key: &str,
            value: Option<&str>,
        ) -> Result<Option<T>, ConfigError> {
            value
                .map(|v| v.parse().map_err(|_| bad(key, format!("{v:?} is not a number"))))
                .transpose()
        }

        let port: u16 = number("listenPort", get("listenPort"))?.unwrap_or(8080);
        let access_token = get("accessToken").map(String::from);
        // Protected by default: without a token the API is reachable from this machine
        // only, and an address beyond it must come with a token.
        let bind: IpAddr = match get("bindAddress") {
            Some(v) => {
                let ip: IpAddr = v
                    .parse()
                    .map_err(|_| bad("bindAddress", format!("{v:?} is not an IP address")))?;
                if access_token.is_none() && !ip.is_loopback() {
                    return Err(bad(
                        "bindAddress",
                        format!(
                            "{ip} without accessToken would let anyone who reaches it control \
                             superpeer; set accessToken, or bind a loopback address"
                        ),
                    ));
                }
                ip
            }
            None if access_token.is_some() => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            None => IpAddr::V4(Ipv4Addr::LOCALHOST),
        };
        let mut default_trackers = Vec::new();
        for key in ["signal1", "signal2"] {
            if let Some(url) = get(key) {
                if !(url.starts_with("ws://") || url.starts_with("wss://")) {
                    return Err(bad(key, format!("{url:?} is not a ws:// or wss:// URL")));
                }
                default_trackers.push(url.to_string());
            }
        }
        let default_protocol =
            get("protocol").map(str::parse).transpose().map_err(|e| bad("protocol", e))?;
        let tracker_zones = TrackerZones::parse(get("trackerZones").unwrap_or(""))
            .map_err(|e| bad("trackerZones", e))?;
        let policy_limits = match get("policyLimits") {
            Some(json) => serde_json::from_str::<PolicyLimits>(json)
                .map_err(|e| bad("policyLimits", format!("not valid policy limits JSON: {e}")))?,
            None => PolicyLimits::default(),
        };
        policy_limits.validate().map_err(|e| bad("policyLimits", e.to_string()))?;
        let max_workers: Option<usize> = number("maxWorkers", get("maxWorkers"))?;
        if max_workers == Some(0) {
            return Err(bad("maxWorkers", "must be at least 1"));
        }
        let bandwidth_mbps: Option<u64> = number("bandwidth", get("bandwidth"))?;
        if bandwidth_mbps == Some(0) {
            return Err(bad("bandwidth", "must be at least 1 (Mbit/s)"));
        }
        let defaults = Rules::default();
        let idle_grace = number::<u64>("idleGraceSeconds", get("idleGraceSeconds"))?
            .map_or(defaults.idle_grace, Duration::from_secs);
        let min_viewers = number("minViewers", get("minViewers"))?.unwrap_or(defaults.min_viewers);
        let public_ip = match get("publicIp") {
            Some(v) => Some(
                v.parse::<IpAddr>()
                    .map_err(|_| bad("publicIp", format!("{v:?} is not an IP address")))?,
            ),
            None => None,
        };
        let udp_ports = get("udpPorts").map(parse_port_range).transpose()?;
        let data_dir = PathBuf::from(get("dataDir").unwrap_or("data"));
        let cache_dir = get("cacheDir").map_or_else(|| data_dir.join("cache"), PathBuf::from);
        let cache_bytes = match get("cacheSize") {
            Some(v) => parse_size(v).ok_or_else(|| {
                bad("cacheSize", format!("{v:?} is not a size like 500M or 20G (at least 1M)"))
            })?,
            None => 10 << 30,
        };
        let origin_allow = parse_allow_list(get("originAllow").unwrap_or(""))
            .map_err(|e| bad("originAllow", e))?;
        let max_seeds = number("maxSeeds", get("maxSeeds"))?.unwrap_or(1000);
        if max_seeds == 0 {
            return Err(bad("maxSeeds", "must be at least 1"));
        }
        let memory_budget = get("memoryBudget")
            .map(|v| {
                parse_size(v).ok_or_else(|| {
                    bad("memoryBudget", format!("{v:?} is not a size like 256M (at least 1M)"))
                })
            })
            .transpose()?;
        let api_defaults = HttpLimits::default();
        let max_connections = number("apiMaxConnections", get("apiMaxConnections"))?
            .unwrap_or(api_defaults.max_connections);
        if !(1..=65_536).contains(&max_connections) {
            return Err(bad("apiMaxConnections", "must be between 1 and 65536"));
        }
        let header_read_timeout =
            match number::<u64>("apiHeaderTimeoutSeconds", get("apiHeaderTimeoutSeconds"))? {
                Some(0) => return Err(bad("apiHeaderTimeoutSeconds", "must be at least 1")),
                Some(seconds) => Duration::from_secs(seconds),
                None => api_defaults.header_read_timeout,
            };
        let api_limits = HttpLimits { max_connections, header_read_timeout, ..api_defaults };
        let origin_timeout =
            match number::<u64>("originTimeoutSeconds", get("originTimeoutSeconds"))? {
                Some(seconds @ 1..=3600) => Duration::from_secs(seconds),
                Some(_) => return Err(bad("originTimeoutSeconds", "must be between 1 and 3600")),
                None => DataPlaneLimits::default().fetch_timeout,
            };
        let viewer_stall = match number::<u64>("viewerStallSeconds", get("viewerStallSeconds"))? {
            Some(seconds @ 5..=3600) => Duration::from_secs(seconds),
            Some(_) => return Err(bad("viewerStallSeconds", "must be between 5 and 3600")),
            None => DataPlaneLimits::default().stall_timeout,
        };
        let fleet = match get("etcdEndpoints") {
            None => None,
            Some(list) => {
                let endpoints: Vec<String> = list
                    .split(',')
                    .map(|e| e.trim().trim_end_matches('/').to_string())
                    .filter(|e| !e.is_empty())
                    .collect();
                if endpoints.is_empty()
                    || endpoints.iter().any(|e| {
                        !(e.starts_with("http://") || e.starts_with("https://"))
                            || reqwest::Url::parse(e).is_err()
                    })
                {
                    return Err(bad("etcdEndpoints", "not a list of http(s)://host:port URLs"));
                }
                let node_name = match get("nodeName") {
                    Some(name) => name.to_string(),
                    None => hostname().ok_or_else(|| {
                        bad("nodeName", "no host name to default to: set nodeName")
                    })?,
                };
                if node_name.is_empty()
                    || node_name.len() > 253
                    || !node_name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
                {
                    return Err(bad(
                        "nodeName",
                        format!("{node_name:?}: letters, digits, '-', '_' and '.' only"),
                    ));
                }
                let node_address = get("nodeAddress").map(String::from);
                let prefix = get("fleetPrefix").unwrap_or("/superpeer").trim_end_matches('/');
                if !prefix.starts_with('/') || prefix.len() < 2 {
                    return Err(bad("fleetPrefix", "must start with / and name something"));
                }
                let lease_seconds =
                    match number::<u64>("fleetLeaseSeconds", get("fleetLeaseSeconds"))? {
                        Some(seconds @ 2..=600) => seconds,
                        Some(_) => {
                            return Err(bad("fleetLeaseSeconds", "must be between 2 and 600"));
                        }
                        None => 10,
                    };
                Some(FleetConfig {
                    endpoints,
                    node_name,
                    node_address,
                    prefix: prefix.to_string(),
                    lease_seconds,
                })
            }
        };
        let auto_defaults = AutoSeedConfig::default();
        let candidates_url = get("candidatesUrl").map(String::from);
        if let Some(url) = &candidates_url
            && (!(url.starts_with("http://") || url.starts_with("https://"))
                || reqwest::Url::parse(url).is_err())
        {
            return Err(bad("candidatesUrl", format!("{url:?} is not an http(s) URL")));
        }
        let threshold = match number::<u64>("autoSeedViewers", get("autoSeedViewers"))? {
            Some(0) => return Err(bad("autoSeedViewers", "must be at least 1")),
            Some(viewers) => viewers,
            None => auto_defaults.threshold,
        };
        let grace = match number::<u64>("autoSeedGraceSeconds", get("autoSeedGraceSeconds"))? {
            Some(seconds @ 0..=86_400) => Duration::from_secs(seconds),
            Some(_) => return Err(bad("autoSeedGraceSeconds", "must be at most 86400")),
            None => auto_defaults.grace,
        };
        let scout_every = match number::<u64>("scoutIntervalSeconds", get("scoutIntervalSeconds"))?
        {
            Some(seconds @ 1..=86_400) => Duration::from_secs(seconds),
            Some(_) => return Err(bad("scoutIntervalSeconds", "must be between 1 and 86400")),
            None => auto_defaults.scout_every,
        };
        let autoseed = AutoSeedConfig { candidates_url, threshold, grace, scout_every };
        Ok(MasterConfig {
            autoseed,
            fleet,
            listen: SocketAddr::new(bind, port),
            access_token,
            default_trackers,
            default_protocol: default_protocol.unwrap_or_default(),
            tracker_zones,
            data_dir,
            cache_dir,
            cache_bytes,
            policy_file: get("policyFile").map(PathBuf::from),
            policy_limits,
            max_workers,
            bandwidth_mbps,
            rules: Rules { idle_grace, min_viewers, ..defaults },
            public_ip,
            udp_ports,
            origin_allow,
            max_seeds,
            api_limits,
            memory_budget,
            origin_timeout,
            viewer_stall,
        })
    }

    /// Reads `path` if it exists (a missing `.env` means all defaults) and applies the
    /// overrides.
    pub fn load(path: &Path, overrides: &BTreeMap<String, String>) -> Result<Self, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(bad(&path.display().to_string(), e.to_string())),
        };
        Self::from_values(&parse_env(&text)?, overrides)
    }
}

/// This machine's host name (the kernel's), if it has one.
fn hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_string())
        .filter(|name| !name.is_empty())
}

/// `1048576`, `500M`, `20G`: bytes, with binary suffixes; at least 1 MiB, so that a
/// cache holds at least a segment.
fn parse_size(value: &str) -> Option<u64> {
    let value = value.trim();
    let (number, unit) = match value.char_indices().last()? {
        (at, c) if c.is_ascii_alphabetic() => (&value[..at], c.to_ascii_uppercase()),
        _ => (value, 'B'),
    };
    let shift = match unit {
        'B' => 0,
        'K' => 10,
        'M' => 20,
        'G' => 30,
        'T' => 40,
        _ => return None,
    };
    let bytes = number.trim().parse::<u64>().ok()?.checked_mul(1 << shift)?;
    (bytes >= 1 << 20).then_some(bytes)
}

/// `40000-40999` or `40000`: an inclusive range of ports, none of them 0.
fn parse_port_range(value: &str) -> Result<(u16, u16), ConfigError> {
    let wrong = || bad("udpPorts", format!("{value:?} is not a port range like 40000-40999"));
    let (first, last) = value.split_once('-').unwrap_or((value, value));
    let first: u16 = first.trim().parse().map_err(|_| wrong())?;
    let last: u16 = last.trim().parse().map_err(|_| wrong())?;
    if first == 0 || first > last {
        return Err(wrong());
    }
    Ok((first, last))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(env: &str, overrides: &[(&str, &str)]) -> Result<MasterConfig, ConfigError> {
        let overrides = overrides.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        MasterConfig::from_values(&parse_env(env)?, &overrides)
    }

    #[test]
    fn defaults_match_the_original_but_without_a_token_only_this_machine_is_let_in() {
        let c = config("", &[]).unwrap();
        assert_eq!(c.listen, "127.0.0.1:8080".parse::<SocketAddr>().unwrap(), "protected");
        assert_eq!((c.access_token, c.default_trackers.len()), (None, 0));
        let c = config("accessToken=t", &[]).unwrap();
        assert_eq!(c.listen, "0.0.0.0:8080".parse::<SocketAddr>().unwrap());
        let open = config("bindAddress=0.0.0.0", &[]).unwrap_err();
        assert!(open.problem.contains("set accessToken"), "{open}");
        assert!(config("bindAddress=::1", &[]).is_ok());
        assert_eq!(c.data_dir, PathBuf::from("data"));
    }

    #[test]
    fn env_is_read_and_flags_win() {
        let env = "# the original's keys\nlistenPort=9000\nexport accessToken=\"s3cret\"\nsignal1='wss://t.example/'\n\n";
        let c = config(env, &[("listenPort", "0"), ("bindAddress", "127.0.0.1")]).unwrap();
        assert_eq!(c.listen, "127.0.0.1:0".parse::<SocketAddr>().unwrap());
        assert_eq!(c.access_token.as_deref(), Some("s3cret"));
        assert_eq!(c.default_trackers, vec!["wss://t.example/".to_string()]);
    }

    #[test]
    fn the_cache_lives_in_the_data_directory_unless_told_and_sizes_take_suffixes() {
        let c = config("dataDir=/srv/sp", &[]).unwrap();
        assert_eq!((c.cache_dir, c.cache_bytes), (PathBuf::from("/srv/sp/cache"), 10 << 30));
        let c = config("cacheDir=/fast/cache\ncacheSize=500M", &[]).unwrap();
        assert_eq!((c.cache_dir, c.cache_bytes), (PathBuf::from("/fast/cache"), 500 << 20));
        assert_eq!(config("cacheSize=2g", &[]).unwrap().cache_bytes, 2 << 30);
        assert_eq!(config("cacheSize=1048576", &[]).unwrap().cache_bytes, 1 << 20);
    }

    #[test]
    fn udp_ports_are_a_range_or_one_port() {
        assert_eq!(config("udpPorts=40000-40999", &[]).unwrap().udp_ports, Some((40000, 40999)));
        assert_eq!(config("udpPorts=40000", &[]).unwrap().udp_ports, Some((40000, 40000)));
        assert_eq!(config("", &[]).unwrap().udp_ports, None);
    }

    #[test]
    fn problems_name_the_key() {
        for (env, key) in [
            ("listenPort=eighty", "listenPort"),
            ("listenPort=70000", "listenPort"),
            ("bindAddress=localhost", "bindAddress"),
            ("publicIp=example.com", "publicIp"),
            ("signal1=http://t.example/", "signal1"),
            ("maxWorkers=0", "maxWorkers"),
            ("udpPorts=40010-40000", "udpPorts"),
            ("cacheSize=lots", "cacheSize"),
            ("cacheSize=10Q", "cacheSize"),
            ("cacheSize=1K", "cacheSize"),
            ("udpPorts=0-10", "udpPorts"),
            ("udpPorts=40000-", "udpPorts"),
            ("udpPorts=many", "udpPorts"),
            ("originAllow=10.0.0.0/40", "originAllow"),
            ("maxSeeds=0", "maxSeeds"),
            ("memoryBudget=lots", "memoryBudget"),
            ("apiMaxConnections=0", "apiMaxConnections"),
            ("apiHeaderTimeoutSeconds=0", "apiHeaderTimeoutSeconds"),
            ("originTimeoutSeconds=0", "originTimeoutSeconds"),
            ("originTimeoutSeconds=soon", "originTimeoutSeconds"),
            ("viewerStallSeconds=1", "viewerStallSeconds"),
            ("originAllow=cdn.lan:http", "originAllow"),
            ("policyLimits={\"call_deadline\": 0}", "policyLimits"),
            ("policyLimits=nope", "policyLimits"),
            ("listenport=80", "listenport"),
            ("just some words", "line 1"),
            ("etcdEndpoints=etcd:2379", "etcdEndpoints"),
            ("etcdEndpoints=,", "etcdEndpoints"),
            ("etcdEndpoints=http://e:2379\nnodeName=a b", "nodeName"),
            ("etcdEndpoints=http://e:2379\nnodeName=n\nfleetLeaseSeconds=1", "fleetLeaseSeconds"),
            ("etcdEndpoints=http://e:2379\nnodeName=n\nfleetPrefix=superpeer", "fleetPrefix"),
        ] {
            let error = config(env, &[]).unwrap_err();
            assert_eq!(error.key, key, "{env}: {error}");
        }
    }

    #[test]
    fn fleet_mode_is_etcd_endpoints_with_a_node_name_and_defaults() {
        assert_eq!(config("", &[]).unwrap().fleet, None);
        let fleet = config("etcdEndpoints=http://e1:2379/, http://e2:2379\nnodeName=edge-1", &[])
            .unwrap()
            .fleet
            .unwrap();
        assert_eq!(fleet.endpoints, ["http://e1:2379", "http://e2:2379"]);
        assert_eq!(fleet.node_name, "edge-1");
        assert_eq!((fleet.prefix.as_str(), fleet.lease_seconds), ("/superpeer", 10));
        assert_eq!(fleet.node_address, None);
    }
}
