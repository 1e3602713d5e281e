//! What operators ask superpeer to seed: the `/seed` items, their validation and
//! defaults, and the file that keeps them across restarts.
//!
//! Parsing and validation are pure; [`SeedStore`] is the only code that touches the
//! seeds file, and it only ever replaces it whole (write, fsync, rename), so a crash
//! leaves either the old list or the new one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::policy::wire::SeedConfig;
use crate::protocol::Protocol;

/// What to seed: one item of `POST /seed`, with the original's field names and
/// defaults. Fields it does not know are refused by [`validate`] when posted, and kept
/// by [`SeedRecord`] when saved by a newer version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SeedItem {
    /// The customer token of the original; handed to the policy.
    #[serde(default)]
    pub token: String,
    /// Channel id: base64 (standard or URL-safe, padded or not) of the swarm id.
    /// Required; defaulted only so that a misspelt field is named before a missing
    /// channel is ([`validate`] refuses an empty one).
    #[serde(default)]
    pub channel: String,
    /// SwarmCloud seeds: which tracker API (`trackerZones`); the SDK's default zone
    /// when empty.
    #[serde(default)]
    pub tracker_zone: String,
    /// The viewers' protocol (`pml`, `swarmcloud`); `.env`'s `protocol` when absent.
    /// Kept as text, so a seeds file naming a protocol of a newer version still loads
    /// (that seed waits, named in the log, rather than run as another protocol).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// Live stream (true) or VOD.
    #[serde(default = "yes")]
    pub live: bool,
    /// Tracker or signal URLs for this seed; `.env`'s `signal1`/`signal2` otherwise.
    #[serde(default)]
    pub signal1: Option<String>,
    #[serde(default)]
    pub signal2: Option<String>,
    /// Higher displaces lower when capacity runs out.
    #[serde(default = "default_priority")]
    pub priority: i64,
    /// Never evicted for having few viewers.
    #[serde(default)]
    pub keep_alive: bool,
    #[serde(default)]
    pub no_use_disk_cache: bool,
    /// Most viewers per worker.
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
    /// Fleet mode: how many nodes seed the channel (one worker each). One machine on
    /// its own runs one worker for it, whatever this says.
    #[serde(default = "default_replicas")]
    pub replicas: u32,
    #[serde(default)]
    pub label: String,
    /// Where to fetch the manifest, when it is not the swarm id itself.
    #[serde(default)]
    pub url: Option<String>,
    /// Set by superpeer on the seeds automatic seeding started from the candidate list
    /// (`/candidates`): those it gives back when their swarms go cold. Never posted; a
    /// channel posted by hand is the operator's.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub auto: bool,
    /// Settings for the policy, handed to it as they are; the policy checks them when
    /// the seed is posted. The default policy reads `identities` and
    /// `offersPerAnnounce` (README, "Viewers and trackers").
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub settings: BTreeMap<String, serde_json::Value>,
}

fn yes() -> bool {
    true
}

fn default_priority() -> i64 {
    100
}

fn default_replicas() -> u32 {
    1
}

/// The most nodes one channel may ask for.
pub const MAX_REPLICAS: u32 = 64;

/// The largest `priority` either way.
pub const MAX_PRIORITY: i64 = 1_000_000_000;

fn default_max_connections() -> u32 {
    80
}

/// The body of `POST /seed`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedRequest {
    pub list: Vec<PostedItem>,
}

/// An item as posted: the item, and the fields it does not know (refused).
#[derive(Debug, Clone, Deserialize)]
pub struct PostedItem {
    #[serde(flatten)]
    pub item: SeedItem,
    #[serde(flatten)]
    pub unknown: BTreeMap<String, serde_json::Value>,
}

/// A seed as the seeds file keeps it: the item, and whatever fields a newer version of
/// superpeer wrote beside it, kept as they were. An older version reading a newer
/// file loads it (the seeds run as this version understands them) and writes those
/// fields back, so a downgrade and an upgrade lose nothing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeedRecord {
    #[serde(flatten)]
    pub item: SeedItem,
    #[serde(flatten)]
    pub newer: BTreeMap<String, serde_json::Value>,
}

impl SeedRequest {
    /// The items posted (after [`validate`], which refuses unknown fields).
    pub fn into_items(self) -> Vec<SeedItem> {
        self.list.into_iter().map(|posted| posted.item).collect()
    }
}

