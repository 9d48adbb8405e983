//! Building frames around records that are already encoded.
//!
//! The broker stores each [`EventRecord`](crate::EventRecord) in its wire
//! form, so delivering history or a catch-up batch is a copy of stored
//! bytes into a frame, not a decode and re-encode.

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::CodecError;
use crate::frame::{frame_type, Header, HEADER_LEN};
use crate::ids::{RoomId, Seq};
use crate::wire::{Field, Writer};

fn too_long(field: &'static str, len: usize, max: usize) -> CodecError {
    CodecError::FieldTooLong { field, len, max }
}

fn build<R: AsRef<[u8]>>(
    frame_type: u8,
    flags: u8,
    request_id: u32,
    head: &[u8],
    records: &[R],
) -> Result<Bytes, CodecError> {
    let count = u16::try_from(records.len())
        .map_err(|_| too_long("events", records.len(), usize::from(u16::MAX)))?;
    let body_len = records.iter().fold(head.len() + 2, |acc, r| {
        acc.saturating_add(r.as_ref().len())
    });
    let len =
        u32::try_from(body_len).map_err(|_| too_long("frame", body_len, u32::MAX as usize))?;
    let mut buf = BytesMut::with_capacity(HEADER_LEN + body_len);
    Header {
        len,
        frame_type,
        flags,
        request_id,
    }
    .put(&mut buf);
    buf.put_slice(head);
    buf.put_u16(count);
    for r in records {
        buf.put_slice(r.as_ref());
    }
    Ok(buf.freeze())
}

/// An `EventBatch` frame of one room from encoded records, which must be
/// valid `EventRecord` encodings in ascending sequence order.
///
/// # Errors
/// If there are more than 65,535 records or the frame exceeds `u32::MAX` bytes.
pub fn event_batch_frame<R: AsRef<[u8]>>(
    request_id: u32,
    flags: u8,
    room: &RoomId,
    records: &[R],
) -> Result<Bytes, CodecError> {
    let mut head = Vec::with_capacity(1 + room.as_bytes().len());
    room.put("room", &mut Writer(&mut head))?;
    build(frame_type::EventBatch, flags, request_id, &head, records)
}

/// A `HistoryPage` frame from encoded records (ascending).
///
/// # Errors
/// As [`event_batch_frame`].
pub fn history_page_frame<R: AsRef<[u8]>>(
    request_id: u32,
    room: &RoomId,
    has_more: bool,
    first: Seq,
    records: &[R],
) -> Result<Bytes, CodecError> {
    let mut head = Vec::with_capacity(10 + room.as_bytes().len());
    {
        let mut w = Writer(&mut head);
        room.put("room", &mut w)?;
        has_more.put("has_more", &mut w)?;
        first.put("first", &mut w)?;
    }
    build(frame_type::HistoryPage, 0, request_id, &head, records)
}

/// The byte range of the `EventRecord` inside an encoded `Event` frame (to
/// store the record without re-encoding it).
pub fn event_record_range(room: &RoomId, frame_len: usize) -> std::ops::Range<usize> {
    HEADER_LEN + 1 + room.as_bytes().len()..frame_len
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Body, DeviceId, Event, EventBatch, EventRecord, Frame, HistoryPage};
    use crate::{MessageKind, UserId};

    fn record(seq: u64) -> EventRecord {
        EventRecord {
            seq: Seq(seq),
            timestamp_us: 1_700_000_000_000_000 + seq,
            sender: UserId::new("alice").expect("id"),
            device: DeviceId::new("phone").expect("id"),
            client_msg_id: seq * 10,
            kind: MessageKind::MESSAGE,
            refers_to: None,
            thread: None,
            payload: Bytes::from(vec![seq as u8; 5]),
        }
    }

    fn encoded(r: &EventRecord) -> Bytes {
        let mut b = BytesMut::new();
        r.encode(&mut b).expect("encodes");
        b.freeze()
    }

    #[test]
    fn raw_batch_equals_typed_encoding() {
        let room = RoomId::new("general").expect("id");
        let recs: Vec<EventRecord> = (1..=3).map(record).collect();
        let raw: Vec<Bytes> = recs.iter().map(encoded).collect();
        let frame = event_batch_frame(0, crate::flags::REPLAY, &room, &raw).expect("builds");
        let typed = Frame::new(EventBatch {
            room: room.clone(),
            events: recs.clone(),
        })
        .with_flags(crate::flags::REPLAY)
        .to_bytes()
        .expect("encodes");
        assert_eq!(frame, typed);

        let page = history_page_frame(9, &room, true, Seq(1), &raw).expect("builds");
        let typed = Frame::request(
            9,
            HistoryPage {
                room: room.clone(),
                has_more: true,
                first: Seq(1),
                events: recs,
            },
        )
        .to_bytes()
        .expect("encodes");
        assert_eq!(page, typed);
    }

    #[test]
    fn record_range_points_at_the_record() {
        let room = RoomId::new("r1").expect("id");
        let rec = record(42);
        let frame = Frame::new(Event {
            room: room.clone(),
            event: rec.clone(),
        })
        .to_bytes()
        .expect("encodes");
        let range = event_record_range(&room, frame.len());
        assert_eq!(
            EventRecord::decode(frame.slice(range)).expect("decodes"),
            rec
        );
        let mut buf = BytesMut::from(&frame[..]);
        let decoded = Frame::decode(&mut buf, 1 << 20)
            .expect("ok")
            .expect("whole");
        assert!(matches!(decoded.body, Body::Event(_)));
    }
}
