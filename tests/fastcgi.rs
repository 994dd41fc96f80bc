//! The FastCGI responder, driven over a socket by a client that sends what web servers send, and
//! what they must never send: every malformed stream against a live process, which must then
//! serve the next request.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::fcgi::*;

fn inspect() -> PathBuf {
    PathBuf::from(common::example("inspect"))
}

struct Fixture {
    dir: tempfile::TempDir,
    process: FcgiProcess,
}

impl Fixture {
    fn start(env: &[(&str, &str)]) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let sessions = dir.path().join("sessions");
        let sessions = sessions.to_str().unwrap().to_owned();
        let mut all: Vec<(&str, &str)> = vec![
            ("PSOSessionFileLoader_Path", &sessions),
            ("PSOLogLevel", "info"),
        ];
        all.extend_from_slice(env);
        let process = FcgiProcess::start(&inspect(), &all, &dir.path().join("stderr"));
        Fixture { dir, process }
    }

    /// The next ordinary request still works.
    fn still_serves(&self, after: &str) {
        let answer = self.process.get("count=1", &[]);
        assert_eq!(
            answer.status(),
            "Status: 200 OK",
            "after {after}: {answer:?}\n{}",
            self.process.log()
        );
        assert_eq!(answer.body(), "count=1", "after {after}");
        assert_eq!(answer.end, Some((0, 0)), "after {after}");
    }
}

#[test]
fn the_counter_counts_over_fastcgi_on_fresh_and_kept_connections() {
    let f = Fixture::start(&[]);
    let first = f.process.get("count=1", &[]);
    assert_eq!(first.body(), "count=1");
    let cookie = first.cookie().unwrap();
    let second = f.process.get("count=1", &[("HTTP_COOKIE", &cookie)]);
    assert_eq!(second.body(), "count=2");

    // KEEP_CONN: three requests on one connection.
    let mut stream = f.process.connect();
    for n in 3..=5 {
        let pairs = get_params("count=1", &[("HTTP_COOKIE", &cookie)]);
        stream.write_all(&request(1, true, &pairs, b"")).unwrap();
        let answer = read_answer(&mut stream, 1, Duration::from_secs(10));
        assert_eq!(answer.body(), format!("count={n}"), "{answer:?}");
        assert!(!answer.closed);
    }
    // Without KEEP_CONN the server closes after the answer.
    let pairs = get_params("count=1", &[("HTTP_COOKIE", &cookie)]);
    stream.write_all(&request(1, false, &pairs, b"")).unwrap();
    assert_eq!(
        read_answer(&mut stream, 1, Duration::from_secs(10)).body(),
        "count=6"
    );
    assert!(closed_within(&mut stream, Duration::from_secs(5)));
}

#[test]
fn a_pipelined_next_request_waits_for_the_answer_to_the_current_one() {
    let f = Fixture::start(&[]);
    let mut stream = f.process.connect();
    let first = f.process.get("count=1", &[]);
    let cookie = first.cookie().unwrap();
    // Two requests with the same id in one write, as a client that does not wait may send.
    let pairs = get_params("count=1", &[("HTTP_COOKIE", &cookie)]);
    let mut both = request(1, true, &pairs, b"");
    both.extend_from_slice(&request(1, true, &pairs, b""));
    stream.write_all(&both).unwrap();
    // Both answers may arrive in one read: the bytes are parsed as one stream of records.
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let (mut bytes, mut answers, mut stdout) = (Vec::new(), Vec::new(), Vec::new());
    while answers.len() < 2 {
        use pso::fastcgi::record::{Status, kind, parse};
        match parse(&bytes).unwrap() {
            Status::Complete(record, used) => {
                match record.kind {
                    kind::STDOUT => stdout.extend_from_slice(record.content),
                    kind::END_REQUEST => {
                        answers.push(String::from_utf8(std::mem::take(&mut stdout)).unwrap())
                    }
                    _ => {}
                }
                bytes.drain(..used);
            }
            Status::Partial => {
                let mut chunk = [0u8; 4096];
                let n = std::io::Read::read(&mut stream, &mut chunk).unwrap_or(0);
                assert!(n > 0, "closed after {answers:?}\n{}", f.process.log());
                bytes.extend_from_slice(&chunk[..n]);
            }
        }
    }
    for (n, answer) in (2..=3).zip(&answers) {
        assert!(answer.ends_with(&format!("count={n}")), "{answer}");
    }
    f.still_serves("a pipelined request");
}

