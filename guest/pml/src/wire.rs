//! The p2p-media-loader 2.x peer wire protocol: the six commands, their binary
//! encoding, and the framing that splits a long command over several DataChannel
//! messages. Anything on a DataChannel that is not a framed command is segment data.
//!
//! Pure and total: malformed input is an error, never a panic, so a bad peer only ever
//! costs its own connection.

/// Longest DataChannel message p2p-media-loader sends, and so the default split size.
pub const MAX_MESSAGE: usize = 64 * 1024 - 1;
/// Longest command body accepted, joined from its chunks: an announcement of every
/// segment of a long VOD takes a few tens of KiB; a peer sending more is not a viewer.
pub const MAX_COMMAND: usize = 256 << 10;

const START: &[u8; 4] = b"cstr";
const END: &[u8; 4] = b"cend";
const PART_START: &[u8; 4] = b"dstr";
const PART_END: &[u8; 4] = b"dend";
const FRAMING: usize = 8;

/// Item type codes, the high nibble of an item's first byte.
const INT: u8 = 0;
const SIMILAR_INT_ARRAY: u8 = 1;
const STRING: u8 = 2;

/// Most ids one similar-int group may carry: its count is one byte, and the reference
/// decoder reads a count of 256 as 0 (we read it as 256, which is what it means).
const GROUP_MAX: usize = 255;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerCommand {
    /// The segments a peer has (`l`) and is loading over HTTP (`p`); replaces the last.
    SegmentsAnnouncement {
        loaded: Vec<i64>,
        loading: Vec<i64>,
    },
    /// `b`: resume from this byte.
    SegmentRequest {
        id: i64,
        request: i64,
        byte_from: Option<i64>,
    },
    /// Followed by `size` bytes of raw segment data.
    SegmentData {
        id: i64,
        request: i64,
        size: i64,
    },
    SegmentDataSendingCompleted {
        id: i64,
        request: i64,
    },
    SegmentAbsent {
        id: i64,
        request: i64,
    },
    CancelSegmentRequest {
        id: i64,
        request: i64,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WireError {
    Truncated,
    UnknownCommand(u8),
    UnknownItemType(u8),
    IntTooLong(usize),
    Missing(char),
    /// A field of the wrong item type.
    WrongType(char),
    /// A continuation chunk without a first one, or a first chunk in the middle.
    BadChunkOrder,
    /// More ids than one announcement can carry.
    TooManyIds,
    /// A command longer than [`MAX_COMMAND`].
    TooLong,
}

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WireError::Truncated => write!(f, "command ends early"),
            WireError::UnknownCommand(c) => write!(f, "unknown command {c}"),
            WireError::UnknownItemType(t) => write!(f, "unknown item type {t}"),
            WireError::IntTooLong(n) => write!(f, "integer of {n} bytes"),
            WireError::Missing(name) => write!(f, "field `{name}` missing"),
            WireError::WrongType(name) => write!(f, "field `{name}` has the wrong type"),
            WireError::BadChunkOrder => write!(f, "command chunks out of order"),
            WireError::TooManyIds => write!(f, "too many segment ids for one announcement"),
            WireError::TooLong => write!(f, "a command over {MAX_COMMAND} bytes"),
        }
    }
}

/// Whether a DataChannel message is (part of) a command rather than segment data.
pub fn is_command_chunk(message: &[u8]) -> bool {
    message.len() >= FRAMING
        && (message.starts_with(START) || message.starts_with(PART_START))
        && (message.ends_with(END) || message.ends_with(PART_END))
}

