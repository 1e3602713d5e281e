//! A viewer for tests: a WebRTC peer (the `rtc` crate, as a browser would behave) that
//! offers, opens one DataChannel and gathers only its own host address, on its own UDP
//! socket on 127.0.0.1.

use std::time::Instant;

use rtc::peer_connection::configuration::RTCConfigurationBuilder;
use rtc::peer_connection::event::{RTCDataChannelEvent, RTCPeerConnectionEvent};
use rtc::peer_connection::message::{RTCMessage, TaggedRTCMessage};
use rtc::peer_connection::transport::{
    CandidateConfig, CandidateHostConfig, RTCIceCandidate, RTCIceCandidateInit,
};
use rtc::peer_connection::{RTCPeerConnection, RTCPeerConnectionBuilder};
use rtc::sansio::Protocol;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};
use tokio::net::UdpSocket;

/// A viewer: a WebRTC peer that offers and opens a DataChannel, on its own socket.
pub struct Viewer {
    pub connection: RTCPeerConnection,
    pub socket: UdpSocket,
    pub channel: Option<rtc::data_channel::RTCDataChannelId>,
    pub received: Vec<Vec<u8>>,
}

impl Viewer {
    pub async fn new() -> (Viewer, String) {
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

    pub fn flush(&mut self) {
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

    pub fn send(&mut self, data: &[u8]) {
        let id = self.channel.unwrap();
        self.connection.data_channel(id).unwrap().send(Instant::now(), data.into()).unwrap();
        self.flush();
    }

    /// Hands a datagram from the socket to the connection.
    pub fn receive(&mut self, from: std::net::SocketAddr, data: &[u8]) {
        let local_addr = self.socket.local_addr().unwrap();
        let transport = TransportContext {
            local_addr,
            peer_addr: from,
            ecn: None,
            transport_protocol: TransportProtocol::UDP,
        };
        let _ = self.connection.handle_read(TaggedBytesMut {
            now: Instant::now(),
            transport,
            message: data.into(),
        });
    }
}
