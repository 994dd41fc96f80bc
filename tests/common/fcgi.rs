//! A FastCGI client for tests: builds well-formed and malformed streams, reads what comes back,
//! and runs a pso program as a FastCGI process on a free loopback port.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BEGIN: u8 = 1;
pub const ABORT: u8 = 2;
pub const END: u8 = 3;
pub const PARAMS: u8 = 4;
pub const STDIN: u8 = 5;
pub const STDOUT: u8 = 6;
pub const STDERR: u8 = 7;
pub const GET_VALUES: u8 = 9;
pub const GET_VALUES_RESULT: u8 = 10;
pub const UNKNOWN_TYPE: u8 = 11;

/// One record, padded to a multiple of 8 (content at most 65535 bytes).
pub fn record(kind: u8, id: u16, content: &[u8]) -> Vec<u8> {
    let padding = (8 - content.len() % 8) % 8;
    let mut out = vec![1, kind];
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&(content.len() as u16).to_be_bytes());
    out.push(padding as u8);
    out.push(0);
    out.extend_from_slice(content);
    out.extend(std::iter::repeat_n(0u8, padding));
    out
}

/// A BEGIN_REQUEST for the responder role.
pub fn begin(id: u16, keep_conn: bool) -> Vec<u8> {
    begin_role(id, 1, keep_conn)
}

pub fn begin_role(id: u16, role: u16, keep_conn: bool) -> Vec<u8> {
    let r = role.to_be_bytes();
    record(BEGIN, id, &[r[0], r[1], u8::from(keep_conn), 0, 0, 0, 0, 0])
}

/// One name-value pair in FastCGI's encoding.
pub fn pair(name: &[u8], value: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for len in [name.len(), value.len()] {
        if len < 128 {
            out.push(len as u8);
        } else {
            out.extend_from_slice(&(len as u32 | 0x8000_0000).to_be_bytes());
        }
    }
    out.extend_from_slice(name);
    out.extend_from_slice(value);
    out
}

/// The pairs, as PARAMS records of at most `chunk` bytes each, and the closing empty one.
pub fn params_records(id: u16, pairs: &[(&[u8], &[u8])], chunk: usize) -> Vec<u8> {
    let stream: Vec<u8> = pairs.iter().flat_map(|(n, v)| pair(n, v)).collect();
    let mut out = Vec::new();
    for piece in stream.chunks(chunk.clamp(1, 65_535)) {
        out.extend(record(PARAMS, id, piece));
    }
    out.extend(record(PARAMS, id, &[]));
    out
}

/// A whole request: BEGIN, PARAMS, and the body as STDIN records with the closing empty one.
pub fn request(id: u16, keep_conn: bool, pairs: &[(&[u8], &[u8])], body: &[u8]) -> Vec<u8> {
    let mut out = begin(id, keep_conn);
    out.extend(params_records(id, pairs, 65_535));
    for piece in body.chunks(65_535) {
        out.extend(record(STDIN, id, piece));
    }
    out.extend(record(STDIN, id, &[]));
    out
}

/// The parameters of a GET of the inspect program, plus `extra`.
pub fn get_params<'a>(query: &'a str, extra: &[(&'a str, &'a str)]) -> Vec<(&'a [u8], &'a [u8])> {
    let mut pairs: Vec<(&[u8], &[u8])> = vec![
        (b"GATEWAY_INTERFACE", b"CGI/1.1"),
        (b"REQUEST_METHOD", b"GET"),
        (b"SCRIPT_NAME", b"/cgi-bin/inspect"),
        (b"QUERY_STRING", query.as_bytes()),
        (b"REMOTE_ADDR", b"127.0.0.1"),
    ];
    pairs.extend(extra.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())));
    pairs
}

/// What came back for one request.
#[derive(Debug, Default)]
pub struct Answer {
    pub records: Vec<(u8, u16, Vec<u8>)>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// END_REQUEST's application status and protocol status.
    pub end: Option<(u32, u8)>,
    /// The connection ended (EOF or reset) before END_REQUEST.
    pub closed: bool,
}

