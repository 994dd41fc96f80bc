//! A request handed to a program per RFC 3875, and the program's answer relayed to the client.
//!
//! The meta-variables are what Apache's `mod_cgi` gives a program, with its safety rules:
//! no `HTTP_PROXY` from a `Proxy:` header (httpoxy), no header whose name holds `_` (so that
//! `X_Forwarded_For` cannot pose as `X-Forwarded-For`), no `Authorization`; the `SetEnv`
//! variables first, so that they cannot override the request's own variables (a request
//! header may in turn override a `SetEnv HTTP_*`). The answer's head (`Status:`, `Location:`, other headers) is
//! checked before anything reaches the client: a head that does not parse is a 502, one that
//! does not come in time a 504. So is a head that parses but that no program may give: a 1xx
//! status (the client would take the body for the real response), a second `Status:` or
//! `Location:` (which one was meant?), a `Content-Length` that is not plain digits or does not
//! fit 64 bits, a body after a 204, 205 or 304 (the client reads none: the body would pose as
//! the next response), more body with the head than its `Content-Length` (the rest would pose
//! as the next response), a head over 64 KiB as the program wrote it or as it would be sent.
//! The client of a program that failed gets none of its bytes. A body goes on to the client up
//! to its `Content-Length`, not a byte past it: a program that writes more once its head has
//! gone out, or less, has its answer cut there, and the log says so.

use std::collections::HashSet;
use std::ffi::OsString;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags};

use super::http::{self, Request};

/// The most bytes of a program's answer head, blank line included: as the program wrote it, and
/// as it is sent on.
const MAX_ANSWER_HEAD: usize = 64 * 1024;
/// What a program is given as `PATH`, as Apache does.
pub(super) const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// One request for one program: what the meta-variables are made of.
pub struct Call<'a> {
    pub request: &'a Request,
    /// Usually the request's; `GET` after a local redirect.
    pub method: &'a str,
    /// The target as the program should see it in `REQUEST_URI`.
    pub target: &'a str,
    pub query: &'a str,
    pub name: &'a str,
    pub executable: &'a Path,
    pub path_info: &'a str,
    pub peer: SocketAddr,
    pub local: SocketAddr,
    /// Whether a body goes with it (not after a local redirect).
    pub with_body: bool,
}

/// A meta-variable: name and value, as bytes.
pub type Variable = (Vec<u8>, Vec<u8>);

/// The environment of `call`: the `SetEnv` variables, then RFC 3875's meta-variables and
/// the request's headers as `HTTP_*`.
pub fn meta_variables(
    call: &Call,
    set_env: &[(String, String)],
    document_root: &Path,
) -> Vec<Variable> {
    let mut vars: Vec<Variable> = Vec::new();
    let mut put = |name: &str, value: &[u8]| {
        vars.retain(|(n, _)| n != name.as_bytes());
        vars.push((name.as_bytes().to_vec(), value.to_vec()));
    };
    for (name, value) in set_env {
        put(name, value.as_bytes());
    }
    let request = call.request;
    put("PATH", PATH.as_bytes());
    put("GATEWAY_INTERFACE", b"CGI/1.1");
    put(
        "SERVER_SOFTWARE",
        format!("pso/{}", env!("CARGO_PKG_VERSION")).as_bytes(),
    );
    put("SERVER_PROTOCOL", request.version.as_bytes());
    put("SERVER_NAME", server_name(request, call.local).as_bytes());
    put("SERVER_ADDR", call.local.ip().to_string().as_bytes());
    put("SERVER_PORT", call.local.port().to_string().as_bytes());
    put("REMOTE_ADDR", call.peer.ip().to_string().as_bytes());
    put("REMOTE_PORT", call.peer.port().to_string().as_bytes());
    put("REQUEST_METHOD", call.method.as_bytes());
    put("REQUEST_URI", call.target.as_bytes());
    put("QUERY_STRING", call.query.as_bytes());
    put(
        "SCRIPT_NAME",
        format!("{}{}", super::site::PREFIX, call.name).as_bytes(),
    );
    put(
        "SCRIPT_FILENAME",
        call.executable.as_os_str().as_encoded_bytes(),
    );
    put(
        "DOCUMENT_ROOT",
        document_root.as_os_str().as_encoded_bytes(),
    );
    if !call.path_info.is_empty() {
        put("PATH_INFO", call.path_info.as_bytes());
        let translated = format!("{}{}", document_root.display(), call.path_info);
        put("PATH_TRANSLATED", translated.as_bytes());
    }
    if call.with_body {
        if let Some(content_type) = request.header("Content-Type") {
            put("CONTENT_TYPE", content_type.as_bytes());
        }
        if request.content_length > 0 || request.header("Content-Length").is_some() {
            put(
                "CONTENT_LENGTH",
                request.content_length.to_string().as_bytes(),
            );
        }
    }
    for (name, value) in header_variables(request) {
        put(&name, &value);
    }
    vars
}

/// The request's headers as `HTTP_*` variables, repeated headers joined (`Cookie` with `; `).
fn header_variables(request: &Request) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = Vec::new();
    for (name, value) in &request.headers {
        let skipped = name.contains('_')
            || ["Proxy", "Authorization", "Content-Type", "Content-Length"]
                .iter()
                .any(|s| name.eq_ignore_ascii_case(s));
        if skipped {
            continue;
        }
        let var = format!("HTTP_{}", name.to_ascii_uppercase().replace('-', "_"));
        match out.iter_mut().find(|(n, _)| *n == var) {
            Some((_, joined)) => {
                let separator: &[u8] = if var == "HTTP_COOKIE" { b"; " } else { b", " };
                joined.extend_from_slice(separator);
                joined.extend_from_slice(value);
            }
            None => out.push((var, value.clone())),
        }
    }
    out
}

