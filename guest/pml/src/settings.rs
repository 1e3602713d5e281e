//! The seed settings this policy reads (the seed item's `settings`), checked once at
//! `init`: a bad value is an error that names the setting, so the seed is refused
//! instead of seeding something other than what the operator asked for.
//!
//! - `identities`: which generations of p2p-media-loader viewers to serve, a list such
//!   as `["2.3", "2.2"]` or the text `"2.3,2.2"` (the default: both). On a private
//!   tracker that bans an address for one unknown info hash (PeerTube's), name only the
//!   generation its site uses.
//! - `offersPerAnnounce`: how many offers of our own an announce carries: a number for
//!   every tracker, or an object of tracker URL to number with `"*"` for the others
//!   (default 10, at most 82). bittorrent-tracker forwards up to 82, aquatic_ws 10,
//!   wt-tracker 20; a tracker that gets more than it forwards drops the rest, and some
//!   refuse the announce.

use serde_json::Value;

use crate::reach::{MAX_OFFERS_PER_ANNOUNCE, OfferLimits};
use crate::swarm::Identity;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Never empty, no repeats, in the order given.
    pub identities: Vec<Identity>,
    pub offers: OfferLimits,
}

impl Default for Settings {
    fn default() -> Self {
        Settings { identities: Identity::ALL.to_vec(), offers: OfferLimits::default() }
    }
}

/// Reads the settings this policy knows; others are left to other policies.
pub fn parse(settings: &[(String, String)]) -> Result<Settings, String> {
    let mut parsed = Settings::default();
    for (key, value) in settings {
        match key.as_str() {
            "identities" => parsed.identities = identities(value)?,
            "offersPerAnnounce" => parsed.offers = offer_limits(value)?,
            _ => {}
        }
    }
    Ok(parsed)
}

/// A setting's value: JSON when it parses as JSON, else the text itself.
fn value(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_string()))
}

fn identities(text: &str) -> Result<Vec<Identity>, String> {
    let names: Vec<String> = match value(text) {
        Value::String(list) => list.split(',').map(str::to_string).collect(),
        // `2.2` on its own reads as a number.
        Value::Number(_) => vec![text.to_string()],
        Value::Array(items) => items
            .into_iter()
            .map(|item| match item {
                Value::String(name) => Ok(name),
                other => Err(format!("setting `identities`: {other} is not a version")),
            })
            .collect::<Result<_, _>>()?,
        other => return Err(format!("setting `identities`: {other} is not a list of versions")),
    };
    let mut identities = Vec::new();
    for name in names {
        let identity = Identity::parse(&name).ok_or_else(|| {
            format!(
                "setting `identities`: {:?} is not a p2p-media-loader version superpeer serves \
                 (it serves {})",
                name.trim(),
                Identity::ALL.map(Identity::name).join(", ")
            )
        })?;
        if !identities.contains(&identity) {
            identities.push(identity);
        }
    }
    if identities.is_empty() {
        return Err("setting `identities` names no version".into());
    }
    Ok(identities)
}

fn offer_limits(text: &str) -> Result<OfferLimits, String> {
    let count = |value: &Value, what: &str| -> Result<usize, String> {
        value
            .as_u64()
            .and_then(|n| usize::try_from(n).ok())
            .filter(|n| (1..=MAX_OFFERS_PER_ANNOUNCE).contains(n))
            .ok_or_else(|| {
                format!(
                    "setting `offersPerAnnounce`{what}: {value} is not a number from 1 to \
                     {MAX_OFFERS_PER_ANNOUNCE}"
                )
            })
    };
    match value(text) {
        Value::Object(by_tracker) => {
            let mut limits = OfferLimits::default();
            for (url, n) in &by_tracker {
                let n = count(n, &format!(" for {url:?}"))?;
                if url == "*" {
                    limits.default = Some(n);
                } else {
                    limits.by_url.push((url.clone(), n));
                }
            }
            Ok(limits)
        }
        Value::String(number) => count(&value(number.trim()), "")
            .map(|n| OfferLimits { default: Some(n), by_url: vec![] }),
        other => count(&other, "").map(|n| OfferLimits { default: Some(n), by_url: vec![] }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(key: &str, value: &str) -> Result<Settings, String> {
        parse(&[(key.to_string(), value.to_string())])
    }

    #[test]
    fn identities_default_to_both_and_may_name_one() {
        assert_eq!(parse(&[]).unwrap().identities, [Identity::V23, Identity::V22]);
        assert_eq!(with("identities", "2.2").unwrap().identities, [Identity::V22]);
        assert_eq!(with("identities", r#"["2.3"]"#).unwrap().identities, [Identity::V23]);
        assert_eq!(
            with("identities", "2.2, 2.3.x,2.2.2").unwrap().identities,
            [Identity::V22, Identity::V23]
        );
        let error = with("identities", "1.0").unwrap_err();
        assert!(error.contains("\"1.0\"") && error.contains("2.3, 2.2"), "{error}");
        assert!(with("identities", "[]").is_err());
        assert!(with("identities", "[2.3]").is_err(), "numbers are not versions");
        assert!(with("identities", "{}").is_err());
    }

    #[test]
    fn offers_per_announce_for_every_tracker_or_each() {
        assert_eq!(with("offersPerAnnounce", "82").unwrap().offers.for_url("wss://a"), 82);
        assert_eq!(with("offersPerAnnounce", "\"20\"").unwrap().offers.for_url("wss://a"), 20);
        let each = with("offersPerAnnounce", r#"{"wss://a.example": 82, "*": 5}"#).unwrap();
        assert_eq!(each.offers.for_url("wss://a.example/"), 82);
        assert_eq!(each.offers.for_url("wss://b.example"), 5);
        for bad in ["0", "83", "-1", "1.5", "many", r#"{"wss://a": 100}"#, "[1]"] {
            let error = with("offersPerAnnounce", bad).unwrap_err();
            assert!(error.contains("offersPerAnnounce"), "{bad}: {error}");
        }
        assert_eq!(with("unrelated", "x").unwrap(), Settings::default());
    }
}
