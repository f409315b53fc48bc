//! LEB128 varints and zig-zag signed varints, as Kafka's records use them.
//!
//! Kafka writes every integer inside a record zig-zag encoded: 32-bit fields (lengths, offset
//! deltas, counts) as a `varint` of at most 5 bytes, the timestamp delta as a `varlong` of at
//! most 10. Zig-zag encoding of a value that fits 32 bits gives the same bytes at either width,
//! so one encoder serves both; the decoders check each field's width, so nothing a Kafka decoder
//! would refuse is accepted here.
//!
//! Decoding never panics: every function takes the remaining input and returns `None` when the
//! bytes end early or a varint is longer than its type allows.

/// Longest encoding of a `u64` (10 groups of 7 bits).
pub const VARINT_BYTES_MAX: usize = 10;
/// Longest encoding of a 32-bit varint (5 groups of 7 bits).
pub const VARINT32_BYTES_MAX: usize = 5;

/// Appends `value` as an unsigned LEB128 varint.
pub fn put_uvarint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Appends `value` zig-zag encoded.
pub fn put_varint(out: &mut Vec<u8>, value: i64) {
    put_uvarint(out, ((value << 1) ^ (value >> 63)) as u64);
}

/// Number of bytes `put_uvarint` writes for `value`.
pub fn uvarint_len(mut value: u64) -> usize {
    let mut len = 1;
    while value >= 0x80 {
        value >>= 7;
        len += 1;
    }
    len
}

/// Number of bytes `put_varint` writes for `value`.
pub fn varint_len(value: i64) -> usize {
    uvarint_len(((value << 1) ^ (value >> 63)) as u64)
}

/// Reads an unsigned varint from the front of `input`, returning it and the bytes it used.
pub fn get_uvarint(input: &[u8]) -> Option<(u64, usize)> {
    let mut value: u64 = 0;
    for (i, &byte) in input.iter().enumerate().take(VARINT_BYTES_MAX) {
        let bits = u64::from(byte & 0x7f);
        if i == VARINT_BYTES_MAX - 1 && byte > 1 {
            return None; // Would overflow 64 bits.
        }
        value |= bits << (7 * i);
        if byte & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

/// Reads a zig-zag signed varint from the front of `input`.
pub fn get_varint(input: &[u8]) -> Option<(i64, usize)> {
    let (raw, used) = get_uvarint(input)?;
    Some((((raw >> 1) as i64) ^ -((raw & 1) as i64), used))
}

/// Reads a zig-zag varint of a 32-bit field (Kafka's `varint`): at most 5 bytes, and a value
/// that fits an `i32`.
pub fn get_varint32(input: &[u8]) -> Option<(i32, usize)> {
    let (value, used) = get_varint(&input[..input.len().min(VARINT32_BYTES_MAX)])?;
    Some((i32::try_from(value).ok()?, used))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn uvarint_round_trips(value: u64) {
            let mut out = Vec::new();
            put_uvarint(&mut out, value);
            prop_assert_eq!(out.len(), uvarint_len(value));
            prop_assert_eq!(get_uvarint(&out), Some((value, out.len())));
        }

        #[test]
        fn varint_round_trips(value: i64) {
            let mut out = Vec::new();
            put_varint(&mut out, value);
            prop_assert_eq!(out.len(), varint_len(value));
            prop_assert_eq!(get_varint(&out), Some((value, out.len())));
        }

        #[test]
        fn varint32_round_trips(value: i32) {
            let mut out = Vec::new();
            put_varint(&mut out, i64::from(value));
            prop_assert!(out.len() <= VARINT32_BYTES_MAX);
            prop_assert_eq!(get_varint32(&out), Some((value, out.len())));
        }

        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes: Vec<u8>) {
            let _ = get_uvarint(&bytes);
            let _ = get_varint(&bytes);
            let _ = get_varint32(&bytes);
        }
    }

    #[test]
    fn truncated_and_overlong_varints_are_rejected() {
        assert_eq!(get_uvarint(&[]), None);
        assert_eq!(get_uvarint(&[0x80]), None);
        assert_eq!(get_uvarint(&[0xff; 11]), None);
        assert_eq!(
            get_uvarint(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02]),
            None
        );
        // Wider than a 32-bit field allows: Kafka's decoder refuses these, and so do we.
        let mut wide = Vec::new();
        put_varint(&mut wide, i64::from(i32::MAX) + 1);
        assert_eq!(get_varint32(&wide), None);
        assert_eq!(get_varint32(&[0x80, 0x80, 0x80, 0x80, 0x80, 0x00]), None);
        assert_eq!(get_varint32(&[0x01]), Some((-1, 1)));
    }
}
