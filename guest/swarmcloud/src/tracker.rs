//! The SwarmCloud tracker's HTTP API: announce (`POST {base}/channel`), more peers
//! (`POST {base}/channel/{channel}/node/{peer}/peers`) and figures every
//! `report_interval` (`POST .../stats`). Replies are `{ret, data}`; `ret: -1` carries
//! `{code, msg}`, and the SDK retries only codes of 5000 and up.

use serde::{Deserialize, Serialize};

/// The announce request's URL.
pub fn announce_url(base: &str) -> String {
    format!("{}/channel", base.trim_end_matches('/'))
}

/// The URL asking for more peers, and the one figures go to.
pub fn node_url(base: &str, channel: &str, peer: &str, what: NodeCall) -> String {
    let what = match what {
        NodeCall::Peers => "peers",
        NodeCall::Stats => "stats",
    };
    format!("{}/channel/{channel}/node/{peer}/{what}", base.trim_end_matches('/'))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeCall {
    Peers,
    Stats,
}

/// What superpeer announces: the SDK's fields a tracker needs, and `super`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Announce<'a> {
    pub channel: &'a str,
    /// Unix seconds.
    pub ts: u64,
    pub version: &'a str,
    pub live: bool,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub device: &'static str,
    #[serde(rename = "netType")]
    pub net_type: &'static str,
    #[serde(rename = "super")]
    pub super_peer: bool,
}

impl<'a> Announce<'a> {
    pub fn new(channel: &'a str, ts: u64, version: &'a str, live: bool) -> Self {
        Announce {
            channel,
            ts,
            version,
            live,
            kind: "hls",
            device: "PC-native",
            net_type: "wifi",
            super_peer: true,
        }
    }
}

/// A peer the tracker names.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PeerRef {
    pub id: String,
}

/// What an announce brings back.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Announced {
    /// Our peer id in this channel.
    pub id: String,
    /// Seconds between figures; the SDK takes at least 20.
    pub report_interval: u64,
    #[serde(default = "default_min_conns")]
    pub min_conns: u32,
    pub peers: Vec<PeerRef>,
    #[serde(default)]
    pub signal: Option<String>,
    #[serde(default)]
    pub signal2: Option<String>,
    /// Sent with the signal connection when given.
    #[serde(default)]
    pub token: Option<String>,
}

fn default_min_conns() -> u32 {
    8
}

/// More peers.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Peers {
    #[serde(default)]
    pub peers: Vec<PeerRef>,
}

/// Why a reply is no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplyError {
    /// Not JSON of the reply's shape (or missing what the SDK needs).
    Malformed(String),
    /// `ret: -1`: the tracker's code and words. Worth retrying when `code >= 5000`.
    Refused { code: i64, msg: String },
}

impl ReplyError {
    pub fn retry(&self) -> bool {
        matches!(self, ReplyError::Refused { code, .. } if *code >= 5000)
    }
}

#[derive(Deserialize)]
struct Reply {
    ret: i64,
    #[serde(default)]
    data: serde_json::Value,
}

/// A reply's `data` as `T`, or why not.
pub fn parse<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, ReplyError> {
    let reply: Reply =
        serde_json::from_slice(body).map_err(|e| ReplyError::Malformed(e.to_string()))?;
    if reply.ret == -1 {
        let code = reply.data["code"].as_i64().unwrap_or(0);
        let msg = reply.data["msg"].as_str().unwrap_or_default().to_string();
        return Err(ReplyError::Refused { code, msg });
    }
    serde_json::from_value(reply.data).map_err(|e| ReplyError::Malformed(e.to_string()))
}

/// The figures sent every `report_interval`: KB served over P2P since the last report;
/// `off` when leaving the channel.
pub fn stats_body(total_conns: u32, share_kb: u64, leaving: bool) -> String {
    let mut body = serde_json::json!({"totalConns": total_conns, "share": share_kb});
    if leaving {
        body["off"] = serde_json::Value::Bool(true);
    }
    body.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announce_replies_are_read_and_refusals_say_whether_to_retry() {
        let reply = br#"{"ret":0,"data":{"id":"p1","report_interval":20,"peers":[{"id":"v1"},{"id":"v2","intermediator":"x"}],"signal":"ws://s/","extra":1}}"#;
        let announced: Announced = parse(reply).unwrap();
        assert_eq!(
            (announced.id.as_str(), announced.report_interval, announced.min_conns),
            ("p1", 20, 8)
        );
        assert_eq!(announced.peers.len(), 2);
        assert_eq!(announced.signal2, None);

        let refused =
            parse::<Announced>(br#"{"ret":-1,"data":{"code":5001,"msg":"busy"}}"#).unwrap_err();
        assert_eq!(refused, ReplyError::Refused { code: 5001, msg: "busy".into() });
        assert!(refused.retry());
        assert!(
            !parse::<Announced>(br#"{"ret":-1,"data":{"code":4001,"msg":"no"}}"#)
                .unwrap_err()
                .retry()
        );
        // Without what the SDK needs, an announce is no answer.
        for bad in [&br#"{"ret":0,"data":{"id":"p1","peers":[]}}"#[..], b"<html>", b"{}"] {
            assert!(matches!(parse::<Announced>(bad), Err(ReplyError::Malformed(_))));
        }
    }

    #[test]
    fn urls_and_bodies_are_the_apis() {
        assert_eq!(announce_url("http://127.0.0.1:9/v1/"), "http://127.0.0.1:9/v1/channel");
        assert_eq!(
            node_url("http://t/v1", "Y2g=", "p1", NodeCall::Stats),
            "http://t/v1/channel/Y2g=/node/p1/stats"
        );
        let body = serde_json::to_value(Announce::new("Y2g=", 1700000000, "0.1.0", true)).unwrap();
        assert_eq!(body["type"], "hls");
        assert_eq!(body["super"], true);
        assert_eq!(stats_body(3, 1200, false), r#"{"share":1200,"totalConns":3}"#);
        assert_eq!(stats_body(1, 0, true), r#"{"off":true,"share":0,"totalConns":1}"#);
    }
}
