//! The chunk: one JetStream message holding consecutive records of one
//! room, the unit a room writer appends and fences.
//!
//! Layout (numbers big-endian):
//!
//! | bytes | field |
//! |---|---|
//! | 1 | version, 1 |
//! | 8 | the room sequence of the first record |
//! | 4 | the record count, at least 1 |
//! | per record: 4 + len | its length, then the encoded [`confab_codec::EventRecord`] exactly as on the wire |
//!
//! One message per commit of a room (rather than one per record) makes an
//! append of any number of records a single fenced publish: there is no
//! window in which half of a room's commit is stored, and JetStream's
//! per-message cost is paid once per commit, not once per record.

use std::ops::Range;

use bytes::{BufMut, Bytes, BytesMut};
use confab_codec::Seq;

const VERSION: u8 = 1;
const HEADER: usize = 1 + 8 + 4;

/// A decoded chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Chunk {
    /// The room sequence of `records[0]`.
    pub(crate) first: Seq,
    /// The encoded records, sharing the message's buffer.
    pub(crate) records: Vec<Bytes>,
}

impl Chunk {
    /// The room sequence of the last record.
    pub(crate) fn last(&self) -> Seq {
        Seq(self.first.0 + self.records.len() as u64 - 1)
    }
}

/// Encodes `records` as a chunk starting at room sequence `first`.
pub(crate) fn encode(first: Seq, records: &[&[u8]]) -> Bytes {
    let len = encoded_len(records);
    let mut out = BytesMut::with_capacity(len);
    out.put_u8(VERSION);
    out.put_u64(first.0);
    out.put_u32(records.len() as u32);
    for r in records {
        out.put_u32(r.len() as u32);
        out.put_slice(r);
    }
    out.freeze()
}

/// The encoded size of a chunk of `records`.
fn encoded_len(records: &[&[u8]]) -> usize {
    HEADER + records.iter().map(|r| 4 + r.len()).sum::<usize>()
}

/// Decodes a chunk, checking every length against what is there before
/// taking it (the payload came over the network).
///
/// # Errors
/// What is wrong with it.
pub(crate) fn decode(payload: Bytes) -> Result<Chunk, &'static str> {
    let head = payload.get(..HEADER).ok_or("shorter than its header")?;
    if head[0] != VERSION {
        return Err("unknown chunk version");
    }
    let first = u64::from_be_bytes(head[1..9].try_into().map_err(|_| "header")?);
    let count = u32::from_be_bytes(head[9..13].try_into().map_err(|_| "header")?) as usize;
    if count == 0 {
        return Err("no record");
    }
    if first == 0 || first.checked_add(count as u64 - 1).is_none() {
        return Err("sequence out of range");
    }
    // Each record takes at least its 4-byte length: bounds the allocation.
    if count > (payload.len() - HEADER) / 4 {
        return Err("more records than bytes");
    }
    let mut records = Vec::with_capacity(count);
    let mut at = HEADER;
    for _ in 0..count {
        let len_bytes = payload.get(at..at + 4).ok_or("truncated record length")?;
        let len = u32::from_be_bytes(len_bytes.try_into().map_err(|_| "length")?) as usize;
        at += 4;
        let end = at.checked_add(len).ok_or("record length overflows")?;
        if end > payload.len() {
            return Err("truncated record");
        }
        records.push(payload.slice(at..end));
        at = end;
    }
    if at != payload.len() {
        return Err("trailing bytes");
    }
    Ok(Chunk {
        first: Seq(first),
        records,
    })
}

/// Cuts `records` into runs whose chunks stay within `max_bytes` (a
/// record larger than that gets a chunk of its own).
pub(crate) fn split(records: &[&[u8]], max_bytes: usize) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut size = HEADER;
    for (i, r) in records.iter().enumerate() {
        let add = 4 + r.len();
        if i > start && size + add > max_bytes {
            out.push(start..i);
            start = i;
            size = HEADER;
        }
        size += add;
    }
    if start < records.len() {
        out.push(start..records.len());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let recs: Vec<&[u8]> = vec![b"one", b"", b"three"];
        let bytes = encode(Seq(7), &recs);
        assert_eq!(bytes.len(), encoded_len(&recs));
        let c = decode(bytes).expect("decodes");
        assert_eq!(c.first, Seq(7));
        assert_eq!(c.last(), Seq(9));
        assert_eq!(c.records, vec![&b"one"[..], b"", b"three"]);
    }

    #[test]
    fn every_damaged_payload_is_an_error_not_a_panic() {
        let bytes = encode(Seq(1), &[b"abc", b"defgh"]);
        for cut in 0..bytes.len() {
            assert!(decode(bytes.slice(..cut)).is_err(), "cut at {cut}");
        }
        let mut longer = BytesMut::from(&bytes[..]);
        longer.put_u8(0);
        assert!(decode(longer.freeze()).is_err(), "trailing byte");
        let mut huge = BytesMut::from(&bytes[..]);
        huge[9..13].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(decode(huge.freeze()).is_err(), "count beyond the bytes");
        let mut zero = BytesMut::from(&bytes[..]);
        zero[1..9].copy_from_slice(&0u64.to_be_bytes());
        assert!(decode(zero.freeze()).is_err(), "sequence 0");
    }

    #[test]
    fn split_keeps_chunks_within_the_limit() {
        let big = vec![0u8; 100];
        let recs: Vec<&[u8]> = vec![&big; 10];
        let runs = split(&recs, HEADER + 3 * 104);
        assert_eq!(runs, vec![0..3, 3..6, 6..9, 9..10]);
        for r in &runs {
            assert!(encoded_len(&recs[r.clone()]) <= HEADER + 3 * 104);
        }
        // A record over the limit goes alone; nothing is ever empty.
        assert_eq!(
            split(&recs, 10),
            (0..10).map(|i| i..i + 1).collect::<Vec<_>>()
        );
        assert!(split(&[], 10).is_empty());
    }
}
