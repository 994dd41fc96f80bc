//! The session record and its versioned binary format: the only module that knows bincode
//! and MessagePack.
//!
//! Every store keeps records in this format, so a store can be migrated byte for byte:
//!
//! | bytes | content |
//! | --- | --- |
//! | 0..4 | magic `PSOS` |
//! | 4 | format version, `2` (`1` still reads) |
//! | 5..9 | payload length, u32 little-endian |
//! | 9..13 | CRC-32 of bytes 4..9 and of the payload |
//! | 13.. | payload: [`Meta`], then the values as a map from key to the value's own bytes, in bincode 2 (standard configuration) |
//!
//! The envelope is bincode; each value is encoded on its own:
//!
//! - Format version 2 writes a value as MessagePack with struct fields by name
//!   (`rmp_serde::to_vec_named`), so a value reads back into a type that changed the way serde
//!   types change between releases: a field added with `#[serde(default)]` (or as an `Option`)
//!   takes its default, a removed field is skipped, a field renamed with `#[serde(alias)]`
//!   still reads.
//! - Format version 1 wrote every value as bincode 2 (standard configuration): fields in
//!   order, no names, so a struct that gained a field cannot read its old values. A version-1
//!   record still loads, its values as bincode. A value that a version-2 record carries over
//!   from one (loaded, not set again) is written as the byte `0xc1` followed by its bincode:
//!   `0xc1` is the one byte MessagePack never uses, so it cannot start a MessagePack value.
//!
//! A value is decoded when it is asked for, never when the record is loaded: a value that
//! does not read as the type asked for is an error of kind [`ErrorKind::Decode`] for that
//! value only. Before MessagePack bytes reach serde they are checked to be exactly one
//! well-formed item whose every declared length (of a string, an array, a map) fits in the
//! bytes that are left, without allocating; serde's decoder is then limited to
//! [`MAX_VALUE_DEPTH`] levels of nesting. So a hostile value can neither make its decoder
//! allocate what a length prefix claims nor recurse until the stack overflows; bincode values
//! are decoded with its own limit, as before.
//!
//! A record whose magic, version, length or checksum is wrong, whose payload does not decode
//! exactly, or that exceeds the size cap is [`ErrorKind::Corrupt`]: decoding never panics.
//!
//! Decoding is bounded in memory, not only in bytes: the values are not unpacked into one
//! allocation each, but stay in the buffer they were read into, found through an index of
//! offsets (16 bytes per value, and every value takes at least 2 bytes of the record). A record
//! of `n` bytes therefore decodes into at most about `9 n` bytes, whatever its shape; a million
//! tiny keys cannot turn a 1 MiB file into a gigabyte of maps and strings.

use std::collections::BTreeMap;
use std::collections::btree_map;
use std::fmt;
use std::iter::Peekable;

use serde::de::{self, DeserializeOwned, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind, Result};

/// The largest record any pso program reads or writes: the decoder's hard limit, and the top of
/// `PSOSessionMaxBytes`.
pub const MAX_RECORD_BYTES: u64 = 64 << 20;

const MAGIC: &[u8; 4] = b"PSOS";
/// The format version written.
const VERSION: u8 = 2;
/// The first format version: every value bincode. Still read.
const BINCODE_VERSION: u8 = 1;
/// In a version-2 record, the first byte of a value carried over from a version-1 record: the
/// bincode follows. MessagePack never uses this byte, so no MessagePack value starts with it.
const BINCODE_VALUE: u8 = 0xc1;
/// The deepest nesting of arrays and maps a MessagePack value may have: more than any session
/// value needs (serde_json stops at the same depth), and far from overflowing a thread's stack.
pub const MAX_VALUE_DEPTH: usize = 128;
/// Length of the fixed header before the payload.
pub const HEADER_LEN: usize = 13;

/// bincode's configuration, with a hard limit on what one decode may claim: without it a
/// corrupt length prefix makes bincode try to allocate terabytes and abort the process.
fn codec() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<{ MAX_RECORD_BYTES as usize }>()
}

/// What is known about a session besides its values. Times are seconds since the Unix epoch.
///
/// ```
/// let meta = pso::Meta::new(1_700_000_000);
/// assert_eq!((meta.created, meta.last_access, meta.deadline), (1_700_000_000, 1_700_000_000, None));
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
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

/// [`Meta`] as it lies in the buffer: decoded without allocating what a length prefix claims
/// (an owned `String` would be allocated at its claimed size before its bytes are read).
#[derive(Deserialize)]
struct BorrowedMeta<'a> {
    created: u64,
    last_access: u64,
    deadline: Option<u64>,
    max_idle: Option<u64>,
    #[serde(borrow)]
    client_addr: Option<&'a str>,
}

impl BorrowedMeta<'_> {
    fn to_owned(&self) -> Meta {
        Meta {
            created: self.created,
            last_access: self.last_access,
            deadline: self.deadline,
            max_idle: self.max_idle,
            client_addr: self.client_addr.map(str::to_owned),
        }
    }
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

    /// Whether the session is past its deadline or has been unused too long at `now`.
    ///
    /// A last access in the future (a clock that jumped back) counts as a use just now.
    pub fn is_expired(&self, now: u64) -> bool {
        let past_deadline = self.deadline.is_some_and(|deadline| now >= deadline);
        let idle_too_long = self
            .max_idle
            .is_some_and(|max| now.saturating_sub(self.last_access) > max);
        past_deadline || idle_too_long
    }
}

/// One session as a store keeps it: metadata, then values as encoded bytes under string keys.
///
/// Values are kept encoded, so values of different types coexist and a store never needs to
/// know them. A decoded record keeps its values in the buffer it was read from; what a request
/// changes is kept beside them, so nothing is copied to tell later what changed.
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
#[derive(Clone, Default)]
pub struct Record {
    /// The session's metadata.
    pub meta: Meta,
    /// The values as decoded (empty for a new record).
    stored: Stored,
    /// What was set, removed or cleared since.
    changes: Changes,
}

/// Decoded values: the record's bytes and, in key order, where each key and value lies in them.
#[derive(Clone, Default)]
struct Stored {
    bytes: Vec<u8>,
    index: Vec<Slot>,
    /// Read from a version-1 record: every value is bincode, with no tag.
    all_bincode: bool,
}