impl Answer {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    pub fn body(&self) -> String {
        let text = self.text();
        text.split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default()
    }

    pub fn status(&self) -> String {
        self.text().lines().next().unwrap_or("").to_owned()
    }

    pub fn cookie(&self) -> Option<String> {
        self.text()
            .lines()
            .find_map(|l| l.strip_prefix("Set-Cookie: "))
            .map(|c| c.split(';').next().unwrap_or("").to_owned())
    }
}

/// Reads records until END_REQUEST for `id` (or the end of the connection, or `timeout`).
pub fn read_answer(stream: &mut TcpStream, id: u16, timeout: Duration) -> Answer {
    stream.set_read_timeout(Some(timeout)).unwrap();
    let mut answer = Answer::default();
    let mut buf = Vec::new();
    loop {
        while buf.len() >= 8 {
            let len = u16::from_be_bytes([buf[4], buf[5]]) as usize;
            let total = 8 + len + buf[6] as usize;
            if buf.len() < total {
                break;
            }
            let (kind, rid) = (buf[1], u16::from_be_bytes([buf[2], buf[3]]));
            let content = buf[8..8 + len].to_vec();
            buf.drain(..total);
            match kind {
                STDOUT if rid == id => answer.stdout.extend_from_slice(&content),
                STDERR if rid == id => answer.stderr.extend_from_slice(&content),
                END if rid == id => {
                    let app = u32::from_be_bytes([content[0], content[1], content[2], content[3]]);
                    answer.end = Some((app, content[4]));
                }
                _ => {}
            }
            answer.records.push((kind, rid, content));
            if answer.end.is_some() {
                return answer;
            }
        }
        let mut chunk = [0u8; 65_536];
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => {
                answer.closed = true;
                return answer;
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Reads until the server closes the connection; whether it did within `timeout`.
pub fn closed_within(stream: &mut TcpStream, timeout: Duration) -> bool {
    stream.set_read_timeout(Some(timeout)).unwrap();
    let mut sink = [0u8; 4096];
    loop {
        match stream.read(&mut sink) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                return false;
            }
            Err(_) => return true,
        }
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A pso program running as a FastCGI process on a loopback port.
pub struct FcgiProcess {
    pub child: Child,
    pub port: u16,
    pub stderr: PathBuf,
}

impl FcgiProcess {
    /// Starts `program` with `PSO_FCGI_BIND` on a free port and `env`, logging to `log`.
    pub fn start(program: &Path, env: &[(&str, &str)], log: &Path) -> FcgiProcess {
        let port = free_port();
        let stderr = std::fs::File::create(log).unwrap();
        let child = Command::new(program)
            .env_clear()
            .env("PSO_FCGI_BIND", format!("127.0.0.1:{port}"))
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap();
        let started = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "the FastCGI process did not listen"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        FcgiProcess {
            child,
            port,
            stderr: log.to_owned(),
        }
    }

    pub fn connect(&self) -> TcpStream {
        TcpStream::connect(("127.0.0.1", self.port)).unwrap()
    }

    /// Sends `bytes` on a new connection and reads the answer to request `id`.
    pub fn exchange(&self, bytes: &[u8], id: u16) -> Answer {
        let mut stream = self.connect();
        stream.write_all(bytes).unwrap();
        read_answer(&mut stream, id, Duration::from_secs(10))
    }

    /// A GET of the inspect program with `query` and extra parameters.
    pub fn get(&self, query: &str, extra: &[(&str, &str)]) -> Answer {
        let pairs = get_params(query, extra);
        self.exchange(&request(1, false, &pairs, b""), 1)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    pub fn terminate(&mut self) -> std::process::ExitStatus {
        super::signal(self.child.id(), rustix::process::Signal::TERM);
        self.child.wait().unwrap()
    }
}

impl Drop for FcgiProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
