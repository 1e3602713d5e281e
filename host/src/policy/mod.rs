//! Policies: the decisions and wire formats of a worker, as sandboxed WebAssembly
//! components that can be replaced while the worker runs.
//!
//! - [`PolicyEngine`] compiles and type-checks components (off the event loop).
//! - [`PolicyRunner`] runs one worker's policy: events in, admitted commands out,
//!   faults contained, hot swaps at event boundaries.
//! - [`Tables`] is the host's authoritative view that every command is checked against
//!   and that a fresh instance is told about.
//!
//! Nothing here does network or disk I/O on a policy's behalf; the worker carries out
//! the commands the runner admits.

mod bindings;
mod engine;
mod error;
mod limits;
mod runner;
mod tables;

pub use engine::{Clock, CompiledPolicy, PolicyEngine, PolicyMeta, Precompiled};
pub use error::{Fault, PolicyError};
pub use limits::{LimitError, PolicyLimits};
pub use runner::{FaultReport, PolicyRunner, PolicyStats, SwapReport};
pub use tables::{Rejection, Tables};

/// The types of the policy world, shared by host and guests.
pub mod wire {
    pub use super::bindings::superpeer::policy::types::*;

    /// Whether `next`, returned right after `serve` in one call, is that serve's end: a
    /// `peer-send` to the same peer. The host sends it after the serve's last byte, and
    /// not at all if the serve is refused, fails or is cancelled first (a protocol's
    /// end-of-segment command must not follow bytes that never went out).
    pub fn ends_serve(serve: &ServeSegment, next: &Command) -> bool {
        matches!(next, Command::PeerSend(send) if send.peer == serve.peer)
    }
}

/// The default policy (`guest/pml`), built with the host and embedded in the binary.
pub const EMBEDDED_POLICY: &[u8] =
    include_bytes!(concat!(env!("SUPERPEER_GUEST_DIR"), "/superpeer_policy_pml.wasm"));