/// Encodes a command as DataChannel messages of at most `max_message` bytes each.
pub fn encode(command: &PeerCommand, max_message: usize) -> Result<Vec<Vec<u8>>, WireError> {
    let body = body(command)?;
    if body.len() + FRAMING <= max_message {
        return Ok(vec![frame(&body, START, END)]);
    }
    // Equal parts, as the reference encoder splits them.
    let room = max_message.saturating_sub(FRAMING).max(1);
    let mut parts = body.len().div_ceil(room);
    if body.len().div_ceil(parts) + FRAMING > max_message {
        parts += 1;
    }
    let part_len = body.len().div_ceil(parts);
    let chunks: Vec<&[u8]> = body.chunks(part_len).collect();
    let last = chunks.len() - 1;
    Ok(chunks
        .iter()
        .enumerate()
        .map(|(i, chunk)| match i {
            0 => frame(chunk, START, PART_END),
            i if i == last => frame(chunk, PART_START, END),
            _ => frame(chunk, PART_START, PART_END),
        })
        .collect())
}

fn frame(body: &[u8], start: &[u8; 4], end: &[u8; 4]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + FRAMING);
    out.extend_from_slice(start);
    out.extend_from_slice(body);
    out.extend_from_slice(end);
    out
}

fn body(command: &PeerCommand) -> Result<Vec<u8>, WireError> {
    let mut out = Vec::new();
    match command {
        PeerCommand::SegmentsAnnouncement { loaded, loading } => {
            out.push(0);
            for (name, ids) in [(b'l', loaded), (b'p', loading)] {
                if !ids.is_empty() {
                    out.push(name);
                    similar_int_array(&mut out, ids)?;
                }
            }
        }
        PeerCommand::SegmentRequest { id, request, byte_from } => {
            out.push(1);
            field_int(&mut out, b'i', *id);
            field_int(&mut out, b'r', *request);
            // The reference encoder leaves out a zero offset too.
            if let Some(b) = byte_from.filter(|b| *b != 0) {
                field_int(&mut out, b'b', b);
            }
        }
        PeerCommand::SegmentData { id, request, size } => {
            out.push(2);
            field_int(&mut out, b'i', *id);
            field_int(&mut out, b's', *size);
            field_int(&mut out, b'r', *request);
        }
        PeerCommand::SegmentDataSendingCompleted { id, request } => {
            id_request(&mut out, 3, *id, *request)
        }
        PeerCommand::SegmentAbsent { id, request } => id_request(&mut out, 4, *id, *request),
        PeerCommand::CancelSegmentRequest { id, request } => id_request(&mut out, 5, *id, *request),
    }
    Ok(out)
}

fn id_request(out: &mut Vec<u8>, code: u8, id: i64, request: i64) {
    out.push(code);
    field_int(out, b'i', id);
    field_int(out, b'r', request);
}

fn field_int(out: &mut Vec<u8>, name: u8, value: i64) {
    out.push(name);
    int(out, value);
}

/// Sign-magnitude big-endian, in the fewest bytes that leave the top bit for the sign.
fn int(out: &mut Vec<u8>, value: i64) {
    let magnitude = value.unsigned_abs();
    let bits = 64 - magnitude.leading_zeros() as usize;
    // The reference counts `toString(2)` digits (one for zero) plus a sign bit for
    // non-negative numbers; a negative one's `-` stands in for it.
    let needed = bits.max(1) + 1;
    let len = needed.div_ceil(8);
    out.push((INT << 4) | len as u8);
    let start = out.len();
    for i in (0..len).rev() {
        out.push((magnitude >> (8 * i)) as u8);
    }
    if value < 0 {
        out[start] |= 0x80;
    }
}

/// Ids grouped by all but their low byte; each group is its common part (with the
/// group's size in the low byte) and then one low byte per id.
fn similar_int_array(out: &mut Vec<u8>, ids: &[i64]) -> Result<(), WireError> {
    let mut groups: Vec<(i64, Vec<u8>)> = Vec::new();
    for id in ids {
        let common = id & !0xff;
        match groups.iter_mut().rev().find(|(c, low)| *c == common && low.len() < GROUP_MAX) {
            Some((_, low)) => low.push((id & 0xff) as u8),
            None => groups.push((common, vec![(id & 0xff) as u8])),
        }
    }
    if groups.len() > 255 {
        return Err(WireError::TooManyIds);
    }
    out.push(SIMILAR_INT_ARRAY << 4);
    out.push(groups.len() as u8);
    for (common, low) in groups {
        int(out, common | low.len() as i64);
        out.extend_from_slice(&low);
    }
    Ok(())
}

