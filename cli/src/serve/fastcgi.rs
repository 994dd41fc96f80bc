//! `--fastcgi`: each program runs as a long-lived FastCGI responder, started as `mod_fcgid`
//! starts one (a listening Unix socket on its file descriptor 0, the `PATH` alone in its
//! environment), and every request goes to it as `BEGIN_REQUEST`, `PARAMS` (the same
//! meta-variables CGI would get, `SetEnv` variables included) and `STDIN`. A responder that
//! exited, hung or whose executable changed is started afresh.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Instant, SystemTime};

use pso::fastcgi::record::{self, Status, kind};

use super::gateway::{MAX_LOG_LINE, Variable, kill_group, log_line, log_lines};

/// The responders of the programs served, by program name.
pub struct Responders {
    /// A private directory for their sockets.
    dir: PathBuf,
    running: Mutex<HashMap<String, Responder>>,
}

struct Responder {
    child: Child,
    socket: PathBuf,
    executable: PathBuf,
    modified: Option<SystemTime>,
}

impl Responders {
    /// Makes the private directory (`0700`) that will hold the sockets.
    pub fn new() -> io::Result<Responders> {
        sweep_stale(&std::env::temp_dir());
        let random = pso::SessionId::generate().map_err(io::Error::other)?;
        let dir = std::env::temp_dir().join(format!(
            "pso-serve-{}-{}",
            std::process::id(),
            &random.as_str()[..16]
        ));
        std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
        Ok(Responders {
            dir,
            running: Mutex::new(HashMap::new()),
        })
    }

    /// A connection to the responder of `name`, started first if it is not running.
    pub fn connect(&self, name: &str, executable: &Path, cwd: &Path) -> io::Result<UnixStream> {
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        let modified = modified(executable);
        if let Some(responder) = running.get_mut(name) {
            let alive = matches!(responder.child.try_wait(), Ok(None));
            if alive
                && responder.executable == executable
                && responder.modified == modified
                && let Ok(stream) = UnixStream::connect(&responder.socket)
            {
                return Ok(stream);
            }
            if let Some(old) = running.remove(name) {
                stop(old);
            }
        }
        let socket = self.dir.join(format!("{name}.sock"));
        let _ = std::fs::remove_file(&socket);
        let listener = UnixListener::bind(&socket)?;
        let mut child = Command::new(executable)
            .env_clear()
            .env("PATH", super::gateway::PATH)
            .current_dir(cwd)
            .process_group(0)
            .stdin(OwnedFd::from(listener))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?;
        if let Some(stderr) = child.stderr.take() {
            log_lines(name.to_string(), stderr);
        }
        eprintln!(
            "pso serve: started {name} as a FastCGI responder (pid {})",
            child.id()
        );
        // The socket listens already: the connection waits in its backlog until the
        // responder accepts it.
        let stream = UnixStream::connect(&socket)?;
        running.insert(
            name.to_string(),
            Responder {
                child,
                socket,
                executable: executable.to_path_buf(),
                modified,
            },
        );
        Ok(stream)
    }

    /// Stops the responder of `name` (it hung): the next request starts a new one.
    pub fn restart(&self, name: &str) {
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(old) = running.remove(name) {
            stop(old);
        }
    }

    /// Stops every responder and removes the sockets' directory.
    pub fn shutdown(&self) {
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        for (_, responder) in running.drain() {
            stop(responder);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Removes the socket directories of servers that no longer run (killed by SIGKILL, which
/// leaves no chance to clean up); only this user's, only `pso-serve-<pid>-*` of a dead pid.
fn sweep_stale(tmp: &Path) {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(tmp) else {
        return;
    };
    let uid = rustix::process::geteuid().as_raw();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("pso-serve-"))
            .and_then(|rest| rest.split_once('-'))
            .and_then(|(pid, _)| pid.parse::<u32>().ok())
        else {
            continue;
        };
        let ours = entry
            .path()
            .symlink_metadata()
            .is_ok_and(|meta| meta.is_dir() && meta.uid() == uid);
        if ours && !is_running(pid) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Whether process `pid` exists (signal 0; a process of another user answers EPERM, and
/// counts as running). Unlike a look in `/proc`, this works on every Unix.
fn is_running(pid: u32) -> bool {
    let Some(pid) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    else {
        return false;
    };
    !matches!(
        rustix::process::test_kill_process(pid),
        Err(rustix::io::Errno::SRCH)
    )
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

fn stop(mut responder: Responder) {
    kill_group(responder.child.id());
    let _ = responder.child.wait();
    let _ = std::fs::remove_file(&responder.socket);
}

/// Sends one request on `stream` and returns its standard output as a reader that ends at
/// `END_REQUEST` and fails with `TimedOut` at `deadline`. The body goes in a thread of its
/// own, so that a responder that answers before reading it all cannot deadlock with us.
pub fn send(
    stream: UnixStream,
    params: &[Variable],
    body: Option<Box<dyn Read + Send>>,
    name: &str,
    deadline: Instant,
) -> io::Result<Answer> {
    const ID: u16 = 1;
    let mut head = Vec::new();
    record::write_record(
        &mut head,
        kind::BEGIN_REQUEST,
        ID,
        &[0, record::ROLE_RESPONDER as u8, 0, 0, 0, 0, 0, 0],
    );
    let mut pairs = Vec::new();
    for (name, value) in params {
        record::write_pair(&mut pairs, name, value);
    }
    record::write_stream(&mut head, kind::PARAMS, ID, &pairs);
    record::write_record(&mut head, kind::PARAMS, ID, &[]);
    let mut writer = stream.try_clone()?;
    writer.write_all(&head)?;
    std::thread::spawn(move || {
        let mut chunk = vec![0u8; record::MAX_CONTENT];
        if let Some(mut body) = body {
            loop {
                match body.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        let mut out = Vec::with_capacity(n + 16);
                        record::write_record(&mut out, kind::STDIN, ID, &chunk[..n]);
                        if writer.write_all(&out).is_err() {
                            return;
                        }
                    }
                }
            }
        }
        let mut end = Vec::new();
        record::write_record(&mut end, kind::STDIN, ID, &[]);
        let _ = writer.write_all(&end);
    });
    Ok(Answer {
        stream,
        deadline,
        name: name.to_string(),
        buf: Vec::new(),
        stdout: Vec::new(),
        stdout_at: 0,
        ended: false,
    })
}

/// A responder's answer to one request: its `STDOUT` stream.
pub struct Answer {
    stream: UnixStream,
    deadline: Instant,
    name: String,
    /// Bytes read and not parsed yet.
    buf: Vec<u8>,
    /// The last `STDOUT` record's content, returned from `stdout_at` on.
    stdout: Vec<u8>,
    stdout_at: usize,
    ended: bool,
}

impl Read for Answer {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.stdout_at < self.stdout.len() {
                let n = out.len().min(self.stdout.len() - self.stdout_at);
                out[..n].copy_from_slice(&self.stdout[self.stdout_at..self.stdout_at + n]);
                self.stdout_at += n;
                return Ok(n);
            }
            if self.ended {
                return Ok(0);
            }
            match record::parse(&self.buf) {
                Ok(Status::Complete(record, used)) => {
                    match record.kind {
                        kind::STDOUT => {
                            self.stdout.clear();
                            self.stdout.extend_from_slice(record.content);
                            self.stdout_at = 0;
                        }
                        kind::STDERR => {
                            for line in record.content.split(|&b| b == b'\n') {
                                log_line(&self.name, &line[..line.len().min(MAX_LOG_LINE)]);
                            }
                        }
                        kind::END_REQUEST => self.ended = true,
                        _ => {}
                    }
                    self.buf.drain(..used);
                }
                Ok(Status::Partial) => self.fill()?,
                Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e.to_string())),
            }
        }
    }
}

