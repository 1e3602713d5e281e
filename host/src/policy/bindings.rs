//! The edge between wasmtime's generated bindings and the host's own types: every
//! supported version of the `superpeer:policy` world (`wit/0.1.0`, `wit/0.2.0`), which
//! of them a component implements, and the conversions to and from [`wire`].
//!
//! Adding a version is a module here, its arms in [`Pre`] and [`Bindings`], and its
//! conversions; nothing past this file sees generated types. A released version's
//! module never changes: components built against it keep loading.

use wasmtime::Store;
use wasmtime::component::{HasSelf, InstancePre, Linker};

use super::engine::StoreData;
use super::wire;

mod v0_1_0 {
    wasmtime::component::bindgen!({ path: "../wit/0.1.0", world: "policy" });
}

mod v0_2_0 {
    wasmtime::component::bindgen!({ path: "../wit/0.2.0", world: "policy" });
}

use v0_1_0::superpeer::policy::types as t1;
use v0_2_0::superpeer::policy::types as t2;

/// The world versions this host runs, newest first (as `describe`d to operators).
pub const WORLD_VERSIONS: [&str; 2] = ["0.2.0", "0.1.0"];

/// Links the host's imports of every version.
pub(super) fn add_to_linker(linker: &mut Linker<StoreData>) -> wasmtime::Result<()> {
    v0_2_0::Policy::add_to_linker::<StoreData, HasSelf<StoreData>>(linker, |data| data)?;
    v0_1_0::Policy::add_to_linker::<StoreData, HasSelf<StoreData>>(linker, |data| data)
}

/// A component checked against one version of the world, ready to instantiate.
#[derive(Clone)]
pub(super) enum Pre {
    V0_1(v0_1_0::PolicyPre<StoreData>),
    V0_2(v0_2_0::PolicyPre<StoreData>),
}

impl Pre {
    /// The newest version the component implements; an error naming what it lacks
    /// for each version when it implements none.
    pub(super) fn new(instance: InstancePre<StoreData>) -> Result<Pre, String> {
        let newest = match v0_2_0::PolicyPre::new(instance.clone()) {
            Ok(pre) => return Ok(Pre::V0_2(pre)),
            Err(e) => e,
        };
        v0_1_0::PolicyPre::new(instance)
            .map(Pre::V0_1)
            .map_err(|oldest| format!("as 0.2.0: {newest:#}; as 0.1.0: {oldest:#}"))
    }

    pub(super) fn world(&self) -> &'static str {
        match self {
            Pre::V0_1(_) => "0.1.0",
            Pre::V0_2(_) => "0.2.0",
        }
    }

    pub(super) fn instantiate(&self, store: &mut Store<StoreData>) -> wasmtime::Result<Bindings> {
        Ok(match self {
            Pre::V0_1(pre) => Bindings::V0_1(pre.instantiate(store)?),
            Pre::V0_2(pre) => Bindings::V0_2(pre.instantiate(store)?),
        })
    }
}

/// An instance's exports, in the version it was built for.
pub(super) enum Bindings {
    V0_1(v0_1_0::Policy),
    V0_2(v0_2_0::Policy),
}

impl Bindings {
    pub(super) fn call_init(
        &self,
        store: &mut Store<StoreData>,
        config: &wire::SeedConfig,
        prior: Option<&[u8]>,
        state: &wire::HostState,
    ) -> wasmtime::Result<Result<(), String>> {
        match self {
            // 0.1.0 has no way to measure without joining: as a scout it would seed.
            Bindings::V0_1(_) if config.scout => {
                Ok(Err("a policy built for world 0.1.0 cannot measure a swarm (scout)".into()))
            }
            Bindings::V0_1(b) => {
                b.call_init(store, &seed_config_v0_1(config), prior, &host_state_v0_1(state))
            }
            Bindings::V0_2(b) => {
                b.call_init(store, &config.clone().lift(), prior, &state.clone().lift())
            }
        }
    }

    /// Events a version cannot express never reach it (they answer commands it
    /// cannot give).
    pub(super) fn call_handle(
        &self,
        store: &mut Store<StoreData>,
        events: &[wire::Event],
    ) -> wasmtime::Result<Vec<wire::Command>> {
        match self {
            Bindings::V0_1(b) => {
                let events: Vec<t1::Event> =
                    events.iter().cloned().filter_map(event_v0_1).collect();
                Ok(commands_v0_1(b.call_handle(store, &events)?))
            }
            Bindings::V0_2(b) => {
                let events: Vec<t2::Event> = events.iter().cloned().map(Lift::lift).collect();
                Ok(b.call_handle(store, &events)?.into_iter().map(Lift::lift).collect())
            }
        }
    }

