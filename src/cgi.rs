//! The CGI front end (RFC 3875): the process environment describes one request, its body is on
//! standard input, and its response goes to standard output.

use std::io::{self, BufWriter, Write};
use std::time::SystemTime;

use crate::runner::Handler;
use crate::service::Service;

/// Serves the one request of this process.
///
/// The response goes out in one `write` where it fits in 64 KiB. When this request also
/// collects expired sessions, it does so after the response is complete, with standard input,
/// output and error closed: web servers wait for all three (Apache's `mod_cgi` reads standard
/// error to its end, `mod_cgid` shares one socket for input and output), so only then is the
/// client's response finished. Apache then sends the finished program `SIGTERM`, which
/// collection (at most 50 ms) outlives; its log lines are lost with standard error.
pub(crate) fn serve<F>(service: &Service, handler: &F)
where
    F: Handler,
{
    let now = SystemTime::now();
    let mut input = io::stdin().lock();
    let mut output = BufWriter::with_capacity(64 * 1024, RawStdout);
    let outcome = service
        .answer(service.process_env(), &mut input, &mut output, handler, now)
        .and_then(|outcome| output.flush().map(|()| outcome));
    drop(output);
    match outcome {
        Ok(outcome) => {
            if outcome.collection_due() {
                let _ignoring = ignore_sigterm();
                close_standard_streams();
                outcome.collect_garbage();
            }
        }
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {}
        Err(e) => log::error!("writing the response failed: {e}"),
    }
}

/// Standard output without std's line buffering, which would split a response in two writes
/// at its last line break.
struct RawStdout;

impl Write for RawStdout {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        rustix::io::write(rustix::stdio::stdout(), bytes).map_err(Into::into)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Points standard input, output and error at `/dev/null`, so that the web server sees the
/// end of the response while this process goes on. Without `/dev/null` they stay open, and the
/// server waits.
fn close_standard_streams() {
    if let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        let _ = rustix::stdio::dup2_stdin(&null);
        let _ = rustix::stdio::dup2_stdout(&null);
        let _ = rustix::stdio::dup2_stderr(&null);
    }
}

/// While alive, `SIGTERM` only sets a flag: the web server's signal to a program whose response
/// is done must not cut collection short (it removes files one by one, each step whole).
fn ignore_sigterm() -> Option<IgnoredSignal> {
    let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGTERM, flag)
        .ok()
        .map(IgnoredSignal)
}

struct IgnoredSignal(signal_hook::SigId);

impl Drop for IgnoredSignal {
    fn drop(&mut self) {
        signal_hook::low_level::unregister(self.0);
    }
}