/// Decodes an unframed command body.
pub fn decode(body: &[u8]) -> Result<PeerCommand, WireError> {
    let (&code, mut rest) = body.split_first().ok_or(WireError::Truncated)?;
    let mut ints: Vec<(char, i64)> = Vec::new();
    let mut arrays: Vec<(char, Vec<i64>)> = Vec::new();
    while let Some((&name, after)) = rest.split_first() {
        let name = name as char;
        let &head = after.first().ok_or(WireError::Truncated)?;
        rest = match head >> 4 {
            INT => {
                let (value, used) = read_int(after)?;
                ints.push((name, value));
                &after[used..]
            }
            SIMILAR_INT_ARRAY => {
                let (values, used) = read_similar_int_array(after)?;
                arrays.push((name, values));
                &after[used..]
            }
            STRING => {
                let len = (usize::from(head & 0x0f) << 8)
                    | usize::from(*after.get(1).ok_or(WireError::Truncated)?);
                after.get(2 + len..).ok_or(WireError::Truncated)?
            }
            other => return Err(WireError::UnknownItemType(other)),
        };
    }
    let int_field = |name: char| {
        ints.iter().find(|(n, _)| *n == name).map(|(_, v)| *v).ok_or_else(|| {
            if arrays.iter().any(|(n, _)| *n == name) {
                WireError::WrongType(name)
            } else {
                WireError::Missing(name)
            }
        })
    };
    let array_field = |name: char| -> Result<Vec<i64>, WireError> {
        if ints.iter().any(|(n, _)| *n == name) {
            return Err(WireError::WrongType(name));
        }
        Ok(arrays.iter().find(|(n, _)| *n == name).map(|(_, v)| v.clone()).unwrap_or_default())
    };
    let id_request = || Ok::<_, WireError>((int_field('i')?, int_field('r')?));
    Ok(match code {
        0 => PeerCommand::SegmentsAnnouncement {
            loaded: array_field('l')?,
            loading: array_field('p')?,
        },
        1 => {
            let (id, request) = id_request()?;
            let byte_from = match int_field('b') {
                Ok(b) => Some(b),
                Err(WireError::Missing(_)) => None,
                Err(e) => return Err(e),
            };
            PeerCommand::SegmentRequest { id, request, byte_from }
        }
        2 => {
            let (id, request) = id_request()?;
            PeerCommand::SegmentData { id, request, size: int_field('s')? }
        }
        3 => {
            let (id, request) = id_request()?;
            PeerCommand::SegmentDataSendingCompleted { id, request }
        }
        4 => {
            let (id, request) = id_request()?;
            PeerCommand::SegmentAbsent { id, request }
        }
        5 => {
            let (id, request) = id_request()?;
            PeerCommand::CancelSegmentRequest { id, request }
        }
        other => return Err(WireError::UnknownCommand(other)),
    })
}

fn read_int(bytes: &[u8]) -> Result<(i64, usize), WireError> {
    let len = usize::from(bytes.first().ok_or(WireError::Truncated)? & 0x0f);
    let digits = bytes.get(1..1 + len).ok_or(WireError::Truncated)?;
    if len > 8 {
        return Err(WireError::IntTooLong(len));
    }
    let Some((&first, others)) = digits.split_first() else { return Ok((0, 1)) };
    let magnitude =
        others.iter().fold(u64::from(first & 0x7f), |acc, b| (acc << 8) | u64::from(*b));
    let magnitude = i64::try_from(magnitude).map_err(|_| WireError::IntTooLong(len))?;
    let value = if first & 0x80 != 0 { -magnitude } else { magnitude };
    Ok((value, 1 + len))
}

