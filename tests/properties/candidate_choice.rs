//! Which session a request gets from the ids its `Cookie` header names, end to end through
//! `Service` over a memory store.
//!
//! Input: how many live, expired (idle too long) and logged-out sessions the store holds,
//! whether the service is read-only, then the header's bytes, where `0xF0..=0xF7` stands for
//! the id of one of those sessions or of one never issued, and `0xF8..=0xFF` for
//! `app=<that id>`. Checked: the response is one well-formed CGI response; a header naming
//! exactly one live session gets it, one naming two or more gets a new session and (when it
//! may write) ends them all; why the session was replaced; an expired session's data goes to
//! the new session once; the store afterwards holds what it should and nothing else (a
//! request never touches a session it does not name; a read-only one touches none).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::Write;
use std::os::unix::ffi::OsStringExt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pso::cookies::offered_ids;
use pso::store::{MemoryStore, SessionKey, Store};
use pso::{BoxError, Context, Ended, Environment, Expiry, Origin, Service, ServiceId, SessionId};

use crate::cgi_response;
use crate::input::Input;

const T0: u64 = 1_700_000_000;
const IDLE: u64 = 600;
const NEVER_ISSUED: [&str; 2] = [
    "0123456789abcdef0123456789abcdef0123456789abcdef",
    "fedcba9876543210fedcba9876543210fedcba9876543210",
];

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

/// Counts in `n` (unless read-only); `?logout` ends the session; prints whether the session
/// is new, its id, the count it found, why it holds its session and whether an expired
/// session's data came with it.
fn handler(read_only: bool) -> impl Fn(&mut Context<'_>) -> Result<(), BoxError> + Send + Sync {
    move |cx: &mut Context<'_>| {
        let n: u64 = cx.session.get("n")?.unwrap_or(0);
        if !read_only {
            cx.session.set("n", &(n + 1))?;
        }
        if cx.request.query("logout").is_some() {
            cx.session.expire(Expiry::Now)?;
        }
        let expired = cx.session.take_expired().map(|r| r.get::<u64>("n"));
        write!(
            cx.response,
            "{} {} {n} {:?} {:?}",
            cx.session.is_new(),
            cx.session.id(),
            cx.session.origin(),
            expired.map(|n| n.ok().flatten()),
        )?;
        Ok(())
    }
}

fn request(cookie: &[u8], query: &str) -> Environment {
    Environment::from_pairs([
        (OsString::from("REQUEST_METHOD"), OsString::from("GET")),
        (OsString::from("REMOTE_ADDR"), OsString::from("192.0.2.1")),
        (OsString::from("QUERY_STRING"), OsString::from(query)),
        (
            OsString::from("HTTP_COOKIE"),
            OsString::from_vec(cookie.to_vec()),
        ),
    ])
}

fn serve(service: &Service, env: &Environment, read_only: bool, now: u64) -> Vec<u8> {
    let mut output = Vec::new();
    service
        .serve(
            env,
            &mut std::io::empty(),
            &mut output,
            &handler(read_only),
            at(now),
        )
        .expect("writing to a vector");
    output
}

/// A new session of the site, made at `when`: its id.
fn new_session(service: &Service, when: u64) -> String {
    let output = serve(service, &request(b"", ""), false, when);
    let response = cgi_response::parse(&output, false);
    let cookie = response
        .all("Set-Cookie")
        .into_iter()
        .find_map(|c| c.strip_prefix("app="))
        .expect("a new session's cookie")
        .to_owned();
    cookie.split(';').next().unwrap_or("").to_owned()
}

