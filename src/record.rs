//! The session record and its versioned binary format: the only module that knows bincode.
//!
//! Every store keeps records in this format, so a store can be migrated byte for byte:
//!
//! | bytes | content |
//! | --- | --- |
//! | 0..4 | magic `PSOS` |
//! | 4 | format version, `1` |
//! | 5..9 | payload length, u32 little-endian |
//! | 9..13 | CRC-32 of bytes 4..9 and of the payload |
//! | 13.. | payload: the bincode 2 (standard configuration) encoding of [`Record`] |
//!
//! A record whose magic, version, length or checksum is wrong, whose payload does not decode
//! exactly, or that exceeds the size cap is [`ErrorKind::Corrupt`]: decoding never panics and
//! never allocates more than the cap, whatever the bytes say.

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::config::MAX_SESSION_BYTES;
use crate::error::{Error, ErrorKind, Result};

const MAGIC: &[u8; 4] = b"PSOS";
const VERSION: u8 = 1;
/// Length of the fixed header before the payload.
pub const HEADER_LEN: usize = 13;

/// bincode's configuration, with a hard limit on what one decode may allocate: without it a
/// corrupt length prefix makes bincode try to allocate terabytes and abort the process.
fn codec() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<{ MAX_SESSION_BYTES as usize }>()
}

/// What is known about a session besides its values. Times are seconds since the Unix epoch.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Meta {
    /// When the session was created.
    pub created: u64,
    /// When the session was last saved by a request.
    pub last_access: u64,
    /// The absolute deadline; `None` for a session that lasts until the browser closes.
    pub deadline: Option<u64>,
    /// The longest time the session may go unused, counted from `last_access`.
    pub max_idle: Option<u64>,
    /// The client's address (`REMOTE_ADDR`) when the session was created.
    pub client_addr: Option<String>,
}

impl Meta {
    /// Metadata for a session created at `now`.
    pub fn new(now: u64) -> Meta {
        Meta {
            created: now,
            last_access: now,
            ..Meta::default()
        }
    }
}

/// One session as a store keeps it: metadata, then values as encoded bytes under string keys.
///
/// Values are kept encoded, so values of different types coexist and a store never needs to
/// know them.
///
/// ```
/// let mut record = pso::Record::new(pso::Meta::new(1_000));
/// record.set("reloads", &3u64)?;
/// let bytes = record.encode()?;
/// let back = pso::Record::decode(&bytes, 1 << 20)?;
/// assert_eq!(back.get::<u64>("reloads")?, Some(3));
/// assert_eq!(back, record);
/// # Ok::<(), pso::Error>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The session's metadata.
    pub meta: Meta,
    values: BTreeMap<String, Value>,
}

