//! WebRTC connections as a browser makes them, and STUN and SDP helpers, shared by the
//! viewers and by tests that play a viewer by hand.

use super::*;

/// A STUN binding request as a viewer's ICE agent sends it, its MESSAGE-INTEGRITY keyed
/// by `key`.
pub fn binding_request(username: &str, key: &str) -> Bytes {
    use rtc::stun::attributes::ATTR_USERNAME;
    use rtc::stun::fingerprint::FINGERPRINT;
    use rtc::stun::integrity::MessageIntegrity;
    use rtc::stun::message::{BINDING_REQUEST, Message, Setter, TransactionId};
    use rtc::stun::textattrs::TextAttribute;
    let mut message = Message::new();
    let Ok(provider) = rtc::crypto::default_provider() else { return Bytes::new() };
    let setters: [Box<dyn Setter + '_>; 5] = [
        Box::new(BINDING_REQUEST),
        Box::new(TransactionId::new()),
        Box::new(TextAttribute::new(ATTR_USERNAME, username.to_string())),
        Box::new(MessageIntegrity::new_short_term_integrity_with_provider(
            key.to_string(),
            provider.crypto(),
        )),
        Box::new(FINGERPRINT),
    ];
    match message.build(&setters) {
        Ok(()) => message.raw.into(),
        Err(_) => Bytes::new(),
    }
}

/// The value of an SDP attribute line (`a=ice-pwd:` ...), if the SDP has one.
pub fn sdp_value<'a>(sdp: &'a str, attribute: &str) -> Option<&'a str> {
    sdp.lines().find_map(|l| l.strip_prefix(attribute)).map(str::trim)
}

/// A peer connection that offers as a browser viewer does: one DataChannel with a
/// 40-hex-character label, its host candidate at `local` only, all in the offer (no
/// trickle). Returns it and the offer's SDP.
pub fn offering_connection(local: SocketAddr) -> anyhow::Result<(RTCPeerConnection, String)> {
    let mut connection = browser_connection()?;
    // A random-looking 40-hex-character label, as simple-peer makes.
    let label = format!("{:040x}", local.port() as u128 * 0x9e37_79b9_7f4a_7c15);
    connection.create_data_channel(&label, None).map_err(|e| anyhow!("{e}"))?;
    add_host_candidate(&mut connection, local)?;
    let offer = connection.create_offer(None).map_err(|e| anyhow!("{e}"))?;
    connection.set_local_description(Instant::now(), offer.clone()).map_err(|e| anyhow!("{e}"))?;
    Ok((connection, offer.sdp))
}

/// A peer connection that answers `offer` as a browser viewer does (simple-peer with
/// `trickle: false`): it takes whatever DataChannel the offerer opens, and its answer
/// carries its host candidate at `local`. Returns it and the answer's SDP.
pub fn answering_connection(
    local: SocketAddr,
    offer: &str,
) -> anyhow::Result<(RTCPeerConnection, String)> {
    let mut connection = browser_connection()?;
    let offer = RTCSessionDescription::offer(offer.to_string()).map_err(|e| anyhow!("{e}"))?;
    connection.set_remote_description(Instant::now(), offer).map_err(|e| anyhow!("{e}"))?;
    add_host_candidate(&mut connection, local)?;
    let answer = connection.create_answer(None).map_err(|e| anyhow!("{e}"))?;
    connection.set_local_description(Instant::now(), answer.clone()).map_err(|e| anyhow!("{e}"))?;
    Ok((connection, answer.sdp))
}

/// A full ICE agent, as browsers are.
fn browser_connection() -> anyhow::Result<RTCPeerConnection> {
    RTCPeerConnectionBuilder::new()
        .with_configuration(RTCConfigurationBuilder::new().build())
        .build(Instant::now())
        .map_err(|e| anyhow!("{e}"))
}

/// The one candidate a viewer on loopback has, then the end of candidates.
fn add_host_candidate(connection: &mut RTCPeerConnection, local: SocketAddr) -> anyhow::Result<()> {
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
    .map_err(|e| anyhow!("{e}"))?;
    let candidate = RTCIceCandidate::from(&candidate).to_json().map_err(|e| anyhow!("{e}"))?;
    connection.add_local_candidate(candidate).map_err(|e| anyhow!("{e}"))?;
    let _ = connection.add_local_candidate(RTCIceCandidateInit::default());
    Ok(())
}

/// A connection's UDP socket on 127.0.0.1. Its receive buffer is raised as a browser's is
/// (Chromium asks for about 1 MiB): with the default, a sender's burst overflows it
/// whenever this process is busy, and each lost datagram costs a retransmission
/// timeout, which would be measured as the sender's latency.
pub(crate) fn udp_socket() -> std::io::Result<UdpSocket> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)?;
    let _ = socket.set_recv_buffer_size(1 << 20);
    socket.set_nonblocking(true)?;
    socket.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())?;
    UdpSocket::from_std(socket.into())
}
