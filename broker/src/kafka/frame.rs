//! Kafka framing: a frame is a 32-bit big-endian length and that many bytes; a request starts
//! with its header (api key, version, correlation id, client id, tagged fields from the API's
//! flexible versions on), a response with its correlation id. The codecs are the
//! `kafka-protocol` crate's; this module only routes and frames.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

use super::{versions, CloseReason};
use crate::server::context::{Response, ResponsePart};

/// A request whose header was read, and its body still encoded.
#[derive(Debug)]
pub struct RequestFrame {
    pub api: ApiKey,
    pub version: i16,
    pub correlation_id: i32,
    pub client_id: Option<StrBytes>,
    pub body: Bytes,
}

/// What a frame is.
#[derive(Debug)]
pub enum Parsed {
    Request(RequestFrame),
    /// An ApiVersions request at a version this broker does not serve: Kafka answers it with
    /// a v0 response carrying `UNSUPPORTED_VERSION` and the versions it does serve, so the
    /// client can pick one (KIP-511).
    ApiVersionsFallback {
        correlation_id: i32,
    },
}

/// Reads a request frame's header. Every header version starts with the api key, the
/// version and the correlation id, each at a fixed position; the rest is decoded by the
/// header version the API and version call for.
pub fn parse(mut frame: Bytes) -> Result<Parsed, CloseReason> {
    if frame.len() < crate::limits::KAFKA_FRAME_BYTES_MIN {
        return Err(CloseReason::Header(format!(
            "a {}-byte frame holds no request header",
            frame.len()
        )));
    }
    let mut fixed = &frame[..8];
    let (key, version, correlation_id) = (fixed.get_i16(), fixed.get_i16(), fixed.get_i32());
    let api = ApiKey::try_from(key).map_err(|()| CloseReason::UnknownApi(key))?;
    if !versions::served(api, version) {
        if api == ApiKey::ApiVersions {
            return Ok(Parsed::ApiVersionsFallback { correlation_id });
        }
        return Err(CloseReason::UnsupportedVersion { api: key, version });
    }
    let header = RequestHeader::decode(&mut frame, api.request_header_version(version))
        .map_err(|e| CloseReason::Header(format!("{e:#}")))?;
    Ok(Parsed::Request(RequestFrame {
        api,
        version,
        correlation_id: header.correlation_id,
        client_id: header.client_id,
        body: frame,
    }))
}

/// The length prefix and response header of a response to `api` at `version`.
fn head(api: ApiKey, version: i16, correlation_id: i32, capacity: usize) -> BytesMut {
    let mut buf = BytesMut::with_capacity(capacity + 16);
    buf.put_i32(0); // the length, set when the response is complete
    let header = ResponseHeader::default().with_correlation_id(correlation_id);
    header
        .encode(&mut buf, api.response_header_version(version))
        .expect("invariant: a response header always encodes");
    buf
}

fn set_length(buf: &mut [u8], total: usize) {
    let len = i32::try_from(total - 4).expect("invariant: a response is below 2 GiB");
    buf[..4].copy_from_slice(&len.to_be_bytes());
}

/// Encodes a whole response. The handlers set only the fields that exist at the version they
/// answer, so the crate's encoder does not refuse; if it does anyway (a bug here, not the
/// client's doing), the error is logged and the response is an empty frame, which the client
/// takes as a broken connection and retries elsewhere.
pub fn response<T: Encodable>(
    api: ApiKey,
    version: i16,
    correlation_id: i32,
    body: &T,
) -> Response {
    let mut buf = head(api, version, correlation_id, 256);
    if let Err(error) = body.encode(&mut buf, version) {
        tracing::error!(?api, version, %error, "cannot encode a Kafka response");
        return Response::default();
    }
    let total = buf.len();
    set_length(&mut buf, total);
    Response {
        head: buf.to_vec(),
        data: Vec::new(),
    }
}

