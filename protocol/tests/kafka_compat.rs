//! Proof that Sluice's batch is Kafka's RecordBatch v2, byte for byte, from both sides:
//!
//! - batches written by a real Kafka client (kafka-python's own encoder; the captured bytes and
//!   what they decode to are in `tests/data/kafka-python/`, with the script that made them) pass
//!   Sluice's produce validation and decode to the same records through Sluice's iterators;
//! - batches Sluice builds (uncompressed and lz4/zstd/gzip compressed as Kafka frames them)
//!   decode through a second implementation, the `kafka-protocol` crate's record decoder, and
//!   batches that decoder's encoder writes validate and decode here.

use std::io::Read;
use std::path::Path;

use bytes::{Bytes, BytesMut};
use kafka_protocol::indexmap::IndexMap;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{
    Compression as KafkaCompression, Record as KafkaRecord, RecordBatchDecoder, RecordBatchEncoder,
    RecordEncodeOptions, TimestampType,
};
use proptest::prelude::*;
use serde_json::Value;
use sluice_protocol::batch::{stamp, validate, with_compressed_records};
use sluice_protocol::{
    BatchBuilder, BatchHeader, BatchOptions, Compression, RecordIter, BATCH_HEADER_BYTES,
};

/// Decompresses a records section the way a consumer does, for the codecs these tests use.
fn decompress(codec: Compression, section: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    match codec {
        Compression::None => out.extend_from_slice(section),
        Compression::Gzip => {
            flate2::read::GzDecoder::new(section)
                .read_to_end(&mut out)
                .expect("gzip");
        }
        Compression::Lz4 => {
            lz4_flex::frame::FrameDecoder::new(section)
                .read_to_end(&mut out)
                .expect("lz4 frame");
        }
        Compression::Zstd => out = zstd::stream::decode_all(section).expect("zstd"),
        Compression::Snappy => panic!("no snappy sample"),
    }
    out
}

fn text(value: &Value) -> Option<Vec<u8>> {
    value.as_str().map(|s| s.as_bytes().to_vec())
}

#[test]
fn batches_from_a_kafka_client_validate_and_decode() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/kafka-python");
    let mut seen = 0;
    for name in [
        "plain",
        "idempotent",
        "transactional",
        "gzip",
        "lz4",
        "zstd",
    ] {
        let mut batch = std::fs::read(dir.join(format!("{name}.bin"))).expect("captured batch");
        let meta: Value = serde_json::from_str(
            &std::fs::read_to_string(dir.join(format!("{name}.json"))).expect("expectations"),
        )
        .expect("json");
        let expected = meta["records"].as_array().expect("records");

        // What the broker does with a produced batch: validate, then stamp in place.
        let header = validate(&batch, 1 << 20).unwrap_or_else(|e| panic!("{name}: {e}"));
        stamp(&mut batch, 1000, 7);
        let header_after = validate(&batch, 1 << 20).expect("stamping keeps the CRC valid");
        assert_eq!(header_after.base_offset, 1000);
        assert_eq!(header_after.leader_epoch, 7);
        assert_eq!(header_after.crc, header.crc, "{name}");

        assert_eq!(header.record_count as usize, expected.len(), "{name}");
        assert_eq!(header.producer_id, meta["producer_id"].as_i64().unwrap());
        assert_eq!(
            i64::from(header.producer_epoch),
            meta["producer_epoch"].as_i64().unwrap()
        );
        assert_eq!(
            i64::from(header.base_sequence),
            meta["base_sequence"].as_i64().unwrap()
        );
        assert_eq!(
            header.is_transactional(),
            meta["transactional"].as_bool().unwrap()
        );
        let codec = match meta["codec"].as_str().unwrap() {
            "none" => Compression::None,
            "gzip" => Compression::Gzip,
            "lz4" => Compression::Lz4,
            "zstd" => Compression::Zstd,
            other => panic!("codec {other}"),
        };
        assert_eq!(header.compression(), Some(codec), "{name}");

        let section = decompress(codec, &batch[BATCH_HEADER_BYTES..]);
        let records: Vec<_> = RecordIter::new(&header, &section)
            .collect::<Result<_, _>>()
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(records.len(), expected.len());
        for (record, want) in records.iter().zip(expected) {
            assert_eq!(
                i64::from(record.offset_delta),
                want["offset_delta"].as_i64().unwrap()
            );
            assert_eq!(record.timestamp, want["timestamp"].as_i64().unwrap());
            assert_eq!(record.key.map(<[u8]>::to_vec), text(&want["key"]));
            assert_eq!(record.value.map(<[u8]>::to_vec), text(&want["value"]));
            let headers: Vec<(Vec<u8>, Option<Vec<u8>>)> = want["headers"]
                .as_array()
                .unwrap()
                .iter()
                .map(|h| (text(&h[0]).unwrap(), text(&h[1])))
                .collect();
            let got: Vec<(Vec<u8>, Option<Vec<u8>>)> = record
                .headers
                .iter()
                .map(|(k, v)| (k.to_vec(), v.map(<[u8]>::to_vec)))
                .collect();
            assert_eq!(got, headers);
            seen += 1;
        }
    }
    assert_eq!(seen, 25 + 40 + 3 + 60 + 600 + 300);
}

