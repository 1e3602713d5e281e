//! A viewer for tests: a WebRTC peer (the `rtc` crate, as a browser would behave) that
//! offers and opens one DataChannel, or answers an offer and takes its DataChannel, and
//! gathers only its own host address, on its own UDP socket on 127.0.0.1. Offers and
//! answers are the load generator's, so both behave alike.

// Each test binary uses only part of this file.
#![allow(dead_code)]

use std::time::Instant;

use rtc::peer_connection::RTCPeerConnection;
use rtc::peer_connection::event::{RTCDataChannelEvent, RTCPeerConnectionEvent};
use rtc::peer_connection::message::{RTCMessage, TaggedRTCMessage};
use rtc::sansio::Protocol;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};
use tokio::net::UdpSocket;

/// A viewer: a WebRTC peer that offers and opens a DataChannel, on its own socket.
pub struct Viewer {
    pub connection: RTCPeerConnection,
    pub socket: UdpSocket,
    pub channel: Option<rtc::data_channel::RTCDataChannelId>,
    pub received: Vec<Vec<u8>>,
    /// The text messages among them (DataChannel strings), in order.
    pub texts: Vec<String>,
    /// The size of every datagram handed to [`Viewer::receive`], in order.
    pub datagram_sizes: Vec<usize>,
}

impl Viewer {
    pub async fn new() -> (Viewer, String) {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let local = socket.local_addr().unwrap();
        let (connection, offer) = superpeer_load::offering_connection(local).unwrap();
        (Viewer::with(connection, socket), offer)
    }

    /// A viewer that answers `offer` (superpeer's) instead; its answer.
    pub async fn answering(offer: &str) -> (Viewer, String) {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let local = socket.local_addr().unwrap();
        let (connection, answer) = superpeer_load::answering_connection(local, offer).unwrap();
        (Viewer::with(connection, socket), answer)
    }

    fn with(connection: RTCPeerConnection, socket: UdpSocket) -> Viewer {
        Viewer {
            connection,
            socket,
            channel: None,
            received: Vec::new(),
            texts: Vec::new(),
            datagram_sizes: Vec::new(),
        }
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
                if message.is_string {
                    self.texts.push(String::from_utf8_lossy(&message.data).into_owned());
                }
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
        self.datagram_sizes.push(data.len());
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

#[allow(unused_imports)]
pub use superpeer_load::binding_request;

/// The value of an SDP attribute line (`a=ice-pwd:` ...).
pub fn sdp_value<'a>(sdp: &'a str, attribute: &str) -> &'a str {
    superpeer_load::sdp_value(sdp, attribute).unwrap()
}