/// A value's bytes and how they are encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Value<'a> {
    /// MessagePack with fields by name: what this version writes.
    Named(&'a [u8]),
    /// bincode 2, from a version-1 record (without the tag byte).
    Bincode(&'a [u8]),
}

impl<'a> Value<'a> {
    /// A value as a version-2 record holds it: the tag tells bincode apart.
    fn tagged(bytes: &'a [u8]) -> Value<'a> {
        match bytes.split_first() {
            Some((&BINCODE_VALUE, rest)) => Value::Bincode(rest),
            _ => Value::Named(bytes),
        }
    }

    /// The encoded value, without a tag.
    fn bytes(self) -> &'a [u8] {
        match self {
            Value::Named(bytes) | Value::Bincode(bytes) => bytes,
        }
    }
}

/// Offsets into [`Stored::bytes`]; u32 is enough, as records are at most 64 MiB.
#[derive(Clone, Copy)]
struct Slot {
    key: u32,
    key_len: u32,
    value: u32,
    value_len: u32,
}

/// Changes over the stored values: `None` removes a key; `cleared` hides every stored value.
#[derive(Clone, Default, PartialEq, Eq)]
struct Changes {
    values: BTreeMap<String, Option<Vec<u8>>>,
    cleared: bool,
}

/// The state of a record at one moment, kept to go back to it or to tell whether it changed:
/// the metadata and the (usually few) changes a request made, never the stored values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Checkpoint {
    meta: Meta,
    changes: Changes,
}

impl Checkpoint {
    /// The metadata at the checkpoint.
    pub(crate) fn meta(&self) -> &Meta {
        &self.meta
    }
}

impl fmt::Debug for Changes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Changes")
            .field("keys", &self.values.keys().collect::<Vec<_>>())
            .field("cleared", &self.cleared)
            .finish()
    }
}

impl Stored {
    fn key(&self, slot: &Slot) -> &str {
        // Checked as UTF-8 when decoded; the fallback is never taken.
        std::str::from_utf8(range(&self.bytes, slot.key, slot.key_len)).unwrap_or("")
    }

    fn value(&self, slot: &Slot) -> Value<'_> {
        let bytes = range(&self.bytes, slot.value, slot.value_len);
        if self.all_bincode {
            Value::Bincode(bytes)
        } else {
            Value::tagged(bytes)
        }
    }

    fn find(&self, key: &str) -> Option<Value<'_>> {
        let position = self
            .index
            .binary_search_by(|slot| self.key(slot).cmp(key))
            .ok()?;
        self.index.get(position).map(|slot| self.value(slot))
    }
}

fn range(bytes: &[u8], start: u32, len: u32) -> &[u8] {
    let start = start as usize;
    bytes.get(start..start + len as usize).unwrap_or(&[])
}

/// The values a record shows: the stored ones under its changes, in key order.
struct View<'a> {
    stored: &'a Stored,
    slots: Peekable<std::slice::Iter<'a, Slot>>,
    changes: Peekable<btree_map::Iter<'a, String, Option<Vec<u8>>>>,
}

impl<'a> View<'a> {
    fn new(stored: &'a Stored, changes: &'a Changes) -> View<'a> {
        let slots: &[Slot] = if changes.cleared { &[] } else { &stored.index };
        View {
            stored,
            slots: slots.iter().peekable(),
            changes: changes.values.iter().peekable(),
        }
    }
}

impl<'a> Iterator for View<'a> {
    type Item = (&'a str, Value<'a>);

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let order = match (self.slots.peek(), self.changes.peek()) {
                (None, None) => return None,
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (Some(slot), Some((changed, _))) => self.stored.key(slot).cmp(changed.as_str()),
            };
            if order == std::cmp::Ordering::Equal {
                // The change replaces (or removes) the stored value.
                self.slots.next();
            }
            if order == std::cmp::Ordering::Less {
                let stored = self.stored;
                return self
                    .slots
                    .next()
                    .map(|slot| (stored.key(slot), stored.value(slot)));
            }
            if let Some((key, Some(value))) = self.changes.next() {
                return Some((key.as_str(), Value::Named(value)));
            }
            // A removed key: nothing to show, look further.
        }
    }
}

impl Record {
    /// An empty record.
    pub fn new(meta: Meta) -> Record {
        Record {
            meta,
            ..Record::default()
        }
    }

    /// Whether the session is past its deadline or has been unused too long at `now`
    /// (see [`Meta::is_expired`]).
    ///
    /// ```
    /// let mut meta = pso::Meta::new(1_000);
    /// meta.deadline = Some(2_000);
    /// let record = pso::Record::new(meta);
    /// assert!(!record.is_expired(1_999));
    /// assert!(record.is_expired(2_000));
    /// ```
    pub fn is_expired(&self, now: u64) -> bool {
        self.meta.is_expired(now)
    }

