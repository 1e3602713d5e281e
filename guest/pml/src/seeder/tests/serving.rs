//! Serving viewers and reaching swarms: requests, cancels, the VOD window around
//! viewers, offers of our own within the budget, identities.

use super::*;

#[test]
fn offers_that_never_connect_count_for_nothing_and_keep_no_real_viewer_out() {
    /// Hands `event` over (answering what it asks answered); the peers answered
    /// and how many closes it brought.
    fn take(seeder: &mut Seeder, event: &Event) -> (Vec<PeerId>, usize) {
        let mut out = Vec::new();
        seeder.handle(event, &[7], &mut random(), &mut out);
        let (mut answered, mut closed) = (Vec::new(), 0);
        for command in out {
            match command {
                Command::PeerAnswer(answer) => {
                    let sdp = "v=0".into();
                    let ready = Event::PeerAnswerReady(SdpReady { peer: answer.peer, sdp });
                    seeder.handle(&ready, &[7], &mut random(), &mut Vec::new());
                    answered.push(answer.peer);
                }
                Command::PeerClose(_) => closed += 1,
                _ => {}
            }
        }
        (answered, closed)
    }
    let (mut seeder, _) = started();
    let max = seeder.max_peers;
    let info_hash = seeder.swarms[0].info_hash.clone();
    let offer = |viewer: &str| {
        let text = format!(
            r#"{{"action":"announce","info_hash":"{info_hash}","peer_id":"{viewer}","offer_id":"o-{viewer}","offer":{{"type":"offer","sdp":"v=0"}}}}"#
        );
        Event::TrackerText(TrackerText { conn: 7, text })
    };
    // A flood: ten offers a second for a minute, none of which ever connects.
    let start = seeder.now_ms;
    let mut answered = 0;
    for n in 0..600u64 {
        seeder.begin_turn(start + n * 100);
        answered += take(&mut seeder, &offer(&format!("-PM0203-fake{n:08}"))).0.len();
        assert!(seeder.pending_peers().len() <= MAX_PENDING_PEERS);
    }
    assert!(answered > max, "offers beyond maxConnections are answered");
    assert_eq!(seeder.viewers_open(), 0, "nothing that never opened counts");
    // A burst faster than any tracker relays real viewers is cut short.
    let burst: usize = (0..1000u64)
        .map(|n| take(&mut seeder, &offer(&format!("-PM0203-burst{n:07}"))).0.len())
        .sum();
    assert!(burst <= OFFER_BURST as usize + 1, "{burst} of a burst answered");

    // Real viewers, during the flood: answered, and they open.
    seeder.begin_turn(start + 61_000);
    let mut real = |n: usize| {
        let (answered, _) = take(&mut seeder, &offer(&format!("-PM0203-real{n:08}")));
        let [peer] = answered[..] else { panic!("a real viewer not answered") };
        peer
    };
    let peers: Vec<PeerId> = (0..=max).map(&mut real).collect();
    // maxConnections holds where channels open: the one past it is closed.
    let closes: Vec<usize> =
        peers.iter().map(|peer| take(&mut seeder, &Event::PeerChannelOpen(*peer)).1).collect();
    assert_eq!(closes[..max].iter().sum::<usize>(), 0);
    assert_eq!(closes[max], 1, "an open channel past maxConnections stays");
    assert_eq!(seeder.viewers_open(), max);
}