/// `SERVER_NAME`: the Host header's name when it is a plain host name, else the address the
/// connection came in on.
fn server_name(request: &Request, local: SocketAddr) -> String {
    let name = super::http::host_name(request.header("Host").unwrap_or(""));
    let plain = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'[' | b']' | b':'));
    if plain {
        name.to_string()
    } else {
        local.ip().to_string()
    }
}

/// How a program's answer ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Relayed {
    /// A response went to the client; `complete` is false when the program's output stopped
    /// early (it hung past the deadline or ended short of its `Content-Length`), went on past
    /// its `Content-Length`, or the client went away.
    Sent {
        status: u16,
        bytes: u64,
        complete: bool,
        /// What the program did wrong once its head had gone out, for the log: too late for a
        /// 502.
        fault: Option<String>,
    },
    /// The program asked for another local resource to be served instead (RFC 3875 6.2.2).
    LocalRedirect(String),
    /// Nothing reached the client; it should get `status` (502 or 504).
    Failed { status: u16, why: String },
}

/// Reads the answer's head from `output` and, unless it is a local redirect, sends the
/// response to `client` (the body too, unless `head_only`).
pub fn relay(output: &mut dyn Read, client: &mut dyn Write, head_only: bool) -> Relayed {
    let malformed = |why: String| Relayed::Failed {
        status: 502,
        why: format!("the program's answer is malformed: {why}"),
    };
    let (head, body_start) = match read_head(output) {
        Ok(read) => read,
        Err(failure) => return failure,
    };
    let (status, reason, headers, content_length) = match parse_head(&head) {
        Ok(Answer::LocalRedirect(target)) => return Relayed::LocalRedirect(target),
        Ok(Answer::Respond {
            status,
            reason,
            headers,
            content_length,
        }) => (status, reason, headers, content_length),
        Err(why) => return malformed(why),
    };
    let mut out = format!("HTTP/1.1 {status} {reason}\r\n");
    for (name, value) in &headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str("Connection: close\r\n\r\n");
    // The limit holds for what the client gets too, and the head grows on its way: a CR on
    // each line, a space after each colon, the status line and `Connection: close`.
    if out.len() > MAX_ANSWER_HEAD {
        return malformed(format!(
            "its head is too large: {} bytes as sent, over {MAX_ANSWER_HEAD}",
            out.len()
        ));
    }
    // These have no content whatever the Content-Length says (a 304's is the length of what
    // a 200 would have sent).
    let length = if matches!(status, 204 | 205 | 304) {
        if let Err(failure) = expect_no_body(output, &body_start, status) {
            return failure;
        }
        Some(0)
    } else {
        content_length
    };
    if let Some(length) = length {
        let excess = (body_start.len() as u64).saturating_sub(length);
        if excess > 0 {
            // Known before the head goes out, so the whole answer can still be refused.
            return malformed(format!(
                "past its Content-Length of {length}, {excess} more bytes came with its head"
            ));
        }
    }
    if client.write_all(out.as_bytes()).is_err() {
        return Relayed::Sent {
            status,
            bytes: 0,
            complete: false,
            fault: None,
        };
    }
    if head_only {
        return Relayed::Sent {
            status,
            bytes: 0,
            complete: true,
            fault: None,
        };
    }
    relay_body(output, client, &body_start, length, status)
}

/// Sends the body, `start` and then the rest of `output`: to the output's end or, given a
/// `length`, that many bytes and not one more.
fn relay_body(
    output: &mut dyn Read,
    client: &mut dyn Write,
    start: &[u8],
    length: Option<u64>,
    status: u16,
) -> Relayed {
    let sent = |bytes, complete, fault| Relayed::Sent {
        status,
        bytes,
        complete,
        fault,
    };
    let mut send = |chunk: &[u8], bytes: &mut u64| -> Result<(), Relayed> {
        let room = length.map_or(u64::MAX, |length| length.saturating_sub(*bytes));
        let take = usize::try_from(room).map_or(chunk.len(), |room| room.min(chunk.len()));
        if client.write_all(&chunk[..take]).is_err() {
            return Err(sent(*bytes, false, None));
        }
        *bytes += take as u64;
        if take < chunk.len() {
            // Past the length, the bytes would pose as the next response; the head is out, so
            // the response ends here, at the length it gave.
            let length = length.unwrap_or(0);
            let excess = chunk.len() - take;
            return Err(sent(
                *bytes,
                false,
                Some(format!(
                    "the program wrote past its Content-Length of {length} ({excess} bytes or \
                     more, not relayed)"
                )),
            ));
        }
        Ok(())
    };
    let mut bytes = 0;
    if let Err(relayed) = send(start, &mut bytes) {
        return relayed;
    }
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match output.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if let Err(relayed) = send(&buf[..n], &mut bytes) {
                    return relayed;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return sent(bytes, false, None),
        }
    }
    match length {
        Some(length) if bytes < length => sent(
            bytes,
            false,
            Some(format!(
                "the program's answer ended {} bytes short of its Content-Length of {length}: \
                 the client's response is cut short",
                length - bytes
            )),
        ),
        _ => sent(bytes, true, None),
    }
}

