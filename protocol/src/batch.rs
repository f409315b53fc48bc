//! The record batch: the unit a producer sends, the broker appends and a consumer receives.
//!
//! The same bytes travel on the wire, sit in segment files and go back to consumers; the broker
//! never re-encodes records. The layout is documented byte by byte in `docs/format.md`:
//!
//! ```text
//! pos  size field            written by
//!   0     8 base_offset       broker (stamped in place, not covered by the CRC)
//!   8     4 batch_len         producer: total bytes of the batch, header included
//!  12     4 leader_epoch      broker (stamped in place, not covered by the CRC)
//!  16     1 magic             producer: format version, FORMAT_VERSION
//!  17     3 reserved          zero
//!  20     4 crc               producer: CRC-32C (Castagnoli) of bytes [24, batch_len)
//!  24     2 attributes        bits 0-2 compression, bit 3 timestamp type, rest zero
//!  26     2 reserved          zero
//!  28     4 record_count      >= 1
//!  32     8 first_timestamp   ms since the Unix epoch
//!  40     8 max_timestamp     ms since the Unix epoch, >= every record's timestamp
//!  48     8 producer_id       -1 when not idempotent
//!  56     2 producer_epoch    -1 when not idempotent
//!  58     2 reserved          zero
//!  60     4 base_sequence     -1 when not idempotent
//!  64     . records
//! ```
//!
//! All integers are little-endian. Records use LEB128 varints (see [`crate::varint`]).

use crate::varint::{get_uvarint, get_varint, put_uvarint, put_varint, uvarint_len, varint_len};

/// Bytes of the fixed batch header.
pub const BATCH_HEADER_BYTES: usize = 64;
/// The format version this code writes and reads.
pub const FORMAT_VERSION: u8 = 1;
/// First byte covered by the CRC: everything the broker does not rewrite.
pub const CRC_START: usize = 24;

const POS_BASE_OFFSET: usize = 0;
const POS_BATCH_LEN: usize = 8;
const POS_LEADER_EPOCH: usize = 12;
const POS_MAGIC: usize = 16;
const POS_CRC: usize = 20;
const POS_ATTRIBUTES: usize = 24;
const POS_RECORD_COUNT: usize = 28;
const POS_FIRST_TIMESTAMP: usize = 32;
const POS_MAX_TIMESTAMP: usize = 40;
const POS_PRODUCER_ID: usize = 48;
const POS_PRODUCER_EPOCH: usize = 56;
const POS_BASE_SEQUENCE: usize = 60;

/// Attribute bits 0-2: the compression codec of the records section.
pub const ATTR_COMPRESSION_MASK: u16 = 0b0111;
/// Attribute bit 3: timestamps were set by the broker on append (log-append time).
pub const ATTR_TIMESTAMP_LOG_APPEND: u16 = 0b1000;
const ATTR_KNOWN: u16 = ATTR_COMPRESSION_MASK | ATTR_TIMESTAMP_LOG_APPEND;

/// Compression codecs named by the attribute bits. The broker never decompresses: it checks a
/// compressed batch's CRC and header only. Clients compress and decompress (`docs/format.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Lz4,
    Zstd,
}

impl Compression {
    /// The attribute bits naming this codec.
    pub fn bits(self) -> u16 {
        match self {
            Compression::None => 0,
            Compression::Lz4 => 1,
            Compression::Zstd => 2,
        }
    }

    fn from_bits(bits: u16) -> Option<Compression> {
        match bits & ATTR_COMPRESSION_MASK {
            0 => Some(Compression::None),
            1 => Some(Compression::Lz4),
            2 => Some(Compression::Zstd),
            _ => None,
        }
    }
}

