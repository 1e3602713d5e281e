//! The stream side of the seeder: the manifest and media playlists turned into streams
//! (renditions, one cache each) and swarms, the window of segments kept for each
//! (live and VOD), and the disk cache an earlier worker left.
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
        for listed in renditions(url, text) {
            let stream = self.streams.len();
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
            self.streams.push(Stream {
                playlist_url: listed.url.clone(),
                playlist_fetch: None,
                segments: BTreeMap::new(),
                sources: BTreeMap::new(),
                target_duration_ms: 0,
                newest: None,
                ended: false,
                changed: false,
                last_use: BTreeMap::new(),
                probe_from: None,
                probes_in_flight: 0,
                failed: BTreeMap::new(),
            });
            let fetch = self.fetch_text(listed.url, Fetch::Playlist(stream), out);
            self.streams[stream].playlist_fetch = Some(fetch);
            for swarm in new_swarms {
                log(&format!(
                    "joining the swarm of {} as p2p-media-loader {} names it: info hash {}, \
                     peer id {}",
                    playlist::without_query(&self.streams[stream].playlist_url),
                    swarm.identity.name(),
                    swarm.info_hash,
                    swarm.peer_id
                ));
                let index = self.swarms.len();
                self.swarms.push(swarm);
                for conn in open_trackers {
                    self.plan((index, *conn), random, out);
                }
            }
        }
    }

    pub(super) fn on_playlist(
        &mut self,
        index: usize,
        url: &str,
        text: &str,
        out: &mut Vec<Command>,
    ) {
        let media = playlist::parse_media(text, url);
        if media.segments.len() > playlist::MAX_SEGMENTS {
            // Read as a failed fetch: tried again later, never worked through.
            log(&format!(
                "playlist {} lists {} segments, more than the {} this policy reads",
                playlist::without_query(url),
                media.segments.len(),
                playlist::MAX_SEGMENTS
            ));
            self.streams[index].playlist_fetch = None;
            out.push(self.set_timer(Timer::Reload(index), RETRY_MS));
            return;
        }
        // Viewers tell live from VOD by `#EXT-X-ENDLIST` alone (an EVENT playlist is
        // live until it ends), and number segments accordingly.
        let live = !media.ended;
        let stream = &mut self.streams[index];
        stream.playlist_fetch = None;
        stream.target_duration_ms = ((media.target_duration * 1000.0) as u64).max(1000);
        stream.ended = media.ended;
        let newest = media.segments.last().map(|s| s.sequence);
        let grew = newest > stream.newest;
        stream.newest = newest.max(stream.newest);
        let wanted = wanted_segments(&media, live);
        // Segments that left the live window go from the cache.
        let keep: Vec<i64> = wanted.iter().map(|(id, ..)| *id).collect();
        let stale: Vec<(i64, Stored)> = stream
            .segments
            .iter()
            .filter(|(id, _)| live && !keep.contains(id))
            .map(|(id, s)| (*id, s.clone()))
            .collect();
        stream.failed.retain(|id, _| !live || keep.contains(id));
        for (id, stored) in stale {
            stream.changed = true;
            stream.segments.remove(&id);
            stream.sources.remove(&id);
            if let Stored::Ready { handle, .. } = stored {
                out.push(Command::Evict(handle));
            }
        }
        if !live {
            // What earlier workers cached is found by asking the disk cache, in batches.
            if stream.sources.is_empty() {
                stream.probe_from = Some(0);
            }
            // Every VOD segment can be asked for; only the start is fetched ahead.
            stream.sources = media
                .segments
                .into_iter()
                .enumerate()
                .map(|(i, s)| (i as i64, (s.uri, s.range)))
                .collect();
        }
        for (id, source) in wanted {
            self.ensure(index, id, source, live, out);
        }
        if live {
            let after_ms = live_reload_ms(self.streams[index].target_duration_ms, grew);
            out.push(self.set_timer(Timer::Reload(index), after_ms));
        }
    }

    /// Makes sure segment `id` is held or on its way: adopted if an earlier instance
    /// fetched it, else fetched once.
    pub(super) fn ensure(
        &mut self,
        index: usize,
        id: i64,
        (uri, range): Source,
        live: bool,
        out: &mut Vec<Command>,
    ) {
        let stream = &mut self.streams[index];
        if stream.segments.contains_key(&id) {
            return;
        }
        stream.sources.insert(id, (uri.clone(), range));
        if stream.failed.get(&id).is_some_and(|&(_, retry_at)| self.now_ms < retry_at) {
            return;
        }
        if let Some(ready) = self.orphans.remove(&(uri.clone(), range)) {
            stream.segments.insert(id, ready);
            stream.changed = true;
            return;
        }
        let fetch = self.id();
        self.fetches.insert(fetch, Fetch::Segment(index, id));
        let stream = &mut self.streams[index];
        stream.segments.insert(id, Stored::Fetching(fetch));
        stream.changed = true;
        out.push(Command::FetchSegment(FetchSegment {
            fetch,
            url: uri,
            range: range.map(|(start, end)| superpeer_guest::ByteRange { start, end }),
            tier: if live { CacheTier::Memory } else { CacheTier::Disk },
        }));
    }

    /// Asks the disk cache about the next batch of VOD segments once the last batch is
    /// answered; what it has is held (and announced) without asking the origin.
    pub(super) fn probe_disk_cache(&mut self, out: &mut Vec<Command>) {
        for index in 0..self.streams.len() {
            let budget = PROBE_BUDGET.saturating_sub(self.fetches.len());
            let stream = &self.streams[index];
            let (Some(from), 0) = (stream.probe_from, stream.probes_in_flight) else { continue };
            if budget == 0 {
                break;
            }
            // Segments an earlier instance held are taken back as they were.
            let held_before: Vec<(i64, Source)> = stream
                .sources
                .range(from..)
                .filter(|(id, source)| {
                    !stream.segments.contains_key(id) && self.orphans.contains_key(*source)
                })
                .map(|(id, source)| (*id, source.clone()))
                .collect();
            for (id, source) in held_before {
                if let Some(ready) = self.orphans.remove(&source) {
                    self.streams[index].segments.insert(id, ready);
                    self.streams[index].changed = true;
                }
            }
            let stream = &self.streams[index];
            let batch: Vec<(i64, Source)> = stream
                .sources
                .range(from..)
                .filter(|(id, _)| !stream.segments.contains_key(id))
                .take(budget)
                .map(|(id, source)| (*id, source.clone()))
                .collect();
            let next = batch.last().and_then(|(last, _)| stream.sources.range(last + 1..).next());
            let next = next.map(|(id, _)| *id);
            for (id, (url, range)) in batch {
                let fetch = self.id();
                self.fetches.insert(fetch, Fetch::Probe(index, id));
                let stream = &mut self.streams[index];
                stream.segments.insert(id, Stored::Probing(fetch));
                stream.probes_in_flight += 1;
                out.push(Command::FetchSegment(FetchSegment {
                    fetch,
                    url,
                    range: range.map(|(start, end)| superpeer_guest::ByteRange { start, end }),
                    tier: CacheTier::DiskIfCached,
                }));
            }
            self.streams[index].probe_from = next;
        }
    }

    /// A VOD viewer asked for `id`: fetch it and the next few, and keep at most
    /// [`VOD_HELD`] segments, dropping the least recently asked for.
    pub(super) fn vod_demand(&mut self, index: usize, id: i64, out: &mut Vec<Command>) {
        self.uses += 1;
        let now = self.uses;
        let stream = &mut self.streams[index];
        // Ids the playlist does not list (a viewer may ask for anything) are not kept.
        if !stream.sources.contains_key(&id) {
            return;
        }
        stream.last_use.insert(id, now);
        let ahead: Vec<(i64, Source)> = (id..id + VOD_PREFETCH as i64)
            .filter_map(|n| stream.sources.get(&n).map(|s| (n, s.clone())))
            .collect();
        for (n, source) in ahead {
            if self.streams[index].segments.contains_key(&n) {
                continue;
            }
            let before = out.len();
            self.ensure(index, n, source, false, out);
            // One origin fetch per request at most: a viewer asking all over the stream
            // must not make superpeer fetch ahead of every place it asks. A viewer
            // watching on asks once per segment, which keeps the fetches ahead of it.
            if out[before..].iter().any(|c| matches!(c, Command::FetchSegment(_))) {
                break;
            }
        }
        // The disk cache has a cap of its own, which the host enforces; only memory is
        // the policy's to bound.
        let in_memory =
            |s: &Stored| !matches!(s, Stored::Ready { on_disk: true, .. } | Stored::Probing(_));
        while self.streams[index].segments.values().filter(|s| in_memory(s)).count() > VOD_HELD {
            if !self.evict_least_used(index, id..id + VOD_PREFETCH as i64, out) {
                break;
            }
        }
    }

    /// Evicts the segment of stream `index` held in memory that was used longest ago,
    /// other than those in `keep`; false if there is none.
    pub(super) fn evict_least_used(
        &mut self,
        index: usize,
        keep: std::ops::Range<i64>,
        out: &mut Vec<Command>,
    ) -> bool {
        let stream = &mut self.streams[index];
        let oldest = stream
            .segments
            .iter()
            .filter_map(|(n, s)| match s {
                Stored::Ready { on_disk: false, handle, .. } if !keep.contains(n) => {
                    Some((*n, *handle))
                }
                _ => None,
            })
            .min_by_key(|(n, _)| stream.last_use.get(n).copied().unwrap_or(0));
        let Some((n, handle)) = oldest else { return false };
        stream.segments.remove(&n);
        stream.last_use.remove(&n);
        stream.changed = true;
        out.push(Command::Evict(handle));
        true
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
            Timer::Reload(index) => self.reload(index, out),
            Timer::Reconnect(_) => {}
        }
    }

    /// Fetches a stream's playlist unless a fetch of it is on its way.
    pub(super) fn reload(&mut self, index: usize, out: &mut Vec<Command>) {
        if index < self.streams.len() && self.streams[index].playlist_fetch.is_none() {
            let url = self.streams[index].playlist_url.clone();
            let fetch = self.fetch_text(url, Fetch::Playlist(index), out);
            self.streams[index].playlist_fetch = Some(fetch);
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

/// The segments to hold, with the id viewers know them by: for live the media sequence
/// number (the newest [`LIVE_WINDOW`]), for VOD the position in the playlist (the first
/// [`VOD_PREFETCH`]).
pub(super) fn wanted_segments(media: &MediaPlaylist, live: bool) -> Vec<(i64, Source)> {
    if live {
        let skip = media.segments.len().saturating_sub(LIVE_WINDOW);
        media.segments[skip..]
            .iter()
            .map(|s| (s.sequence as i64, (s.uri.clone(), s.range)))
            .collect()
    } else {
        media
            .segments
            .iter()
            .take(VOD_PREFETCH)
            .enumerate()
            .map(|(i, s)| (i as i64, (s.uri.clone(), s.range)))
            .collect()
    }
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