    fn view(&self) -> View<'_> {
        View::new(&self.stored, &self.changes)
    }

    /// The encoded value under `key`.
    fn lookup(&self, key: &str) -> Option<Value<'_>> {
        match self.changes.values.get(key) {
            Some(change) => change.as_deref().map(Value::Named),
            None if self.changes.cleared => None,
            None => self.stored.find(key),
        }
    }

    /// The value under `key`, decoded as `T`; `None` if there is none.
    ///
    /// A value reads as `T` where serde would read it from JSON: a struct's fields are matched
    /// by name, so a field added with `#[serde(default)]` or as an `Option` takes its default
    /// and a field the value has but `T` no longer does is skipped. A value that does not
    /// read as `T` (another type, garbled bytes) is an error of kind [`ErrorKind::Decode`].
    /// Integers of any width read each other where the number fits.
    ///
    /// Values written by pso before format version 2 are bincode, which has no names: they
    /// read only as the type that wrote them (or one encoded the same, such as `u32` and
    /// `u64`) until they are set again.
    ///
    /// ```
    /// use serde::{Deserialize, Serialize};
    /// #[derive(Serialize)]
    /// struct Before { name: String, message: String }
    /// #[derive(Deserialize)]
    /// struct After { name: String, #[serde(default)] stars: u8 }
    ///
    /// let mut record = pso::Record::new(pso::Meta::new(1_000));
    /// record.set("entry", &Before { name: "Eggs".into(), message: "Hi".into() })?;
    /// let after: After = record.get("entry")?.unwrap();
    /// assert_eq!((after.name.as_str(), after.stars), ("Eggs", 0));
    /// assert_eq!(record.get::<u64>("entry").unwrap_err().kind(), pso::ErrorKind::Decode);
    /// # Ok::<(), pso::Error>(())
    /// ```
    pub fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        let Some(value) = self.lookup(key) else {
            return Ok(None);
        };
        let mismatch = |e: ValueError| {
            Error::with_source(
                ErrorKind::Decode,
                format!("session value {key:?} is not of the type asked for"),
                e,
            )
        };
        match value {
            Value::Named(bytes) => decode_named(bytes).map_err(mismatch).map(Some),
            Value::Bincode(bytes) => decode_bincode(bytes).map_err(mismatch).map(Some),
        }
    }

    /// Stores `value` under `key`, replacing what was there.
    pub fn set<T: Serialize + ?Sized>(&mut self, key: &str, value: &T) -> Result<()> {
        let bytes = rmp_serde::to_vec_named(value).map_err(|e| {
            Error::with_source(
                ErrorKind::Encode,
                format!("session value {key:?} cannot be encoded"),
                e,
            )
        })?;
        self.changes.values.insert(key.to_owned(), Some(bytes));
        Ok(())
    }

    /// Removes `key`; returns whether it was there.
    pub fn remove(&mut self, key: &str) -> bool {
        let was_there = self.lookup(key).is_some();
        let hides_a_stored_value = !self.changes.cleared && self.stored.find(key).is_some();
        if hides_a_stored_value {
            self.changes.values.insert(key.to_owned(), None);
        } else {
            self.changes.values.remove(key);
        }
        was_there
    }

    /// Removes every value.
    pub fn clear(&mut self) {
        self.changes = Changes {
            values: BTreeMap::new(),
            cleared: true,
        };
    }

    /// Whether there is a value under `key`.
    pub fn contains(&self, key: &str) -> bool {
        self.lookup(key).is_some()
    }

    /// The keys, in sorted order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.view().map(|(key, _)| key)
    }

    /// The number of values.
    pub fn len(&self) -> usize {
        self.view().count()
    }

    /// Whether there are no values.
    pub fn is_empty(&self) -> bool {
        self.view().next().is_none()
    }

    /// The encoded size of the value under `key`.
    pub fn value_len(&self, key: &str) -> Option<usize> {
        self.lookup(key).map(|value| value.bytes().len())
    }

    /// Whether the value under `key` is bincode, as pso wrote values before format version 2
    /// (the README's "File format"); `None` if there is none.
    pub fn is_bincode(&self, key: &str) -> Option<bool> {
        self.lookup(key)
            .map(|value| matches!(value, Value::Bincode(_)))
    }

    /// The state to come back to with [`Record::restore`], or to compare with.
    pub(crate) fn checkpoint(&self) -> Checkpoint {
        Checkpoint {
            meta: self.meta.clone(),
            changes: self.changes.clone(),
        }
    }

    /// Goes back to a state taken from this record by [`Record::checkpoint`].
    pub(crate) fn restore(&mut self, checkpoint: &Checkpoint) {
        self.meta = checkpoint.meta.clone();
        self.changes = checkpoint.changes.clone();
    }

    /// Whether the record holds what it held at `checkpoint`: the same metadata and values.
    pub(crate) fn matches(&self, checkpoint: &Checkpoint) -> bool {
        self.meta == checkpoint.meta
            && (self.changes == checkpoint.changes
                || self.view().eq(View::new(&self.stored, &checkpoint.changes)))
    }

    /// The record in pso's versioned format: magic `PSOS`, format version `2`, payload length
    /// (u32 little-endian), CRC-32 of version, length and payload, then the payload (bincode 2,
    /// standard configuration), each value in it MessagePack or, carried over from a version-1
    /// record, tagged bincode (the README's "File format"). Every store keeps records in this
    /// format.
    pub fn encode(&self) -> Result<Vec<u8>> {
        let failed = |e| Error::with_source(ErrorKind::Encode, "the session cannot be encoded", e);
        let mut bytes = vec![0u8; HEADER_LEN];
        bincode::serde::encode_into_std_write(&self.meta, &mut bytes, codec()).map_err(failed)?;
        let count = self.view().count() as u64;
        bincode::serde::encode_into_std_write(count, &mut bytes, codec()).map_err(failed)?;
        let mut tagged = Vec::new();
        for (key, value) in self.view() {
            bincode::serde::encode_into_std_write(key, &mut bytes, codec()).map_err(failed)?;
            let value = match value {
                Value::Named(value) => value,
                Value::Bincode(value) => {
                    tagged.clear();
                    tagged.push(BINCODE_VALUE);
                    tagged.extend_from_slice(value);
                    &tagged
                }
            };
            bincode::serde::encode_into_std_write(
                serde_bytes::Bytes::new(value),
                &mut bytes,
                codec(),
            )
            .map_err(failed)?;
        }
        let payload_len = u32::try_from(bytes.len() - HEADER_LEN)
            .ok()
            .filter(|&n| u64::from(n) <= MAX_RECORD_BYTES)
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
        bytes.len() > 4 && &bytes[..4] == MAGIC && !is_known_version(bytes[4])
    }

    /// Reads a record in the versioned format, refusing anything longer than `max_bytes`.
    ///
    /// This copies `bytes` once; [`Record::decode_owned`] keeps the buffer it is given.
    pub fn decode(bytes: &[u8], max_bytes: u64) -> Result<Record> {
        check_size(bytes, max_bytes)?;
        Record::decode_owned(bytes.to_vec(), max_bytes)
    }

    /// Reads a record from a buffer it keeps: the values stay where they are, so decoding adds
    /// only an index of 16 bytes per value.
    pub fn decode_owned(bytes: Vec<u8>, max_bytes: u64) -> Result<Record> {
        check_size(&bytes, max_bytes)?;
        let payload = framed_payload(&bytes)?;
        let declared = u32::from_le_bytes([bytes[5], bytes[6], bytes[7], bytes[8]]);
        if usize::try_from(declared).ok() != Some(payload.len()) {
            return Err(corrupt("is truncated or has trailing bytes"));
        }
        let crc = u32::from_le_bytes([bytes[9], bytes[10], bytes[11], bytes[12]]);
        if crc != checksum(&bytes[4..9], payload) {
            return Err(corrupt("fails its checksum"));
        }
        let decode = |entries| {
            let seed = PayloadSeed {
                base: bytes.as_ptr() as usize,
                limit: bytes.len(),
                entries,
            };
            let (decoded, used) = bincode::serde::seed_decode_from_slice(seed, payload, codec())
                .map_err(|e| {
                    Error::with_source(ErrorKind::Corrupt, "session record does not decode", e)
                })?;
            if used != payload.len() {
                return Err(corrupt("has trailing bytes"));
            }
            Ok(decoded)
        };
        let (_, count, _) = decode(None)?;
        let (meta, _, index) = decode(Some(count))?;
        let all_bincode = bytes[4] == BINCODE_VERSION;
        Ok(Record {
            meta,
            stored: Stored {
                bytes,
                index,
                all_bincode,
            },
            changes: Changes::default(),
        })
    }

    /// The metadata of a record from the first bytes of its encoding, without reading or
    /// checking the values: enough to judge expiry cheaply (garbage collection).
    ///
    /// `Ok(None)` when `prefix` ends before the metadata does. The checksum cannot be checked
    /// without the whole record, so a garbled record may show garbled metadata.
    pub fn read_meta(prefix: &[u8]) -> Result<Option<Meta>> {
        let payload = framed_payload(prefix)?;
        match bincode::serde::borrow_decode_from_slice::<BorrowedMeta<'_>, _>(payload, codec()) {
            Ok((meta, _)) => Ok(Some(meta.to_owned())),
            Err(bincode::error::DecodeError::UnexpectedEnd { .. }) => Ok(None),
            Err(e) => Err(Error::with_source(
                ErrorKind::Corrupt,
                "session record metadata does not decode",
                e,
            )),
        }
    }
}

