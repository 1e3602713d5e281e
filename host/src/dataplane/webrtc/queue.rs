//! A viewer's send queue: the messages and segment serves waiting to go out on its
//! DataChannel, in order, and the pumping of them into the channel while it has room.
//!
//! It owns the queue's limits and how a segment is cut into messages. It never closes a
//! connection or touches a socket: a full queue is said to the caller, and what the
//! channel wrote is handed over as [`Transmit`]s.

use std::collections::VecDeque;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use rtc::data_channel::RTCDataChannelId;
use rtc::peer_connection::RTCPeerConnection;

use super::{Transmit, flush};
use crate::policy::wire::{Event, MessageSize, PeerId, SegmentHandle, SegmentSent};

/// The most bytes a viewer's DataChannel holds unacknowledged before its queue waits
/// (see [`fits_in_window`]): enough to keep the link busy (64 KiB a round trip: 5
/// Mbit/s at 100 ms, far more nearer), little enough that one viewer holds little
/// memory (they are kept until acknowledged).
///
/// Fixed, though neither end of it fits every path; measured side by side on loopback
/// (when a message could still start just under the mark):
/// - 16 KiB held greedy viewers to 162-195 KB each instead of 257-288, but cost light
///   and paced viewers 10-30% more CPU per GB and 20-30% longer segment times (a
///   segment took more round trips, each a wake-up and a send of its own).
/// - Sized by the round trip (from handing a message over to the channel counting it
///   acknowledged), a saturated worker's own delay in reaching the acknowledgements
///   read as a long path: 100 greedy viewers grew to 627 KB each, and fewer were served
///   in time. A round trip to size it by would have to exclude that delay (the
///   kernel's receive time of the acknowledgement, say).
/// - Sized by the path's bandwidth, a busy viewer's bursts of acknowledgements misled
///   both estimates: BBR's delivery rate read them as a fast path (330-620 KB each),
///   Vegas's queue estimate swung the window between its bounds (130-226 KB each,
///   with segments up to 0.9 s late at 100 greedy viewers).
const SEND_HIGH_WATER: usize = 64 << 10;
/// Where the DataChannel reports it has room again.
pub(super) const SEND_LOW_WATER: u32 = 32 << 10;
/// The largest SCTP packet we send: the library's own default (the IPv6 minimum MTU
/// after TURN and DTLS overheads), set here so a segment's messages can be cut to
/// whole packets of it.
pub(super) const SCTP_MTU: u32 = 1191;
/// What a viewer's send queue may hold (beyond what its DataChannel already took):
/// message bytes and items. A viewer that does not read fills it and is closed; it
/// must never grow the worker's memory.
const MAX_QUEUED_MESSAGE_BYTES: usize = 1 << 20;
const MAX_QUEUED_ITEMS: usize = 1024;

/// One DataChannel message: bytes, or a string (which browsers hand to the page as a
/// string, not an ArrayBuffer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Binary(Bytes),
    Text(String),
}

impl Message {
    fn len(&self) -> usize {
        match self {
            Message::Binary(bytes) => bytes.len(),
            Message::Text(text) => text.len(),
        }
    }
}

/// A segment to stream to a viewer: its bytes from `offset`, in messages of the size
/// asked for, then `trailer` (if not empty) once every byte went out. Bytes still
/// being read are none; [`Rtc::loaded`](super::Rtc::loaded) gives them.
pub struct Serve {
    pub handle: SegmentHandle,
    pub bytes: Option<Bytes>,
    pub offset: u64,
    pub message_size: MessageSize,
    pub trailer: Vec<u8>,
}

/// What waits to go out on a viewer's DataChannel, in order.
#[derive(Debug)]
enum Outgoing {
    Message(Message),
    Serve {
        handle: SegmentHandle,
        /// None while the segment is read from disk: the viewer's queue waits at it, so
        /// what was queued after the serve still goes out after it.
        bytes: Option<Bytes>,
        next: usize,
        chunk: usize,
        sent: u64,
        /// Sent after the last byte, then emptied.
        trailer: Bytes,
    },
}

