//! The fuzz targets' properties (`fuzz/`, see `docs/fuzzing.md`) as bounded proptest cases,
//! so that every `cargo test` runs them.
//!
//! Each module here is one target's check, shared word for word with the target: the target
//! feeds it the fuzzer's bytes, these tests feed it bytes built to reach its structure (ids in
//! cookies, records with valid checksums, heads that parse) within a few dozen cases. The
//! targets behind the `fuzzing` feature (the slot reader, the choice among candidates) run
//! with `--all-features`, as CI does; the slot reader's own properties are in
//! `src/store/file/layout.rs` and run always.

mod cgi_response;
mod input;

#[cfg(feature = "fuzzing")]
mod adoption_decide;
mod candidate_choice;
mod config;
mod cookie_header;
mod expiry;
mod fastcgi_params;
mod fastcgi_records;
#[cfg(feature = "fuzzing")]
mod file_layout;
mod form_body;
mod record_decode;
mod serve_request_head;

use proptest::prelude::*;

/// Bytes made of pieces, each drawn from `piece`.
fn joined(piece: impl Strategy<Value = Vec<u8>>, most: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(piece, 0..most).prop_map(|pieces| pieces.concat())
}

/// One of a few literal byte strings.
fn literal(options: &'static [&'static [u8]]) -> impl Strategy<Value = Vec<u8>> {
    prop::sample::select(options).prop_map(<[u8]>::to_vec)
}

fn junk(most: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..most)
}

/// A few bytes in front of `rest`.
fn after(head: Vec<u8>, rest: Vec<u8>) -> Vec<u8> {
    [head, rest].concat()
}

fn cookie_header_input() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        literal(&[
            b"app=",
            b"__Host-app=",
            b"a=",
            b"app.form=",
            b"; ",
            b";",
            b"=",
            b"\"",
            b" ",
            b"\t",
            b"x=1",
            b"App="
        ]),
        (0xFDu8..=0xFF, any::<u8>()).prop_map(|(marker, k)| vec![marker, k]),
        junk(6),
    ];
    (any::<u8>(), joined(piece, 24)).prop_map(|(name, header)| after(vec![name], header))
}

fn candidate_choice_input() -> impl Strategy<Value = Vec<u8>> {
    // Mostly whole cookies naming the sessions, as browsers and attackers send them.
    let cookie = prop_oneof![
        6 => (0xF8u8..=0xFF).prop_map(|marker| vec![marker]),
        1 => (0xF0u8..=0xF7).prop_map(|marker| [&b"app=\""[..], &[marker], b"\""].concat()),
        1 => literal(&[b"x=1", b"app=junk", b"app=", b"=", b" "]),
        1 => junk(4),
    ];
    let separator =
        prop_oneof![8 => Just(b"; ".to_vec()), 2 => Just(b";".to_vec()), 1 => Just(Vec::new())];
    let piece = (cookie, separator).prop_map(|(cookie, separator)| [cookie, separator].concat());
    (any::<u8>(), joined(piece, 6)).prop_map(|(shape, header)| after(vec![shape], header))
}

fn expiry_input() -> impl Strategy<Value = Vec<u8>> {
    let when = 0u64..253_402_300_800;
    let http = |secs: u64| {
        httpdate::fmt_http_date(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs))
    };
    prop_oneof![
        "[0-9smhdwMy()+*/ -]{0,24}".prop_map(|t| after(vec![0], t.into_bytes())),
        when.clone()
            .prop_map(move |s| after(vec![0], http(s).into_bytes())),
        ".{0,40}".prop_map(|t| after(vec![0], t.into_bytes())),
        // The HTTP form, with GMT (format 1) and without (format 0).
        when.clone()
            .prop_map(move |s| after(vec![1, 1], http(s).into_bytes())),
        when.prop_map(move |s| {
            let date = http(s);
            after(
                vec![1, 0],
                date.trim_end_matches(" GMT").as_bytes().to_vec(),
            )
        }),
        "[0-9]{4}-[01][0-9]-[0-3][0-9]( [0-2][0-9]:[0-5][0-9]:[0-5][0-9] [+-][0-2][0-9]{3})?"
            .prop_map(|t| after(vec![1, 3], t.into_bytes())),
        (any::<u8>(), ".{0,30}").prop_map(|(format, t)| after(vec![1, format], t.into_bytes())),
        "[0-9./% ]{0,12}".prop_map(|t| after(vec![2], t.into_bytes())),
    ]
}

fn config_input() -> impl Strategy<Value = Vec<u8>> {
    let variable = (any::<u8>(), "[0-9a-zA-Z*/+%. _-]{0,16}").prop_map(|(name, value)| {
        // 203 and up (3 in 4): a name of the input's own.
        let name = if name >= 200 { 203 } else { name };
        let mut bytes = vec![name];
        if name == 203 {
            bytes.extend_from_slice(&[8]);
            bytes.extend_from_slice(b"PSOSess_");
        }
        bytes.push(value.len() as u8);
        bytes.extend_from_slice(value.as_bytes());
        bytes
    });
    (0u8..12, prop::collection::vec(variable, 0..12))
        .prop_map(|(count, variables)| after(vec![count], variables.concat()))
}

