//! FastCGI records: a parser that never panics and says "complete" or "need more bytes", and
//! the writers for what a responder sends.
//!
//! Every length is read into a wide type and checked against the bytes actually held before
//! anything is sliced or allocated (libfcgi's CVE-2025-23016 was an overflow right here).

use std::fmt;

/// The only protocol version.
pub const VERSION: u8 = 1;
/// A record's fixed header.
pub const HEADER_LEN: usize = 8;
/// The most content one record carries.
pub const MAX_CONTENT: usize = 65_535;
/// The most bytes one record takes: its header, the most content and the most padding.
pub const MAX_RECORD: usize = HEADER_LEN + MAX_CONTENT + 255;

/// Record types (FastCGI 1.0, §8).
pub mod kind {
    /// Starts a request.
    pub const BEGIN_REQUEST: u8 = 1;
    /// The web server gives up on a request.
    pub const ABORT_REQUEST: u8 = 2;
    /// The application ends a request.
    pub const END_REQUEST: u8 = 3;
    /// Name-value pairs: the request's environment.
    pub const PARAMS: u8 = 4;
    /// The request body.
    pub const STDIN: u8 = 5;
    /// The response.
    pub const STDOUT: u8 = 6;
    /// The application's log lines for this request.
    pub const STDERR: u8 = 7;
    /// Filter data (the FILTER role, which pso does not play).
    pub const DATA: u8 = 8;
    /// A management query.
    pub const GET_VALUES: u8 = 9;
    /// The answer to a management query.
    pub const GET_VALUES_RESULT: u8 = 10;
    /// The answer to a management record of an unknown type.
    pub const UNKNOWN_TYPE: u8 = 11;
}

/// The role a BEGIN_REQUEST asks for; pso is a responder only.
pub const ROLE_RESPONDER: u16 = 1;
/// BEGIN_REQUEST flag: keep the connection open after the request.
pub const FLAG_KEEP_CONN: u8 = 1;

/// END_REQUEST protocol statuses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum EndStatus {
    /// The request ran (whatever its HTTP status).
    RequestComplete = 0,
    /// A second request on a connection that carries one at a time.
    CantMultiplex = 1,
    /// Too busy.
    Overloaded = 2,
    /// A role other than responder.
    UnknownRole = 3,
}

/// One record as it lies in a buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record<'a> {
    /// The record type (see [`kind`]).
    pub kind: u8,
    /// The request it belongs to; 0 for management records.
    pub request_id: u16,
    /// The content, padding removed.
    pub content: &'a [u8],
}

/// What the parser made of the bytes so far.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status<T> {
    /// A whole item, and how many bytes it took (padding included).
    Complete(T, usize),
    /// Not enough bytes yet; nothing is consumed.
    Partial,
}

/// A peer that does not speak FastCGI 1.0 as a web server must: the connection is closed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProtocolError(pub String);

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FastCGI protocol error: {}", self.0)
    }
}

impl std::error::Error for ProtocolError {}

fn protocol_error<T>(why: impl Into<String>) -> Result<T, ProtocolError> {
    Err(ProtocolError(why.into()))
}

/// Parses the record at the start of `bytes`.
///
/// ```
/// use pso::fastcgi::record::{parse, Status, kind};
/// let bytes = [1, kind::STDIN, 0, 1, 0, 2, 1, 0, b'h', b'i', 0, 9];
/// let Status::Complete(record, used) = parse(&bytes)? else { panic!() };
/// assert_eq!((record.kind, record.request_id, record.content, used), (kind::STDIN, 1, &b"hi"[..], 11));
/// assert_eq!(parse(&bytes[..10])?, Status::Partial);
/// assert!(parse(&[2, 1, 0, 1, 0, 0, 0, 0]).is_err(), "version 2");
/// # Ok::<(), pso::fastcgi::record::ProtocolError>(())
/// ```
pub fn parse(bytes: &[u8]) -> Result<Status<Record<'_>>, ProtocolError> {
    let Some(header) = bytes.get(..HEADER_LEN) else {
        // Even a partial header can be told to be of the wrong version.
        if bytes.first().is_some_and(|&v| v != VERSION) {
            return protocol_error(format!("version {}", bytes[0]));
        }
        return Ok(Status::Partial);
    };
    if header[0] != VERSION {
        return protocol_error(format!("version {}", header[0]));
    }
    let content_len = usize::from(u16::from_be_bytes([header[4], header[5]]));
    let padding = usize::from(header[6]);
    let total = HEADER_LEN + content_len + padding;
    if bytes.len() < total {
        return Ok(Status::Partial);
    }
    Ok(Status::Complete(
        Record {
            kind: header[1],
            request_id: u16::from_be_bytes([header[2], header[3]]),
            content: &bytes[HEADER_LEN..HEADER_LEN + content_len],
        },
        total,
    ))
}

