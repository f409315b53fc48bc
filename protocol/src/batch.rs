//! The record batch: Kafka's RecordBatch v2 (magic 2), byte for byte. It is the unit a producer
//! sends, the broker appends and a consumer receives, on every wire and on disk.
//!
//! The same bytes travel the whole way; the broker never re-encodes records and never
//! decompresses. The layout is documented byte by byte in `docs/format.md`:
//!
//! ```text
//! pos  size field                  written by
//!   0     8 base_offset            broker (stamped in place, not covered by the CRC)
//!   8     4 batch_length           producer: bytes after this field (total - 12)
//!  12     4 partition_leader_epoch broker (stamped in place, not covered by the CRC)
//!  16     1 magic                  producer: 2
//!  17     4 crc                    producer: CRC-32C (Castagnoli) of bytes [21, end)
//!  21     2 attributes             compression, timestamp type, transactional, control
//!  23     4 last_offset_delta      producer: offset of the last record minus base_offset
//!  27     8 base_timestamp         first record's timestamp, ms since the Unix epoch
//!  35     8 max_timestamp          largest timestamp in the batch
//!  43     8 producer_id            -1 when not idempotent
//!  51     2 producer_epoch         -1 when not idempotent
//!  53     4 base_sequence          -1 when not idempotent
//!  57     4 records_count
//!  61     . records (compressed as a whole when the attributes name a codec)
//! ```
//!
//! Header integers are big-endian. Records use zig-zag varints (see [`crate::varint`]).

use crate::varint::{get_varint, get_varint32, put_varint, varint_len};

/// Bytes of the fixed batch header, up to and including `records_count`.
pub const BATCH_HEADER_BYTES: usize = 61;
/// The `magic` byte this code writes and reads: Kafka's RecordBatch v2.
pub const FORMAT_VERSION: u8 = 2;
/// First byte covered by the CRC: everything the broker does not rewrite.
pub const CRC_START: usize = 21;
/// Bytes before the part `batch_length` counts: the base offset and the length field itself
/// (Kafka's `LOG_OVERHEAD`).
pub const LOG_OVERHEAD: usize = 12;

const POS_BASE_OFFSET: usize = 0;
const POS_BATCH_LENGTH: usize = 8;
const POS_LEADER_EPOCH: usize = 12;
const POS_MAGIC: usize = 16;
const POS_CRC: usize = 17;
const POS_ATTRIBUTES: usize = 21;
const POS_LAST_OFFSET_DELTA: usize = 23;
const POS_FIRST_TIMESTAMP: usize = 27;
const POS_MAX_TIMESTAMP: usize = 35;
const POS_PRODUCER_ID: usize = 43;
const POS_PRODUCER_EPOCH: usize = 51;
const POS_BASE_SEQUENCE: usize = 53;
const POS_RECORD_COUNT: usize = 57;

/// Attribute bits 0-2: the compression codec of the records section.
pub const ATTR_COMPRESSION_MASK: u16 = 0b0000_0111;
/// Attribute bit 3: timestamps were set by the broker on append (log-append time).
pub const ATTR_TIMESTAMP_LOG_APPEND: u16 = 0b0000_1000;
/// Attribute bit 4: the batch belongs to a transaction.
pub const ATTR_TRANSACTIONAL: u16 = 0b0001_0000;
/// Attribute bit 5: a control batch (a transaction marker), not application records.
pub const ATTR_CONTROL: u16 = 0b0010_0000;
/// Attribute bit 6: `base_timestamp` holds the delete horizon of the batch's tombstones, set by
/// compaction (Kafka's KIP-534); record timestamps stay `base_timestamp` + their delta.
pub const ATTR_DELETE_HORIZON: u16 = 0b0100_0000;

/// Compression codecs named by the attribute bits, with Kafka's numbers. The broker never
/// decompresses: it checks a compressed batch's CRC and header only and stores all five as sent.
/// How each codec frames its bytes is in `docs/format.md`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Snappy,
    /// The LZ4 frame format (independent blocks), as Kafka's clients write it.
    Lz4,
    Zstd,
}

impl Compression {
    /// The attribute bits naming this codec.
    pub fn bits(self) -> u16 {
        match self {
            Compression::None => 0,
            Compression::Gzip => 1,
            Compression::Snappy => 2,
            Compression::Lz4 => 3,
            Compression::Zstd => 4,
        }
    }

