//! The superpeer guest SDK: a policy is a plain Rust type implementing [`Policy`],
//! exported with [`export_policy!`] and built for `wasm32-wasip2`.
//!
//! This crate owns the bindings to the `superpeer:policy` world and the glue that keeps
//! one policy value alive between calls. It must never do I/O of its own: everything a
//! policy wants done goes out as a [`Command`] from [`Policy::handle`], and the only
//! imports are the host's clock, randomness and log ([`host`]).
//!
//! ```ignore
//! use superpeer_guest::{Command, Event, HostState, Policy, PolicyInfo, SeedConfig};
//!
//! struct Quiet;
//! impl Policy for Quiet {
//!     fn describe() -> PolicyInfo { PolicyInfo { name: "quiet".into(), version: "1.0.0".into() } }
//!     fn init(_: SeedConfig, _: Option<Vec<u8>>, _: HostState) -> Result<Self, String> { Ok(Quiet) }
//!     fn handle(&mut self, _: Vec<Event>) -> Vec<Command> { Vec::new() }
//! }
//! superpeer_guest::export_policy!(Quiet);
//! ```

// The generated bindings name this crate by its external path, from inside it too.
extern crate self as superpeer_guest;

pub mod allowance;
pub mod continuity;
pub mod links;
pub use allowance::Allowance;
pub use continuity::{Ids, Timers};

/// The world version this build of the SDK binds: the newest, or 0.1.0 with the
/// `wit-0-1-0` feature (a test build of what policies built before 0.2.0 are).
#[cfg(not(feature = "wit-0-1-0"))]
pub const WORLD_VERSION: &str = "0.2.0";
#[cfg(feature = "wit-0-1-0")]
pub const WORLD_VERSION: &str = "0.1.0";

/// The bindings of the world at `$path`, the same way for every version.
macro_rules! bind_world {
    ($path:literal) => {
        wit_bindgen::generate!({
            path: $path,
            world: "policy",
            pub_export_macro: true,
            export_macro_name: "export_world",
            default_bindings_module: "superpeer_guest::bindings",
            runtime_path: "superpeer_guest::__private::wit_bindgen::rt",
            additional_derives: [PartialEq, Eq],
        });
    };
}

#[doc(hidden)]
pub mod bindings {
    #[cfg(not(feature = "wit-0-1-0"))]
    bind_world!("../../wit/0.2.0");
    #[cfg(feature = "wit-0-1-0")]
    bind_world!("../../wit/0.1.0");
}

#[doc(hidden)]
pub mod __private {
    pub use wit_bindgen;

    /// Sends panic messages to the host's log: the host reports the last error line
    /// with the fault, so operators see why a policy died, not just that it did.
    pub fn install_panic_hook() {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            std::panic::set_hook(Box::new(|info| crate::host::error(&info.to_string())));
        });
    }
}

pub use bindings::superpeer::policy::types::{
    ByteRange, CacheTier, CancelServe, Command, Event, FetchFailed, FetchSegment, FetchText,
    HostState, LogLevel, PeerAcceptAnswer, PeerAnswer, PeerClose, PeerClosed, PeerMessage,
    PeerSend, PeerState, PolicyInfo, SdpReady, SeedConfig, SegmentInfo, SegmentSent, SegmentStored,
    ServeSegment, TextFetched, TimerSet, TrackerClosed, TrackerConnect, TrackerSend, TrackerState,
    TrackerText,
};
pub use bindings::superpeer::policy::types::{ConnId, FetchId, PeerId, SegmentHandle, TimerId};
#[cfg(not(feature = "wit-0-1-0"))]
pub use bindings::superpeer::policy::types::{
    HttpFailed, HttpRequest, HttpResponse, MessageSize, PeerSendText, RequestId,
};

/// Streams a cached segment's bytes to `peer` from `offset` in DataChannel messages of
/// at most `at_most` bytes (the host may cut them smaller), then `end`, which is sent
/// only if every byte went out. Written so in every world version this SDK builds for.
pub fn serve_segment(
    out: &mut Vec<Command>,
    peer: PeerId,
    handle: SegmentHandle,
    offset: u64,
    at_most: u32,
    end: Option<Vec<u8>>,
) {
    #[cfg(not(feature = "wit-0-1-0"))]
    out.push(Command::ServeSegment(ServeSegment {
        peer,
        handle,
        offset,
        message_size: MessageSize::AtMost(at_most),
        end,
    }));
    #[cfg(feature = "wit-0-1-0")]
    {
        // 0.1.0 says the end as a message to the same peer right after the serve.
        out.push(Command::ServeSegment(ServeSegment { peer, handle, offset, chunk_size: at_most }));
        out.extend(end.map(|data| Command::PeerSend(PeerSend { peer, data })));
    }
}