/// The body of a BEGIN_REQUEST.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Begin {
    /// The role asked for.
    pub role: u16,
    /// Whether the connection stays open after the request.
    pub keep_conn: bool,
}

/// Reads a BEGIN_REQUEST body: exactly 8 bytes.
pub fn parse_begin(content: &[u8]) -> Result<Begin, ProtocolError> {
    match content {
        [role_hi, role_lo, flags, _, _, _, _, _] => Ok(Begin {
            role: u16::from_be_bytes([*role_hi, *role_lo]),
            keep_conn: flags & FLAG_KEEP_CONN != 0,
        }),
        _ => protocol_error(format!("BEGIN_REQUEST of {} bytes, not 8", content.len())),
    }
}

/// Caps on what one request's PARAMS may hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParamLimits {
    /// All PARAMS content together.
    pub total_bytes: usize,
    /// Name-value pairs.
    pub pairs: usize,
    /// One name.
    pub name_bytes: usize,
    /// One value.
    pub value_bytes: usize,
}

impl Default for ParamLimits {
    fn default() -> ParamLimits {
        ParamLimits {
            // nginx and mod_fcgid send at most one record's worth (65,535 bytes); twice that
            // leaves room for others, and bounds what a connection holds before its request
            // starts (with one record, 192 KiB).
            total_bytes: 128 * 1024,
            pairs: 1_000,
            name_bytes: 1024,
            value_bytes: 64 * 1024,
        }
    }
}

/// One name-value length: one byte with the high bit clear, else four bytes big-endian with
/// the high bit masked.
fn pair_length(bytes: &[u8], at: usize) -> Option<(usize, usize)> {
    let first = *bytes.get(at)?;
    if first & 0x80 == 0 {
        return Some((usize::from(first), at + 1));
    }
    let four = bytes.get(at..at.checked_add(4)?)?;
    let value = u32::from_be_bytes([four[0] & 0x7f, four[1], four[2], four[3]]);
    Some((usize::try_from(value).ok()?, at + 4))
}

/// One name-value pair, borrowed from the PARAMS stream.
pub type Pair<'a> = (&'a [u8], &'a [u8]);

/// Splits a whole PARAMS stream (the contents of every PARAMS record of a request, joined, so
/// a pair may straddle records) into name-value pairs, within `limits`.
///
/// Names and values are bytes: nothing here assumes UTF-8.
///
/// ```
/// use pso::fastcgi::record::{parse_params, ParamLimits};
/// let stream = [&[11u8, 2][..], b"SCRIPT_NAMEhi", &[0, 0]].concat();
/// let pairs = parse_params(&stream, ParamLimits::default())?;
/// assert_eq!(pairs, [(&b"SCRIPT_NAME"[..], &b"hi"[..]), (&b""[..], &b""[..])]);
/// assert!(parse_params(&[0x80, 0, 0, 5, 0], ParamLimits::default()).is_err(), "cut short");
/// # Ok::<(), pso::fastcgi::record::ProtocolError>(())
/// ```
pub fn parse_params(stream: &[u8], limits: ParamLimits) -> Result<Vec<Pair<'_>>, ProtocolError> {
    if stream.len() > limits.total_bytes {
        return protocol_error(format!(
            "PARAMS of {} bytes, more than {}",
            stream.len(),
            limits.total_bytes
        ));
    }
    let mut pairs = Vec::new();
    let mut at = 0;
    while at < stream.len() {
        if pairs.len() == limits.pairs {
            return protocol_error(format!("more than {} PARAMS pairs", limits.pairs));
        }
        let cut = || ProtocolError("a PARAMS pair runs past the end of the stream".into());
        let (name_len, next) = pair_length(stream, at).ok_or_else(cut)?;
        let (value_len, next) = pair_length(stream, next).ok_or_else(cut)?;
        if name_len > limits.name_bytes || value_len > limits.value_bytes {
            return protocol_error(format!(
                "a PARAMS name of {name_len} or value of {value_len} bytes is over the limit"
            ));
        }
        let name_end = next.checked_add(name_len).ok_or_else(cut)?;
        let value_end = name_end.checked_add(value_len).ok_or_else(cut)?;
        let (Some(name), Some(value)) =
            (stream.get(next..name_end), stream.get(name_end..value_end))
        else {
            return Err(cut());
        };
        pairs.push((name, value));
        at = value_end;
    }
    Ok(pairs)
}

