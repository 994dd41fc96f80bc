//! What pso received: the request's variables, its body, and the session. Handy when setting up
//! a web server (like PHP's `phpinfo()`), and the program the FastCGI tests drive.
//!
//! - `?count=1`: counts visits in the session, as the reload counter does;
//! - `?echo=1`: answers with the request body itself (at most `CONTENT_LENGTH` bytes);
//! - `?size=N`: answers with N bytes (a big response goes out as several FastCGI records);
//! - `?sleep=N`: takes N milliseconds, holding the session's lock;
//! - `?stream=N`: sends the headers at once and the body in N pieces (at least 3);
//! - `?panic=1`: panics, to see what it costs (a 500 for this request only);
//! - `?ballast=N`: counts visits and keeps N bytes that change with each visit, with a digest
//!   of them, so a test can tell a whole session from a torn one;
//! - `?grow=N`: counts visits and adds N bytes to the session at each one.
//!
//! Run it from a terminal: `QUERY_STRING='count=1' cargo run --example inspect`.

use std::io::{Read, Write};
use std::time::Duration;

fn main() {
    pso::run(|cx: &mut pso::Context| {
        cx.response.set_content_type("text/plain; charset=utf-8")?;
        if cx.request.query("panic").is_some() {
            panic!("asked to panic");
        }
        if let Some(ms) = cx.request.query("sleep").and_then(|v| v.parse().ok()) {
            std::thread::sleep(Duration::from_millis(ms));
        }
        if cx.request.query("echo").is_some() {
            let mut body = Vec::new();
            cx.request.body().read_to_end(&mut body)?;
            cx.response.write_all(&body)?;
            return Ok(());
        }
        if let Some(size) = cx
            .request
            .query("size")
            .and_then(|v| v.parse::<usize>().ok())
        {
            cx.response.write_all(&vec![b'x'; size])?;
            return Ok(());
        }
        if let Some(size) = cx
            .request
            .query("ballast")
            .and_then(|v| v.parse::<usize>().ok())
        {
            let n: u64 = cx.session.get("count")?.unwrap_or(0) + 1;
            let ballast = ballast(n, size);
            cx.session.set("count", &n)?;
            cx.session.set("digest", &digest(n, &ballast))?;
            cx.session.set("ballast", &ballast)?;
            write!(cx.response, "count={n}")?;
            return Ok(());
        }
        if let Some(size) = cx
            .request
            .query("grow")
            .and_then(|v| v.parse::<usize>().ok())
        {
            let n: u64 = cx.session.get("count")?.unwrap_or(0) + 1;
            let mut grown: Vec<u8> = cx.session.get("grown")?.unwrap_or_default();
            grown.resize(grown.len() + size, n as u8);
            cx.session.set("count", &n)?;
            cx.session.set("grown", &grown)?;
            write!(cx.response, "count={n}")?;
            return Ok(());
        }
        if cx.request.query("count").is_some() {
            let n: u64 = cx.session.get("count")?.unwrap_or(0) + 1;
            cx.session.set("count", &n)?;
            write!(cx.response, "count={n}")?;
            return Ok(());
        }
        if let Some(pieces) = cx.request.query("stream") {
            let pieces: usize = pieces.parse().unwrap_or(3).max(3);
            cx.stream()?;
            for i in 0..pieces {
                writeln!(cx.response, "piece {i}")?;
                cx.response.flush()?;
            }
            return Ok(());
        }
        writeln!(
            cx.response,
            "session {} (new: {})",
            cx.session.id().short(),
            cx.session.is_new()
        )?;
        for (name, value) in cx.request.env().iter() {
            writeln!(
                cx.response,
                "{}={}",
                String::from_utf8_lossy(name),
                String::from_utf8_lossy(value)
            )?;
        }
        Ok(())
    })
}

/// `size` bytes that depend on the visit `n`.
fn ballast(n: u64, size: usize) -> Vec<u8> {
    (0..size as u64)
        .map(|i| (i.wrapping_mul(2_654_435_761) ^ n.wrapping_mul(40_503)) as u8)
        .collect()
}

/// FNV-1a over the visit number and the ballast.
fn digest(n: u64, ballast: &[u8]) -> u64 {
    n.to_le_bytes()
        .iter()
        .chain(ballast)
        .fold(0xcbf2_9ce4_8422_2325, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
        })
}