/// Reads up to the blank line that ends the head: the head and the body bytes read with it.
fn read_head(output: &mut dyn Read) -> Result<(Vec<u8>, Vec<u8>), Relayed> {
    let too_large = || Relayed::Failed {
        status: 502,
        why: format!(
            "the program's answer is malformed: its head is too large: over {MAX_ANSWER_HEAD} \
             bytes as written"
        ),
    };
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        if let Some((end, separator)) = head_end(&buf) {
            // Judged on the head itself (its blank line included), not on how much arrived
            // with it: a read may bring several kilobytes past the limit.
            if end + separator > MAX_ANSWER_HEAD {
                return Err(too_large());
            }
            let body = buf[end + separator..].to_vec();
            buf.truncate(end);
            return Ok((buf, body));
        }
        // Without a blank line yet, all of it is head, and the blank line is a byte more at
        // least.
        if buf.len() >= MAX_ANSWER_HEAD {
            return Err(too_large());
        }
        match output.read(&mut chunk) {
            Ok(0) => {
                return Err(Relayed::Failed {
                    status: 502,
                    why: if buf.is_empty() {
                        "the program wrote nothing".into()
                    } else {
                        "the program's answer has no blank line after its head".into()
                    },
                });
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                return Err(Relayed::Failed {
                    status: 504,
                    why: "the program did not answer in time".into(),
                });
            }
            Err(e) => {
                return Err(Relayed::Failed {
                    status: 502,
                    why: format!("reading the program's answer: {e}"),
                });
            }
        }
    }
}

/// Checks that the answer of a 204, 205 or 304 ends with its head, reading to its end: the head
/// waits until then, since a body that came after it had gone out would already be the
/// client's.
fn expect_no_body(output: &mut dyn Read, body_start: &[u8], status: u16) -> Result<(), Relayed> {
    let with_body = || Relayed::Failed {
        status: 502,
        why: format!("the program's answer is malformed: a body after Status {status}"),
    };
    if !body_start.is_empty() {
        return Err(with_body());
    }
    let mut byte = [0u8; 1];
    loop {
        match output.read(&mut byte) {
            Ok(0) => return Ok(()),
            Ok(_) => return Err(with_body()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                return Err(Relayed::Failed {
                    status: 504,
                    why: format!("the program did not end its answer (Status {status}) in time"),
                });
            }
            Err(e) => {
                return Err(Relayed::Failed {
                    status: 502,
                    why: format!("reading the program's answer: {e}"),
                });
            }
        }
    }
}

/// Where the head ends (`\n\n`, `\r\n\r\n` or a mix) and the length of the separator.
fn head_end(buf: &[u8]) -> Option<(usize, usize)> {
    let newline = buf.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2));
    let crlf = buf.windows(3).position(|w| w == b"\n\r\n").map(|i| (i, 3));
    match (newline, crlf) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

/// A parsed answer head.
#[derive(Debug, PartialEq, Eq)]
enum Answer {
    Respond {
        status: u16,
        reason: String,
        headers: Vec<(String, String)>,
        content_length: Option<u64>,
    },
    LocalRedirect(String),
}

fn parse_head(head: &[u8]) -> Result<Answer, String> {
    let text = std::str::from_utf8(head).map_err(|_| "the head is not UTF-8".to_string())?;
    let mut status = None;
    let mut location = None;
    let mut headers: Vec<(String, String)> = Vec::new();
    let mut content_length = None;
    for line in text.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| format!("a header line without a colon: {line:?}"))?;
        let is_token = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        if !is_token {
            return Err(format!("a bad header name: {name:?}"));
        }
        let value = value.trim_matches([' ', '\t']);
        if value.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f) {
            return Err(format!("a control character in {name}"));
        }
        if name.eq_ignore_ascii_case("Status") {
            if status.is_some() {
                return Err("more than one Status".into());
            }
            status = Some(parse_status(value)?);
        } else if name.eq_ignore_ascii_case("Location") {
            if location.is_some() {
                return Err("more than one Location".into());
            }
            location = Some(value.to_string());
        } else if ["Connection", "Transfer-Encoding", "Keep-Alive"]
            .iter()
            .any(|hop| name.eq_ignore_ascii_case(hop))
        {
            // Hop-by-hop: the server decides how this connection carries the body.
        } else {
            let repeated = name.eq_ignore_ascii_case("Content-Length")
                && headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(name));
            if repeated {
                return Err("more than one Content-Length".into());
            }
            // The client frames the body by it: a value clients may read each their own way
            // (`1, 1`, `-1`, `+1`) is the program's error.
            let is_length = |v: &str| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit());
            if name.eq_ignore_ascii_case("Content-Length") {
                if !is_length(value) {
                    return Err(format!("a Content-Length that is not a number: {value:?}"));
                }
                // Past 64 bits, clients read it each their own way (an error, a wrap, a cap),
                // and the body could not be counted against it.
                let length = value.parse::<u64>().map_err(|_| {
                    format!("a Content-Length that does not fit 64 bits: {value:?}")
                })?;
                content_length = Some(length);
            }
            headers.push((name.to_string(), value.to_string()));
        }
    }
    if let Some(location) = location {
        if status.is_none() && location.starts_with('/') {
            return Ok(Answer::LocalRedirect(location));
        }
        headers.push(("Location".to_string(), location));
        status.get_or_insert((302, http::reason(302).to_string()));
    }
    let (status, reason) = status.unwrap_or((200, "OK".to_string()));
    // Unlike a 204's or a 304's, a 205's Content-Length frames what follows (RFC 9112 6.3):
    // the client would wait for a body that a 205 cannot have.
    if let Some(length) = content_length.filter(|&l| status == 205 && l > 0) {
        return Err(format!(
            "a Content-Length of {length} on a 205, which has no content"
        ));
    }
    Ok(Answer::Respond {
        status,
        reason,
        headers,
        content_length,
    })
}

