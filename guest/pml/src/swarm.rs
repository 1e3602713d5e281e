//! Swarm identity as p2p-media-loader 2.3 computes it: the short id of each rendition,
//! the per-rendition swarm id, the 20-character info hash trackers know it by, and
//! peer ids.
//!
//! Pure functions; the inputs are the attributes of a rendition as the viewer's player
//! reports them (for hls.js: the master playlist's attributes as hls.js parses them).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use sha1::{Digest, Sha1};

/// p2p-media-loader's peer protocol generation, the first part of every swarm id.
const PROTOCOL: &str = "v2";
/// `-PM` + major and minor version, two digits each: what 2.3.x viewers announce.
pub const PEER_ID_PREFIX: &str = "-PM0203-";
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
pub fn stream_swarm_id(swarm_id: &str, kind: StreamKind, short_id: &str) -> String {
    format!("{PROTOCOL}-{swarm_id}-{}-{short_id}", kind.as_str())
}

/// The info hash a tracker knows a rendition's swarm by: base64 of the first 15 bytes
/// of its SHA-1, 20 ASCII characters.
pub fn info_hash(stream_swarm_id: &str) -> String {
    STANDARD.encode(&Sha1::digest(stream_swarm_id.as_bytes())[..15])
}

/// A peer id as 2.3.x viewers make them, from a source of random numbers.
pub fn peer_id(mut random: impl FnMut() -> u64) -> String {
    let mut id = String::from(PEER_ID_PREFIX);
    while id.len() < PEER_ID_LENGTH {
        id.push(char::from(PEER_ID_SYMBOLS[(random() % PEER_ID_SYMBOLS.len() as u64) as usize]));
    }
    id
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
        assert_eq!(info_hash(&swarm), "G4P1wGSZYicnoIPenKa8");
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
        let mut n = 0u64;
        let id = peer_id(|| {
            n += 7;
            n
        });
        assert_eq!(id.len(), 20);
        assert!(id.starts_with("-PM0203-"));
        assert!(id[8..].bytes().all(|b| b.is_ascii_alphanumeric()));
    }
}
