//! The clean-shutdown marker: what lets a log that was closed cleanly reopen without scanning
//! its active segment.
//!
//! `PartitionLog::close` flushes, truncates the active segment to its logical end, syncs it and
//! then writes `clean-shutdown` in the partition directory (not synced: losing it costs only a
//! scan): the active segment's base offset and
//! size and its index in the `.index`/`.timeindex` encodings, with a CRC-32C over it all:
//!
//! ```text
//! "SLCS" | u32 version | u64 base offset | u64 size | u32 n | n bytes offset index
//!        | u32 m | m bytes time index | u32 CRC-32C of everything before
//! ```
//!
//! (little-endian). `PartitionLog::open` reads it and deletes it (durably, before the log takes
//! a write): a marker that is whole, names the last segment and matches its size and its index
//! trailer gives the active segment's index without reading the log; anything else, or no
//! marker (a crash), means the active segment is scanned. A stale marker can never be trusted:
//! it is gone before anything changes the segment it describes.

use super::index::SegmentIndex;

pub const MARKER_FILE: &str = "clean-shutdown";
const MAGIC: &[u8; 4] = b"SLCS";
const VERSION: u32 = 1;

/// Encodes the marker for an active segment closed at `index.size_bytes()`.
pub fn encode(index: &SegmentIndex) -> Vec<u8> {
    let offsets = index.encode_offset_index();
    let times = index.encode_time_index();
    let mut out = Vec::with_capacity(36 + offsets.len() + times.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&index.base_offset().to_le_bytes());
    out.extend_from_slice(&index.size_bytes().to_le_bytes());
    out.extend_from_slice(&(offsets.len() as u32).to_le_bytes());
    out.extend_from_slice(&offsets);
    out.extend_from_slice(&(times.len() as u32).to_le_bytes());
    out.extend_from_slice(&times);
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// The active segment's index from a marker, if the marker is whole and describes the segment
/// at `base_offset` with a file of `file_size` bytes; else why not.
pub fn decode(bytes: &[u8], base_offset: u64, file_size: u64) -> Result<SegmentIndex, String> {
    let take = |at: &mut usize, n: usize| -> Result<&[u8], String> {
        let slice = bytes
            .get(*at..*at + n)
            .ok_or_else(|| "the marker is cut short".to_string())?;
        *at += n;
        Ok(slice)
    };
    let u32_of = |b: &[u8]| u32::from_le_bytes(b.try_into().unwrap_or([0; 4]));
    let u64_of = |b: &[u8]| u64::from_le_bytes(b.try_into().unwrap_or([0; 8]));
    if bytes.len() < 4 {
        return Err("the marker is cut short".into());
    }
    let body = bytes.len() - 4;
    if crc32c::crc32c(&bytes[..body]) != u32_of(&bytes[body..]) {
        return Err("the marker's CRC does not match".into());
    }
    let mut at = 0;
    if take(&mut at, 4)? != MAGIC || u32_of(take(&mut at, 4)?) != VERSION {
        return Err("not a marker of this version".into());
    }
    let base = u64_of(take(&mut at, 8)?);
    let size = u64_of(take(&mut at, 8)?);
    let n = u32_of(take(&mut at, 4)?) as usize;
    let offsets = take(&mut at, n)?;
    let m = u32_of(take(&mut at, 4)?) as usize;
    let times = take(&mut at, m)?;
    if at != body {
        return Err("the marker has trailing bytes".into());
    }
    if base != base_offset {
        return Err(format!(
            "the marker describes segment {base}, the log ends with {base_offset}"
        ));
    }
    if size != file_size {
        return Err(format!(
            "the marker says {size} bytes, the segment has {file_size}"
        ));
    }
    let index = SegmentIndex::decode(base, offsets, times)?;
    if index.size_bytes() != size {
        return Err("the marker's index disagrees with its size".into());
    }
    Ok(index)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_protocol::{BatchBuilder, BatchHeader, BatchOptions};

    fn index_of(batches: u64) -> SegmentIndex {
        let mut index = SegmentIndex::new(100, 256);
        for i in 0..batches {
            let mut builder = BatchBuilder::new(BatchOptions::default());
            builder.push(i as i64, Some(b"k"), Some(&[7u8; 100]), &[]);
            let mut batch = builder.finish();
            sluice_protocol::batch::stamp(&mut batch, index.next_offset(), 0);
            let header = BatchHeader::parse(&batch).unwrap();
            index.observe(index.size_bytes(), &header);
        }
        index
    }

    #[test]
    fn a_marker_gives_back_the_index_it_was_written_with() {
        let index = index_of(20);
        let bytes = encode(&index);
        assert_eq!(decode(&bytes, 100, index.size_bytes()), Ok(index.clone()));
        let empty = SegmentIndex::new(7, 256);
        assert_eq!(decode(&encode(&empty), 7, 0), Ok(empty));
    }

    #[test]
    fn a_marker_that_does_not_match_is_refused() {
        let index = index_of(5);
        let bytes = encode(&index);
        assert!(
            decode(&bytes, 101, index.size_bytes()).is_err(),
            "other segment"
        );
        assert!(
            decode(&bytes, 100, index.size_bytes() + 1).is_err(),
            "other size"
        );
        for cut in [0, 3, bytes.len() / 2, bytes.len() - 1] {
            assert!(
                decode(&bytes[..cut], 100, index.size_bytes()).is_err(),
                "cut at {cut}"
            );
        }
        for flip in [0, 9, bytes.len() / 2, bytes.len() - 2] {
            let mut damaged = bytes.clone();
            damaged[flip] ^= 0x10;
            assert!(
                decode(&damaged, 100, index.size_bytes()).is_err(),
                "flip at {flip}"
            );
        }
    }
}
