//! The stream side of the seeder: the manifest turned into renditions as viewers' players
//! list them, each a level of the shared segments part (which reads its playlist and
//! keeps its segments) and a swarm per generation of viewers.
//!
//! Pure: it only returns commands. It must never speak to a viewer; that is `peers.rs`.

use super::*;

impl Seeder {
    pub(super) fn on_manifest(
        &mut self,
        url: &str,
        text: &str,
        open_trackers: &[ConnId],
        random: &mut dyn FnMut() -> u64,
        out: &mut Vec<Command>,
    ) {
        if !self.swarms.is_empty() {
            return;
        }
        for (position, listed) in renditions(url, text).into_iter().enumerate() {
            // A scout reads no playlist and keeps no segment: its swarms name no level.
            let stream = if self.measuring.scout { position } else { self.streams.levels() };
            let mut new_swarms = Vec::new();
            for identity in self.identities.clone() {
                let index = match identity {
                    Identity::V23 => swarm::stream_short_id(&listed.rendition),
                    Identity::V22 => listed.position.to_string(),
                };
                let id = swarm::stream_swarm_id(&self.swarm_id, listed.kind, &index);
                let info_hash = identity.info_hash(&id);
                // Renditions a generation cannot tell apart share its swarm; the first
                // listed serves it.
                if self.swarms.iter().any(|s| s.info_hash == info_hash) {
                    continue;
                }
                new_swarms.push(Swarm {
                    stream,
                    identity,
                    info_hash,
                    peer_id: swarm::peer_id(identity, &mut *random),
                    announce_seconds: DEFAULT_ANNOUNCE_SECONDS,
                });
            }
            if new_swarms.is_empty() {
                continue;
            }
            let playlist_url = playlist::without_query(&listed.url).to_string();
            if !self.measuring.scout {
                self.streams(out, |streams, lend| streams.add_level(listed.url, lend));
            }
            for swarm in new_swarms {
                log(&format!(
                    "{} the swarm of {playlist_url} as p2p-media-loader {} names it: info \
                     hash {}, peer id {}",
                    if self.measuring.scout { "measuring" } else { "joining" },
                    swarm.identity.name(),
                    swarm.info_hash,
                    swarm.peer_id
                ));
                let index = self.swarms.len();
                self.swarms.push(swarm);
                // A scout scrapes every swarm at once, below, once all are known.
                let joining = if self.measuring.scout { &[][..] } else { open_trackers };
                for conn in joining {
                    self.plan((index, *conn), random, out);
                }
            }
        }
        if self.measuring.scout {
            for conn in open_trackers {
                self.plan((0, *conn), random, out);
            }
        }
    }

    /// One of the seeder's timers fired (trackers' reconnects are not the seeder's).
    pub(crate) fn on_timer(
        &mut self,
        key: Timer,
        open_trackers: &[ConnId],
        random: &mut dyn FnMut() -> u64,
        out: &mut Vec<Command>,
    ) {
        match key {
            Timer::Manifest => self.fetch_manifest(out),
            Timer::Reach => {
                for peer in self.reach.expire(self.now_ms) {
                    out.push(close(peer, reach::OFFER_UNANSWERED));
                }
                let stale: Vec<PeerId> = self
                    .answering
                    .iter()
                    .filter(|(_, a)| self.now_ms >= a.since_ms + ANSWERING_MS)
                    .map(|(peer, _)| *peer)
                    .collect();
                for peer in stale {
                    self.forget_peer(peer);
                    out.push(close(peer, "no answer was made"));
                }
                for swarm in 0..self.swarms.len() {
                    for conn in open_trackers {
                        self.plan((swarm, *conn), random, out);
                    }
                }
                out.push(self.set_timer(Timer::Reach, REACH_TICK_MS));
            }
            Timer::Reload(level) => self
                .streams(out, |streams, lend| streams.on_timer(StreamTimer::Reload(level), lend)),
            Timer::Reconnect(_) => {}
        }
    }
}