#[test]
fn viewers_hear_what_is_cached_and_get_segments_served() {
    let (mut seeder, peer) = serving();
    let mut out = Vec::new();
    seeder.handle(&Event::PeerChannelOpen(peer), &[7], &mut random(), &mut out);
    assert_eq!(
        sent(&out),
        [PeerCommand::SegmentsAnnouncement { loaded: vec![100, 101, 102], loading: vec![] }]
    );

    out.clear();
    let request = PeerCommand::SegmentRequest { id: 101, request: 5, byte_from: Some(4) };
    seeder.handle(&message(peer, &request), &[7], &mut random(), &mut out);
    assert_eq!(
        sent(&out),
        [
            PeerCommand::SegmentData { id: 101, request: 5, size: 6 },
            PeerCommand::SegmentDataSendingCompleted { id: 101, request: 5 }
        ]
    );
    assert_eq!(
        out[1],
        Command::ServeSegment(superpeer_guest::ServeSegment {
            peer,
            handle: 51,
            offset: 4,
            message_size: superpeer_guest::MessageSize::AtMost(SEGMENT_CHUNK),
            end: one_message(&PeerCommand::SegmentDataSendingCompleted { id: 101, request: 5 }),
        }),
        "the bytes follow the header, from the offset asked for, and the end follows them"
    );

    // The host says when the bytes are out; the end is already queued behind them.
    out.clear();
    let sent_all = Event::SegmentSent(superpeer_guest::SegmentSent {
        peer,
        handle: 51,
        bytes: 6,
        complete: true,
    });
    seeder.handle(&sent_all, &[7], &mut random(), &mut out);
    assert!(sent(&out).is_empty());

    out.clear();
    let missing = PeerCommand::SegmentRequest { id: 999, request: 6, byte_from: None };
    seeder.handle(&message(peer, &missing), &[7], &mut random(), &mut out);
    assert_eq!(sent(&out), [PeerCommand::SegmentAbsent { id: 999, request: 6 }]);
}

#[test]
fn a_new_request_or_a_cancel_stops_the_serve_in_progress() {
    let (mut seeder, peer) = serving();
    seeder.handle(&Event::PeerChannelOpen(peer), &[7], &mut random(), &mut Vec::new());
    let mut out = Vec::new();
    let first = PeerCommand::SegmentRequest { id: 100, request: 1, byte_from: None };
    seeder.handle(&message(peer, &first), &[7], &mut random(), &mut out);
    out.clear();
    let second = PeerCommand::SegmentRequest { id: 102, request: 2, byte_from: None };
    seeder.handle(&message(peer, &second), &[7], &mut random(), &mut out);
    assert_eq!(out[0], Command::CancelServe(superpeer_guest::CancelServe { peer, handle: 50 }));
    out.clear();
    seeder.handle(
        &message(peer, &PeerCommand::CancelSegmentRequest { id: 102, request: 2 }),
        &[7],
        &mut random(),
        &mut out,
    );
    assert_eq!(out, [Command::CancelServe(superpeer_guest::CancelServe { peer, handle: 52 })]);
    // A late completion for the cancelled serve says nothing.
    out.clear();
    let late = Event::SegmentSent(superpeer_guest::SegmentSent {
        peer,
        handle: 52,
        bytes: 3,
        complete: false,
    });
    seeder.handle(&late, &[7], &mut random(), &mut out);
    assert!(out.is_empty());
}

#[test]
fn a_segment_gone_while_being_sent_is_reported_absent_at_once() {
    let (mut seeder, peer) = serving();
    seeder.handle(&Event::PeerChannelOpen(peer), &[7], &mut random(), &mut Vec::new());
    let ask = PeerCommand::SegmentRequest { id: 100, request: 4, byte_from: None };
    seeder.handle(&message(peer, &ask), &[7], &mut random(), &mut Vec::new());
    // The host found the copy it was serving gone: the serve ended short, then the
    // segment is evicted.
    let mut out = Vec::new();
    let short = superpeer_guest::SegmentSent { peer, handle: 50, bytes: 0, complete: false };
    seeder.handle(&Event::SegmentSent(short), &[7], &mut random(), &mut out);
    seeder.handle(&Event::SegmentEvicted(50), &[7], &mut random(), &mut out);
    assert_eq!(sent(&out), [PeerCommand::SegmentAbsent { id: 100, request: 4 }]);

    // Evicted alone while being served (the bytes still go, held by the host): said
    // absent as well, which the viewer ignores once it has the segment.
    let ask = PeerCommand::SegmentRequest { id: 101, request: 5, byte_from: None };
    seeder.handle(&message(peer, &ask), &[7], &mut random(), &mut Vec::new());
    out.clear();
    seeder.handle(&Event::SegmentEvicted(51), &[7], &mut random(), &mut out);
    assert_eq!(sent(&out), [PeerCommand::SegmentAbsent { id: 101, request: 5 }]);
}