fn is_known_version(version: u8) -> bool {
    version == VERSION || version == BINCODE_VERSION
}

/// Why a value does not read as the type asked for.
#[derive(Debug)]
enum ValueError {
    /// Not one well-formed MessagePack item within its bytes.
    Malformed(&'static str),
    MessagePack(rmp_serde::decode::Error),
    Bincode(bincode::error::DecodeError),
    /// bincode that reads as the type with bytes left over.
    LeftOver,
}

impl fmt::Display for ValueError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ValueError::Malformed(why) => write!(f, "malformed MessagePack: {why}"),
            ValueError::MessagePack(e) => write!(f, "{e}"),
            ValueError::Bincode(e) => write!(f, "{e}"),
            ValueError::LeftOver => f.write_str("bytes left over"),
        }
    }
}

impl std::error::Error for ValueError {}

/// A MessagePack value as `T`, after [`check_item`]: no length the bytes cannot back reaches
/// serde, and nesting deeper than [`MAX_VALUE_DEPTH`] is refused.
fn decode_named<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ValueError> {
    check_item(bytes).map_err(ValueError::Malformed)?;
    let mut deserializer = rmp_serde::Deserializer::from_read_ref(bytes);
    deserializer.set_max_depth(MAX_VALUE_DEPTH);
    T::deserialize(&mut deserializer).map_err(ValueError::MessagePack)
}

/// A bincode value (format version 1) as `T`, consumed exactly.
fn decode_bincode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ValueError> {
    let (value, used) =
        bincode::serde::decode_from_slice::<T, _>(bytes, codec()).map_err(ValueError::Bincode)?;
    if used != bytes.len() {
        return Err(ValueError::LeftOver);
    }
    Ok(value)
}

/// Checks that `bytes` are exactly one MessagePack item, and that every length it declares
/// (of a string, binary or extension's bytes, of an array's or map's items) is backed by the
/// bytes that follow: each item takes at least one byte, so the items still to read never
/// outnumber the bytes left. One pass, no recursion, no allocation: a length prefix can then
/// make serde preallocate no more than the value's own size in elements.
fn check_item(bytes: &[u8]) -> Result<(), &'static str> {
    let mut at = 0usize;
    let mut pending = 1usize;
    let number = |at: usize, width: usize| -> Result<usize, &'static str> {
        let field = bytes.get(at..at + width).ok_or("ends inside a length")?;
        Ok(field
            .iter()
            .fold(0usize, |n, &byte| (n << 8) | usize::from(byte)))
    };
    while pending > 0 {
        pending -= 1;
        let marker = *bytes.get(at).ok_or("ends before its last item")?;
        at += 1;
        // (bytes of a length field, bytes that follow it or the marker, items that follow)
        let (skip, items) = match marker {
            0x00..=0x7f | 0xc0 | 0xc2 | 0xc3 | 0xe0..=0xff => (0, 0),
            0x80..=0x8f => (0, 2 * usize::from(marker & 0x0f)),
            0x90..=0x9f => (0, usize::from(marker & 0x0f)),
            0xa0..=0xbf => (usize::from(marker & 0x1f), 0),
            0xc1 => return Err("uses the reserved byte 0xc1"),
            0xc4 | 0xd9 => (1 + number(at, 1)?, 0),
            0xc5 | 0xda => (2 + number(at, 2)?, 0),
            0xc6 | 0xdb => (4 + number(at, 4)?, 0),
            // An extension: its length, its type byte, its bytes.
            0xc7 => (1 + 1 + number(at, 1)?, 0),
            0xc8 => (2 + 1 + number(at, 2)?, 0),
            0xc9 => (4 + 1 + number(at, 4)?, 0),
            0xcc | 0xd0 => (1, 0),
            0xcd | 0xd1 => (2, 0),
            0xca | 0xce | 0xd2 => (4, 0),
            0xcb | 0xcf | 0xd3 => (8, 0),
            0xd4 => (2, 0),
            0xd5 => (3, 0),
            0xd6 => (5, 0),
            0xd7 => (9, 0),
            0xd8 => (17, 0),
            0xdc => (2, number(at, 2)?),
            0xdd => (4, number(at, 4)?),
            0xde => (2, 2 * number(at, 2)?),
            0xdf => (4, 2usize.saturating_mul(number(at, 4)?)),
        };
        at = at
            .checked_add(skip)
            .filter(|&end| end <= bytes.len())
            .ok_or("declares more bytes than it has")?;
        pending = pending
            .checked_add(items)
            .filter(|&n| n <= bytes.len() - at)
            .ok_or("declares more items than it has bytes")?;
    }
    if at != bytes.len() {
        return Err("has bytes after its item");
    }
    Ok(())
}

fn corrupt(why: &str) -> Error {
    Error::new(ErrorKind::Corrupt, format!("session record {why}"))
}