fn fastcgi_records_input() -> impl Strategy<Value = Vec<u8>> {
    let record =
        (1u8..12, 0u16..3, junk(40), any::<u8>()).prop_map(|(kind, id, content, padding)| {
            let mut out = vec![1, kind];
            out.extend_from_slice(&id.to_be_bytes());
            out.extend_from_slice(&(content.len() as u16).to_be_bytes());
            out.extend_from_slice(&[padding % 9, 0]);
            out.extend_from_slice(&content);
            out.extend(std::iter::repeat_n(0, usize::from(padding % 9)));
            out
        });
    let params = (0u16..3, junk(30)).prop_map(|(id, content)| {
        let mut out = Vec::new();
        pso::fastcgi::record::write_record(&mut out, 4, id, &content);
        pso::fastcgi::record::write_record(&mut out, 4, id, &[]);
        out
    });
    (
        joined(prop_oneof![record, params], 8),
        junk(10),
        any::<prop::sample::Index>(),
    )
        .prop_map(|(stream, tail, cut)| {
            let whole = [stream, tail].concat();
            let keep = cut.index(whole.len() + 1);
            whole[..keep].to_vec()
        })
}

fn form_body_input() -> impl Strategy<Value = Vec<u8>> {
    let body = prop_oneof![
        "[a-z=&%+0-9]{0,60}".prop_map(String::into_bytes),
        (990usize..1010).prop_map(|n| "&a=1".repeat(n).into_bytes()),
        junk(60),
    ];
    (junk(3), body).prop_map(|(choices, body)| {
        let mut bytes = choices;
        bytes.resize(3, 0);
        after(bytes, body)
    })
}

fn serve_request_head_input() -> impl Strategy<Value = Vec<u8>> {
    let target = "/[a-z%./?=&0-9]{0,20}";
    let header = literal(&[
        b"Host: a\r\n",
        b"Host: b\r\n",
        b"Content-Length: 3\r\n",
        b"Content-Length: +3\r\n",
        b"Transfer-Encoding: chunked\r\n",
        b"X: \x01\r\n",
        b"X: caf\xc3\xa9 \t\r\n",
        b"Cookie: a=1; b=2\r\n",
        b" folded\r\n",
    ]);
    let head = (
        literal(&[b"GET", b"POST", b"HEAD", b"G T"]),
        target,
        literal(&[b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2"]),
        prop::collection::vec(header, 0..5),
        literal(&[b"\r\n", b"", b"\n"]),
        junk(8),
    )
        .prop_map(|(method, target, version, headers, end, body)| {
            [
                method,
                b" ".to_vec(),
                target.into_bytes(),
                b" ".to_vec(),
                version,
                b"\r\n".to_vec(),
                headers.concat(),
                end,
                body,
            ]
            .concat()
        });
    prop_oneof![
        (junk(6), head).prop_map(|(sizes, head)| {
            let mut bytes = vec![0, sizes.len() as u8];
            bytes.extend_from_slice(&sizes);
            after(bytes, head)
        }),
        "[a-z%./0-9]{0,24}".prop_map(|path| after(vec![1], path.into_bytes())),
    ]
}

/// A mode byte (the low bits choose the target's mode), then bytes.
fn moded(modes: u8, rest: impl Strategy<Value = Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    (0..modes, rest).prop_map(|(mode, rest)| after(vec![mode], rest))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn cookie_header(input in cookie_header_input()) {
        cookie_header::check(&input);
    }

    #[test]
    fn candidate_choice(input in candidate_choice_input()) {
        candidate_choice::check(&input);
    }

    #[cfg(feature = "fuzzing")]
    #[test]
    fn adoption_decide(input in junk(12)) {
        adoption_decide::check(&input);
    }

    #[test]
    fn expiry(input in expiry_input()) {
        expiry::check(&input);
    }

    #[test]
    fn config(input in config_input()) {
        config::check(&input);
    }

    #[test]
    fn record_decode(input in moded(4, junk(200))) {
        record_decode::check(&input);
    }

    #[cfg(feature = "fuzzing")]
    #[test]
    fn file_layout(input in moded(4, junk(300))) {
        file_layout::check(&input);
    }

    #[test]
    fn fastcgi_records(input in fastcgi_records_input()) {
        fastcgi_records::check(&input);
    }

    #[test]
    fn fastcgi_params(input in moded(255, junk(300))) {
        fastcgi_params::check(&input);
    }

    #[test]
    fn form_body(input in form_body_input()) {
        form_body::check(&input);
    }

    #[test]
    fn serve_request_head(input in serve_request_head_input()) {
        serve_request_head::check(&input);
    }
}
