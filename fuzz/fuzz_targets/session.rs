//! Drives the broker's session state machine with scripts of operations
//! over up to three in-memory connections (Hello, every client request
//! with fuzz-chosen fields, raw bytes, fuzzed headers, waits, half-closes,
//! drops), then checks that the broker's output decodes, that fatal errors
//! close, that reply ids were used, that a canary client still works and
//! that no session leaks. See fuzz/harness/session.rs for the script
//! format and the invariants; broker/tests/session_fuzz.rs replays the
//! findings kept in fuzz/regressions/session.

#![no_main]

#[path = "../harness/session.rs"]
mod harness;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    harness::run(data);
});