/// Why a batch was refused. Every variant is a property of the bytes, never of the environment.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    #[error("batch is {len} bytes, shorter than the {BATCH_HEADER_BYTES}-byte header")]
    TooShort { len: usize },
    #[error("batch format version {found} is not supported (expected {FORMAT_VERSION})")]
    UnsupportedVersion { found: u8 },
    #[error("batch header says {declared} bytes but {available} are present")]
    LengthMismatch { declared: u64, available: usize },
    #[error("batch of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("batch CRC mismatch: header says {stored:#010x}, content hashes to {computed:#010x}")]
    CrcMismatch { stored: u32, computed: u32 },
    #[error("batch holds no records")]
    Empty,
    #[error("reserved header bytes or attribute bits are not zero")]
    ReservedNotZero,
    #[error("compression codec {bits} is unknown")]
    UnknownCompression { bits: u16 },
    #[error("max_timestamp {max} is before first_timestamp {first}")]
    TimestampOrder { first: i64, max: i64 },
    #[error("record {index} is malformed: {reason}")]
    MalformedRecord { index: u32, reason: &'static str },
    #[error("header declares {declared} records but the records section holds {found}")]
    RecordCountMismatch { declared: u32, found: u32 },
}

/// The decoded fixed header of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: u64,
    pub batch_len: u32,
    pub leader_epoch: u32,
    pub magic: u8,
    pub crc: u32,
    pub attributes: u16,
    pub record_count: u32,
    pub first_timestamp: i64,
    pub max_timestamp: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
}

fn u16_at(bytes: &[u8], pos: usize) -> u16 {
    u16::from_le_bytes([bytes[pos], bytes[pos + 1]])
}
fn u32_at(bytes: &[u8], pos: usize) -> u32 {
    u32::from_le_bytes([bytes[pos], bytes[pos + 1], bytes[pos + 2], bytes[pos + 3]])
}
fn u64_at(bytes: &[u8], pos: usize) -> u64 {
    let mut raw = [0u8; 8];
    raw.copy_from_slice(&bytes[pos..pos + 8]);
    u64::from_le_bytes(raw)
}

impl BatchHeader {
    /// Decodes the header at the front of `bytes` and checks what the header alone can tell:
    /// the version, the declared length and the reserved bytes. The records are not looked at.
    pub fn parse(bytes: &[u8]) -> Result<BatchHeader, BatchError> {
        if bytes.len() < BATCH_HEADER_BYTES {
            return Err(BatchError::TooShort { len: bytes.len() });
        }
        let magic = bytes[POS_MAGIC];
        if magic != FORMAT_VERSION {
            return Err(BatchError::UnsupportedVersion { found: magic });
        }
        let header = BatchHeader {
            base_offset: u64_at(bytes, POS_BASE_OFFSET),
            batch_len: u32_at(bytes, POS_BATCH_LEN),
            leader_epoch: u32_at(bytes, POS_LEADER_EPOCH),
            magic,
            crc: u32_at(bytes, POS_CRC),
            attributes: u16_at(bytes, POS_ATTRIBUTES),
            record_count: u32_at(bytes, POS_RECORD_COUNT),
            first_timestamp: u64_at(bytes, POS_FIRST_TIMESTAMP) as i64,
            max_timestamp: u64_at(bytes, POS_MAX_TIMESTAMP) as i64,
            producer_id: u64_at(bytes, POS_PRODUCER_ID) as i64,
            producer_epoch: u16_at(bytes, POS_PRODUCER_EPOCH) as i16,
            base_sequence: u32_at(bytes, POS_BASE_SEQUENCE) as i32,
        };
        if (header.batch_len as usize) < BATCH_HEADER_BYTES {
            return Err(BatchError::LengthMismatch {
                declared: u64::from(header.batch_len),
                available: bytes.len(),
            });
        }
        if bytes[17..20] != [0, 0, 0]
            || u16_at(bytes, 26) != 0
            || u16_at(bytes, 58) != 0
            || header.attributes & !ATTR_KNOWN != 0
        {
            return Err(BatchError::ReservedNotZero);
        }
        Ok(header)
    }

    /// Offset of the last record in the batch.
    pub fn last_offset(&self) -> u64 {
        self.base_offset + u64::from(self.record_count.max(1)) - 1
    }

    /// Offset the batch after this one starts at.
    pub fn next_offset(&self) -> u64 {
        self.base_offset + u64::from(self.record_count)
    }

    pub fn compression(&self) -> Option<Compression> {
        Compression::from_bits(self.attributes)
    }
}

