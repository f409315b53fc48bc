//! Walking the batches of a segment file, shared by recovery, truncation and the offline tools.
//!
//! The scanner is fed the file in chunks (the whole file at once is one chunk) and checks each
//! batch's header, CRC and offset continuity. It never reads files itself, so the broker's async
//! recovery and the tools' synchronous `sluice log verify` run exactly the same checks.

use sluice_protocol::batch::{declared_len, validate_frame, BatchHeader};
use sluice_protocol::BATCH_HEADER_BYTES;

use super::index::SegmentIndex;

/// What stopped a [`Scanner::feed`] call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Feed {
    /// The chunk ended. Feed the file again from `position`, with at least `len_at_least` bytes
    /// if the file has them; if it does not, the batch at `position` is torn.
    NeedMore { position: u64, len_at_least: usize },
    /// A zeroed header: the rest of the file is padding, never written.
    Padding { position: u64 },
    /// The batch at `position` is damaged or out of sequence.
    Invalid { position: u64, reason: String },
}

/// Scans one segment from its start, building its index as it goes.
#[derive(Debug)]
pub struct Scanner {
    index: SegmentIndex,
}

impl Scanner {
    pub fn new(base_offset: u64, index_interval_bytes: u32) -> Scanner {
        Scanner {
            index: SegmentIndex::new(base_offset, index_interval_bytes),
        }
    }

    /// File position of the first byte not yet accepted: the end of the last good batch.
    pub fn position(&self) -> u64 {
        self.index.size_bytes()
    }

    pub fn into_index(self) -> SegmentIndex {
        self.index
    }

    /// Accepts every complete, valid batch in `chunk` (which starts at file position
    /// `chunk_position`, at or before [`Scanner::position`]) and calls `visit` for each with its
    /// position, header and bytes.
    pub fn feed(
        &mut self,
        chunk: &[u8],
        chunk_position: u64,
        mut visit: impl FnMut(u64, &BatchHeader, &[u8]),
    ) -> Feed {
        let start = self.position();
        assert!(chunk_position <= start, "chunks must not skip bytes");
        let mut at = (start - chunk_position) as usize;
        loop {
            let position = chunk_position + at as u64;
            let rest = chunk.get(at..).unwrap_or(&[]);
            if rest.len() < BATCH_HEADER_BYTES {
                if !rest.is_empty() && rest.iter().all(|&b| b == 0) {
                    return Feed::Padding { position };
                }
                return Feed::NeedMore {
                    position,
                    len_at_least: BATCH_HEADER_BYTES,
                };
            }
            if rest[..BATCH_HEADER_BYTES].iter().all(|&b| b == 0) {
                return Feed::Padding { position };
            }
            let declared = declared_len(rest).unwrap_or(0);
            if declared >= BATCH_HEADER_BYTES && declared > rest.len() {
                return Feed::NeedMore {
                    position,
                    len_at_least: declared,
                };
            }
            let header = match validate_frame(rest) {
                Ok(header) => header,
                Err(error) => {
                    return Feed::Invalid {
                        position,
                        reason: error.to_string(),
                    }
                }
            };
            if header.base_offset != self.index.next_offset() {
                return Feed::Invalid {
                    position,
                    reason: format!(
                        "batch base offset {} where {} was expected",
                        header.base_offset,
                        self.index.next_offset()
                    ),
                };
            }
            let len = header.batch_len as usize;
            visit(position, &header, &rest[..len]);
            self.index.observe(position, &header);
            at += len;
        }
    }
}

/// Outcome of scanning a whole in-memory segment file.
#[derive(Debug)]
pub struct ScanReport {
    pub index: SegmentIndex,
    /// Where and why the scan stopped before the end of the file, if it did.
    pub stop: Option<(u64, String)>,
    /// The file ends in zero padding after the last batch.
    pub padding_from: Option<u64>,
}

