//! Which addresses a worker may fetch from, and the HTTP clients that hold to it.
//!
//! Playlists name the URLs a worker fetches, and whoever writes a playlist (an origin,
//! a CDN, anyone who can change one) could name an internal service: the worker would
//! fetch it, cache it and hand it to any viewer over P2P. So a fetch to a loopback,
//! private, link-local, unique-local, shared (CGNAT), multicast or unspecified address
//! is refused unless it goes to the seed's own manifest host and port or matches an
//! `originAllow` entry. The check is made on every hop of a redirect chain and, for
//! names, on every address the name resolves to at connect time (the resolver the
//! connection uses filters them), so a name that changes its answer between a check and
//! the connection gains nothing.
//!
//! Owns the rules ([`OriginRules`], pure) and the two clients ([`Origins`]); must never
//! follow a redirect on its own (every hop is checked here) nor fetch anything itself.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use reqwest::Url;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use serde::{Deserialize, Serialize};

/// One `originAllow` entry: a host on any port, a host on one port, or a network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum AllowEntry {
    Host(HostName),
    HostPort(HostName, u16),
    Net(IpNet),
}

/// A host as a URL names it: a (lower-case, dot-less) name or an address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HostName {
    Name(String),
    Ip(IpAddr),
}

impl HostName {
    fn parse(text: &str) -> Option<HostName> {
        let text = text.trim();
        let bare = text.strip_prefix('[').and_then(|t| t.strip_suffix(']')).unwrap_or(text);
        if let Ok(ip) = bare.parse::<IpAddr>() {
            return Some(HostName::Ip(ip));
        }
        let name = text.trim_end_matches('.').to_ascii_lowercase();
        // `127.0.0.1.` is an address, as URL parsers read it.
        if let Ok(ip) = name.parse::<IpAddr>() {
            return Some(HostName::Ip(ip));
        }
        let valid = !name.is_empty()
            && name.len() <= 253
            && name.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            });
        valid.then_some(HostName::Name(name))
    }

    fn of(url: &Url) -> Option<HostName> {
        match url.host()? {
            url::Host::Domain(name) => HostName::parse(name),
            url::Host::Ipv4(ip) => Some(HostName::Ip(ip.into())),
            url::Host::Ipv6(ip) => Some(HostName::Ip(ip.into())),
        }
    }
}

impl fmt::Display for HostName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostName::Name(name) => f.write_str(name),
            HostName::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]"),
            HostName::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

impl FromStr for AllowEntry {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let wrong = || format!("{text:?} is not a host, host:port or CIDR network");
        if text.contains('/') {
            return text.parse::<IpNet>().map(AllowEntry::Net).map_err(|_| wrong());
        }
        // An IPv6 address without brackets has colons but no port.
        if text.parse::<IpAddr>().is_ok() || (text.starts_with('[') && text.ends_with(']')) {
            return HostName::parse(text).map(AllowEntry::Host).ok_or_else(wrong);
        }
        match text.rsplit_once(':') {
            Some((host, port)) => {
                let port: u16 = port.parse().ok().filter(|p| *p != 0).ok_or_else(wrong)?;
                HostName::parse(host).map(|h| AllowEntry::HostPort(h, port)).ok_or_else(wrong)
            }
            None => HostName::parse(text).map(AllowEntry::Host).ok_or_else(wrong),
        }
    }
}

impl TryFrom<String> for AllowEntry {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        text.parse()
    }
}

impl From<AllowEntry> for String {
    fn from(entry: AllowEntry) -> String {
        entry.to_string()
    }
}

impl fmt::Display for AllowEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AllowEntry::Host(host) => write!(f, "{host}"),
            AllowEntry::HostPort(host, port) => write!(f, "{host}:{port}"),
            AllowEntry::Net(net) => write!(f, "{net}"),
        }
    }
}

/// Parses `originAllow`: comma-separated entries, blanks ignored.
pub fn parse_allow_list(text: &str) -> Result<Vec<AllowEntry>, String> {
    text.split(',').filter(|e| !e.trim().is_empty()).map(str::parse).collect()
}

