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
pub mod wire;

pub use admission::AdmittedPolicy;
pub use bindings::WORLD_VERSIONS;
pub use engine::{Clock, CompiledPolicy, LOG_TARGET, PolicyEngine, PolicyMeta, Precompiled};
pub use error::{Fault, PolicyError};
pub use limits::{LimitError, PolicyLimits};
pub use runner::{FaultReport, PolicyRunner, PolicyStats, SwapReport};
pub use tables::{Rejection, Tables};

/// The policy of p2p-media-loader viewers (`guest/pml`), built with the host and
/// embedded in the binary: the default protocol's.
pub const EMBEDDED_POLICY: &[u8] =
    include_bytes!(concat!(env!("SUPERPEER_GUEST_DIR"), "/superpeer_policy_pml.wasm"));

/// The policy of SwarmCloud viewers (`guest/swarmcloud`), embedded likewise.
pub const EMBEDDED_SWARMCLOUD_POLICY: &[u8] =
    include_bytes!(concat!(env!("SUPERPEER_GUEST_DIR"), "/superpeer_policy_swarmcloud.wasm"));
