//! The WebTorrent tracker protocol as p2p-media-loader viewers speak it over WebSocket:
//! announces (with offers of our own), relayed offers and answers, the tracker's
//! replies, and scrapes (a swarm's size without joining it: bittorrent-tracker and
//! aquatic_ws both answer `{action: "scrape", info_hash: [...]}` with `files`).
//!
//! Pure: builds and reads JSON texts. Ids are 20-character strings (the info hash is
//! base64 text, peer ids are ASCII); offer ids may hold any character and are passed
//! back untouched.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AnnounceEvent {
    Started,
    Stopped,
    Completed,
}

#[derive(Debug, Serialize)]
struct Announce<'a> {
    action: &'static str,
    info_hash: &'a str,
    peer_id: &'a str,
    numwant: usize,
    uploaded: u64,
    downloaded: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    event: Option<AnnounceEvent>,
    offers: Vec<OfferOut<'a>>,
}

#[derive(Debug, Serialize)]
struct OfferOut<'a> {
    offer: Sdp<'a>,
    offer_id: &'a str,
}

/// One of our offers, for the tracker to hand to a member of the swarm.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offer {
    pub offer_id: String,
    pub sdp: String,
}

/// An announce carrying `offers` (none is fine: viewers' offers still come to us). It
/// asks for as many peers as it has offers, as an integer: bittorrent-tracker hands
/// min(offers, 82) of them out, aquatic_ws at most its `max_offers`, and wt-tracker
/// forwards none unless `numwant` is an integer.
pub fn announce(
    info_hash: &str,
    peer_id: &str,
    event: Option<AnnounceEvent>,
    offers: &[Offer],
) -> String {
    let message = Announce {
        action: "announce",
        info_hash,
        peer_id,
        numwant: offers.len(),
        uploaded: 0,
        downloaded: 0,
        event,
        offers: offers
            .iter()
            .map(|o| OfferOut { offer: Sdp { kind: "offer", sdp: &o.sdp }, offer_id: &o.offer_id })
            .collect(),
    };
    serde_json::to_string(&message).unwrap_or_default()
}

#[derive(Debug, Serialize)]
struct Sdp<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    sdp: &'a str,
}

#[derive(Debug, Serialize)]
struct Answer<'a> {
    action: &'static str,
    info_hash: &'a str,
    peer_id: &'a str,
    to_peer_id: &'a str,
    answer: Sdp<'a>,
    offer_id: &'a str,
}

/// Our SDP answer to a viewer's relayed offer.
pub fn answer(
    info_hash: &str,
    peer_id: &str,
    to_peer_id: &str,
    offer_id: &str,
    sdp: &str,
) -> String {
    let message = Answer {
        action: "announce",
        info_hash,
        peer_id,
        to_peer_id,
        answer: Sdp { kind: "answer", sdp },
        offer_id,
    };
    serde_json::to_string(&message).unwrap_or_default()
}

/// What a tracker text means to a super peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrackerMessage {
    /// A viewer's offer, relayed: answer it through the same tracker.
    Offer {
        info_hash: String,
        peer_id: String,
        offer_id: String,
        sdp: String,
    },
    /// A viewer's answer to one of our offers, relayed.
    Answer {
        info_hash: String,
        peer_id: String,
        offer_id: String,
        sdp: String,
    },
    /// The tracker acknowledged an announce: announce again after `interval` seconds.
    Interval {
        info_hash: String,
        interval: u64,
        complete: Option<u64>,
        incomplete: Option<u64>,
    },
    /// The tracker's answer to a scrape: each swarm's members (`complete` plus
    /// `incomplete`), by info hash.
    Scrape(Vec<(String, u64)>),
    /// A message of no use to us.
    Ignored,
    /// The tracker refused something.
    Failure(String),
    Warning(String),
}