/// What kind of internal address `ip` is, if it is one a fetch must not reach unasked.
pub fn internal_kind(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(ip) => {
            let [a, b, c, _] = ip.octets();
            if ip.is_loopback() {
                Some("loopback")
            } else if ip.is_private() {
                Some("private")
            } else if ip.is_link_local() {
                Some("link-local")
            } else if a == 100 && (64..128).contains(&b) {
                Some("shared (CGNAT)")
            } else if ip.is_multicast() {
                Some("multicast")
            } else if ip.is_broadcast() {
                Some("broadcast")
            } else if a >= 240 {
                Some("reserved")
            } else if a == 0 {
                Some("unspecified")
            } else if (a, b, c) == (192, 0, 0) {
                // Protocol assignments, among them a cloud's metadata address.
                Some("special-purpose")
            } else if a == 198 && (18..20).contains(&b) {
                Some("benchmarking")
            } else if matches!((a, b, c), (192, 0, 2) | (198, 51, 100) | (203, 0, 113)) {
                Some("documentation")
            } else {
                None
            }
        }
        IpAddr::V6(ip) => {
            let segments = ip.segments();
            let embedded = |high: u16, low: u16| {
                internal_kind(IpAddr::V4(std::net::Ipv4Addr::from(
                    (u32::from(high) << 16) | u32::from(low),
                )))
            };
            if let Some(v4) = ip.to_ipv4_mapped() {
                return internal_kind(IpAddr::V4(v4));
            }
            match segments {
                // IPv4-compatible (deprecated) and NAT64 (well-known and local-use)
                // addresses reach the IPv4 address they carry.
                [0, 0, 0, 0, 0, 0, high, low] if high != 0 => return embedded(high, low),
                [0x64, 0xff9b, 0, 0, 0, 0, high, low] => return embedded(high, low),
                [0x64, 0xff9b, 1, ..] => return Some("local NAT64"),
                // 6to4 carries its IPv4 address in the second and third groups.
                [0x2002, high, low, ..] => return embedded(high, low),
                _ => {}
            }
            let first = segments[0];
            if ip.is_loopback() {
                Some("loopback")
            } else if ip.is_unspecified() {
                Some("unspecified")
            } else if first & 0xffc0 == 0xfe80 {
                Some("link-local")
            } else if first & 0xffc0 == 0xfec0 {
                Some("site-local")
            } else if first & 0xfe00 == 0xfc00 {
                Some("unique-local")
            } else if ip.is_multicast() {
                Some("multicast")
            } else {
                None
            }
        }
    }
}

/// Why a fetch was refused; the reason the policy hears in `fetch-failed`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("refused: {0}")]
pub struct Refused(pub String);

/// How a URL that passed [`OriginRules::route`] is fetched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Its host was allowed by name and port (or is an allowed address): whatever the
    /// name resolves to.
    Trusted,
    /// Its host is a name to be checked address by address when connecting.
    Checked,
}

/// The rules: the seed's own manifest host and port, its HTTP trackers' hosts and
/// ports, and the operator's entries.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OriginRules {
    /// The manifest's host and port; fetches there are the operator's own choice.
    pub manifest: Option<(String, u16)>,
    /// The hosts and ports of the seed's `http(s)` trackers: the only places a
    /// policy's HTTP requests may go. They are not trusted as the manifest's host is:
    /// a request to one passes the same address rules as any fetch (an internal
    /// tracker needs an `originAllow` entry), and fetches gain nothing from them.
    #[serde(default)]
    pub trackers: Vec<(String, u16)>,
    pub allow: Vec<AllowEntry>,
}

/// A URL's host (as [`HostName`] shows it) and port.
fn host_and_port(url: &Url) -> Option<(String, u16)> {
    Some((HostName::of(url)?.to_string(), url.port_or_known_default()?))
}

impl OriginRules {
    /// Rules for a seed whose manifest is at `manifest_url`.
    pub fn new(manifest_url: Option<&str>, allow: Vec<AllowEntry>) -> OriginRules {
        let manifest =
            manifest_url.and_then(|u| Url::parse(u).ok()).and_then(|u| host_and_port(&u));
        OriginRules { manifest, trackers: Vec::new(), allow }
    }