/// A `Status:` value: three digits, a final status (200 to 599), then a reason phrase.
fn parse_status(value: &str) -> Result<(u16, String), String> {
    let (code, reason) = value.split_once(' ').unwrap_or((value, ""));
    let status: u16 = Some(code)
        .filter(|c| c.len() == 3 && c.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|c| c.parse().ok())
        .filter(|s| (100..=599).contains(s))
        .ok_or_else(|| format!("a bad Status: {value:?}"))?;
    if status < 200 {
        // An interim status says a final one follows: the client would take the program's
        // body for the server's response.
        return Err(format!("a 1xx status, which is no final answer: {value:?}"));
    }
    let reason = match reason.trim() {
        "" => http::reason(status).to_string(),
        given => given.to_string(),
    };
    Ok((status, reason))
}

/// A program's standard output, read with a deadline.
pub struct DeadlineReader<R> {
    pub inner: R,
    pub deadline: Instant,
}

impl<R: Read + std::os::fd::AsFd> Read for DeadlineReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let left = self.deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::ErrorKind::TimedOut.into());
            }
            let timeout = rustix::event::Timespec::try_from(left).ok();
            let mut fds = [PollFd::new(&self.inner, PollFlags::IN)];
            match rustix::event::poll(&mut fds, timeout.as_ref()) {
                Ok(0) => return Err(io::ErrorKind::TimedOut.into()),
                Ok(_) => return self.inner.read(buf),
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// Runs `executable` as a CGI program for `call`, relaying its answer to `client`.
pub fn run_cgi(
    call: &Call,
    vars: Vec<Variable>,
    body: Option<Box<dyn Read + Send>>,
    cwd: &Path,
    timeout: Duration,
    children: &Children,
    client: &mut dyn Write,
) -> Relayed {
    let mut command = Command::new(call.executable);
    command
        .env_clear()
        .current_dir(cwd)
        // A group of its own, so that a timeout ends whatever the program started too.
        .process_group(0)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (name, value) in vars {
        command.env(OsString::from_vec(name), OsString::from_vec(value));
    }
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => {
            return Relayed::Failed {
                status: 500,
                why: format!("cannot start {}: {e}", call.executable.display()),
            };
        }
    };
    let _running = children.track(child.id());
    if let Some(mut stdin) = child.stdin.take() {
        // A thread of its own, so that a program that answers before reading its whole body
        // cannot deadlock with the server.
        std::thread::spawn(move || {
            if let Some(mut body) = body {
                let _ = io::copy(&mut body, &mut stdin);
            }
        });
    }
    if let Some(stderr) = child.stderr.take() {
        log_lines(call.name.to_string(), stderr);
    }
    let deadline = Instant::now() + timeout;
    let Some(stdout) = child.stdout.take() else {
        return Relayed::Failed {
            status: 500,
            why: "no standard output".into(),
        };
    };
    let mut output = DeadlineReader {
        inner: stdout,
        deadline,
    };
    let relayed = relay(&mut output, client, call.method == "HEAD");
    drop(output);
    let finished = matches!(relayed, Relayed::Sent { complete: true, .. })
        || matches!(relayed, Relayed::LocalRedirect(_));
    reap(&mut child, call.name, finished, deadline);
    relayed
}

/// Waits for `child` until `deadline` (at once if its answer did not finish), then kills its
/// process group; logs how it ended if not well.
fn reap(child: &mut Child, name: &str, finished: bool, deadline: Instant) {
    if !finished {
        // It answered badly or too late: it goes, with whatever it started (killed before it
        // is reaped, so that its group's id cannot have been reused).
        kill_group(child.id());
    }
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                if let Some(signal) = status.signal() {
                    eprintln!("{name}: killed by signal {signal}");
                } else if !status.success() {
                    eprintln!("{name}: exited with {status}");
                }
                return;
            }
            Ok(None) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Ok(None) => {
                eprintln!("{name}: still running at its deadline: killed");
                kill_group(child.id());
                let _ = child.wait();
                return;
            }
            Err(e) => {
                eprintln!("{name}: cannot wait for it: {e}");
                return;
            }
        }
    }
}

/// SIGKILL to the process group that `pid` leads (programs run in groups of their own).
pub fn kill_group(pid: u32) {
    if let Some(pid) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    {
        let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
    }
}

/// The programs running now, so that stopping the server stops them too.
#[derive(Default)]
pub struct Children(Mutex<HashSet<u32>>);

impl Children {
    /// Records a running program until the returned guard is dropped.
    pub fn track(&self, pid: u32) -> Tracked<'_> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).insert(pid);
        Tracked(self, pid)
    }

    /// Kills every running program's process group.
    pub fn kill_all(&self) {
        for pid in self.0.lock().unwrap_or_else(|e| e.into_inner()).drain() {
            kill_group(pid);
        }
    }
}

/// A running program, forgotten when dropped.
pub struct Tracked<'a>(&'a Children, u32);

