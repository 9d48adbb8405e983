//! Property tests: `decode(encode(x)) == x` for arbitrary values of every
//! frame type, arbitrary request ids and flags; streams split at arbitrary
//! points decode the same; arbitrary bytes never make the decoder panic and
//! whatever it accepts has a stable canonical encoding.

#![allow(clippy::unwrap_used)]

use bytes::{Bytes, BytesMut};
use confab_codec::*;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::select;
use proptest::strategy::{Union, ValueTree};
use proptest::test_runner::{Config, TestRunner};
use std::sync::atomic::{AtomicUsize, Ordering};

// ---------------------------------------------------------------------------
// Leaves

/// A valid id string: 1 to `max` bytes of UTF-8 without control characters.
fn id_string(max: usize) -> impl Strategy<Value = String> {
    let typical = "[a-z0-9][a-z0-9_.:@-]{0,20}";
    let full = "[A-Za-z0-9]{1,8}".prop_map(move |s| s.repeat(max).chars().take(max).collect());
    let unicode = vec(
        any::<char>().prop_filter("control", |c| !c.is_control()),
        1..=max,
    )
    .prop_map(move |chars| {
        let mut s = String::new();
        for c in chars {
            if s.len() + c.len_utf8() > max {
                break;
            }
            s.push(c);
        }
        s
    });
    prop_oneof![
        4 => typical.boxed(),
        1 => full.boxed(),
        3 => unicode.boxed(),
    ]
}

fn room() -> impl Strategy<Value = RoomId> {
    id_string(RoomId::MAX_LEN).prop_map(|s| RoomId::new(s).unwrap())
}

fn user() -> impl Strategy<Value = UserId> {
    id_string(UserId::MAX_LEN).prop_map(|s| UserId::new(s).unwrap())
}

fn device() -> impl Strategy<Value = DeviceId> {
    id_string(DeviceId::MAX_LEN).prop_map(|s| DeviceId::new(s).unwrap())
}

/// Free text, control characters and all.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        vec(any::<char>(), 0..24).prop_map(String::from_iter),
        "[ -~]{0,40}",
    ]
}

fn payload() -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..64).prop_map(Bytes::from)
}

fn seq() -> impl Strategy<Value = Seq> {
    prop_oneof![Just(0), 1..1_000u64, any::<u64>()].prop_map(Seq)
}

/// `Some(Seq(0))` has no wire form (0 means absent), so it is never generated.
fn opt_seq() -> impl Strategy<Value = Option<Seq>> {
    prop::option::of((1..=u64::MAX).prop_map(Seq))
}

fn error_code() -> impl Strategy<Value = ErrorCode> {
    select(ErrorCode::ALL)
}

fn kind() -> impl Strategy<Value = MessageKind> {
    any::<u8>().prop_map(MessageKind)
}

fn start_at() -> impl Strategy<Value = StartAt> {
    prop_oneof![Just(StartAt::Live), seq().prop_map(StartAt::From)]
}

fn list<S: Strategy>(item: S) -> impl Strategy<Value = Vec<S::Value>> {
    vec(item, 0..4)
}

// ---------------------------------------------------------------------------
// Composite values

fn subscribe_item() -> impl Strategy<Value = SubscribeItem> {
    (room(), start_at()).prop_map(|(room, start)| SubscribeItem { room, start })
}

fn event_record() -> impl Strategy<Value = EventRecord> {
    (
        seq(),
        any::<u64>(),
        user(),
        device(),
        any::<u64>(),
        kind(),
        opt_seq(),
        opt_seq(),
        payload(),
    )
        .prop_map(
            |(
                seq,
                timestamp_us,
                sender,
                device,
                client_msg_id,
                kind,
                refers_to,
                thread,
                payload,
            )| {
                EventRecord {
                    seq,
                    timestamp_us,
                    sender,
                    device,
                    client_msg_id,
                    kind,
                    refers_to,
                    thread,
                    payload,
                }
            },
        )
}

