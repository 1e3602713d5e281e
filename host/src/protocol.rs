//! The viewer protocols superpeer speaks. Each is a policy embedded in the binary (and
//! replaceable at run time like any policy); a seed names its protocol, or gets the
//! master's default. This module owns the list and what differs between protocols in
//! the host: which embedded policy runs and which trackers a seed's worker is told of.
//! It must never interpret a protocol: that is each policy's.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::policy::{AdmittedPolicy, EMBEDDED_POLICY, EMBEDDED_SWARMCLOUD_POLICY, PolicyEngine};

#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// p2p-media-loader 2.2 and 2.3 viewers, through WebTorrent trackers.
    #[default]
    Pml,
    /// SwarmCloud (CDNBye) web SDK viewers, through its tracker API and signal relays.
    Swarmcloud,
}

impl Protocol {
    pub const ALL: [Protocol; 2] = [Protocol::Pml, Protocol::Swarmcloud];

    pub fn name(self) -> &'static str {
        match self {
            Protocol::Pml => "pml",
            Protocol::Swarmcloud => "swarmcloud",
        }
    }

    /// The policy built with this binary for the protocol.
    pub fn embedded_policy(self) -> &'static [u8] {
        match self {
            Protocol::Pml => EMBEDDED_POLICY,
            Protocol::Swarmcloud => EMBEDDED_SWARMCLOUD_POLICY,
        }
    }

    /// The trackers a worker of this protocol is told of: for SwarmCloud the tracker
    /// API of the seed's `trackerZone` first, then the signal relays; for
    /// p2p-media-loader the WebSocket trackers alone.
    pub fn trackers(
        self,
        signals: Vec<String>,
        zone: &str,
        zones: &TrackerZones,
    ) -> Result<Vec<String>, String> {
        match self {
            Protocol::Pml => Ok(signals),
            Protocol::Swarmcloud => {
                let api = zones.url(zone)?;
                Ok(std::iter::once(api.to_string()).chain(signals).collect())
            }
        }
    }
}

/// The policy each protocol starts with: its embedded one, but the default protocol's
/// from `policy_file` when given; why not, naming which.
pub fn starting_policies(
    engine: &PolicyEngine,
    default: Protocol,
    policy_file: Option<&std::path::Path>,
) -> Result<BTreeMap<Protocol, AdmittedPolicy>, String> {
    let mut policies = BTreeMap::new();
    for protocol in Protocol::ALL {
        let admitted = match policy_file {
            Some(path) if protocol == default => engine
                .admit_file(path)
                .map_err(|e| format!("policyFile {} was refused: {e}", path.display())),
            _ => engine
                .admit(protocol.embedded_policy(), "embedded")
                .map_err(|e| format!("the embedded {protocol} policy was refused: {e}")),
        }?;
        policies.insert(protocol, admitted);
    }
    Ok(policies)
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Protocol {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        Protocol::ALL.into_iter().find(|p| p.name() == text.trim()).ok_or_else(|| {
            let known: Vec<&str> = Protocol::ALL.iter().map(|p| p.name()).collect();
            format!("{text:?} is not a protocol; known: {}", known.join(", "))
        })
    }
}

/// The SwarmCloud tracker API of each `trackerZone`, as the SDK has them; `.env`'s
/// `trackerZones` adds zones or moves these.
pub const DEFAULT_TRACKER_ZONES: [(&str, &str); 3] = [
    ("eu", "https://eu.cdnbye.com/v1"),
    ("hk", "https://hk.swarmcloud.net/v1"),
    ("us", "https://us.hdtvcloud.com/v1"),
];

/// The zone of a seed that names none: the SDK's default.
pub const DEFAULT_ZONE: &str = "eu";

/// SwarmCloud tracker zones: name to the tracker API's base URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackerZones(BTreeMap<String, String>);

impl Default for TrackerZones {
    fn default() -> Self {
        TrackerZones(
            DEFAULT_TRACKER_ZONES.iter().map(|(z, u)| (z.to_string(), u.to_string())).collect(),
        )
    }
}

impl TrackerZones {
    /// The defaults with `zone=url,zone=url` over them; each URL `http(s)://`.
    pub fn parse(list: &str) -> Result<Self, String> {
        let mut zones = TrackerZones::default();
        for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let (zone, url) = entry
                .split_once('=')
                .map(|(z, u)| (z.trim(), u.trim()))
                .filter(|(z, u)| !z.is_empty() && !u.is_empty())
                .ok_or_else(|| format!("{entry:?} is not zone=url"))?;
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(format!("{url:?} (zone {zone}) is not an http:// or https:// URL"));
            }
            zones.0.insert(zone.to_string(), url.trim_end_matches('/').to_string());
        }
        Ok(zones)
    }

    /// The tracker API of `zone` (the default zone when empty).
    pub fn url(&self, zone: &str) -> Result<&str, String> {
        let zone = if zone.trim().is_empty() { DEFAULT_ZONE } else { zone.trim() };
        self.0.get(zone).map(String::as_str).ok_or_else(|| {
            let known: Vec<&str> = self.0.keys().map(String::as_str).collect();
            format!(
                "trackerZone {zone:?} is not known; known: {} (see trackerZones)",
                known.join(", ")
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zones_default_to_the_sdks_and_are_moved_by_the_key() {
        let zones =
            TrackerZones::parse("lab=http://127.0.0.1:9/v1/, hk=https://hk.example/v1").unwrap();
        assert_eq!(zones.url(""), Ok("https://eu.cdnbye.com/v1"));
        assert_eq!(zones.url("lab"), Ok("http://127.0.0.1:9/v1"));
        assert_eq!(zones.url("hk"), Ok("https://hk.example/v1"));
        assert!(zones.url("mars").unwrap_err().contains("lab"));
        for bad in ["lab", "=http://x", "lab=ws://x"] {
            assert!(TrackerZones::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn swarmcloud_workers_get_the_tracker_api_first_and_pml_workers_the_signals_alone() {
        let signals = vec!["ws://s/".to_string()];
        let zones = TrackerZones::default();
        assert_eq!(Protocol::Pml.trackers(signals.clone(), "mars", &zones), Ok(signals.clone()));
        assert_eq!(
            Protocol::Swarmcloud.trackers(signals, "us", &zones).unwrap(),
            ["https://us.hdtvcloud.com/v1", "ws://s/"]
        );
        assert_eq!("swarmcloud".parse(), Ok(Protocol::Swarmcloud));
        assert!("bittorrent".parse::<Protocol>().unwrap_err().contains("pml, swarmcloud"));
    }
}