    /// The same rules, with the seed's trackers (those with an `http(s)` URL) added.
    pub fn with_trackers<'a>(mut self, trackers: impl IntoIterator<Item = &'a String>) -> Self {
        self.trackers = trackers
            .into_iter()
            .filter_map(|t| Url::parse(t).ok())
            .filter(|url| matches!(url.scheme(), "http" | "https"))
            .filter_map(|url| host_and_port(&url))
            .collect();
        self
    }

    /// Whether `url` goes to one of the seed's HTTP trackers.
    pub fn is_tracker(&self, url: &Url) -> bool {
        matches!(url.scheme(), "http" | "https")
            && host_and_port(url).is_some_and(|endpoint| self.trackers.contains(&endpoint))
    }

    fn names(&self, host: &HostName, port: u16) -> bool {
        let shown = host.to_string();
        let endpoint = (shown, port);
        self.manifest.as_ref() == Some(&endpoint)
            || self.allow.iter().any(|entry| match entry {
                AllowEntry::Host(h) => h == host,
                AllowEntry::HostPort(h, p) => h == host && *p == port,
                AllowEntry::Net(net) => matches!(host, HostName::Ip(ip) if net.contains(ip)),
            })
    }

    /// Whether a connection may go to `ip`, found by resolving a name the rules do not
    /// name: any public address, or one inside an allowed network or named by address.
    pub fn address_allowed(&self, ip: IpAddr) -> bool {
        internal_kind(ip).is_none()
            || self.allow.iter().any(|entry| match entry {
                AllowEntry::Net(net) => net.contains(&ip),
                AllowEntry::Host(HostName::Ip(allowed)) => *allowed == ip,
                _ => false,
            })
    }

    /// The route for one URL (one hop of a redirect chain), or why it is refused.
    pub fn route(&self, url: &Url) -> Result<Route, Refused> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(Refused(format!("{} is not an http(s) URL", redact(url.as_str()))));
        }
        let (Some(host), Some(port)) = (HostName::of(url), url.port_or_known_default()) else {
            return Err(Refused(format!("{} names no usable host", redact(url.as_str()))));
        };
        if self.names(&host, port) {
            return Ok(Route::Trusted);
        }
        match host {
            HostName::Ip(ip) => match internal_kind(ip) {
                Some(kind) => Err(Refused(format!(
                    "{host}:{port} is a {kind} address; the seed's origin is {} (allow it with originAllow)",
                    self.manifest.as_ref().map_or("unknown".into(), |(h, p)| format!("{h}:{p}"))
                ))),
                None => Ok(Route::Trusted),
            },
            HostName::Name(_) => Ok(Route::Checked),
        }
    }
}

/// A URL as it may be logged: no user, password, query or fragment, which may carry
/// credentials or signatures.
pub fn redact(url: &str) -> String {
    match Url::parse(url) {
        Ok(mut url) => {
            let _ = url.set_username("");
            let _ = url.set_password(None);
            let had_query = url.query().is_some();
            url.set_query(None);
            url.set_fragment(None);
            let mut shown = url.to_string();
            if had_query {
                shown.push_str("?…");
            }
            shown
        }
        Err(_) => url.split(['?', '#']).next().unwrap_or("").to_string(),
    }
}

/// Resolves a name and keeps only the addresses the rules allow; a name left with none
/// fails with [`Refused`].
struct CheckedResolver(Arc<OriginRules>);

/// Resolves only the names the rules trust, to whatever they resolve to.
struct TrustedResolver;

async fn lookup(name: &str) -> std::io::Result<Vec<SocketAddr>> {
    Ok(tokio::net::lookup_host((name, 0)).await?.collect())
}

impl Resolve for CheckedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let rules = self.0.clone();
        Box::pin(async move {
            let found = lookup(name.as_str()).await?;
            let (allowed, refused): (Vec<_>, Vec<_>) =
                found.into_iter().partition(|a| rules.address_allowed(a.ip()));
            if allowed.is_empty() {
                let shown: Vec<String> = refused
                    .iter()
                    .map(|a| format!("{} ({})", a.ip(), internal_kind(a.ip()).unwrap_or("?")))
                    .collect();
                return Err(Box::new(Refused(format!(
                    "{} resolves only to internal addresses: {} (allow it with originAllow)",
                    name.as_str(),
                    shown.join(", ")
                ))) as _);
            }
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

impl Resolve for TrustedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        Box::pin(async move { Ok(Box::new(lookup(name.as_str()).await?.into_iter()) as Addrs) })
    }
}