impl From<SeedItem> for SeedRecord {
    fn from(item: SeedItem) -> Self {
        SeedRecord { item, newer: BTreeMap::new() }
    }
}

/// A seed item that cannot be used, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SeedError {
    #[error("item {index}: `channel` is empty")]
    EmptyChannel { index: usize },
    #[error("item {index}: `channel` is not base64: {reason}")]
    NotBase64 { index: usize, reason: String },
    #[error("item {index}: `{field}` must be {expected}")]
    Field { index: usize, field: &'static str, expected: &'static str },
    #[error("item {index}: unknown field `{field}`")]
    UnknownField { index: usize, field: String },
    #[error("`list` is empty: nothing to seed")]
    Empty,
    #[error("`list` has {0} items; at most {1} per request")]
    TooMany(usize, usize),
}

/// Most items one request may carry.
pub const MAX_ITEMS: usize = 1000;

/// Most `settings` an item may carry, and the longest each may be (as JSON).
pub const MAX_SETTINGS: usize = 32;
pub const MAX_SETTING_BYTES: usize = 4096;

/// Longest channel id accepted (base64 of a URL of about 6 KB): it travels on a
/// worker's command line and in every stats answer.
pub const MAX_CHANNEL_BYTES: usize = 8192;

impl SeedItem {
    /// The swarm id the channel names (base64-decoded).
    pub fn swarm_id(&self) -> Result<String, String> {
        decode_channel(&self.channel)
    }

    /// The manifest to fetch: `url` if given, else the swarm id when it is a URL.
    pub fn manifest_url(&self) -> Option<String> {
        self.url.clone().or_else(|| {
            self.swarm_id()
                .ok()
                .filter(|id| id.starts_with("http://") || id.starts_with("https://"))
        })
    }

    /// What a worker seeding this item is told it seeds: the original's extra fields
    /// and the item's `settings` travel as settings (text as it is, other values as
    /// JSON).
    pub fn worker_seed(&self, trackers: Vec<String>) -> SeedConfig {
        let mut settings = vec![
            ("token".into(), self.token.clone()),
            ("trackerZone".into(), self.tracker_zone.clone()),
            ("noUseDiskCache".into(), self.no_use_disk_cache.to_string()),
        ];
        settings.extend(self.settings.iter().map(|(key, value)| {
            let text = match value {
                serde_json::Value::String(text) => text.clone(),
                other => other.to_string(),
            };
            (key.clone(), text)
        }));
        SeedConfig {
            channel: self.channel.clone(),
            manifest_url: self.manifest_url(),
            trackers,
            live: self.live,
            max_connections: self.max_connections,
            label: self.label.clone(),
            settings,
            scout: false,
        }
    }

    /// The protocol this seed's viewers speak.
    pub fn protocol(&self, default: Protocol) -> Result<Protocol, String> {
        self.protocol.as_deref().map_or(Ok(default), str::parse)
    }

    /// Where the seed stands when capacity runs out: its `priority`, but an automatic
    /// seed below every seed an operator posted (their priorities are at most a billion
    /// either way), so automatic seeding never displaces nor crowds out a posted one.
    pub fn scheduling_priority(&self) -> i64 {
        const AUTOMATIC: i64 = -(1 << 40);
        if self.auto {
            AUTOMATIC + self.priority.clamp(-MAX_PRIORITY, MAX_PRIORITY)
        } else {
            self.priority
        }
    }

    /// The trackers this seed announces on: its own signals, else the defaults.
    pub fn trackers(&self, defaults: &[String]) -> Vec<String> {
        let own: Vec<String> = [&self.signal1, &self.signal2]
            .into_iter()
            .flatten()
            .filter(|s| !s.is_empty())
            .cloned()
            .collect();
        if own.is_empty() { defaults.to_vec() } else { own }
    }
}

