//! The session record's decoder (`Record::decode`, `decode_owned`, `read_meta`) and its
//! encoder.
//!
//! Input: a mode, then either bytes to decode as they are, a payload framed with a valid
//! header and checksum (random bytes almost never pass a CRC) as format version 1 (bincode
//! values) or 2 (MessagePack values, bincode ones tagged), or a record built from the input
//! and changed by a series of sets, removals and clears. Checked: decoding never panics and
//! fails only as `Corrupt`; both decoders agree; a record that decodes has sorted keys, its
//! metadata is what `read_meta` reads from any prefix, every value read as a few types gives
//! it or an error of kind `Decode`, never a panic; it encodes no longer than it came (a
//! version-1 record: but for the tag and a longer length of each value carried over) and
//! decodes again to itself, and every truncation or flipped bit of its encoding is refused; a
//! built record reads like a map and survives encoding.

use std::collections::BTreeMap;

use pso::{ErrorKind, Meta, Record};

use crate::input::Input;

const HEADER_LEN: usize = 13;
const MAX_RECORD_BYTES: u64 = 64 << 20;
const MAXES: [u64; 4] = [1 << 20, u64::MAX, 64, 0];

/// A record around `payload`: magic, `version`, length, CRC-32 of version, length and payload.
pub fn framed(version: u8, payload: &[u8]) -> Vec<u8> {
    let mut bytes = b"PSOS".to_vec();
    bytes.push(version);
    bytes.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    let mut crc = crc32fast::Hasher::new();
    crc.update(&bytes[4..9]);
    crc.update(payload);
    bytes.extend_from_slice(&crc.finalize().to_le_bytes());
    bytes.extend_from_slice(payload);
    bytes
}

pub fn check(data: &[u8]) {
    let mut input = Input::new(data);
    match input.byte() % 4 {
        0 => {
            let max = MAXES[input.below(MAXES.len())];
            decode(input.rest(), max);
        }
        1 => {
            let max = MAXES[input.below(MAXES.len())];
            decode(&framed(1, input.rest()), max);
        }
        2 => build(&mut input),
        _ => {
            let max = MAXES[input.below(MAXES.len())];
            decode(&framed(2, input.rest()), max);
        }
    }
}

pub fn decode(bytes: &[u8], max: u64) {
    let decoded = Record::decode(bytes, max);
    let owned = Record::decode_owned(bytes.to_vec(), max);
    let meta = Record::read_meta(bytes);
    let record = match (decoded, owned) {
        (Ok(record), Ok(same)) => {
            assert_eq!(record, same);
            record
        }
        (Err(e), Err(f)) => {
            assert_eq!(
                (e.kind(), f.kind()),
                (ErrorKind::Corrupt, ErrorKind::Corrupt),
                "{e} / {f}"
            );
            return;
        }
        (a, b) => panic!("the decoders disagree: {a:?} / {b:?}"),
    };
    assert!(bytes.len() as u64 <= max.min(MAX_RECORD_BYTES) + HEADER_LEN as u64);
    assert_eq!(meta.ok().flatten().as_ref(), Some(&record.meta));

    let keys: Vec<&str> = record.keys().collect();
    assert!(
        keys.windows(2).all(|w| w[0] < w[1]),
        "keys in order, once: {keys:?}"
    );
    assert_eq!(record.len(), keys.len());
    assert_eq!(record.is_empty(), keys.is_empty());
    let mut held = 0;
    for key in &keys {
        assert!(record.contains(key));
        held += key.len() + record.value_len(key).expect("a value");
        values_read_or_fail_as_decode(&record, key);
    }
    assert!(held <= bytes.len());

    let encoded = record.encode().expect("a decoded record encodes");
    // A value carried over from version 1 gains its tag, and its length may take 2 bytes more.
    let carried = if bytes[4] == 1 { 3 * keys.len() } else { 0 };
    assert!(
        encoded.len() <= bytes.len() + carried,
        "the encoding is the shortest"
    );
    let again = Record::decode(&encoded, u64::MAX).expect("its own encoding decodes");
    assert_eq!(again, record);
    assert_eq!(again.encode().expect("encodes"), encoded);
    refuses_damage(&encoded, &record.meta);
}