    pub(super) fn call_snapshot(&self, store: &mut Store<StoreData>) -> wasmtime::Result<Vec<u8>> {
        match self {
            Bindings::V0_1(b) => b.call_snapshot(store),
            Bindings::V0_2(b) => b.call_snapshot(store),
        }
    }

    pub(super) fn call_describe(
        &self,
        store: &mut Store<StoreData>,
    ) -> wasmtime::Result<wire::PolicyInfo> {
        Ok(match self {
            Bindings::V0_1(b) => b.call_describe(store)?.lift(),
            Bindings::V0_2(b) => b.call_describe(store)?.lift(),
        })
    }
}

/// A value converted between the host's types and a version's generated ones.
trait Lift<T> {
    fn lift(self) -> T;
}

macro_rules! same {
    ($($t:ty),*) => { $(impl Lift<$t> for $t { fn lift(self) -> $t { self } })* };
}
same!(u8, u16, u32, u64, bool, String);

/// The WIT types carry ids as bare numbers.
macro_rules! bare_ids {
    ($($id:ident),*) => {$(
        impl Lift<wire::$id> for u64 { fn lift(self) -> wire::$id { wire::$id(self) } }
        impl Lift<u64> for wire::$id { fn lift(self) -> u64 { self.0 } }
    )*};
}
bare_ids!(ConnId, PeerId, FetchId, RequestId, TimerId, SegmentHandle);

impl<A: Lift<B>, B> Lift<Option<B>> for Option<A> {
    fn lift(self) -> Option<B> {
        self.map(Lift::lift)
    }
}

impl<A: Lift<B>, B> Lift<Vec<B>> for Vec<A> {
    fn lift(self) -> Vec<B> {
        self.into_iter().map(Lift::lift).collect()
    }
}

impl<A: Lift<C>, B: Lift<D>, C, D> Lift<(C, D)> for (A, B) {
    fn lift(self) -> (C, D) {
        (self.0.lift(), self.1.lift())
    }
}

/// Records with the same fields in a version as in the host's types, both ways.
macro_rules! records {
    ($version:ident: $($name:ident { $($field:ident),* })*) => {$(
        impl Lift<wire::$name> for $version::$name {
            fn lift(self) -> wire::$name { wire::$name { $($field: self.$field.lift()),* } }
        }
        impl Lift<$version::$name> for wire::$name {
            fn lift(self) -> $version::$name { $version::$name { $($field: self.$field.lift()),* } }
        }
    )*};
}

/// Enums with the same cases in a version as in the host's types, both ways.
macro_rules! enums {
    ($version:ident: $($name:ident { $($case:ident),* })*) => {$(
        impl Lift<wire::$name> for $version::$name {
            fn lift(self) -> wire::$name { match self { $($version::$name::$case => wire::$name::$case),* } }
        }
        impl Lift<$version::$name> for wire::$name {
            fn lift(self) -> $version::$name { match self { $(wire::$name::$case => $version::$name::$case),* } }
        }
    )*};
}

/// What every version has alike: the records, enums and the variants' common cases.
macro_rules! common {
    ($version:ident) => {
        records! { $version:
            PolicyInfo { name, version }
            ByteRange { start, end }
            SegmentInfo { handle, url, range, size, tier }
            TrackerState { conn, url, open }
            PeerState { peer, open, serving }
            TrackerText { conn, text }
            TrackerClosed { conn, reason }
            SdpReady { peer, sdp }
            PeerMessage { peer, data }
            PeerClosed { peer, reason }
            TextFetched { fetch, url, text }
            SegmentStored { fetch, segment }
            FetchFailed { fetch, status, reason }
            SegmentSent { peer, handle, bytes, complete }
            TrackerConnect { conn, url }
            TrackerSend { conn, text }
            PeerAnswer { peer, offer }
            PeerAcceptAnswer { peer, answer }
            PeerSend { peer, data }
            CancelServe { peer, handle }
            PeerClose { peer, reason }
            FetchText { fetch, url }
            FetchSegment { fetch, url, range, tier }
            TimerSet { timer, after_ms }
        }
        enums! { $version:
            CacheTier { Memory, Disk, DiskIfCached }
            LogLevel { Error, Warn, Info, Debug, Trace }
        }
    };
}
common!(t1);
common!(t2);