/// Checks a request's items; all must be usable or none is taken.
pub fn validate(request: &SeedRequest) -> Result<(), SeedError> {
    if request.list.is_empty() {
        return Err(SeedError::Empty);
    }
    if request.list.len() > MAX_ITEMS {
        return Err(SeedError::TooMany(request.list.len(), MAX_ITEMS));
    }
    for (index, PostedItem { item, unknown }) in request.list.iter().enumerate() {
        if let Some(field) = unknown.keys().next() {
            return Err(SeedError::UnknownField { index, field: field.clone() });
        }
        if item.channel.trim().is_empty() {
            return Err(SeedError::EmptyChannel { index });
        }
        if item.channel.len() > MAX_CHANNEL_BYTES {
            return Err(SeedError::Field {
                index,
                field: "channel",
                expected: "at most 8192 characters",
            });
        }
        item.swarm_id().map_err(|reason| SeedError::NotBase64 { index, reason })?;
        if item.max_connections == 0 || item.max_connections > 10_000 {
            return Err(SeedError::Field {
                index,
                field: "maxConnections",
                expected: "between 1 and 10000",
            });
        }
        if !(-MAX_PRIORITY..=MAX_PRIORITY).contains(&item.priority) {
            return Err(SeedError::Field {
                index,
                field: "priority",
                expected: "between -1000000000 and 1000000000",
            });
        }
        if item.replicas == 0 || item.replicas > MAX_REPLICAS {
            return Err(SeedError::Field {
                index,
                field: "replicas",
                expected: "between 1 and 64",
            });
        }
        for (field, value) in [("signal1", &item.signal1), ("signal2", &item.signal2)] {
            if let Some(url) = value
                && !url.is_empty()
                && !(url.starts_with("ws://") || url.starts_with("wss://"))
            {
                return Err(SeedError::Field { index, field, expected: "a ws:// or wss:// URL" });
            }
        }
        if item.settings.len() > MAX_SETTINGS
            || item.settings.iter().any(|(key, value)| {
                key.is_empty() || key.len() > 64 || value.to_string().len() > MAX_SETTING_BYTES
            })
        {
            return Err(SeedError::Field {
                index,
                field: "settings",
                expected: "at most 32 settings, named in 1 to 64 characters, each at most 4 KiB \
                           as JSON",
            });
        }
        if item.auto {
            return Err(SeedError::Field {
                index,
                field: "auto",
                expected: "absent: superpeer sets it on the seeds it starts from candidates",
            });
        }
        if item.protocol(Protocol::default()).is_err() {
            return Err(SeedError::Field {
                index,
                field: "protocol",
                expected: "pml or swarmcloud",
            });
        }
        if let Some(url) = &item.url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(SeedError::Field {
                index,
                field: "url",
                expected: "an http:// or https:// URL",
            });
        }
    }
    Ok(())
}

/// Decodes a channel id: standard or URL-safe base64, padded or not.
pub fn decode_channel(channel: &str) -> Result<String, String> {
    use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
    let trimmed = channel.trim().trim_end_matches('=');
    let bytes = STANDARD_NO_PAD
        .decode(trimmed)
        .or_else(|_| URL_SAFE_NO_PAD.decode(trimmed))
        .map_err(|e| e.to_string())?;
    String::from_utf8(bytes).map_err(|_| "decodes to bytes that are not UTF-8".to_string())
}

/// Whether two channel ids name the same swarm, however each is spelled (alphabet,
/// padding, whitespace).
pub fn same_channel(a: &str, b: &str) -> bool {
    a == b || channel_key(a) == channel_key(b)
}

/// What a channel id names, whatever its spelling: equal keys, same swarm. For
/// looking up many ids at once without decoding each pair.
pub fn channel_key(channel: &str) -> String {
    decode_channel(channel).unwrap_or_else(|_| format!("\0{channel}"))
}

/// The persisted list of seeds, in the data directory.
#[derive(Debug, Clone)]
pub struct SeedStore {
    path: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("could not read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path} is not a valid seeds file: {source}")]
    Parse { path: String, source: serde_json::Error },
    #[error("could not write {path}: {source}")]
    Write { path: String, source: std::io::Error },
    #[error("{path} is locked: another superpeer uses this data directory")]
    Locked { path: String },
}

impl SeedStore {
    pub fn new(data_dir: &Path) -> Self {
        Self::named(data_dir, "seeds.json")
    }

