//! Policies: the decisions and wire formats of a worker, as sandboxed WebAssembly
//! components that can be replaced while the worker runs.
//!
//! - [`PolicyEngine`] compiles and type-checks components (off the event loop);
//!   [`PolicyEngine::admit`] is the one check a new policy passes before it runs.
//! - [`PolicyRunner`] runs one worker's policy: events in, admitted commands out,
//!   faults contained, hot swaps at event boundaries.
//! - [`Tables`] is the host's authoritative view that every command is checked against
//!   and that a fresh instance is told about.
//! - The watchdog stops guest calls that run past their deadline.
//!
//! Nothing here does network or disk I/O on a policy's behalf; the worker carries out
//! the commands the runner admits.

mod admission;
mod bindings;
mod engine;
mod error;
mod limits;
mod runner;
mod tables;
mod watchdog;

pub use admission::AdmittedPolicy;
pub use engine::{Clock, CompiledPolicy, LOG_TARGET, PolicyEngine, PolicyMeta, Precompiled};
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

    /// The bytes of text and data an event hands a policy: what splits large turns
    /// into several calls and what a call's deadline grows with.
    pub fn payload_bytes(event: &Event) -> usize {
        match event {
            Event::TrackerText(t) => t.text.len(),
            Event::TrackerClosed(c) => c.reason.len(),
            Event::PeerOfferReady(r) | Event::PeerAnswerReady(r) => r.sdp.len(),
            Event::PeerMessage(m) => m.data.len(),
            Event::PeerClosed(c) => c.reason.len(),
            Event::TextFetched(t) => t.url.len() + t.text.len(),
            Event::SegmentStored(s) => s.segment.url.len(),
            Event::FetchFailed(f) => f.reason.len(),
            Event::Started
            | Event::Stopping
            | Event::TrackerConnected(_)
            | Event::PeerChannelOpen(_)
            | Event::PeerBufferedLow(_)
            | Event::SegmentEvicted(_)
            | Event::SegmentSent(_)
            | Event::TimerFired(_) => 0,
        }
    }
}

/// The default policy (`guest/pml`), built with the host and embedded in the binary.
pub const EMBEDDED_POLICY: &[u8] =
    include_bytes!(concat!(env!("SUPERPEER_GUEST_DIR"), "/superpeer_policy_pml.wasm"));