fn read_similar_int_array(bytes: &[u8]) -> Result<(Vec<i64>, usize), WireError> {
    let groups = *bytes.get(1).ok_or(WireError::Truncated)?;
    let mut offset = 2;
    let mut values = Vec::new();
    for _ in 0..groups {
        let (common_with_len, used) = read_int(bytes.get(offset..).ok_or(WireError::Truncated)?)?;
        offset += used;
        // The reference encoder writes a group of 256 ids with a count of 0 (the count's
        // byte wraps); no encoder writes an empty group, so 0 can only mean 256.
        let count = match common_with_len & 0xff {
            0 => 256,
            n => n as usize,
        };
        let common = common_with_len & !0xff;
        let low = bytes.get(offset..offset + count).ok_or(WireError::Truncated)?;
        values.extend(low.iter().map(|b| common | i64::from(*b)));
        offset += count;
    }
    Ok((values, offset))
}

/// Reassembles a command sent in several chunks.
#[derive(Debug, Default)]
pub struct Joiner {
    body: Vec<u8>,
    joining: bool,
}

impl Joiner {
    /// Bytes held of a command still arriving.
    pub fn held(&self) -> usize {
        self.body.capacity()
    }

    /// Takes one framed chunk; returns the whole body once the last chunk is in.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Option<Vec<u8>>, WireError> {
        if !is_command_chunk(chunk) {
            return Err(WireError::Truncated);
        }
        let first = chunk.starts_with(START);
        if first == self.joining {
            // A first chunk while joining, or a continuation with nothing to join.
            self.body.clear();
            self.joining = false;
            return Err(WireError::BadChunkOrder);
        }
        if self.body.len() + chunk.len() - FRAMING > MAX_COMMAND {
            self.body = Vec::new();
            self.joining = false;
            return Err(WireError::TooLong);
        }
        self.body.extend_from_slice(&chunk[4..chunk.len() - 4]);
        if chunk.ends_with(END) {
            self.joining = false;
            return Ok(Some(std::mem::take(&mut self.body)));
        }
        self.joining = true;
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Serialisation vectors computed with p2p-media-loader-core 2.3.1.
    const VECTORS: &[(&str, &str)] = &[
        ("request 1234/567", "6373747201690204d27202023763656e64"),
        ("request 5/0 from 300000", "637374720169010572010062030493e063656e64"),
        ("data -3/42 size 1048576", "6373747202690183730310000072012a63656e64"),
        ("announce", "63737472006c100201036465660201012c70100101016763656e64"),
        ("announce nothing", "637374720063656e64"),
        ("completed 0/999", "6373747203690100720203e763656e64"),
    ];

    fn vector_commands() -> Vec<PeerCommand> {
        vec![
            PeerCommand::SegmentRequest { id: 1234, request: 567, byte_from: None },
            PeerCommand::SegmentRequest { id: 5, request: 0, byte_from: Some(300_000) },
            PeerCommand::SegmentData { id: -3, request: 42, size: 1_048_576 },
            PeerCommand::SegmentsAnnouncement {
                loaded: vec![100, 101, 102, 300],
                loading: vec![103],
            },
            PeerCommand::SegmentsAnnouncement { loaded: vec![], loading: vec![] },
            PeerCommand::SegmentDataSendingCompleted { id: 0, request: 999 },
        ]
    }

    #[test]
    fn encodes_and_decodes_the_reference_vectors() {
        for ((name, expected), command) in VECTORS.iter().zip(vector_commands()) {
            let messages = encode(&command, MAX_MESSAGE).unwrap();
            assert_eq!(messages.len(), 1);
            assert_eq!(hex(&messages[0]), *expected, "{name}");
            assert!(is_command_chunk(&messages[0]));
            let body = Joiner::default().push(&messages[0]).unwrap().unwrap();
            assert_eq!(decode(&body).unwrap(), command, "{name}");
        }
    }