/// CRC-32C of the part of a batch the broker never rewrites.
pub fn compute_crc(batch: &[u8]) -> u32 {
    crc32c::crc32c(&batch[CRC_START..])
}

/// Writes the broker-assigned fields in place. The CRC stays valid because it does not cover them.
pub fn stamp(batch: &mut [u8], base_offset: u64, leader_epoch: u32) {
    batch[POS_BASE_OFFSET..POS_BASE_OFFSET + 8].copy_from_slice(&base_offset.to_le_bytes());
    batch[POS_LEADER_EPOCH..POS_LEADER_EPOCH + 4].copy_from_slice(&leader_epoch.to_le_bytes());
}

/// Checks that `batch` is exactly one well-formed batch of at most `batch_bytes_max` bytes:
/// header, length, CRC and, for uncompressed batches, every record's framing. This is what the
/// broker runs on every produced batch before it touches a log.
pub fn validate(batch: &[u8], batch_bytes_max: usize) -> Result<BatchHeader, BatchError> {
    let header = validate_frame(batch)?;
    if batch.len() > batch_bytes_max {
        return Err(BatchError::TooLarge {
            len: batch.len(),
            max: batch_bytes_max,
        });
    }
    if header.batch_len as usize != batch.len() {
        return Err(BatchError::LengthMismatch {
            declared: u64::from(header.batch_len),
            available: batch.len(),
        });
    }
    if header.record_count == 0 {
        return Err(BatchError::Empty);
    }
    if header.max_timestamp < header.first_timestamp {
        return Err(BatchError::TimestampOrder {
            first: header.first_timestamp,
            max: header.max_timestamp,
        });
    }
    match header.compression() {
        Some(Compression::None) => {
            let mut found = 0u32;
            for record in RecordIter::new(&header, &batch[BATCH_HEADER_BYTES..]) {
                let record = record?;
                if record.offset_delta != found {
                    return Err(BatchError::MalformedRecord {
                        index: found,
                        reason: "offset deltas are not consecutive",
                    });
                }
                found += 1;
            }
            if found != header.record_count {
                return Err(BatchError::RecordCountMismatch {
                    declared: header.record_count,
                    found,
                });
            }
        }
        Some(_) => {} // Compressed records are checked by the CRC only.
        None => {
            return Err(BatchError::UnknownCompression {
                bits: header.attributes & ATTR_COMPRESSION_MASK,
            })
        }
    }
    Ok(header)
}

/// Checks the header and CRC of the batch at the front of `bytes` (which may hold more batches
/// after it). This is what recovery and the read path run: cheap, and enough to find torn or
/// flipped bytes.
pub fn validate_frame(bytes: &[u8]) -> Result<BatchHeader, BatchError> {
    let header = BatchHeader::parse(bytes)?;
    let len = header.batch_len as usize;
    if len > bytes.len() {
        return Err(BatchError::LengthMismatch {
            declared: u64::from(header.batch_len),
            available: bytes.len(),
        });
    }
    let computed = compute_crc(&bytes[..len]);
    if computed != header.crc {
        return Err(BatchError::CrcMismatch {
            stored: header.crc,
            computed,
        });
    }
    Ok(header)
}

/// One record, borrowed from the batch bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record<'a> {
    pub offset_delta: u32,
    pub timestamp: i64,
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    pub headers: Vec<(&'a [u8], Option<&'a [u8]>)>,
}

/// Iterates the records of an uncompressed batch. Yields an error (and then stops) at the first
/// malformed record; never panics on any input.
#[derive(Debug)]
pub struct RecordIter<'a> {
    rest: &'a [u8],
    first_timestamp: i64,
    index: u32,
    failed: bool,
}