#[test]
fn changes_are_announced_once_per_batch_and_garbage_closes_only_that_viewer() {
    let (mut seeder, peer) = serving();
    seeder.handle(&Event::PeerChannelOpen(peer), &[7], &mut random(), &mut Vec::new());
    let mut out = Vec::new();
    seeder.handle(&Event::SegmentEvicted(50), &[7], &mut random(), &mut out);
    seeder.handle(&Event::SegmentEvicted(51), &[7], &mut random(), &mut out);
    seeder.flush(&mut out);
    assert_eq!(
        sent(&out),
        [PeerCommand::SegmentsAnnouncement { loaded: vec![102], loading: vec![] }]
    );
    out.clear();
    seeder.flush(&mut out);
    assert!(out.is_empty(), "nothing changed since");

    let garbage =
        Event::PeerMessage(superpeer_guest::PeerMessage { peer, data: b"cstr\x09cend".to_vec() });
    seeder.handle(&garbage, &[7], &mut random(), &mut out);
    assert!(
        matches!(out.as_slice(), [Command::PeerClose(c)] if c.peer == peer && c.reason.contains("unknown command"))
    );
    assert_eq!(seeder.figures().2, 0);
}

#[test]
fn a_fetch_the_memory_budget_refused_makes_room_for_the_next_try() {
    let (mut seeder, peer, _) = vod_serving();
    let held = seeder.figures().1;
    let mut out = Vec::new();
    let far = PeerCommand::SegmentRequest { id: 100, request: 1, byte_from: None };
    seeder.handle(&message(peer, &far), &[7], &mut random(), &mut out);
    let [(fetch, _)] = segments(&out)[..] else { panic!("{out:?}") };
    out.clear();
    let refused = Event::FetchFailed(superpeer_guest::FetchFailed {
        fetch,
        status: Some(200),
        reason: "over the worker's memory budget of 41943040 bytes".into(),
    });
    seeder.handle(&refused, &[7], &mut random(), &mut out);
    assert_eq!(out.iter().filter(|c| matches!(c, Command::Evict(_))).count(), 1, "{out:?}");
    assert_eq!(seeder.figures().1, held - 1);
    // Other failures evict nothing.
    out.clear();
    seeder.handle(&message(peer, &far), &[7], &mut random(), &mut out);
    let [(fetch, _)] = segments(&out)[..] else { panic!("{out:?}") };
    out.clear();
    let failed = Event::FetchFailed(superpeer_guest::FetchFailed {
        fetch,
        status: Some(503),
        reason: "busy".into(),
    });
    seeder.handle(&failed, &[7], &mut random(), &mut out);
    assert!(!out.iter().any(|c| matches!(c, Command::Evict(_))), "{out:?}");
}

#[test]
fn what_earlier_workers_cached_on_disk_is_found_held_and_announced() {
    // The disk has every other segment; the rest are not cached.
    let (mut seeder, peer, _, batches) = vod_serving_with_disk(|n| n.is_multiple_of(2));
    let probes: Vec<&String> = batches.iter().flatten().collect();
    assert!(batches.len() > 1, "in batches");
    assert_eq!(probes.len(), 200 - VOD_PREFETCH, "each segment not held asked about once");
    assert!(!probes.iter().any(|u| u.ends_with("seg5.ts")), "held ones are not asked about");
    // Held and announced: the prefetched ones and every other one after them, beyond the
    // memory bound (the disk cache has its own).
    let PeerCommand::SegmentsAnnouncement { loaded, .. } = announcement(&seeder.streams, 0) else {
        unreachable!()
    };
    assert_eq!(loaded.len(), VOD_PREFETCH + 95);
    assert!(loaded.len() > VOD_HELD && loaded.contains(&196));
    // A viewer asking for one is served from it.
    let ask = PeerCommand::SegmentRequest { id: 196, request: 9, byte_from: None };
    let mut out = Vec::new();
    seeder.handle(&message(peer, &ask), &[7], &mut random(), &mut out);
    assert!(
        out.iter().any(|c| matches!(c, Command::ServeSegment(s) if s.handle == 5196)),
        "{out:?}"
    );
}

