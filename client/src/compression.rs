//! Batch compression: the producer compresses a finished batch's records section, the consumer
//! decompresses it with a bound on the output. Framing per codec is in `docs/format.md`.

use sluice_protocol::{with_compressed_records, Compression as Codec, BATCH_HEADER_BYTES};

use crate::config::Compression;

/// Bytes of the lz4 framing's uncompressed-length prefix.
const LZ4_LENGTH_BYTES: usize = 4;

/// Returns `batch` (a finished, uncompressed batch) with its records compressed per `codec`.
pub(crate) fn compress(batch: Vec<u8>, codec: Compression) -> Vec<u8> {
    let records = &batch[BATCH_HEADER_BYTES..];
    match codec {
        Compression::None => batch,
        Compression::Lz4 => {
            let mut out = Vec::with_capacity(LZ4_LENGTH_BYTES + records.len() / 2);
            out.extend_from_slice(&(records.len() as u32).to_le_bytes());
            out.extend_from_slice(&lz4_flex::block::compress(records));
            with_compressed_records(&batch, Codec::Lz4, &out)
        }
        Compression::Zstd { level } => match zstd::bulk::compress(records, level) {
            Ok(out) => with_compressed_records(&batch, Codec::Zstd, &out),
            // zstd fails only on invalid parameters, which config validation rules out; sending
            // the batch uncompressed is still correct.
            Err(error) => {
                tracing::warn!(%error, "zstd compression failed; sending uncompressed");
                batch
            }
        },
    }
}

/// Decompresses a batch's records section, refusing output larger than `bytes_max`.
pub(crate) fn decompress(
    codec: Codec,
    section: &[u8],
    bytes_max: usize,
) -> Result<Vec<u8>, String> {
    match codec {
        Codec::None => Ok(section.to_vec()),
        Codec::Lz4 => {
            if section.len() < LZ4_LENGTH_BYTES {
                return Err("lz4 section shorter than its length prefix".into());
            }
            let mut len = [0u8; LZ4_LENGTH_BYTES];
            len.copy_from_slice(&section[..LZ4_LENGTH_BYTES]);
            let len = u32::from_le_bytes(len) as usize;
            if len > bytes_max {
                return Err(format!(
                    "lz4 section claims {len} bytes, more than the limit {bytes_max}"
                ));
            }
            lz4_flex::block::decompress(&section[LZ4_LENGTH_BYTES..], len)
                .map_err(|e| format!("lz4: {e}"))
        }
        Codec::Zstd => zstd::bulk::decompress(section, bytes_max).map_err(|e| format!("zstd: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_protocol::batch::validate;
    use sluice_protocol::{BatchBuilder, BatchOptions, RecordIter};

    fn batch() -> Vec<u8> {
        let mut b = BatchBuilder::new(BatchOptions::default());
        for i in 0..100 {
            let value = format!("value {i} value {i} value {i}");
            b.push(i, Some(b"key"), Some(value.as_bytes()), &[]);
        }
        b.finish()
    }

    #[test]
    fn codecs_round_trip_and_shrink_repetitive_records() {
        let original = batch();
        for (codec, wire) in [
            (Compression::Lz4, Codec::Lz4),
            (Compression::Zstd { level: 3 }, Codec::Zstd),
        ] {
            let compressed = compress(original.clone(), codec);
            assert!(compressed.len() < original.len() / 2, "{codec:?}");
            let header = validate(&compressed, usize::MAX).unwrap();
            assert_eq!(header.compression(), Some(wire));
            let records = decompress(wire, &compressed[BATCH_HEADER_BYTES..], 1 << 20).unwrap();
            assert_eq!(records, original[BATCH_HEADER_BYTES..]);
            assert_eq!(RecordIter::new(&header, &records).count(), 100);
            assert!(
                decompress(wire, &compressed[BATCH_HEADER_BYTES..], 100).is_err(),
                "{codec:?} output bound"
            );
        }
    }

    #[test]
    fn garbage_does_not_decompress_or_panic() {
        for codec in [Codec::Lz4, Codec::Zstd] {
            for garbage in [
                &b""[..],
                b"\x05",
                b"\xff\xff\xff\x7fabc",
                b"not compressed at all",
            ] {
                let _ = decompress(codec, garbage, 1 << 16);
            }
        }
        assert!(decompress(Codec::Lz4, b"\xff\xff\xff\x7fabc", 1 << 16).is_err());
    }
}