/// The two clients a worker fetches with: one that checks every address a name
/// resolves to, one for the hosts the rules trust. Neither follows redirects.
#[derive(Debug, Clone)]
pub struct Origins {
    rules: Arc<OriginRules>,
    checked: reqwest::Client,
    trusted: reqwest::Client,
}

impl Origins {
    /// Fails only if the TLS backend cannot be set up.
    pub fn new(rules: OriginRules, connect_timeout: Duration) -> Result<Origins, reqwest::Error> {
        let rules = Arc::new(rules);
        fn client(
            resolver: Arc<impl Resolve + 'static>,
            connect: Duration,
        ) -> Result<reqwest::Client, reqwest::Error> {
            reqwest::Client::builder()
                .user_agent(concat!("superpeer/", env!("CARGO_PKG_VERSION")))
                .connect_timeout(connect)
                .redirect(reqwest::redirect::Policy::none())
                // Direct, never through a proxy from the environment: a proxy would
                // resolve names out of reach of the address check.
                .no_proxy()
                .dns_resolver(resolver)
                .build()
        }
        Ok(Origins {
            checked: client(Arc::new(CheckedResolver(rules.clone())), connect_timeout)?,
            trusted: client(Arc::new(TrustedResolver), connect_timeout)?,
            rules,
        })
    }

    pub fn rules(&self) -> &OriginRules {
        &self.rules
    }

    /// The client for one hop, or why the hop is refused.
    pub fn client_for(&self, url: &Url) -> Result<&reqwest::Client, Refused> {
        Ok(match self.rules.route(url)? {
            Route::Trusted => &self.trusted,
            Route::Checked => &self.checked,
        })
    }
}