fn check_size(bytes: &[u8], max_bytes: u64) -> Result<()> {
    let limit = max_bytes.min(MAX_RECORD_BYTES) + HEADER_LEN as u64;
    if u64::try_from(bytes.len()).map_or(true, |n| n > limit) {
        return Err(corrupt("is larger than PSOSessionMaxBytes"));
    }
    Ok(())
}

/// The payload after a header with pso's magic and version (its length is not checked here).
fn framed_payload(bytes: &[u8]) -> Result<&[u8]> {
    let Some((header, payload)) = bytes.split_at_checked(HEADER_LEN) else {
        return Err(corrupt("is truncated"));
    };
    if &header[..4] != MAGIC {
        return Err(corrupt("has no pso magic"));
    }
    if !is_known_version(header[4]) {
        return Err(corrupt(&format!(
            "has unknown format version {}",
            header[4]
        )));
    }
    Ok(payload)
}

/// Decodes a payload (metadata, then the map of values) into the metadata and an index of
/// where each key and value lies, relative to the buffer that starts at `base`.
///
/// It runs twice: once to count the values (allocating nothing), then to index them in a
/// vector of exactly that size, so neither a forged count nor growth by doubling can make
/// the index larger than the values it describes need.
#[derive(Clone, Copy)]
struct PayloadSeed {
    base: usize,
    limit: usize,
    /// `None` on the counting pass; the count on the indexing pass.
    entries: Option<usize>,
}

/// What a pass over the payload found.
type Decoded = (Meta, usize, Vec<Slot>);

impl PayloadSeed {
    /// The offset of `part` in the buffer; parts always lie inside it, being borrowed from it.
    fn offset_of(&self, part: &[u8]) -> Option<(u32, u32)> {
        let start = (part.as_ptr() as usize).checked_sub(self.base)?;
        let end = start.checked_add(part.len())?;
        (end <= self.limit).then_some(())?;
        Some((u32::try_from(start).ok()?, u32::try_from(part.len()).ok()?))
    }
}

impl<'de> DeserializeSeed<'de> for PayloadSeed {
    type Value = Decoded;

    fn deserialize<D: de::Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<Self::Value, D::Error> {
        // bincode writes a struct as its fields in order, a tuple the same way.
        deserializer.deserialize_tuple(2, self)
    }
}

impl<'de> Visitor<'de> for PayloadSeed {
    type Value = Decoded;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a session record")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let meta: BorrowedMeta<'de> = seq
            .next_element()?
            .ok_or_else(|| de::Error::custom("no metadata"))?;
        let (count, index) = seq
            .next_element_seed(IndexSeed(&self))?
            .ok_or_else(|| de::Error::custom("no values"))?;
        Ok((meta.to_owned(), count, index))
    }
}

struct IndexSeed<'s>(&'s PayloadSeed);

impl<'de> DeserializeSeed<'de> for IndexSeed<'_> {
    type Value = (usize, Vec<Slot>);

    fn deserialize<D: de::Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for IndexSeed<'_> {
    type Value = (usize, Vec<Slot>);

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a map of session values")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        // The count the record claims is not trusted with an allocation: only the one counted.
        // A failed allocation is an error, not an abort of the process.
        let mut index: Vec<Slot> = Vec::new();
        if let Some(entries) = self.0.entries {
            index
                .try_reserve_exact(entries)
                .map_err(|_| de::Error::custom("too many values to index in memory"))?;
        }
        let mut count = 0usize;
        let mut previous: Option<&'de str> = None;
        while let Some((key, value)) = map.next_entry::<&'de str, &'de serde_bytes::Bytes>()? {
            // Keys in strictly increasing order, as a map is written: no duplicate can make
            // the record mean two things.
            if previous.is_some_and(|p| p >= key) {
                return Err(de::Error::custom("keys out of order or repeated"));
            }
            previous = Some(key);
            let (Some((key, key_len)), Some((value, value_len))) =
                (self.0.offset_of(key.as_bytes()), self.0.offset_of(value))
            else {
                return Err(de::Error::custom("a value outside the record"));
            };
            count += 1;
            if self.0.entries.is_some() {
                if index.len() == index.capacity() {
                    return Err(de::Error::custom("more values than counted"));
                }
                index.push(Slot {
                    key,
                    key_len,
                    value,
                    value_len,
                });
            }
        }
        Ok((count, index))
    }
}

fn checksum(header: &[u8], payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(header);
    hasher.update(payload);
    hasher.finalize()
}

impl PartialEq for Record {
    fn eq(&self, other: &Record) -> bool {
        self.meta == other.meta && self.view().eq(other.view())
    }
}

impl Eq for Record {}