/// An event in the cases every version has, then the version's own arms: the match
/// stays exhaustive, so a case added to the host's types is handled for every version.
macro_rules! common_event {
    ($version:ident, $event:expr, $($own:tt)*) => {
        match $event {
            wire::Event::Started => $version::Event::Started,
            wire::Event::Stopping => $version::Event::Stopping,
            wire::Event::TrackerConnected(c) => $version::Event::TrackerConnected(c.lift()),
            wire::Event::TrackerText(t) => $version::Event::TrackerText(t.lift()),
            wire::Event::TrackerClosed(c) => $version::Event::TrackerClosed(c.lift()),
            wire::Event::PeerOfferReady(r) => $version::Event::PeerOfferReady(r.lift()),
            wire::Event::PeerAnswerReady(r) => $version::Event::PeerAnswerReady(r.lift()),
            wire::Event::PeerChannelOpen(p) => $version::Event::PeerChannelOpen(p.lift()),
            wire::Event::PeerMessage(m) => $version::Event::PeerMessage(m.lift()),
            wire::Event::PeerBufferedLow(p) => $version::Event::PeerBufferedLow(p.lift()),
            wire::Event::PeerClosed(c) => $version::Event::PeerClosed(c.lift()),
            wire::Event::TextFetched(t) => $version::Event::TextFetched(t.lift()),
            wire::Event::SegmentStored(s) => $version::Event::SegmentStored(s.lift()),
            wire::Event::FetchFailed(f) => $version::Event::FetchFailed(f.lift()),
            wire::Event::SegmentEvicted(h) => $version::Event::SegmentEvicted(h.lift()),
            wire::Event::SegmentSent(s) => $version::Event::SegmentSent(s.lift()),
            wire::Event::TimerFired(t) => $version::Event::TimerFired(t.lift()),
            $($own)*
        }
    };
}

/// A command in the cases every version has, then the version's own arms.
macro_rules! common_command {
    ($version:ident, $command:expr, $($own:tt)*) => {
        match $command {
            $version::Command::TrackerConnect(c) => wire::Command::TrackerConnect(c.lift()),
            $version::Command::TrackerSend(s) => wire::Command::TrackerSend(s.lift()),
            $version::Command::TrackerClose(c) => wire::Command::TrackerClose(c.lift()),
            $version::Command::PeerOffer(p) => wire::Command::PeerOffer(p.lift()),
            $version::Command::PeerAnswer(a) => wire::Command::PeerAnswer(a.lift()),
            $version::Command::PeerAcceptAnswer(a) => wire::Command::PeerAcceptAnswer(a.lift()),
            $version::Command::PeerSend(s) => wire::Command::PeerSend(s.lift()),
            $version::Command::CancelServe(c) => wire::Command::CancelServe(c.lift()),
            $version::Command::PeerClose(c) => wire::Command::PeerClose(c.lift()),
            $version::Command::FetchText(f) => wire::Command::FetchText(f.lift()),
            $version::Command::FetchSegment(f) => wire::Command::FetchSegment(f.lift()),
            $version::Command::FetchCancel(f) => wire::Command::FetchCancel(f.lift()),
            $version::Command::Evict(h) => wire::Command::Evict(h.lift()),
            $version::Command::TimerSet(t) => wire::Command::TimerSet(t.lift()),
            $version::Command::TimerCancel(t) => wire::Command::TimerCancel(t.lift()),
            $($own)*
        }
    };
}

// ---- 0.2.0: the host's types, field for field ----

records! { t2:
    SeedConfig { channel, manifest_url, trackers, live, max_connections, label, settings, scout }
    HostState { trackers, peers, fetches, requests, segments, timers }
    HttpResponse { request, status, headers, body }
    HttpFailed { request, reason }
    HttpRequest { request, method, url, headers, body }
    ServeSegment { peer, handle, offset, message_size, end }
    PeerSendText { peer, text }
}

impl Lift<wire::MessageSize> for t2::MessageSize {
    fn lift(self) -> wire::MessageSize {
        match self {
            t2::MessageSize::AtMost(n) => wire::MessageSize::AtMost(n),
            t2::MessageSize::Exactly(n) => wire::MessageSize::Exactly(n),
        }
    }
}

impl Lift<t2::MessageSize> for wire::MessageSize {
    fn lift(self) -> t2::MessageSize {
        match self {
            wire::MessageSize::AtMost(n) => t2::MessageSize::AtMost(n),
            wire::MessageSize::Exactly(n) => t2::MessageSize::Exactly(n),
        }
    }
}

impl Lift<t2::Event> for wire::Event {
    fn lift(self) -> t2::Event {
        common_event!(t2, self,
            wire::Event::HttpResponse(r) => t2::Event::HttpResponse(r.lift()),
            wire::Event::HttpFailed(f) => t2::Event::HttpFailed(f.lift()),
        )
    }
}

impl Lift<wire::Command> for t2::Command {
    fn lift(self) -> wire::Command {
        common_command!(t2, self,
            t2::Command::ServeSegment(s) => wire::Command::ServeSegment(s.lift()),
            t2::Command::HttpRequest(r) => wire::Command::HttpRequest(r.lift()),
            t2::Command::PeerSendText(s) => wire::Command::PeerSendText(s.lift()),
            t2::Command::SwarmSize(n) => wire::Command::SwarmSize(n),
        )
    }
}