#[test]
fn vod_segments_are_fetched_where_viewers_ask_and_held_within_a_bound() {
    let (mut seeder, peer, mut handle) = vod_serving();
    assert_eq!(seeder.figures().1, VOD_PREFETCH);
    let mut out = Vec::new();
    let far = PeerCommand::SegmentRequest { id: 100, request: 1, byte_from: None };
    seeder.handle(&message(peer, &far), &[7], &mut random(), &mut out);
    assert_eq!(sent(&out), [PeerCommand::SegmentAbsent { id: 100, request: 1 }], "not held yet");
    let wanted: Vec<String> = segments(&out).into_iter().map(|(_, u)| u).collect();
    assert_eq!(wanted, ["http://o.example/vod/seg100.ts"], "one fetch for one request");
    store_all(&mut seeder, &out, &mut handle);
    // Watching on, asking for each segment once told it is held: each request
    // fetches the next one not held, so the fetches stay ahead of the viewer.
    for id in 100..110 {
        out.clear();
        let ask = PeerCommand::SegmentRequest { id, request: id, byte_from: None };
        seeder.handle(&message(peer, &ask), &[7], &mut random(), &mut out);
        assert_eq!(segments(&out).len(), 1, "request {id}");
        store_all(&mut seeder, &out, &mut handle);
    }
    assert!(seeder.streams.announced(0).any(|(id, _)| id == 110), "one ahead of the viewer");

    // Viewers all over the VOD: the held set stays bounded, evicting the least used.
    let mut evictions = 0;
    for request in 0..100 {
        out.clear();
        let ask = PeerCommand::SegmentRequest {
            id: (37 * request) % 200,
            request: 200 + request,
            byte_from: None,
        };
        seeder.handle(&message(peer, &ask), &[7], &mut random(), &mut out);
        assert!(segments(&out).len() <= 1, "one fetch per request at most");
        let in_memory = seeder.streams.announced(0).count();
        assert!(in_memory <= VOD_HELD, "{in_memory}");
        evictions += out.iter().filter(|c| matches!(c, Command::Evict(_))).count();
        store_all(&mut seeder, &out, &mut handle);
    }
    assert!(evictions > 0);
    // The segment just asked for is never the one evicted.
    assert!(seeder.streams.get(0, (37 * 99) % 200).is_some());
}

#[test]
fn segments_an_earlier_instance_fetched_are_adopted_not_fetched_again() {
    let mut seeder =
        Seeder::new(MANIFEST.into(), Some(MANIFEST.into()), 10, Settings::default(), false);
    let held = SegmentInfo {
        handle: 77,
        url: "http://o.example/live/seg101.ts".into(),
        range: None,
        size: 9,
        tier: CacheTier::Memory,
    };
    seeder.adopt(&[held], &mut Vec::new());
    let mut out = read_manifest(&mut seeder, MANIFEST, MASTER, &[]);
    let (playlist, url) = texts(&out)[0].clone();
    out.clear();
    seeder.handle(&fetched(playlist, &url, &media(100, 3, false)), &[], &mut random(), &mut out);
    let fetched_urls: Vec<String> = segments(&out).into_iter().map(|(_, u)| u).collect();
    assert_eq!(
        fetched_urls,
        ["http://o.example/live/seg100.ts", "http://o.example/live/seg102.ts"]
    );
    assert_eq!(seeder.streams.get(0, 101), Some(Held { handle: 77, size: 9 }));
}

