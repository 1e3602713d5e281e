//! The worker's WebRTC layer against a real WebRTC peer in the test (the `rtc` crate as
//! a browser would use it: it offers, opens the DataChannel, gathers no candidates
//! beyond its own host address), over real UDP sockets on 127.0.0.1.

// Helpers panic on purpose: a broken fixture should fail the test that uses it.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get;
use rtc::peer_connection::configuration::RTCConfigurationBuilder;
use rtc::peer_connection::event::{RTCDataChannelEvent, RTCPeerConnectionEvent};
use rtc::peer_connection::message::{RTCMessage, TaggedRTCMessage};
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::transport::{
    CandidateConfig, CandidateHostConfig, RTCIceCandidate, RTCIceCandidateInit,
};
use rtc::peer_connection::{RTCPeerConnection, RTCPeerConnectionBuilder};
use rtc::sansio::Protocol;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};
use superpeer::dataplane::{DataPlane, DataPlaneLimits, IoEvent};
use superpeer::policy::wire::{
    CacheTier, Command, Event, FetchSegment, PeerAnswer, PeerSend, SegmentSent, ServeSegment,
};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

/// A viewer: a WebRTC peer that offers and opens a DataChannel, on its own socket.
struct Viewer {
    connection: RTCPeerConnection,
    socket: UdpSocket,
    channel: Option<rtc::data_channel::RTCDataChannelId>,
    received: Vec<Vec<u8>>,
}

impl Viewer {
    async fn new() -> (Viewer, String) {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let local = socket.local_addr().unwrap();
        let mut connection = RTCPeerConnectionBuilder::new()
            .with_configuration(RTCConfigurationBuilder::new().build())
            .build(Instant::now())
            .unwrap();
        connection.create_data_channel("a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9", None).unwrap();
        let candidate = CandidateHostConfig {
            base_config: CandidateConfig {
                network: "udp".into(),
                address: local.ip().to_string(),
                port: local.port(),
                component: 1,
                ..Default::default()
            },
            ..Default::default()
        }
        .new_candidate_host()
        .unwrap();
        connection
            .add_local_candidate(RTCIceCandidate::from(&candidate).to_json().unwrap())
            .unwrap();
        let _ = connection.add_local_candidate(RTCIceCandidateInit::default());
        let offer = connection.create_offer(None).unwrap();
        connection.set_local_description(Instant::now(), offer.clone()).unwrap();
        (Viewer { connection, socket, channel: None, received: Vec::new() }, offer.sdp)
    }

    fn flush(&mut self) {
        while let Some(datagram) = self.connection.poll_write() {
            let _ = self.socket.try_send_to(&datagram.message, datagram.transport.peer_addr);
        }
        while let Some(event) = self.connection.poll_event() {
            if let RTCPeerConnectionEvent::OnDataChannel(RTCDataChannelEvent::OnOpen(id)) = event {
                self.channel = Some(id);
            }
        }
        while let Some(TaggedRTCMessage { message, .. }) = self.connection.poll_read() {
            if let RTCMessage::DataChannelMessage(_, message) = message {
                self.received.push(message.data.to_vec());
            }
        }
        while let Some(datagram) = self.connection.poll_write() {
            let _ = self.socket.try_send_to(&datagram.message, datagram.transport.peer_addr);
        }
    }

    fn send(&mut self, data: &[u8]) {
        let id = self.channel.unwrap();
        self.connection.data_channel(id).unwrap().send(Instant::now(), data.into()).unwrap();
        self.flush();
    }
}

/// Runs both ends until `done` holds for what the worker's data plane reported.
async fn run_until(
    viewer: &mut Viewer,
    plane: &mut DataPlane,
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
                let local_addr = viewer.socket.local_addr().unwrap();
                let transport = TransportContext { local_addr, peer_addr: from, ecn: None, transport_protocol: TransportProtocol::UDP };
                let _ = viewer.connection.handle_read(TaggedBytesMut { now: Instant::now(), transport, message: buffer[..len].into() });
            }
            Some(happened) = io.recv() => seen.extend(plane.on_io(happened)),
            () = tokio::time::sleep_until(next) => {
                assert!(tokio::time::Instant::now() < deadline, "timed out; events so far: {seen:?}");
                let _ = viewer.connection.handle_timeout(Instant::now());
                seen.extend(plane.timeout());
            }
        }
    }
}

#[tokio::test]
async fn a_viewer_connects_exchanges_messages_and_receives_a_segment() {
    let (mut plane, mut io) = DataPlane::new(DataPlaneLimits::default()).unwrap();

    // A 300 kB segment in the store, fetched from a local origin.
    let segment: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let served = segment.clone();
    let app = Router::new().route("/s.ts", get(move || async move { served.clone() }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/s.ts", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    plane.carry_out(Command::FetchSegment(FetchSegment {
        fetch: 1,
        url,
        range: None,
        tier: CacheTier::Memory,
    }));
    let handle = loop {
        let happened = io.recv().await.unwrap();
        if let Some(Event::SegmentStored(stored)) = plane.on_io(happened).pop() {
            break stored.segment.handle;
        }
    };

    let (mut viewer, offer) = Viewer::new().await;
    let mut seen = plane.carry_out(Command::PeerAnswer(PeerAnswer { peer: 1, offer }));
    let Some(Event::PeerAnswerReady(answer)) = seen.first().cloned() else { panic!("{seen:?}") };
    assert!(answer.sdp.contains("a=ice-lite"), "{}", answer.sdp);
    assert!(answer.sdp.contains("127.0.0.1"), "the answer carries the host candidate");
    viewer
        .connection
        .set_remote_description(Instant::now(), RTCSessionDescription::answer(answer.sdp).unwrap())
        .unwrap();

    run_until(&mut viewer, &mut plane, &mut io, &mut seen, |v, seen| {
        v.channel.is_some() && seen.contains(&Event::PeerChannelOpen(1))
    })
    .await;

    // Messages both ways.
    viewer.send(b"cstr\x01cend");
    seen.extend(plane.carry_out(Command::PeerSend(PeerSend { peer: 1, data: b"hello".to_vec() })));
    run_until(&mut viewer, &mut plane, &mut io, &mut seen, |v, seen| {
        v.received.iter().any(|m| m == b"hello")
            && seen.iter().any(|e| matches!(e, Event::PeerMessage(m) if m.data == b"cstr\x01cend"))
    })
    .await;

    // A segment, streamed in DataChannel messages, byte for byte.
    viewer.received.clear();
    let serve =
        Command::ServeSegment(ServeSegment { peer: 1, handle, offset: 1000, chunk_size: 16_384 });
    seen.extend(plane.carry_out(serve));
    let complete =
        Event::SegmentSent(SegmentSent { peer: 1, handle, bytes: 299_000, complete: true });
    run_until(&mut viewer, &mut plane, &mut io, &mut seen, |v, seen| {
        seen.contains(&complete) && v.received.iter().map(Vec::len).sum::<usize>() == 299_000
    })
    .await;
    assert!(viewer.received.iter().all(|m| m.len() <= 16_384));
    assert_eq!(viewer.received.concat(), segment[1000..]);
    assert_eq!(plane.uploaded(), 299_000);
}
