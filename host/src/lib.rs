//! superpeer: a super peer for P2P HLS streaming.
//!
//! The host owns all I/O and every byte of media; policies (WebAssembly components,
//! see [`policy`]) own the decisions and wire formats and can be replaced at run time.

pub mod counters;
pub mod dataplane;
pub mod fleet;
pub mod ipc;
pub mod master;
pub mod metrics;
pub mod policy;
pub mod protocol;
pub mod serve;
pub mod worker;