/// Encodes a response whose record fields are sent from the log without copying (a Fetch).
///
/// `without` is the response with every record field null, `with_empty` the same response
/// with every record field present and empty; `records[i]` are the batches of the i-th record
/// field in encoding order. Both encodings have the same length and differ exactly where the
/// record fields' length prefixes are (null and empty differ in every byte of the prefix:
/// `-1` against `0` as a 32-bit integer, `0` against `1` as a compact varint), so the crate
/// encodes everything and only the prefixes are rewritten here, with each field's real length.
pub fn records_response<T: Encodable>(
    api: ApiKey,
    version: i16,
    correlation_id: i32,
    without: &T,
    with_empty: &T,
    records: Vec<Vec<ResponsePart>>,
    flexible: bool,
) -> Response {
    let encode = |body: &T| {
        let mut buf = head(api, version, correlation_id, 512);
        body.encode(&mut buf, version).map(|()| buf)
    };
    let (null, empty) = match (encode(without), encode(with_empty)) {
        (Ok(null), Ok(empty)) => (null, empty),
        (Err(error), _) | (_, Err(error)) => {
            tracing::error!(?api, version, %error, "cannot encode a Kafka response");
            return Response::default();
        }
    };
    assert_eq!(
        null.len(),
        empty.len(),
        "invariant: null and empty records differ in place"
    );
    let prefix = if flexible { 1 } else { 4 };
    let mut positions = Vec::with_capacity(records.len());
    let mut i = 0;
    while i < null.len() {
        if null[i] != empty[i] {
            positions.push(i);
            i += prefix;
        } else {
            i += 1;
        }
    }
    assert_eq!(
        positions.len(),
        records.len(),
        "invariant: one length prefix per record field"
    );
    let total_records: usize = records
        .iter()
        .flat_map(|chunks| chunks.iter().map(ResponsePart::len))
        .sum();
    let mut parts = Vec::with_capacity(records.len() * 2);
    let mut head_bytes: Option<Vec<u8>> = None;
    let mut extra_prefix = 0usize;
    let mut at = 0;
    for (position, chunks) in positions.into_iter().zip(records) {
        let len: usize = chunks.iter().map(ResponsePart::len).sum();
        let mut piece = null[at..position].to_vec();
        if flexible {
            let mut varint = BytesMut::new();
            put_unsigned_varint(&mut varint, len as u64 + 1);
            extra_prefix += varint.len() - prefix;
            piece.extend_from_slice(&varint);
        } else {
            let len = i32::try_from(len).expect("invariant: a fetch's records are below 2 GiB");
            piece.extend_from_slice(&len.to_be_bytes());
        }
        at = position + prefix;
        match head_bytes {
            None => head_bytes = Some(piece),
            Some(_) => parts.push(ResponsePart::Bytes(piece)),
        }
        parts.extend(chunks);
    }
    let tail = null[at..].to_vec();
    let mut head = head_bytes.unwrap_or_default();
    if parts.is_empty() && head.is_empty() {
        head = tail;
    } else if !tail.is_empty() {
        parts.push(ResponsePart::Bytes(tail));
    }
    let total = null.len() + extra_prefix + total_records;
    set_length(&mut head, total);
    Response { head, data: parts }
}

/// Kafka's unsigned varint (the length prefix of a compact field).
fn put_unsigned_varint(buf: &mut BytesMut, mut value: u64) {
    while value >= 0x80 {
        buf.put_u8((value as u8) | 0x80);
        value >>= 7;
    }
    buf.put_u8(value as u8);
}

#[cfg(test)]
mod tests {
    use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
    use kafka_protocol::messages::{FetchResponse, TopicName};
    use kafka_protocol::protocol::{Decodable, StrBytes};

    use super::*;

    fn fetch_response(records: &[Option<Bytes>]) -> FetchResponse {
        let partitions = records
            .iter()
            .enumerate()
            .map(|(i, r)| {
                PartitionData::default()
                    .with_partition_index(i as i32)
                    .with_high_watermark(7)
                    .with_records(r.clone())
            })
            .collect();
        FetchResponse::default().with_responses(vec![FetchableTopicResponse::default()
            .with_topic(TopicName(StrBytes::from_static_str("t")))
            .with_partitions(partitions)])
    }

    /// The spliced encoding equals the crate's own encoding of the response with the records
    /// in it, at a plain and at a flexible version, for small and for large record fields.
    #[test]
    fn spliced_records_equal_the_crates_encoding() {
        let sizes = [0usize, 5, 127, 128, 20_000];
        for version in [4i16, 11, 12, 13] {
            let flexible = version >= 12;
            let payloads: Vec<Bytes> = sizes
                .iter()
                .map(|&n| Bytes::from((0..n).map(|i| i as u8).collect::<Vec<u8>>()))
                .collect();
            let mut expected =
                fetch_response(&payloads.iter().cloned().map(Some).collect::<Vec<_>>());
            if version >= 13 {
                expected.responses[0].topic = TopicName::default();
                expected.responses[0].topic_id = uuid::Uuid::from_u128(9);
            }
            let strip = |mut r: FetchResponse, with: Option<Bytes>| {
                for p in &mut r.responses[0].partitions {
                    p.records = with.clone();
                }
                r
            };
            let without = strip(expected.clone(), None);
            let with_empty = strip(expected.clone(), Some(Bytes::new()));
            // The records as the log would hand them out: memory chunks in several pieces.
            let records = payloads
                .iter()
                .map(|p| {
                    p.chunks(7000)
                        .map(|c| ResponsePart::Bytes(c.to_vec()))
                        .collect()
                })
                .collect();
            let spliced = records_response(
                ApiKey::Fetch,
                version,
                42,
                &without,
                &with_empty,
                records,
                flexible,
            );
            let mut bytes = spliced.head.clone();
            for part in &spliced.data {
                match part {
                    ResponsePart::Bytes(b) => bytes.extend_from_slice(b),
                    ResponsePart::Send(_) => unreachable!("the test sends bytes"),
                }
            }
            let whole = response(ApiKey::Fetch, version, 42, &expected);
            assert_eq!(bytes, whole.head, "version {version}");
            // And the crate reads it back.
            let mut body = Bytes::from(bytes[4..].to_vec());
            let header_version = ApiKey::Fetch.response_header_version(version);
            let header = ResponseHeader::decode(&mut body, header_version).unwrap();
            assert_eq!(header.correlation_id, 42);
            let decoded = FetchResponse::decode(&mut body, version).unwrap();
            assert_eq!(decoded, expected);
        }
    }
}