    fn from_bits(bits: u16) -> Option<Compression> {
        match bits & ATTR_COMPRESSION_MASK {
            0 => Some(Compression::None),
            1 => Some(Compression::Gzip),
            2 => Some(Compression::Snappy),
            3 => Some(Compression::Lz4),
            4 => Some(Compression::Zstd),
            _ => None,
        }
    }
}

/// Why a batch was refused. Every variant is a property of the bytes, never of the environment.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    #[error("batch is {len} bytes, shorter than the {BATCH_HEADER_BYTES}-byte header")]
    TooShort { len: usize },
    #[error("batch magic {found} is not supported (expected {FORMAT_VERSION}, RecordBatch v2)")]
    UnsupportedVersion { found: u8 },
    #[error("batch header says {declared} bytes but {available} are present")]
    LengthMismatch { declared: u64, available: usize },
    #[error("batch of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("batch CRC mismatch: header says {stored:#010x}, content hashes to {computed:#010x}")]
    CrcMismatch { stored: u32, computed: u32 },
    #[error("batch holds no records")]
    Empty,
    #[error("batch header is invalid: {reason}")]
    InvalidHeader { reason: &'static str },
    #[error("compression codec {bits} is unknown")]
    UnknownCompression { bits: u16 },
    #[error("record {index} is malformed: {reason}")]
    MalformedRecord { index: u32, reason: &'static str },
    #[error("header declares {declared} records but the records section holds {found}")]
    RecordCountMismatch { declared: u32, found: u32 },
}

/// The decoded fixed header of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: u64,
    /// Total bytes of the batch, header included: Kafka's `batch_length` + [`LOG_OVERHEAD`].
    pub batch_len: u32,
    /// The partition leader epoch the broker stamped (a producer sends -1, read here as
    /// `u32::MAX`).
    pub leader_epoch: u32,
    pub magic: u8,
    pub crc: u32,
    pub attributes: u16,
    /// Offset of the last record minus `base_offset`. Equal to `record_count - 1` as produced;
    /// larger once compaction has removed records.
    pub last_offset_delta: u32,
    pub record_count: u32,
    /// Kafka's `base_timestamp`: the first record's timestamp.
    pub first_timestamp: i64,
    pub max_timestamp: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
}

fn u16_at(bytes: &[u8], pos: usize) -> u16 {
    u16::from_be_bytes([bytes[pos], bytes[pos + 1]])
}
fn u32_at(bytes: &[u8], pos: usize) -> u32 {
    u32::from_be_bytes([bytes[pos], bytes[pos + 1], bytes[pos + 2], bytes[pos + 3]])
}
fn u64_at(bytes: &[u8], pos: usize) -> u64 {
    let mut raw = [0u8; 8];
    raw.copy_from_slice(&bytes[pos..pos + 8]);
    u64::from_be_bytes(raw)
}
fn put_at(bytes: &mut [u8], pos: usize, value: &[u8]) {
    bytes[pos..pos + value.len()].copy_from_slice(value);
}

/// The total size (header included) the batch at the front of `bytes` declares, if its length
/// field is there and not negative. Says nothing about whether the batch is valid.
pub fn declared_len(bytes: &[u8]) -> Option<usize> {
    if bytes.len() < POS_BATCH_LENGTH + 4 {
        return None;
    }
    let length = i32::try_from(u32_at(bytes, POS_BATCH_LENGTH)).ok()?;
    Some(length as usize + LOG_OVERHEAD)
}

