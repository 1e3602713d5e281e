//! The SwarmCloud protocol family (the CDNBye / SwarmCloud web SDK 2.9, DataChannel
//! protocol "8"), as superpeer speaks it to that SDK's viewers.
//!
//! This crate owns the protocol's wire formats, each pure and total (bad input is an
//! error, never a panic): how the SDK names a channel ([`channel`]), its tracker's HTTP
//! API ([`tracker`]), its signal relay ([`signal`]) and what peers say on a DataChannel
//! ([`peer`]). The policy that drives them is not part of it yet; nothing here does I/O
//! or decides anything.

pub mod channel;
pub mod peer;
pub mod signal;
pub mod tracker;