impl<'a> RecordIter<'a> {
    /// `records` is the batch without its header.
    pub fn new(header: &BatchHeader, records: &'a [u8]) -> RecordIter<'a> {
        RecordIter {
            rest: records,
            first_timestamp: header.first_timestamp,
            index: 0,
            failed: false,
        }
    }

    fn malformed(&mut self, reason: &'static str) -> Option<Result<Record<'a>, BatchError>> {
        self.failed = true;
        Some(Err(BatchError::MalformedRecord {
            index: self.index,
            reason,
        }))
    }
}

/// Reads a length-prefixed (zig-zag, -1 = null) byte string from `body` at `*pos`.
fn take_nullable<'a>(body: &'a [u8], pos: &mut usize) -> Result<Option<&'a [u8]>, &'static str> {
    let (len, used) = get_varint(&body[*pos..]).ok_or("truncated length")?;
    *pos += used;
    if len == -1 {
        return Ok(None);
    }
    let len = usize::try_from(len).map_err(|_| "negative length")?;
    let end = pos.checked_add(len).ok_or("length overflows")?;
    let bytes = body.get(*pos..end).ok_or("length runs past the record")?;
    *pos = end;
    Ok(Some(bytes))
}

fn decode_record<'a>(body: &'a [u8], first_timestamp: i64) -> Result<Record<'a>, &'static str> {
    let mut pos = 0usize;
    let attributes = *body.first().ok_or("missing attributes")?;
    if attributes != 0 {
        return Err("record attributes are not zero");
    }
    pos += 1;
    let (timestamp_delta, used) = get_varint(&body[pos..]).ok_or("truncated timestamp")?;
    pos += used;
    let (offset_delta, used) = get_uvarint(&body[pos..]).ok_or("truncated offset delta")?;
    pos += used;
    let offset_delta = u32::try_from(offset_delta).map_err(|_| "offset delta too large")?;
    let key = take_nullable(body, &mut pos)?;
    let value = take_nullable(body, &mut pos)?;
    let (header_count, used) = get_uvarint(&body[pos..]).ok_or("truncated header count")?;
    pos += used;
    // Each header takes at least two bytes, which bounds the allocation by the input size.
    if header_count > (body.len() - pos) as u64 / 2 {
        return Err("header count exceeds the record");
    }
    let mut headers = Vec::with_capacity(header_count as usize);
    for _ in 0..header_count {
        let (key_len, used) = get_uvarint(&body[pos..]).ok_or("truncated header key")?;
        pos += used;
        let key_end = usize::try_from(key_len)
            .ok()
            .and_then(|len| pos.checked_add(len))
            .ok_or("header key too long")?;
        let key = body
            .get(pos..key_end)
            .ok_or("header key runs past the record")?;
        pos = key_end;
        let value = take_nullable(body, &mut pos)?;
        headers.push((key, value));
    }
    if pos != body.len() {
        return Err("trailing bytes after the record");
    }
    Ok(Record {
        offset_delta,
        timestamp: first_timestamp.wrapping_add(timestamp_delta),
        key,
        value,
        headers,
    })
}

impl<'a> Iterator for RecordIter<'a> {
    type Item = Result<Record<'a>, BatchError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.rest.is_empty() {
            return None;
        }
        let Some((len, used)) = get_uvarint(self.rest) else {
            return self.malformed("truncated record length");
        };
        let Some(end) = usize::try_from(len)
            .ok()
            .and_then(|len| used.checked_add(len))
        else {
            return self.malformed("record length overflows");
        };
        let Some(body) = self.rest.get(used..end) else {
            return self.malformed("record runs past the batch");
        };
        match decode_record(body, self.first_timestamp) {
            Ok(record) => {
                self.rest = &self.rest[end..];
                self.index += 1;
                Some(Ok(record))
            }
            Err(reason) => self.malformed(reason),
        }
    }
}

/// Producer-side options of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchOptions {
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
}

impl Default for BatchOptions {
    fn default() -> Self {
        BatchOptions {
            producer_id: -1,
            producer_epoch: -1,
            base_sequence: -1,
        }
    }
}

/// Builds one batch record by record. Records are encoded straight into the output buffer; the
/// header is filled and the CRC computed once, in [`BatchBuilder::finish`].
#[derive(Debug)]
pub struct BatchBuilder {
    buf: Vec<u8>,
    options: BatchOptions,
    record_count: u32,
    first_timestamp: i64,
    max_timestamp: i64,
}

impl BatchBuilder {
    pub fn new(options: BatchOptions) -> BatchBuilder {
        Self::with_capacity(options, 4096)
    }