/// Appends one record of `kind` for `request_id` holding `content` (at most [`MAX_CONTENT`]),
/// padded to a multiple of 8.
pub fn write_record(out: &mut Vec<u8>, kind: u8, request_id: u16, content: &[u8]) {
    let len = content.len().min(MAX_CONTENT);
    let padding = (8 - len % 8) % 8;
    let id = request_id.to_be_bytes();
    let len_bytes = (len as u16).to_be_bytes();
    out.extend_from_slice(&[
        VERSION,
        kind,
        id[0],
        id[1],
        len_bytes[0],
        len_bytes[1],
        padding as u8,
        0,
    ]);
    out.extend_from_slice(&content[..len]);
    out.extend_from_slice(&[0u8; 7][..padding]);
}

/// Appends `data` as a stream of `kind` records, split at [`MAX_CONTENT`]; nothing for no data.
///
/// ```
/// use pso::fastcgi::record::{write_stream, parse, Status, kind};
/// let mut out = Vec::new();
/// write_stream(&mut out, kind::STDOUT, 1, &vec![b'x'; 70_000]);
/// let Status::Complete(first, used) = parse(&out).unwrap() else { panic!() };
/// assert_eq!((first.content.len(), used % 8), (65_535, 0));
/// let Status::Complete(second, _) = parse(&out[used..]).unwrap() else { panic!() };
/// assert_eq!(second.content.len(), 70_000 - 65_535);
/// ```
pub fn write_stream(out: &mut Vec<u8>, kind: u8, request_id: u16, data: &[u8]) {
    for chunk in data.chunks(MAX_CONTENT) {
        write_record(out, kind, request_id, chunk);
    }
}

/// Appends an END_REQUEST.
pub fn write_end(out: &mut Vec<u8>, request_id: u16, app_status: u32, status: EndStatus) {
    let app = app_status.to_be_bytes();
    write_record(
        out,
        kind::END_REQUEST,
        request_id,
        &[app[0], app[1], app[2], app[3], status as u8, 0, 0, 0],
    );
}

/// Appends the UNKNOWN_TYPE answer to a management record of type `unknown`.
pub fn write_unknown_type(out: &mut Vec<u8>, unknown: u8) {
    write_record(out, kind::UNKNOWN_TYPE, 0, &[unknown, 0, 0, 0, 0, 0, 0, 0]);
}

/// Appends one name-value pair as PARAMS and GET_VALUES carry them: each length in one byte
/// below 128, else in four with the high bit set. A client (such as `pso serve --fastcgi`)
/// builds its PARAMS stream with it.
///
/// ```
/// use pso::fastcgi::record::{parse_params, write_pair, ParamLimits};
/// let mut stream = Vec::new();
/// write_pair(&mut stream, b"QUERY_STRING", b"a=1");
/// write_pair(&mut stream, b"HTTP_COOKIE", &vec![b'x'; 300]);
/// let pairs = parse_params(&stream, ParamLimits::default()).unwrap();
/// assert_eq!(pairs[0], (&b"QUERY_STRING"[..], &b"a=1"[..]));
/// assert_eq!(pairs[1].1.len(), 300);
/// ```
pub fn write_pair(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    for len in [name.len(), value.len()] {
        match u8::try_from(len) {
            Ok(short) if short < 128 => out.push(short),
            // Lengths are at most 2^31 - 1; longer ones cannot be said, and nothing sends them.
            _ => out.extend_from_slice(&(len.min(0x7fff_ffff) as u32 | 0x8000_0000).to_be_bytes()),
        }
    }
    out.extend_from_slice(name);
    out.extend_from_slice(value);
}

/// What a GET_VALUES query may learn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capacities {
    /// `FCGI_MAX_CONNS`: connections accepted at once.
    pub max_conns: usize,
    /// `FCGI_MAX_REQS`: requests handled at once.
    pub max_reqs: usize,
}

