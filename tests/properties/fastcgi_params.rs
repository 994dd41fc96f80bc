//! FastCGI name-value pairs (`parse_params`, `write_pair`): the request's environment.
//!
//! Input: a mode and limits, then either a PARAMS stream of any bytes or pairs to write.
//! Checked: nothing panics; what parses keeps within the limits and borrows no more than the
//! stream holds; written back with `write_pair` the pairs take no more bytes (one-byte lengths
//! where they fit) and parse to themselves; a stream cut between two pairs gives the pairs
//! before the cut; pairs written then parsed are the pairs written.

use pso::fastcgi::record::{ParamLimits, parse_params, write_pair};

use crate::input::Input;

pub fn check(data: &[u8]) {
    let mut input = Input::new(data);
    let mode = input.byte();
    let limits = if mode & 0x80 == 0 {
        ParamLimits::default()
    } else {
        ParamLimits {
            total_bytes: input.below(4096),
            pairs: input.below(64),
            name_bytes: input.below(300),
            value_bytes: input.below(300),
        }
    };
    if mode & 1 == 0 {
        stream(input.rest(), limits);
    } else {
        let mut pairs = Vec::new();
        while !input.is_empty() {
            let name = input.chunk().to_vec();
            // Some lengths need the four-byte form.
            let value = if input.bool() {
                vec![input.byte(); input.below(1000)]
            } else {
                input.chunk().to_vec()
            };
            pairs.push((name, value));
        }
        written(&pairs);
    }
}

pub fn stream(bytes: &[u8], limits: ParamLimits) {
    let Ok(pairs) = parse_params(bytes, limits) else {
        return;
    };
    assert!(bytes.len() <= limits.total_bytes);
    assert!(pairs.len() <= limits.pairs);
    let mut held = 0;
    for (name, value) in &pairs {
        assert!(name.len() <= limits.name_bytes && value.len() <= limits.value_bytes);
        held += name.len() + value.len();
    }
    assert!(held <= bytes.len());
    let mut again = Vec::new();
    let mut boundaries = Vec::new();
    for (name, value) in &pairs {
        write_pair(&mut again, name, value);
        boundaries.push(again.len());
    }
    assert!(
        again.len() <= bytes.len(),
        "written back longer than it came"
    );
    assert_eq!(parse_params(&again, limits).as_ref(), Ok(&pairs));
    for (i, &cut) in boundaries.iter().enumerate() {
        assert_eq!(
            parse_params(&again[..cut], limits).as_deref(),
            Ok(&pairs[..=i])
        );
    }
}

pub fn written(pairs: &[(Vec<u8>, Vec<u8>)]) {
    let mut bytes = Vec::new();
    for (name, value) in pairs {
        write_pair(&mut bytes, name, value);
    }
    let limits = ParamLimits {
        total_bytes: usize::MAX,
        pairs: usize::MAX,
        name_bytes: usize::MAX,
        value_bytes: usize::MAX,
    };
    let parsed = parse_params(&bytes, limits).expect("written pairs parse");
    let parsed: Vec<(Vec<u8>, Vec<u8>)> = parsed
        .into_iter()
        .map(|(n, v)| (n.to_vec(), v.to_vec()))
        .collect();
    assert_eq!(parsed, pairs);
}