impl fmt::Debug for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Record")
            .field("meta", &self.meta)
            .field("keys", &self.keys().collect::<Vec<_>>())
            .finish()
    }
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

    /// The record as the first pso wrote it: a serde struct holding a map, encoded whole.
    #[derive(Serialize)]
    struct FirstRecord {
        meta: Meta,
        values: BTreeMap<String, FirstValue>,
    }

    #[derive(Serialize)]
    struct FirstValue(#[serde(with = "serde_bytes")] Vec<u8>);

    /// A record of `version` around `values` as they lie in it, framed with a valid checksum.
    fn raw_record(version: u8, meta: &Meta, values: &[(&str, &[u8])]) -> Vec<u8> {
        let first = FirstRecord {
            meta: meta.clone(),
            values: values
                .iter()
                .map(|(k, v)| (k.to_string(), FirstValue(v.to_vec())))
                .collect(),
        };
        let mut bytes = vec![0u8; HEADER_LEN];
        bincode::serde::encode_into_std_write(&first, &mut bytes, codec()).unwrap();
        let len = (bytes.len() - HEADER_LEN) as u32;
        bytes[..4].copy_from_slice(MAGIC);
        bytes[4] = version;
        bytes[5..9].copy_from_slice(&len.to_le_bytes());
        let crc = checksum(&bytes[4..9], &bytes[HEADER_LEN..]);
        bytes[9..13].copy_from_slice(&crc.to_le_bytes());
        bytes
    }

    /// The record as the first pso laid it out (a serde struct holding a map, encoded whole),
    /// with the values as this version writes them.
    fn first_encoding(record: &Record) -> Vec<u8> {
        let values: Vec<(&str, Vec<u8>)> = record
            .view()
            .map(|(k, v)| match v {
                Value::Named(v) => (k, v.to_vec()),
                Value::Bincode(v) => (k, [&[BINCODE_VALUE], v].concat()),
            })
            .collect();
        let values: Vec<(&str, &[u8])> = values.iter().map(|(k, v)| (*k, &v[..])).collect();
        raw_record(VERSION, &record.meta, &values)
    }

    /// A version-2 record holding `value`'s bytes under "k", decoded.
    fn holding(value: &[u8]) -> Record {
        Record::decode(
            &raw_record(VERSION, &Meta::new(0), &[("k", value)]),
            1 << 20,
        )
        .unwrap()
    }

    #[test]
    fn round_trip() {
        let record = sample();
        let bytes = record.encode().unwrap();
        assert_eq!(&bytes[..5], b"PSOS\x02");
        assert_eq!(Record::decode(&bytes, 1 << 20).unwrap(), record);
    }

    #[test]
    fn the_envelope_is_the_first_versions_byte_for_byte() {
        let record = sample();
        assert_eq!(record.encode().unwrap(), first_encoding(&record));
        let back = Record::decode(&first_encoding(&record), 1 << 20).unwrap();
        assert_eq!(back, record);
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
    fn changes_over_decoded_values() {
        let bytes = sample().encode().unwrap();
        let mut record = Record::decode(&bytes, 1 << 20).unwrap();
        let loaded = record.checkpoint();
        assert!(record.matches(&loaded));
        record.set("reloads", &41u64).unwrap();
        assert!(record.matches(&loaded), "the same value again is no change");
        record.set("reloads", &42u64).unwrap();
        assert!(!record.matches(&loaded));
        assert!(record.remove("name"));
        assert!(!record.remove("name"));
        record.set("zzz", &1u8).unwrap();
        assert_eq!(
            record.keys().collect::<Vec<_>>(),
            ["cart", "reloads", "zzz"]
        );
        assert_eq!(record.len(), 3);
        let again = Record::decode(&record.encode().unwrap(), 1 << 20).unwrap();
        assert_eq!(again, record);
        assert_eq!(again.get::<u64>("reloads").unwrap(), Some(42));

        record.restore(&loaded);
        assert_eq!(
            record.get::<String>("name").unwrap().as_deref(),
            Some("Eggs")
        );
        record.clear();
        assert!(record.is_empty() && !record.contains("name"));
        assert!(!record.matches(&loaded));
        record.set("name", "Eggs").unwrap();
        assert_eq!(record.keys().collect::<Vec<_>>(), ["name"]);
        assert!(!record.remove("cart"), "cleared values are gone");
        record.restore(&loaded);
        assert_eq!(record, Record::decode(&bytes, 1 << 20).unwrap());
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

    /// A framed record around any payload, with a valid checksum.
    fn framed(payload: &[u8]) -> Vec<u8> {
        let mut bytes = Vec::from(&MAGIC[..]);
        bytes.push(VERSION);
        bytes.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        let crc = checksum(&bytes[4..9], payload);
        bytes.extend_from_slice(&crc.to_le_bytes());
        bytes.extend_from_slice(payload);
        bytes
    }

    #[test]
    fn trailing_bytes_unknown_versions_and_oversize_are_corrupt() {
        let bytes = sample().encode().unwrap();
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(Record::decode(&longer, 1 << 20).is_err());
        for version in [0, 3, 255] {
            let mut other = bytes.clone();
            other[4] = version;
            let err = Record::decode(&other, 1 << 20).unwrap_err();
            assert!(err.to_string().contains(&format!("version {version}")));
            assert!(Record::is_other_version(&other));
        }
        assert!(!Record::is_other_version(&bytes));
        assert!(
            Record::decode(&bytes, 10)
                .unwrap_err()
                .to_string()
                .contains("larger")
        );
    }

    #[test]
    fn repeated_or_unordered_keys_are_corrupt() {
        // meta: five fields (0, 0, None, None, None), then a map of two entries.
        let meta = [0u8, 0, 0, 0, 0];
        for (a, b) in [("k", "k"), ("b", "a")] {
            let mut payload = meta.to_vec();
            payload.push(2);
            for key in [a, b] {
                payload.extend_from_slice(&[1, key.as_bytes()[0], 1, 7]);
            }
            let err = Record::decode(&framed(&payload), 1 << 20).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Corrupt, "{a} {b}");
        }
    }

    #[test]
    fn a_forged_huge_length_with_a_valid_checksum_does_not_allocate_it() {
        // A payload that claims a 2^60-byte string, made to pass the checksum: bincode's limit
        // must reject it before allocating.
        let payload = [0u8, 0, 0, 0, 0, 1, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0x10];
        assert_eq!(
            Record::decode(&framed(&payload), 1 << 20)
                .unwrap_err()
                .kind(),
            ErrorKind::Corrupt
        );
        // A client address that claims 60 MiB in a 20-byte record.
        let payload = [0u8, 0, 0, 0, 1, 0xfc, 0, 0, 0xc0, 0x03, 0];
        assert_eq!(
            Record::decode(&framed(&payload), 1 << 20)
                .unwrap_err()
                .kind(),
            ErrorKind::Corrupt
        );
    }

    #[test]
    fn a_forged_count_of_values_allocates_nothing() {
        // Metadata, then a map that claims 2^40 entries and holds one.
        let mut payload = vec![0u8, 0, 0, 0, 0, 253];
        payload.extend_from_slice(&(1u64 << 40).to_le_bytes());
        payload.extend_from_slice(&[1, b'k', 1, 7]);
        let err = Record::decode(&framed(&payload), 1 << 20).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Corrupt);
    }

    mod evolution {
        //! Values read back into types that changed as serde types change between releases.
        use super::*;

        #[derive(Serialize, Deserialize, Debug, PartialEq)]
        struct Entry {
            name: String,
            message: String,
        }

        #[derive(Deserialize, Debug, PartialEq)]
        struct WithStars {
            name: String,
            message: String,
            #[serde(default)]
            stars: u8,
        }

        #[derive(Deserialize, Debug, PartialEq)]
        struct WithoutMessage {
            name: String,
        }

        #[derive(Deserialize, Debug, PartialEq)]
        struct WithOption {
            name: String,
            message: String,
            email: Option<String>,
        }

        #[derive(Deserialize, Debug, PartialEq)]
        struct Renamed {
            #[serde(alias = "name")]
            author: String,
            #[serde(rename = "message")]
            text: String,
        }

        #[derive(Deserialize, Debug, PartialEq)]
        struct Review {
            rating: u8,
            body: String,
        }

        fn stored() -> Record {
            let mut record = Record::new(Meta::new(0));
            let entries = vec![
                Entry {
                    name: "Eggs".into(),
                    message: "Hi".into(),
                },
                Entry {
                    name: "Spam".into(),
                    message: "Lovely".into(),
                },
            ];
            record.set("entries", &entries).unwrap();
            Record::decode(&record.encode().unwrap(), 1 << 20).unwrap()
        }

        #[test]
        fn a_field_added_with_a_default_takes_it() {
            let entries: Vec<WithStars> = stored().get("entries").unwrap().unwrap();
            assert_eq!(
                entries[1],
                WithStars {
                    name: "Spam".into(),
                    message: "Lovely".into(),
                    stars: 0
                }
            );
        }

        #[test]
        fn a_removed_field_is_skipped() {
            let entries: Vec<WithoutMessage> = stored().get("entries").unwrap().unwrap();
            assert_eq!(entries[0].name, "Eggs");
        }

        #[test]
        fn an_added_option_is_none() {
            let entries: Vec<WithOption> = stored().get("entries").unwrap().unwrap();
            assert_eq!(entries[0].email, None);
            assert_eq!(entries[1].message, "Lovely");
        }

        #[test]
        fn an_alias_reads_the_old_name() {
            let entries: Vec<Renamed> = stored().get("entries").unwrap().unwrap();
            assert_eq!(
                entries[1],
                Renamed {
                    author: "Spam".into(),
                    text: "Lovely".into()
                }
            );
        }

        #[test]
        fn another_type_is_a_decode_error_and_the_value_stays() {
            let record = stored();
            let err = record.get::<Vec<Review>>("entries").unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Decode);
            assert!(err.to_string().contains("\"entries\""), "{err}");
            assert_eq!(
                record.get::<Vec<Entry>>("entries").unwrap().unwrap().len(),
                2
            );
            assert_eq!(
                record.get::<u64>("entries").unwrap_err().kind(),
                ErrorKind::Decode
            );
        }

        #[test]
        fn integers_read_across_widths_where_they_fit() {
            let mut record = Record::new(Meta::new(0));
            record.set("n", &300u64).unwrap();
            record.set("neg", &-1i64).unwrap();
            assert_eq!(record.get::<u16>("n").unwrap(), Some(300));
            assert_eq!(record.get::<i32>("n").unwrap(), Some(300));
            assert_eq!(record.get::<u8>("n").unwrap_err().kind(), ErrorKind::Decode);
            assert_eq!(record.get::<i8>("neg").unwrap(), Some(-1));
            assert_eq!(
                record.get::<u64>("neg").unwrap_err().kind(),
                ErrorKind::Decode
            );
        }
    }

    #[test]
    fn version_1_records_still_load_their_bincode_values() {
        let mut meta = Meta::new(1_700_000_000);
        meta.client_addr = Some("192.0.2.1".into());
        let bincode = |value: &dyn erased::Value| value.bincode();
        let cart = vec![(1u32, "spam".to_string())];
        let old = raw_record(
            BINCODE_VERSION,
            &meta,
            &[
                ("cart", &bincode(&cart)),
                ("name", &bincode(&"Eggs")),
                ("reloads", &bincode(&41u64)),
            ],
        );
        let record = Record::decode(&old, 1 << 20).unwrap();
        assert_eq!(record.get::<u64>("reloads").unwrap(), Some(41));
        assert_eq!(
            record.get::<String>("name").unwrap().as_deref(),
            Some("Eggs")
        );
        assert_eq!(
            record.get::<Vec<(u32, String)>>("cart").unwrap(),
            Some(cart.clone())
        );
        assert_eq!(
            record.get::<String>("reloads").unwrap_err().kind(),
            ErrorKind::Decode
        );
        assert_eq!(record.is_bincode("reloads"), Some(true));
        assert_eq!(record.value_len("reloads"), Some(1));

        // Written again as version 2: the bincode values carried over behind their tag.
        let mut record = record;
        let loaded = record.checkpoint();
        record.set("reloads", &42u64).unwrap();
        assert!(!record.matches(&loaded));
        let bytes = record.encode().unwrap();
        assert_eq!(bytes[4], VERSION);
        assert_eq!(bytes, first_encoding(&record));
        let again = Record::decode(&bytes, 1 << 20).unwrap();
        assert_eq!(again, record);
        assert_eq!(again.is_bincode("name"), Some(true));
        assert_eq!(again.is_bincode("reloads"), Some(false));
        assert_eq!(again.get::<u64>("reloads").unwrap(), Some(42));
        assert_eq!(
            again.get::<String>("name").unwrap().as_deref(),
            Some("Eggs")
        );
        assert_eq!(again.get::<Vec<(u32, String)>>("cart").unwrap(), Some(cart));
        let reencoded = Record::decode(&again.encode().unwrap(), 1 << 20).unwrap();
        assert_eq!(reencoded, again);
        // An unchanged version-1 record reads as equal to its version-2 encoding.
        assert_eq!(
            Record::decode(
                &Record::decode(&old, 1 << 20).unwrap().encode().unwrap(),
                1 << 20
            )
            .unwrap(),
            Record::decode(&old, 1 << 20).unwrap()
        );
    }

    /// Values of any type as bincode, as version 1 wrote them.
    mod erased {
        pub trait Value {
            fn bincode(&self) -> Vec<u8>;
        }
        impl<T: serde::Serialize> Value for T {
            fn bincode(&self) -> Vec<u8> {
                bincode::serde::encode_to_vec(self, super::codec()).unwrap()
            }
        }
    }

    #[test]
    fn hostile_values_allocate_nothing_they_claim() {
        use serde::de::IgnoredAny;
        let huge = [
            // An array, a map, a string, binary bytes and an extension that claim 4 Gi items
            // or bytes, with nothing behind.
            vec![0xdd, 0xff, 0xff, 0xff, 0xff, 0],
            vec![0xdf, 0xff, 0xff, 0xff, 0xff, 0, 0],
            vec![0xdb, 0xff, 0xff, 0xff, 0xff, b'a'],
            vec![0xc6, 0xff, 0xff, 0xff, 0xff, 1],
            vec![0xc9, 0xff, 0xff, 0xff, 0xff, 1, 2],
            // An array of 65535 arrays that each claim 4 Gi items.
            [
                &[0xdc, 0xff, 0xff][..],
                &[0xdd, 0xff, 0xff, 0xff, 0xff].repeat(100),
            ]
            .concat(),
        ];
        for value in &huge {
            let record = holding(value);
            for err in [
                record.get::<Vec<u64>>("k").unwrap_err(),
                record.get::<Vec<Vec<u64>>>("k").unwrap_err(),
                record.get::<BTreeMap<String, u64>>("k").unwrap_err(),
                record.get::<String>("k").unwrap_err(),
                record.get::<serde_bytes::ByteBuf>("k").unwrap_err(),
                record.get::<IgnoredAny>("k").unwrap_err(),
            ] {
                assert_eq!(err.kind(), ErrorKind::Decode);
                let cause = std::error::Error::source(&err).unwrap().to_string();
                assert!(cause.starts_with("malformed MessagePack"), "{cause}");
            }
        }
        // 100,000 nested arrays: refused at the depth limit, not by a stack overflow, also
        // on a thread with a small stack.
        let deep = [vec![0x91; 100_000], vec![0xc0]].concat();
        let shallow = [vec![0x91; MAX_VALUE_DEPTH - 1], vec![0xc0]].concat();
        std::thread::Builder::new()
            .stack_size(512 << 10)
            .spawn(move || {
                let err = holding(&deep).get::<IgnoredAny>("k").unwrap_err();
                let cause = std::error::Error::source(&err).unwrap().to_string();
                assert!(cause.contains("depth"), "{cause}");
                assert!(holding(&shallow).get::<IgnoredAny>("k").unwrap().is_some());
            })
            .unwrap()
            .join()
            .unwrap();
        // The tag of a bincode value in a version-2 record, and garbled bincode behind it.
        let record = holding(&[BINCODE_VALUE, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0x10]);
        assert_eq!(
            record.get::<String>("k").unwrap_err().kind(),
            ErrorKind::Decode
        );
        assert_eq!(
            holding(&[]).get::<u8>("k").unwrap_err().kind(),
            ErrorKind::Decode
        );
    }

    #[test]
    fn messagepack_items_are_checked_exactly() {
        // (bytes, well-formed)
        let cases: &[(&[u8], bool)] = &[
            (&[0x2a], true),
            (&[0xc0], true),
            (&[0xa3, b'a', b'b', b'c'], true),
            (&[0xa3, b'a', b'b'], false),
            (&[0xa1, b'a', 0], false),
            (&[0x92, 1, 0xa1, b'x'], true),
            (&[0x92, 1], false),
            (&[0x81, 0xa1, b'k', 7], true),
            (&[0x81, 0xa1, b'k'], false),
            (&[0xcd, 1, 2], true),
            (&[0xcd, 1], false),
            (&[0xcb, 0, 0, 0, 0, 0, 0, 0, 0], true),
            (&[0xc4, 2, 1, 2], true),
            (&[0xd9, 1, b'z'], true),
            (&[0xda, 0, 1, b'z'], true),
            (&[0xdc, 0, 2, 1, 2], true),
            (&[0xdc, 0, 3, 1, 2], false),
            (&[0xde, 0, 1, 1, 2], true),
            (&[0xd4, 1, 2], true),
            (&[0xc7, 1, 5, 9], true),
            (&[0xd8, 1], false),
            (&[0xc1], false),
            (&[], false),
            (&[0x90, 0x90], false),
        ];
        for (bytes, good) in cases {
            assert_eq!(check_item(bytes).is_ok(), *good, "{bytes:x?}");
        }
        for value in [
            rmp_serde::to_vec_named(&sample_struct()).unwrap(),
            rmp_serde::to_vec_named(&(1u8, -300i64, 1.5f64, "s", vec![u64::MAX])).unwrap(),
        ] {
            assert_eq!(check_item(&value), Ok(()));
        }
    }

    fn sample_struct() -> BTreeMap<String, Vec<Option<String>>> {
        BTreeMap::from([("a".into(), vec![None, Some("b".into())])])
    }

    #[test]
    fn metadata_reads_from_a_prefix() {
        let record = sample();
        let bytes = record.encode().unwrap();
        assert_eq!(
            Record::read_meta(&bytes[..HEADER_LEN + 40]).unwrap(),
            Some(record.meta.clone())
        );
        assert_eq!(Record::read_meta(&bytes[..HEADER_LEN + 3]).unwrap(), None);
        assert!(Record::read_meta(b"PSOS").is_err());
        assert!(Record::read_meta(&framed(&[0, 0, 0, 0, 9])).is_err());
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
            let _ = Record::read_meta(&bytes);
        }

        #[test]
        fn decoding_garbled_payloads_with_valid_framing_never_panics(payload in prop::collection::vec(any::<u8>(), 0..256)) {
            let bytes = framed(&payload);
            let _ = Record::read_meta(&bytes);
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
            let bytes = record.encode().unwrap();
            prop_assert_eq!(&bytes, &first_encoding(&record));
            let back = Record::decode(&bytes, 1 << 20).unwrap();
            for (key, value) in &values {
                prop_assert_eq!(back.get::<Vec<u8>>(key).unwrap(), Some(value.clone()));
            }
            prop_assert_eq!(back, record);
        }

        #[test]
        fn changes_read_like_a_map(ops in prop::collection::vec((0u8..4, "[a-d]", any::<u8>()), 0..40)) {
            // The record over stored values behaves as a plain map would.
            let mut start = Record::new(Meta::new(0));
            let mut model: BTreeMap<String, u8> = BTreeMap::new();
            for key in ["a", "c"] {
                start.set(key, &1u8).unwrap();
                model.insert(key.to_owned(), 1);
            }
            let mut record = Record::decode(&start.encode().unwrap(), 1 << 20).unwrap();
            for (op, key, value) in ops {
                match op {
                    0 | 1 => { record.set(&key, &value).unwrap(); model.insert(key, value); }
                    2 => { prop_assert_eq!(record.remove(&key), model.remove(&key).is_some()); }
                    _ => { record.clear(); model.clear(); }
                }
            }
            prop_assert_eq!(record.keys().collect::<Vec<_>>(), model.keys().map(String::as_str).collect::<Vec<_>>());
            for (key, value) in &model {
                prop_assert_eq!(record.get::<u8>(key).unwrap(), Some(*value));
            }
            let back = Record::decode(&record.encode().unwrap(), 1 << 20).unwrap();
            prop_assert_eq!(back, record);
        }
    }
}
