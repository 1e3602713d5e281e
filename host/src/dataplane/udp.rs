//! A worker's UDP socket: binding it, reading its datagrams and sending them.
//! Consecutive datagrams to one address leave in one system call with UDP generic
//! segmentation offload (GSO) where the kernel has it: a viewer's segment is a run of
//! equal-sized SCTP packets, and one `sendmsg` per packet cost over forty percent of a
//! busy worker's time. Without GSO they leave one by one. Datagrams are read in batches,
//! all that wait (up to a bound), when the event loop wakes for the socket.
//!
//! Never blocks and never fails the caller: a full socket buffer drops datagrams, as a
//! network would, and the transport above retransmits. Owns no protocol state.

use std::io::IoSlice;
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::BytesMut;
use nix::errno::Errno;
use nix::sys::socket::{ControlMessage, MsgFlags, SockaddrStorage, sendmsg};
use tokio::net::UdpSocket;

/// Most segments the kernel takes in one GSO send (`UDP_MAX_SEGMENTS` in Linux 4.18+).
const MAX_SEGMENTS: usize = 64;
/// Most bytes one UDP send may carry (IPv4's limit on a datagram's payload, which a
/// GSO send's total is held to).
const MAX_BYTES: usize = 65_507;

/// Kernel buffers for the worker's UDP socket: with dozens of viewers the default
/// buffers drop datagrams in bursts.
const UDP_BUFFER_BYTES: usize = 4 << 20;

/// A worker's UDP socket, non-blocking, with large buffers (as large as the kernel
/// allows; it caps them at its own maximum).
pub fn bind(address: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    let domain = if address.is_ipv4() { socket2::Domain::IPV4 } else { socket2::Domain::IPV6 };
    let socket = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
    let _ = socket.set_recv_buffer_size(UDP_BUFFER_BYTES);
    let _ = socket.set_send_buffer_size(UDP_BUFFER_BYTES);
    socket.set_nonblocking(true)?;
    socket.bind(&address.into())?;
    Ok(socket.into())
}

/// Binds the first free port of `first..=last`, starting the search at a random one so
/// that workers starting together do not all race for the same port.
pub fn bind_in(ip: IpAddr, (first, last): (u16, u16)) -> std::io::Result<std::net::UdpSocket> {
    let count = u32::from(last - first) + 1;
    let start = {
        use rand::{Rng, SeedableRng};
        rand::rngs::SmallRng::from_os_rng().random_range(0..count)
    };
    for step in 0..count {
        let port = first + ((start + step) % count) as u16;
        match bind(SocketAddr::new(ip, port)) {
            Ok(socket) => return Ok(socket),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => continue,
            Err(e) => return Err(e),
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::AddrInUse,
        format!("no free UDP port in {first}-{last} on {ip}"),
    ))
}

/// Most datagrams read in one turn of the event loop: it goes back to its timers and
/// the master's messages between batches, however fast viewers send.
pub const RECEIVE_BATCH: usize = 64;

/// Reads the worker's UDP socket for the event loop.
#[derive(Debug)]
pub struct DatagramReceiver {
    socket: Arc<UdpSocket>,
    /// Where each datagram lands before it is copied out at its own size (one read
    /// buffer as large as a datagram can be, kept rather than made per datagram).
    scratch: Vec<u8>,
}

impl DatagramReceiver {
    pub fn new(socket: Arc<UdpSocket>) -> DatagramReceiver {
        DatagramReceiver { socket, scratch: vec![0; 65_536] }
    }

    /// Until a datagram waits to be read. Cancel-safe: it reads nothing.
    pub async fn readable(&self) {
        // An error here is the socket's own (none is known on Linux for UDP); reading
        // says it again, and drops it.
        let _ = self.socket.readable().await;
    }

    /// The datagrams waiting on the socket, at most `max`, in arrival order; none if
    /// none waits.
    pub fn take_waiting(&mut self, max: usize) -> Vec<(SocketAddr, BytesMut)> {
        let mut datagrams = Vec::new();
        // Errors count against the bound too, so one that repeats cannot spin the loop.
        for _ in 0..max {
            match self.socket.try_recv_from(&mut self.scratch) {
                Ok((len, from)) => datagrams.push((from, BytesMut::from(&self.scratch[..len]))),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                // An ICMP error reported for an earlier send: loss, as for a send.
                Err(_) => continue,
            }
        }
        datagrams
    }
}

#[derive(Debug)]
pub struct DatagramSender {
    socket: Arc<UdpSocket>,
    /// Cleared the first time the kernel refuses a GSO send (no support, or a device
    /// that cannot segment); from then on datagrams leave one by one.
    gso: AtomicBool,
}

impl DatagramSender {
    pub fn new(socket: Arc<UdpSocket>) -> DatagramSender {
        DatagramSender { socket, gso: AtomicBool::new(cfg!(target_os = "linux")) }
    }

    /// Sends `datagrams` in order, batching what GSO allows.
    pub fn send<B: AsRef<[u8]>>(&self, datagrams: &[(SocketAddr, B)]) {
        for run in batches(datagrams) {
            let batch = &datagrams[run];
            if batch.len() == 1 || !self.gso.load(Ordering::Relaxed) || !self.send_segmented(batch)
            {
                for (to, data) in batch {
                    let _ = self.socket.try_send_to(data.as_ref(), *to);
                }
            }
        }
    }