// ---- 0.1.0: frozen; what it lacks is left out, what it says differently is adapted ----

/// 0.1.0 has no scouts; none is ever started with it.
fn seed_config_v0_1(config: &wire::SeedConfig) -> t1::SeedConfig {
    let config = config.clone();
    t1::SeedConfig {
        channel: config.channel,
        manifest_url: config.manifest_url,
        trackers: config.trackers,
        live: config.live,
        max_connections: config.max_connections,
        label: config.label,
        settings: config.settings,
    }
}

/// 0.1.0 has no HTTP requests, so none is ever in flight for it.
fn host_state_v0_1(state: &wire::HostState) -> t1::HostState {
    let state = state.clone();
    t1::HostState {
        trackers: state.trackers.lift(),
        peers: state.peers.lift(),
        fetches: state.fetches.lift(),
        segments: state.segments.lift(),
        timers: state.timers.lift(),
    }
}

fn event_v0_1(event: wire::Event) -> Option<t1::Event> {
    Some(common_event!(t1, event,
        wire::Event::HttpResponse(_) | wire::Event::HttpFailed(_) => return None,
    ))
}

/// 0.1.0 says a serve's end as a `peer-send` to the same peer right after it, and its
/// chunk size is a most.
fn commands_v0_1(commands: Vec<t1::Command>) -> Vec<wire::Command> {
    let mut out = Vec::with_capacity(commands.len());
    let mut commands = commands.into_iter().peekable();
    while let Some(command) = commands.next() {
        out.push(common_command!(t1, command,
            t1::Command::ServeSegment(s) => {
                let end = commands
                    .next_if(|next| matches!(next, t1::Command::PeerSend(p) if p.peer == s.peer))
                    .and_then(|next| match next {
                        t1::Command::PeerSend(p) => Some(p.data),
                        _ => None,
                    });
                wire::Command::ServeSegment(wire::ServeSegment {
                    peer: s.peer.lift(),
                    handle: s.handle.lift(),
                    offset: s.offset,
                    message_size: wire::MessageSize::AtMost(s.chunk_size),
                    end,
                })
            }
        ));
    }
    out
}

// ---- the host's imports, alike in every version ----

macro_rules! host_imports {
    ($version:ident) => {
        impl $version::superpeer::policy::types::Host for StoreData {}

        impl $version::superpeer::policy::host::Host for StoreData {
            fn monotonic_ms(&mut self) -> u64 {
                self.import_monotonic_ms()
            }

            fn wall_clock_ms(&mut self) -> u64 {
                self.import_wall_clock_ms()
            }

            fn random_u64(&mut self) -> u64 {
                self.import_random_u64()
            }

            fn log(
                &mut self,
                level: $version::superpeer::policy::types::LogLevel,
                message: String,
            ) {
                self.import_log(level.lift(), &message)
            }
        }
    };
}
host_imports!(v0_1_0);
host_imports!(v0_2_0);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_v0_1_serve_takes_the_message_right_after_it_to_the_same_peer_as_its_end() {
        let serve = |peer| {
            t1::Command::ServeSegment(t1::ServeSegment {
                peer,
                handle: 9,
                offset: 3,
                chunk_size: 100,
            })
        };
        let send =
            |peer, data: &[u8]| t1::Command::PeerSend(t1::PeerSend { peer, data: data.to_vec() });
        let commands =
            commands_v0_1(vec![serve(1), send(1, b"end"), serve(2), send(1, b"other"), serve(3)]);
        let expected = |peer, end: Option<&[u8]>| {
            wire::Command::ServeSegment(wire::ServeSegment {
                peer,
                handle: wire::SegmentHandle(9),
                offset: 3,
                message_size: wire::MessageSize::AtMost(100),
                end: end.map(<[u8]>::to_vec),
            })
        };
        assert_eq!(
            commands,
            vec![
                expected(wire::PeerId(1), Some(b"end")),
                expected(wire::PeerId(2), None),
                wire::Command::PeerSend(wire::PeerSend {
                    peer: wire::PeerId(1),
                    data: b"other".to_vec()
                }),
                expected(wire::PeerId(3), None),
            ]
        );
    }

    #[test]
    fn events_v0_1_cannot_express_never_reach_it() {
        let http = wire::Event::HttpFailed(wire::HttpFailed {
            request: wire::RequestId(1),
            reason: "no".into(),
        });
        assert!(event_v0_1(http).is_none());
        assert!(matches!(
            event_v0_1(wire::Event::TimerFired(wire::TimerId(4))),
            Some(t1::Event::TimerFired(4))
        ));
    }
}
