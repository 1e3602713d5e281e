//! The SwarmCloud signal relay: a WebSocket per peer (`?id=<peer>&p=web&v=<version>`),
//! JSON objects named by `action`. `signal` carries SDP and ICE candidates to and from
//! a peer id; a `signal` that comes back without `data` says the peer was not found
//! (then the backup server is tried, when there is one).

use serde::Serialize;
use serde_json::Value;

/// The WebSocket URL of a signal server for `peer`.
pub fn connect_url(server: &str, peer: &str, version: &str, token: Option<&str>) -> String {
    // A browser's WebSocket reads `ws://host:port` as `ws://host:port/`; the query
    // cannot stand where the path should be.
    let has_path = server.split_once("://").is_some_and(|(_, rest)| rest.contains('/'));
    let slash = if has_path { "" } else { "/" };
    let mut url = format!("{server}{slash}?id={peer}&p=web&v={version}");
    if let Some(token) = token {
        url.push_str("&token=");
        url.push_str(token);
    }
    url
}

/// What we send.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "action", rename_all = "lowercase")]
pub enum Outgoing {
    Signal { to_peer_id: String, data: Value },
    Reject { to_peer_id: String, reason: String, fatal: bool },
    Ping,
}

impl Outgoing {
    /// Our SDP answer to a peer.
    pub fn answer(to: &str, sdp: &str) -> Outgoing {
        Self::sdp(to, "answer", sdp)
    }

    /// Our SDP offer to a peer (all candidates in it: nothing is trickled).
    pub fn offer(to: &str, sdp: &str) -> Outgoing {
        Self::sdp(to, "offer", sdp)
    }

    fn sdp(to: &str, kind: &str, sdp: &str) -> Outgoing {
        let data = serde_json::json!({"type": kind, "sdp": sdp});
        Outgoing::Signal { to_peer_id: to.to_string(), data }
    }

    pub fn encode(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// What a signal server sends.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    Version(i64),
    Pong,
    /// The server closes us and wants no reconnection.
    Close(String),
    /// From a peer; `None` when the peer we signalled was not found.
    Signal {
        from: String,
        data: Option<SignalData>,
    },
    Reject {
        from: String,
        reason: String,
        fatal: bool,
    },
}

/// What a `signal` carries.
#[derive(Debug, Clone, PartialEq)]
pub enum SignalData {
    Offer(String),
    Answer(String),
    /// A trickled ICE candidate (an ICE-lite answerer does without them).
    Candidate,
    /// The viewer asks to negotiate again (ignored: our connections never change).
    Renegotiate,
    /// Anything else the relay forwarded.
    Other,
}

impl Incoming {
    /// A message from the server, or `None` when it is not one.
    pub fn decode(text: &str) -> Option<Incoming> {
        let value: Value = serde_json::from_str(text).ok()?;
        let from = || value.get("from_peer_id").or(value.get("from"))?.as_str().map(str::to_string);
        Some(match value.get("action")?.as_str()? {
            "ver" => Incoming::Version(value.get("ver").and_then(Value::as_i64).unwrap_or(0)),
            "pong" => Incoming::Pong,
            "close" => Incoming::Close(value["reason"].as_str().unwrap_or_default().to_string()),
            "signal" => Incoming::Signal {
                from: from()?,
                data: value.get("data").filter(|d| !d.is_null()).map(SignalData::read),
            },
            "reject" => Incoming::Reject {
                from: from()?,
                reason: value["reason"].as_str().unwrap_or_default().to_string(),
                fatal: value["fatal"].as_bool().unwrap_or(false),
            },
            _ => return None,
        })
    }
}

impl SignalData {
    fn read(data: &Value) -> SignalData {
        // The SDK may send the data as a JSON string of the object.
        let parsed;
        let data = match data.as_str().and_then(|text| serde_json::from_str::<Value>(text).ok()) {
            Some(inner) => {
                parsed = inner;
                &parsed
            }
            None => data,
        };
        let sdp = || data["sdp"].as_str().map(str::to_string);
        match (data["type"].as_str(), sdp()) {
            (Some("offer"), Some(sdp)) => SignalData::Offer(sdp),
            (Some("answer"), Some(sdp)) => SignalData::Answer(sdp),
            _ if data.get("candidate").is_some() => SignalData::Candidate,
            _ if data.get("renegotiate").is_some() => SignalData::Renegotiate,
            _ => SignalData::Other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_relays_messages_are_read_whatever_shape_the_sdk_gave_their_data() {
        let offer =
            r#"{"action":"signal","from_peer_id":"v1","data":{"type":"offer","sdp":"v=0"}}"#;
        let as_text = r#"{"action":"signal","from_peer_id":"v1","data":"{\"type\":\"offer\",\"sdp\":\"v=0\"}"}"#;
        for text in [offer, as_text] {
            assert_eq!(
                Incoming::decode(text),
                Some(Incoming::Signal {
                    from: "v1".into(),
                    data: Some(SignalData::Offer("v=0".into()))
                })
            );
        }
        let candidate = r#"{"action":"signal","from_peer_id":"v1","data":{"type":"candidate","candidate":{"candidate":"candidate:1 1 udp 1 1.2.3.4 5 typ host","sdpMLineIndex":0,"sdpMid":"0"}}}"#;
        assert!(matches!(
            Incoming::decode(candidate),
            Some(Incoming::Signal { data: Some(SignalData::Candidate), .. })
        ));
        let not_found = r#"{"action":"signal","from_peer_id":"v9"}"#;
        assert_eq!(
            Incoming::decode(not_found),
            Some(Incoming::Signal { from: "v9".into(), data: None })
        );
        assert_eq!(Incoming::decode(r#"{"action":"ver","ver":26}"#), Some(Incoming::Version(26)));
        for garbage in
            ["", "[]", r#"{"action":"signal"}"#, r#"{"action":"dance","from_peer_id":"x"}"#]
        {
            assert_eq!(Incoming::decode(garbage), None, "{garbage}");
        }
    }

    #[test]
    fn what_we_send_is_what_the_relay_forwards() {
        assert_eq!(
            connect_url("ws://s:1/", "p1", "0.2.0", Some("t")),
            "ws://s:1/?id=p1&p=web&v=0.2.0&token=t"
        );
        // As a browser reads a URL without a path.
        assert_eq!(connect_url("ws://s:1", "p1", "2", None), "ws://s:1/?id=p1&p=web&v=2");
        assert_eq!(connect_url("wss://s/sig", "p1", "2", None), "wss://s/sig?id=p1&p=web&v=2");
        let answer: Value = serde_json::from_str(&Outgoing::answer("v1", "v=0").encode()).unwrap();
        assert_eq!(
            answer,
            serde_json::json!({"action": "signal", "to_peer_id": "v1", "data": {"type": "answer", "sdp": "v=0"}})
        );
        assert_eq!(Outgoing::Ping.encode(), r#"{"action":"ping"}"#);
    }
}