    /// One GSO send of `batch` (one address, equal sizes but a shorter last); false if
    /// the kernel refused GSO itself, so the caller sends them one by one.
    fn send_segmented<B: AsRef<[u8]>>(&self, batch: &[(SocketAddr, B)]) -> bool {
        let (to, first) = (batch[0].0, batch[0].1.as_ref());
        let Ok(segment) = u16::try_from(first.len()) else { return false };
        let slices: Vec<IoSlice<'_>> =
            batch.iter().map(|(_, data)| IoSlice::new(data.as_ref())).collect();
        let cmsgs = [ControlMessage::UdpGsoSegments(&segment)];
        let address = SockaddrStorage::from(to);
        match sendmsg(
            self.socket.as_raw_fd(),
            &slices,
            &cmsgs,
            MsgFlags::MSG_DONTWAIT,
            Some(&address),
        ) {
            // A full buffer drops the lot, as it would drop single datagrams.
            Ok(_) | Err(Errno::EAGAIN) => true,
            Err(Errno::EIO | Errno::EINVAL | Errno::ENOPROTOOPT | Errno::EOPNOTSUPP) => {
                tracing::info!(
                    "the kernel refused UDP segmentation offload; sending datagrams one by one"
                );
                self.gso.store(false, Ordering::Relaxed);
                false
            }
            // Anything else (an unreachable address) is loss to the transport above.
            Err(_) => true,
        }
    }
}

/// Splits `datagrams` into runs one GSO send can carry: consecutive, to one address,
/// all as long as the first except a shorter last, at most [`MAX_SEGMENTS`] and
/// [`MAX_BYTES`] in all. Empty datagrams travel alone.
fn batches<B: AsRef<[u8]>>(datagrams: &[(SocketAddr, B)]) -> Vec<Range<usize>> {
    let mut runs = Vec::new();
    let mut start = 0;
    while start < datagrams.len() {
        let (to, size) = (datagrams[start].0, datagrams[start].1.as_ref().len());
        let mut end = start + 1;
        let mut total = size;
        if size > 0 {
            while end < datagrams.len() && end - start < MAX_SEGMENTS {
                let (next_to, next) = (datagrams[end].0, datagrams[end].1.as_ref());
                if next_to != to
                    || next.is_empty()
                    || next.len() > size
                    || total + next.len() > MAX_BYTES
                {
                    break;
                }
                total += next.len();
                end += 1;
                if next.len() < size {
                    break;
                }
            }
        }
        runs.push(start..end);
        start = end;
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn runs_break_at_a_new_address_a_longer_datagram_or_after_a_shorter_one() {
        let (big, small, bigger) = (vec![0u8; 1200], vec![0u8; 300], vec![0u8; 1300]);
        let datagrams = [
            (at(1), &big[..]),
            (at(1), &big[..]),
            (at(1), &small[..]),
            (at(1), &big[..]),
            (at(2), &big[..]),
            (at(2), &bigger[..]),
            (at(2), &[][..]),
            (at(2), &small[..]),
        ];
        assert_eq!(batches(&datagrams), vec![0..3, 3..4, 4..5, 5..6, 6..7, 7..8]);
    }

    #[test]
    fn runs_stay_within_the_kernels_limits() {
        let packet = vec![0u8; 1200];
        let many: Vec<_> = (0..200).map(|_| (at(1), &packet[..])).collect();
        let runs = batches(&many);
        assert!(runs.iter().all(|r| r.len() * 1200 <= MAX_BYTES && r.len() <= MAX_SEGMENTS));
        assert_eq!(runs.iter().map(|r| r.len()).sum::<usize>(), 200);
        assert_eq!(runs[0], 0..54, "65,507 bytes hold 54 packets of 1,200");

        let tiny = [0u8; 100];
        let small: Vec<_> = (0..100).map(|_| (at(1), &tiny[..])).collect();
        assert_eq!(batches(&small), vec![0..64, 64..100]);
    }

    #[tokio::test]
    async fn every_datagram_arrives_whole_and_in_order() {
        let socket = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let receiver = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let to = receiver.local_addr().unwrap();
        let payloads: Vec<Vec<u8>> =
            (0..40u8).map(|i| vec![i; if i == 39 { 500 } else { 1200 }]).collect();
        let datagrams: Vec<_> = payloads.iter().map(|p| (to, &p[..])).collect();
        let sender = DatagramSender::new(socket);
        sender.send(&datagrams);
        let mut buffer = vec![0u8; 65536];
        for expected in &payloads {
            let (n, _) = receiver.recv_from(&mut buffer).await.unwrap();
            assert_eq!(&buffer[..n], &expected[..]);
        }
        assert!(sender.gso.load(Ordering::Relaxed), "GSO works on this machine's loopback");
    }

    #[tokio::test]
    async fn waiting_datagrams_are_read_whole_in_order_and_at_most_a_batch() {
        let socket = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let sender = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let (to, from) = (socket.local_addr().unwrap(), sender.local_addr().unwrap());
        let mut receiver = DatagramReceiver::new(socket);
        assert!(receiver.take_waiting(RECEIVE_BATCH).is_empty(), "nothing sent yet");
        for i in 0..10u8 {
            sender.send_to(&vec![i; 100 + usize::from(i) * 1000], to).await.unwrap();
        }
        let mut read = Vec::new();
        while read.len() < 10 {
            receiver.readable().await;
            let batch = receiver.take_waiting(4);
            assert!(batch.len() <= 4, "a batch of {}", batch.len());
            read.extend(batch);
        }
        for (i, (source, data)) in read.iter().enumerate() {
            assert_eq!(*source, from);
            assert_eq!(&data[..], &vec![i as u8; 100 + i * 1000][..]);
        }
        assert!(receiver.take_waiting(RECEIVE_BATCH).is_empty(), "all read");
    }
}