fn room_meta() -> impl Strategy<Value = RoomMeta> {
    (text(), text(), text()).prop_map(|(name, topic, avatar_url)| RoomMeta {
        name,
        topic,
        avatar_url,
    })
}

fn session_bodies() -> Vec<BoxedStrategy<Body>> {
    vec![
        (
            any::<u16>(),
            any::<u16>(),
            text(),
            device(),
            text(),
            list(subscribe_item()),
        )
            .prop_map(
                |(min_version, max_version, token, device, client_name, resume)| Hello {
                    min_version,
                    max_version,
                    token,
                    device,
                    client_name,
                    resume,
                    features: Default::default(),
                },
            )
            .prop_map(Body::from)
            .boxed(),
        (
            any::<u16>(),
            any::<u64>(),
            user(),
            any::<u64>(),
            any::<[u32; 5]>(),
        )
            .prop_map(
                |(version, session_id, user, server_time_us, limits)| Welcome {
                    version,
                    session_id,
                    user,
                    server_time_us,
                    max_frame_len: limits[0],
                    max_payload_len: limits[1],
                    max_rooms: limits[2],
                    heartbeat_ms: limits[3],
                    idle_timeout_ms: limits[4],
                    features: Default::default(),
                },
            )
            .prop_map(Body::from)
            .boxed(),
        (error_code(), text())
            .prop_map(|(code, message)| Goodbye { code, message }.into())
            .boxed(),
        any::<u64>().prop_map(|nonce| Ping { nonce }.into()).boxed(),
        any::<u64>().prop_map(|nonce| Pong { nonce }.into()).boxed(),
        (error_code(), any::<u32>(), text())
            .prop_map(|(code, retry_after_ms, message)| {
                ErrorFrame {
                    code,
                    retry_after_ms,
                    message,
                }
                .into()
            })
            .boxed(),
        (select(NoticeLevel::ALL), error_code(), text())
            .prop_map(|(level, code, text)| Notice { level, code, text }.into())
            .boxed(),
        Just(Body::from(Ack {})).boxed(),
        text()
            .prop_map(|token| RefreshToken { token }.into())
            .boxed(),
        (text(), text())
            .prop_map(|(provider, token)| RegisterPush { provider, token }.into())
            .boxed(),
    ]
}