#[test]
fn malformed_streams_cost_their_connection_only() {
    let f = Fixture::start(&[]);
    let ok = |pairs: &[(&[u8], &[u8])]| request(1, false, pairs, b"");
    let params = get_params("count=1", &[]);
    let mut cases: Vec<(&str, Vec<u8>)> = vec![
        ("version 2", {
            let mut r = ok(&params);
            r[0] = 2;
            r
        }),
        ("a BEGIN of length 7", {
            let mut r = record(BEGIN, 1, &[0, 1, 0, 0, 0, 0, 0]);
            r.extend(params_records(1, &params, 65_535));
            r
        }),
        (
            "a STDOUT record from the web server",
            record(STDOUT, 1, b"Status: 200\r\n\r\n"),
        ),
        (
            "an END_REQUEST from the web server",
            record(END, 1, &[0; 8]),
        ),
        ("a pair length past the end", {
            let mut r = begin(1, false);
            r.extend(record(PARAMS, 1, &[5, 1, b'a']));
            r.extend(record(PARAMS, 1, &[]));
            r
        }),
        ("31-bit lengths", {
            let mut r = begin(1, false);
            r.extend(record(
                PARAMS,
                1,
                &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, b'x'],
            ));
            r.extend(record(PARAMS, 1, &[]));
            r
        }),
        ("300,000 empty pairs", {
            let mut r = begin(1, false);
            for chunk in vec![0u8; 600_000].chunks(65_528) {
                r.extend(record(PARAMS, 1, chunk));
            }
            r.extend(record(PARAMS, 1, &[]));
            r
        }),
        ("STDIN before the parameters end", {
            let mut r = begin(1, false);
            r.extend(record(STDIN, 1, b"body"));
            r
        }),
    ];
    // The end of the stream at byte offsets of a valid request, before its parameters end.
    let whole = request(1, false, &params, b"");
    let params_end = whole.len() - 8;
    for cut in [
        1,
        7,
        8,
        9,
        15,
        16,
        17,
        24,
        params_end / 2,
        params_end - 9,
        params_end - 1,
    ] {
        cases.push(("EOF inside a request", whole[..cut].to_vec()));
    }
    for (what, bytes) in cases {
        let mut stream = f.process.connect();
        let _ = stream.write_all(&bytes);
        let _ = stream.shutdown(std::net::Shutdown::Write);
        let answer = read_answer(&mut stream, 1, Duration::from_secs(10));
        assert!(
            answer.closed,
            "{what}: the connection should end: {answer:?}"
        );
        assert!(answer.stdout.is_empty(), "{what}: no response: {answer:?}");
        f.still_serves(what);
    }
    // At every offset: before the parameters end, nothing; after, the request runs (a GET
    // needs no body, so none is waited for).
    for cut in 0..whole.len() {
        let mut stream = f.process.connect();
        stream.write_all(&whole[..cut]).unwrap();
        stream.shutdown(std::net::Shutdown::Write).unwrap();
        let answer = read_answer(&mut stream, 1, Duration::from_secs(10));
        if cut < params_end {
            assert!(
                answer.closed && answer.stdout.is_empty(),
                "cut at {cut}: {answer:?}"
            );
        } else {
            assert_eq!(
                answer.status(),
                "Status: 200 OK",
                "cut at {cut}: {answer:?}"
            );
        }
    }
    f.still_serves("EOF at every offset");
    let log = f.process.log();
    assert!(!log.contains("panicked"), "{log}");
}

#[test]
fn management_records_are_answered_and_the_connection_kept() {
    let f = Fixture::start(&[("PSO_FCGI_WORKERS", "3"), ("PSO_FCGI_MAX_CONNS", "50")]);
    let mut stream = f.process.connect();
    // GET_VALUES with each name repeated ten times (libfcgi overflowed a stack buffer here).
    let mut query = Vec::new();
    for _ in 0..10 {
        for name in [
            &b"FCGI_MAX_CONNS"[..],
            b"FCGI_MAX_REQS",
            b"FCGI_MPXS_CONNS",
            b"UNKNOWN",
        ] {
            query.extend(pair(name, b""));
        }
    }
    stream.write_all(&record(GET_VALUES, 0, &query)).unwrap();
    // An unknown management type, and a BEGIN_REQUEST with id 0.
    stream.write_all(&record(99, 0, b"whatever")).unwrap();
    stream.write_all(&begin(0, false)).unwrap();
    // Then an ordinary request on the same connection.
    stream
        .write_all(&request(1, false, &get_params("count=1", &[]), b""))
        .unwrap();
    let answer = read_answer(&mut stream, 1, Duration::from_secs(10));
    let values = &answer.records[0];
    assert_eq!(values.0, GET_VALUES_RESULT);
    let expected: Vec<u8> = [
        pair(b"FCGI_MAX_CONNS", b"50"),
        pair(b"FCGI_MAX_REQS", b"3"),
        pair(b"FCGI_MPXS_CONNS", b"0"),
    ]
    .concat();
    assert_eq!(values.2, expected);
    assert_eq!(
        (answer.records[1].0, answer.records[1].2[0]),
        (UNKNOWN_TYPE, 99)
    );
    assert_eq!(
        (answer.records[2].0, answer.records[2].2[0]),
        (UNKNOWN_TYPE, BEGIN)
    );
    assert_eq!(answer.body(), "count=1");
}

