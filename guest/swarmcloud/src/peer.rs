//! What SwarmCloud peers say on a DataChannel: text messages are JSON objects named by
//! their `event`; binary messages are segment bytes, announced by a `PIECE` that says
//! how many follow.
//!
//! A segment goes as `PIECE` then [`frames`] binary messages of [`FRAME_BYTES`] each but
//! the last: the receiver counts messages, not bytes, so the sizes are exact. Segment
//! ids are `"<level>-<sn>"` ([`segment_id`]) unless a viewer's player says otherwise.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The size of every binary message of a segment but the last.
pub const FRAME_BYTES: u32 = 64_000;

/// Binary messages a segment of `size` bytes takes.
pub fn frames(size: u64) -> u64 {
    size.div_ceil(u64::from(FRAME_BYTES))
}

/// A segment's id as the SDK names it by default.
pub fn segment_id(level: i64, sn: i64) -> String {
    format!("{level}-{sn}")
}

/// Segments held, by level: the `field` of METADATA.
pub type Field = BTreeMap<String, Vec<i64>>;

/// One text message. Fields the SDK may leave out are options; unknown fields are
/// ignored, and an unknown event is [`Message::Unknown`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Message {
    /// The handshake: each side's channel and what it holds. A viewer uses a peer only
    /// once it got this with a `field`; a super peer says `super` and the seed's token.
    Metadata(Metadata),
    /// A segment is held (`complete`) or being loaded.
    Have(Segment),
    /// A VOD segment is no longer held.
    Lost(Segment),
    Request(Request),
    /// The header of a segment's bytes.
    Piece(Piece),
    PieceAck(PieceAck),
    PieceNotFound(Segment),
    PieceAbort {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    PieceCancel(Segment),
    Choke,
    Unchoke,
    Close {
        #[serde(default)]
        fatal: bool,
    },
    /// Sent about every 40 s; a viewer with many peers drops one that stays silent.
    Stats {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        total_conns: Option<u32>,
    },
    GetPeers,
    Peers {
        #[serde(default)]
        peers: Vec<serde_json::Value>,
    },
    #[serde(other)]
    Unknown,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metadata {
    pub channel: String,
    /// Must be an object: the SDK breaks on anything else.
    #[serde(default)]
    pub field: Option<Field>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mobile: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Whether `field` lists a VOD range from its first to its last sn.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sequential: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peers: Option<u32>,
    #[serde(rename = "super", default, skip_serializing_if = "Option::is_none")]
    pub super_peer: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

/// A segment named by level and sn, and by id when the sender knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Segment {
    pub sn: i64,
    pub level: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seg_id: Option<String>,
    /// In HAVE: held whole (absent: still loading).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub complete: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub sn: i64,
    pub level: i64,
    /// Absent for prefetches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seg_id: Option<String>,
    #[serde(default)]
    pub urgent: bool,
    /// Asks for the frames last first; a sender may send them in order instead, and
    /// then must not say `reverse` in its PIECE.
    #[serde(default)]
    pub reverse: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Piece {
    pub sn: i64,
    pub level: i64,
    /// Must match the request's whenever it had one.
    pub seg_id: String,
    pub size: u64,
    /// How many binary messages follow ([`frames`]).
    pub attachments: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PieceAck {
    pub sn: i64,
    pub level: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seg_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
}

impl Message {
    /// A text message as JSON; `None` for a binary one or one that is not a message.
    pub fn decode(data: &[u8]) -> Option<Message> {
        serde_json::from_slice(data).ok()
    }

    /// As the text message the SDK sends and expects.
    pub fn encode(&self) -> String {
        // Serialising these types cannot fail: no maps with non-string keys, no floats.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// The PIECE announcing a segment of `size` bytes.
pub fn piece(level: i64, sn: i64, seg_id: String, size: u64) -> Message {
    Message::Piece(Piece { sn, level, seg_id, size, attachments: frames(size) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn viewers_messages_are_read_as_the_sdk_writes_them() {
        let metadata = br#"{"event":"METADATA","field":{"0":[1,2,3]},"platform":"WEB","mobile":false,"mobile_net":false,"channel":"Y2g=","version":"2.9.10","sequential":true,"peers":3,"region":{"asn":1,"country":"CN"}}"#;
        let Some(Message::Metadata(m)) = Message::decode(metadata) else { panic!() };
        assert_eq!(
            (m.channel.as_str(), m.field.unwrap()["0"].len(), m.super_peer),
            ("Y2g=", 3, None)
        );

        let urgent = br#"{"event":"REQUEST","seg_id":"0-12","sn":12,"level":0,"reverse":true,"urgent":true}"#;
        let prefetch = br#"{"event":"REQUEST","sn":13,"level":0,"reverse":false,"urgent":false}"#;
        assert_eq!(
            Message::decode(urgent),
            Some(Message::Request(Request {
                sn: 12,
                level: 0,
                seg_id: Some("0-12".into()),
                urgent: true,
                reverse: true
            }))
        );
        let Some(Message::Request(r)) = Message::decode(prefetch) else { panic!() };
        assert_eq!((r.seg_id, r.urgent), (None, false));

        for other in [
            &br#"{"event":"PLAYLIST","url":"u","data":"d","seq":1}"#[..],
            br#"{"event":"NEW_THING"}"#,
        ] {
            assert_eq!(Message::decode(other), Some(Message::Unknown));
        }
        assert_eq!(Message::decode(br#"{"event":"CHOKE"}"#), Some(Message::Choke));
        for garbage in [&b"\x00\x01binary"[..], b"{}", b"[1,2]", br#"{"event":"HAVE","sn":"x"}"#] {
            assert_eq!(Message::decode(garbage), None, "{}", String::from_utf8_lossy(garbage));
        }
    }

    #[test]
    fn a_segment_goes_as_exact_frames_announced_by_its_piece() {
        assert_eq!(
            (frames(0), frames(1), frames(64_000), frames(64_001), frames(300_000)),
            (0, 1, 1, 2, 5)
        );
        let text = piece(2, 40, segment_id(2, 40), 128_001).encode();
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            value,
            serde_json::json!({"event": "PIECE", "sn": 40, "level": 2, "seg_id": "2-40", "size": 128_001, "attachments": 3})
        );
    }

    #[test]
    fn a_super_peers_metadata_says_so_with_its_token_and_an_object_field() {
        let metadata = Message::Metadata(Metadata {
            channel: "Y2g=".into(),
            field: Some(Field::from([("0".to_string(), vec![5, 6])])),
            platform: Some("WEB".into()),
            mobile: Some(false),
            version: Some("superpeer".into()),
            sequential: Some(true),
            peers: Some(0),
            super_peer: Some(true),
            token: Some("t0k".into()),
        });
        let value: serde_json::Value = serde_json::from_str(&metadata.encode()).unwrap();
        assert_eq!(value["event"], "METADATA");
        assert_eq!(
            (value["super"].clone(), value["token"].clone()),
            (serde_json::json!(true), serde_json::json!("t0k"))
        );
        assert!(value["field"].is_object());
        assert_eq!(Message::decode(metadata.encode().as_bytes()), Some(metadata));
    }
}