fn messaging_bodies() -> Vec<BoxedStrategy<Body>> {
    vec![
        list(subscribe_item())
            .prop_map(|items| Subscribe { items }.into())
            .boxed(),
        list(
            (room(), error_code(), seq(), seq()).prop_map(|(room, code, head, first)| {
                SubscribeResult {
                    room,
                    code,
                    head,
                    first,
                }
            }),
        )
        .prop_map(|results| SubscribeAck { results }.into())
        .boxed(),
        list(room())
            .prop_map(|rooms| Unsubscribe { rooms }.into())
            .boxed(),
        (room(), seq(), seq())
            .prop_map(|(room, resume_from, head)| {
                Lagging {
                    room,
                    resume_from,
                    head,
                }
                .into()
            })
            .boxed(),
        (room(), seq())
            .prop_map(|(room, seq)| CaughtUp { room, seq }.into())
            .boxed(),
        (any::<u64>(), proptest::option::of(room()), any::<u16>())
            .prop_map(|(since, after, limit)| {
                SyncInbox {
                    since,
                    after,
                    limit,
                }
                .into()
            })
            .boxed(),
        (
            list(
                (
                    (room(), error_code(), select(Role::ALL), any::<u64>()),
                    (seq(), seq(), seq(), any::<u64>(), seq()),
                    vec(event_record(), 0..2),
                )
                    .prop_map(
                        |(
                            (room, code, role, stamp),
                            (head, first, read, unread, first_unread),
                            last,
                        )| {
                            InboxRoom {
                                room,
                                code,
                                role,
                                stamp,
                                head,
                                first,
                                read,
                                unread,
                                first_unread,
                                last,
                            }
                        },
                    ),
            ),
            any::<bool>(),
            any::<u64>(),
        )
            .prop_map(|(rooms, has_more, cursor)| {
                InboxPage {
                    rooms,
                    has_more,
                    cursor,
                }
                .into()
            })
            .boxed(),
        (room(), seq(), seq(), select(GapReason::ALL))
            .prop_map(|(room, from, to, reason)| {
                Gap {
                    room,
                    from,
                    to,
                    reason,
                }
                .into()
            })
            .boxed(),
        (
            room(),
            any::<u64>(),
            kind(),
            opt_seq(),
            opt_seq(),
            payload(),
        )
            .prop_map(|(room, client_msg_id, kind, refers_to, thread, payload)| {
                Publish {
                    room,
                    client_msg_id,
                    kind,
                    refers_to,
                    thread,
                    payload,
                }
                .into()
            })
            .boxed(),
        (room(), any::<u64>(), seq(), any::<u64>(), any::<bool>())
            .prop_map(|(room, client_msg_id, seq, timestamp_us, duplicate)| {
                PublishAck {
                    room,
                    client_msg_id,
                    seq,
                    timestamp_us,
                    duplicate,
                }
                .into()
            })
            .boxed(),
        (room(), event_record())
            .prop_map(|(room, event)| Event { room, event }.into())
            .boxed(),
        (room(), list(event_record()))
            .prop_map(|(room, events)| EventBatch { room, events }.into())
            .boxed(),
        (room(), select(Direction::ALL), seq(), any::<u16>())
            .prop_map(|(room, direction, anchor, limit)| {
                HistoryRequest {
                    room,
                    direction,
                    anchor,
                    limit,
                }
                .into()
            })
            .boxed(),
        (room(), any::<bool>(), seq(), list(event_record()))
            .prop_map(|(room, has_more, first, events)| {
                HistoryPage {
                    room,
                    has_more,
                    first,
                    events,
                }
                .into()
            })
            .boxed(),
    ]
}

fn room_bodies() -> Vec<BoxedStrategy<Body>> {
    vec![
        (
            select(RoomKind::ALL),
            prop::option::of(room()),
            prop::option::of(user()),
            select(JoinPolicy::ALL),
            room_meta(),
            list(user()),
        )
            .prop_map(|(kind, room, peer, policy, meta, invite)| {
                CreateRoom {
                    kind,
                    room,
                    peer,
                    policy,
                    meta,
                    invite,
                }
                .into()
            })
            .boxed(),
        (
            room(),
            select(RoomKind::ALL),
            select(JoinPolicy::ALL),
            room_meta(),
            any::<u64>(),
            seq(),
            seq(),
            any::<u32>(),
            list((user(), select(Role::ALL)).prop_map(|(user, role)| Member { user, role })),
        )
            .prop_map(
                |(room, kind, policy, meta, created_at_us, head, first, member_count, members)| {
                    RoomInfo {
                        room,
                        kind,
                        policy,
                        meta,
                        created_at_us,
                        head,
                        first,
                        member_count,
                        members,
                    }
                    .into()
                },
            )
            .boxed(),
        room().prop_map(|room| JoinRoom { room }.into()).boxed(),
        room().prop_map(|room| LeaveRoom { room }.into()).boxed(),
        (room(), user())
            .prop_map(|(room, user)| InviteMember { room, user }.into())
            .boxed(),
        (room(), user())
            .prop_map(|(room, user)| RemoveMember { room, user }.into())
            .boxed(),
        room().prop_map(|room| GetRoomInfo { room }.into()).boxed(),
        (room(), room_meta())
            .prop_map(|(room, meta)| UpdateRoom { room, meta }.into())
            .boxed(),
        (room(), user(), select(Role::ALL))
            .prop_map(|(room, user, role)| SetRole { room, user, role }.into())
            .boxed(),
        (prop::option::of(room()), any::<u16>())
            .prop_map(|(after, limit)| ListRooms { after, limit }.into())
            .boxed(),
        (
            list(
                (
                    room(),
                    select(RoomKind::ALL),
                    text(),
                    seq(),
                    seq(),
                    any::<u64>(),
                    any::<u64>(),
                )
                    .prop_map(
                        |(room, kind, name, head, read, unread, last_activity_us)| RoomSummary {
                            room,
                            kind,
                            name,
                            head,
                            read,
                            unread,
                            last_activity_us,
                        },
                    ),
            ),
            any::<bool>(),
        )
            .prop_map(|(rooms, has_more)| RoomList { rooms, has_more }.into())
            .boxed(),
    ]
}