#[derive(Debug, Deserialize)]
struct Incoming {
    action: Option<String>,
    info_hash: Option<String>,
    peer_id: Option<String>,
    offer_id: Option<String>,
    offer: Option<SdpIn>,
    answer: Option<SdpIn>,
    interval: Option<u64>,
    complete: Option<u64>,
    incomplete: Option<u64>,
    #[serde(rename = "failure reason")]
    failure: Option<String>,
    #[serde(rename = "warning message")]
    warning: Option<String>,
    files: Option<std::collections::BTreeMap<String, ScrapeFile>>,
}

#[derive(Debug, Deserialize)]
struct ScrapeFile {
    complete: Option<u64>,
    incomplete: Option<u64>,
}

#[derive(Debug, Serialize)]
struct Scrape<'a> {
    action: &'static str,
    info_hash: &'a [&'a str],
}

/// A scrape of these swarms: their sizes, without becoming a member of any (no viewer
/// is handed a scraper's id, so none spends an offer on it).
pub fn scrape(info_hashes: &[&str]) -> String {
    serde_json::to_string(&Scrape { action: "scrape", info_hash: info_hashes }).unwrap_or_default()
}

#[derive(Debug, Deserialize)]
struct SdpIn {
    #[serde(rename = "type")]
    kind: Option<String>,
    sdp: Option<String>,
}