/// The refusal inside a failed request, when the resolver refused its addresses.
pub fn refusal_in<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a Refused> {
    let mut cause = Some(error);
    while let Some(e) = cause {
        if let Some(refused) = e.downcast_ref::<Refused>() {
            return Some(refused);
        }
        cause = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(text: &str) -> Url {
        Url::parse(text).unwrap()
    }

    #[test]
    fn internal_addresses_are_named_by_kind() {
        for (ip, kind) in [
            ("127.0.0.1", Some("loopback")),
            ("10.1.2.3", Some("private")),
            ("172.16.0.1", Some("private")),
            ("192.168.1.1", Some("private")),
            ("169.254.169.254", Some("link-local")),
            ("100.64.0.1", Some("shared (CGNAT)")),
            ("100.127.255.255", Some("shared (CGNAT)")),
            ("224.0.0.1", Some("multicast")),
            ("0.0.0.0", Some("unspecified")),
            ("255.255.255.255", Some("broadcast")),
            ("::1", Some("loopback")),
            ("::", Some("unspecified")),
            ("fe80::1", Some("link-local")),
            ("fd00::1", Some("unique-local")),
            ("ff02::1", Some("multicast")),
            ("::ffff:127.0.0.1", Some("loopback")),
            ("::ffff:169.254.169.254", Some("link-local")),
            ("192.0.0.192", Some("special-purpose")),
            ("198.18.0.1", Some("benchmarking")),
            ("240.0.0.1", Some("reserved")),
            ("203.0.113.9", Some("documentation")),
            ("::127.0.0.1", Some("loopback")),
            ("64:ff9b::a9fe:a9fe", Some("link-local")),
            ("64:ff9b::808:808", None),
            ("64:ff9b:1::1", Some("local NAT64")),
            ("2002:c0a8:0101::1", Some("private")),
            ("fec0::1", Some("site-local")),
            ("8.8.8.8", None),
            ("100.128.0.1", None),
            ("172.32.0.1", None),
            ("2606:4700::1111", None),
        ] {
            assert_eq!(internal_kind(ip.parse().unwrap()), kind, "{ip}");
        }
    }

    #[test]
    fn allow_entries_parse_and_print_back() {
        for text in [
            "origin.internal",
            "origin.internal:8080",
            "10.0.0.0/8",
            "fd00::/8",
            "[::1]:9000",
            "127.0.0.1",
            "::1",
        ] {
            let entry: AllowEntry = text.parse().unwrap();
            let again: AllowEntry = entry.to_string().parse().unwrap();
            assert_eq!(entry, again, "{text}");
        }
        assert_eq!(
            "Origin.Internal.:80".parse::<AllowEntry>().unwrap(),
            AllowEntry::HostPort(HostName::Name("origin.internal".into()), 80)
        );
        for wrong in ["", "host:0", "host:http", "10.0.0.0/33", "bad host", "a..b", "http://x/"] {
            assert!(wrong.parse::<AllowEntry>().is_err(), "{wrong:?}");
        }
        assert_eq!(parse_allow_list(" a.example , ,10.0.0.0/8").unwrap().len(), 2);
        // Found by fuzzing: an address with a trailing dot is an address.
        assert_eq!(
            "127.0.0.1.".parse::<AllowEntry>().unwrap(),
            AllowEntry::Host(HostName::Ip("127.0.0.1".parse().unwrap()))
        );
    }

    #[test]
    fn the_manifests_host_and_port_and_allowed_entries_pass_internal_addresses_do_not() {
        let rules = OriginRules::new(Some("http://127.0.0.1:8080/live/master.m3u8?sig=1"), vec![]);
        assert_eq!(rules.route(&url("http://127.0.0.1:8080/s1.ts")), Ok(Route::Trusted));
        let refused = rules.route(&url("http://127.0.0.1:6379/")).unwrap_err();
        assert!(refused.0.contains("127.0.0.1:6379 is a loopback address"), "{refused}");
        assert!(rules.route(&url("http://169.254.169.254/latest/meta-data/")).is_err());
        assert!(rules.route(&url("http://[::ffff:7f00:1]:8080/")).is_err(), "mapped");
        assert!(rules.route(&url("file:///etc/passwd")).is_err());
        assert_eq!(rules.route(&url("https://8.8.8.8/x")), Ok(Route::Trusted));
        // Names are checked when their addresses are known.
        assert_eq!(rules.route(&url("http://localhost:6379/")), Ok(Route::Checked));

        let named = OriginRules::new(Some("http://Origin.Internal/m.m3u8"), vec![]);
        assert_eq!(named.route(&url("http://origin.internal:80/s.ts")), Ok(Route::Trusted));
        assert_eq!(named.route(&url("http://origin.internal:22/")), Ok(Route::Checked));

        let allow = parse_allow_list("cache.lan:8443,10.0.0.0/8,[::1]:9000,other.lan").unwrap();
        let rules = OriginRules::new(None, allow);
        assert_eq!(rules.route(&url("https://cache.lan:8443/")), Ok(Route::Trusted));
        assert_eq!(rules.route(&url("https://cache.lan/")), Ok(Route::Checked));
        assert_eq!(rules.route(&url("http://other.lan:1/")), Ok(Route::Trusted));
        assert_eq!(rules.route(&url("http://10.9.8.7/")), Ok(Route::Trusted));
        assert_eq!(rules.route(&url("http://[::1]:9000/")), Ok(Route::Trusted));
        assert!(rules.route(&url("http://[::1]:9001/")).is_err());
        assert!(rules.address_allowed("10.1.1.1".parse().unwrap()));
        assert!(!rules.address_allowed("127.0.0.1".parse().unwrap()));
        assert!(rules.address_allowed("93.184.216.34".parse().unwrap()));
    }

    #[test]
    fn logged_urls_keep_no_credentials_or_signatures() {
        assert_eq!(
            redact("https://user:pw@cdn.example/a/s1.ts?token=secret#t=1"),
            "https://cdn.example/a/s1.ts?…"
        );
        assert_eq!(redact("http://o.example/m.m3u8"), "http://o.example/m.m3u8");
        assert_eq!(redact("not a url?secret"), "not a url");
    }
}