/// Whether the seed only asks for its swarms to be measured (a scout: `swarm-size`,
/// joining nothing). A 0.1.0 host has no scouts.
pub fn is_scout(config: &SeedConfig) -> bool {
    #[cfg(not(feature = "wit-0-1-0"))]
    return config.scout;
    #[cfg(feature = "wit-0-1-0")]
    {
        let _ = config;
        false
    }
}

/// Tells the host how many viewers the seed's swarms hold, this worker not counted.
/// 0.1.0 has no way to say it, and says nothing.
pub fn swarm_size(out: &mut Vec<Command>, viewers: u64) {
    #[cfg(not(feature = "wit-0-1-0"))]
    out.push(Command::SwarmSize(viewers));
    #[cfg(feature = "wit-0-1-0")]
    let _ = (out, viewers);
}

/// The host's imports: the only outside facts a policy can see.
///
/// The log helpers ([`error`](host::error) to [`debug`](host::debug)) do nothing in a
/// native build (a policy's unit tests), where there is no host to write to.
pub mod host {
    use crate::LogLevel;
    pub use crate::bindings::superpeer::policy::host::{
        log, monotonic_ms, random_u64, wall_clock_ms,
    };

    pub fn error(message: &str) {
        emit(LogLevel::Error, message);
    }
    pub fn warn(message: &str) {
        emit(LogLevel::Warn, message);
    }
    pub fn info(message: &str) {
        emit(LogLevel::Info, message);
    }
    pub fn debug(message: &str) {
        emit(LogLevel::Debug, message);
    }

    #[cfg(target_family = "wasm")]
    fn emit(level: LogLevel, message: &str) {
        log(level, message);
    }

    #[cfg(not(target_family = "wasm"))]
    fn emit(_: LogLevel, _: &str) {}
}

/// A policy: the decisions and wire formats of one worker.
///
/// The host creates one value with [`Policy::init`] per instance and feeds it batches of
/// events. A policy that panics, loops or exhausts its memory is discarded by the host and
/// restarted from its last [`Policy::snapshot`]; it cannot harm the worker.
pub trait Policy: Sized + 'static {
    /// The policy's name and version, as the control plane reports them.
    fn describe() -> PolicyInfo;

    /// Builds the policy for a worker. `prior` is the last snapshot of the instance this
    /// one replaces (a restart after a fault or a hot swap), which may come from another
    /// version of the policy; `state` is the host's authoritative view (open
    /// connections, peers, cached segments, timers). An error keeps this instance out of
    /// service.
    fn init(config: SeedConfig, prior: Option<Vec<u8>>, state: HostState) -> Result<Self, String>;

    /// Everything that happened since the last call, in order; returns what to do.
    fn handle(&mut self, events: Vec<Event>) -> Vec<Command>;

    /// State worth carrying to the next instance. The host takes one periodically and
    /// before a hot swap; the default carries nothing.
    fn snapshot(&self) -> Vec<u8> {
        Vec::new()
    }
}

/// Exports a [`Policy`] type as the component's implementation of the policy world.
#[macro_export]
macro_rules! export_policy {
    ($policy:ty) => {
        const _: () = {
            ::std::thread_local! {
                static POLICY: ::std::cell::RefCell<::std::option::Option<$policy>> =
                    const { ::std::cell::RefCell::new(::std::option::Option::None) };
            }

            struct Export;

            impl $crate::bindings::Guest for Export {
                fn init(
                    config: $crate::SeedConfig,
                    prior: ::std::option::Option<::std::vec::Vec<u8>>,
                    state: $crate::HostState,
                ) -> ::std::result::Result<(), ::std::string::String> {
                    $crate::__private::install_panic_hook();
                    let policy = <$policy as $crate::Policy>::init(config, prior, state)?;
                    POLICY.with_borrow_mut(|slot| *slot = ::std::option::Option::Some(policy));
                    ::std::result::Result::Ok(())
                }

                fn handle(
                    events: ::std::vec::Vec<$crate::Event>,
                ) -> ::std::vec::Vec<$crate::Command> {
                    POLICY.with_borrow_mut(|slot| match slot {
                        ::std::option::Option::Some(policy) => {
                            <$policy as $crate::Policy>::handle(policy, events)
                        }
                        // The host never calls handle before a successful init; if it
                        // did, trapping is the honest answer.
                        ::std::option::Option::None => {
                            ::std::panic!("handle called before init")
                        }
                    })
                }

                fn snapshot() -> ::std::vec::Vec<u8> {
                    POLICY.with_borrow(|slot| {
                        slot.as_ref().map(<$policy as $crate::Policy>::snapshot).unwrap_or_default()
                    })
                }

                fn describe() -> $crate::PolicyInfo {
                    <$policy as $crate::Policy>::describe()
                }
            }

            $crate::bindings::export_world!(Export);
        };
    };
}