#[test]
fn unknown_roles_and_a_second_request_are_refused_by_end_request() {
    let f = Fixture::start(&[]);
    // The authorizer role: END_REQUEST(UNKNOWN_ROLE), and the connection goes on.
    let mut stream = f.process.connect();
    stream.write_all(&begin_role(1, 2, true)).unwrap();
    let answer = read_answer(&mut stream, 1, Duration::from_secs(10));
    assert_eq!(answer.end, Some((0, 3)), "{answer:?}");
    stream
        .write_all(&request(2, false, &get_params("count=1", &[]), b""))
        .unwrap();
    assert_eq!(
        read_answer(&mut stream, 2, Duration::from_secs(10)).body(),
        "count=1"
    );

    // A second BEGIN while the first request runs: END_REQUEST(CANT_MPX_CONN) for it.
    let mut stream = f.process.connect();
    let mut bytes = begin(1, false);
    bytes.extend(params_records(1, &get_params("sleep=300", &[]), 65_535));
    bytes.extend(begin(2, false));
    bytes.extend(record(STDIN, 1, &[]));
    stream.write_all(&bytes).unwrap();
    let first = read_answer(&mut stream, 1, Duration::from_secs(10));
    assert_eq!(first.status(), "Status: 200 OK", "{first:?}");
    let refused = first.records.iter().find(|r| r.0 == END && r.1 == 2);
    assert_eq!(
        refused.map(|r| r.2[4]),
        Some(1),
        "CANT_MPX_CONN for the second: {first:?}"
    );
}

#[test]
fn parameters_are_a_stream_of_bytes() {
    let f = Fixture::start(&[]);
    // Pairs straddle records: one byte per PARAMS record.
    let pairs = get_params("", &[]);
    let mut pairs: Vec<(&[u8], &[u8])> = pairs;
    pairs.push((b"HTTP_X_RAW", b"\xff\xfe not UTF-8"));
    pairs.push((b"HTTP_X_LONG", &[b'v'; 300]));
    let mut bytes = begin(1, false);
    bytes.extend(params_records(1, &pairs, 1));
    bytes.extend(record(STDIN, 1, &[]));
    let answer = f.process.exchange(&bytes, 1);
    let body = answer.body();
    assert!(
        body.contains("HTTP_X_RAW=\u{fffd}\u{fffd} not UTF-8"),
        "{body}"
    );
    assert!(
        body.contains(&format!("HTTP_X_LONG={}", "v".repeat(300))),
        "{body}"
    );
    // The last of duplicate names wins.
    let mut pairs = get_params("count=1", &[]);
    pairs.push((b"QUERY_STRING", b"size=3"));
    assert_eq!(
        f.process
            .exchange(&request(1, false, &pairs, b""), 1)
            .body(),
        "xxx"
    );
}

/// The README promised parameters up to 128 KiB where the code stopped at 64.
#[test]
fn parameters_up_to_128_kib_are_taken_and_more_refused() {
    let f = Fixture::start(&[]);
    let big = "v".repeat(60 * 1024);
    // 120 KiB of parameters, in records of at most 65,535 bytes.
    let answer = f
        .process
        .get("count=1", &[("HTTP_X_A", &big), ("HTTP_X_B", &big)]);
    assert_eq!(answer.body(), "count=1", "{answer:?}");
    let over = [("HTTP_X_A", &big), ("HTTP_X_B", &big), ("HTTP_X_C", &big)];
    let over: Vec<(&str, &str)> = over.iter().map(|(n, v)| (*n, v.as_str())).collect();
    let answer = f.process.get("count=1", &over);
    assert!(answer.closed && answer.stdout.is_empty(), "{answer:?}");
    f.still_serves("parameters over the cap");
}