pub fn check(data: &[u8]) {
    let mut input = Input::new(data);
    let shape = input.byte();
    let live_count = usize::from(shape & 3);
    let expired_count = usize::from((shape >> 2) & 3).min(2);
    let gone_count = usize::from((shape >> 4) & 1);
    let read_only = shape & 0x80 != 0;

    let memory = MemoryStore::new();
    let store: Arc<dyn Store> = Arc::new(memory);
    let process = Environment::from_pairs([
        ("PSOServiceId", "app"),
        ("PSOSessionIdle", "600"),
        ("PSOSessionGCProbability", "0"),
    ]);
    let writer = Service::new(process.clone()).with_store(store.clone());
    let expired: Vec<String> = (0..expired_count)
        .map(|_| new_session(&writer, T0 - 6 * IDLE))
        .collect();
    let live: Vec<String> = (0..live_count)
        .map(|_| new_session(&writer, T0 - 10))
        .collect();
    let gone: Vec<String> = (0..gone_count)
        .map(|_| {
            let id = new_session(&writer, T0 - 10);
            let cookie = format!("app={id}");
            serve(
                &writer,
                &request(cookie.as_bytes(), "logout"),
                false,
                T0 - 5,
            );
            id
        })
        .collect();
    let every: Vec<String> = [&live[..], &expired[..], &gone[..]]
        .concat()
        .into_iter()
        .chain(NEVER_ISSUED.map(str::to_owned))
        .collect();

    let mut header = Vec::new();
    for &b in input.rest() {
        match b {
            0xF0..=0xF7 => {
                header.extend_from_slice(every[usize::from(b & 7) % every.len()].as_bytes())
            }
            0xF8..=0xFF => {
                header.extend_from_slice(b"app=");
                header.extend_from_slice(every[usize::from(b & 7) % every.len()].as_bytes());
            }
            other => header.push(other),
        }
    }

    let service = if read_only {
        Service::new(process).with_store(store.clone()).read_only()
    } else {
        writer
    };
    let output = serve(&service, &request(&header, ""), read_only, T0);
    let response = cgi_response::parse(&output, false);
    assert_eq!(response.status, 200, "{}", String::from_utf8_lossy(&output));
    let body = String::from_utf8(response.body.clone()).expect("a UTF-8 body");
    let fields: Vec<&str> = body.splitn(4, ' ').collect();
    let [is_new, id, n, rest] = fields[..] else {
        panic!("{body:?}")
    };
    let (origin, handed) = rest.rsplit_once(' ').expect("why, and the expired data");

    // What should have happened, from the ids the header offers.
    let offered = offered_ids(&header, "app");
    let named = |id: &String| offered.ids.iter().any(|o| o.as_str() == id);
    let live_named: Vec<&String> = live.iter().filter(|id| named(id)).collect();
    let expired_named = expired.iter().any(named);
    let adopted = match live_named[..] {
        [one] => Some(one),
        _ => None,
    };
    let why = if offered.too_many || live_named.len() > 1 {
        Origin::Replaced(Ended::Ambiguous)
    } else if adopted.is_some() {
        Origin::Returning
    } else if expired_named {
        Origin::Replaced(Ended::Idle)
    } else if !offered.ids.is_empty() {
        Origin::Replaced(Ended::Unknown)
    } else {
        Origin::New
    };
    let context = || {
        format!(
            "header {:?}, reply {body:?}",
            String::from_utf8_lossy(&header)
        )
    };
    assert_eq!(origin, format!("{why:?}"), "{}", context());
    match adopted {
        Some(own) => assert_eq!(
            (is_new, id, n),
            ("false", own.as_str(), "1"),
            "{}",
            context()
        ),
        None => {
            assert_eq!((is_new, n), ("true", "0"), "{}", context());
            assert!(
                !every.iter().any(|old| old == id),
                "an old id reused: {}",
                context()
            );
        }
    }
    // The data of an expired session goes to a new one, once, only from a request that
    // removes it, and only when it is the one stored session named (among several, the
    // visitor's own cannot be told from a tossed one).
    let expired_named_count = expired.iter().filter(|id| named(id)).count();
    let hands_over =
        !read_only && live_named.is_empty() && expired_named_count == 1 && !offered.too_many;
    assert_eq!(
        handed,
        if hands_over { "Some(Some(1))" } else { "None" },
        "{}",
        context()
    );
    // A new session's cookie carries the id the handler saw.
    for cookie in response.all("Set-Cookie") {
        if let Some(value) = cookie.strip_prefix("app=") {
            assert_eq!(value.split(';').next(), Some(id), "{}", context());
        }
    }

    // The store holds what it should, and nothing else.
    let mut expected: BTreeMap<String, u64> = BTreeMap::new();
    for own in &live {
        let ended = !read_only && named(own) && live_named.len() > 1;
        if !ended {
            expected.insert(
                own.clone(),
                if !read_only && adopted == Some(own) {
                    2
                } else {
                    1
                },
            );
        }
    }
    for old in &expired {
        if read_only || !named(old) {
            expected.insert(old.clone(), 1);
        }
    }
    if !read_only && adopted.is_none() {
        expected.insert(id.to_owned(), 1);
    }
    let service_id: ServiceId = "app".parse().expect("a service id");
    let mut held = BTreeMap::new();
    for key in store.keys().expect("the keys") {
        let key = key.expect("a key");
        let record = store
            .peek(&key)
            .expect("a readable record")
            .expect("a record");
        held.insert(
            key.id.to_string(),
            record.get::<u64>("n").expect("a count").unwrap_or(0),
        );
    }
    assert_eq!(held, expected, "{}", context());
    for old in &gone {
        let key = SessionKey::new(service_id.clone(), old.parse::<SessionId>().expect("an id"));
        assert!(store.peek(&key).expect("readable").is_none());
    }
}