#[test]
fn a_failed_manifest_is_fetched_again_later() {
    let mut seeder =
        Seeder::new(MANIFEST.into(), Some(MANIFEST.into()), 10, Settings::default(), false);
    let mut out = Vec::new();
    seeder.start(&mut out);
    let (manifest, _) = texts(&out)[0].clone();
    out.clear();
    let failed = Event::FetchFailed(superpeer_guest::FetchFailed {
        fetch: manifest,
        status: Some(503),
        reason: "busy".into(),
    });
    seeder.handle(&failed, &[], &mut random(), &mut out);
    assert_eq!(out, vec![timer_set(&seeder, Timer::Manifest, RETRY_MS)]);
    out.clear();
    fire(&mut seeder, Timer::Manifest, &[], &mut out);
    assert_eq!(texts(&out).len(), 1);
}

/// The vectors were computed with each package: real hls.js 1.6 parsed the
/// playlists and the real p2p-media-loader-hlsjs and -core (2.2.2, 2.3.1) registered
/// its streams with the tracker client.
#[test]
fn every_rendition_joins_each_generations_swarm_as_the_packages_compute_it() {
    let swarm_id = "https://example.com/vod/master.m3u8";
    let swarms = swarms_of(swarm_id, &format!("{swarm_id}?token=abc"), LADDER);
    let expected = [
        ("720p.m3u8", Identity::V23, "AnS0iQ+XnPQIi++JAPzZ"),
        ("720p.m3u8", Identity::V22, "0RTFWJuNQD8lA1boPJoS"),
        ("360p.m3u8", Identity::V23, "D4cJS/crA7kzsh28kPFX"),
        ("360p.m3u8", Identity::V22, "PP6oDmT7tqB6b5V9hvuE"),
        ("en.m3u8", Identity::V23, "p0OwFoXI6qK1t4uk8/xk"),
        ("en.m3u8", Identity::V22, "t5v5cTY4dyA1ZwpPghpB"),
        ("de.m3u8", Identity::V23, "A92qJz58tjuzH5F+A+Id"),
        ("de.m3u8", Identity::V22, "9abPF0qE/FqRSweqocA6"),
    ]
    .map(|(playlist, identity, hash)| (playlist.to_string(), identity, hash.to_string()));
    assert_eq!(swarms, expected);

    let alone = "https://example.com/vod/index.m3u8";
    assert_eq!(
        swarms_of(alone, alone, &media(0, 3, true)),
        [
            ("index.m3u8".to_string(), Identity::V23, "ph7Q4x8hlYriXawpglZd".to_string()),
            ("index.m3u8".to_string(), Identity::V22, "mI+2xx3zFrhIyaHh9Qj3".to_string()),
        ]
    );
}

#[test]
fn audio_carried_by_the_first_level_moves_the_tracks_of_2_2_one_place() {
    // As hls.js lists it: the variants carry audio but name no group, so the audio
    // tracks come after a track of the main level's own.
    let ladder = LADDER.replace(",AUDIO=\"aud\"", "");
    let swarm_id = "https://example.com/vod/master.m3u8";
    let swarms = swarms_of(swarm_id, swarm_id, &ladder);
    let v22 =
        |kind, index: &str| Identity::V22.info_hash(&swarm::stream_swarm_id(swarm_id, kind, index));
    let audio: Vec<&String> = swarms
        .iter()
        .filter(|(p, i, _)| p.ends_with("n.m3u8") || p == "de.m3u8" && *i == Identity::V22)
        .filter(|(_, i, _)| *i == Identity::V22)
        .map(|(_, _, hash)| hash)
        .collect();
    assert_eq!(
        audio,
        [&v22(StreamKind::Secondary, "1"), &v22(StreamKind::Secondary, "2")],
        "{swarms:?}"
    );
    assert_eq!(swarms[1].2, v22(StreamKind::Main, "0"), "levels keep their places");
    // 2.3 names audio by its attributes: unchanged.
    assert_eq!(swarms[4].2, "p0OwFoXI6qK1t4uk8/xk");
}

#[test]
fn a_seed_may_serve_one_generation_only() {
    let settings = Settings { identities: vec![Identity::V22], ..Settings::default() };
    let mut seeder = Seeder::new(MANIFEST.into(), Some(MANIFEST.into()), 10, settings, false);
    read_manifest(&mut seeder, MANIFEST, MASTER, &[]);
    assert_eq!(seeder.swarms.len(), 1);
    assert_eq!(seeder.swarms[0].identity, Identity::V22);
}

