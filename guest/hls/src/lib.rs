//! HLS playlists as far as a seeder needs them, whatever protocol its viewers speak:
//! the renditions of a master playlist and the segments of a media playlist, with URIs
//! resolved against the playlist's URL.
//!
//! Pure and forgiving like players are: unknown tags are skipped; what cannot be used
//! (a variant without a URI, a segment without a duration) is left out. It must never
//! know a protocol's identities or wire formats: those are each guest's own.

/// An `#EXT-X-STREAM-INF` variant.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Variant {
    pub uri: String,
    /// Every attribute, as written (quotes removed).
    pub attributes: Vec<(String, String)>,
}

/// An `#EXT-X-MEDIA` rendition.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Media {
    /// Absent for renditions carried inside the variants.
    pub uri: Option<String>,
    pub attributes: Vec<(String, String)>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct MasterPlaylist {
    pub variants: Vec<Variant>,
    pub media: Vec<Media>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Segment {
    /// Position in the stream: the media sequence number.
    pub sequence: u64,
    pub uri: String,
    pub duration: f64,
    /// `[start, end)` when only part of the resource is the segment.
    pub range: Option<(u64, u64)>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct MediaPlaylist {
    pub target_duration: f64,
    pub media_sequence: u64,
    pub segments: Vec<Segment>,
    /// `#EXT-X-ENDLIST` seen: nothing will be added (VOD, or a live stream that ended).
    pub ended: bool,
}

impl Variant {
    pub fn attribute(&self, name: &str) -> Option<&str> {
        find(&self.attributes, name)
    }
}

impl Media {
    pub fn attribute(&self, name: &str) -> Option<&str> {
        find(&self.attributes, name)
    }
}

fn find<'a>(attributes: &'a [(String, String)], name: &str) -> Option<&'a str> {
    attributes.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// A media playlist of 2 s segments `seg<n>.ts`, numbered from `first`, ended (a VOD)
/// or not (live): what the tests of every crate that reads playlists feed it.
pub fn example_media(first: u64, count: u64, ended: bool) -> String {
    let mut text = format!("#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:{first}\n");
    for n in first..first + count {
        text.push_str(&format!("#EXTINF:2,\nseg{n}.ts\n"));
    }
    if ended {
        text.push_str("#EXT-X-ENDLIST\n");
    }
    text
}

/// The most segments a media playlist may list: one listing more is not read (the host
/// also caps a playlist's size). A day of 6-second segments is 14,400.
pub const MAX_SEGMENTS: usize = 20_000;
/// The most variants, and audio renditions, read from a master playlist.
pub const MAX_RENDITIONS: usize = 64;

/// Whether a playlist is a master playlist (it lists variants).
pub fn is_master(text: &str) -> bool {
    text.lines().any(|l| l.trim_start().starts_with("#EXT-X-STREAM-INF"))
}

pub fn parse_master(text: &str, base: &str) -> MasterPlaylist {
    let mut master = MasterPlaylist::default();
    let mut pending: Option<Vec<(String, String)>> = None;
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if let Some(list) = line.strip_prefix("#EXT-X-STREAM-INF:") {
            pending = Some(attributes(list));
        } else if let Some(list) = line.strip_prefix("#EXT-X-MEDIA:") {
            let attributes = attributes(list);
            let uri = find(&attributes, "URI").map(|u| resolve(base, u));
            master.media.push(Media { uri, attributes });
        } else if !line.starts_with('#')
            && let Some(attributes) = pending.take()
        {
            master.variants.push(Variant { uri: resolve(base, line), attributes });
        }
    }
    master
}

pub fn parse_media(text: &str, base: &str) -> MediaPlaylist {
    let resolver = Resolver::new(base);
    let mut playlist = MediaPlaylist::default();
    let mut duration: Option<f64> = None;
    let mut range: Option<(u64, Option<u64>)> = None;
    // `#EXT-X-BYTERANGE` without an offset continues from the previous range's end.
    let mut next_offset = 0u64;
    let mut sequence = None;
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if let Some(value) = line.strip_prefix("#EXT-X-TARGETDURATION:") {
            playlist.target_duration = value.trim().parse().unwrap_or(0.0);
        } else if let Some(value) = line.strip_prefix("#EXT-X-MEDIA-SEQUENCE:") {
            playlist.media_sequence = value.trim().parse().unwrap_or(0);
        } else if let Some(value) = line.strip_prefix("#EXTINF:") {
            duration = value.split(',').next().and_then(|d| d.trim().parse().ok());
        } else if let Some(value) = line.strip_prefix("#EXT-X-BYTERANGE:") {
            let mut parts = value.trim().splitn(2, '@');
            let length = parts.next().and_then(|l| l.parse().ok());
            let offset = parts.next().and_then(|o| o.parse().ok());
            range = length.map(|l| (l, offset));
        } else if line.starts_with("#EXT-X-ENDLIST") {
            playlist.ended = true;
        } else if !line.starts_with('#') {
            let number = *sequence.get_or_insert(playlist.media_sequence);
            sequence = Some(number + 1);
            let segment_range = range.take().map(|(length, offset)| {
                let start = offset.unwrap_or(next_offset);
                next_offset = start + length;
                (start, start + length)
            });
            if let Some(duration) = duration.take() {
                playlist.segments.push(Segment {
                    sequence: number,
                    uri: resolver.resolve(line),
                    duration,
                    range: segment_range,
                });
            }
        }
    }
    playlist
}