/// A value's encoded bytes, serialized as one byte string rather than a sequence of numbers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
struct Value(#[serde(with = "serde_bytes")] Vec<u8>);

impl Record {
    /// An empty record.
    pub fn new(meta: Meta) -> Record {
        Record {
            meta,
            values: BTreeMap::new(),
        }
    }

    /// Whether the session is past its deadline or has been unused too long at `now`.
    ///
    /// A last access in the future (a clock that jumped back) counts as a use just now.
    ///
    /// ```
    /// let mut meta = pso::Meta::new(1_000);
    /// meta.deadline = Some(2_000);
    /// let record = pso::Record::new(meta);
    /// assert!(!record.is_expired(1_999));
    /// assert!(record.is_expired(2_000));
    /// ```
    pub fn is_expired(&self, now: u64) -> bool {
        let past_deadline = self.meta.deadline.is_some_and(|deadline| now >= deadline);
        let idle_too_long = self
            .meta
            .max_idle
            .is_some_and(|max| now.saturating_sub(self.meta.last_access) > max);
        past_deadline || idle_too_long
    }

    /// The value under `key`, decoded as `T`; `None` if there is none.
    ///
    /// A value that does not decode as `T` exactly (another type, trailing bytes) is an error of
    /// kind [`ErrorKind::Decode`]. Types with the same encoding (`u32` and `u64`, `String` and
    /// `Vec<u8>`) read each other's values; others fail.
    pub fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        let Some(Value(bytes)) = self.values.get(key) else {
            return Ok(None);
        };
        let (value, used) =
            bincode::serde::decode_from_slice::<T, _>(bytes, codec()).map_err(|e| {
                Error::with_source(
                    ErrorKind::Decode,
                    format!("session value {key:?} is not of the type asked for"),
                    e,
                )
            })?;
        if used != bytes.len() {
            return Err(Error::new(
                ErrorKind::Decode,
                format!("session value {key:?} is not of the type asked for (bytes left over)"),
            ));
        }
        Ok(Some(value))
    }

    /// Stores `value` under `key`, replacing what was there.
    pub fn set<T: Serialize + ?Sized>(&mut self, key: &str, value: &T) -> Result<()> {
        let bytes = bincode::serde::encode_to_vec(value, codec()).map_err(|e| {
            Error::with_source(
                ErrorKind::Encode,
                format!("session value {key:?} cannot be encoded"),
                e,
            )
        })?;
        self.values.insert(key.to_owned(), Value(bytes));
        Ok(())
    }

    /// Removes `key`; returns whether it was there.
    pub fn remove(&mut self, key: &str) -> bool {
        self.values.remove(key).is_some()
    }

    /// Removes every value.
    pub fn clear(&mut self) {
        self.values.clear();
    }

    /// Whether there is a value under `key`.
    pub fn contains(&self, key: &str) -> bool {
        self.values.contains_key(key)
    }

    /// The keys, in sorted order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.values.keys().map(String::as_str)
    }

    /// The number of values.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// Whether there are no values.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// The encoded size of the value under `key`.
    pub fn value_len(&self, key: &str) -> Option<usize> {
        self.values.get(key).map(|Value(bytes)| bytes.len())
    }

    /// The record in pso's versioned format: magic `PSOS`, format version `1`, payload length
    /// (u32 little-endian), CRC-32 of version, length and payload, then the payload (bincode 2,
    /// standard configuration). Every store keeps records in this format.
    pub fn encode(&self) -> Result<Vec<u8>> {
        let mut bytes = vec![0u8; HEADER_LEN];
        bincode::serde::encode_into_std_write(self, &mut bytes, codec()).map_err(|e| {
            Error::with_source(ErrorKind::Encode, "the session cannot be encoded", e)
        })?;
        let payload_len = u32::try_from(bytes.len() - HEADER_LEN)
            .ok()
            .filter(|&n| u64::from(n) <= MAX_SESSION_BYTES)
            .ok_or_else(|| Error::new(ErrorKind::Encode, "the session is larger than 64 MiB"))?;
        bytes[..4].copy_from_slice(MAGIC);
        bytes[4] = VERSION;
        bytes[5..9].copy_from_slice(&payload_len.to_le_bytes());
        let crc = checksum(&bytes[4..9], &bytes[HEADER_LEN..]);
        bytes[9..13].copy_from_slice(&crc.to_le_bytes());
        Ok(bytes)
    }

    /// Whether `bytes` carry pso's magic but a format version this pso does not read: written by
    /// another version of pso, so not for this one to judge.
    pub fn is_other_version(bytes: &[u8]) -> bool {
        bytes.len() > 4 && &bytes[..4] == MAGIC && bytes[4] != VERSION
    }

    /// Reads a record in the versioned format, refusing anything longer than `max_bytes`.
    pub fn decode(bytes: &[u8], max_bytes: u64) -> Result<Record> {
        let corrupt = |why: &str| Error::new(ErrorKind::Corrupt, format!("session record {why}"));
        if u64::try_from(bytes.len()).map_or(true, |n| {
            n > max_bytes.min(MAX_SESSION_BYTES) + HEADER_LEN as u64
        }) {
            return Err(corrupt("is larger than PSOSessionMaxBytes"));
        }
        let Some((header, payload)) = bytes.split_at_checked(HEADER_LEN) else {
            return Err(corrupt("is truncated"));
        };
        if &header[..4] != MAGIC {
            return Err(corrupt("has no pso magic"));
        }
        if header[4] != VERSION {
            return Err(corrupt(&format!(
                "has unknown format version {}",
                header[4]
            )));
        }
        let declared = u32::from_le_bytes([header[5], header[6], header[7], header[8]]);
        if usize::try_from(declared).ok() != Some(payload.len()) {
            return Err(corrupt("is truncated or has trailing bytes"));
        }
        let crc = u32::from_le_bytes([header[9], header[10], header[11], header[12]]);
        if crc != checksum(&header[4..9], payload) {
            return Err(corrupt("fails its checksum"));
        }
        let (record, used) = bincode::serde::decode_from_slice::<Record, _>(payload, codec())
            .map_err(|e| {
                Error::with_source(ErrorKind::Corrupt, "session record does not decode", e)
            })?;
        if used != payload.len() {
            return Err(corrupt("has trailing bytes"));
        }
        Ok(record)
    }
}

