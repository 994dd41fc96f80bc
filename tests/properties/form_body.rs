//! Form bodies (`Request::form`, `form_value`), directly and through `Service` with
//! `PSOMaxBodyBytes`.
//!
//! Input: a content type, a `CONTENT_LENGTH` (the body's, shorter, longer, missing or not a
//! number), a `PSOMaxBodyBytes`, then the body. Checked: the request reads exactly
//! `CONTENT_LENGTH` bytes of the body (0 when it is not a number) and parses them as a form
//! only for the form content type, in any case and with parameters; more than
//! `MAX_FORM_FIELDS` fields is an `InvalidData` error and never a panic; the fields print and
//! parse again to themselves, and `form_value` gives the first of a name; through the
//! service, a body announced over the cap gets a 413 without running the handler, any other
//! gets the same fields, in one well-formed response.

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use pso::store::{MemoryStore, Store};
use pso::{BoxError, Context, Environment, MAX_FORM_FIELDS, Request, Service};

use crate::cgi_response;
use crate::input::Input;

const TYPES: [Option<&str>; 6] = [
    Some("application/x-www-form-urlencoded"),
    Some("application/x-www-form-urlencoded; charset=UTF-8"),
    Some(" Application/X-WWW-Form-Urlencoded ;x"),
    Some("text/plain"),
    Some("multipart/form-data; boundary=x"),
    None,
];
const MAX_BODIES: [Option<&str>; 4] = [None, Some("0"), Some("10"), Some("1024")];

fn fields_of(bytes: &[u8]) -> Vec<(String, String)> {
    form_urlencoded::parse(bytes)
        .map(|(n, v)| (n.into_owned(), v.into_owned()))
        .collect()
}

pub fn check(data: &[u8]) {
    let mut input = Input::new(data);
    let type_index = input.below(TYPES.len());
    let content_type = TYPES[type_index];
    let length_choice = input.byte();
    let max_body = MAX_BODIES[input.below(MAX_BODIES.len())];
    let body = input.rest();
    let length: Option<String> = match length_choice % 8 {
        0 | 1 => Some(body.len().to_string()),
        2 => Some(
            body.len()
                .saturating_sub(usize::from(length_choice >> 3))
                .to_string(),
        ),
        3 => Some((body.len() + usize::from(length_choice >> 3)).to_string()),
        4 => None,
        5 => Some(format!(" {} ", body.len())),
        6 => Some(
            ["", "abc", "-1", "99999999999999999999", "0x10", "+3"]
                [usize::from(length_choice >> 3) % 6]
                .to_owned(),
        ),
        _ => Some("18446744073709551615".to_owned()),
    };
    let mut pairs = vec![("REQUEST_METHOD".to_owned(), "POST".to_owned())];
    if let Some(kind) = content_type {
        pairs.push(("CONTENT_TYPE".to_owned(), kind.to_owned()));
    }
    if let Some(length) = &length {
        pairs.push(("CONTENT_LENGTH".to_owned(), length.clone()));
    }
    let env = Environment::from_pairs(pairs.clone());

    // CONTENT_LENGTH: a number (white space around it aside), else no body.
    let announced: u64 = length
        .as_deref()
        .map_or(0, |l| l.trim().parse().unwrap_or(0));
    let read = &body[..body
        .len()
        .min(usize::try_from(announced).unwrap_or(usize::MAX))];
    let is_form = type_index < 3;
    let expected = if is_form { fields_of(read) } else { Vec::new() };

    let mut reader = body;
    let mut request = Request::new(&env, &mut reader);
    assert_eq!(request.content_length(), announced);
    match request.form() {
        Ok(fields) => {
            assert!(expected.len() <= MAX_FORM_FIELDS);
            assert_eq!(fields, &expected[..]);
            let printed = form_urlencoded::Serializer::new(String::new())
                .extend_pairs(fields.iter())
                .finish();
            assert_eq!(fields_of(printed.as_bytes()), expected, "{printed:?}");
        }
        Err(e) => {
            assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
            assert!(expected.len() > MAX_FORM_FIELDS);
            return;
        }
    }
    if let Some((name, value)) = expected.first() {
        assert_eq!(
            request.form_value(name).expect("read once, kept"),
            Some(value.clone())
        );
    }

    // Through the service, with its cap on bodies.
    let mut process = vec![("PSOSessionGCProbability", "0")];
    if let Some(max) = max_body {
        process.push(("PSOMaxBodyBytes", max));
    }
    let cap: u64 = max_body.map_or(1 << 20, |m| m.parse().expect("a number"));
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let service = Service::new(Environment::from_pairs(process)).with_store(store);
    let handler = |cx: &mut Context<'_>| -> Result<(), BoxError> {
        let fields = cx.request.form()?.to_vec();
        let printed = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(fields.iter())
            .finish();
        write!(cx.response, "{printed}")?;
        Ok(())
    };
    let mut output = Vec::new();
    let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    service
        .serve(&env, &mut &body[..], &mut output, &handler, now)
        .expect("writing to a vector");
    let response = cgi_response::parse(&output, false);
    if announced > cap {
        assert_eq!(response.status, 413);
    } else {
        assert_eq!(response.status, 200);
        let body = String::from_utf8(response.body).expect("UTF-8");
        assert_eq!(fields_of(body.as_bytes()), expected);
    }
}