/// Reads a tracker text; malformed text is an error (the connection's problem, not
/// the policy's).
pub fn parse(text: &str) -> Result<TrackerMessage, String> {
    let incoming: Incoming = serde_json::from_str(text).map_err(|e| e.to_string())?;
    if let Some(reason) = incoming.failure {
        return Ok(TrackerMessage::Failure(reason));
    }
    if incoming.action.as_deref() == Some("scrape")
        && let Some(files) = incoming.files
    {
        let sizes = files
            .into_iter()
            .map(|(hash, file)| {
                let members =
                    file.complete.unwrap_or(0).saturating_add(file.incomplete.unwrap_or(0));
                (hash, members)
            })
            .collect();
        return Ok(TrackerMessage::Scrape(sizes));
    }
    if incoming.action.as_deref() != Some("announce") {
        return Ok(incoming.warning.map_or(TrackerMessage::Ignored, TrackerMessage::Warning));
    }
    let info_hash = incoming.info_hash.ok_or("announce without info_hash")?;
    if let Some(offer) = incoming.offer {
        let sdp = match (offer.kind.as_deref(), offer.sdp) {
            (Some("offer"), Some(sdp)) => sdp,
            _ => return Err("offer without an SDP offer".into()),
        };
        return Ok(TrackerMessage::Offer {
            info_hash,
            peer_id: incoming.peer_id.ok_or("offer without peer_id")?,
            offer_id: incoming.offer_id.ok_or("offer without offer_id")?,
            sdp,
        });
    }
    if let Some(answer) = incoming.answer {
        let sdp = match (answer.kind.as_deref(), answer.sdp) {
            (Some("answer"), Some(sdp)) => sdp,
            _ => return Err("answer without an SDP answer".into()),
        };
        return Ok(TrackerMessage::Answer {
            info_hash,
            peer_id: incoming.peer_id.ok_or("answer without peer_id")?,
            offer_id: incoming.offer_id.ok_or("answer without offer_id")?,
            sdp,
        });
    }
    if let Some(interval) = incoming.interval {
        return Ok(TrackerMessage::Interval {
            info_hash,
            interval,
            complete: incoming.complete,
            incomplete: incoming.incomplete,
        });
    }
    Ok(incoming.warning.map_or(TrackerMessage::Ignored, TrackerMessage::Warning))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_announces_and_answers_viewers_understand() {
        let offers = [
            Offer { offer_id: "o1".into(), sdp: "v=0\r\na".into() },
            Offer { offer_id: "o\u{00ff}2".into(), sdp: "v=0\r\nb".into() },
        ];
        let text = announce(
            "G4P1wGSZYicnoIPenKa8",
            "-PM0203-abcdefghijkl",
            Some(AnnounceEvent::Started),
            &offers,
        );
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(json["action"], "announce");
        assert_eq!(json["info_hash"], "G4P1wGSZYicnoIPenKa8");
        assert_eq!(json["event"], "started");
        assert_eq!(json["numwant"], 2, "an integer, as many as the offers");
        assert_eq!(
            json["offers"],
            serde_json::json!([
                {"offer": {"type": "offer", "sdp": "v=0\r\na"}, "offer_id": "o1"},
                {"offer": {"type": "offer", "sdp": "v=0\r\nb"}, "offer_id": "o\u{00ff}2"},
            ])
        );
        let text = scrape(&["G4P1wGSZYicnoIPenKa8", "h\u{00ff}"]);
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"action": "scrape", "info_hash": ["G4P1wGSZYicnoIPenKa8", "h\u{00ff}"]})
        );
        let again = announce("h", "p", None, &[]);
        assert!(!again.contains("event"), "{again}");
        assert!(again.contains(r#""offers":[]"#) && again.contains(r#""numwant":0"#), "{again}");

        let text = answer("h", "me", "them", "ofr\u{00ff}\u{0001}", "v=0\r\n");
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(json["answer"], serde_json::json!({"type": "answer", "sdp": "v=0\r\n"}));
        assert_eq!(json["offer_id"], "ofr\u{00ff}\u{0001}", "offer ids pass untouched");
        assert_eq!(json["to_peer_id"], "them");
    }

    #[test]
    fn reads_what_trackers_send() {
        let offer = r#"{"action":"announce","offer":{"type":"offer","sdp":"v=0"},"offer_id":"o1","peer_id":"-PM0203-zzzzzzzzzzzz","info_hash":"h"}"#;
        assert_eq!(
            parse(offer),
            Ok(TrackerMessage::Offer {
                info_hash: "h".into(),
                peer_id: "-PM0203-zzzzzzzzzzzz".into(),
                offer_id: "o1".into(),
                sdp: "v=0".into()
            })
        );
        let reply =
            r#"{"action":"announce","interval":120,"info_hash":"h","complete":0,"incomplete":3}"#;
        assert_eq!(
            parse(reply),
            Ok(TrackerMessage::Interval {
                info_hash: "h".into(),
                interval: 120,
                complete: Some(0),
                incomplete: Some(3)
            })
        );
        assert_eq!(
            parse(r#"{"failure reason":"invalid info_hash"}"#),
            Ok(TrackerMessage::Failure("invalid info_hash".into()))
        );
        let answer = r#"{"action":"announce","answer":{"type":"answer","sdp":"v=1"},"offer_id":"o2","peer_id":"-PM0202-yyyyyyyyyyyy","info_hash":"h"}"#;
        assert_eq!(
            parse(answer),
            Ok(TrackerMessage::Answer {
                info_hash: "h".into(),
                peer_id: "-PM0202-yyyyyyyyyyyy".into(),
                offer_id: "o2".into(),
                sdp: "v=1".into()
            })
        );
        assert!(
            parse(r#"{"action":"announce","answer":{"type":"offer","sdp":"x"},"offer_id":"o","peer_id":"p","info_hash":"h"}"#)
                .is_err()
        );
        assert_eq!(parse(r#"{"action":"scrape","files":{}}"#), Ok(TrackerMessage::Scrape(vec![])));
        let scraped = r#"{"action":"scrape","files":{"h1":{"complete":1,"incomplete":4,"downloaded":1},"h2":{"incomplete":2}},"flags":{"min_request_interval":600}}"#;
        assert_eq!(
            parse(scraped),
            Ok(TrackerMessage::Scrape(vec![("h1".into(), 5), ("h2".into(), 2)]))
        );
        assert!(parse(r#"{"action":"scrape","files":{"h":{"complete":"many"}}}"#).is_err());
        assert_eq!(parse(r#"{"action":"scrape"}"#), Ok(TrackerMessage::Ignored));
        assert!(parse("not json").is_err());
        assert!(
            parse(r#"{"action":"announce","offer":{"type":"answer","sdp":"x"},"info_hash":"h"}"#)
                .is_err()
        );
        assert!(parse(r#"{"action":"announce","interval":"soon","info_hash":"h"}"#).is_err());
    }
}