impl Outgoing {
    /// The size of the message this item sends next.
    fn next_message_len(&self) -> usize {
        match self {
            Outgoing::Message(message) => message.len(),
            Outgoing::Serve { bytes: Some(bytes), next, chunk, .. } if *next < bytes.len() => {
                (*chunk).min(bytes.len() - next)
            }
            Outgoing::Serve { trailer, .. } => trailer.len(),
        }
    }
}

/// One viewer's send queue.
#[derive(Debug, Default)]
pub(super) struct SendQueue {
    items: VecDeque<Outgoing>,
}

impl SendQueue {
    /// Nothing waits to go out.
    pub(super) fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Queues a message, or gives it back if the queue is full.
    pub(super) fn push_message(&mut self, message: Message) -> Result<(), Message> {
        if !self.has_room_for(message.len()) {
            return Err(message);
        }
        self.items.push_back(Outgoing::Message(message));
        Ok(())
    }

    /// Queues a serve, or gives it back if the queue is full.
    pub(super) fn push_serve(&mut self, serve: Serve) -> Result<(), Serve> {
        if !self.has_room_for(serve.trailer.len()) {
            return Err(serve);
        }
        self.items.push_back(Outgoing::Serve {
            handle: serve.handle,
            bytes: serve.bytes,
            next: serve.offset as usize,
            chunk: match serve.message_size {
                MessageSize::AtMost(size) => whole_packets(size),
                MessageSize::Exactly(size) => size.max(1),
            } as usize,
            sent: 0,
            trailer: Bytes::from(serve.trailer),
        });
        Ok(())
    }

    /// Whether one more item carrying `bytes` of message fits. The queue is short (a
    /// cap of items), so its message bytes are counted, not kept.
    fn has_room_for(&self, bytes: usize) -> bool {
        let queued: usize = self
            .items
            .iter()
            .map(|item| match item {
                Outgoing::Message(message) => message.len(),
                Outgoing::Serve { trailer, .. } => trailer.len(),
            })
            .sum();
        self.items.len() < MAX_QUEUED_ITEMS && queued + bytes <= MAX_QUEUED_MESSAGE_BYTES
    }

    /// Gives the serves of `handle` waiting for their bytes what the disk read brought;
    /// with none, they end unsent (reported in `events`). True if any serve waited.
    pub(super) fn give(
        &mut self,
        peer: PeerId,
        handle: SegmentHandle,
        bytes: &Option<Bytes>,
        events: &mut Vec<Event>,
    ) -> bool {
        let mut waited = false;
        self.items.retain_mut(|item| match item {
            Outgoing::Serve { handle: h, bytes: slot @ None, .. } if *h == handle => {
                waited = true;
                *slot = bytes.clone();
                if slot.is_none() {
                    events.push(unfinished(peer, handle, 0));
                }
                slot.is_some()
            }
            _ => true,
        });
        waited
    }

    /// Drops the serves of `handle`, reporting each incomplete with what it had sent.
    pub(super) fn cancel(&mut self, peer: PeerId, handle: SegmentHandle) -> Vec<Event> {
        let mut events = Vec::new();
        self.items.retain(|item| match item {
            Outgoing::Serve { handle: h, sent, .. } if *h == handle => {
                events.push(unfinished(peer, handle, *sent));
                false
            }
            _ => true,
        });
        events
    }

    /// Empties the queue for a connection that closes, reporting every serve
    /// incomplete.
    pub(super) fn abandon(&mut self, peer: PeerId) -> Vec<Event> {
        self.items
            .drain(..)
            .filter_map(|item| match item {
                Outgoing::Serve { handle, sent, .. } => Some(unfinished(peer, handle, sent)),
                Outgoing::Message(_) => None,
            })
            .collect()
    }