#[test]
fn reaches_viewers_with_offers_of_its_own_within_the_budget() {
    let settings = Settings { identities: vec![Identity::V23], ..Settings::default() };
    let mut seeder = Seeder::new(MANIFEST.into(), Some(MANIFEST.into()), 3, settings, false);
    let mut out = read_manifest(&mut seeder, MANIFEST, MASTER, &[]);
    let hash = seeder.swarms[0].info_hash.clone();

    // The tracker opens: offers at once (as many as could fill the budget of 3), and
    // the announce once the host has made them.
    out.clear();
    seeder.begin_turn(0);
    seeder.tracker_open(7, "ws://127.0.0.1:1/", &mut random(), &mut out);
    seeder.flush(&mut out);
    let offers = offers_in(&out);
    assert_eq!(offers.len(), 3, "{out:?}");
    assert!(tracker_json(&out).is_empty(), "the SDPs are not made yet");
    let ready: Vec<Event> = offers
        .iter()
        .map(|peer| Event::PeerOfferReady(SdpReady { peer: *peer, sdp: format!("sdp{peer}") }))
        .collect();
    let out = turn(&mut seeder, 10, &ready);
    let announce = tracker_json(&out).remove(0);
    assert_eq!(announce["event"], "started");
    assert_eq!(announce["numwant"], 3);
    assert_eq!(announce["info_hash"], hash.as_str());
    let offer_ids: Vec<String> = announce["offers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["offer_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(offer_ids.len(), 3);
    assert!(offer_ids.iter().all(|id| id.len() == 20));

    // The tracker counts five viewers. Viewer A answers twice (the tracker handed it
    // two of our offers): the second is withdrawn, never a second connection.
    let reply = format!(
        r#"{{"action":"announce","info_hash":"{hash}","interval":120,"complete":0,"incomplete":6}}"#
    );
    let a = "-PM0203-aaaaaaaaaaaa";
    let out = turn(
        &mut seeder,
        20,
        &[
            tracker_text(reply),
            answer_from(&hash, a, &offer_ids[0]),
            answer_from(&hash, a, &offer_ids[1]),
            offer_from(&hash, a),
        ],
    );
    assert_eq!(
        out.iter()
            .filter(|c| matches!(c, Command::PeerAcceptAnswer(a) if a.peer == offers[0]))
            .count(),
        1
    );
    assert_eq!(closed_in(&out), [(offers[1], "already connected to this viewer".to_string())]);
    assert!(!out.iter().any(|c| matches!(c, Command::PeerAnswer(_))), "A's own offer: ignored");

    // B answers, C offers: the budget of 3 is full; D's offer finds no room.
    let (b, c, d) = ("-PM0203-bbbbbbbbbbbb", "-PM0203-cccccccccccc", "-PM0203-dddddddddddd");
    let out = turn(&mut seeder, 30, &[answer_from(&hash, b, &offer_ids[2]), offer_from(&hash, c)]);
    assert!(out.iter().any(|c| matches!(c, Command::PeerAcceptAnswer(a) if a.peer == offers[2])));
    let Some(Command::PeerAnswer(to_c)) =
        out.iter().find(|c| matches!(c, Command::PeerAnswer(_))).cloned()
    else {
        panic!("C's offer is answered: {out:?}")
    };
    let ready = Event::PeerAnswerReady(SdpReady { peer: to_c.peer, sdp: "v=0".into() });
    turn(&mut seeder, 35, &[ready]);
    // Only open channels fill the budget.
    let opened = [offers[0], offers[2], to_c.peer].map(Event::PeerChannelOpen);
    turn(&mut seeder, 38, &opened);
    let out = turn(&mut seeder, 40, &[offer_from(&hash, d)]);
    assert!(out.is_empty(), "{out:?}");
    let out = tick(&mut seeder, 1_500, &[]);
    assert!(offers_in(&out).is_empty(), "no offers while the budget is full: {out:?}");

    // A leaves: a round of offers for the two viewers not reached; unanswered, they
    // are withdrawn after their time.
    let closed = Event::PeerClosed(PeerClosed { peer: offers[0], reason: "bye".into() });
    let out = tick(&mut seeder, 2_000, &[closed]);
    let again = offers_in(&out);
    assert!(!again.is_empty() && again.len() <= 10, "{out:?}");
    let ready: Vec<Event> = again
        .iter()
        .map(|peer| Event::PeerOfferReady(SdpReady { peer: *peer, sdp: "sdp".into() }))
        .collect();
    let out = turn(&mut seeder, 2_010, &ready);
    let announce = tracker_json(&out).remove(0);
    assert_eq!(announce.get("event"), None, "started only once");
    let expiry = 2_000 + reach::OFFER_TIMEOUT_MS;
    let out = tick(&mut seeder, expiry, &[]);
    let withdrawn: Vec<PeerId> = closed_in(&out).into_iter().map(|(p, _)| p).collect();
    assert_eq!(withdrawn.len(), again.len(), "{out:?}");
    assert!(again.iter().all(|p| withdrawn.contains(p)));
    // A's offer is answered again now that there is room.
    let out = turn(&mut seeder, expiry + 10, &[offer_from(&hash, a)]);
    assert!(out.iter().any(|c| matches!(c, Command::PeerAnswer(_))));
}

#[test]
fn viewers_of_every_generation_are_served_from_one_cache() {
    let (mut seeder, peer) = serving();
    seeder.handle(&Event::PeerChannelOpen(peer), &[7], &mut random(), &mut Vec::new());
    // A 2.2 viewer of the same rendition.
    let v22 = seeder.swarms[1].info_hash.clone();
    let mut out = Vec::new();
    seeder.handle(&offer_from(&v22, "-PM0202-zzzzzzzzzzzz"), &[7], &mut random(), &mut out);
    let Some(Command::PeerAnswer(answer)) = out.first().cloned() else { panic!("{out:?}") };
    let ready = Event::PeerAnswerReady(SdpReady { peer: answer.peer, sdp: "v=0".into() });
    out.clear();
    seeder.handle(&ready, &[7], &mut random(), &mut out);
    assert_eq!(tracker_json(&out)[0]["info_hash"], v22.as_str(), "answered in its swarm");
    out.clear();
    seeder.handle(&Event::PeerChannelOpen(answer.peer), &[7], &mut random(), &mut out);
    assert_eq!(
        sent(&out),
        [PeerCommand::SegmentsAnnouncement { loaded: vec![100, 101, 102], loading: vec![] }]
    );
    out.clear();
    let request = PeerCommand::SegmentRequest { id: 101, request: 1, byte_from: None };
    seeder.handle(&message(answer.peer, &request), &[7], &mut random(), &mut out);
    assert!(out.iter().any(|c| matches!(c, Command::ServeSegment(s) if s.handle == 51)));
    // A change reaches the viewers of both swarms.
    out.clear();
    seeder.handle(&Event::SegmentEvicted(50), &[7], &mut random(), &mut out);
    seeder.flush(&mut out);
    assert_eq!(sent(&out).len(), 2);
}

#[test]
fn a_vod_viewer_met_mid_stream_gets_what_follows_its_newest_segment() {
    let (mut seeder, peer, _) = vod_serving();
    let mut out = Vec::new();
    let has = PeerCommand::SegmentsAnnouncement { loaded: vec![40, 41, 42], loading: vec![43] };
    seeder.handle(&message(peer, &has), &[7], &mut random(), &mut out);
    let wanted: Vec<String> = segments(&out).into_iter().map(|(_, u)| u).collect();
    assert_eq!(wanted, ["http://o.example/vod/seg44.ts"], "one fetch for one message");
    // At the end of the stream there is nothing ahead to fetch.
    out.clear();
    let done = PeerCommand::SegmentsAnnouncement { loaded: vec![199], loading: vec![] };
    seeder.handle(&message(peer, &done), &[7], &mut random(), &mut out);
    assert!(segments(&out).is_empty());
}