    pub fn with_capacity(options: BatchOptions, capacity: usize) -> BatchBuilder {
        let mut buf = Vec::with_capacity(capacity.max(BATCH_HEADER_BYTES));
        buf.resize(BATCH_HEADER_BYTES, 0);
        BatchBuilder {
            buf,
            options,
            record_count: 0,
            first_timestamp: 0,
            max_timestamp: 0,
        }
    }

    /// Bytes the batch would have if finished now.
    pub fn len_bytes(&self) -> usize {
        self.buf.len()
    }

    pub fn record_count(&self) -> u32 {
        self.record_count
    }

    pub fn is_empty(&self) -> bool {
        self.record_count == 0
    }

    /// Bytes one record adds to a batch.
    pub fn record_len_bytes(
        timestamp_delta: i64,
        offset_delta: u32,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[(&[u8], Option<&[u8]>)],
    ) -> usize {
        let body = Self::record_body_len(timestamp_delta, offset_delta, key, value, headers);
        uvarint_len(body as u64) + body
    }

    fn nullable_len(bytes: Option<&[u8]>) -> usize {
        match bytes {
            None => varint_len(-1),
            Some(bytes) => varint_len(bytes.len() as i64) + bytes.len(),
        }
    }

    fn record_body_len(
        timestamp_delta: i64,
        offset_delta: u32,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[(&[u8], Option<&[u8]>)],
    ) -> usize {
        let mut len = 1
            + varint_len(timestamp_delta)
            + uvarint_len(u64::from(offset_delta))
            + Self::nullable_len(key)
            + Self::nullable_len(value)
            + uvarint_len(headers.len() as u64);
        for (hkey, hvalue) in headers {
            len += uvarint_len(hkey.len() as u64) + hkey.len() + Self::nullable_len(*hvalue);
        }
        len
    }

    fn put_nullable(&mut self, bytes: Option<&[u8]>) {
        match bytes {
            None => put_varint(&mut self.buf, -1),
            Some(bytes) => {
                put_varint(&mut self.buf, bytes.len() as i64);
                self.buf.extend_from_slice(bytes);
            }
        }
    }

    /// Appends one record.
    pub fn push(
        &mut self,
        timestamp: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[(&[u8], Option<&[u8]>)],
    ) {
        if self.record_count == 0 {
            self.first_timestamp = timestamp;
            self.max_timestamp = timestamp;
        }
        self.max_timestamp = self.max_timestamp.max(timestamp);
        let timestamp_delta = timestamp.wrapping_sub(self.first_timestamp);
        let offset_delta = self.record_count;
        let body = Self::record_body_len(timestamp_delta, offset_delta, key, value, headers);
        put_uvarint(&mut self.buf, body as u64);
        self.buf.push(0);
        put_varint(&mut self.buf, timestamp_delta);
        put_uvarint(&mut self.buf, u64::from(offset_delta));
        self.put_nullable(key);
        self.put_nullable(value);
        put_uvarint(&mut self.buf, headers.len() as u64);
        for (hkey, hvalue) in headers {
            put_uvarint(&mut self.buf, hkey.len() as u64);
            self.buf.extend_from_slice(hkey);
            self.put_nullable(*hvalue);
        }
        self.record_count += 1;
    }

    /// Replaces the producer fields the batch will be finished with (a producer assigns sequence
    /// numbers when a batch is first sent, after its records were added).
    pub fn set_options(&mut self, options: BatchOptions) {
        self.options = options;
    }