    /// Sends queued items while the DataChannel has room; true if anything was sent.
    /// Each message's datagrams are taken out of the library before the next is
    /// written: its queues grow to the largest burst they ever held and keep that size
    /// (a whole send window through four of them cost a viewer over 100 KB for good).
    pub(super) fn pump(
        &mut self,
        connection: &mut RTCPeerConnection,
        channel: RTCDataChannelId,
        peer: PeerId,
        now: Instant,
        events: &mut Vec<Event>,
        transmits: &mut VecDeque<Transmit>,
    ) -> bool {
        let mut progressed = false;
        while let Some(mut open) = connection.data_channel(channel) {
            let Some(item) = self.items.front_mut() else { break };
            if !fits_in_window(open.outstanding_bytes(), item.next_message_len()) {
                break;
            }
            match item {
                Outgoing::Message(Message::Binary(bytes)) => {
                    let _ = open.send(now, BytesMut::from(&bytes[..]));
                    self.items.pop_front();
                }
                Outgoing::Message(Message::Text(text)) => {
                    let _ = open.send_text(now, std::mem::take(text));
                    self.items.pop_front();
                }
                // Still being read: everything behind it waits too.
                Outgoing::Serve { bytes: None, .. } => break,
                Outgoing::Serve { handle, bytes: Some(bytes), next, chunk, sent, trailer } => {
                    if *next >= bytes.len() {
                        if !trailer.is_empty() {
                            if open.send(now, BytesMut::from(&trailer[..])).is_err() {
                                break;
                            }
                            *trailer = Bytes::new();
                        }
                        events.push(Event::SegmentSent(SegmentSent {
                            peer,
                            handle: *handle,
                            bytes: *sent,
                            complete: true,
                        }));
                        self.items.pop_front();
                    } else {
                        let end = (*next + *chunk).min(bytes.len());
                        if open.send(now, BytesMut::from(&bytes[*next..end])).is_err() {
                            break;
                        }
                        *sent += (end - *next) as u64;
                        *next = end;
                    }
                }
            }
            flush(connection, transmits);
            progressed = true;
        }
        progressed
    }
}

/// Whether a message of `len` bytes may go to a channel that holds `outstanding`
/// unacknowledged: only whole under [`SEND_HIGH_WATER`], or alone. Sending whenever
/// the channel was under the mark let a message's worth more stay in flight (80 KiB
/// where the mark says 64), and greedy viewers held 15-30 KB more each for it.
fn fits_in_window(outstanding: usize, len: usize) -> bool {
    outstanding == 0 || outstanding + len <= SEND_HIGH_WATER
}

/// A serve that ended before its last byte, having sent `bytes`.
pub(super) fn unfinished(peer: PeerId, handle: SegmentHandle, bytes: u64) -> Event {
    Event::SegmentSent(SegmentSent { peer, handle, bytes, complete: false })
}

/// A segment's message size: the policy's, cut down to a whole number of full SCTP
/// packets. Every packet of a segment but its last then has the same size, so one
/// message's packets and the next leave in the same UDP GSO batch; a short packet at
/// the end of each message would end the batch there (four system calls where one
/// does, at 16 KiB messages).
fn whole_packets(chunk: u32) -> u32 {
    let payload = rtc::sctp::max_payload_size_for_mtu(SCTP_MTU);
    if chunk >= payload { chunk - chunk % payload } else { chunk.max(1) }
}

#[cfg(test)]
mod tests {
    use super::{SCTP_MTU, SEND_HIGH_WATER, fits_in_window, whole_packets};

    #[test]
    fn a_message_goes_only_whole_under_the_window_or_alone() {
        let message = 16_282;
        let mut outstanding = 0;
        while fits_in_window(outstanding, message) {
            outstanding += message;
        }
        assert_eq!(outstanding, 4 * message, "four 16 KiB messages fill 64 KiB");
        assert!(outstanding <= SEND_HIGH_WATER);
        // One message larger than the window still goes, on an empty channel only.
        assert!(fits_in_window(0, SEND_HIGH_WATER + 1));
        assert!(!fits_in_window(1, SEND_HIGH_WATER));
        assert!(fits_in_window(SEND_HIGH_WATER - 100, 100));
    }

    #[test]
    fn segment_messages_are_whole_packets_at_most_the_policys_size() {
        let payload = rtc::sctp::max_payload_size_for_mtu(SCTP_MTU);
        for asked in [payload, 16_000, 16_384, 65_535] {
            let cut = whole_packets(asked);
            assert_eq!(cut % payload, 0, "{asked} -> {cut}");
            assert!(cut <= asked && asked - cut < payload, "{asked} -> {cut}");
        }
        // Below one packet there is nothing to cut to: the policy's size stands.
        assert_eq!(whole_packets(500), 500);
        assert_eq!(whole_packets(0), 1);
    }
}
