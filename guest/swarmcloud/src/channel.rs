//! The channel id as the SDK computes it: the stream URL's host, port and path without
//! its extension, then `|`, the signal server's host and port (or nothing), and the
//! protocol version in brackets; percent-encoded as `encodeURIComponent` does and
//! base64-encoded. That base64 text is the control plane's `channel` and what a peer's
//! METADATA must carry.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

/// The DataChannel protocol version the SDK puts in every channel id.
pub const PROTOCOL_VERSION: &str = "8";

/// How the viewers' SDK was told of its signal servers: it names the signal server in
/// the channel only when it uses a single, non-default one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signals<'a> {
    /// The SDK's default signal server, or a main one with a backup.
    DefaultOrPair,
    /// One signal server, by URL (`ws://host:port/...`).
    Single(&'a str),
}

/// The plain channel of a stream at `url` (as given to the player), or `None` for a
/// URL without a host.
pub fn plain(url: &str, signals: Signals<'_>) -> Option<String> {
    let (net_loc, path) = split(url)?;
    // The path is cut at its last dot, wherever it is; a path without one is dropped.
    let path = path.rfind('.').map_or("", |dot| &path[..dot]);
    let signal = match signals {
        Signals::DefaultOrPair => "",
        Signals::Single(signal) => split(signal)?.0,
    };
    Some(format!("{net_loc}{path}|{signal}[{PROTOCOL_VERSION}]"))
}

/// The channel id viewers of `url` use: base64 of the percent-encoded plain channel.
pub fn id(url: &str, signals: Signals<'_>) -> Option<String> {
    plain(url, signals).map(|plain| STANDARD.encode(encode_uri_component(&plain)))
}

/// The plain channel an id stands for, when it is one.
pub fn decode(id: &str) -> Option<String> {
    let text = String::from_utf8(STANDARD.decode(id).ok()?).ok()?;
    decode_uri_component(&text)
}

/// A URL's `host[:port]` (with any user info, as the SDK's parser keeps it) and its
/// path, without scheme, query or fragment.
fn split(url: &str) -> Option<(&str, &str)> {
    let rest = url.split_once("//")?.1;
    let end = rest.find(['?', '#']).unwrap_or(rest.len());
    let rest = &rest[..end];
    let (net_loc, path) = match rest.find('/') {
        Some(slash) => (&rest[..slash], &rest[slash..]),
        None => (rest, ""),
    };
    // `;params` are not part of the path either.
    let path = path.split(';').next().unwrap_or("");
    (!net_loc.is_empty()).then_some((net_loc, path))
}

/// Characters `encodeURIComponent` leaves as they are.
fn unreserved(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"-_.!~*'()".contains(&byte)
}

fn encode_uri_component(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 3);
    for &byte in text.as_bytes() {
        if unreserved(byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

fn decode_uri_component(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_channel_of_a_stream_is_what_the_sdk_computes() {
        // Seen from an unmodified 2.9.10 viewer with a single local signal server.
        let url = "http://127.0.0.1:8710/live/master.m3u8?token=abc";
        let signals = Signals::Single("ws://127.0.0.1:8710/ws");
        assert_eq!(plain(url, signals).unwrap(), "127.0.0.1:8710/live/master|127.0.0.1:8710[8]");
        assert_eq!(
            id(url, signals).unwrap(),
            "MTI3LjAuMC4xJTNBODcxMCUyRmxpdmUlMkZtYXN0ZXIlN0MxMjcuMC4wLjElM0E4NzEwJTVCOCU1RA=="
        );
        assert_eq!(decode(&id(url, signals).unwrap()).unwrap(), plain(url, signals).unwrap());
    }

    #[test]
    fn the_path_is_cut_at_its_last_dot_and_the_signal_named_only_when_single() {
        let pair = Signals::DefaultOrPair;
        assert_eq!(
            plain("https://cdn.example/a/b/index.m3u8", pair).unwrap(),
            "cdn.example/a/b/index|[8]"
        );
        assert_eq!(plain("https://cdn.example/v1.2/index", pair).unwrap(), "cdn.example/v1|[8]");
        assert_eq!(
            plain("https://cdn.example:8443/live/stream#x", pair).unwrap(),
            "cdn.example:8443|[8]"
        );
        assert_eq!(plain("no scheme here", pair), None);
        assert_eq!(plain("http:///path.m3u8", pair), None);
        assert_eq!(decode("not base64!"), None);
    }
}
