//! The records of the offsets log (`__consumer_offsets`), pure: keys and values as bytes.
//!
//! Every record has a key, so the log can be compacted to the latest record per key; a record
//! with no value (a tombstone) deletes its key. All of a group's records share the group's
//! partition of the log, so one coordinator shard holds everything about a group.
//!
//! ```text
//! key    u16 type (1 = committed offset, 2 = group state, 3 = classic group state), then
//!          type 1: str group, str topic, u32 partition
//!          type 2, 3: str group
//! value  u16 version (0), then
//!          offset: u64 offset, i64 commit timestamp (ms), str metadata
//!          group:  rkyv archive of GroupValue (the group's state machine and its members'
//!                  subscription patterns)
//!          classic group: rkyv archive of ClassicSnapshot (generation, protocol, leader,
//!                  members with their protocols and assignments)
//! str    u16 length, UTF-8 bytes; all integers big-endian
//! ```

use super::classic::ClassicSnapshot;
use super::state::GroupSnapshot;

const KEY_OFFSET: u16 = 1;
const KEY_GROUP: u16 = 2;
const KEY_CLASSIC_GROUP: u16 = 3;
const VALUE_VERSION: u16 = 0;

/// Why a record of the offsets log does not decode: the log is damaged or was written by a
/// newer version.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("offsets-log record does not decode: {0}")]
pub struct RecordError(pub String);

/// What a record is about.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RecordKey {
    Offset {
        group: String,
        topic: String,
        partition: u32,
    },
    Group {
        group: String,
    },
    ClassicGroup {
        group: String,
    },
}

impl RecordKey {
    pub fn group(&self) -> &str {
        match self {
            RecordKey::Offset { group, .. }
            | RecordKey::Group { group }
            | RecordKey::ClassicGroup { group } => group,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        match self {
            RecordKey::Offset {
                group,
                topic,
                partition,
            } => {
                out.extend_from_slice(&KEY_OFFSET.to_be_bytes());
                put_str(&mut out, group);
                put_str(&mut out, topic);
                out.extend_from_slice(&partition.to_be_bytes());
            }
            RecordKey::Group { group } => {
                out.extend_from_slice(&KEY_GROUP.to_be_bytes());
                put_str(&mut out, group);
            }
            RecordKey::ClassicGroup { group } => {
                out.extend_from_slice(&KEY_CLASSIC_GROUP.to_be_bytes());
                put_str(&mut out, group);
            }
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<RecordKey, RecordError> {
        let mut r = Reader(bytes);
        let key = match r.u16()? {
            KEY_OFFSET => RecordKey::Offset {
                group: r.str()?,
                topic: r.str()?,
                partition: r.u32()?,
            },
            KEY_GROUP => RecordKey::Group { group: r.str()? },
            KEY_CLASSIC_GROUP => RecordKey::ClassicGroup { group: r.str()? },
            other => return Err(RecordError(format!("unknown key type {other}"))),
        };
        r.end()?;
        Ok(key)
    }
}

/// A committed offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetValue {
    pub offset: u64,
    pub commit_timestamp: i64,
    pub metadata: String,
}

impl OffsetValue {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(20 + self.metadata.len());
        out.extend_from_slice(&VALUE_VERSION.to_be_bytes());
        out.extend_from_slice(&self.offset.to_be_bytes());
        out.extend_from_slice(&self.commit_timestamp.to_be_bytes());
        put_str(&mut out, &self.metadata);
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<OffsetValue, RecordError> {
        let mut r = Reader(bytes);
        r.version()?;
        let value = OffsetValue {
            offset: r.u64()?,
            commit_timestamp: r.u64()? as i64,
            metadata: r.str()?,
        };
        r.end()?;
        Ok(value)
    }
}

/// A group's state as persisted.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct GroupValue {
    pub group: GroupSnapshot,
    /// Members that subscribed with a pattern: (member id, pattern).
    pub patterns: Vec<(String, String)>,
}

impl GroupValue {
    pub fn encode(&self) -> Vec<u8> {
        encode_archived(self)
    }