#[test]
fn the_body_is_read_lazily_and_no_further_than_content_length() {
    let f = Fixture::start(&[]);
    let post = |length: &str, query: &str| -> Vec<(&'static [u8], Vec<u8>)> {
        vec![
            (b"REQUEST_METHOD", b"POST".to_vec()),
            (b"SCRIPT_NAME", b"/cgi-bin/inspect".to_vec()),
            (b"QUERY_STRING", query.as_bytes().to_vec()),
            (b"CONTENT_LENGTH", length.as_bytes().to_vec()),
        ]
    };
    fn as_refs<'a>(pairs: &'a [(&'static [u8], Vec<u8>)]) -> Vec<(&'a [u8], &'a [u8])> {
        pairs.iter().map(|(n, v)| (*n, v.as_slice())).collect()
    }
    // STDIN past CONTENT_LENGTH: the handler sees CONTENT_LENGTH bytes.
    let pairs = post("5", "echo=1");
    let answer = f
        .process
        .exchange(&request(1, false, &as_refs(&pairs), b"hello, and more"), 1);
    assert_eq!(answer.body(), "hello");
    // A body spread over records, bigger than one record.
    let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let length = big.len().to_string();
    let pairs = post(&length, "echo=1");
    let answer = f
        .process
        .exchange(&request(1, false, &as_refs(&pairs), &big), 1);
    let stdout = answer.stdout;
    let at = stdout.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert_eq!(&stdout[at..], &big[..]);
    // CONTENT_LENGTH 0 and no STDIN at all (haproxy over HTTP/2): no wait for a body.
    let mut stream = f.process.connect();
    let mut bytes = begin(1, false);
    bytes.extend(params_records(1, &as_refs(&post("0", "echo=1")), 65_535));
    stream.write_all(&bytes).unwrap();
    let answer = read_answer(&mut stream, 1, Duration::from_secs(3));
    assert_eq!(answer.status(), "Status: 200 OK", "{answer:?}");
    // Over PSOMaxBodyBytes (1 MiB by default): 413, and the handler does not run.
    let pairs = post("2000000", "echo=1");
    let mut bytes = begin(1, false);
    bytes.extend(params_records(1, &as_refs(&pairs), 65_535));
    let answer = f.process.exchange(&bytes, 1);
    assert!(answer.status().starts_with("Status: 413"), "{answer:?}");
}

#[test]
fn big_responses_are_split_into_records_and_log_lines_travel_as_stderr() {
    let f = Fixture::start(&[]);
    let answer = f.process.get("size=200000", &[]);
    assert_eq!(answer.body().len(), 200_000);
    let stdout_records: Vec<_> = answer.records.iter().filter(|r| r.0 == STDOUT).collect();
    assert!(stdout_records.len() >= 4, "{}", stdout_records.len());
    assert!(stdout_records.iter().all(|r| r.2.len() <= 65_535));
    assert!(
        stdout_records.last().unwrap().2.is_empty(),
        "the stream ends with an empty record"
    );

    // A forged cookie is logged: in this request's STDERR, not the process's.
    let forged = "inspect=0123456789abcdef0123456789abcdef0123456789abcdef";
    let answer = f.process.get("count=1", &[("HTTP_COOKIE", forged)]);
    let stderr = String::from_utf8_lossy(&answer.stderr);
    assert!(
        stderr.contains("unknown (forged, or long gone)"),
        "{answer:?}"
    );
    assert!(!f.process.log().contains("forged"), "{}", f.process.log());
    // The STDERR stream is closed with an empty record before END_REQUEST.
    let kinds: Vec<(u8, usize)> = answer.records.iter().map(|r| (r.0, r.2.len())).collect();
    let last = &kinds[kinds.len() - 3..];
    assert_eq!((last[1], last[2].0), ((STDERR, 0), END), "{kinds:?}");
}

#[test]
fn streaming_sends_the_head_and_pieces_before_the_end() {
    let f = Fixture::start(&[]);
    let answer = f.process.get("stream=1", &[]);
    assert!(
        answer.body().starts_with("piece 0\npiece 1\npiece 2\n"),
        "{answer:?}"
    );
    let stdout_records = answer
        .records
        .iter()
        .filter(|r| r.0 == STDOUT && !r.2.is_empty())
        .count();
    assert!(
        stdout_records >= 2,
        "flushed pieces go out as they come: {answer:?}"
    );
}

#[test]
fn a_panicking_handler_costs_its_request_only() {
    let f = Fixture::start(&[]);
    let answer = f.process.get("panic=1", &[]);
    assert!(answer.status().starts_with("Status: 500"), "{answer:?}");
    let (app_status, protocol_status) = answer.end.unwrap();
    assert!(app_status != 0 && protocol_status == 0, "{answer:?}");
    f.still_serves("a panic");
}

#[test]
fn abort_request_ends_the_request() {
    let f = Fixture::start(&[]);
    // Aborted while the parameters arrive.
    let mut stream = f.process.connect();
    let mut bytes = begin(1, true);
    bytes.extend(record(PARAMS, 1, &pair(b"REQUEST_METHOD", b"GET")));
    bytes.extend(record(ABORT, 1, &[]));
    stream.write_all(&bytes).unwrap();
    let answer = read_answer(&mut stream, 1, Duration::from_secs(10));
    assert_eq!(answer.end, Some((0, 0)), "{answer:?}");
    assert!(answer.stdout.is_empty());
    // Aborted while the handler waits for the body: it stops at its next read.
    let mut stream = f.process.connect();
    let pairs: Vec<(&[u8], &[u8])> = vec![
        (b"REQUEST_METHOD", b"POST"),
        (b"QUERY_STRING", b"echo=1"),
        (b"CONTENT_LENGTH", b"100"),
    ];
    let mut bytes = begin(1, false);
    bytes.extend(params_records(1, &pairs, 65_535));
    bytes.extend(record(STDIN, 1, b"part of it"));
    stream.write_all(&bytes).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    stream.write_all(&record(ABORT, 1, &[])).unwrap();
    let answer = read_answer(&mut stream, 1, Duration::from_secs(10));
    assert_eq!(answer.end.map(|e| e.1), Some(0), "{answer:?}");
    assert!(
        answer.stdout.is_empty(),
        "nothing is sent for an aborted request: {answer:?}"
    );
    f.still_serves("aborts");
}

#[test]
fn idle_connections_and_a_slowloris_do_not_stop_others() {
    let f = Fixture::start(&[
        ("PSO_FCGI_WORKERS", "2"),
        ("PSO_FCGI_FIRST_BYTE_TIMEOUT", "20"),
        ("PSO_FCGI_HEADER_TIMEOUT", "20"),
    ]);
    let idle: Vec<TcpStream> = (0..1_000).map(|_| f.process.connect()).collect();
    // A slow client: a BEGIN and then its parameters, one byte at a time.
    let mut slow = f.process.connect();
    let whole = request(1, false, &get_params("count=1", &[]), b"");
    slow.write_all(&whole[..20]).unwrap();
    let trickle = std::thread::spawn(move || {
        for byte in &whole[20..40] {
            if slow.write_all(&[*byte]).is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        slow
    });
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    let answer = f.process.get("count=1", &[]);
    let took = started.elapsed();
    eprintln!("answered in {took:?} beside 1,000 idle connections and a slowloris");
    assert_eq!(answer.body(), "count=1");
    // The timeouts above are 20 s, so an answer well before them was not waiting on them.
    assert!(took < Duration::from_secs(5), "{took:?}");
    drop(idle);
    drop(trickle.join().unwrap());
    f.still_serves("idle connections");
}

#[test]
fn idle_and_slow_connections_are_closed_after_their_timeouts() {
    let f = Fixture::start(&[
        ("PSO_FCGI_FIRST_BYTE_TIMEOUT", "1"),
        ("PSO_FCGI_HEADER_TIMEOUT", "1"),
        ("PSO_FCGI_IDLE_TIMEOUT", "1"),
    ]);
    let mut silent = f.process.connect();
    let mut slow = f.process.connect();
    slow.write_all(&begin(1, false)).unwrap();
    let mut kept = f.process.connect();
    kept.write_all(&request(1, true, &get_params("count=1", &[]), b""))
        .unwrap();
    assert_eq!(
        read_answer(&mut kept, 1, Duration::from_secs(5)).body(),
        "count=1"
    );
    for (what, stream) in [
        ("silent", &mut silent),
        ("slow", &mut slow),
        ("kept", &mut kept),
    ] {
        assert!(closed_within(stream, Duration::from_secs(5)), "{what}");
    }
}

#[test]
fn sigterm_finishes_the_requests_in_flight_and_stops() {
    let mut f = Fixture::start(&[]);
    let mut stream = f.process.connect();
    stream
        .write_all(&request(1, false, &get_params("sleep=700", &[]), b""))
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let status = f.process.terminate();
    let answer = read_answer(&mut stream, 1, Duration::from_secs(10));
    assert_eq!(
        answer.status(),
        "Status: 200 OK",
        "the request in flight finished: {answer:?}"
    );
    assert!(status.success(), "{status:?}");
    assert!(
        TcpStream::connect(("127.0.0.1", f.process.port)).is_err(),
        "no longer listening"
    );
    assert!(f.process.log().contains("SIGTERM"), "{}", f.process.log());
    drop(f.dir);
}

#[test]
fn web_server_addresses_limit_who_may_connect() {
    let f = Fixture::start(&[("FCGI_WEB_SERVER_ADDRS", "192.0.2.1, 192.0.2.2")]);
    let mut stream = f.process.connect();
    let _ = stream.write_all(&request(1, false, &get_params("count=1", &[]), b""));
    let answer = read_answer(&mut stream, 1, Duration::from_secs(5));
    assert!(answer.closed && answer.stdout.is_empty(), "{answer:?}");
    assert!(f.process.log().contains("FCGI_WEB_SERVER_ADDRS"));
    let allowed = Fixture::start(&[("FCGI_WEB_SERVER_ADDRS", "127.0.0.1")]);
    allowed.still_serves("an allowed address");
}

#[test]
fn a_session_directory_fixed_by_the_process_cannot_be_moved_by_a_request() {
    let f = Fixture::start(&[]);
    let elsewhere = f.dir.path().join("elsewhere");
    let elsewhere = elsewhere.to_str().unwrap();
    let answer = f
        .process
        .get("count=1", &[("PSOSessionFileLoader_Path", elsewhere)]);
    assert_eq!(answer.body(), "count=1");
    assert!(!std::path::Path::new(elsewhere).exists());
    assert_eq!(
        std::fs::read_dir(f.dir.path().join("sessions"))
            .unwrap()
            .count(),
        1
    );
    let stderr = String::from_utf8_lossy(&answer.stderr);
    assert!(stderr.contains("fixes"), "{stderr}");
    // Other settings do come from the request, as SetEnv and fastcgi_param give them.
    let answer = f.process.get(
        "count=1",
        &[("PSOServiceId", "shop"), ("PSOSessionExpire", "15*60")],
    );
    let text = answer.text();
    assert!(
        text.contains("Set-Cookie: shop=") && text.contains("Max-Age=900"),
        "{text}"
    );
}

#[test]
fn requests_may_name_only_so_many_session_directories() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("stderr");
    let process = FcgiProcess::start(&inspect(), &[], &log);
    let mut statuses = Vec::new();
    for i in 0..=16 {
        let path = dir.path().join(format!("s{i}"));
        let answer = process.get(
            "count=1",
            &[("PSOSessionFileLoader_Path", path.to_str().unwrap())],
        );
        statuses.push(answer.status());
    }
    assert!(
        statuses[..16].iter().all(|s| s == "Status: 200 OK"),
        "{statuses:?}"
    );
    assert!(statuses[16].starts_with("Status: 500"), "{statuses:?}");
}

#[test]
fn a_unix_socket_is_created_0660_and_removed_at_exit() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("app.sock");
    let sessions = dir.path().join("sessions");
    let mut child = std::process::Command::new(inspect())
        .env_clear()
        .env("PSO_FCGI_BIND", format!("unix:{}", socket.display()))
        .env("PSOSessionFileLoader_Path", &sessions)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while !socket.exists() {
        assert!(started.elapsed() < Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(10));
    }
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660);
    let mut stream = std::os::unix::net::UnixStream::connect(&socket).unwrap();
    stream
        .write_all(&request(1, false, &get_params("count=1", &[]), b""))
        .unwrap();
    let mut answer = Vec::new();
    std::io::Read::read_to_end(&mut stream, &mut answer).unwrap();
    assert!(String::from_utf8_lossy(&answer).contains("count=1"));
    common::signal(child.id(), rustix::process::Signal::TERM);
    assert!(child.wait().unwrap().success());
    assert!(!socket.exists(), "the socket file is removed at exit");
}