    #[test]
    fn round_trips_integers_of_every_size() {
        for value in
            [0, 1, -1, 127, 128, -128, 255, 256, 65_535, -65_536, 1 << 40, i64::MAX, -i64::MAX]
        {
            let mut out = Vec::new();
            int(&mut out, value);
            assert_eq!(read_int(&out), Ok((value, out.len())), "{value}");
        }
    }

    #[test]
    fn long_announcements_split_into_equal_chunks_and_rejoin() {
        // 256 ids in one block would wrap the one-byte count: they go in two groups.
        let loaded: Vec<i64> = (0..20_000).collect();
        let command =
            PeerCommand::SegmentsAnnouncement { loaded: loaded.clone(), loading: vec![7] };
        let messages = encode(&command, 4096).unwrap();
        assert!(messages.len() > 1);
        assert!(messages.iter().all(|m| m.len() <= 4096 && is_command_chunk(m)));
        assert!(messages[0].starts_with(b"cstr") && messages[0].ends_with(b"dend"));
        assert!(messages.last().unwrap().starts_with(b"dstr"));
        let mut joiner = Joiner::default();
        let mut body = None;
        for message in &messages {
            body = joiner.push(message).unwrap();
        }
        assert_eq!(decode(&body.unwrap()).unwrap(), command);
    }

    #[test]
    fn a_full_block_of_256_ids_survives() {
        let loaded: Vec<i64> = (512..768).collect();
        let command = PeerCommand::SegmentsAnnouncement { loaded, loading: vec![] };
        let body =
            Joiner::default().push(&encode(&command, MAX_MESSAGE).unwrap()[0]).unwrap().unwrap();
        assert_eq!(decode(&body).unwrap(), command);
    }

    #[test]
    fn a_block_of_256_ids_as_the_reference_writes_it_decodes() {
        // p2p-media-loader-core 2.3.1 (and 2.2.2): announce loaded 0..260, loading 300.
        // Its count byte wraps to 0 for the full block; a viewer that has 256 segments of
        // one block sends exactly this.
        let mut expected = String::from("63737472006c10020100");
        expected.extend((0..=255u8).map(|b| format!("{b:02x}")));
        expected.push_str("020104000102037010010201012c63656e64");
        let message: Vec<u8> = (0..expected.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&expected[i..i + 2], 16).unwrap())
            .collect();
        let body = Joiner::default().push(&message).unwrap().unwrap();
        assert_eq!(
            decode(&body).unwrap(),
            PeerCommand::SegmentsAnnouncement { loaded: (0..260).collect(), loading: vec![300] }
        );
    }

    #[test]
    fn malformed_input_is_an_error_never_a_panic() {
        let good = encode(&vector_commands()[2], MAX_MESSAGE).unwrap().remove(0);
        let body = &good[4..good.len() - 4];
        for cut in 0..body.len() {
            let _ = decode(&body[..cut]);
        }
        assert_eq!(decode(&[9]), Err(WireError::UnknownCommand(9)));
        assert_eq!(decode(&[1, b'i', 0x31]), Err(WireError::UnknownItemType(3)));
        assert_eq!(decode(&[1, b'i', 0x01, 0x05]), Err(WireError::Missing('r')));
        assert_eq!(decode(&[1, b'i', 0x0f, 1, 2]), Err(WireError::Truncated));
        assert_eq!(
            decode(&[2, b'i', 0x10, 0, b'r', 1, 1, b's', 1, 1]),
            Err(WireError::WrongType('i'))
        );
        let mut joiner = Joiner::default();
        assert_eq!(joiner.push(b"dstr\x01dend"), Err(WireError::BadChunkOrder));
        assert_eq!(joiner.push(b"not a command"), Err(WireError::Truncated));
        // Every byte sequence up to a few bytes long decodes or fails cleanly.
        for a in 0..=255u8 {
            for b in [0u8, 0x01, 0x10, 0x20, 0x0f, 0xff] {
                let _ = decode(&[a % 7, b'i', b, a]);
                let _ = decode(&[0, b'l', 0x10, a, b, a]);
            }
        }
    }
}