fn ephemeral_bodies() -> Vec<BoxedStrategy<Body>> {
    vec![
        (room(), any::<bool>())
            .prop_map(|(room, active)| Typing { room, active }.into())
            .boxed(),
        (room(), list(user()))
            .prop_map(|(room, users)| TypingEvent { room, users }.into())
            .boxed(),
        select(PresenceStatus::ALL)
            .prop_map(|status| SetPresence { status }.into())
            .boxed(),
        any::<bool>()
            .prop_map(|enabled| WatchPresence { enabled }.into())
            .boxed(),
        list(user())
            .prop_map(|users| GetPresence { users }.into())
            .boxed(),
        list(
            (user(), select(PresenceStatus::ALL), any::<u64>()).prop_map(
                |(user, status, last_seen_us)| PresenceEntry {
                    user,
                    status,
                    last_seen_us,
                },
            ),
        )
        .prop_map(|entries| PresenceEvent { entries }.into())
        .boxed(),
        (room(), select(ReceiptKind::ALL), seq())
            .prop_map(|(room, kind, seq)| Receipt { room, kind, seq }.into())
            .boxed(),
        (
            room(),
            list(
                (user(), device(), select(ReceiptKind::ALL), seq()).prop_map(
                    |(user, device, kind, seq)| ReceiptEntry {
                        user,
                        device,
                        kind,
                        seq,
                    },
                ),
            ),
        )
            .prop_map(|(room, entries)| ReceiptEvent { room, entries }.into())
            .boxed(),
        (room(), seq())
            .prop_map(|(room, seq)| GetMessageStatus { room, seq }.into())
            .boxed(),
        (
            room(),
            seq(),
            select(DeliveryState::ALL),
            any::<u32>(),
            any::<u32>(),
            any::<u32>(),
        )
            .prop_map(|(room, seq, state, recipients, delivered, read)| {
                MessageStatus {
                    room,
                    seq,
                    state,
                    recipients,
                    delivered,
                    read,
                }
                .into()
            })
            .boxed(),
        (EXTENSION_TYPE_BASE..=u8::MAX, payload())
            .prop_map(|(frame_type, body)| Body::Extension { frame_type, body })
            .boxed(),
    ]
}

/// One strategy per frame type, plus extensions.
fn body_strategies() -> Vec<BoxedStrategy<Body>> {
    let mut all = session_bodies();
    all.extend(messaging_bodies());
    all.extend(room_bodies());
    all.extend(ephemeral_bodies());
    all
}

fn body() -> impl Strategy<Value = Body> {
    Union::new(body_strategies())
}

fn frame() -> impl Strategy<Value = Frame> {
    (any::<u32>(), any::<u8>(), body()).prop_map(|(request_id, flags, body)| Frame {
        request_id,
        flags,
        body,
    })
}

fn encode(frame: &Frame) -> Bytes {
    let mut buf = BytesMut::new();
    frame.encode(&mut buf).unwrap();
    buf.freeze()
}

