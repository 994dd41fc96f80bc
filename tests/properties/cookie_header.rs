//! The `Cookie` header: which session ids it offers under one name.
//!
//! Input: a choice of cookie name, then the header's bytes, where `0xFF k` stands for one of
//! four well-formed ids, `0xFE k` for `name=<that id>` and `0xFD` for `name=<a fresh id>` (a
//! fuzzer seldom spells 48 hex digits by chance). Checked against a plain reading of RFC 6265
//! §5.4 and pso's id grammar written here, then: any order of the cookies offers the same
//! ids; other cookies in front change nothing; the ids printed back as a header parse again
//! to themselves.

use pso::cookies::{MAX_OFFERED, offered_ids};

use crate::input::Input;

const NAMES: [&str; 4] = ["app", "__Host-app", "a", "app.form"];
pub const IDS: [&str; 4] = [
    "0123456789abcdef0123456789abcdef0123456789abcdef",
    "fedcba9876543210fedcba9876543210fedcba9876543210",
    "000000000000000000000000000000000000000000000000",
    "ffffffffffffffffffffffffffffffffffffffffffffffff",
];

pub fn check(data: &[u8]) {
    let mut input = Input::new(data);
    let name = NAMES[input.below(NAMES.len())];
    let header = expand(input.rest(), name);
    check_header(&header, name);
}

/// The header the input stands for.
pub fn expand(raw: &[u8], name: &str) -> Vec<u8> {
    let mut header = Vec::with_capacity(raw.len());
    let mut fresh = 0u64;
    let mut bytes = raw.iter().copied();
    while let Some(b) = bytes.next() {
        match b {
            0xFF | 0xFE => {
                let id = IDS[usize::from(bytes.next().unwrap_or(0)) % IDS.len()];
                if b == 0xFE {
                    header.extend_from_slice(format!("{name}=").as_bytes());
                }
                header.extend_from_slice(id.as_bytes());
            }
            0xFD => {
                fresh += 1;
                header.extend_from_slice(format!("{name}={fresh:048x}").as_bytes());
            }
            other => header.push(other),
        }
    }
    header
}

/// What `header` offers under `name`, read the plain way: `(ids, too_many, malformed)`.
fn reference(header: &[u8], name: &str) -> (Vec<String>, bool, usize) {
    fn trim(mut s: &[u8]) -> &[u8] {
        while let [b' ' | b'\t', rest @ ..] = s {
            s = rest;
        }
        while let [rest @ .., b' ' | b'\t'] = s {
            s = rest;
        }
        s
    }
    let is_id =
        |v: &[u8]| v.len() == 48 && v.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    let mut ids: Vec<String> = Vec::new();
    let mut malformed = 0;
    for pair in header.split(|&b| b == b';') {
        let Some(eq) = pair.iter().position(|&b| b == b'=') else {
            continue;
        };
        if trim(&pair[..eq]) != name.as_bytes() {
            continue;
        }
        let mut value = trim(&pair[eq + 1..]);
        if value.len() >= 2 && value[0] == b'"' && value[value.len() - 1] == b'"' {
            value = &value[1..value.len() - 1];
        }
        if !is_id(value) {
            malformed += 1;
            continue;
        }
        let id = String::from_utf8(value.to_vec()).expect("hex is UTF-8");
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    if ids.len() > MAX_OFFERED {
        (Vec::new(), true, malformed)
    } else {
        (ids, false, malformed)
    }
}

pub fn check_header(header: &[u8], name: &str) {
    let offered = offered_ids(header, name);
    let ids: Vec<String> = offered.ids.iter().map(|id| id.to_string()).collect();
    let expected = reference(header, name);
    assert_eq!((ids.clone(), offered.too_many, offered.malformed), expected);

    // Order carries nothing: the cookies backwards offer the same ids.
    let mut pairs: Vec<&[u8]> = header.split(|&b| b == b';').collect();
    pairs.reverse();
    let backwards = offered_ids(&pairs.join(&b';'), name);
    let mut sorted = ids.clone();
    sorted.sort();
    let mut sorted_back: Vec<String> = backwards.ids.iter().map(|id| id.to_string()).collect();
    sorted_back.sort();
    assert_eq!(sorted_back, sorted);
    assert_eq!(
        (backwards.too_many, backwards.malformed),
        (offered.too_many, offered.malformed)
    );

    // No other cookie in front can hide or add one.
    let behind = [&b"zz=\xff\x00\"; \t"[..], header].concat();
    assert_eq!(offered_ids(&behind, name), offered);

    // Printed back as a header, plain and quoted, the ids read as themselves.
    if !offered.too_many {
        for quote in ["", "\""] {
            let printed: Vec<String> = ids
                .iter()
                .map(|id| format!("{name}={quote}{id}{quote}"))
                .collect();
            let again = offered_ids(printed.join("; ").as_bytes(), name);
            assert_eq!(
                (&again.ids, again.too_many, again.malformed),
                (&offered.ids, false, 0)
            );
        }
    }
}
