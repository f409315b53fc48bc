//! Batch compression: the producer compresses a finished batch's records section, the consumer
//! decompresses it with a bound on the output. Each codec frames its bytes as Kafka's clients do
//! (`docs/format.md`), so Kafka consumers read what this producer writes and the other way round.

use std::io::{Read, Write};

use lz4_flex::frame::{BlockMode, BlockSize, FrameDecoder, FrameEncoder, FrameInfo};
use sluice_protocol::{with_compressed_records, Compression as Codec, BATCH_HEADER_BYTES};

use crate::config::Compression;

/// Returns `batch` (a finished, uncompressed batch) with its records compressed per `codec`.
pub(crate) fn compress(batch: Vec<u8>, codec: Compression) -> Vec<u8> {
    let records = &batch[BATCH_HEADER_BYTES..];
    let compressed = match codec {
        Compression::None => return batch,
        Compression::Lz4 => lz4_frame(records).map(|out| (Codec::Lz4, out)),
        Compression::Zstd { level } => zstd::bulk::compress(records, level)
            .map(|out| (Codec::Zstd, out))
            .map_err(|e| e.to_string()),
    };
    match compressed {
        Ok((wire, out)) => with_compressed_records(&batch, wire, &out),
        // Encoders fail only on invalid parameters, which config validation rules out; sending
        // the batch uncompressed is still correct.
        Err(error) => {
            tracing::warn!(%error, ?codec, "compression failed; sending uncompressed");
            batch
        }
    }
}

/// One LZ4 frame with independent 64 KiB blocks and no checksums beyond the header's: the shape
/// Kafka's clients write and every Kafka decoder reads.
fn lz4_frame(records: &[u8]) -> Result<Vec<u8>, String> {
    let info = FrameInfo::new()
        .block_size(BlockSize::Max64KB)
        .block_mode(BlockMode::Independent);
    let mut encoder = FrameEncoder::with_frame_info(info, Vec::with_capacity(records.len() / 2));
    encoder.write_all(records).map_err(|e| e.to_string())?;
    encoder.finish().map_err(|e| e.to_string())
}

/// Reads all of `reader`, refusing output larger than `bytes_max`.
fn read_bounded(codec: &str, reader: impl Read, bytes_max: usize) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    reader
        .take(bytes_max as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| format!("{codec}: {e}"))?;
    if out.len() > bytes_max {
        return Err(format!(
            "{codec} section decompresses past the limit of {bytes_max} bytes"
        ));
    }
    Ok(out)
}

/// Decompresses a batch's records section, refusing output larger than `bytes_max`.
pub(crate) fn decompress(
    codec: Codec,
    section: &[u8],
    bytes_max: usize,
) -> Result<Vec<u8>, String> {
    if codec != Codec::None && section.is_empty() {
        return Err(format!("{codec:?} section is empty"));
    }
    match codec {
        Codec::None => Ok(section.to_vec()),
        Codec::Lz4 => read_bounded("lz4", FrameDecoder::new(section), bytes_max),
        Codec::Zstd => zstd::bulk::decompress(section, bytes_max).map_err(|e| format!("zstd: {e}")),
        Codec::Gzip | Codec::Snappy => Err(format!(
            "{codec:?} batches are stored and served by the broker but this client does not \
             decompress them"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_protocol::batch::validate;
    use sluice_protocol::{BatchBuilder, BatchOptions, RecordIter};

    fn batch(records: usize) -> Vec<u8> {
        let mut b = BatchBuilder::new(BatchOptions::default());
        for i in 0..records {
            let value = format!("value {i} value {i} value {i}");
            b.push(i as i64, Some(b"key"), Some(value.as_bytes()), &[]);
        }
        b.finish()
    }

    #[test]
    fn codecs_round_trip_and_shrink_repetitive_records() {
        // 5,000 records span several 64 KiB lz4 blocks.
        for count in [100, 5000] {
            let original = batch(count);
            for (codec, wire) in [
                (Compression::Lz4, Codec::Lz4),
                (Compression::Zstd { level: 3 }, Codec::Zstd),
            ] {
                let compressed = compress(original.clone(), codec);
                assert!(compressed.len() < original.len() / 2, "{codec:?}");
                let header = validate(&compressed, usize::MAX).unwrap();
                assert_eq!(header.compression(), Some(wire));
                let section = &compressed[BATCH_HEADER_BYTES..];
                let records = decompress(wire, section, 1 << 24).unwrap();
                assert_eq!(records, original[BATCH_HEADER_BYTES..]);
                assert_eq!(RecordIter::new(&header, &records).count(), count);
                assert!(
                    decompress(wire, section, 100).is_err(),
                    "{codec:?} output bound"
                );
            }
        }
    }

    /// Batches a Kafka client (kafka-python) compressed, captured in the protocol crate's test
    /// data, decompress here to records that decode.
    #[test]
    fn kafka_client_batches_decompress() {
        let captured: [(&[u8], Codec, usize); 2] = [
            (
                include_bytes!("../../protocol/tests/data/kafka-python/lz4.bin"),
                Codec::Lz4,
                600,
            ),
            (
                include_bytes!("../../protocol/tests/data/kafka-python/zstd.bin"),
                Codec::Zstd,
                300,
            ),
        ];
        for (batch, codec, count) in captured {
            let header = validate(batch, usize::MAX).unwrap();
            assert_eq!(header.compression(), Some(codec));
            let records = decompress(codec, &batch[BATCH_HEADER_BYTES..], 1 << 24).unwrap();
            let decoded: Vec<_> = RecordIter::new(&header, &records)
                .collect::<Result<_, _>>()
                .unwrap();
            assert_eq!(decoded.len(), count, "{codec:?}");
            assert_eq!(decoded[1].value, Some(&b"value 1 value 1 "[..]));
        }
    }

    #[test]
    fn lz4_sections_are_lz4_frames() {
        let compressed = compress(batch(10), Compression::Lz4);
        // The LZ4 frame magic number, little-endian, then FLG version 01 with independent blocks.
        assert_eq!(
            &compressed[BATCH_HEADER_BYTES..BATCH_HEADER_BYTES + 4],
            &[0x04, 0x22, 0x4d, 0x18]
        );
        assert_eq!(
            compressed[BATCH_HEADER_BYTES + 4] & 0b1110_0000,
            0b0110_0000
        );
    }

    #[test]
    fn garbage_does_not_decompress_or_panic() {
        for codec in [Codec::Lz4, Codec::Zstd, Codec::Gzip, Codec::Snappy] {
            for garbage in [
                &b""[..],
                b"\x05",
                b"\x04\x22\x4d\x18\xff\xff\xff\x7fabc",
                b"not compressed at all",
            ] {
                assert!(decompress(codec, garbage, 1 << 16).is_err(), "{codec:?}");
            }
        }
    }
}