impl BatchHeader {
    /// Decodes the header at the front of `bytes` and checks what the header alone can tell:
    /// the magic, the declared length and the counts. The records are not looked at.
    pub fn parse(bytes: &[u8]) -> Result<BatchHeader, BatchError> {
        if bytes.len() < BATCH_HEADER_BYTES {
            return Err(BatchError::TooShort { len: bytes.len() });
        }
        let magic = bytes[POS_MAGIC];
        if magic != FORMAT_VERSION {
            return Err(BatchError::UnsupportedVersion { found: magic });
        }
        let declared = declared_len(bytes).ok_or(BatchError::InvalidHeader {
            reason: "negative batch length",
        })?;
        if declared < BATCH_HEADER_BYTES || declared > u32::MAX as usize {
            return Err(BatchError::LengthMismatch {
                declared: declared as u64,
                available: bytes.len(),
            });
        }
        let last_offset_delta = u32_at(bytes, POS_LAST_OFFSET_DELTA);
        let record_count = u32_at(bytes, POS_RECORD_COUNT);
        if i32::try_from(last_offset_delta).is_err() {
            return Err(BatchError::InvalidHeader {
                reason: "negative last offset delta",
            });
        }
        if i32::try_from(record_count).is_err() {
            return Err(BatchError::InvalidHeader {
                reason: "negative record count",
            });
        }
        if record_count > 0 && last_offset_delta < record_count - 1 {
            return Err(BatchError::InvalidHeader {
                reason: "last offset delta is smaller than the record count allows",
            });
        }
        Ok(BatchHeader {
            base_offset: u64_at(bytes, POS_BASE_OFFSET),
            batch_len: declared as u32,
            leader_epoch: u32_at(bytes, POS_LEADER_EPOCH),
            magic,
            crc: u32_at(bytes, POS_CRC),
            attributes: u16_at(bytes, POS_ATTRIBUTES),
            last_offset_delta,
            record_count,
            first_timestamp: u64_at(bytes, POS_FIRST_TIMESTAMP) as i64,
            max_timestamp: u64_at(bytes, POS_MAX_TIMESTAMP) as i64,
            producer_id: u64_at(bytes, POS_PRODUCER_ID) as i64,
            producer_epoch: u16_at(bytes, POS_PRODUCER_EPOCH) as i16,
            base_sequence: u32_at(bytes, POS_BASE_SEQUENCE) as i32,
        })
    }

    /// Offset of the last record in the batch.
    pub fn last_offset(&self) -> u64 {
        self.base_offset + u64::from(self.last_offset_delta)
    }

    /// Offset the batch after this one starts at.
    pub fn next_offset(&self) -> u64 {
        self.last_offset() + 1
    }

    pub fn compression(&self) -> Option<Compression> {
        Compression::from_bits(self.attributes)
    }

    /// Part of a transaction (attribute bit 4).
    pub fn is_transactional(&self) -> bool {
        self.attributes & ATTR_TRANSACTIONAL != 0
    }

    /// A control batch (attribute bit 5): a transaction marker, never handed to applications.
    pub fn is_control(&self) -> bool {
        self.attributes & ATTR_CONTROL != 0
    }
}

/// CRC-32C of the part of a batch the broker never rewrites.
pub fn compute_crc(batch: &[u8]) -> u32 {
    crc32c::crc32c(&batch[CRC_START..])
}

/// Writes the broker-assigned fields in place. The CRC stays valid because it does not cover them.
pub fn stamp(batch: &mut [u8], base_offset: u64, leader_epoch: u32) {
    put_at(batch, POS_BASE_OFFSET, &base_offset.to_be_bytes());
    put_at(batch, POS_LEADER_EPOCH, &leader_epoch.to_be_bytes());
}