/// The renditions of a manifest as viewers' players list them: the main levels (a media
/// playlist alone is one level with a bitrate of 0 and nothing else) and the audio
/// tracks with playlists of their own, each with its position in the player's list.
/// Audio carried inside the variants has no playlist of its own: viewers never load
/// segments in its swarm.
pub(super) fn renditions(url: &str, text: &str) -> Vec<Listed> {
    if !playlist::is_master(text) {
        let rendition = Rendition { bitrate: Some(0.0), ..Rendition::default() };
        return vec![Listed { kind: StreamKind::Main, rendition, position: 0, url: url.into() }];
    }
    let mut master = playlist::parse_master(text, url);
    // A master playlist lists a few renditions; one listing thousands is not worked
    // through (hls.js keeps its order, so the first are the same levels to viewers).
    master.variants.truncate(playlist::MAX_RENDITIONS);
    master.media.truncate(playlist::MAX_RENDITIONS);
    let variants = playable_variants(&master);
    let main = variants.iter().enumerate().map(|(position, v)| Listed {
        kind: StreamKind::Main,
        rendition: rendition_of_variant(v),
        position,
        url: v.uri.clone(),
    });
    let tracks: Vec<&playlist::Media> =
        master.media.iter().filter(|m| m.attribute("TYPE") == Some("AUDIO")).collect();
    // hls.js lists every audio track, of every group. When all have playlists and the
    // first level carries audio but names no group, it lists that audio first as a track
    // of its own ("main"), which moves the others one place.
    let first_level_audio = variants.first().is_some_and(|v| {
        v.attribute("AUDIO").is_none()
            && !split_codecs(v.attribute("CODECS").unwrap_or("")).1.is_empty()
    });
    let shift = usize::from(
        first_level_audio && !tracks.is_empty() && tracks.iter().all(|m| m.uri.is_some()),
    );
    let audio = tracks.iter().enumerate().filter_map(|(position, m)| {
        Some(Listed {
            kind: StreamKind::Secondary,
            rendition: rendition_of_audio(&master, m),
            position: position + shift,
            url: m.uri.clone()?,
        })
    });
    main.chain(audio).collect()
}

/// A variant's attributes as hls.js 1.6/1.7 reports them for a level (`LevelParsed`,
/// after its level controller has run): the bitrate is BANDWIDTH, else
/// AVERAGE-BANDWIDTH, read like `parseInt` (NaN when neither); the codecs are the video
/// ones among CODECS; RESOLUTION must be exactly `<w>x<h>`; FRAME-RATE and VIDEO-RANGE
/// are passed as written. A bitrate of exactly 0 drops everything else, as
/// p2p-media-loader does.
pub(crate) fn rendition_of_variant(variant: &playlist::Variant) -> Rendition {
    let bandwidth = |name| variant.attribute(name).map_or(f64::NAN, js_parse_int);
    let bitrate = match bandwidth("BANDWIDTH") {
        b if b.is_nan() || b == 0.0 => bandwidth("AVERAGE-BANDWIDTH"),
        b => b,
    };
    if bitrate == 0.0 {
        return Rendition { bitrate: Some(0.0), ..Rendition::default() };
    }
    let (width, height) = variant.attribute("RESOLUTION").and_then(resolution).unzip();
    let (video, _) = split_codecs(variant.attribute("CODECS").unwrap_or(""));
    Rendition {
        bitrate: Some(bitrate),
        codecs: (!video.is_empty()).then(|| video.join(",")),
        width,
        height,
        frame_rate: variant.attribute("FRAME-RATE").map(String::from),
        video_range: variant.attribute("VIDEO-RANGE").map(String::from),
        ..Rendition::default()
    }
}

