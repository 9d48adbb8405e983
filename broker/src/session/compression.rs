//! Compression of frame bodies (protocol 3.6) on the broker's side: the
//! sending side of each stream.
//!
//! Memory is bounded by configuration (the budget is
//! `crate::shared::ContextBudget`): every zstd context the broker holds
//! (a decompressor per connection that was granted `ZSTD`, a compressor
//! per stream that sends compressed frames) takes one slot of
//! `compression.max_contexts`, and each context stays under
//! [`confab_compress::COMPRESSOR_MAX_BYTES`] or
//! [`confab_compress::DECOMPRESSOR_MAX_BYTES`]. A client that offers `ZSTD`
//! when no slot is free is not granted it; a stream whose compressor finds
//! no free slot sends its frames uncompressed (compressing is the sender's
//! choice, frame by frame) and tries again on the next batch.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::BytesMut;
use confab_compress::Compressor;

use crate::fanout::{Drained, Outbox, Source};
use crate::shared::{ContextBudget, ContextSlot};

/// How a connection that agreed on compression compresses what it sends.
#[derive(Debug, Clone)]
pub(crate) struct Compression {
    /// zstd level.
    pub(crate) level: i32,
    /// Bodies shorter than this are sent as they are.
    pub(crate) min_bytes: usize,
    /// No compressed body may be longer.
    pub(crate) max_frame_len: u32,
    /// Where the compressors' slots come from.
    pub(crate) budget: Arc<ContextBudget>,
}

/// The sending side of one stream: drains its share of the outbox into the
/// buffer the writer writes, compressing frame by frame when the
/// connection agreed on it. The zstd context is made for the first batch
/// that has a frame worth compressing, if the budget has a slot for it
/// (else that batch goes as it is), and lives as long as the stream: each
/// frame is compressed against the ones before it (protocol 3.6).
/// Compression runs here, per connection and outside the outbox's lock, on
/// frames that the fan-out encoded once for every subscriber.
pub(super) struct Deflate {
    settings: Option<Compression>,
    zstd: Option<(Compressor, ContextSlot)>,
    raw: BytesMut,
}

impl Deflate {
    pub(super) fn new(settings: Option<Compression>) -> Self {
        Self {
            settings,
            zstd: None,
            raw: BytesMut::new(),
        }
    }

    /// Moves frames of `source` into `buf` (see [`Outbox::drain`]),
    /// compressed when the connection agreed on it and a context is at
    /// hand.
    ///
    /// # Errors
    /// If zstd fails: the stream cannot go on.
    pub(super) fn drain(
        &mut self,
        outbox: &Outbox,
        source: Source,
        buf: &mut BytesMut,
        max_bytes: usize,
    ) -> std::io::Result<Drained> {
        let Some(c) = &self.settings else {
            return Ok(outbox.drain(source, buf, max_bytes));
        };
        self.raw.clear();
        let drained = outbox.drain(source, &mut self.raw, max_bytes);
        if drained != Drained::Frames {
            return Ok(drained);
        }
        // A context is made for the first batch worth compressing, if the
        // budget has a slot (else this batch goes as it is).
        if self.zstd.is_none()
            && confab_compress::any_worth_compressing(&self.raw, c.min_bytes, c.max_frame_len)
        {
            if let Some(slot) = c.budget.try_take() {
                let zstd = Compressor::new(c.level, c.min_bytes, c.max_frame_len)?;
                self.zstd = Some((zstd, slot));
            }
        }
        let Some((zstd, _)) = &mut self.zstd else {
            buf.extend_from_slice(&self.raw);
            return Ok(Drained::Frames);
        };
        zstd.push_frames(&self.raw, buf)?;
        let t = zstd.take_totals();
        if t.frames > 0 {
            let stats = outbox.stats();
            stats.compressed_in.fetch_add(t.plain, Ordering::Relaxed);
            stats
                .compressed_out
                .fetch_add(t.compressed, Ordering::Relaxed);
        }
        Ok(Drained::Frames)
    }
}
