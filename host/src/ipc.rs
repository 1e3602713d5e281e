//! The master <-> worker channel: length-prefixed JSON frames over the worker's stdin
//! and stdout (stderr stays free for the worker's logs).
//!
//! Owns the message types and their framing; must never block on a peer that sends a
//! frame larger than [`MAX_FRAME`] (it is refused before it is read).

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::counters::Counters;
use crate::policy::wire::SeedConfig;
use crate::policy::{PolicyLimits, PolicyMeta, PolicyStats, Precompiled};

/// Largest frame either side accepts: a precompiled policy is the biggest message.
pub const MAX_FRAME: usize = 128 << 20;

#[derive(Debug, thiserror::Error)]
pub enum IpcError {
    #[error("channel closed: {0}")]
    Io(#[from] std::io::Error),
    #[error("frame of {0} bytes is over the {MAX_FRAME}-byte limit")]
    TooLarge(usize),
    #[error("malformed frame: {0}")]
    Malformed(#[from] serde_json::Error),
}

/// What the master tells a worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum ToWorker {
    /// The first message: what to seed and with which policy.
    Start(Box<WorkerStart>),
    /// Hot-swap the policy.
    Swap { policy: Precompiled },
    /// Stop cleanly and exit.
    Stop,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerStart {
    /// What it seeds, as its policy is told it (the host's own type, not the REST
    /// body: a seed item's fields the policy does not know travel as settings).
    pub seed: SeedConfig,
    pub policy: Precompiled,
    pub limits: PolicyLimits,
    /// Where the worker's WebRTC socket listens, and the address it advertises.
    pub udp_bind: std::net::SocketAddr,
    pub udp_ports: Option<(u16, u16)>,
    /// The shared disk cache; none for `noUseDiskCache` seeds.
    pub disk_cache: Option<crate::dataplane::disk::DiskCacheConfig>,
    pub advertise_ip: Option<std::net::IpAddr>,
    /// Internal addresses fetches may reach besides the seed's manifest host and port.
    #[serde(default)]
    pub origin_allow: Vec<crate::dataplane::origin::AllowEntry>,
    /// Bytes of segments held in memory and fetches in flight, together, at most.
    pub memory_budget: u64,
    /// How long one attempt of an origin fetch may take.
    pub origin_timeout: std::time::Duration,
    /// How long a viewer may acknowledge nothing before it is closed.
    pub viewer_stall: std::time::Duration,
}

/// What a worker tells the master.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum FromWorker {
    /// Started; the policy is running.
    Ready { policy: PolicyMeta },
    /// Periodic figures.
    Report(Box<WorkerReport>),
    /// Result of a [`ToWorker::Swap`].
    Swapped { result: Result<PolicyMeta, String> },
    /// Its policy would not start (it refused the seed): why, just before it exits.
    Failed { reason: String },
}

/// A worker's own figures; the master adds what it measures from outside (memory, CPU).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WorkerReport {
    pub viewers: u32,
    /// Since the worker started.
    pub counters: Counters,
    pub disk_cache_size: u64,
    /// Tracker connections open.
    pub trackers: u32,
    /// Segments held, and their bytes in memory.
    pub segments: u32,
    pub memory_cache_size: u64,
    pub policy: PolicyStats,
}

pub async fn write_frame<W: AsyncWrite + Unpin, T: Serialize>(
    writer: &mut W,
    message: &T,
) -> Result<(), IpcError> {
    let body = serde_json::to_vec(message)?;
    if body.len() > MAX_FRAME {
        return Err(IpcError::TooLarge(body.len()));
    }
    writer.write_all(&(body.len() as u32).to_be_bytes()).await?;
    writer.write_all(&body).await?;
    writer.flush().await?;
    Ok(())
}

/// The next message, or `None` when the other side closed the channel between frames.
pub async fn read_frame<R: AsyncRead + Unpin, T: DeserializeOwned>(
    reader: &mut R,
) -> Result<Option<T>, IpcError> {
    let mut len = [0u8; 4];
    match reader.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(IpcError::TooLarge(len));
    }
    let mut body = vec![0; len];
    reader.read_exact(&mut body).await?;
    Ok(Some(serde_json::from_slice(&body)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip_and_oversized_ones_are_refused() {
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        let counters = Counters { uploaded: 7, ..Counters::default() };
        let report = WorkerReport { viewers: 3, counters, ..Default::default() };
        let message = FromWorker::Report(Box::new(report));
        write_frame(&mut a, &message).await.unwrap();
        drop(a);
        let got: FromWorker = read_frame(&mut b).await.unwrap().unwrap();
        assert!(matches!(got, FromWorker::Report(r) if r.viewers == 3 && r.counters.uploaded == 7));
        assert!(read_frame::<_, FromWorker>(&mut b).await.unwrap().is_none(), "clean end");

        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
        assert!(matches!(read_frame::<_, FromWorker>(&mut b).await, Err(IpcError::TooLarge(_))));
        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(&3u32.to_be_bytes()).await.unwrap();
        a.write_all(b"{x}").await.unwrap();
        assert!(matches!(read_frame::<_, FromWorker>(&mut b).await, Err(IpcError::Malformed(_))));
    }
}