    /// Fills the header, computes the CRC and returns the batch bytes (base offset 0, epoch 0).
    pub fn finish(mut self) -> Vec<u8> {
        let len = u32::try_from(self.buf.len()).unwrap_or(u32::MAX);
        let buf = &mut self.buf;
        buf[POS_BATCH_LEN..POS_BATCH_LEN + 4].copy_from_slice(&len.to_le_bytes());
        buf[POS_MAGIC] = FORMAT_VERSION;
        buf[POS_RECORD_COUNT..POS_RECORD_COUNT + 4]
            .copy_from_slice(&self.record_count.to_le_bytes());
        buf[POS_FIRST_TIMESTAMP..POS_FIRST_TIMESTAMP + 8]
            .copy_from_slice(&self.first_timestamp.to_le_bytes());
        buf[POS_MAX_TIMESTAMP..POS_MAX_TIMESTAMP + 8]
            .copy_from_slice(&self.max_timestamp.to_le_bytes());
        buf[POS_PRODUCER_ID..POS_PRODUCER_ID + 8]
            .copy_from_slice(&self.options.producer_id.to_le_bytes());
        buf[POS_PRODUCER_EPOCH..POS_PRODUCER_EPOCH + 2]
            .copy_from_slice(&self.options.producer_epoch.to_le_bytes());
        buf[POS_BASE_SEQUENCE..POS_BASE_SEQUENCE + 4]
            .copy_from_slice(&self.options.base_sequence.to_le_bytes());
        let crc = compute_crc(buf);
        buf[POS_CRC..POS_CRC + 4].copy_from_slice(&crc.to_le_bytes());
        self.buf
    }
}

/// Sets the producer fields (id, epoch, base sequence) of a finished batch and recomputes its
/// CRC. Producers call this when a batch is first sent, so that sequence numbers follow the
/// order batches go out in.
pub fn set_producer(batch: &mut [u8], options: BatchOptions) {
    assert!(batch.len() >= BATCH_HEADER_BYTES, "not a finished batch");
    batch[POS_PRODUCER_ID..POS_PRODUCER_ID + 8].copy_from_slice(&options.producer_id.to_le_bytes());
    batch[POS_PRODUCER_EPOCH..POS_PRODUCER_EPOCH + 2]
        .copy_from_slice(&options.producer_epoch.to_le_bytes());
    batch[POS_BASE_SEQUENCE..POS_BASE_SEQUENCE + 4]
        .copy_from_slice(&options.base_sequence.to_le_bytes());
    let crc = compute_crc(batch);
    batch[POS_CRC..POS_CRC + 4].copy_from_slice(&crc.to_le_bytes());
}

/// Builds a compressed batch from a finished uncompressed one: the same header with the codec in
/// its attributes and `compressed_records` (the batch's records section, compressed) after it.
/// The CRC is recomputed. How each codec frames its bytes is in `docs/format.md`.
pub fn with_compressed_records(
    batch: &[u8],
    codec: Compression,
    compressed_records: &[u8],
) -> Vec<u8> {
    assert!(batch.len() >= BATCH_HEADER_BYTES, "not a finished batch");
    let mut out = Vec::with_capacity(BATCH_HEADER_BYTES + compressed_records.len());
    out.extend_from_slice(&batch[..BATCH_HEADER_BYTES]);
    out.extend_from_slice(compressed_records);
    let len = u32::try_from(out.len()).unwrap_or(u32::MAX);
    out[POS_BATCH_LEN..POS_BATCH_LEN + 4].copy_from_slice(&len.to_le_bytes());
    let attributes = (u16_at(&out, POS_ATTRIBUTES) & !ATTR_COMPRESSION_MASK) | codec.bits();
    out[POS_ATTRIBUTES..POS_ATTRIBUTES + 2].copy_from_slice(&attributes.to_le_bytes());
    let crc = compute_crc(&out);
    out[POS_CRC..POS_CRC + 4].copy_from_slice(&crc.to_le_bytes());
    out
}

/// Iterates the batches laid end to end in `bytes` (a fetch response, a segment's contents),
/// checking each frame. Stops after the first error.
#[derive(Debug)]
pub struct BatchIter<'a> {
    rest: &'a [u8],
    failed: bool,
}