    pub fn decode(bytes: &[u8]) -> Result<GroupValue, RecordError> {
        decode_archived(bytes, "group value")
    }
}

/// A value as persisted: the version, then the rkyv archive.
fn encode_archived<T>(value: &T) -> Vec<u8>
where
    T: for<'a> rkyv::Serialize<
        rkyv::api::high::HighSerializer<
            rkyv::util::AlignedVec,
            rkyv::ser::allocator::ArenaHandle<'a>,
            rkyv::rancor::Error,
        >,
    >,
{
    let archive =
        rkyv::to_bytes::<rkyv::rancor::Error>(value).expect("a group value always serializes");
    let mut out = Vec::with_capacity(2 + archive.len());
    out.extend_from_slice(&VALUE_VERSION.to_be_bytes());
    out.extend_from_slice(&archive);
    out
}

fn decode_archived<T>(bytes: &[u8], what: &str) -> Result<T, RecordError>
where
    T: rkyv::Archive,
    T::Archived: for<'a> rkyv::bytecheck::CheckBytes<rkyv::api::high::HighValidator<'a, rkyv::rancor::Error>>
        + rkyv::Deserialize<T, rkyv::api::high::HighDeserializer<rkyv::rancor::Error>>,
{
    let mut r = Reader(bytes);
    r.version()?;
    let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(r.0.len());
    aligned.extend_from_slice(r.0);
    rkyv::from_bytes::<T, rkyv::rancor::Error>(&aligned)
        .map_err(|e| RecordError(format!("{what}: {e}")))
}

/// A classic group's state as persisted.
pub fn encode_classic(snapshot: &ClassicSnapshot) -> Vec<u8> {
    encode_archived(snapshot)
}

pub fn decode_classic(bytes: &[u8]) -> Result<ClassicSnapshot, RecordError> {
    decode_archived(bytes, "classic group value")
}

/// The partition of the offsets log that holds `group`'s records: Kafka's choice (Java's
/// `String.hashCode` of the group id, made non-negative, modulo the partition count), so the
/// same group lands on the same partition number as in Kafka.
pub fn partition_for(group: &str, partitions: u32) -> u32 {
    let hash = group.encode_utf16().fold(0i32, |h, unit| {
        h.wrapping_mul(31).wrapping_add(i32::from(unit))
    });
    ((hash & 0x7fff_ffff) as u32) % partitions.max(1)
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    let len = u16::try_from(s.len()).expect("strings of the offsets log are bounded below 64 KiB");
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], RecordError> {
        if self.0.len() < n {
            return Err(RecordError("truncated".into()));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u16(&mut self) -> Result<u16, RecordError> {
        Ok(u16::from_be_bytes(
            self.take(2)?.try_into().expect("2 bytes"),
        ))
    }

    fn u32(&mut self) -> Result<u32, RecordError> {
        Ok(u32::from_be_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }

    fn u64(&mut self) -> Result<u64, RecordError> {
        Ok(u64::from_be_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }

    fn str(&mut self) -> Result<String, RecordError> {
        let len = self.u16()? as usize;
        String::from_utf8(self.take(len)?.to_vec()).map_err(|_| RecordError("not UTF-8".into()))
    }

    fn version(&mut self) -> Result<(), RecordError> {
        match self.u16()? {
            VALUE_VERSION => Ok(()),
            other => Err(RecordError(format!("unknown value version {other}"))),
        }
    }

    fn end(&self) -> Result<(), RecordError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(RecordError(format!("{} trailing bytes", self.0.len())))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn partition_matches_kafkas_choice() {
        // Java: "group".hashCode() == 98629247; Math.abs-free masking as Kafka's Utils.abs.
        assert_eq!(partition_for("group", 50), 98_629_247 % 50);
        assert_eq!(partition_for("", 50), 0);
        assert!(partition_for("any", 1) == 0);
    }

    #[test]
    fn group_values_round_trip() {
        let value = GroupValue {
            group: GroupSnapshot {
                group_id: "g".into(),
                session_timeout_ms: 10_000,
                assignor: "uniform".into(),
                group_epoch: 3,
                next_member: 2,
                target: vec![("m1".into(), vec![("t".into(), 0)])],
                target_partitions: vec![("t".into(), 1)],
                members: vec![],
            },
            patterns: vec![("m1".into(), "t.*".into())],
        };
        assert_eq!(GroupValue::decode(&value.encode()).unwrap(), value);
    }

    #[test]
    fn classic_values_round_trip() {
        let value = ClassicSnapshot {
            group_id: "g".into(),
            generation_id: 4,
            protocol_type: Some("consumer".into()),
            protocol_name: Some("range".into()),
            leader: Some("m-1".into()),
            next_member: 1,
            members: vec![super::super::classic::ClassicMemberSnapshot {
                member_id: "m-1".into(),
                instance_id: None,
                client_id: "c".into(),
                client_host: "/127.0.0.1".into(),
                session_timeout_ms: 10_000,
                rebalance_timeout_ms: 30_000,
                protocols: vec![("range".into(), vec![0, 1, 2])],
                assignment: vec![3, 4],
            }],
        };
        assert_eq!(decode_classic(&encode_classic(&value)).unwrap(), value);
    }

    proptest! {
        #[test]
        fn keys_and_offsets_round_trip(group in ".{0,40}", topic in ".{0,40}", partition: u32,
                                       offset: u64, ts: i64, metadata in ".{0,40}") {
            let key = RecordKey::Offset { group: group.clone(), topic, partition };
            prop_assert_eq!(RecordKey::decode(&key.encode()).unwrap(), key);
            let key = RecordKey::Group { group: group.clone() };
            prop_assert_eq!(RecordKey::decode(&key.encode()).unwrap(), key);
            let key = RecordKey::ClassicGroup { group };
            prop_assert_eq!(RecordKey::decode(&key.encode()).unwrap(), key);
            let value = OffsetValue { offset, commit_timestamp: ts, metadata };
            prop_assert_eq!(OffsetValue::decode(&value.encode()).unwrap(), value);
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = RecordKey::decode(&bytes);
            let _ = OffsetValue::decode(&bytes);
            let _ = GroupValue::decode(&bytes);
            let _ = decode_classic(&bytes);
        }
    }
}