/// Parses an attribute list: `NAME=value` pairs, values quoted or not, commas inside
/// quotes kept.
pub fn attributes(list: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = list.trim();
    while !rest.is_empty() {
        let Some((name, after)) = rest.split_once('=') else { break };
        let (value, remaining) = match after.strip_prefix('"') {
            Some(quoted) => match quoted.split_once('"') {
                Some((value, tail)) => (value, tail),
                None => (quoted, ""),
            },
            None => after.split_once(',').map_or((after, ""), |(v, t)| (v, t)),
        };
        out.push((name.trim().to_string(), value.to_string()));
        rest = remaining.trim_start_matches(',').trim_start();
    }
    out
}

/// A URL as a log line may show it: without its query or fragment, which may carry
/// credentials or signatures.
pub fn without_query(url: &str) -> &str {
    url.split(['?', '#']).next().unwrap_or("")
}

/// Resolves many references against one base: the base's directory is worked out once,
/// and a plain relative name (no dot segments, no query of the base to drop) is one
/// concatenation. A media playlist lists thousands of those.
struct Resolver<'a> {
    base: &'a str,
    /// The base up to and including the last `/` of its path, when it has a path.
    directory: Option<&'a str>,
}

impl<'a> Resolver<'a> {
    fn new(base: &'a str) -> Resolver<'a> {
        let directory = base.find("://").and_then(|scheme_end| {
            let path_start = scheme_end + 3 + base[scheme_end + 3..].find('/')?;
            let path_end =
                base[path_start..].find(['?', '#']).map_or(base.len(), |i| path_start + i);
            let last_slash = base[path_start..path_end].rfind('/')?;
            Some(&base[..=path_start + last_slash])
        });
        Resolver { base, directory }
    }

    fn resolve(&self, reference: &str) -> String {
        let plain = !reference.contains("://")
            && !reference.starts_with(['/', '?', '#', '.'])
            && !reference.contains("/.");
        match self.directory {
            Some(directory) if plain => {
                let mut url = String::with_capacity(directory.len() + reference.len());
                url.push_str(directory);
                url.push_str(reference);
                url
            }
            _ => resolve(self.base, reference),
        }
    }
}

/// Resolves a URI reference against a base URL, as a browser would for http(s).
pub fn resolve(base: &str, reference: &str) -> String {
    if reference.contains("://") {
        return reference.to_string();
    }
    let Some(scheme_end) = base.find("://") else { return reference.to_string() };
    let after_scheme = &base[scheme_end + 3..];
    let authority_end =
        after_scheme.find(['/', '?', '#']).map_or(base.len(), |i| scheme_end + 3 + i);
    let origin = &base[..authority_end];
    if let Some(rest) = reference.strip_prefix("//") {
        return format!("{}//{rest}", &base[..scheme_end + 1]);
    }
    let (path, query) = if reference.starts_with('/') {
        (reference.to_string(), String::new())
    } else {
        let base_path = &base[authority_end..];
        let base_path = base_path.split(['?', '#']).next().unwrap_or("");
        let directory = base_path.rfind('/').map_or("/", |i| &base_path[..=i]);
        (format!("{directory}{reference}"), String::new())
    };
    let (path, reference_query) = match path.split_once('?') {
        Some((p, q)) => (p.to_string(), format!("?{q}")),
        None => (path, query),
    };
    let mut segments: Vec<&str> = Vec::new();
    for part in path.split('/').skip(1) {
        match part {
            "." => {}
            ".." => {
                segments.pop();
            }
            other => segments.push(other),
        }
    }
    let trailing = if path.ends_with("/.") || path.ends_with("/..") { "/" } else { "" };
    format!("{origin}/{}{trailing}{reference_query}", segments.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MASTER: &str = "#EXTM3U
#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID=\"aud\",NAME=\"English\",LANGUAGE=\"en\",CHANNELS=\"2\",URI=\"audio/en.m3u8\"
#EXT-X-STREAM-INF:BANDWIDTH=1400000,AVERAGE-BANDWIDTH=1280000,CODECS=\"avc1.4d401f,mp4a.40.2\",RESOLUTION=1280x720,FRAME-RATE=30.000,AUDIO=\"aud\"
720p/index.m3u8?token=1
#EXT-X-STREAM-INF:BANDWIDTH=800000,CODECS=\"avc1.4d401e,mp4a.40.2\",RESOLUTION=640x360
https://cdn.example/360p.m3u8
";

    #[test]
    fn reads_variants_and_media() {
        let master = parse_master(MASTER, "https://o.example/live/master.m3u8?x=1");
        assert!(is_master(MASTER));
        assert_eq!(master.variants.len(), 2);
        let hd = &master.variants[0];
        assert_eq!(hd.uri, "https://o.example/live/720p/index.m3u8?token=1");
        assert_eq!(hd.attribute("CODECS"), Some("avc1.4d401f,mp4a.40.2"));
        assert_eq!(hd.attribute("RESOLUTION"), Some("1280x720"));
        assert_eq!(hd.attribute("FRAME-RATE"), Some("30.000"));
        assert_eq!(master.variants[1].uri, "https://cdn.example/360p.m3u8");
        assert_eq!(master.media[0].uri.as_deref(), Some("https://o.example/live/audio/en.m3u8"));
        assert_eq!(master.media[0].attribute("NAME"), Some("English"));
    }

    #[test]
    fn reads_media_playlists_with_sequences_and_ranges() {
        let text = "#EXTM3U
#EXT-X-TARGETDURATION:4
#EXT-X-MEDIA-SEQUENCE:1041
#EXTINF:4.000,
seg1041.ts
#EXTINF:3.5,title
../other/seg1042.ts
#EXT-X-BYTERANGE:1000@0
#EXTINF:4,
all.ts
#EXT-X-BYTERANGE:500
#EXTINF:4,
all.ts
#EXT-X-ENDLIST
";
        let playlist = parse_media(text, "http://o.example/live/720p/index.m3u8");
        assert_eq!(
            (playlist.target_duration, playlist.media_sequence, playlist.ended),
            (4.0, 1041, true)
        );
        let sequences: Vec<u64> = playlist.segments.iter().map(|s| s.sequence).collect();
        assert_eq!(sequences, [1041, 1042, 1043, 1044]);
        assert_eq!(playlist.segments[1].uri, "http://o.example/live/other/seg1042.ts");
        assert_eq!(playlist.segments[1].duration, 3.5);
        assert_eq!(playlist.segments[2].range, Some((0, 1000)));
        assert_eq!(
            playlist.segments[3].range,
            Some((1000, 1500)),
            "continues where the last range ended"
        );
        assert!(!is_master(text));
    }

    #[test]
    fn resolves_like_a_browser() {
        let base = "https://o.example/a/b/c.m3u8?q=1";
        for (reference, expected) in [
            ("d.ts", "https://o.example/a/b/d.ts"),
            ("../d.ts", "https://o.example/a/d.ts"),
            ("./x/../d.ts", "https://o.example/a/b/d.ts"),
            ("/root.ts", "https://o.example/root.ts"),
            ("//cdn.example/x.ts", "https://cdn.example/x.ts"),
            ("http://other.example/y.ts", "http://other.example/y.ts"),
            ("d.ts?sig=2", "https://o.example/a/b/d.ts?sig=2"),
            ("../../../../d.ts", "https://o.example/d.ts"),
        ] {
            assert_eq!(resolve(base, reference), expected, "{reference}");
        }
        assert_eq!(resolve("http://h:8080", "x.ts"), "http://h:8080/x.ts");
    }

    #[test]
    fn the_fast_resolver_agrees_with_the_full_one() {
        let references = [
            "d.ts",
            "../d.ts",
            "./d.ts",
            "a/./b.ts",
            "a/../b.ts",
            "seg..ts",
            ".hidden",
            "a/.b",
            "/root.ts",
            "//cdn.example/x.ts",
            "http://o/y.ts",
            "d.ts?sig=2#t",
            "?q",
            "#f",
            "",
            "a//b.ts",
            "a b.ts",
            "x:y.ts",
        ];
        for base in [
            "https://o.example/a/b/c.m3u8?q=1/x",
            "http://h:8080",
            "http://h:8080/",
            "https://o.example/a/b/#frag/z",
            "no scheme/at all",
        ] {
            let resolver = Resolver::new(base);
            for reference in references {
                assert_eq!(
                    resolver.resolve(reference),
                    resolve(base, reference),
                    "{base} {reference}"
                );
            }
        }
    }

    #[test]
    fn attribute_lists_keep_commas_in_quotes() {
        assert_eq!(
            attributes("A=1,B=\"x,y\",C=ok"),
            vec![("A".into(), "1".into()), ("B".into(), "x,y".into()), ("C".into(), "ok".into())]
        );
        assert_eq!(attributes("BROKEN"), vec![]);
        assert_eq!(attributes("A=\"unterminated"), vec![("A".into(), "unterminated".into())]);
    }
}