/// The value under `key` read as a few types: each gives it or an error of kind `Decode`.
fn values_read_or_fail_as_decode(record: &Record, key: &str) {
    fn check<T: serde::de::DeserializeOwned>(record: &Record, key: &str) {
        match record.get::<T>(key) {
            Ok(value) => assert!(value.is_some(), "{key:?} is there"),
            Err(e) => assert_eq!(e.kind(), ErrorKind::Decode, "{e}"),
        }
    }
    check::<u64>(record, key);
    check::<i8>(record, key);
    check::<String>(record, key);
    check::<Vec<u8>>(record, key);
    check::<Vec<Vec<Option<String>>>>(record, key);
    check::<BTreeMap<String, (bool, f64)>>(record, key);
}

/// Every truncation of `encoded` is corrupt, and shows `meta` or nothing; flipped bits are
/// caught.
fn refuses_damage(encoded: &[u8], meta: &Meta) {
    for cut in 0..encoded.len() {
        let prefix = &encoded[..cut];
        let err = Record::decode(prefix, u64::MAX).expect_err("a truncated record");
        assert_eq!(err.kind(), ErrorKind::Corrupt);
        if cut >= HEADER_LEN {
            match Record::read_meta(prefix) {
                Ok(None) => {}
                Ok(Some(read)) => assert_eq!(&read, meta, "at {cut}"),
                Err(e) => panic!("a prefix of {cut} bytes: {e}"),
            }
        }
    }
    let step = (encoded.len() / 7).max(1);
    for at in (0..encoded.len()).step_by(step) {
        for bit in [0, 3, 7] {
            let mut bad = encoded.to_vec();
            bad[at] ^= 1 << bit;
            let err = Record::decode(&bad, u64::MAX).expect_err("a flipped bit");
            assert_eq!(err.kind(), ErrorKind::Corrupt);
        }
    }
}

fn key(input: &mut Input<'_>) -> String {
    match input.byte() {
        k @ 0..=200 => ["a", "b", "c", "pso.x", ""][usize::from(k) % 5].to_owned(),
        _ => String::from_utf8_lossy(input.chunk()).into_owned(),
    }
}

fn option(input: &mut Input<'_>) -> Option<u64> {
    input.bool().then(|| input.u64())
}

pub fn build(input: &mut Input<'_>) {
    let mut meta = Meta::new(input.u64());
    meta.last_access = input.u64();
    meta.deadline = option(input);
    meta.max_idle = option(input);
    meta.client_addr = input
        .bool()
        .then(|| String::from_utf8_lossy(input.chunk()).into_owned());
    let mut start = Record::new(meta);
    let mut model: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for _ in 0..input.below(6) {
        let (key, value) = (key(input), input.chunk().to_vec());
        start.set(&key, &value).expect("bytes encode");
        model.insert(key, value);
    }
    let bytes = start.encode().expect("encodes");
    let mut record = Record::decode(&bytes, u64::MAX).expect("decodes");
    assert_eq!(record, start);
    decode(&bytes, u64::MAX);
    while !input.is_empty() {
        match input.byte() % 4 {
            0 | 1 => {
                let (key, value) = (key(input), input.chunk().to_vec());
                record.set(&key, &value).expect("bytes encode");
                model.insert(key, value);
            }
            2 => {
                let key = key(input);
                assert_eq!(record.remove(&key), model.remove(&key).is_some(), "{key:?}");
            }
            _ => {
                record.clear();
                model.clear();
            }
        }
    }
    let keys: Vec<&str> = record.keys().collect();
    assert_eq!(keys, model.keys().map(String::as_str).collect::<Vec<_>>());
    for (key, value) in &model {
        assert_eq!(
            record.get::<Vec<u8>>(key).expect("bytes"),
            Some(value.clone()),
            "{key:?}"
        );
    }
    let back = Record::decode(&record.encode().expect("encodes"), u64::MAX).expect("decodes");
    assert_eq!(back, record);
    for (key, value) in &model {
        assert_eq!(
            back.get::<Vec<u8>>(key).expect("bytes"),
            Some(value.clone()),
            "{key:?}"
        );
    }
}