/// Decodes until incomplete or an error.
fn decode_stream(buf: &mut BytesMut) -> Vec<Result<Frame, CodecError>> {
    let mut out = Vec::new();
    loop {
        match Frame::decode(buf, DEFAULT_MAX_FRAME_LEN) {
            Ok(Some(frame)) => out.push(Ok(frame)),
            Ok(None) => return out,
            Err(e) => {
                out.push(Err(e));
                return out;
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Properties

/// The strategy list has one entry per frame type: sample each and check
/// they cover all 42 types and extensions.
#[test]
fn strategies_cover_every_frame_type() {
    let strategies = body_strategies();
    let mut runner = TestRunner::deterministic();
    let mut types = Vec::new();
    for s in &strategies {
        let body = s.new_tree(&mut runner).unwrap().current();
        types.push(body.frame_type());
    }
    let (ext, known): (Vec<u8>, Vec<u8>) =
        types.into_iter().partition(|&t| t >= EXTENSION_TYPE_BASE);
    assert_eq!(ext.len(), 1);
    let expected: Vec<u8> = [
        0x01..=0x0A,
        0x10..=0x17,
        0x20..=0x25,
        0x30..=0x3A,
        0x40..=0x45,
        0x50..=0x53,
    ]
    .into_iter()
    .flatten()
    .collect();
    assert_eq!(known, expected);
}

proptest! {
    #[test]
    fn decode_encode_is_identity(frame in frame()) {
        let bytes = encode(&frame);
        prop_assert_eq!(bytes.len(), frame.encoded_len().unwrap());
        prop_assert_eq!(&frame.to_bytes().unwrap(), &bytes);
        let mut buf = BytesMut::from(&bytes[..]);
        let decoded = Frame::decode(&mut buf, DEFAULT_MAX_FRAME_LEN).unwrap();
        prop_assert_eq!(decoded.as_ref(), Some(&frame));
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn truncated_prefixes_are_incomplete(frame in frame(), cut in any::<prop::sample::Index>()) {
        let bytes = encode(&frame);
        let cut = cut.index(bytes.len());
        let mut buf = BytesMut::from(&bytes[..cut]);
        prop_assert_eq!(Frame::decode(&mut buf, DEFAULT_MAX_FRAME_LEN), Ok(None));
        prop_assert_eq!(&buf[..], &bytes[..cut]);
    }

    /// Frames written back to back and delivered in arbitrary chunks decode
    /// in order, exactly as if the stream had arrived at once.
    #[test]
    fn chunked_streams_decode_in_order(
        frames in vec(frame(), 1..5),
        chunks in vec(1..64usize, 1..8),
    ) {
        let mut stream = BytesMut::new();
        for frame in &frames {
            frame.encode(&mut stream).unwrap();
        }
        let mut buf = BytesMut::new();
        let mut decoded = Vec::new();
        let mut rest = &stream[..];
        for &size in chunks.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (chunk, tail) = rest.split_at(size.min(rest.len()));
            rest = tail;
            buf.extend_from_slice(chunk);
            decoded.extend(decode_stream(&mut buf));
        }
        let expected: Vec<Result<Frame, CodecError>> = frames.into_iter().map(Ok).collect();
        prop_assert_eq!(decoded, expected);
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn event_records_round_trip(record in event_record()) {
        let mut buf = BytesMut::new();
        record.encode(&mut buf).unwrap();
        prop_assert_eq!(buf.len(), record.encoded_len());
        prop_assert_eq!(EventRecord::decode(buf.freeze()).unwrap(), record);
    }

    #[test]
    fn arbitrary_bytes_never_panic(input in vec(any::<u8>(), 0..256), max in 0..512u32) {
        let mut buf = BytesMut::from(&input[..]);
        loop {
            let before = buf.len();
            match Frame::decode(&mut buf, max) {
                Ok(Some(_)) | Err(_) if buf.len() < before => continue,
                Ok(None) | Err(CodecError::FrameTooLarge { .. }) => {
                    prop_assert_eq!(buf.len(), before);
                    break;
                }
                other => prop_assert!(false, "consumed nothing but returned {:?}", other),
            }
        }
    }
}

/// Checks that a decoded frame has a stable canonical encoding: encoding it
/// and decoding that gives the same frame, whose encoding is the same bytes.
/// Returns whether `raw` decoded at all.
fn check_canonical(raw: &[u8]) -> Result<bool, TestCaseError> {
    let mut buf = BytesMut::from(raw);
    let Ok(Some(frame)) = Frame::decode(&mut buf, DEFAULT_MAX_FRAME_LEN) else {
        return Ok(false);
    };
    let consumed = raw.len() - buf.len();
    let header = Header::peek(raw).unwrap();
    prop_assert_eq!(frame.request_id, header.request_id);
    prop_assert_eq!(frame.flags, header.flags);
    prop_assert_eq!(frame.body.frame_type(), header.frame_type);
    let canonical = encode(&frame);
    prop_assert!(canonical.len() <= consumed);
    let mut buf = BytesMut::from(&canonical[..]);
    let again = Frame::decode(&mut buf, DEFAULT_MAX_FRAME_LEN).unwrap();
    prop_assert_eq!(again.as_ref(), Some(&frame));
    prop_assert!(buf.is_empty());
    prop_assert_eq!(encode(&frame), canonical);
    Ok(true)
}

/// Valid frames with a few bytes overwritten and junk appended (and the
/// header length fixed up): whatever still decodes has a stable canonical
/// form. Also checks that a good share of the inputs did decode, so the
/// property is not vacuous.
#[test]
fn mutated_frames_decode_to_canonical_frames() {
    let decoded = AtomicUsize::new(0);
    let strategy = (
        frame(),
        vec((any::<prop::sample::Index>(), any::<u8>()), 0..3),
        vec(any::<u8>(), 0..8),
    );
    let mut runner = TestRunner::new(Config::with_cases(1_000));
    runner
        .run(&strategy, |(frame, edits, junk)| {
            let mut raw = encode(&frame).to_vec();
            for (at, byte) in edits {
                // Leave the length alone; anything else may change.
                let i = 4 + at.index(raw.len() - 4);
                raw[i] = byte;
            }
            raw.extend_from_slice(&junk);
            let len = u32::try_from(raw.len() - HEADER_LEN).unwrap();
            raw[..4].copy_from_slice(&len.to_be_bytes());
            if check_canonical(&raw)? {
                decoded.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        })
        .unwrap();
    let decoded = decoded.into_inner();
    assert!(
        decoded >= 300,
        "only {decoded} of 1000 mutated frames decoded"
    );
}

/// The same on arbitrary bodies after a header with a known frame type.
#[test]
fn arbitrary_bodies_decode_to_canonical_frames() {
    let decoded = AtomicUsize::new(0);
    let known: Vec<u8> = (0..=u8::MAX)
        .filter(|&t| {
            let header = Header {
                len: 0,
                frame_type: t,
                flags: 0,
                request_id: 0,
            };
            !matches!(
                Frame::decode_body(header, Bytes::new()),
                Err(CodecError::UnknownFrameType { .. })
            )
        })
        .collect();
    let strategy = (
        select(known),
        any::<u8>(),
        any::<u32>(),
        vec(any::<u8>(), 0..96),
    );
    let mut runner = TestRunner::new(Config::with_cases(2_000));
    runner
        .run(&strategy, |(frame_type, flags, request_id, body)| {
            let mut raw = BytesMut::new();
            Header {
                len: u32::try_from(body.len()).unwrap(),
                frame_type,
                flags,
                request_id,
            }
            .put(&mut raw);
            raw.extend_from_slice(&body);
            if check_canonical(&raw)? {
                decoded.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        })
        .unwrap();
    let decoded = decoded.into_inner();
    assert!(
        decoded >= 500,
        "only {decoded} of 2000 random bodies decoded"
    );
}