impl<'a> BatchIter<'a> {
    pub fn new(bytes: &'a [u8]) -> BatchIter<'a> {
        BatchIter {
            rest: bytes,
            failed: false,
        }
    }
}

impl<'a> Iterator for BatchIter<'a> {
    /// The header and the whole batch's bytes.
    type Item = Result<(BatchHeader, &'a [u8]), BatchError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.rest.is_empty() {
            return None;
        }
        match validate_frame(self.rest) {
            Ok(header) => {
                let (batch, rest) = self.rest.split_at(header.batch_len as usize);
                self.rest = rest;
                Some(Ok((header, batch)))
            }
            Err(error) => {
                self.failed = true;
                Some(Err(error))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    type OwnedRecord = (
        i64,
        Option<Vec<u8>>,
        Option<Vec<u8>>,
        Vec<(Vec<u8>, Option<Vec<u8>>)>,
    );

    fn build(records: &[OwnedRecord], options: BatchOptions) -> Vec<u8> {
        let mut builder = BatchBuilder::new(options);
        for (ts, key, value, headers) in records {
            let headers: Vec<(&[u8], Option<&[u8]>)> = headers
                .iter()
                .map(|(k, v)| (k.as_slice(), v.as_deref()))
                .collect();
            builder.push(*ts, key.as_deref(), value.as_deref(), &headers);
        }
        builder.finish()
    }

    fn record_strategy() -> impl Strategy<Value = OwnedRecord> {
        (
            0i64..1 << 45,
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..40)),
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..300)),
            proptest::collection::vec(
                (
                    proptest::collection::vec(any::<u8>(), 0..10),
                    proptest::option::of(proptest::collection::vec(any::<u8>(), 0..10)),
                ),
                0..3,
            ),
        )
    }

    proptest! {
        #[test]
        fn batches_round_trip(records in proptest::collection::vec(record_strategy(), 1..20),
                              producer_id in -1i64..1000, base_offset: u64, epoch: u32) {
            let options = BatchOptions { producer_id, producer_epoch: 3, base_sequence: 7 };
            let mut batch = build(&records, options);
            stamp(&mut batch, base_offset, epoch);
            let header = validate(&batch, usize::MAX).unwrap();
            prop_assert_eq!(header.base_offset, base_offset);
            prop_assert_eq!(header.leader_epoch, epoch);
            prop_assert_eq!(header.record_count as usize, records.len());
            prop_assert_eq!(header.producer_id, producer_id);
            prop_assert_eq!(header.first_timestamp, records[0].0);
            prop_assert_eq!(header.max_timestamp, records.iter().map(|r| r.0).max().unwrap());
            let decoded: Vec<_> = RecordIter::new(&header, &batch[BATCH_HEADER_BYTES..])
                .collect::<Result<_, _>>().unwrap();
            for (i, (record, original)) in decoded.iter().zip(&records).enumerate() {
                prop_assert_eq!(record.offset_delta as usize, i);
                prop_assert_eq!(record.timestamp, original.0);
                prop_assert_eq!(record.key, original.1.as_deref());
                prop_assert_eq!(record.value, original.2.as_deref());
                prop_assert_eq!(record.headers.len(), original.3.len());
            }
        }

        #[test]
        fn any_flipped_byte_outside_stamped_fields_is_detected(
            records in proptest::collection::vec(record_strategy(), 1..5),
            position: prop::sample::Index, bit in 0u8..8,
        ) {
            let batch = build(&records, BatchOptions::default());
            let pos = position.index(batch.len());
            prop_assume!(!(0..8).contains(&pos) && !(12..16).contains(&pos));
            let mut damaged = batch.clone();
            damaged[pos] ^= 1 << bit;
            prop_assert!(validate(&damaged, usize::MAX).is_err());
        }

        #[test]
        fn validating_arbitrary_bytes_never_panics(bytes: Vec<u8>) {
            let _ = validate(&bytes, 1 << 20);
            for item in BatchIter::new(&bytes) { let _ = item; }
        }

        #[test]
        fn record_len_matches_encoding(record in record_strategy()) {
            let batch = build(std::slice::from_ref(&record), BatchOptions::default());
            let headers: Vec<(&[u8], Option<&[u8]>)> =
                record.3.iter().map(|(k, v)| (k.as_slice(), v.as_deref())).collect();
            let len = BatchBuilder::record_len_bytes(0, 0, record.1.as_deref(),
                                                     record.2.as_deref(), &headers);
            prop_assert_eq!(batch.len(), BATCH_HEADER_BYTES + len);
        }
    }

    #[test]
    fn typed_errors_for_bad_batches() {
        let batch = build(
            &[(5, None, Some(b"v".to_vec()), vec![])],
            BatchOptions::default(),
        );
        assert_eq!(
            validate(&batch[..10], 1 << 20),
            Err(BatchError::TooShort { len: 10 })
        );
        assert!(matches!(
            validate(&batch, 10),
            Err(BatchError::TooLarge { .. })
        ));
        let mut longer = batch.clone();
        longer.push(0);
        assert!(matches!(
            validate(&longer, 1 << 20),
            Err(BatchError::LengthMismatch { .. })
        ));
        let mut flipped = batch.clone();
        *flipped.last_mut().unwrap() ^= 0x40;
        assert!(matches!(
            validate(&flipped, 1 << 20),
            Err(BatchError::CrcMismatch { .. })
        ));
        let empty = BatchBuilder::new(BatchOptions::default()).finish();
        assert_eq!(validate(&empty, 1 << 20), Err(BatchError::Empty));
        let mut version = batch.clone();
        version[POS_MAGIC] = 9;
        assert_eq!(
            validate(&version, 1 << 20),
            Err(BatchError::UnsupportedVersion { found: 9 })
        );
    }

    #[test]
    fn batch_iter_walks_concatenated_batches_and_stops_at_damage() {
        let a = build(
            &[(1, None, Some(b"a".to_vec()), vec![])],
            BatchOptions::default(),
        );
        let b = build(
            &[(2, None, Some(b"bb".to_vec()), vec![])],
            BatchOptions::default(),
        );
        let mut joined = a.clone();
        joined.extend_from_slice(&b);
        let lens: Vec<usize> = BatchIter::new(&joined)
            .map(|r| r.unwrap().1.len())
            .collect();
        assert_eq!(lens, vec![a.len(), b.len()]);
        joined.truncate(a.len() + 10);
        let results: Vec<_> = BatchIter::new(&joined).collect();
        assert_eq!(results.len(), 2);
        assert!(results[1].is_err());
    }

    #[test]
    fn set_producer_restamps_and_keeps_the_batch_valid() {
        let mut batch = build(
            &[(1, Some(b"k".to_vec()), Some(b"v".to_vec()), vec![])],
            BatchOptions::default(),
        );
        let options = BatchOptions {
            producer_id: 42,
            producer_epoch: 3,
            base_sequence: 17,
        };
        set_producer(&mut batch, options);
        let header = validate(&batch, usize::MAX).unwrap();
        assert_eq!(header.producer_id, 42);
        assert_eq!(header.producer_epoch, 3);
        assert_eq!(header.base_sequence, 17);
    }

    #[test]
    fn compressed_batches_keep_their_header_and_pass_validation() {
        let records = [
            (1, None, Some(b"aaaa".to_vec()), vec![]),
            (2, Some(b"k".to_vec()), Some(b"bbbb".to_vec()), vec![]),
        ];
        let batch = build(&records, BatchOptions::default());
        let section = &batch[BATCH_HEADER_BYTES..];
        // Any bytes stand in for the codec's output: the broker checks the CRC, not the codec.
        let stand_in: Vec<u8> = section.iter().rev().copied().collect();
        let compressed = with_compressed_records(&batch, Compression::Zstd, &stand_in);
        let header = validate(&compressed, usize::MAX).unwrap();
        assert_eq!(header.compression(), Some(Compression::Zstd));
        assert_eq!(header.record_count, 2);
        assert_eq!(
            header.batch_len as usize,
            BATCH_HEADER_BYTES + stand_in.len()
        );
        assert_eq!(&compressed[BATCH_HEADER_BYTES..], &stand_in[..]);
        let mut damaged = compressed.clone();
        damaged[BATCH_HEADER_BYTES] ^= 1;
        assert!(matches!(
            validate(&damaged, usize::MAX),
            Err(BatchError::CrcMismatch { .. })
        ));
        // The uncompressed section still decodes against the compressed batch's header.
        let decoded: Vec<_> = RecordIter::new(&header, section)
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(decoded[1].key, Some(&b"k"[..]));
    }
}
