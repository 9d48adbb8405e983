// Writes codec/tests/vectors/frames.json, the golden vectors that the Rust
// codec (codec/tests/vectors.rs) and this package (test/unit/vectors.test.ts)
// both check. Run once when adding vectors: `npm run build && node
// scripts/make-vectors.mjs`; review the diff; never to "fix" a failing test.
//
// Where the bytes were written by hand (the worked examples of
// docs/protocol.md section 17 and codec/tests/golden.rs), they are given
// here as `hex` and this script fails if the codec disagrees with them.
// For the other vectors the bytes are computed by this codec; the Rust
// codec, whose layouts are pinned by its hand-written golden tests, then
// checks every one of them in both directions.

import { readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { decodeMessage, encodeFrame, frameFromJson, frameToJson, fromHex, toHex } from '../dist/index.js';

const here = dirname(fileURLToPath(import.meta.url));
const out = join(here, '..', '..', 'codec', 'tests', 'vectors', 'frames.json');

const T0 = '1700000000000000';
const U64_MAX = '18446744073709551615';
const rec = (seq, over = {}) => ({
  seq: String(seq),
  timestamp_us: T0,
  sender: 'alice',
  device: 'phone',
  client_msg_id: '1',
  kind: 1,
  refers_to: null,
  thread: null,
  payload: '68656c6c6f',
  ...over,
});
const allBytes = toHex(Uint8Array.from({ length: 256 }, (_, i) => i));
const meta = { name: 'Équipe 🚀', topic: 'line1\nline2', avatar_url: 'https://example.com/a.png' };

/** [name, frame JSON, hand-written hex or undefined] */
const frames = [
  ['spec_17_1_hello', { type: 'Hello', request_id: 1, flags: 0, body: { min_version: 1, max_version: 1, token: 'alice:phone', device: 'phone', client_name: 'demo/1.0', resume: [{ room: 'general', start: { from: '42' } }] } },
    '00000034 01 00 00000001 0001 0001 000b 616c6963653a70686f6e65 05 70686f6e65 0008 64656d6f2f312e30 0001 07 67656e6572616c 01 000000000000002a'],
  ['hello_many_resume', { type: 'Hello', request_id: 4294967295, flags: 0, body: { min_version: 1, max_version: 7, token: 'eyJhbGciOiJIUzI1NiJ9.e30.sig', device: 'laptop-ü', client_name: '', resume: [{ room: 'general', start: 'live' }, { room: 'ルーム', start: { from: U64_MAX } }, { room: 'r', start: { from: '0' } }] } }],
  ['welcome_golden', { type: 'Welcome', request_id: 1, flags: 0, body: { version: 1, session_id: '72623859790382856', user: 'alice', server_time_us: T0, max_frame_len: 1048576, max_payload_len: 65536, max_rooms: 1000, heartbeat_ms: 15000, idle_timeout_ms: 45000 } },
    '0000002c 02 00 00000001 0001 0102030405060708 05 616c696365 00060a24181e4000 00100000 00010000 000003e8 00003a98 0000afc8'],
  ['welcome_extremes', { type: 'Welcome', request_id: 2, flags: 0, body: { version: 1, session_id: U64_MAX, user: 'x'.repeat(128), server_time_us: '0', max_frame_len: 4294967295, max_payload_len: 0, max_rooms: 1, heartbeat_ms: 1, idle_timeout_ms: 4294967295 } }],
  ['goodbye_golden', { type: 'Goodbye', request_id: 0, flags: 0, body: { code: 'ShuttingDown', message: 'bye' } }, '00000007 03 00 00000000 002a 0003 627965'],
  ['goodbye_session_replaced', { type: 'Goodbye', request_id: 0, flags: 0, body: { code: 'SessionReplaced', message: 'another connection of device “phone”' } }],
  ['ping_golden', { type: 'Ping', request_id: 0, flags: 0, body: { nonce: '72623859790382856' } }, '00000008 04 00 00000000 0102030405060708'],
  ['pong_golden', { type: 'Pong', request_id: 4294967294, flags: 0, body: { nonce: '1' } }, '00000008 05 00 fffffffe 0000000000000001'],
  ['pong_max_nonce', { type: 'Pong', request_id: 0, flags: 0, body: { nonce: U64_MAX } }],
  ['error_golden', { type: 'Error', request_id: 9, flags: 0, body: { code: 'RateLimited', retry_after_ms: 250, message: 'slow down' } }, '00000011 06 00 00000009 001e 000000fa 0009 736c6f7720646f776e'],
  ['error_storage_full', { type: 'Error', request_id: 77, flags: 0, body: { code: 'StorageFull', retry_after_ms: 0, message: '' } }],
  ['notice_golden', { type: 'Notice', request_id: 0, flags: 0, body: { level: 'Info', code: 'Normal', text: 'café' } }, '0000000a 07 00 00000000 01 0000 0005 636166c3a9'],
  ['notice_warning', { type: 'Notice', request_id: 0, flags: 0, body: { level: 'Warning', code: 'Forbidden', text: 'rooms no longer allowed: a, b' } }],
  ['ack_golden', { type: 'Ack', request_id: 13, flags: 0, body: {} }, '00000000 08 00 0000000d'],
  ['refresh_token', { type: 'RefreshToken', request_id: 21, flags: 0, body: { token: 'bob:tablet' } }],
  ['register_push', { type: 'RegisterPush', request_id: 22, flags: 0, body: { provider: 'webpush', token: 'https://push.example/abc?x=1' } }],
  ['register_push_unregister', { type: 'RegisterPush', request_id: 23, flags: 0, body: { provider: 'fcm', token: '' } }],
  ['subscribe_golden', { type: 'Subscribe', request_id: 15, flags: 0, body: { items: [{ room: 'general', start: { from: '43' } }, { room: 'secret', start: 'live' }] } },
    '00000023 10 00 0000000f 0002 07 67656e6572616c 01 000000000000002b 06 736563726574 00 0000000000000000'],
  ['subscribe_empty', { type: 'Subscribe', request_id: 16, flags: 0, body: { items: [] } }],
  ['subscribe_ack_golden', { type: 'SubscribeAck', request_id: 5, flags: 0, body: { results: [{ room: 'general', code: 'Normal', head: '42', first: '1' }, { room: 'secret', code: 'NotMember', head: '0', first: '0' }] } },
    '00000035 11 00 00000005 0002 07 67656e6572616c 0000 000000000000002a 0000000000000001 06 736563726574 0016 0000000000000000 0000000000000000'],
  ['subscribe_ack_truncated', { type: 'SubscribeAck', request_id: 6, flags: 0, body: { results: [{ room: 'old', code: 'HistoryTruncated', head: '9007199254740993', first: '9007199254740000' }] } }],
  ['unsubscribe', { type: 'Unsubscribe', request_id: 17, flags: 0, body: { rooms: ['general', '🙂'] } }],
  ['lagging', { type: 'Lagging', request_id: 0, flags: 0, body: { room: 'general', resume_from: '1001', head: '5000' } }],
  ['caught_up', { type: 'CaughtUp', request_id: 0, flags: 0, body: { room: 'general', seq: '5000' } }],
  ['spec_17_2_publish', { type: 'Publish', request_id: 7, flags: 0, body: { room: 'general', client_msg_id: '1', kind: 1, refers_to: null, thread: null, payload: '68656c6c6f' } },
    '0000002a 20 00 00000007 07 67656e6572616c 0000000000000001 01 0000000000000000 0000000000000000 00000005 68656c6c6f'],
  ['publish_golden_no_reply', { type: 'Publish', request_id: 7, flags: 1, body: { room: 'general', client_msg_id: '3', kind: 1, refers_to: '41', thread: null, payload: '686921' } },
    '00000028 20 01 00000007 07 67656e6572616c 0000000000000003 01 0000000000000029 0000000000000000 00000003 686921'],
  ['publish_all_byte_values', { type: 'Publish', request_id: 8, flags: 0, body: { room: 'bytes', client_msg_id: '1765000000000000001', kind: 200, refers_to: null, thread: '9007199254740993', payload: allBytes } }],
  ['publish_edit', { type: 'Publish', request_id: 9, flags: 0, body: { room: 'general', client_msg_id: U64_MAX, kind: 2, refers_to: '42', thread: '40', payload: '' } }],
  ['spec_17_3_publish_ack', { type: 'PublishAck', request_id: 7, flags: 0, body: { room: 'general', client_msg_id: '1', seq: '42', timestamp_us: T0, duplicate: false } },
    '00000021 21 00 00000007 07 67656e6572616c 0000000000000001 000000000000002a 00060a24181e4000 00'],
  ['publish_ack_duplicate', { type: 'PublishAck', request_id: 10, flags: 0, body: { room: 'general', client_msg_id: '1765000000000000001', seq: '9007199254740993', timestamp_us: T0, duplicate: true } }],
  ['spec_17_4_event', { type: 'Event', request_id: 0, flags: 0, body: { room: 'general', event: rec(42) } },
    '00000046 22 00 00000000 07 67656e6572616c 000000000000002a 00060a24181e4000 05 616c696365 05 70686f6e65 0000000000000001 01 0000000000000000 0000000000000000 00000005 68656c6c6f'],
  ['event_golden', { type: 'Event', request_id: 0, flags: 0, body: { room: 'general', event: rec(42, { timestamp_us: '1700000000000001', client_msg_id: '3', refers_to: '41', payload: '686921' }) } },
    '00000044 22 00 00000000 07 67656e6572616c 000000000000002a 00060a24181e4001 05 616c696365 05 70686f6e65 0000000000000003 01 0000000000000029 0000000000000000 00000003 686921'],
  ['spec_17_4_event_replayed_in_batch', { type: 'EventBatch', request_id: 0, flags: 2, body: { room: 'general', events: [rec(42)] } },
    '00000048 23 02 00000000 07 67656e6572616c 0001 000000000000002a 00060a24181e4000 05 616c696365 05 70686f6e65 0000000000000001 01 0000000000000000 0000000000000000 00000005 68656c6c6f'],
  ['event_batch_golden', { type: 'EventBatch', request_id: 0, flags: 2, body: { room: 'general', events: [
    rec(1, { timestamp_us: '1000', sender: 'bob', device: 'd1', client_msg_id: '0', payload: '61' }),
    rec(2, { timestamp_us: '2000', client_msg_id: '9', kind: 4, refers_to: '1', thread: '1', payload: '2b31' }),
  ] } },
    '0000007a 23 02 00000000 07 67656e6572616c 0002 0000000000000001 00000000000003e8 03 626f62 02 6431 0000000000000000 01 0000000000000000 0000000000000000 00000001 61 0000000000000002 00000000000007d0 05 616c696365 05 70686f6e65 0000000000000009 04 0000000000000001 0000000000000001 00000002 2b31'],
  ['event_batch_empty', { type: 'EventBatch', request_id: 0, flags: 0, body: { room: 'general', events: [] } }],
  ['event_membership_entry', { type: 'Event', request_id: 0, flags: 2, body: { room: 'team', event: rec(1, { sender: 'system', device: 'server', client_msg_id: '0', kind: 6, payload: toHex(new TextEncoder().encode('bob')) }) } }],
  ['history_request_golden', { type: 'HistoryRequest', request_id: 11, flags: 0, body: { room: 'general', direction: 'Before', anchor: '100', limit: 50 } },
    '00000013 24 00 0000000b 07 67656e6572616c 01 0000000000000064 0032'],
  ['history_request_after', { type: 'HistoryRequest', request_id: 12, flags: 0, body: { room: 'general', direction: 'After', anchor: '9007199254740993', limit: 65535 } }],
  ['history_page', { type: 'HistoryPage', request_id: 12, flags: 0, body: { room: 'general', has_more: true, first: '3', events: [rec(3, { payload: allBytes }), rec(4, { kind: 3, refers_to: '3', payload: '' })] } }],
  ['history_page_probe', { type: 'HistoryPage', request_id: 13, flags: 0, body: { room: 'general', has_more: false, first: '1', events: [] } }],
  ['create_room_golden_group', { type: 'CreateRoom', request_id: 12, flags: 0, body: { kind: 'Group', room: 'team', peer: null, policy: 'InviteOnly', meta: { name: 'Team', topic: '', avatar_url: '' }, invite: ['bob', 'carol'] } },
    '0000001e 30 00 0000000c 02 04 7465616d 00 02 0004 5465616d 0000 0000 0002 03 626f62 05 6361726f6c'],
  ['create_room_golden_direct', { type: 'CreateRoom', request_id: 14, flags: 0, body: { kind: 'Direct', room: null, peer: 'bob', policy: 'Open', meta: { name: '', topic: '', avatar_url: '' }, invite: [] } },
    '0000000f 30 00 0000000e 01 00 03 626f62 01 0000 0000 0000 0000'],
  ['create_room_unicode_meta', { type: 'CreateRoom', request_id: 15, flags: 0, body: { kind: 'Group', room: null, peer: null, policy: 'Open', meta, invite: [] } }],
  ['room_info', { type: 'RoomInfo', request_id: 15, flags: 0, body: { room: 'team', kind: 'Group', policy: 'InviteOnly', meta, created_at_us: T0, head: '3', first: '1', member_count: 2, members: [{ user: 'alice', role: 'Owner' }, { user: 'bob', role: 'Admin' }, { user: 'carol', role: 'Member' }, { user: 'dave', role: 'Invited' }] } }],
  ['join_room', { type: 'JoinRoom', request_id: 30, flags: 0, body: { room: 'team' } }],
  ['leave_room', { type: 'LeaveRoom', request_id: 31, flags: 0, body: { room: 'team' } }],
  ['invite_member', { type: 'InviteMember', request_id: 32, flags: 0, body: { room: 'team', user: 'dave' } }],
  ['remove_member', { type: 'RemoveMember', request_id: 33, flags: 0, body: { room: 'team', user: 'dave' } }],
  ['get_room_info', { type: 'GetRoomInfo', request_id: 34, flags: 0, body: { room: 'r'.repeat(128) } }],
  ['update_room', { type: 'UpdateRoom', request_id: 35, flags: 0, body: { room: 'team', meta: { name: 'Team 2', topic: 'Ω', avatar_url: '' } } }],
  ['set_role', { type: 'SetRole', request_id: 36, flags: 0, body: { room: 'team', user: 'bob', role: 'Admin' } }],
  ['list_rooms_golden', { type: 'ListRooms', request_id: 16, flags: 0, body: { after: null, limit: 20 } }, '00000003 39 00 00000010 00 0014'],
  ['list_rooms_after', { type: 'ListRooms', request_id: 17, flags: 0, body: { after: 'general', limit: 1000 } }],
  ['room_list', { type: 'RoomList', request_id: 17, flags: 0, body: { rooms: [
    { room: 'dm:alice:bob', kind: 'Direct', name: '', head: '2', read: '2', unread: '0', last_activity_us: T0 },
    { room: 'team', kind: 'Group', name: 'Équipe 🚀', head: '9007199254740993', read: '1', unread: '9007199254740992', last_activity_us: '0' },
  ], has_more: true } }],
  ['typing_golden', { type: 'Typing', request_id: 0, flags: 0, body: { room: 'general', active: true } }, '00000009 40 00 00000000 07 67656e6572616c 01'],
  ['typing_stop', { type: 'Typing', request_id: 40, flags: 0, body: { room: 'general', active: false } }],
  ['typing_event', { type: 'TypingEvent', request_id: 0, flags: 0, body: { room: 'general', users: ['alice', 'Zoë'] } }],
  ['typing_event_nobody', { type: 'TypingEvent', request_id: 0, flags: 0, body: { room: 'general', users: [] } }],
  ['set_presence', { type: 'SetPresence', request_id: 41, flags: 0, body: { status: 'Away' } }],
  ['watch_presence', { type: 'WatchPresence', request_id: 42, flags: 0, body: { enabled: true } }],
  ['get_presence', { type: 'GetPresence', request_id: 43, flags: 0, body: { users: ['bob', 'carol'] } }],
  ['presence_event', { type: 'PresenceEvent', request_id: 43, flags: 0, body: { entries: [{ user: 'bob', status: 'Online', last_seen_us: T0 }, { user: 'carol', status: 'Offline', last_seen_us: '0' }, { user: 'dave', status: 'Away', last_seen_us: U64_MAX }] } }],
  ['receipt_golden', { type: 'Receipt', request_id: 0, flags: 0, body: { room: 'general', kind: 'Read', seq: '42' } }, '00000011 50 00 00000000 07 67656e6572616c 02 000000000000002a'],
  ['receipt_delivered', { type: 'Receipt', request_id: 50, flags: 0, body: { room: 'general', kind: 'Delivered', seq: '9007199254740993' } }],
  ['receipt_event', { type: 'ReceiptEvent', request_id: 0, flags: 0, body: { room: 'general', entries: [{ user: 'bob', device: 'phone', kind: 'Delivered', seq: '41' }, { user: 'bob', device: 'laptop', kind: 'Read', seq: '42' }] } }],
  ['get_message_status', { type: 'GetMessageStatus', request_id: 51, flags: 0, body: { room: 'team', seq: '3' } }],
  ['message_status', { type: 'MessageStatus', request_id: 51, flags: 0, body: { room: 'team', seq: '3', state: 'Delivered', recipients: 4294967295, delivered: 3, read: 1 } }],
  ['extension_golden', { type: 'Extension', request_id: 3, flags: 64, body: { frame_type: 128, body: '616263' } }, '00000003 80 40 00000003 616263'],
  ['extension_ff_empty', { type: 'Extension', request_id: 0, flags: 0, body: { frame_type: 255, body: '' } }],
];

const vectors = frames.map(([name, json, handHex]) => {
  const bytes = encodeFrame(frameFromJson(json));
  const hex = toHex(bytes);
  if (handHex !== undefined && toHex(fromHex(handHex)) !== hex) {
    throw new Error(`${name}: the codec gives\n${hex}\nthe hand-written bytes are\n${toHex(fromHex(handHex))}`);
  }
  // The JSON must be exactly what decoding gives back (so the Rust side
  // and this one compare the same thing).
  const back = frameToJson(decodeMessage(bytes, 1 << 20));
  if (JSON.stringify(back) !== JSON.stringify(json)) {
    throw new Error(`${name}: JSON is not canonical:\n${JSON.stringify(back)}\n${JSON.stringify(json)}`);
  }
  return { name, source: handHex === undefined ? 'computed; checked by both codecs' : 'hand-written', frame: json, hex };
});

// Bytes that decode to a frame but are not its canonical encoding: they
// decode to `frame`, which encodes to `canonical_hex`.
const lenient = [
  {
    name: 'trailing_bytes_are_ignored',
    note: 'section 5: bytes after the last known field are ignored',
    hex: '0000000b 04 00 00000000 000000000000002a cafe01',
    frame: { type: 'Ping', request_id: 0, flags: 0, body: { nonce: '42' } },
  },
  {
    name: 'ack_with_a_body',
    note: '7.2.8: receivers ignore any bytes in an Ack body',
    hex: '00000002 08 00 00000005 0102',
    frame: { type: 'Ack', request_id: 5, flags: 0, body: {} },
  },
  {
    name: 'unknown_flag_bits_are_kept',
    note: '3.2: unknown flag bits are ignored, not an error',
    hex: '00000009 40 fc 00000000 07 67656e6572616c 00',
    frame: { type: 'Typing', request_id: 0, flags: 252, body: { room: 'general', active: false } },
  },
  {
    name: 'from_zero_is_kept_as_zero',
    note: '4.4: From(0) decodes as From(0) (the server treats it as From(1))',
    hex: '0000000d 10 00 00000002 0001 01 72 01 0000000000000000',
    frame: { type: 'Subscribe', request_id: 2, flags: 0, body: { items: [{ room: 'r', start: { from: '0' } }] } },
  },
  {
    name: 'live_with_a_nonzero_seq',
    note: '4.4: for Live the seq is ignored by the receiver; senders write 0',
    hex: '0000000d 10 00 00000002 0001 01 72 00 00000000000000ff',
    frame: { type: 'Subscribe', request_id: 2, flags: 0, body: { items: [{ room: 'r', start: 'live' }] } },
  },
].map((v) => {
  const got = decodeMessage(fromHex(v.hex), 1 << 20);
  if (JSON.stringify(frameToJson(got)) !== JSON.stringify(v.frame)) throw new Error(`${v.name}: decodes to ${JSON.stringify(frameToJson(got))}`);
  return { ...v, hex: toHex(fromHex(v.hex)), canonical_hex: toHex(encodeFrame(got)) };
});

// Bytes every receiver must refuse, with the error (the Rust codec's
// `CodecError` variant names). `max_frame_len` is the receive limit.
const malformed = [
  ['bool_2', 'InvalidValue', '40', '07 67656e6572616c 02', '4.1 bool other than 0 or 1'],
  ['room_kind_3', 'InvalidValue', '30', '03 00 00 01 0000 0000 0000 0000', '9.1 closed enum'],
  ['role_0', 'InvalidValue', '38', '01 74 01 62 00', '9: no enumeration uses 0'],
  ['start_at_mode_2', 'InvalidValue', '10', '0001 01 72 02 0000000000000001', '4.4 StartAt mode'],
  ['overlong_utf8', 'InvalidUtf8', '09', '0002 c0af', 'RFC 3629: no overlong encodings'],
  ['surrogate_utf8', 'InvalidUtf8', '09', '0003 eda080', 'RFC 3629: no surrogates'],
  ['above_10ffff_utf8', 'InvalidUtf8', '09', '0004 f4908080', 'RFC 3629: nothing above U+10FFFF'],
  ['invalid_utf8_in_id', 'InvalidUtf8', '32', '02 ff61', '4.3 ids are UTF-8'],
  ['empty_room_id', 'InvalidId', '40', '00 01', '4.1 a required id is not empty'],
  ['room_id_with_nul', 'InvalidId', '32', '03 610062', '4.1 no control characters'],
  ['room_id_with_c1_control', 'InvalidId', '32', '03 61c285', '4.1 U+0085 is Cc'],
  ['room_id_with_del', 'InvalidId', '32', '02 617f', '4.1 U+007F is Cc'],
  ['present_optional_id_invalid', 'InvalidId', '39', '01 0a 0014', '4.3 a present optional id is checked too'],
  ['device_id_65_bytes', 'InvalidId', '01', `0001 0001 0000 41 ${'61'.repeat(65)} 0000 0000`, '4.1 DeviceId is at most 64 bytes'],
  ['room_id_129_bytes', 'InvalidId', '32', `81 ${'61'.repeat(129)}`, '4.1 RoomId is at most 128 bytes'],
  ['list_count_past_end', 'Truncated', '12', 'ffff 0161', '4.3 a list count whose items cannot fit'],
  ['payload_past_end', 'Truncated', '20', '01 72 0000000000000001 01 0000000000000000 0000000000000000 00000010 00', '4.3 a bytes length past the end'],
  ['text_past_end', 'Truncated', '03', '0000 0005 6869', '4.3 a text length past the end'],
  ['fixed_field_past_end', 'Truncated', '04', '00000000000000', '4.3 a u64 past the end'],
  ['empty_body_for_goodbye', 'Truncated', '03', '', '4.3 missing fields'],
  ['unknown_mandatory_type_7f', 'UnknownFrameType', '7f', '', '3.3 unknown type below 0x80'],
  ['type_00', 'UnknownFrameType', '00', '', '3.3 type 0 is not used'],
  ['unassigned_type_15', 'UnknownFrameType', '15', '00', '3.3 unassigned code in a used range'],
].map(([name, error, type, body, note]) => {
  const b = fromHex(body);
  const hex = `${b.length.toString(16).padStart(8, '0')}${type}0000000001${toHex(b)}`;
  return [name, error, hex, note];
}).map(([name, error, hex, note]) => ({ name, note, error, max_frame_len: 1048576, hex: toHex(fromHex(hex)) }));
malformed.push({
  name: 'length_above_limit',
  note: '3.4 refused from the header alone, before the body is read',
  error: 'FrameTooLarge',
  max_frame_len: 1024,
  hex: '00000401040000000000',
});
for (const m of malformed) {
  let err;
  const bytes = fromHex(m.hex);
  try {
    decodeMessage(bytes, m.max_frame_len);
  } catch (e) {
    err = e;
  }
  const ok = m.error === 'FrameTooLarge' ? err?.kind === 'FrameTooLarge' : err?.kind === m.error;
  if (!ok) throw new Error(`${m.name}: expected ${m.error}, got ${err?.kind ?? 'no error'} ${err?.message ?? ''}`);
}

const doc = {
  about: [
    'Golden vectors of Confab wire protocol v1 (docs/protocol.md), shared by the Rust codec',
    '(codec/tests/vectors.rs) and the TypeScript codec (client-ts/test/unit/vectors.test.ts).',
    'frames: decode(hex) == frame and encode(frame) == hex. lenient: decode(hex) == frame and',
    'encode(frame) == canonical_hex. malformed: decoding hex with max_frame_len fails with error.',
    'JSON form: protocol field names; u64 as decimal strings; bytes as hex; absent Seq? and ids',
    'as null; enums and error codes by name; StartAt as "live" or {"from": seq}; MessageKind as',
    'a number; Extension bodies as {frame_type, body}.',
  ],
  frames: vectors,
  lenient,
  malformed,
};
const text = JSON.stringify(doc, null, 1) + '\n';
const prev = (() => {
  try {
    return readFileSync(out, 'utf8');
  } catch {
    return '';
  }
})();
writeFileSync(out, text);
console.log(`${vectors.length} frames, ${lenient.length} lenient, ${malformed.length} malformed -> ${out}${prev === text ? ' (unchanged)' : ''}`);