/// Checks that `batch` is exactly one well-formed batch of at most `batch_bytes_max` bytes, as a
/// producer must send it: header, length, CRC, at least one record, `last_offset_delta` equal to
/// the record count less one, a known codec and, for uncompressed batches, every record's
/// framing with consecutive offset deltas. This is what the broker runs on every produced batch
/// before it touches a log, so a batch it stores is one every Kafka decoder accepts.
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
    if header.last_offset_delta != header.record_count - 1 {
        return Err(BatchError::InvalidHeader {
            reason: "last offset delta is not the record count less one",
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

/// Iterates the records of an uncompressed records section. Yields an error (and then stops) at
/// the first malformed record; never panics on any input.
#[derive(Debug)]
pub struct RecordIter<'a> {
    rest: &'a [u8],
    first_timestamp: i64,
    index: u32,
    failed: bool,
}

impl<'a> RecordIter<'a> {
    /// `records` is the records section: the batch after its header, decompressed if it was
    /// compressed.
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

/// Reads a 32-bit zig-zag varint field from `body` at `*pos`.
fn take_varint32(body: &[u8], pos: &mut usize, what: &'static str) -> Result<i32, &'static str> {
    let (value, used) = get_varint32(&body[*pos..]).ok_or(what)?;
    *pos += used;
    Ok(value)
}

/// Reads `len` bytes from `body` at `*pos`.
fn take_bytes<'a>(body: &'a [u8], pos: &mut usize, len: i32) -> Result<&'a [u8], &'static str> {
    let len = usize::try_from(len).map_err(|_| "negative length")?;
    let end = pos.checked_add(len).ok_or("length overflows")?;
    let bytes = body.get(*pos..end).ok_or("length runs past the record")?;
    *pos = end;
    Ok(bytes)
}

/// Reads a length-prefixed (zig-zag varint, -1 = null) byte string from `body` at `*pos`.
fn take_nullable<'a>(body: &'a [u8], pos: &mut usize) -> Result<Option<&'a [u8]>, &'static str> {
    let len = take_varint32(body, pos, "truncated length")?;
    if len == -1 {
        return Ok(None);
    }
    take_bytes(body, pos, len).map(Some)
}

fn decode_record(body: &[u8], first_timestamp: i64) -> Result<Record<'_>, &'static str> {
    // Record attributes (one byte): unused by Kafka; kept as sent.
    let mut pos = 1usize;
    if body.is_empty() {
        return Err("missing attributes");
    }
    let (timestamp_delta, used) = get_varint(&body[pos..]).ok_or("truncated timestamp")?;
    pos += used;
    let offset_delta = take_varint32(body, &mut pos, "truncated offset delta")?;
    let offset_delta = u32::try_from(offset_delta).map_err(|_| "negative offset delta")?;
    let key = take_nullable(body, &mut pos)?;
    let value = take_nullable(body, &mut pos)?;
    let header_count = take_varint32(body, &mut pos, "truncated header count")?;
    let header_count = usize::try_from(header_count).map_err(|_| "negative header count")?;
    // Each header takes at least two bytes, which bounds the allocation by the input size.
    if header_count > (body.len() - pos) / 2 {
        return Err("header count exceeds the record");
    }
    let mut headers = Vec::with_capacity(header_count);
    for _ in 0..header_count {
        let key_len = take_varint32(body, &mut pos, "truncated header key")?;
        if key_len < 0 {
            return Err("header key is null");
        }
        let key = take_bytes(body, &mut pos, key_len)?;
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
        let Some((len, used)) = get_varint32(self.rest) else {
            return self.malformed("truncated record length");
        };
        let Some(end) = usize::try_from(len)
            .ok()
            .and_then(|len| used.checked_add(len))
        else {
            return self.malformed("negative record length");
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
        varint_len(body as i64) + body
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
            + varint_len(i64::from(offset_delta))
            + Self::nullable_len(key)
            + Self::nullable_len(value)
            + varint_len(headers.len() as i64);
        for (hkey, hvalue) in headers {
            len += varint_len(hkey.len() as i64) + hkey.len() + Self::nullable_len(*hvalue);
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
        put_varint(&mut self.buf, body as i64);
        self.buf.push(0);
        put_varint(&mut self.buf, timestamp_delta);
        put_varint(&mut self.buf, i64::from(offset_delta));
        self.put_nullable(key);
        self.put_nullable(value);
        put_varint(&mut self.buf, headers.len() as i64);
        for (hkey, hvalue) in headers {
            put_varint(&mut self.buf, hkey.len() as i64);
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

    /// Fills the header, computes the CRC and returns the batch bytes (base offset 0, partition
    /// leader epoch -1, as Kafka's producers send them).
    pub fn finish(mut self) -> Vec<u8> {
        let total = self.buf.len();
        let buf = &mut self.buf;
        let length = u32::try_from(total - LOG_OVERHEAD).unwrap_or(u32::MAX);
        put_at(buf, POS_BATCH_LENGTH, &length.to_be_bytes());
        put_at(buf, POS_LEADER_EPOCH, &(-1i32).to_be_bytes());
        buf[POS_MAGIC] = FORMAT_VERSION;
        put_at(buf, POS_ATTRIBUTES, &0u16.to_be_bytes());
        let last_offset_delta = self.record_count.saturating_sub(1);
        put_at(buf, POS_LAST_OFFSET_DELTA, &last_offset_delta.to_be_bytes());
        put_at(
            buf,
            POS_FIRST_TIMESTAMP,
            &self.first_timestamp.to_be_bytes(),
        );
        put_at(buf, POS_MAX_TIMESTAMP, &self.max_timestamp.to_be_bytes());
        put_at(buf, POS_RECORD_COUNT, &self.record_count.to_be_bytes());
        write_producer(buf, self.options);
        self.buf
    }
}

/// Writes the producer fields and the CRC.
fn write_producer(batch: &mut [u8], options: BatchOptions) {
    put_at(batch, POS_PRODUCER_ID, &options.producer_id.to_be_bytes());
    put_at(
        batch,
        POS_PRODUCER_EPOCH,
        &options.producer_epoch.to_be_bytes(),
    );
    put_at(
        batch,
        POS_BASE_SEQUENCE,
        &options.base_sequence.to_be_bytes(),
    );
    update_crc(batch);
}

/// Recomputes and writes the CRC of a finished batch, for tools and tests that change covered
/// bytes in place (a benchmark's timestamp inside a value, a test's deliberate damage).
pub fn update_crc(batch: &mut [u8]) {
    assert!(batch.len() >= BATCH_HEADER_BYTES, "not a finished batch");
    let crc = compute_crc(batch);
    put_at(batch, POS_CRC, &crc.to_be_bytes());
}

/// Sets the producer fields (id, epoch, base sequence) of a finished batch and recomputes its
/// CRC. Producers call this when a batch is first sent, so that sequence numbers follow the
/// order batches go out in.
pub fn set_producer(batch: &mut [u8], options: BatchOptions) {
    assert!(batch.len() >= BATCH_HEADER_BYTES, "not a finished batch");
    write_producer(batch, options);
}

/// Builds a compressed batch from a finished uncompressed one: the same header with the codec in
/// its attributes and `compressed_records` (the batch's records section, compressed) after it.
/// The length and CRC are recomputed. How each codec frames its bytes is in `docs/format.md`.
pub fn with_compressed_records(
    batch: &[u8],
    codec: Compression,
    compressed_records: &[u8],
) -> Vec<u8> {
    assert!(batch.len() >= BATCH_HEADER_BYTES, "not a finished batch");
    let mut out = Vec::with_capacity(BATCH_HEADER_BYTES + compressed_records.len());
    out.extend_from_slice(&batch[..BATCH_HEADER_BYTES]);
    out.extend_from_slice(compressed_records);
    let length = u32::try_from(out.len() - LOG_OVERHEAD).unwrap_or(u32::MAX);
    put_at(&mut out, POS_BATCH_LENGTH, &length.to_be_bytes());
    let attributes = (u16_at(&out, POS_ATTRIBUTES) & !ATTR_COMPRESSION_MASK) | codec.bits();
    put_at(&mut out, POS_ATTRIBUTES, &attributes.to_be_bytes());
    let crc = compute_crc(&out);
    put_at(&mut out, POS_CRC, &crc.to_be_bytes());
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
    fn header_fields_sit_where_kafka_puts_them() {
        let mut batch = build(
            &[
                (
                    1_700_000_000_000,
                    Some(b"k".to_vec()),
                    Some(b"hi".to_vec()),
                    vec![],
                ),
                (1_700_000_000_005, None, None, vec![]),
            ],
            BatchOptions {
                producer_id: 0x0102_0304_0506_0708,
                producer_epoch: 0x0a0b,
                base_sequence: 0x0c0d_0e0f,
            },
        );
        stamp(&mut batch, 42, 3);
        assert_eq!(&batch[0..8], &42u64.to_be_bytes());
        assert_eq!(&batch[8..12], &((batch.len() - 12) as u32).to_be_bytes());
        assert_eq!(&batch[12..16], &3u32.to_be_bytes());
        assert_eq!(batch[16], 2);
        assert_eq!(&batch[17..21], &crc32c::crc32c(&batch[21..]).to_be_bytes());
        assert_eq!(&batch[21..23], &[0, 0]);
        assert_eq!(&batch[23..27], &1u32.to_be_bytes()); // last offset delta
        assert_eq!(&batch[27..35], &1_700_000_000_000i64.to_be_bytes());
        assert_eq!(&batch[35..43], &1_700_000_000_005i64.to_be_bytes());
        assert_eq!(&batch[43..51], &0x0102_0304_0506_0708i64.to_be_bytes());
        assert_eq!(&batch[51..53], &0x0a0bi16.to_be_bytes());
        assert_eq!(&batch[53..57], &0x0c0d_0e0fi32.to_be_bytes());
        assert_eq!(&batch[57..61], &2u32.to_be_bytes());
        // First record: length 9 (zig-zag 18), attributes 0, timestamp delta 0, offset delta 0,
        // key length 1 (2) "k", value length 2 (4) "hi", no headers; then the second record's
        // length 6 (12).
        assert_eq!(
            &batch[61..72],
            &[18, 0, 0, 0, 2, b'k', 4, b'h', b'i', 0, 12]
        );
        let header = validate(&batch, usize::MAX).unwrap();
        assert_eq!((header.last_offset(), header.next_offset()), (43, 44));
    }

    /// The worked example of `docs/format.md`: these bytes came from kafka-python's encoder
    /// (with its partition leader epoch replaced by the stamp, which the CRC does not cover).
    #[test]
    fn builds_exactly_the_bytes_a_kafka_client_builds() {
        let kafka: [u8; 75] = [
            0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x2a, 0x00, 0x00, 0x00, 0x3f, 0x00, 0x00,
            0x00, 0x03, 0x02, 0x3a, 0xc2, 0xe8, 0x2b, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
            0x00, 0x01, 0x8b, 0xcf, 0xe5, 0x68, 0x00, 0x00, 0x00, 0x01, 0x8b, 0xcf, 0xe5, 0x68,
            0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            0xff, 0x00, 0x00, 0x00, 0x01, 0x1a, 0x00, 0x00, 0x00, 0x02, 0x6b, 0x04, 0x68, 0x69,
            0x02, 0x02, 0x68, 0x02, 0x76,
        ];
        let mut builder = BatchBuilder::new(BatchOptions::default());
        builder.push(
            1_700_000_000_000,
            Some(b"k"),
            Some(b"hi"),
            &[(b"h", Some(b"v"))],
        );
        let mut batch = builder.finish();
        stamp(&mut batch, 42, 3);
        assert_eq!(batch, kafka);
    }

    #[test]
    fn producers_send_epoch_minus_one_and_offset_zero() {
        let batch = build(
            &[(5, None, Some(b"v".to_vec()), vec![])],
            BatchOptions::default(),
        );
        assert_eq!(&batch[0..8], &[0; 8]);
        assert_eq!(&batch[12..16], &[0xff; 4]);
    }

    #[test]
    fn header_and_count_inconsistencies_are_refused() {
        let batch = build(
            &[
                (5, None, Some(b"a".to_vec()), vec![]),
                (6, None, Some(b"b".to_vec()), vec![]),
            ],
            BatchOptions::default(),
        );
        let rehash = |mut bytes: Vec<u8>| {
            let crc = compute_crc(&bytes);
            bytes[POS_CRC..POS_CRC + 4].copy_from_slice(&crc.to_be_bytes());
            bytes
        };
        // A producer's last offset delta must be the count less one.
        let mut gap = batch.clone();
        gap[POS_LAST_OFFSET_DELTA..POS_LAST_OFFSET_DELTA + 4].copy_from_slice(&5u32.to_be_bytes());
        let gap = rehash(gap);
        assert!(matches!(
            validate(&gap, usize::MAX),
            Err(BatchError::InvalidHeader { .. })
        ));
        // ... but a stored batch may have one larger (compaction), and its offsets span it.
        assert_eq!(validate_frame(&gap).unwrap().next_offset(), 6);
        let mut negative = batch.clone();
        negative[POS_RECORD_COUNT..POS_RECORD_COUNT + 4].copy_from_slice(&(-1i32).to_be_bytes());
        assert!(matches!(
            validate(&rehash(negative), usize::MAX),
            Err(BatchError::InvalidHeader { .. })
        ));
        let mut codec = batch.clone();
        codec[POS_ATTRIBUTES + 1] = 5;
        assert_eq!(
            validate(&rehash(codec), usize::MAX),
            Err(BatchError::UnknownCompression { bits: 5 })
        );
        let mut count = batch.clone();
        count[POS_RECORD_COUNT..POS_RECORD_COUNT + 4].copy_from_slice(&3u32.to_be_bytes());
        count[POS_LAST_OFFSET_DELTA..POS_LAST_OFFSET_DELTA + 4]
            .copy_from_slice(&2u32.to_be_bytes());
        assert_eq!(
            validate(&rehash(count), usize::MAX),
            Err(BatchError::RecordCountMismatch {
                declared: 3,
                found: 2
            })
        );
    }

    #[test]
    fn control_and_transactional_bits_are_parsed_and_kept() {
        let mut batch = build(
            &[(5, None, Some(b"v".to_vec()), vec![])],
            BatchOptions::default(),
        );
        let attributes = ATTR_TRANSACTIONAL | ATTR_CONTROL;
        batch[POS_ATTRIBUTES..POS_ATTRIBUTES + 2].copy_from_slice(&attributes.to_be_bytes());
        let crc = compute_crc(&batch);
        batch[POS_CRC..POS_CRC + 4].copy_from_slice(&crc.to_be_bytes());
        let header = validate(&batch, usize::MAX).unwrap();
        assert!(header.is_transactional() && header.is_control());
        assert_eq!(header.compression(), Some(Compression::None));
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
