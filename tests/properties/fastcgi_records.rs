//! The FastCGI record stream: records parsed one after another from any bytes, as a
//! connection reads them (`pso::fastcgi::record`).
//!
//! Input: the bytes a web server sends. Checked, record by record until the bytes run out or
//! the stream is refused: a record is refused only for a version other than 1, and is
//! incomplete exactly when the bytes are fewer than its header says; a complete one takes
//! its header, content and padding, and every shorter prefix of it is incomplete; written
//! back with `write_record` it parses to the same record; a BEGIN_REQUEST body parses when it
//! has 8 bytes; a GET_VALUES query gets one bounded reply naming only known variables, each
//! once; the PARAMS of each request, joined, split into pairs within the limits or are
//! refused.

use std::collections::BTreeMap;

use pso::fastcgi::record::{
    Capacities, HEADER_LEN, ParamLimits, Status, kind, parse, parse_begin, parse_params,
    write_record, write_values,
};

pub fn check(data: &[u8]) {
    let mut at = 0;
    let mut params: BTreeMap<u16, Vec<u8>> = BTreeMap::new();
    while at < data.len() {
        let rest = &data[at..];
        let parsed = parse(rest);
        if rest[0] != 1 {
            assert!(parsed.is_err(), "version {} taken", rest[0]);
            return;
        }
        let record = match parsed.expect("version 1 is never refused") {
            Status::Partial => {
                let claimed = if rest.len() >= HEADER_LEN {
                    HEADER_LEN
                        + usize::from(u16::from_be_bytes([rest[4], rest[5]]))
                        + usize::from(rest[6])
                } else {
                    HEADER_LEN
                };
                assert!(
                    rest.len() < claimed,
                    "{} bytes of a record of {claimed} left unread",
                    rest.len()
                );
                return;
            }
            Status::Complete(record, used) => {
                let content_len = usize::from(u16::from_be_bytes([rest[4], rest[5]]));
                assert_eq!(used, HEADER_LEN + content_len + usize::from(rest[6]));
                assert_eq!(
                    (record.kind, record.request_id, record.content),
                    (
                        rest[1],
                        u16::from_be_bytes([rest[2], rest[3]]),
                        &rest[HEADER_LEN..HEADER_LEN + content_len]
                    )
                );
                for cut in [0, 1, HEADER_LEN - 1, HEADER_LEN, used - 1] {
                    if cut < used {
                        assert_eq!(
                            parse(&rest[..cut]),
                            Ok(Status::Partial),
                            "cut at {cut} of {used}"
                        );
                    }
                }
                let mut again = Vec::new();
                write_record(&mut again, record.kind, record.request_id, record.content);
                assert_eq!(again.len() % 8, 0);
                assert_eq!(parse(&again), Ok(Status::Complete(record, again.len())));
                at += used;
                record
            }
        };
        match record.kind {
            kind::BEGIN_REQUEST => {
                assert_eq!(
                    parse_begin(record.content).is_ok(),
                    record.content.len() == 8
                );
            }
            kind::GET_VALUES => get_values(record.content),
            kind::PARAMS if record.content.is_empty() => {
                let stream = params.remove(&record.request_id).unwrap_or_default();
                let limits = ParamLimits::default();
                if let Ok(pairs) = parse_params(&stream, limits) {
                    assert!(pairs.len() <= limits.pairs && stream.len() <= limits.total_bytes);
                }
            }
            kind::PARAMS => params
                .entry(record.request_id)
                .or_default()
                .extend_from_slice(record.content),
            _ => {}
        }
    }
}

fn get_values(query: &[u8]) {
    let mut out = Vec::new();
    write_values(
        &mut out,
        query,
        Capacities {
            max_conns: 4096,
            max_reqs: usize::MAX,
        },
    );
    let Ok(Status::Complete(reply, used)) = parse(&out) else {
        panic!("a reply that does not parse")
    };
    assert_eq!(
        (used, reply.kind, reply.request_id),
        (out.len(), kind::GET_VALUES_RESULT, 0)
    );
    let pairs = parse_params(reply.content, ParamLimits::default()).expect("the reply's pairs");
    let known: [&[u8]; 3] = [b"FCGI_MAX_CONNS", b"FCGI_MAX_REQS", b"FCGI_MPXS_CONNS"];
    assert!(pairs.len() <= 3);
    for (i, (name, _)) in pairs.iter().enumerate() {
        assert!(known.contains(name), "{name:?}");
        assert!(
            pairs[..i].iter().all(|(other, _)| other != name),
            "{name:?} twice"
        );
    }
}
