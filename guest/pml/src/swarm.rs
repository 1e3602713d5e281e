//! Swarm identity as p2p-media-loader computes it: the short id of each rendition, the
//! per-rendition swarm id, the 20-character info hash trackers know it by, and peer ids,
//! for each generation of viewers in use (2.3.x and 2.2.x).
//!
//! Pure functions; the inputs are the attributes of a rendition as the viewer's player
//! reports them (for hls.js: the master playlist's attributes as hls.js parses them).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use md5::Md5;
use serde::{Deserialize, Serialize};
use sha1::{Digest, Sha1};

/// p2p-media-loader's peer protocol generation, the first part of every swarm id.
const PROTOCOL: &str = "v2";
const PEER_ID_LENGTH: usize = 20;
const PEER_ID_SYMBOLS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

/// A rendition's attributes; `None` and empty mean "not given".
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Rendition {
    /// A JavaScript number: hls.js reports NaN for a variant without any bandwidth.
    pub bitrate: Option<f64>,
    pub codecs: Option<String>,
    pub width: Option<u64>,
    pub height: Option<u64>,
    pub language: Option<String>,
    pub channels: Option<String>,
    pub name: Option<String>,
    pub frame_rate: Option<String>,
    pub video_range: Option<String>,
}

/// The generation of p2p-media-loader a swarm is for. Both speak the same tracker and
/// wire protocols, but each names a rendition's swarm its own way, so viewers of one
/// never meet viewers of the other: a super peer serves each generation it joins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Identity {
    /// 2.3.x: a rendition is named by the SHA-1 of its attributes; the info hash is the
    /// first 15 bytes of the SHA-1 of the swarm id.
    V23,
    /// 2.2.x: a rendition is named by its position in the player's list; the info hash
    /// is bytes 1 to 15 of the MD5 of the swarm id.
    V22,
}

impl Identity {
    /// Every generation superpeer speaks, newest first.
    pub const ALL: [Identity; 2] = [Identity::V23, Identity::V22];

    /// The version as operators write it (`2.3`, `2.2`).
    pub fn name(self) -> &'static str {
        match self {
            Identity::V23 => "2.3",
            Identity::V22 => "2.2",
        }
    }

    /// Reads `2.3`, `v2.3`, `2.3.x` or a full version such as `2.3.1`.
    pub fn parse(text: &str) -> Option<Identity> {
        let text = text.trim().trim_start_matches(['v', 'V']);
        let mut parts = text.split('.');
        let (major, minor) = (parts.next()?, parts.next()?);
        let patch_ok = parts.next().is_none_or(|p| p == "x" || p.parse::<u32>().is_ok());
        if !patch_ok || parts.next().is_some() || major != "2" {
            return None;
        }
        match minor {
            "3" => Some(Identity::V23),
            "2" => Some(Identity::V22),
            _ => None,
        }
    }

    /// `-PM` + major and minor version, two digits each, as this generation's viewers
    /// start their peer ids.
    pub fn peer_id_prefix(self) -> &'static str {
        match self {
            Identity::V23 => "-PM0203-",
            Identity::V22 => "-PM0202-",
        }
    }

    /// The info hash a tracker knows a swarm by: base64 of 15 bytes of a digest of the
    /// swarm id, 20 ASCII characters.
    pub fn info_hash(self, stream_swarm_id: &str) -> String {
        match self {
            Identity::V23 => STANDARD.encode(&Sha1::digest(stream_swarm_id.as_bytes())[..15]),
            Identity::V22 => STANDARD.encode(&Md5::digest(stream_swarm_id.as_bytes())[1..]),
        }
    }
}

/// Main (video, or audio-only levels) or secondary (alternative audio) rendition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamKind {
    Main,
    Secondary,
}

impl StreamKind {
    fn as_str(self) -> &'static str {
        match self {
            StreamKind::Main => "main",
            StreamKind::Secondary => "secondary",
        }
    }
}

