//! The simulated network: one connection is two pipes of bytes, each in
//! order (as TCP is), with a latency per write, a bandwidth, a bound on
//! the bytes in flight (the socket buffers), and holds (a partition that
//! heals: nothing moves, nothing is lost). A cut loses what is in flight;
//! each side learns of it after a delay of its own.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};

/// One direction of a connection.
#[derive(Debug)]
pub(super) struct Pipe {
    /// Writes in flight, with the time each arrives (non-decreasing).
    chunks: VecDeque<(u64, Bytes)>,
    /// Bytes in flight.
    bytes: usize,
    /// Most bytes in flight; a writer with more waits.
    capacity: usize,
    /// Most bytes delivered per tick.
    bandwidth: usize,
    /// Nothing is delivered before this time.
    held_until: u64,
}

impl Pipe {
    pub(super) fn new(capacity: usize, bandwidth: usize) -> Self {
        Self {
            chunks: VecDeque::new(),
            bytes: 0,
            capacity,
            bandwidth,
            held_until: 0,
        }
    }

    /// Room left for a writer.
    pub(super) fn free(&self) -> usize {
        self.capacity.saturating_sub(self.bytes)
    }

    /// Sends `data`, arriving after `latency` and after what was sent before.
    pub(super) fn send(&mut self, now: u64, latency: u64, data: Bytes) {
        if data.is_empty() {
            return;
        }
        let after = self.chunks.back().map_or(0, |(t, _)| *t);
        self.bytes += data.len();
        self.chunks.push_back(((now + latency).max(after), data));
    }

    /// Moves what has arrived by `now` (within the bandwidth) into `into`.
    pub(super) fn receive(&mut self, now: u64, into: &mut BytesMut) {
        if now < self.held_until {
            return;
        }
        let mut budget = self.bandwidth;
        while budget > 0 {
            let Some((at, chunk)) = self.chunks.front_mut() else {
                break;
            };
            if *at > now {
                break;
            }
            let n = budget.min(chunk.len());
            into.extend_from_slice(&chunk.split_to(n));
            self.bytes -= n;
            budget -= n;
            if chunk.is_empty() {
                self.chunks.pop_front();
            }
        }
    }

    /// Nothing moves until `until`.
    pub(super) fn hold(&mut self, until: u64) {
        self.held_until = self.held_until.max(until);
    }

    /// Bytes in flight.
    pub(super) fn in_flight(&self) -> usize {
        self.bytes
    }
}

/// A connection between a client and the broker.
#[derive(Debug)]
pub(super) struct Conn {
    /// Client to broker.
    pub(super) up: Pipe,
    /// Broker to client.
    pub(super) down: Pipe,
    /// Latency of each write, in microseconds.
    pub(super) latency: u64,
    /// Cut (or closed by one side): from when each side knows.
    pub(super) broker_knows_at: Option<u64>,
    pub(super) client_knows_at: Option<u64>,
}

impl Conn {
    pub(super) fn new(capacity: usize, bandwidth: usize, latency: u64) -> Self {
        Self {
            up: Pipe::new(capacity, bandwidth),
            down: Pipe::new(capacity, bandwidth),
            latency,
            broker_knows_at: None,
            client_knows_at: None,
        }
    }

    /// Whether bytes still flow.
    pub(super) fn is_open(&self) -> bool {
        self.broker_knows_at.is_none() && self.client_knows_at.is_none()
    }

    /// Cuts it: what is in flight is lost; each side learns at its time.
    pub(super) fn cut(&mut self, broker_at: u64, client_at: u64) {
        if !self.is_open() {
            return;
        }
        self.up = Pipe::new(0, 0);
        self.down = Pipe::new(0, 0);
        self.broker_knows_at = Some(broker_at);
        self.client_knows_at = Some(client_at);
    }
}
