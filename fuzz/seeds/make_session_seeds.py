#!/usr/bin/env python3
"""Writes the hand-built seed inputs of the `session` fuzz target into
fuzz/seeds/session/. Each input is a script read a byte at a time by
fuzz/harness/session.rs: an operation byte (bits 5-6: the connection slot
0-2; value % 32: the operation), then the operation's fields. A slot with
no connection gets one with a valid Hello first (bytes: user, device,
number of rooms to resume)."""
import os

HELLO = [0, 0, 0]  # the automatic Hello: user 0, device 0, no resume


def op(slot, kind):
    return slot * 32 + kind


def hello(user, device):
    return [user, device, 0]


seeds = {
    # bob subscribes live to r0, alice publishes there, bob reads history.
    "pubsub": [op(0, 10)] + hello(1, 0) + [2, 1, 0, 1]
    + [op(1, 7)] + hello(0, 0) + [2, 1, 5, 5, 0, 1, 0, 0]
    + [op(0, 2), 3]
    + [op(0, 13), 2, 0, 1, 10, 10],
    # Garbage, then a header announcing more than max_frame_len.
    "bad-frames": [op(0, 5)] + hello(0, 0) + [8, 1, 2, 3, 4, 5, 6, 7, 8]
    + [op(1, 6)] + hello(1, 1) + [1, 0x00, 0x20, 0, 7]
    + [op(2, 0), op(2, 1), 1, 1, 3, 2, 2, 1, 0],
    # Rooms: create an invite-only group, invite, join, set a role, list.
    "rooms": [op(0, 20)] + hello(0, 0) + [2, 0, 1, 1, 0, 0, 1, 1, 3, 0x61, 0x62, 0x63]
    + [op(0, 23), 2, 1, 1]
    + [op(1, 21)] + hello(1, 0) + [2, 1]
    + [op(0, 27), 2, 1, 1, 1]
    + [op(1, 28), 2, 0, 10]
    + [op(1, 25), 2, 1],
    # The same user and device twice: the first session is replaced.
    "replaced": [op(0, 31)] + hello(2, 1) + [2, 7]
    + [op(1, 31)] + hello(2, 1) + [2, 8]
    + [op(0, 2), 2],
    # Typing, presence, receipts, a token refresh, a half-close and a drop.
    "ephemeral": [op(0, 16)] + hello(0, 0) + [2, 0, 1]
    + [op(0, 17), 2, 1, op(0, 18), 2, 1, op(0, 19), 2, 2, 0, 1]
    + [op(0, 14), 2, 0, 1, 0]
    + [op(1, 29)] + hello(1, 1) + [2, 1, 1, 1]
    + [op(0, 3), op(1, 4)],
}

out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "session")
os.makedirs(out, exist_ok=True)
for name, data in seeds.items():
    with open(os.path.join(out, name), "wb") as f:
        f.write(bytes(data))
print(f"wrote {len(seeds)} seeds to {out}")