/// The rendition's short id: base64 of the SHA-1 of its normalised attributes.
pub fn stream_short_id(r: &Rendition) -> String {
    fn given(value: &Option<String>) -> Option<&str> {
        value.as_deref().filter(|s| !s.is_empty())
    }
    let codecs = given(&r.codecs).map_or(String::new(), |codecs| {
        let mut list: Vec<String> = codecs.split(',').map(normalise_codec).collect();
        list.sort();
        list.join(",")
    });
    let language = given(&r.language)
        .filter(|l| *l != "und")
        .map_or(String::new(), |l| l.chars().take(2).collect::<String>().to_lowercase());
    let channels = given(&r.channels).map_or("", |c| c.split('/').next().unwrap_or(""));
    let name = given(&r.name).map_or(String::new(), |n| n.to_lowercase().trim().to_string());
    let frame_rate = given(&r.frame_rate)
        .and_then(|f| f.trim().parse::<f64>().ok())
        .filter(|f| *f != 0.0 && f.is_finite())
        .map_or(String::new(), js_number);
    let video_range =
        given(&r.video_range).map_or(String::new(), |v| v.to_uppercase().trim().to_string());
    let number = |n: Option<u64>| n.map_or(String::new(), |n| n.to_string());
    let text = format!(
        "{}-{codecs}-{}-{}-{language}-{channels}-{name}-{frame_rate}-{video_range}",
        js_number(r.bitrate.unwrap_or(0.0)),
        number(r.width),
        number(r.height),
    );
    STANDARD.encode(Sha1::digest(text.as_bytes()))
}

/// Lower-cased and trimmed; a decimal avc1 profile and level (`avc1.66.30`) written as
/// the hexadecimal form (`avc1.42001e`).
fn normalise_codec(codec: &str) -> String {
    let codec = codec.trim().to_lowercase();
    let parts: Vec<&str> = codec.split('.').collect();
    if let [kind @ ("avc1" | "avc"), profile, level] = parts.as_slice()
        && let (Ok(p), Ok(l)) = (profile.parse::<u32>(), level.parse::<u32>())
        && p.to_string() == *profile
        && l.to_string() == *level
    {
        return format!("{kind}.{p:02x}00{l:02x}");
    }
    codec
}

/// How JavaScript writes the numbers that occur here (bitrates, frame rates): no
/// trailing zeros, no exponent, `NaN` for not-a-number.
fn js_number(value: f64) -> String {
    if value.is_nan() { "NaN".into() } else { format!("{value}") }
}

/// The swarm of one rendition: what viewers of the same stream and rendition share.
/// `index` is the rendition's short id (2.3) or its position (2.2).
pub fn stream_swarm_id(swarm_id: &str, kind: StreamKind, index: &str) -> String {
    format!("{PROTOCOL}-{swarm_id}-{}-{index}", kind.as_str())
}

/// A peer id as viewers of `identity` make them, from a source of random numbers.
pub fn peer_id(identity: Identity, mut random: impl FnMut() -> u64) -> String {
    random_text(identity.peer_id_prefix(), PEER_ID_LENGTH, random_symbols(&mut random))
}

/// `prefix` followed by letters and digits up to `length` characters.
pub fn random_text(prefix: &str, length: usize, symbols: impl Iterator<Item = char>) -> String {
    let mut text = String::from(prefix);
    text.extend(symbols.take(length.saturating_sub(prefix.len())));
    text
}

