//! The worker's WebRTC layer against a real WebRTC peer in the test (the `rtc` crate as
//! a browser would use it: it offers, opens the DataChannel, gathers no candidates
//! beyond its own host address), over real UDP sockets on 127.0.0.1.

// Helpers panic on purpose: a broken fixture should fail the test that uses it.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get;
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::sansio::Protocol;
use superpeer::dataplane::disk::{self, DiskCacheConfig};
use superpeer::dataplane::origin::OriginRules;
use superpeer::dataplane::{DataPlane, DataPlaneLimits, Driver, Input, IoEvent};
use superpeer::policy::wire::{
    CacheTier, CancelServe, Command, Event, FetchId, FetchSegment, MessageSize, PeerAcceptAnswer,
    PeerAnswer, PeerId, PeerSend, PeerSendText, SegmentHandle, SegmentSent, ServeSegment,
};
use tokio::sync::mpsc;
use viewer::Viewer;

#[path = "support/viewer.rs"]
mod viewer;

/// Runs both ends until `done` holds for what the worker's data plane reported.
async fn run_until(
    viewer: &mut Viewer,
    plane: &mut Driver,
    io: &mut mpsc::Receiver<IoEvent>,
    seen: &mut Vec<Event>,
    done: impl Fn(&Viewer, &[Event]) -> bool,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut buffer = vec![0u8; 65_536];
    while !done(viewer, seen) {
        viewer.flush();
        let viewer_timer = viewer.connection.poll_timeout().map(tokio::time::Instant::from_std);
        let plane_timer = plane.next_timeout().map(tokio::time::Instant::from_std);
        let next = [viewer_timer, plane_timer, Some(deadline)].into_iter().flatten().min().unwrap();
        tokio::select! {
            received = viewer.socket.recv_from(&mut buffer) => {
                let (len, from) = received.unwrap();
                viewer.receive(from, &buffer[..len]);
            }
            inputs = plane.next_inputs(io) => seen.extend(plane.handle(inputs)),
            () = tokio::time::sleep_until(next) => {
                assert!(tokio::time::Instant::now() < deadline, "timed out; events so far: {seen:?}");
                let _ = viewer.connection.handle_timeout(Instant::now());
                seen.extend(plane.handle([Input::Timeout]));
            }
        }
    }
}

/// A viewer offers, the data plane answers as `peer`, and both run until the
/// DataChannel is open at each end; the viewer and what the data plane reported.
async fn connect(
    plane: &mut Driver,
    io: &mut mpsc::Receiver<IoEvent>,
    peer: u64,
) -> (Viewer, Vec<Event>) {
    let (mut viewer, offer) = Viewer::new().await;
    let mut seen = plane
        .handle([Input::Command(Command::PeerAnswer(PeerAnswer { peer: PeerId(peer), offer }))]);
    let Some(Event::PeerAnswerReady(answer)) = seen.first().cloned() else { panic!("{seen:?}") };
    assert!(answer.sdp.contains("a=ice-lite"), "{}", answer.sdp);
    assert!(answer.sdp.contains("127.0.0.1"), "the answer carries the host candidate");
    viewer
        .connection
        .set_remote_description(Instant::now(), RTCSessionDescription::answer(answer.sdp).unwrap())
        .unwrap();
    run_until(&mut viewer, plane, io, &mut seen, |v, seen| {
        v.channel.is_some() && seen.contains(&Event::PeerChannelOpen(PeerId(peer)))
    })
    .await;
    (viewer, seen)
}