/// Found by a hostile review: one request's parameters must never configure another.
#[test]
fn one_requests_parameters_never_configure_another() {
    // The service id comes from the process, a forced id from one request only.
    let f = Fixture::start(&[("PSOServiceId", "shop")]);
    let forced = f.process.get("count=1", &[("shop", "007")]);
    assert_eq!(forced.cookie().as_deref(), Some("shop=007"), "{forced:?}");
    for _ in 0..2 {
        let plain = f.process.get("count=1", &[]);
        assert_eq!(plain.body(), "count=1", "{plain:?}");
        assert_ne!(plain.cookie().as_deref(), Some("shop=007"));
    }
    // Settings as lighttpd passes them on (upper case) are still the request's own, and any
    // other spelling changes nothing for anyone.
    let g = Fixture::start(&[]);
    let odd = g.process.get(
        "count=1",
        &[
            ("PSOSERVICEID", "hijack"),
            ("HIJACK", "007"),
            ("PSOCOOKIESESSION_DOMAIN", "evil.example"),
            ("PSOSESSIONEXPIRE", "10y"),
            ("psoSessionFileLoader_Path", "/tmp/elsewhere"),
        ],
    );
    assert!(odd.text().contains("Set-Cookie: hijack=007"), "{odd:?}");
    assert!(
        String::from_utf8_lossy(&odd.stderr).contains("is read only as PSOSessionFileLoader_Path"),
        "{odd:?}"
    );
    let plain = g.process.get("count=1", &[]);
    let text = plain.text();
    assert!(text.contains("Set-Cookie: inspect="), "{text}");
    assert!(
        !text.contains("evil.example") && !text.contains("Max-Age"),
        "{text}"
    );
}