/// Letters and digits drawn from a source of random numbers, ten from each draw
/// (62^10 < 2^64): in a policy each draw is a call to the host, and a draw per symbol
/// made a round of 82 offers cost over three thousand of them.
pub fn random_symbols(random: &mut dyn FnMut() -> u64) -> impl Iterator<Item = char> + '_ {
    const PER_DRAW: u32 = 10;
    let base = PEER_ID_SYMBOLS.len() as u64;
    let (mut drawn, mut left) = (0u64, 0u32);
    std::iter::repeat_with(move || {
        if left == 0 {
            (drawn, left) = (random(), PER_DRAW);
        }
        let symbol = PEER_ID_SYMBOLS[(drawn % base) as usize];
        (drawn, left) = (drawn / base, left - 1);
        char::from(symbol)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_reference_vector() {
        let rendition = Rendition {
            bitrate: Some(1_280_000.0),
            codecs: Some("avc1.4d401f,mp4a.40.2".into()),
            width: Some(1280),
            height: Some(720),
            ..Rendition::default()
        };
        let short = stream_short_id(&rendition);
        assert_eq!(short, "tzlmPgIfzJMGRUP5SuF5+3K++94=");
        let swarm =
            stream_swarm_id("https://example.com/live/master.m3u8", StreamKind::Main, &short);
        assert_eq!(
            swarm,
            "v2-https://example.com/live/master.m3u8-main-tzlmPgIfzJMGRUP5SuF5+3K++94="
        );
        assert_eq!(Identity::V23.info_hash(&swarm), "G4P1wGSZYicnoIPenKa8");
    }

    #[test]
    fn normalises_like_the_reference() {
        let base = Rendition {
            bitrate: Some(1_280_000.0),
            width: Some(1280),
            height: Some(720),
            ..Rendition::default()
        };
        let with = |codecs: &str, frame_rate: Option<&str>| Rendition {
            codecs: Some(codecs.into()),
            frame_rate: frame_rate.map(Into::into),
            ..base.clone()
        };
        // Order, case, spaces and the decimal avc1 form do not change the id.
        assert_eq!(
            stream_short_id(&with("avc1.4d001f,mp4a.40.2", None)),
            stream_short_id(&with(" MP4A.40.2 , avc1.77.31", None))
        );
        assert_eq!(normalise_codec("avc1.66.30"), "avc1.42001e");
        assert_eq!(normalise_codec("avc1.066.30"), "avc1.066.30", "not the canonical decimal form");
        assert_eq!(
            stream_short_id(&with("avc1.4d401f", Some("30.000"))),
            stream_short_id(&with("avc1.4d401f", Some("30")))
        );
        assert_ne!(
            stream_short_id(&with("avc1.4d401f", Some("29.97"))),
            stream_short_id(&with("avc1.4d401f", None))
        );
        assert_eq!(js_number(29.97), "29.97");
        assert_eq!(js_number(30.0), "30");
        assert_eq!(js_number(f64::NAN), "NaN");
        assert_eq!(js_number(1_280_000.0), "1280000");
    }

    #[test]
    fn audio_attributes_normalise() {
        let audio = |lang: &str, channels: &str, name: &str| Rendition {
            codecs: Some("mp4a.40.2".into()),
            language: Some(lang.into()),
            channels: Some(channels.into()),
            name: Some(name.into()),
            ..Rendition::default()
        };
        assert_eq!(
            stream_short_id(&audio("ENG", "2/JOC", " English ")),
            stream_short_id(&audio("en-US", "2", "english"))
        );
        assert_eq!(stream_short_id(&audio("und", "", "")), stream_short_id(&audio("", "", "")));
    }

    #[test]
    fn peer_ids_have_the_viewers_shape() {
        for (identity, prefix) in [(Identity::V23, "-PM0203-"), (Identity::V22, "-PM0202-")] {
            let mut n = 0u64;
            let id = peer_id(identity, || {
                n += 7;
                n
            });
            assert_eq!(id.len(), 20);
            assert!(id.starts_with(prefix));
            assert!(id[8..].bytes().all(|b| b.is_ascii_alphanumeric()));
        }
    }

    /// Computed with p2p-media-loader-core 2.2.2 itself (`getStreamHash`, nano-md5),
    /// and for 2.3.1 with its own SHA-1.
    #[test]
    fn info_hashes_match_each_generation() {
        let base = "v2-https://example.com/vod/master.m3u8";
        for (suffix, hash) in [
            ("main-0", "0RTFWJuNQD8lA1boPJoS"),
            ("main-1", "PP6oDmT7tqB6b5V9hvuE"),
            ("secondary-0", "t5v5cTY4dyA1ZwpPghpB"),
            ("secondary-1", "9abPF0qE/FqRSweqocA6"),
        ] {
            assert_eq!(Identity::V22.info_hash(&format!("{base}-{suffix}")), hash, "{suffix}");
        }
        assert_eq!(
            Identity::V22.info_hash("v2-https://example.com/vod/index.m3u8-main-0"),
            "mI+2xx3zFrhIyaHh9Qj3"
        );
        assert_eq!(
            Identity::V23.info_hash(&format!("{base}-main-SPTQGUUMr97bYuyGLKSthp9Of5o=")),
            "AnS0iQ+XnPQIi++JAPzZ"
        );
    }

    #[test]
    fn identities_read_as_operators_write_them() {
        for (text, identity) in [
            ("2.3", Some(Identity::V23)),
            ("v2.3", Some(Identity::V23)),
            ("2.3.x", Some(Identity::V23)),
            ("2.3.1", Some(Identity::V23)),
            (" 2.2 ", Some(Identity::V22)),
            ("2.2.2", Some(Identity::V22)),
            ("2.1", None),
            ("3.0", None),
            ("2", None),
            ("2.3.1.4", None),
            ("", None),
        ] {
            assert_eq!(Identity::parse(text), identity, "{text:?}");
        }
        assert!(Identity::ALL.iter().all(|i| Identity::parse(i.name()) == Some(*i)));
    }
}