type OwnedRecord = (
    i64,
    Option<Vec<u8>>,
    Option<Vec<u8>>,
    Vec<(String, Option<Vec<u8>>)>,
);

fn record_strategy() -> impl Strategy<Value = OwnedRecord> {
    (
        0i64..1 << 45,
        proptest::option::of(proptest::collection::vec(any::<u8>(), 0..40)),
        proptest::option::of(proptest::collection::vec(any::<u8>(), 0..300)),
        // Distinct header keys: kafka-protocol decodes headers into a map.
        proptest::collection::btree_map(
            "[a-z]{1,8}",
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..10)),
            0..3,
        )
        .prop_map(|m| m.into_iter().collect()),
    )
}

fn sluice_batch(records: &[OwnedRecord], options: BatchOptions) -> Vec<u8> {
    let mut builder = BatchBuilder::new(options);
    for (ts, key, value, headers) in records {
        let headers: Vec<(&[u8], Option<&[u8]>)> = headers
            .iter()
            .map(|(k, v)| (k.as_bytes(), v.as_deref()))
            .collect();
        builder.push(*ts, key.as_deref(), value.as_deref(), &headers);
    }
    builder.finish()
}

fn compress(batch: &[u8], codec: Compression) -> Vec<u8> {
    let records = &batch[BATCH_HEADER_BYTES..];
    let compressed = match codec {
        Compression::None => return batch.to_vec(),
        Compression::Lz4 => {
            use std::io::Write;
            let info = lz4_flex::frame::FrameInfo::new()
                .block_size(lz4_flex::frame::BlockSize::Max64KB)
                .block_mode(lz4_flex::frame::BlockMode::Independent);
            let mut encoder = lz4_flex::frame::FrameEncoder::with_frame_info(info, Vec::new());
            encoder.write_all(records).unwrap();
            encoder.finish().unwrap()
        }
        Compression::Zstd => zstd::bulk::compress(records, 3).unwrap(),
        Compression::Gzip => {
            use std::io::Write;
            let mut encoder =
                flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            encoder.write_all(records).unwrap();
            encoder.finish().unwrap()
        }
        Compression::Snappy => unreachable!(),
    };
    with_compressed_records(batch, codec, &compressed)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn sluice_batches_decode_with_kafka_protocol(
        records in proptest::collection::vec(record_strategy(), 1..20),
        producer_id in -1i64..1000,
        base_offset in 0u64..1 << 40,
        epoch in 0u32..1000,
        codec in prop::sample::select(vec![
            Compression::None, Compression::Gzip, Compression::Lz4, Compression::Zstd,
        ]),
    ) {
        let (producer_epoch, base_sequence) = if producer_id < 0 { (-1, -1) } else { (3, 17) };
        let options = BatchOptions { producer_id, producer_epoch, base_sequence };
        let mut batch = compress(&sluice_batch(&records, options), codec);
        stamp(&mut batch, base_offset, epoch);
        prop_assert!(validate(&batch, usize::MAX).is_ok());

        let mut buf = Bytes::from(batch.clone());
        let set = RecordBatchDecoder::decode(&mut buf).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(buf.len(), 0, "one batch, consumed whole");
        prop_assert_eq!(set.version, 2);
        prop_assert_eq!(set.records.len(), records.len());
        for (i, (got, want)) in set.records.iter().zip(&records).enumerate() {
            prop_assert_eq!(got.offset, (base_offset + i as u64) as i64);
            prop_assert_eq!(got.partition_leader_epoch, epoch as i32);
            prop_assert_eq!(got.producer_id, producer_id);
            prop_assert_eq!(got.producer_epoch, producer_epoch);
            // kafka-protocol derives a record's sequence as base + index even for a batch with
            // no producer (base -1), so only an idempotent batch's sequences are compared.
            if base_sequence >= 0 {
                prop_assert_eq!(got.sequence, base_sequence + i as i32);
            }
            prop_assert_eq!(got.timestamp, want.0);
            prop_assert_eq!(got.timestamp_type, TimestampType::Creation);
            prop_assert_eq!(got.key.as_deref(), want.1.as_deref());
            prop_assert_eq!(got.value.as_deref(), want.2.as_deref());
            let headers: Vec<(String, Option<Vec<u8>>)> = got
                .headers
                .iter()
                .map(|(k, v)| (k.as_str().to_string(), v.as_ref().map(|v| v.to_vec())))
                .collect();
            prop_assert_eq!(&headers, &want.3);
        }
    }

    #[test]
    fn kafka_protocol_batches_validate_and_decode_here(
        records in proptest::collection::vec(record_strategy(), 1..20),
        codec in prop::sample::select(vec![
            KafkaCompression::None, KafkaCompression::Gzip, KafkaCompression::Lz4,
            KafkaCompression::Zstd,
        ]),
    ) {
        let kafka_records: Vec<KafkaRecord> = records
            .iter()
            .enumerate()
            .map(|(i, (ts, key, value, headers))| KafkaRecord {
                transactional: false,
                control: false,
                delete_horizon: false,
                partition_leader_epoch: -1,
                producer_id: 55,
                producer_epoch: 2,
                timestamp_type: TimestampType::Creation,
                offset: i as i64,
                sequence: 9 + i as i32,
                timestamp: *ts,
                key: key.clone().map(Bytes::from),
                value: value.clone().map(Bytes::from),
                headers: headers
                    .iter()
                    .map(|(k, v)| (StrBytes::from_string(k.clone()), v.clone().map(Bytes::from)))
                    .collect::<IndexMap<_, _>>(),
            })
            .collect();
        let mut buf = BytesMut::new();
        RecordBatchEncoder::encode(
            &mut buf,
            &kafka_records,
            &RecordEncodeOptions { version: 2, compression: codec },
        )
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let header = validate(&buf, usize::MAX).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(header.record_count as usize, records.len());
        prop_assert_eq!(header.producer_id, 55);
        prop_assert_eq!(header.base_sequence, 9);
        let ours = match header.compression() {
            Some(Compression::None) => Compression::None,
            Some(Compression::Gzip) => Compression::Gzip,
            Some(Compression::Lz4) => Compression::Lz4,
            Some(Compression::Zstd) => Compression::Zstd,
            other => return Err(TestCaseError::fail(format!("codec {other:?}"))),
        };
        let section = decompress(ours, &buf[BATCH_HEADER_BYTES..]);
        let decoded: Vec<_> = RecordIter::new(&header, &section)
            .collect::<Result<_, _>>()
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(decoded.len(), records.len());
        for (got, want) in decoded.iter().zip(&records) {
            prop_assert_eq!(got.timestamp, want.0);
            prop_assert_eq!(got.key, want.1.as_deref());
            prop_assert_eq!(got.value, want.2.as_deref());
            let headers: Vec<(String, Option<Vec<u8>>)> = got
                .headers
                .iter()
                .map(|(k, v)| (String::from_utf8(k.to_vec()).unwrap(), v.map(<[u8]>::to_vec)))
                .collect();
            prop_assert_eq!(&headers, &want.3);
        }
    }
}

#[test]
fn header_parse_agrees_with_kafka_protocol_on_batch_info() {
    let records: Vec<OwnedRecord> = (0..5)
        .map(|i| {
            (
                1_700_000_000_000 + i,
                Some(b"k".to_vec()),
                Some(vec![b'v'; 10]),
                vec![],
            )
        })
        .collect();
    let mut batch = sluice_batch(
        &records,
        BatchOptions {
            producer_id: 12,
            producer_epoch: 1,
            base_sequence: 100,
        },
    );
    stamp(&mut batch, 500, 4);
    let ours = BatchHeader::parse(&batch).unwrap();
    let mut buf = Bytes::from(batch);
    let info = RecordBatchDecoder::decode_batch_info(&mut buf).unwrap();
    assert_eq!(info.len(), 1);
    assert_eq!(info[0].record_count, ours.record_count as i32);
    assert_eq!(info[0].min_offset, ours.base_offset as i64);
    assert_eq!(info[0].partition_leader_epoch, ours.leader_epoch as i32);
    assert_eq!(info[0].producer_id, ours.producer_id);
    assert_eq!(info[0].base_sequence, ours.base_sequence);
}