#[test]
fn a_request_cannot_make_the_process_build_directories() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("stderr");
    let process = FcgiProcess::start(&inspect(), &[], &log);
    let deep = dir.path().join("a/b/c/sessions");
    let answer = process.get(
        "count=1",
        &[("PSOSessionFileLoader_Path", deep.to_str().unwrap())],
    );
    assert!(answer.status().starts_with("Status: 500"), "{answer:?}");
    assert!(!dir.path().join("a").exists(), "no parents are created");
    // Sixteen other directories tried (none can be opened) use up the allowance; the process's
    // own directory still works.
    for i in 0..20 {
        let path = dir.path().join(format!("missing{i}/sessions"));
        process.get(
            "count=1",
            &[("PSOSessionFileLoader_Path", path.to_str().unwrap())],
        );
    }
    let own = process.get("count=1", &[]);
    assert_eq!(own.body(), "count=1", "{own:?}\n{}", process.log());
}

#[test]
fn an_address_list_that_does_not_parse_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let status = std::process::Command::new(inspect())
        .env_clear()
        .env("PSO_FCGI_BIND", format!("127.0.0.1:{}", free_port()))
        .env("FCGI_WEB_SERVER_ADDRS", "127.0.0.1, 10.0.0.0/8")
        .env("PSOSessionFileLoader_Path", dir.path().join("s"))
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(
        !status.success(),
        "a list that lost an entry would let in more than it says"
    );
}