impl Answer {
    fn fill(&mut self) -> io::Result<()> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        self.stream.set_read_timeout(Some(left))?;
        let mut chunk = [0u8; 16 * 1024];
        match self.stream.read(&mut chunk) {
            Ok(0) => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the responder closed the connection before END_REQUEST",
            )),
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Ok(())
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                Err(io::ErrorKind::TimedOut.into())
            }
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serve::gateway::{Relayed, relay};
    use pso::fastcgi::record::EndStatus;
    use std::time::Duration;

    /// What `relay` makes of a responder whose `STDOUT` stream is `records` (each one record).
    fn relay_responder(records: &[&[u8]]) -> (Relayed, Vec<u8>) {
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut answer = send(ours, &[], None, "responder", deadline).unwrap();
        let mut out = Vec::new();
        for content in records {
            record::write_record(&mut out, kind::STDOUT, 1, content);
        }
        record::write_record(&mut out, kind::STDOUT, 1, &[]);
        record::write_end(&mut out, 1, 0, EndStatus::RequestComplete);
        theirs.write_all(&out).unwrap();
        let mut client = Vec::new();
        let relayed = relay(&mut answer, &mut client, false);
        (relayed, client)
    }

    /// A responder's answer goes through the same checks as a CGI program's.
    #[test]
    fn a_responder_is_held_to_the_rules_of_a_cgi_answer() {
        let hostile: [&[&[u8]]; 4] = [
            &[
                b"Status: 100 Continue\r\n\r\n",
                b"HTTP/1.1 200 OK\r\nX-Injected: yes\r\n\r\n",
            ],
            &[b"Status: 200 OK\r\nStatus: 403 Forbidden\r\n\r\nbody"],
            &[b"Status: 204 No Content\r\n\r\n", b"late body"],
            &[b"Status: 304 Not Modified\r\n\r\nbody"],
        ];
        for records in hostile {
            let (relayed, client) = relay_responder(records);
            assert!(
                matches!(relayed, Relayed::Failed { status: 502, .. }),
                "{records:?}: {relayed:?}"
            );
            assert!(client.is_empty(), "{records:?}");
        }
        let (relayed, client) = relay_responder(&[b"Status: 204\r\n\r\n"]);
        assert!(
            matches!(relayed, Relayed::Sent { status: 204, .. }),
            "{relayed:?}"
        );
        assert!(client.starts_with(b"HTTP/1.1 204 No Content\r\n"));
        let (relayed, client) = relay_responder(&[b"Content-Type: text/plain\r\n\r\nhel", b"lo"]);
        assert!(
            matches!(
                relayed,
                Relayed::Sent {
                    status: 200,
                    bytes: 5,
                    complete: true,
                    fault: None,
                }
            ),
            "{relayed:?}"
        );
        assert!(client.ends_with(b"\r\n\r\nhello"));
        // Past its Content-Length in a record of its own, after the head went out.
        let (relayed, client) = relay_responder(&[
            b"Content-Length: 5\r\n\r\nhello",
            b"HTTP/1.1 200 OK\r\nX-Injected: yes\r\n\r\n",
        ]);
        assert!(
            matches!(
                relayed,
                Relayed::Sent {
                    bytes: 5,
                    complete: false,
                    fault: Some(_),
                    ..
                }
            ),
            "{relayed:?}"
        );
        assert!(client.ends_with(b"\r\n\r\nhello"));
    }
}