impl Drop for Tracked<'_> {
    fn drop(&mut self) {
        self.0
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.1);
    }
}

/// The longest line of a program's standard error that is logged; the rest of a longer line
/// is read and dropped, so a program cannot make the server hold more.
pub const MAX_LOG_LINE: usize = 4096;

/// Copies a program's standard error to the server's, a line at a time, each with the
/// program's name.
pub fn log_lines(name: String, stream: impl Read + Send + 'static) {
    std::thread::spawn(move || {
        use std::io::BufRead;
        let mut reader = io::BufReader::new(stream);
        let mut line = Vec::with_capacity(256);
        loop {
            let (used, ended) = match reader.fill_buf() {
                Ok([]) => {
                    log_line(&name, &line);
                    return;
                }
                Ok(buf) => {
                    let end = buf.iter().position(|&b| b == b'\n');
                    let take = end.unwrap_or(buf.len());
                    let room = MAX_LOG_LINE.saturating_sub(line.len());
                    line.extend_from_slice(&buf[..take.min(room)]);
                    (end.map_or(take, |e| e + 1), end.is_some())
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return,
            };
            reader.consume(used);
            if ended {
                log_line(&name, &line);
                line.clear();
            }
        }
    });
}

/// Logs one line of a program's, made printable: control characters from a program must not
/// reach the developer's terminal.
pub fn log_line(name: &str, line: &[u8]) {
    if line.is_empty() {
        return;
    }
    let text = String::from_utf8_lossy(line);
    let text: String = text
        .trim_end_matches('\r')
        .chars()
        .map(|c| if c.is_control() && c != '\t' { '?' } else { c })
        .collect();
    eprintln!("{name}: {text}");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn relay_bytes(answer: &[u8], head_only: bool) -> (Relayed, String) {
        let mut client = Vec::new();
        let relayed = relay(&mut &answer[..], &mut client, head_only);
        (relayed, String::from_utf8(client).unwrap())
    }

    #[test]
    fn relays_an_answer_with_its_status_and_headers() {
        let (relayed, sent) = relay_bytes(
            b"Content-Type: text/plain\r\nStatus: 201 Made\r\nSet-Cookie: a=1\r\nConnection: keep-alive\r\n\r\nhello",
            false,
        );
        assert_eq!(
            relayed,
            Relayed::Sent {
                status: 201,
                bytes: 5,
                complete: true,
                fault: None,
            }
        );
        assert_eq!(
            sent,
            "HTTP/1.1 201 Made\r\nContent-Type: text/plain\r\nSet-Cookie: a=1\r\nConnection: close\r\n\r\nhello"
        );
        let (_, sent) = relay_bytes(b"Content-Type: text/plain\n\nhello", true);
        assert_eq!(
            sent,
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n"
        );
    }

    #[test]
    fn redirects_locally_or_to_the_client() {
        assert_eq!(
            relay_bytes(b"Location: /cgi-bin/other?x=1\n\n", false).0,
            Relayed::LocalRedirect("/cgi-bin/other?x=1".into())
        );
        let (relayed, sent) = relay_bytes(b"Location: https://example.org/\n\n", false);
        assert!(matches!(relayed, Relayed::Sent { status: 302, .. }));
        assert!(
            sent.contains("Location: https://example.org/\r\n"),
            "{sent}"
        );
    }

    #[test]
    fn refuses_malformed_answers() {
        for answer in [
            &b""[..],
            b"Content-Type: text/plain\r\n",
            b"no colon here\n\n",
            b"Bad Name: x\n\n",
            b"Status: 42\n\n",
            b"Status: abc\n\n",
            b"X: a\x01b\n\n",
            b"Content-Length: 1\nContent-Length: 2\n\nab",
        ] {
            let (relayed, sent) = relay_bytes(answer, false);
            assert!(
                matches!(relayed, Relayed::Failed { status: 502, .. }),
                "{answer:?}: {relayed:?}"
            );
            assert_eq!(sent, "");
        }
        let huge = vec![b'a'; MAX_ANSWER_HEAD + 10];
        assert!(matches!(
            relay_bytes(&huge, false).0,
            Relayed::Failed { status: 502, .. }
        ));
    }

    /// Answers that parse as a head but that the program must not give: each is a 502, and
    /// not one of the program's bytes reaches the client.
    #[test]
    fn refuses_answers_a_program_must_not_give() {
        let mut long_head = b"X-Long: ".to_vec();
        long_head.extend(std::iter::repeat_n(b'a', MAX_ANSWER_HEAD));
        long_head.extend_from_slice(b"\n\nbody");
        // Under the limit as written, over it as sent: each line gains a CR and a space.
        let mut short_lines: Vec<u8> = (0..9000)
            .flat_map(|i| format!("X{i}:\n").into_bytes())
            .collect();
        assert!(short_lines.len() < MAX_ANSWER_HEAD);
        short_lines.extend_from_slice(b"\nbody");
        let cases: Vec<(&str, Vec<u8>)> = vec![
            (
                "1xx",
                b"Status: 100 Continue\n\nHTTP/1.1 200 OK\r\nX-Injected: yes\r\n\r\nhello".to_vec(),
            ),
            (
                "1xx",
                b"Status: 101 Switching Protocols\nUpgrade: websocket\n\n".to_vec(),
            ),
            ("1xx", b"Status: 199\n\n".to_vec()),
            (
                "more than one Status",
                b"Status: 200 OK\nStatus: 404 Not Found\n\nbody".to_vec(),
            ),
            (
                "more than one Status",
                b"Status: 404\r\nstatus: 404\r\n\r\n".to_vec(),
            ),
            (
                "more than one Location",
                b"Location: /cgi-bin/a\nLocation: https://example.org/\n\n".to_vec(),
            ),
            ("204", b"Status: 204 No Content\n\nbody".to_vec()),
            (
                "204",
                b"Status: 204\r\n\r\nHTTP/1.1 200 OK\r\nX-Injected: yes\r\n\r\n".to_vec(),
            ),
            ("304", b"Status: 304 Not Modified\n\nbody".to_vec()),
            ("Status", b"Status: 2000\n\n".to_vec()),
            ("Status", b"Status: 20x\n\n".to_vec()),
            ("Status", b"Status: +20\n\n".to_vec()),
            ("Status", b"Status: 600\n\n".to_vec()),
            ("Status", b"Status: 099\n\n".to_vec()),
            ("Status", b"Status: 0200 OK\n\n".to_vec()),
            ("Status", b"Status:\n\n".to_vec()),
            ("control character", b"X: a\rb\n\n".to_vec()),
            ("control character", b"X: a\0b\n\n".to_vec()),
            ("header name", b"X\r: a\n\n".to_vec()),
            ("header name", b"X\0Y: a\n\n".to_vec()),
            ("Content-Length", b"Content-Length: 1, 1\n\na".to_vec()),
            ("Content-Length", b"Content-Length: -1\n\n".to_vec()),
            ("too large", long_head),
            ("too large", short_lines),
            // What arrived with the head is already past the length it gives: the rest
            // would pose as a response of its own.
            (
                "past its Content-Length",
                b"Content-Length: 5\n\nhelloHTTP/1.1 200 OK\r\nX-Injected: yes\r\n\r\nEVIL"
                    .to_vec(),
            ),
            (
                "past its Content-Length",
                b"Content-Length: 0\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nEVIL"
                    .to_vec(),
            ),
            (
                "Content-Length",
                b"Content-Length: 99999999999999999999999999\n\nbody".to_vec(),
            ),
            (
                "Content-Length",
                b"Content-Length: 18446744073709551616\n\n".to_vec(),
            ),
            ("205", b"Status: 205 Reset Content\n\nbody".to_vec()),
            ("205", b"Status: 205\nContent-Length: 4\n\n".to_vec()),
        ];
        for (want, answer) in cases {
            for head_only in [false, true] {
                let (relayed, sent) = relay_bytes(&answer, head_only);
                let shown = String::from_utf8_lossy(&answer[..answer.len().min(80)]);
                match &relayed {
                    Relayed::Failed { status: 502, why } => {
                        assert!(why.contains(want), "{shown:?}: want {want:?} in {why:?}")
                    }
                    _ => panic!("{shown:?}: {relayed:?}"),
                }
                assert_eq!(sent, "", "{shown:?}");
            }
        }
    }

    /// The limit holds for the head as the program wrote it, blank line included, and is
    /// judged on the head itself: one of exactly that size passes, even when its blank line
    /// comes in a later read, and one a byte longer does not. (A `Keep-Alive` header is not
    /// sent on, so that the head as sent stays small.)
    #[test]
    fn a_head_at_the_limit_as_written_is_relayed() {
        for split in [1, 2, 3] {
            for (extra, passes) in [(0, true), (1, false)] {
                let mut head = b"Keep-Alive: ".to_vec();
                head.extend(std::iter::repeat_n(
                    b'a',
                    MAX_ANSWER_HEAD + extra - head.len() - 2,
                ));
                head.extend_from_slice(b"\n\n");
                assert_eq!(head.len(), MAX_ANSWER_HEAD + extra);
                let (first, last) = head.split_at(head.len() - split);
                let mut output = first.chain(last).chain(&b"body"[..]);
                let mut client = Vec::new();
                let relayed = relay(&mut output, &mut client, false);
                if passes {
                    assert!(
                        matches!(
                            relayed,
                            Relayed::Sent {
                                status: 200,
                                bytes: 4,
                                complete: true,
                                ..
                            }
                        ),
                        "{split}: {relayed:?}"
                    );
                } else {
                    assert!(
                        matches!(&relayed, Relayed::Failed { status: 502, why } if why.contains("too large")),
                        "{split}: {relayed:?}"
                    );
                    assert!(client.is_empty());
                }
            }
        }
    }

    /// The limit holds for the head as sent too, status line, CRLFs and `Connection: close`
    /// included: the client never gets a longer one.
    #[test]
    fn a_head_at_the_limit_as_sent_is_relayed() {
        let sent_around = "HTTP/1.1 200 OK\r\nX-Long: \r\nConnection: close\r\n\r\n".len();
        for (extra, passes) in [(0, true), (1, false)] {
            let mut head = b"X-Long: ".to_vec();
            head.extend(std::iter::repeat_n(
                b'a',
                MAX_ANSWER_HEAD + extra - sent_around,
            ));
            head.extend_from_slice(b"\n\nbody");
            let (relayed, sent) = relay_bytes(&head, false);
            if passes {
                assert!(
                    matches!(relayed, Relayed::Sent { status: 200, .. }),
                    "{relayed:?}"
                );
                assert_eq!(sent.len(), MAX_ANSWER_HEAD + 4);
                assert!(sent.ends_with("\r\n\r\nbody"));
            } else {
                assert!(
                    matches!(&relayed, Relayed::Failed { status: 502, why } if why.contains("too large")),
                    "{relayed:?}"
                );
                assert_eq!(sent, "");
            }
        }
    }

    /// Bytes past the `Content-Length` that come after the head went out are not relayed: the
    /// client gets exactly what the head promised, and the connection ends there.
    #[test]
    fn relays_no_more_than_the_content_length() {
        let head = &b"Content-Length: 5\n\n"[..];
        let late = &b"HTTP/1.1 200 OK\r\nX-Injected: yes\r\n\r\nEVIL"[..];
        let with = |a: &[u8], b: &[u8]| [a, b].concat();
        // The reads: the body and the excess split every way after the head's.
        let cases: [(Vec<u8>, Vec<u8>, Vec<u8>); 4] = [
            (head.to_vec(), b"hello".to_vec(), late.to_vec()),
            (with(head, b"hel"), b"lo".to_vec(), late.to_vec()),
            (with(head, b"hel"), with(b"lo", late), Vec::new()),
            (with(head, b"hello"), late.to_vec(), Vec::new()),
        ];
        for (first, second, third) in &cases {
            let mut output = first.chain(&second[..]).chain(&third[..]);
            let mut client = Vec::new();
            let relayed = relay(&mut output, &mut client, false);
            assert_eq!(
                String::from_utf8(client).unwrap(),
                "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello"
            );
            assert_eq!(
                relayed,
                Relayed::Sent {
                    status: 200,
                    bytes: 5,
                    complete: false,
                    fault: Some(format!(
                        "the program wrote past its Content-Length of 5 ({} bytes or more, not \
                         relayed)",
                        late.len()
                    )),
                }
            );
        }
        // A length of 0, the head alone in its read, then a response of its own.
        let mut output = b"Content-Length: 0\r\n\r\n".chain(late);
        let mut client = Vec::new();
        let relayed = relay(&mut output, &mut client, false);
        assert!(
            matches!(
                &relayed,
                Relayed::Sent {
                    bytes: 0,
                    complete: false,
                    fault: Some(fault),
                    ..
                } if fault.contains("past its Content-Length of 0")
            ),
            "{relayed:?}"
        );
        assert!(
            String::from_utf8(client)
                .unwrap()
                .ends_with("Content-Length: 0\r\nConnection: close\r\n\r\n")
        );
    }

    /// A body that is all there, in whatever reads, is relayed whole; one that ends short of
    /// its `Content-Length` is relayed as it is, and the answer is not complete.
    #[test]
    fn relays_a_body_of_its_content_length() {
        let mut output = b"Content-Length: 10\n\nhel"
            .chain(&b"lo"[..])
            .chain(&b"world"[..]);
        let mut client = Vec::new();
        let relayed = relay(&mut output, &mut client, false);
        assert_eq!(
            relayed,
            Relayed::Sent {
                status: 200,
                bytes: 10,
                complete: true,
                fault: None,
            }
        );
        assert!(client.ends_with(b"\r\n\r\nhelloworld"));

        let mut output = b"Content-Length: 10\n\nhel".chain(&b"lo"[..]);
        let mut client = Vec::new();
        let relayed = relay(&mut output, &mut client, false);
        assert_eq!(
            relayed,
            Relayed::Sent {
                status: 200,
                bytes: 5,
                complete: false,
                fault: Some(
                    "the program's answer ended 5 bytes short of its Content-Length of 10: the \
                     client's response is cut short"
                        .into()
                ),
            }
        );
        assert!(client.ends_with(b"\r\n\r\nhello"));
    }

    /// A HEAD request gets the head alone, whatever the body: one of the length given, one
    /// short of it (none at all, as a program that knows HEAD writes), one that comes late.
    #[test]
    fn a_head_request_gets_no_body() {
        for answer in [
            &b"Content-Length: 5\n\nhello"[..],
            b"Content-Length: 5\n\n",
            b"Content-Length: 5\n\nhel",
        ] {
            let mut output = answer.chain(&b"HTTP/1.1 200 OK\r\n\r\nEVIL"[..]);
            let mut client = Vec::new();
            let relayed = relay(&mut output, &mut client, true);
            assert_eq!(
                relayed,
                Relayed::Sent {
                    status: 200,
                    bytes: 0,
                    complete: true,
                    fault: None,
                }
            );
            assert_eq!(
                String::from_utf8(client).unwrap(),
                "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\n"
            );
        }
    }

    /// A body on a 204 or 304 is refused however late it comes: the head waits for the end of
    /// the answer.
    #[test]
    fn a_body_after_a_bodiless_status_is_refused_even_when_it_comes_later() {
        for status in ["204", "205", "304"] {
            let head = format!("Status: {status}\n\n");
            let mut output = head.as_bytes().chain(&b"late"[..]);
            let mut client = Vec::new();
            let relayed = relay(&mut output, &mut client, false);
            assert!(
                matches!(relayed, Relayed::Failed { status: 502, .. }),
                "{status}: {relayed:?}"
            );
            assert!(client.is_empty(), "{status}");
        }
    }

    #[test]
    fn relays_a_bodiless_status_without_a_body() {
        for (answer, line) in [
            (
                &b"Status: 204\nX-Ok: yes\n\n"[..],
                "HTTP/1.1 204 No Content\r\n",
            ),
            (
                b"Status: 304 Not Modified\r\nETag: \"a\"\r\n\r\n",
                "HTTP/1.1 304 Not Modified\r\n",
            ),
            // The length of what a 200 would have sent: no body to wait for.
            (
                b"Status: 304\nContent-Length: 1000\n\n",
                "HTTP/1.1 304 Not Modified\r\n",
            ),
            (b"Status: 205\n\n", "HTTP/1.1 205 Reset Content\r\n"),
            (
                b"Status: 205\nContent-Length: 0\n\n",
                "HTTP/1.1 205 Reset Content\r\n",
            ),
        ] {
            for head_only in [false, true] {
                let (relayed, sent) = relay_bytes(answer, head_only);
                assert!(
                    matches!(
                        relayed,
                        Relayed::Sent {
                            bytes: 0,
                            complete: true,
                            ..
                        }
                    ),
                    "{relayed:?}"
                );
                assert!(sent.starts_with(line), "{sent}");
                assert!(sent.ends_with("\r\n\r\n"), "{sent}");
            }
        }
        let (_, sent) = relay_bytes(b"Status: 204\nX-Ok: yes\n\n", false);
        assert!(sent.contains("X-Ok: yes\r\n"), "{sent}");
    }

    /// A program that says 204 and then neither ends nor writes gets no answer through: the
    /// server cannot tell that no body follows until the output ends.
    #[test]
    fn a_bodiless_status_whose_output_does_not_end_times_out() {
        let (mut reader, mut writer) = std::os::unix::net::UnixStream::pair().unwrap();
        writer.write_all(b"Status: 204\n\n").unwrap();
        let mut output = DeadlineReader {
            inner: &mut reader,
            deadline: Instant::now() + Duration::from_millis(50),
        };
        let mut client = Vec::new();
        let relayed = relay(&mut output, &mut client, false);
        assert!(
            matches!(relayed, Relayed::Failed { status: 504, .. }),
            "{relayed:?}"
        );
        assert!(client.is_empty());
    }

    #[test]
    fn a_silent_program_times_out() {
        let (mut reader, _writer) = std::os::unix::net::UnixStream::pair().unwrap();
        reader.set_nonblocking(false).unwrap();
        let mut output = DeadlineReader {
            inner: &mut reader,
            deadline: Instant::now() + Duration::from_millis(50),
        };
        let mut client = Vec::new();
        assert_eq!(
            relay(&mut output, &mut client, false),
            Relayed::Failed {
                status: 504,
                why: "the program did not answer in time".into()
            }
        );
    }

    #[test]
    fn builds_the_meta_variables_as_apache_does() {
        let http::Incoming::Request(request) = http::read_request(
            &mut &b"POST /cgi-bin/app/extra?q=1 HTTP/1.1\r\nHost: example.test:8080\r\nCookie: a=1\r\nCookie: b=2\r\nProxy: http://evil\r\nX_Forwarded_For: 6.6.6.6\r\nX-Forwarded-For: 1.2.3.4\r\nAuthorization: Basic eA==\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\r\nabc"[..],
        ) else {
            panic!()
        };
        let call = Call {
            request: &request,
            method: "POST",
            target: &request.target,
            query: &request.query,
            name: "app",
            executable: Path::new("/srv/cgi-bin/app"),
            path_info: "/extra",
            peer: "127.0.0.1:5000".parse().unwrap(),
            local: "127.0.0.1:8080".parse().unwrap(),
            with_body: true,
        };
        let set_env = vec![
            ("PSOServiceId".to_string(), "shop".to_string()),
            ("REQUEST_METHOD".to_string(), "PUT".to_string()),
        ];
        let vars = meta_variables(&call, &set_env, Path::new("/srv"));
        let get = |name: &str| {
            vars.iter()
                .find(|(n, _)| n == name.as_bytes())
                .map(|(_, v)| String::from_utf8(v.clone()).unwrap())
        };
        assert_eq!(get("PSOServiceId").as_deref(), Some("shop"));
        assert_eq!(get("REQUEST_METHOD").as_deref(), Some("POST"));
        assert_eq!(get("SCRIPT_NAME").as_deref(), Some("/cgi-bin/app"));
        assert_eq!(get("PATH_INFO").as_deref(), Some("/extra"));
        assert_eq!(get("PATH_TRANSLATED").as_deref(), Some("/srv/extra"));
        assert_eq!(get("QUERY_STRING").as_deref(), Some("q=1"));
        assert_eq!(get("SERVER_NAME").as_deref(), Some("example.test"));
        assert_eq!(get("SERVER_PORT").as_deref(), Some("8080"));
        assert_eq!(get("HTTP_COOKIE").as_deref(), Some("a=1; b=2"));
        assert_eq!(get("HTTP_X_FORWARDED_FOR").as_deref(), Some("1.2.3.4"));
        assert_eq!(get("CONTENT_LENGTH").as_deref(), Some("3"));
        assert_eq!(get("CONTENT_TYPE").as_deref(), Some("text/plain"));
        assert_eq!(get("HTTP_PROXY"), None);
        assert_eq!(get("HTTP_AUTHORIZATION"), None);
        assert_eq!(get("HTTP_CONTENT_LENGTH"), None);
        assert_eq!(get("GATEWAY_INTERFACE").as_deref(), Some("CGI/1.1"));
        let names: Vec<_> = vars.iter().map(|(n, _)| n.clone()).collect();
        let mut unique = names.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(names.len(), unique.len());
    }
}