/// An audio rendition as hls.js reports it for an audio track: its codec is the audio
/// codec of the first variant of its group (else of the first variant); its name falls
/// back to its language.
pub(crate) fn rendition_of_audio(
    master: &playlist::MasterPlaylist,
    media: &playlist::Media,
) -> Rendition {
    let group = media.attribute("GROUP-ID");
    let variant = master
        .variants
        .iter()
        .find(|v| group.is_some() && v.attribute("AUDIO") == group)
        .or_else(|| master.variants.first());
    let audio =
        variant.map(|v| split_codecs(v.attribute("CODECS").unwrap_or("")).1).unwrap_or_default();
    let language = media.attribute("LANGUAGE").filter(|l| !l.is_empty());
    Rendition {
        bitrate: Some(0.0),
        codecs: (!audio.is_empty()).then(|| audio.join(",")),
        language: language.map(String::from),
        channels: media.attribute("CHANNELS").map(String::from),
        name: media.attribute("NAME").filter(|n| !n.is_empty()).or(language).map(String::from),
        ..Rendition::default()
    }
}

/// The variants viewers will play: hls.js drops variants with a codec it does not know
/// when some variant has only codecs it knows.
pub(crate) fn playable_variants(master: &playlist::MasterPlaylist) -> Vec<&playlist::Variant> {
    let known =
        |v: &&playlist::Variant| split_codecs_all(v.attribute("CODECS").unwrap_or("")).2.is_empty();
    let known_count = master.variants.iter().filter(known).count();
    if known_count > 0 && known_count < master.variants.len() {
        master.variants.iter().filter(known).collect()
    } else {
        master.variants.iter().collect()
    }
}

/// `parseInt(text, 10)` as JavaScript reads it: leading digits, NaN if none.
pub(super) fn js_parse_int(text: &str) -> f64 {
    let text = text.trim_start();
    let (sign, digits) = match text.as_bytes().first() {
        Some(b'-') => (-1.0, &text[1..]),
        Some(b'+') => (1.0, &text[1..]),
        _ => (1.0, text),
    };
    let end = digits.find(|c: char| !c.is_ascii_digit()).unwrap_or(digits.len());
    digits[..end].parse::<f64>().map_or(f64::NAN, |n| sign * n)
}

/// `RESOLUTION` as hls.js reads it: `^(\d+)x(\d+)$`.
pub(super) fn resolution(text: &str) -> Option<(u64, u64)> {
    let (w, h) = text.split_once('x')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    (digits(w) && digits(h)).then(|| Some((w.parse().ok()?, h.parse().ok()?)))?
}

/// hls.js's split of a CODECS list into video and audio codecs (by the first four
/// characters of each, case-sensitive).
pub(super) fn split_codecs(codecs: &str) -> (Vec<String>, Vec<String>) {
    let (video, audio, _) = split_codecs_all(codecs);
    (video, audio)
}

pub(super) fn split_codecs_all(codecs: &str) -> (Vec<String>, Vec<String>, Vec<String>) {
    const VIDEO: &[&str] = &[
        "avc1", "avc2", "avc3", "avc4", "avcp", "av01", "drac", "dva1", "dvav", "dvh1", "dvhe",
        "encv", "hev1", "hvc1", "mjp2", "mp4v", "mvc1", "mvc2", "mvc3", "mvc4", "resv", "rv60",
        "s263", "svc1", "svc2", "vc-1", "vp08", "vp09",
    ];
    const AUDIO: &[&str] = &[
        "a3ds", "ac-3", "ac-4", "alac", "alaw", "dra1", "dts+", "dts-", "dtsc", "dtse", "dtsh",
        "ec-3", "enca", "fLaC", "flac", "g719", "g726", "m4ae", "mha1", "mha2", "mhm1", "mhm2",
        "mlpa", "mp4a", "raw ", "Opus", "opus", "samr", "sawb", "sawp", "sevc", "sqcp", "ssmv",
        "twos", "ulaw",
    ];
    let (mut video, mut audio, mut unknown) = (Vec::new(), Vec::new(), Vec::new());
    for codec in codecs.split([' ', ',']).filter(|c| !c.is_empty()) {
        let head = codec.get(..4).unwrap_or(codec);
        let name = codec.split('/').next().unwrap_or(codec).to_string();
        if VIDEO.contains(&head) {
            video.push(name);
        } else if AUDIO.contains(&head) {
            audio.push(name);
        } else {
            unknown.push(name);
        }
    }
    (video, audio, unknown)
}