/// Scans a whole segment held in memory.
pub fn scan_all(
    file: &[u8],
    base_offset: u64,
    index_interval_bytes: u32,
    visit: impl FnMut(u64, &BatchHeader, &[u8]),
) -> ScanReport {
    let mut scanner = Scanner::new(base_offset, index_interval_bytes);
    let feed = scanner.feed(file, 0, visit);
    let (stop, padding_from) = match feed {
        Feed::NeedMore { position, .. } if position == file.len() as u64 => (None, None),
        Feed::NeedMore {
            position,
            len_at_least,
        } => (
            Some((
                position,
                format!(
                    "torn batch: needs {len_at_least} bytes, the file has {}",
                    file.len() as u64 - position
                ),
            )),
            None,
        ),
        Feed::Padding { position } => {
            let tail = &file[position as usize..];
            if tail.iter().all(|&b| b == 0) {
                (None, Some(position))
            } else {
                (
                    Some((position, "zeroed header followed by data".into())),
                    None,
                )
            }
        }
        Feed::Invalid { position, reason } => (Some((position, reason)), None),
    };
    ScanReport {
        index: scanner.into_index(),
        stop,
        padding_from,
    }
}

/// Segment files are named by their base offset: `00000000000000001234.log`.
pub fn segment_file_name(base_offset: u64, extension: &str) -> String {
    format!("{base_offset:020}.{extension}")
}

/// Parses a segment file name back into its base offset and extension.
pub fn parse_segment_file_name(name: &str) -> Option<(u64, &str)> {
    let (stem, extension) = name.split_once('.')?;
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((stem.parse().ok()?, extension))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_protocol::batch::stamp;
    use sluice_protocol::{BatchBuilder, BatchOptions};

    fn segment(base: u64, batches: usize) -> Vec<u8> {
        let mut out = Vec::new();
        let mut next = base;
        for i in 0..batches {
            let mut b = BatchBuilder::new(BatchOptions::default());
            for r in 0..=(i % 3) {
                b.push(
                    1000 + i as i64,
                    None,
                    Some(format!("v{i}-{r}").as_bytes()),
                    &[],
                );
            }
            let count = u64::from(b.record_count());
            let mut bytes = b.finish();
            stamp(&mut bytes, next, 0);
            next += count;
            out.extend_from_slice(&bytes);
        }
        out
    }

    #[test]
    fn scans_clean_segment_and_padding() {
        let mut file = segment(100, 20);
        let clean_len = file.len() as u64;
        let report = scan_all(&file, 100, 64, |_, _, _| {});
        assert_eq!(report.stop, None);
        assert_eq!(report.index.size_bytes(), clean_len);
        file.resize(file.len() + 4096, 0);
        let report = scan_all(&file, 100, 64, |_, _, _| {});
        assert_eq!(report.stop, None);
        assert_eq!(report.padding_from, Some(clean_len));
    }

    #[test]
    fn stops_at_torn_and_flipped_batches() {
        let file = segment(0, 10);
        let torn = &file[..file.len() - 3];
        let report = scan_all(torn, 0, 64, |_, _, _| {});
        assert!(report.stop.is_some());
        let mut flipped = file.clone();
        let at = file.len() / 2;
        flipped[at] ^= 0x10;
        let report = scan_all(&flipped, 0, 64, |_, _, _| {});
        let (position, _) = report.stop.unwrap();
        assert!(position <= at as u64);
        assert_eq!(report.index.size_bytes(), position);
    }

    #[test]
    fn offset_gaps_are_invalid() {
        let file = segment(0, 3);
        let report = scan_all(&file, 5, 64, |_, _, _| {});
        assert_eq!(report.stop.map(|s| s.0), Some(0));
    }

    #[test]
    fn segment_names_round_trip() {
        assert_eq!(segment_file_name(1234, "log"), "00000000000000001234.log");
        assert_eq!(
            parse_segment_file_name("00000000000000001234.log"),
            Some((1234, "log"))
        );
        assert_eq!(parse_segment_file_name("1234.log"), None);
    }
}