    /// A list of seed items kept in another file of the data directory (the
    /// candidates of automatic seeding).
    pub fn named(data_dir: &Path, file: &str) -> Self {
        SeedStore { path: data_dir.join(file) }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Takes the data directory for this process (creating it), so two masters never
    /// run the same seeds. The lock lasts as long as the returned file. The directory
    /// and the seed list (viewer tokens, signed URLs) are made readable by this user
    /// only.
    pub fn lock(&self) -> Result<std::fs::File, StoreError> {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let lock = dir.join(".lock");
        let path = lock.display().to_string();
        let error = |source| StoreError::Write { path: dir.display().to_string(), source };
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(error)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(error)?;
        if self.path.exists() {
            std::fs::set_permissions(&self.path, std::fs::Permissions::from_mode(0o600))
                .map_err(error)?;
        }
        let file = std::fs::File::create(&lock)
            .map_err(|source| StoreError::Write { path: path.clone(), source })?;
        match file.try_lock() {
            Ok(()) => Ok(file),
            Err(std::fs::TryLockError::WouldBlock) => Err(StoreError::Locked { path }),
            Err(std::fs::TryLockError::Error(source)) => Err(StoreError::Write { path, source }),
        }
    }

    /// The saved seeds; none if nothing was ever saved.
    pub fn load(&self) -> Result<Vec<SeedRecord>, StoreError> {
        let path = self.path.display().to_string();
        match std::fs::read(&self.path) {
            Ok(bytes) => {
                let records: Vec<SeedRecord> = serde_json::from_slice(&bytes)
                    .map_err(|source| StoreError::Parse { path: path.clone(), source })?;
                let (usable, unusable): (Vec<_>, Vec<_>) =
                    records.into_iter().partition(|r| !r.item.channel.trim().is_empty());
                if !unusable.is_empty() {
                    tracing::warn!(%path, dropped = unusable.len(), "seeds without a channel dropped");
                }
                Ok(usable)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(source) => Err(StoreError::Read { path, source }),
        }
    }

    /// Replaces the saved seeds atomically.
    pub fn save(&self, seeds: &[SeedRecord]) -> Result<(), StoreError> {
        use std::io::Write;
        let path = self.path.display().to_string();
        let error = |source| StoreError::Write { path: path.clone(), source };
        let dir = self.path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(error)?;
        let tmp = self.path.with_extension("json.tmp");
        let json = serde_json::to_vec_pretty(seeds).map_err(|e| error(std::io::Error::other(e)))?;
        let mut file = {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(error)?
        };
        file.write_all(&json).and_then(|()| file.sync_all()).map_err(error)?;
        std::fs::rename(&tmp, &self.path).map_err(error)?;
        // The rename is durable only once the directory entry is.
        std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(error)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(json: &str) -> SeedItem {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn automatic_seeds_rank_below_every_posted_seed_in_their_own_order() {
        let posted = |priority| SeedItem { priority, ..item(r#"{"channel": "YQ"}"#) };
        let auto = |priority| SeedItem { auto: true, ..posted(priority) };
        let lowest_posted = posted(-MAX_PRIORITY).scheduling_priority();
        assert!(auto(MAX_PRIORITY).scheduling_priority() < lowest_posted);
        assert!(auto(5).scheduling_priority() > auto(4).scheduling_priority());
        assert_eq!(posted(7).scheduling_priority(), 7);
        let request = |priority: i64| SeedRequest {
            list: vec![PostedItem { item: posted(priority), unknown: BTreeMap::new() }],
        };
        assert!(validate(&request(MAX_PRIORITY)).is_ok());
        assert!(matches!(
            validate(&request(MAX_PRIORITY + 1)),
            Err(SeedError::Field { field: "priority", .. })
        ));
    }

    #[test]
    fn defaults_follow_the_original() {
        let seed = item(r#"{"channel": "aHR0cDovL28uZXhhbXBsZS9tLm0zdTg="}"#);
        assert_eq!(
            (seed.priority, seed.max_connections, seed.keep_alive, seed.live),
            (100, 80, false, true)
        );
        assert_eq!(seed.manifest_url().as_deref(), Some("http://o.example/m.m3u8"));
    }

    #[test]
    fn channels_decode_in_every_base64_flavour() {
        // "http://o.example/a?b>c" has bytes that differ between the alphabets.
        let id = "http://o.example/a?>>?";
        for channel in [
            "aHR0cDovL28uZXhhbXBsZS9hPz4+Pw==",
            "aHR0cDovL28uZXhhbXBsZS9hPz4+Pw",
            "aHR0cDovL28uZXhhbXBsZS9hPz4-Pw==",
            "aHR0cDovL28uZXhhbXBsZS9hPz4-Pw",
        ] {
            assert_eq!(decode_channel(channel).as_deref(), Ok(id), "{channel}");
        }
        assert!(decode_channel("not base64!").is_err());
        assert!(same_channel("aHR0cDovL28uZXhhbXBsZS9hPz4+Pw==", "aHR0cDovL28uZXhhbXBsZS9hPz4-Pw"));
        assert!(!same_channel("YQ", "Yg"));
    }

    #[test]
    fn bad_items_are_named() {
        let request = |items: &str| -> SeedRequest {
            serde_json::from_str(&format!(r#"{{"list": [{items}]}}"#)).unwrap()
        };
        assert_eq!(validate(&request("")), Err(SeedError::Empty));
        assert!(matches!(
            validate(&request(r#"{"channel": "%%%"}"#)),
            Err(SeedError::NotBase64 { index: 0, .. })
        ));
        let long = request(&format!(r#"{{"channel": "{}"}}"#, "YWFh".repeat(2049)));
        assert!(matches!(validate(&long), Err(SeedError::Field { field: "channel", .. })));
        let zero = request(r#"{"channel": "YQ", "maxConnections": 0}"#);
        assert!(matches!(validate(&zero), Err(SeedError::Field { field: "maxConnections", .. })));
        for replicas in [0, 65] {
            let item = request(&format!(r#"{{"channel": "YQ", "replicas": {replicas}}}"#));
            assert!(matches!(validate(&item), Err(SeedError::Field { field: "replicas", .. })));
        }
        let signal = request(r#"{"channel": "YQ"}, {"channel": "YQ", "signal1": "http://x"}"#);
        assert!(matches!(
            validate(&signal),
            Err(SeedError::Field { index: 1, field: "signal1", .. })
        ));
        assert_eq!(
            validate(&request(r#"{"channel": "YQ"}, {"channel": "YQ", "bogus": 1}"#)),
            Err(SeedError::UnknownField { index: 1, field: "bogus".into() })
        );
        let posted = |item: &str| serde_json::from_str::<PostedItem>(item);
        assert!(posted(r#"{"channel": "YQ", "priority": "high"}"#).is_err());
        assert_eq!(
            validate(&request(r#"{"chanel": "YQ"}"#)),
            Err(SeedError::UnknownField { index: 0, field: "chanel".into() }),
            "a misspelt field is named, not taken for a missing channel"
        );
        assert_eq!(
            validate(&request(r#"{"priority": 1}"#)),
            Err(SeedError::EmptyChannel { index: 0 })
        );
    }

    #[test]
    fn trackers_come_from_the_seed_or_the_defaults() {
        let defaults = vec!["wss://default/".to_string()];
        assert_eq!(item(r#"{"channel": "YQ"}"#).trackers(&defaults), defaults);
        let own = item(r#"{"channel": "YQ", "signal2": "wss://two/"}"#);
        assert_eq!(own.trackers(&defaults), vec!["wss://two/".to_string()]);
    }

    #[test]
    fn a_seeds_file_from_a_newer_version_loads_and_keeps_what_this_one_does_not_know() {
        let dir = std::env::temp_dir().join(format!("superpeer-newer-{}", std::process::id()));
        let store = SeedStore::new(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let newer = r#"[{"channel": "YQ", "priority": 5, "transport": "quic",
            "placement": {"min": 2}}]"#;
        std::fs::write(store.path(), newer).unwrap();
        let loaded = store.load().unwrap();
        assert_eq!((loaded[0].item.channel.as_str(), loaded[0].item.priority), ("YQ", 5));
        assert_eq!(loaded[0].newer["transport"], "quic");
        store.save(&loaded).unwrap();
        let written: serde_json::Value =
            serde_json::from_slice(&std::fs::read(store.path()).unwrap()).unwrap();
        assert_eq!(written[0]["placement"]["min"], 2, "written back as it was");
        assert_eq!(store.load().unwrap(), loaded);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn the_store_round_trips_and_replaces_whole() {
        let dir = std::env::temp_dir().join(format!("superpeer-seeds-{}", std::process::id()));
        let store = SeedStore::new(&dir);
        assert_eq!(store.load().unwrap(), vec![]);
        let seeds: Vec<SeedRecord> = vec![
            item(r#"{"channel": "YQ", "label": "one"}"#).into(),
            item(r#"{"channel": "Yg"}"#).into(),
        ];
        store.save(&seeds).unwrap();
        assert_eq!(store.load().unwrap(), seeds);
        store.save(&seeds[..1]).unwrap();
        assert_eq!(store.load().unwrap(), seeds[..1]);
        let held = store.lock().unwrap();
        assert!(matches!(store.lock(), Err(StoreError::Locked { .. })));
        drop(held);
        store.lock().unwrap();
        assert!(!store.path().with_extension("json.tmp").exists());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