#[tokio::test]
async fn a_viewer_connects_exchanges_messages_and_receives_a_segment() {
    // A 300 kB segment in the store, fetched from a local origin.
    let segment: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let served = segment.clone();
    let app = Router::new().route("/s.ts", get(move || async move { served.clone() }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/s.ts", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let origins = OriginRules::new(Some(&url), Vec::new());
    let (mut plane, mut io) =
        Driver::new(DataPlaneLimits { origins, ..Default::default() }).unwrap();
    plane.handle([Input::Command(Command::FetchSegment(FetchSegment {
        fetch: FetchId(1),
        url,
        range: None,
        tier: CacheTier::Memory,
    }))]);
    let handle = loop {
        let happened = io.recv().await.unwrap();
        match plane.handle([Input::Io(happened)]).pop() {
            Some(Event::SegmentStored(stored)) => break stored.segment.handle,
            Some(Event::FetchFailed(failed)) => panic!("{failed:?}"),
            _ => {}
        }
    };

    let (mut viewer, mut seen) = connect(&mut plane, &mut io, 1).await;

    // Messages both ways.
    viewer.send(b"cstr\x01cend");
    seen.extend(plane.handle([Input::Command(Command::PeerSend(PeerSend {
        peer: PeerId(1),
        data: b"hello".to_vec(),
    }))]));
    // A text message arrives as a string, as a browser's `send(string)` sends one; the
    // bytes before it did not.
    seen.extend(plane.handle([Input::Command(Command::PeerSendText(PeerSendText {
        peer: PeerId(1),
        text: r#"{"event":"HAVE"}"#.into(),
    }))]));
    run_until(&mut viewer, &mut plane, &mut io, &mut seen, |v, seen| {
        v.received.iter().any(|m| m == b"hello")
            && !v.texts.is_empty()
            && seen.iter().any(|e| matches!(e, Event::PeerMessage(m) if m.data == b"cstr\x01cend"))
    })
    .await;
    assert_eq!(viewer.texts, [r#"{"event":"HAVE"}"#]);

    // A segment, streamed in DataChannel messages, byte for byte, then its end: the
    // message to the same peer right after the serve.
    viewer.received.clear();
    viewer.datagram_sizes.clear();
    let serve = |handle, offset, end: &[u8]| {
        Command::ServeSegment(ServeSegment {
            peer: PeerId(1),
            handle,
            offset,
            message_size: MessageSize::AtMost(16_000),
            end: Some(end.to_vec()),
        })
    };
    let send = |data: &[u8]| Command::PeerSend(PeerSend { peer: PeerId(1), data: data.to_vec() });
    seen.extend(plane.handle(Input::commands(vec![serve(handle, 1000, b"the end")])));
    let complete =
        Event::SegmentSent(SegmentSent { peer: PeerId(1), handle, bytes: 299_000, complete: true });
    run_until(&mut viewer, &mut plane, &mut io, &mut seen, |v, seen| {
        seen.contains(&complete) && v.received.last().is_some_and(|m| m == b"the end")
    })
    .await;
    let (end, bytes) = viewer.received.split_last().unwrap();
    assert_eq!(end, b"the end");
    assert!(bytes.iter().all(|m| m.len() <= 16_000));
    assert_eq!(bytes.concat(), segment[1000..]);
    // Messages are cut to whole packets: the segment's datagrams are all full but its
    // last (acknowledgements and the end are far smaller), so they leave in long GSO
    // batches. 16,000 bytes is 13.8 packets: cut where the policy asked, each
    // message would end with a datagram of a third size.
    let data_sizes: BTreeSet<usize> =
        viewer.datagram_sizes.iter().copied().filter(|&size| size > 300).collect();
    assert!(data_sizes.len() <= 2, "datagram sizes: {data_sizes:?}");
    let full = *data_sizes.last().unwrap();
    let full_datagrams = viewer.datagram_sizes.iter().filter(|&&size| size == full).count();
    assert!(full_datagrams >= 299_000 / full, "{full_datagrams} full datagrams of {full}");

    // Exactly: every message of that size but the last, for protocols that say how
    // many messages follow (never cut to packets).
    viewer.received.clear();
    let exactly = Command::ServeSegment(ServeSegment {
        peer: PeerId(1),
        handle,
        offset: 0,
        message_size: MessageSize::Exactly(64_000),
        end: None,
    });
    seen.extend(plane.handle(Input::commands(vec![exactly, send(b"after")])));
    run_until(&mut viewer, &mut plane, &mut io, &mut seen, |v, _| {
        v.received.last().is_some_and(|m| m == b"after")
    })
    .await;
    let sizes: Vec<usize> = viewer.received.iter().map(Vec::len).collect();
    assert_eq!(sizes, [64_000, 64_000, 64_000, 64_000, 44_000, 5]);

    // A serve cancelled part way stops there and its end is never sent; what was queued
    // after them still goes. So does what follows a serve of a segment not held.
    viewer.received.clear();
    seen.extend(plane.handle(Input::commands(vec![serve(handle, 0, b"the end"), send(b"next")])));
    seen.extend(
        plane.handle([Input::Command(Command::CancelServe(CancelServe {
            peer: PeerId(1),
            handle,
        }))]),
    );
    seen.extend(
        plane
            .handle(Input::commands(vec![serve(SegmentHandle(999), 0, b"the end"), send(b"last")])),
    );
    run_until(&mut viewer, &mut plane, &mut io, &mut seen, |v, _| {
        v.received.last().is_some_and(|m| m == b"last")
    })
    .await;
    assert!(!viewer.received.iter().any(|m| m == b"the end"), "an end without its bytes");
    let partial: usize = viewer.received.iter().filter(|m| m.len() > 4).map(Vec::len).sum();
    assert!(partial < 300_000, "cancelled before its last byte");
    assert!(viewer.received.iter().any(|m| m == b"next"));
    assert_eq!(plane.plane().counters().uploaded, 299_000 + 300_000 + partial as u64);
}

#[tokio::test]
async fn superpeer_offers_a_viewer_answers_and_the_data_channel_opens() {
    let (mut plane, mut io) = Driver::new(DataPlaneLimits::default()).unwrap();
    let mut seen = plane.handle([Input::Command(Command::PeerOffer(PeerId(3)))]);
    let Some(Event::PeerOfferReady(offer)) = seen.first().cloned() else { panic!("{seen:?}") };
    for line in ["a=ice-lite", "a=setup:actpass", "m=application", "127.0.0.1"] {
        assert!(offer.sdp.contains(line), "{line} missing from our offer: {}", offer.sdp);
    }
    assert_eq!(
        (plane.plane().offers_pending(), plane.plane().viewers()),
        (1, 0),
        "an offer is no viewer yet"
    );

    // The viewer answers as simple-peer does and takes the channel we opened.
    let (mut viewer, answer) = Viewer::answering(&offer.sdp).await;
    seen.extend(plane.handle([Input::Command(Command::PeerAcceptAnswer(PeerAcceptAnswer {
        peer: PeerId(3),
        answer,
    }))]));
    run_until(&mut viewer, &mut plane, &mut io, &mut seen, |v, seen| {
        v.channel.is_some() && seen.contains(&Event::PeerChannelOpen(PeerId(3)))
    })
    .await;
    assert_eq!((plane.plane().offers_pending(), plane.plane().viewers()), (0, 1));

    viewer.send(b"cstr\x01cend");
    seen.extend(plane.handle([Input::Command(Command::PeerSend(PeerSend {
        peer: PeerId(3),
        data: b"hi".to_vec(),
    }))]));
    run_until(&mut viewer, &mut plane, &mut io, &mut seen, |v, seen| {
        v.received.iter().any(|m| m == b"hi")
            && seen.iter().any(|e| matches!(e, Event::PeerMessage(m) if m.data == b"cstr\x01cend"))
    })
    .await;
}

#[tokio::test]
async fn an_offer_nobody_answers_is_dropped_and_a_bad_answer_closes_its_offer() {
    let limits =
        DataPlaneLimits { offer_timeout: Duration::from_millis(300), ..Default::default() };
    let (mut plane, mut io) = Driver::new(limits).unwrap();
    let mut seen = plane.handle([Input::Command(Command::PeerOffer(PeerId(1)))]);
    seen.extend(plane.handle([Input::Command(Command::PeerOffer(PeerId(2)))]));
    assert_eq!(plane.plane().offers_pending(), 2);
    let bad = PeerAcceptAnswer { peer: PeerId(2), answer: "v=0\r\nnonsense".into() };
    seen.extend(plane.handle([Input::Command(Command::PeerAcceptAnswer(bad))]));
    assert!(
        seen.iter().any(|e| matches!(e, Event::PeerClosed(c) if c.peer == PeerId(2))),
        "a bad answer closes its offer: {seen:?}"
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !seen.iter().any(|e| matches!(e, Event::PeerClosed(c) if c.peer == PeerId(1))) {
        let next = plane.next_timeout().map(tokio::time::Instant::from_std);
        assert!(next.is_some(), "an offer waiting for its answer has a deadline");
        tokio::select! {
            inputs = plane.next_inputs(&mut io) => seen.extend(plane.handle(inputs)),
            () = tokio::time::sleep_until(next.unwrap().min(deadline)) => {
                assert!(tokio::time::Instant::now() < deadline, "never dropped: {seen:?}");
                seen.extend(plane.handle([Input::Timeout]));
            }
        }
    }
    assert_eq!((plane.plane().offers_pending(), plane.plane().viewers()), (0, 0));
}

#[tokio::test]
async fn a_viewer_that_falls_silent_is_dropped_and_reported_closed() {
    let (mut plane, mut io) = Driver::new(DataPlaneLimits::default()).unwrap();
    let (viewer, mut seen) = connect(&mut plane, &mut io, 7).await;

    // The viewer vanishes without a word (a closed laptop, a lost network): nothing it
    // would send arrives any more. The data plane must notice by itself.
    drop(viewer);
    seen.clear();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    while !seen.iter().any(|e| matches!(e, Event::PeerClosed(c) if c.peer == PeerId(7))) {
        let next = plane.next_timeout().map(tokio::time::Instant::from_std);
        let next = next.map_or(deadline, |t| t.min(deadline));
        tokio::select! {
            inputs = plane.next_inputs(&mut io) => seen.extend(plane.handle(inputs)),
            () = tokio::time::sleep_until(next) => {
                assert!(tokio::time::Instant::now() < deadline, "never dropped; events: {seen:?}");
                seen.extend(plane.handle([Input::Timeout]));
            }
        }
    }
    assert_eq!(plane.plane().viewers(), 0);
}

#[tokio::test]
async fn a_new_address_is_taken_only_with_the_connections_password_and_a_few_per_viewer() {
    let (mut plane, mut io) = Driver::new(DataPlaneLimits::default()).unwrap();
    let (mut viewer, mut seen) = connect(&mut plane, &mut io, 1).await;
    assert_eq!(plane.plane().viewer_addresses(), 1);
    // Another viewer's answer tells what anyone on the tracker could learn: a ufrag.
    let (_, offer) = Viewer::new().await;
    let Some(Event::PeerAnswerReady(answer)) = plane
        .handle([Input::Command(Command::PeerAnswer(PeerAnswer { peer: PeerId(2), offer }))])
        .pop()
    else {
        panic!("no answer")
    };
    let ufrag = viewer::sdp_value(&answer.sdp, "a=ice-ufrag:").to_string();
    let password = viewer::sdp_value(&answer.sdp, "a=ice-pwd:").to_string();

    // Twenty thousand forged requests, each from an address of its own: none is taken.
    let datagram = |from, data: &[u8]| Input::Io(IoEvent::Datagram { from, data: data.into() });
    let forged = viewer::binding_request(&format!("{ufrag}:forger"), "not-the-password");
    for n in 0..20_000u32 {
        let [_, _, a, b] = n.to_be_bytes();
        let from = std::net::SocketAddr::from(([10, 9, a, b], 50_000));
        seen.extend(plane.handle([datagram(from, &forged)]));
    }
    assert_eq!(plane.plane().viewer_addresses(), 1, "forged STUN registered addresses");
    assert_eq!(plane.plane().forged_stun(), 20_000);

    // With the password, a connection still holds only a few addresses.
    for n in 0..100u8 {
        let from = std::net::SocketAddr::from(([10, 8, 0, n], 50_000));
        let genuine = viewer::binding_request(&format!("{ufrag}:{n}"), &password);
        seen.extend(plane.handle([datagram(from, &genuine)]));
    }
    assert!(
        plane.plane().viewer_addresses() <= 1 + 4,
        "{} addresses",
        plane.plane().viewer_addresses()
    );

    // The viewer that was there is served as before.
    seen.extend(plane.handle([Input::Command(Command::PeerSend(PeerSend {
        peer: PeerId(1),
        data: b"still".to_vec(),
    }))]));
    run_until(&mut viewer, &mut plane, &mut io, &mut seen, |v, _| {
        v.received.iter().any(|m| m == b"still")
    })
    .await;
}

#[tokio::test]
async fn a_viewer_that_does_not_read_is_closed_when_its_queue_is_full_and_others_are_served() {
    let (mut plane, mut io) = Driver::new(DataPlaneLimits::default()).unwrap();
    let (mut reader, mut seen) = connect(&mut plane, &mut io, 1).await;
    let (_stalled, more) = connect(&mut plane, &mut io, 2).await;
    seen.extend(more);

    // The stalled viewer acknowledges nothing more: what is sent to it piles up.
    let mut closed = Vec::new();
    for _ in 0..20_000 {
        let events = plane.handle([Input::Command(Command::PeerSend(PeerSend {
            peer: PeerId(2),
            data: vec![7; 1024],
        }))]);
        closed.extend(
            events.into_iter().filter(|e| matches!(e, Event::PeerClosed(c) if c.peer == PeerId(2))),
        );
        if !closed.is_empty() {
            break;
        }
    }
    let [Event::PeerClosed(close)] = closed.as_slice() else { panic!("never closed") };
    assert!(close.reason.contains("send queue full"), "{}", close.reason);
    assert_eq!(plane.plane().viewers(), 1);

    seen.extend(plane.handle([Input::Command(Command::PeerSend(PeerSend {
        peer: PeerId(1),
        data: b"fine".to_vec(),
    }))]));
    run_until(&mut reader, &mut plane, &mut io, &mut seen, |v, _| {
        v.received.iter().any(|m| m == b"fine")
    })
    .await;
}

/// Waits for the next segment the data plane reports stored.
async fn stored(plane: &mut Driver, io: &mut mpsc::Receiver<IoEvent>) -> SegmentHandle {
    loop {
        let happened = io.recv().await.unwrap();
        match plane.handle([Input::Io(happened)]).pop() {
            Some(Event::SegmentStored(stored)) => return stored.segment.handle,
            Some(Event::FetchFailed(failed)) => panic!("{failed:?}"),
            _ => {}
        }
    }
}

#[tokio::test]
async fn disk_segments_are_read_off_the_event_loop_and_keep_their_place_in_the_queue() {
    let dir = std::env::temp_dir().join(format!("superpeer-webrtc-disk-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    fn segment(n: u32) -> Vec<u8> {
        (0..300_000u32).map(|i| ((i + n) % 251) as u8).collect()
    }
    let app = Router::new().route(
        "/{n}",
        get(|axum::extract::Path(n): axum::extract::Path<u32>| async move { segment(n) }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let cache = DiskCacheConfig { dir: dir.clone(), max_bytes: 64 << 20 };
    let limits = DataPlaneLimits {
        origins: OriginRules::new(Some(&base), Vec::new()),
        disk_cache: Some(cache),
        ..Default::default()
    };
    let fetch = |fetch: u64, n: u32, tier| {
        Command::FetchSegment(FetchSegment {
            fetch: FetchId(fetch),
            url: format!("{base}/{n}"),
            range: None,
            tier,
        })
    };

    // Segments 1 and 2 fetched to disk by one worker, and served by the next, which
    // holds none of their bytes in memory. Segment 3 is in memory.
    {
        let (mut first, mut first_io) = Driver::new(limits.clone()).unwrap();
        first.handle(Input::commands(vec![
            fetch(1, 1, CacheTier::Disk),
            fetch(2, 2, CacheTier::Disk),
        ]));
        stored(&mut first, &mut first_io).await;
        stored(&mut first, &mut first_io).await;
    }
    let (mut plane, mut io) = Driver::new(limits).unwrap();
    plane.handle([Input::Command(fetch(1, 1, CacheTier::DiskIfCached))]);
    let one = stored(&mut plane, &mut io).await;
    plane.handle([Input::Command(fetch(2, 2, CacheTier::DiskIfCached))]);
    let two = stored(&mut plane, &mut io).await;
    plane.handle([Input::Command(fetch(3, 3, CacheTier::Memory))]);
    let three = stored(&mut plane, &mut io).await;
    let (mut first, mut seen) = connect(&mut plane, &mut io, 1).await;
    let (mut second, more) = connect(&mut plane, &mut io, 2).await;
    seen.extend(more);
    let serve = |peer, handle| {
        Command::ServeSegment(ServeSegment {
            peer,
            handle,
            offset: 0,
            message_size: MessageSize::AtMost(16_384),
            end: Some(b"end".to_vec()),
        })
    };
    let send = |peer, data: &[u8]| Command::PeerSend(PeerSend { peer, data: data.to_vec() });

    // Segment 2's file becomes a pipe nobody writes to yet: opening it blocks until
    // someone does. Were it read on the event loop, nothing would move again, so a
    // watchdog turns that hang into a failure.
    let file = dir.join(format!("{}.seg", disk::key(&format!("{base}/2"), None)));
    std::fs::remove_file(&file).unwrap();
    let made = std::process::Command::new("mkfifo").arg(&file).status().unwrap();
    assert!(made.success());
    let (returned, watched) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        if watched.recv_timeout(Duration::from_secs(60)) == Err(RecvTimeoutError::Timeout) {
            eprintln!("the event loop blocked on a disk read");
            std::process::exit(1);
        }
    });
    // A serve's end is sent after its last byte or not at all.
    let in_turn = |handle| {
        vec![send(PeerId(1), b"before"), serve(PeerId(1), handle), send(PeerId(1), b"after")]
    };
    seen.extend(plane.handle(Input::commands(in_turn(two))));
    returned.send(()).unwrap();

    // The loop goes on: the other viewer is sent a segment meanwhile, and the first
    // nothing that was queued behind the read.
    seen.extend(plane.handle(Input::commands(vec![serve(PeerId(2), three)])));
    let three_sent = Event::SegmentSent(SegmentSent {
        peer: PeerId(2),
        handle: three,
        bytes: 300_000,
        complete: true,
    });
    run_until(&mut second, &mut plane, &mut io, &mut seen, |v, seen| {
        seen.contains(&three_sent) && v.received.last().is_some_and(|m| m == b"end")
    })
    .await;
    assert_eq!(second.received.concat().len(), 300_000 + 3);
    run_until(&mut first, &mut plane, &mut io, &mut seen, |v, _| !v.received.is_empty()).await;
    assert_eq!(first.received, vec![b"before".to_vec()]);

    // What the pipe then gives is no cache file: segment 2 is dropped and reported
    // evicted, its serve ends unsent without its end, and what was queued after it goes.
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        let mut pipe = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
        let _ = pipe.write_all(&[0; 4096]);
    });
    let unsent =
        Event::SegmentSent(SegmentSent { peer: PeerId(1), handle: two, bytes: 0, complete: false });
    run_until(&mut first, &mut plane, &mut io, &mut seen, |v, seen| {
        v.received.last().is_some_and(|m| m == b"after")
            && seen.contains(&unsent)
            && seen.contains(&Event::SegmentEvicted(two))
    })
    .await;
    writer.join().unwrap();
    assert_eq!(first.received, vec![b"before".to_vec(), b"after".to_vec()]);

    // Segment 1 is read whole and goes out in its place: after what was queued before
    // it, before what was queued after it.
    first.received.clear();
    seen.extend(plane.handle(Input::commands(in_turn(one))));
    let one_sent = Event::SegmentSent(SegmentSent {
        peer: PeerId(1),
        handle: one,
        bytes: 300_000,
        complete: true,
    });
    run_until(&mut first, &mut plane, &mut io, &mut seen, |v, seen| {
        seen.contains(&one_sent) && v.received.last().is_some_and(|m| m == b"after")
    })
    .await;
    let received = &first.received;
    let bytes = &received[1..received.len() - 2];
    assert_eq!(received[0], b"before");
    assert_eq!(received[received.len() - 2..], [b"end".to_vec(), b"after".to_vec()]);
    assert_eq!(bytes.concat(), segment(1));
    assert_eq!(plane.plane().counters().uploaded, 600_000);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A viewer and a data plane joined by nothing but this test, on a clock it moves: the
/// whole connection, sans I/O, at no real time.
struct Wired {
    plane: DataPlane,
    viewer: rtc::peer_connection::RTCPeerConnection,
    viewer_addr: std::net::SocketAddr,
    advertised: std::net::SocketAddr,
    now: Instant,
    /// The viewer's datagrams reach the plane (false: it has vanished).
    viewer_alive: bool,
    /// Times the plane's timers were run, and what it reported.
    plane_timer_turns: u32,
    seen: Vec<Event>,
    viewer_channel_open: bool,
    /// Where the viewer's datagrams come from, as the plane sees them.
    viewer_seen_at: std::net::SocketAddr,
    /// STUN binding requests the viewer sent, the plane's success answers, and where
    /// the plane's own requests went.
    viewer_checks: u32,
    plane_answers: u32,
    plane_checks: Vec<std::net::SocketAddr>,
}

/// The first two bytes of a STUN binding request and of its success answer.
const BINDING_REQUEST: [u8; 2] = [0x00, 0x01];
const BINDING_SUCCESS: [u8; 2] = [0x01, 0x01];

impl Wired {
    fn connect(peer: u64) -> Wired {
        let viewer_addr: std::net::SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let advertised: std::net::SocketAddr = "127.0.0.1:40001".parse().unwrap();
        let limits = DataPlaneLimits::default();
        let mut plane =
            DataPlane::new(advertised, false, limits.offer_timeout, limits.stall_timeout);
        let (mut viewer, offer) = superpeer_load::offering_connection(viewer_addr).unwrap();
        let now = Instant::now();
        plane.handle_input(
            Input::Command(Command::PeerAnswer(PeerAnswer { peer: PeerId(peer), offer })),
            now,
        );
        let Some(Event::PeerAnswerReady(answer)) = plane.poll_event() else { panic!("no answer") };
        viewer
            .set_remote_description(now, RTCSessionDescription::answer(answer.sdp).unwrap())
            .unwrap();
        let mut wired = Wired {
            plane,
            viewer,
            viewer_addr,
            advertised,
            now,
            viewer_alive: true,
            plane_timer_turns: 0,
            seen: Vec::new(),
            viewer_channel_open: false,
            viewer_seen_at: viewer_addr,
            viewer_checks: 0,
            plane_answers: 0,
            plane_checks: Vec::new(),
        };
        wired.run_for(Duration::from_secs(10));
        assert!(wired.viewer_channel_open, "never opened: {:?}", wired.seen);
        assert!(wired.seen.contains(&Event::PeerChannelOpen(PeerId(peer))), "{:?}", wired.seen);
        wired
    }

    /// Whether the plane reported its one viewer closed.
    fn closed(&self) -> bool {
        self.seen.iter().any(|e| matches!(e, Event::PeerClosed(_)))
    }

    /// Moves every datagram across, then the clock to the next timer, until `span` has
    /// passed on it.
    fn run_for(&mut self, span: Duration) {
        let end = self.now + span;
        loop {
            let mut moved = false;
            while let Some(transmit) = self.plane.poll_transmit() {
                for (to, data) in transmit.datagrams {
                    moved = true;
                    if data.starts_with(&BINDING_REQUEST) {
                        self.plane_checks.push(to);
                    } else if data.starts_with(&BINDING_SUCCESS) {
                        self.plane_answers += 1;
                    }
                    if self.viewer_alive {
                        let _ = self.viewer.handle_read(rtc::shared::TaggedBytesMut {
                            now: self.now,
                            transport: rtc::shared::TransportContext {
                                local_addr: self.viewer_addr,
                                peer_addr: self.advertised,
                                ecn: None,
                                transport_protocol: rtc::shared::TransportProtocol::UDP,
                            },
                            message: data,
                        });
                    }
                }
            }
            while let Some(datagram) = self.viewer.poll_write() {
                moved = true;
                if self.viewer_alive {
                    let data = datagram.message;
                    self.viewer_checks += u32::from(data.starts_with(&BINDING_REQUEST));
                    let from = self.viewer_seen_at;
                    self.plane.handle_input(Input::Io(IoEvent::Datagram { from, data }), self.now);
                }
            }
            while let Some(event) = self.viewer.poll_event() {
                use rtc::peer_connection::event::{RTCDataChannelEvent, RTCPeerConnectionEvent};
                if let RTCPeerConnectionEvent::OnDataChannel(RTCDataChannelEvent::OnOpen(_)) = event
                {
                    self.viewer_channel_open = true;
                }
            }
            while self.viewer.poll_read().is_some() {}
            self.seen.extend(std::iter::from_fn(|| self.plane.poll_event()));
            if moved {
                continue;
            }
            let viewer_timer = self.viewer_alive.then(|| self.viewer.poll_timeout()).flatten();
            let plane_timer = self.plane.poll_timeout();
            let Some(next) = [viewer_timer, plane_timer].into_iter().flatten().min() else { break };
            if next > end {
                break;
            }
            self.now = self.now.max(next);
            if viewer_timer.is_some_and(|at| at <= self.now) {
                let _ = self.viewer.handle_timeout(self.now);
            }
            if plane_timer.is_some_and(|at| at <= self.now) {
                self.plane_timer_turns += 1;
                self.plane.handle_input(Input::Timeout, self.now);
            }
        }
        self.now = end;
    }
}

#[test]
fn an_idle_viewer_stays_connected_on_one_timer_turn_a_second_and_a_vanished_one_is_closed() {
    let mut wired = Wired::connect(3);
    wired.plane_timer_turns = 0;
    // A minute of a viewer connected and asking for nothing.
    wired.run_for(Duration::from_secs(60));
    assert!(!wired.closed(), "an idle viewer was closed: {:?}", wired.seen);
    assert_eq!(wired.plane.viewers(), 1);
    // The library would have its timers run every 200 ms: 300 turns a minute.
    assert!(wired.plane_timer_turns <= 90, "{} timer turns in a minute", wired.plane_timer_turns);

    // The viewer vanishes: it is noticed within the ICE disconnection timeout (5 s) and
    // one quiet tick.
    wired.viewer_alive = false;
    wired.run_for(Duration::from_secs(7));
    assert!(wired.closed(), "a vanished viewer was not closed: {:?}", wired.seen);
    assert_eq!(wired.plane.viewers(), 0);
}

#[test]
fn an_idle_viewers_checks_are_answered_without_checks_back_but_from_a_new_address() {
    let mut wired = Wired::connect(4);
    let (checks, answers) = (wired.viewer_checks, wired.plane_answers);
    wired.plane_checks.clear();
    wired.run_for(Duration::from_secs(60));
    assert!(!wired.closed(), "an idle viewer was closed: {:?}", wired.seen);
    let (checks, answers) = (wired.viewer_checks - checks, wired.plane_answers - answers);
    // The viewer checks its path every couple of seconds; every check is answered, and
    // none is checked back on the path the DataChannel takes.
    assert!(checks >= 20, "the viewer checked {checks} times in a minute");
    assert_eq!(answers, checks);
    assert_eq!(wired.plane_checks, Vec::<std::net::SocketAddr>::new());

    // The viewer's checks come from another address (its network changed): that is
    // not the path its DataChannel takes, and the library checks it back as before.
    let moved: std::net::SocketAddr = "127.0.0.1:40002".parse().unwrap();
    wired.viewer_seen_at = moved;
    wired.run_for(Duration::from_secs(3));
    assert!(wired.plane_checks.contains(&moved), "{:?}", wired.plane_checks);
}