/// Appends the GET_VALUES_RESULT for a GET_VALUES `query`: each of the three known names at
/// most once, however often the query repeats it, and nothing for unknown names, so the reply
/// is bounded whatever the query holds. A query that does not parse gets an empty reply.
///
/// ```
/// use pso::fastcgi::record::{write_values, Capacities, parse, Status};
/// let mut query = Vec::new();
/// for _ in 0..10 { query.extend_from_slice(b"\x0e\x00FCGI_MAX_CONNS"); }
/// let mut out = Vec::new();
/// write_values(&mut out, &query, Capacities { max_conns: 100, max_reqs: 8 });
/// let Status::Complete(reply, _) = parse(&out).unwrap() else { panic!() };
/// assert_eq!(reply.content, b"\x0e\x03FCGI_MAX_CONNS100");
/// ```
pub fn write_values(out: &mut Vec<u8>, query: &[u8], capacities: Capacities) {
    let limits = ParamLimits {
        total_bytes: MAX_CONTENT,
        pairs: 1_000,
        name_bytes: MAX_CONTENT,
        value_bytes: MAX_CONTENT,
    };
    let asked = parse_params(query, limits).unwrap_or_default();
    let known: [(&[u8], String); 3] = [
        (b"FCGI_MAX_CONNS", capacities.max_conns.to_string()),
        (b"FCGI_MAX_REQS", capacities.max_reqs.to_string()),
        (b"FCGI_MPXS_CONNS", "0".to_owned()),
    ];
    let mut content = Vec::new();
    for (name, value) in &known {
        if asked.iter().any(|(asked_name, _)| asked_name == name) {
            write_pair(&mut content, name, value.as_bytes());
        }
    }
    write_record(out, kind::GET_VALUES_RESULT, 0, &content);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pair(name: &[u8], value: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        write_pair(&mut out, name, value);
        out
    }

    #[test]
    fn records_table() {
        // (bytes, expected): Some((kind, id, content, used)) or None for Partial.
        type Expected = Option<(u8, u16, &'static [u8], usize)>;
        let cases: &[(&[u8], Expected)] = &[
            (&[], None),
            (&[1], None),
            (&[1, 1, 0, 1, 0, 8, 0], None),
            (&[1, 1, 0, 1, 0, 8, 0, 0, 0, 1, 1, 0, 0, 0, 0], None),
            (
                &[1, 1, 0, 1, 0, 8, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0],
                Some((1, 1, &[0, 1, 1, 0, 0, 0, 0, 0], 16)),
            ),
            (&[1, 5, 0xff, 0xff, 0, 0, 0, 0], Some((5, 0xffff, &[], 8))),
            (&[1, 5, 0, 1, 0, 1, 7, 0, b'x'], None),
            (
                &[1, 5, 0, 1, 0, 1, 7, 0, b'x', 0, 0, 0, 0, 0, 0, 0],
                Some((5, 1, b"x", 16)),
            ),
            (&[1, 99, 0, 0, 0, 0, 0, 0, 1, 2], Some((99, 0, &[], 8))),
        ];
        for (bytes, expected) in cases {
            let got = parse(bytes).unwrap();
            match expected {
                None => assert_eq!(got, Status::Partial, "{bytes:?}"),
                Some((kind, id, content, used)) => assert_eq!(
                    got,
                    Status::Complete(
                        Record {
                            kind: *kind,
                            request_id: *id,
                            content
                        },
                        *used
                    ),
                    "{bytes:?}"
                ),
            }
        }
        for bad in [
            &[2u8][..],
            &[0, 1, 0, 1, 0, 0, 0, 0],
            &[2, 1, 0, 1, 0, 8, 0, 0],
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn begin_must_be_eight_bytes() {
        assert_eq!(
            parse_begin(&[0, 1, 1, 0, 0, 0, 0, 0]).unwrap(),
            Begin {
                role: 1,
                keep_conn: true
            }
        );
        assert!(parse_begin(&[0, 1, 0, 0, 0, 0, 0]).is_err());
        assert!(parse_begin(&[0; 9]).is_err());
    }

    #[test]
    fn params_table() {
        let limits = ParamLimits::default();
        let long = vec![b'v'; 300];
        let stream = [
            pair(b"A", b"1"),
            pair(b"LONG", &long),
            pair(b"", b""),
            pair(b"\xff", b"\x00\r\n"),
        ]
        .concat();
        let pairs = parse_params(&stream, limits).unwrap();
        assert_eq!(pairs.len(), 4);
        assert_eq!(pairs[1], (&b"LONG"[..], &long[..]));
        assert_eq!(pairs[3], (&b"\xff"[..], &b"\x00\r\n"[..]));
        let bad: &[&[u8]] = &[
            &[5],
            &[5, 1, b'a'],
            &[0x80, 0, 0],
            &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
            &[0x7f, 0x7f],
        ];
        for bytes in bad {
            assert!(parse_params(bytes, limits).is_err(), "{bytes:?}");
        }
        // 31-bit lengths claimed in a few bytes: refused before anything is allocated.
        assert!(parse_params(&[0xff, 0xff, 0xff, 0xff, 1, b'x'], limits).is_err());
        // 300,000 empty pairs: over the pair and byte limits, refused, not recursed over.
        assert!(parse_params(&vec![0u8; 600_000], limits).is_err());
        let many = vec![0u8; 2 * 1_001];
        assert!(parse_params(&many, limits).is_err());
        assert_eq!(parse_params(&many[..2_000], limits).unwrap().len(), 1_000);
        let big_name = pair(&vec![b'n'; 1025], b"");
        assert!(parse_params(&big_name, limits).is_err());
    }

    #[test]
    fn parameters_may_take_128_kib() {
        let limits = ParamLimits::default();
        // Two pairs of 6 + 65,530 bytes each: exactly 128 KiB.
        let value = vec![b'v'; 65_530];
        let stream = [pair(b"A", &value), pair(b"B", &value)].concat();
        assert_eq!(stream.len(), 128 * 1024);
        assert_eq!(parse_params(&stream, limits).unwrap().len(), 2);
        let over = [&stream[..], &pair(b"", b"")].concat();
        assert!(parse_params(&over, limits).is_err());
    }

    #[test]
    fn get_values_repeated_names_are_answered_once() {
        let mut query = Vec::new();
        for _ in 0..10 {
            for name in [
                &b"FCGI_MAX_CONNS"[..],
                b"FCGI_MAX_REQS",
                b"FCGI_MPXS_CONNS",
                b"OTHER",
            ] {
                query.extend_from_slice(&pair(name, b""));
            }
        }
        let mut out = Vec::new();
        write_values(
            &mut out,
            &query,
            Capacities {
                max_conns: 4096,
                max_reqs: 16,
            },
        );
        let Status::Complete(record, used) = parse(&out).unwrap() else {
            panic!()
        };
        assert_eq!(used, out.len());
        assert_eq!(record.kind, kind::GET_VALUES_RESULT);
        let pairs = parse_params(record.content, ParamLimits::default()).unwrap();
        assert_eq!(
            pairs,
            [
                (&b"FCGI_MAX_CONNS"[..], &b"4096"[..]),
                (&b"FCGI_MAX_REQS"[..], &b"16"[..]),
                (&b"FCGI_MPXS_CONNS"[..], &b"0"[..])
            ]
        );
    }

    proptest! {
        #[test]
        fn parsing_any_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
            if let Ok(Status::Complete(record, used)) = parse(&bytes) {
                prop_assert!(used <= bytes.len() && record.content.len() + HEADER_LEN <= used);
            }
            let _ = parse_begin(&bytes);
            let limits = ParamLimits { total_bytes: 256, pairs: 16, name_bytes: 64, value_bytes: 64 };
            if let Ok(pairs) = parse_params(&bytes, limits) {
                prop_assert!(pairs.len() <= 16);
                let held: usize = pairs.iter().map(|(n, v)| n.len() + v.len()).sum();
                prop_assert!(held <= bytes.len(), "pairs borrow the stream, never more");
            }
            let mut out = Vec::new();
            write_values(&mut out, &bytes, Capacities { max_conns: 1, max_reqs: 1 });
            prop_assert!(out.len() <= HEADER_LEN + 64);
        }

        #[test]
        fn written_records_parse_back(kind in 1u8..12, id: u16, data in prop::collection::vec(any::<u8>(), 0..70_000)) {
            let mut out = Vec::new();
            write_stream(&mut out, kind, id, &data);
            let mut at = 0;
            let mut back = Vec::new();
            while at < out.len() {
                let Status::Complete(record, used) = parse(&out[at..]).unwrap() else { panic!("partial") };
                prop_assert_eq!((record.kind, record.request_id, used % 8), (kind, id, 0));
                back.extend_from_slice(record.content);
                at += used;
            }
            prop_assert_eq!(back, data);
        }

        #[test]
        fn pairs_round_trip(pairs in prop::collection::vec((prop::collection::vec(any::<u8>(), 0..200), prop::collection::vec(any::<u8>(), 0..300)), 0..20)) {
            let stream: Vec<u8> = pairs.iter().flat_map(|(n, v)| pair(n, v)).collect();
            let parsed = parse_params(&stream, ParamLimits::default()).unwrap();
            let parsed: Vec<(Vec<u8>, Vec<u8>)> = parsed.into_iter().map(|(n, v)| (n.to_vec(), v.to_vec())).collect();
            prop_assert_eq!(parsed, pairs);
        }
    }
}