fn checksum(header: &[u8], payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(header);
    hasher.update(payload);
    hasher.finalize()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> Record {
        let mut meta = Meta::new(1_700_000_000);
        meta.deadline = Some(1_700_000_900);
        meta.client_addr = Some("192.0.2.1".into());
        let mut record = Record::new(meta);
        record.set("reloads", &41u64).unwrap();
        record.set("name", "Eggs").unwrap();
        record
            .set("cart", &vec![(1u32, "spam".to_string())])
            .unwrap();
        record
    }

    #[test]
    fn round_trip() {
        let record = sample();
        let bytes = record.encode().unwrap();
        assert_eq!(&bytes[..5], b"PSOS\x01");
        assert_eq!(Record::decode(&bytes, 1 << 20).unwrap(), record);
    }

    #[test]
    fn values_of_different_types_coexist_and_mismatches_are_errors() {
        let record = sample();
        assert_eq!(record.get::<u64>("reloads").unwrap(), Some(41));
        assert_eq!(
            record.get::<String>("name").unwrap().as_deref(),
            Some("Eggs")
        );
        assert_eq!(record.get::<u64>("missing").unwrap(), None);
        assert_eq!(
            record.get::<u64>("name").unwrap_err().kind(),
            ErrorKind::Decode
        );
        assert_eq!(
            record.get::<String>("reloads").unwrap_err().kind(),
            ErrorKind::Decode
        );
        assert_eq!(
            record.get::<bool>("reloads").unwrap_err().kind(),
            ErrorKind::Decode
        );
        assert_eq!(
            record.get::<Vec<String>>("cart").unwrap_err().kind(),
            ErrorKind::Decode
        );
    }

    #[test]
    fn every_truncation_is_corrupt() {
        let bytes = sample().encode().unwrap();
        for len in 0..bytes.len() {
            let err = Record::decode(&bytes[..len], 1 << 20).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Corrupt, "length {len}");
        }
    }

    #[test]
    fn every_flipped_bit_is_caught() {
        let bytes = sample().encode().unwrap();
        for i in 0..bytes.len() {
            for bit in 0..8 {
                let mut bad = bytes.clone();
                bad[i] ^= 1 << bit;
                assert_eq!(
                    Record::decode(&bad, 1 << 20).unwrap_err().kind(),
                    ErrorKind::Corrupt,
                    "byte {i} bit {bit}"
                );
            }
        }
    }

    #[test]
    fn trailing_bytes_unknown_versions_and_oversize_are_corrupt() {
        let bytes = sample().encode().unwrap();
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(Record::decode(&longer, 1 << 20).is_err());
        let mut v2 = bytes.clone();
        v2[4] = 2;
        assert!(
            Record::decode(&v2, 1 << 20)
                .unwrap_err()
                .to_string()
                .contains("version 2")
        );
        assert!(
            Record::decode(&bytes, 10)
                .unwrap_err()
                .to_string()
                .contains("larger")
        );
    }

    #[test]
    fn a_forged_huge_length_with_a_valid_checksum_does_not_allocate_it() {
        // A payload that claims a 2^60-byte string, made to pass the checksum: bincode's limit
        // must reject it before allocating.
        let payload = [0u8, 0, 0, 0, 0, 1, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0x10];
        let mut bytes = Vec::from(&MAGIC[..]);
        bytes.push(VERSION);
        bytes.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        let crc = checksum(&bytes[4..9], &payload);
        bytes.extend_from_slice(&crc.to_le_bytes());
        bytes.extend_from_slice(&payload);
        assert_eq!(
            Record::decode(&bytes, 1 << 20).unwrap_err().kind(),
            ErrorKind::Corrupt
        );
    }

    #[test]
    fn expiry_by_deadline_and_by_idleness() {
        let mut meta = Meta::new(1_000);
        meta.max_idle = Some(100);
        let record = Record::new(meta);
        assert!(!record.is_expired(1_100));
        assert!(record.is_expired(1_101));
        assert!(
            !record.is_expired(0),
            "a clock that went back is not expiry"
        );
        let mut far = Meta::new(u64::MAX);
        far.max_idle = Some(u64::MAX);
        far.deadline = Some(u64::MAX);
        assert!(!Record::new(far).is_expired(u64::MAX - 1));
    }

    proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            let _ = Record::decode(&bytes, 1 << 20);
        }

        #[test]
        fn decoding_garbled_payloads_with_valid_framing_never_panics(payload in prop::collection::vec(any::<u8>(), 0..256)) {
            let mut bytes = Vec::from(&MAGIC[..]);
            bytes.push(VERSION);
            bytes.extend_from_slice(&(payload.len() as u32).to_le_bytes());
            let crc = checksum(&bytes[4..9], &payload);
            bytes.extend_from_slice(&crc.to_le_bytes());
            bytes.extend_from_slice(&payload);
            if let Ok(record) = Record::decode(&bytes, 1 << 20) {
                let again = Record::decode(&record.encode().unwrap(), 1 << 20).unwrap();
                prop_assert_eq!(again, record);
            }
        }

        #[test]
        fn any_keys_and_values_round_trip(values in prop::collection::btree_map(".{0,20}", prop::collection::vec(any::<u8>(), 0..50), 0..10), created: u64, deadline: Option<u64>) {
            let mut meta = Meta::new(created);
            meta.deadline = deadline;
            let mut record = Record::new(meta);
            for (key, value) in &values {
                record.set(key, value).unwrap();
            }
            let back = Record::decode(&record.encode().unwrap(), 1 << 20).unwrap();
            for (key, value) in &values {
                prop_assert_eq!(back.get::<Vec<u8>>(key).unwrap(), Some(value.clone()));
            }
            prop_assert_eq!(back, record);
        }
    }
}