#[test]
fn a_request_holds_its_worker_no_longer_than_the_request_timeout() {
    let f = Fixture::start(&[("PSO_FCGI_WORKERS", "1"), ("PSO_FCGI_REQUEST_TIMEOUT", "1")]);
    // One worker, taken by a body trickling in a byte at a time.
    let mut slow = f.process.connect();
    let pairs: Vec<(&[u8], &[u8])> = vec![
        (b"REQUEST_METHOD", b"POST"),
        (b"QUERY_STRING", b"echo=1"),
        (b"CONTENT_LENGTH", b"1000"),
    ];
    let mut bytes = begin(1, false);
    bytes.extend(params_records(1, &pairs, 65_535));
    slow.write_all(&bytes).unwrap();
    let trickle = std::thread::spawn(move || {
        for _ in 0..30 {
            if slow.write_all(&record(STDIN, 1, b"x")).is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    });
    std::thread::sleep(Duration::from_millis(200));
    let started = Instant::now();
    let answer = f.process.get("count=1", &[]);
    eprintln!(
        "answered after {:?} behind a trickling body",
        started.elapsed()
    );
    assert_eq!(answer.body(), "count=1");
    trickle.join().unwrap();
}

#[test]
fn beginning_and_aborting_requests_cannot_keep_a_connection_open() {
    let f = Fixture::start(&[
        ("PSO_FCGI_FIRST_BYTE_TIMEOUT", "1"),
        ("PSO_FCGI_IDLE_TIMEOUT", "1"),
    ]);
    let mut stream = f.process.connect();
    let started = Instant::now();
    let mut closed = false;
    while started.elapsed() < Duration::from_secs(6) {
        let mut bytes = begin(1, true);
        bytes.extend(record(ABORT, 1, &[]));
        if stream.write_all(&bytes).is_err() {
            closed = true;
            break;
        }
        if closed_within(&mut stream, Duration::from_millis(300)) {
            closed = true;
            break;
        }
    }
    assert!(closed, "the connection outlived its deadline");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn an_abort_on_a_kept_connection_keeps_it() {
    let f = Fixture::start(&[]);
    let mut stream = f.process.connect();
    let pairs: Vec<(&[u8], &[u8])> = vec![
        (b"REQUEST_METHOD", b"POST"),
        (b"QUERY_STRING", b"echo=1"),
        (b"CONTENT_LENGTH", b"100"),
    ];
    let mut bytes = begin(1, true);
    bytes.extend(params_records(1, &pairs, 65_535));
    bytes.extend(record(STDIN, 1, b"part"));
    stream.write_all(&bytes).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    stream.write_all(&record(ABORT, 1, &[])).unwrap();
    let aborted = read_answer(&mut stream, 1, Duration::from_secs(10));
    assert_eq!(aborted.end.map(|e| e.1), Some(0), "{aborted:?}");
    stream
        .write_all(&request(2, true, &get_params("count=1", &[]), b""))
        .unwrap();
    assert_eq!(
        read_answer(&mut stream, 2, Duration::from_secs(10)).body(),
        "count=1"
    );
}

#[test]
fn sigterm_closes_the_listener_at_once() {
    let mut f = Fixture::start(&[]);
    let mut stream = f.process.connect();
    stream
        .write_all(&request(1, false, &get_params("sleep=1500", &[]), b""))
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    common::signal(f.process.child.id(), rustix::process::Signal::TERM);
    std::thread::sleep(Duration::from_millis(200));
    assert!(f.process.alive(), "a request is still in flight");
    assert!(
        TcpStream::connect(("127.0.0.1", f.process.port)).is_err(),
        "new connections are refused at once"
    );
    assert_eq!(
        read_answer(&mut stream, 1, Duration::from_secs(10)).status(),
        "Status: 200 OK"
    );
    assert!(f.process.child.wait().unwrap().success());
}

#[test]
fn a_flood_of_management_records_is_cut_off() {
    let f = Fixture::start(&[]);
    let mut stream = f.process.connect();
    let query = pair(b"FCGI_MAX_CONNS", b"");
    let flood: Vec<u8> = (0..1000)
        .flat_map(|_| record(GET_VALUES, 0, &query))
        .collect();
    let _ = stream.write_all(&flood);
    assert!(closed_within(&mut stream, Duration::from_secs(5)));
    f.still_serves("a management flood");
}

/// The peak resident memory of process `pid`, in KiB.
fn peak_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Found by a hostile review: a streaming handler and a flood of tiny body records made memory
/// grow without bound. What the worker buffers is now capped.
#[test]
fn a_body_flood_beside_a_streaming_handler_stays_bounded() {
    let f = Fixture::start(&[]);
    let pid = f.process.child.id();
    let peak = || peak_kib(pid);
    let before = peak();
    let mut stream = f.process.connect();
    let pairs: Vec<(&[u8], &[u8])> = vec![
        (b"REQUEST_METHOD", b"POST"),
        (b"QUERY_STRING", b"stream=20000"),
        (b"CONTENT_LENGTH", b"1"),
    ];
    let mut bytes = begin(1, false);
    bytes.extend(params_records(1, &pairs, 65_535));
    stream.write_all(&bytes).unwrap();
    let mut writer = stream.try_clone().unwrap();
    let flood = std::thread::spawn(move || {
        // 1-byte records without padding: 9 bytes each, 40 MB in all.
        let chunk: Vec<u8> = (0..100_000)
            .flat_map(|_| vec![1, STDIN, 0, 1, 0, 1, 0, 0, b'a'])
            .collect();
        for _ in 0..45 {
            if writer.write_all(&chunk).is_err() {
                break;
            }
        }
    });
    let answer = read_answer(&mut stream, 1, Duration::from_secs(60));
    drop(stream);
    flood.join().unwrap();
    assert!(
        answer.body().contains("piece 19999"),
        "{}",
        answer.body().len()
    );
    let grown = peak().saturating_sub(before);
    eprintln!("peak memory grew by {grown} KiB during a 40 MB body flood");
    assert!(grown < 16 * 1024, "{grown} KiB");
}

/// Found in a soak: clients pipelining kept requests without ever waiting for the answers took
/// the process from 3 to 157 MiB in 20 s with one connection, past 500 MiB with four, and each
/// request was slower than the last. A connection now holds at most one record's worth of what
/// it was sent; the rest waits in the socket, which holds the client back.
#[test]
fn pipelining_clients_are_held_back_by_the_socket_not_buffered() {
    let f = Fixture::start(&[]);
    let pid = f.process.child.id();
    let before = peak_kib(pid);
    let cookie = f.process.get("count=1", &[]).cookie().unwrap();
    let pairs = get_params("count=1", &[("HTTP_COOKIE", &cookie)]);
    // A body nobody reads: what is left of it is consumed on the kept connection.
    let batch = request(1, true, &pairs, b"0123456789abcdef").repeat(64);
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..2)
        .map(|_| {
            let stream = f.process.connect();
            let mut writer = stream.try_clone().unwrap();
            let (batch, stop) = (batch.clone(), stop.clone());
            let sender = std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) && writer.write_all(&batch).is_ok() {}
            });
            let mut reader = stream.try_clone().unwrap();
            // Answers as they come: (how many, how many were not a 200).
            let answers = std::thread::spawn(move || {
                let (mut answered, mut failed) = (0u64, 0u64);
                loop {
                    let answer = read_answer(&mut reader, 1, Duration::from_secs(30));
                    if answer.end.is_none() {
                        return (answered, failed);
                    }
                    answered += 1;
                    failed += u64::from(answer.status() != "Status: 200 OK");
                }
            });
            (stream, sender, answers)
        })
        .collect();
    std::thread::sleep(Duration::from_secs(4));
    stop.store(true, Ordering::Relaxed);
    for (stream, sender, answers) in clients {
        let _ = stream.shutdown(std::net::Shutdown::Both);
        sender.join().unwrap();
        let (answered, failed) = answers.join().unwrap();
        eprintln!("a pipelining connection had {answered} answers");
        assert!(
            answered > 0 && failed == 0,
            "{answered} answers, {failed} not a 200"
        );
    }
    let grown = peak_kib(pid).saturating_sub(before);
    eprintln!("peak memory grew by {grown} KiB beside two pipelining clients");
    assert!(grown < 16 * 1024, "{grown} KiB");
    f.still_serves("pipelining clients");
}
