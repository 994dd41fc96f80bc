//! What pso received: the request's variables, its body, and the session. Handy when setting up
//! a web server (like PHP's `phpinfo()`), and the program the FastCGI tests drive.
//!
//! - `?count=1`: counts visits in the session, as the reload counter does;
//! - `?echo=1`: answers with the request body itself (at most `CONTENT_LENGTH` bytes);
//! - `?size=N`: answers with N bytes (a big response goes out as several FastCGI records);
//! - `?sleep=N`: takes N milliseconds, holding the session's lock;
//! - `?stream=1`: sends the headers at once and the body in pieces;
//! - `?panic=1`: panics, to see what it costs (a 500 for this request only).
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
        if cx.request.query("count").is_some() {
            let n: u64 = cx.session.get("count")?.unwrap_or(0) + 1;
            cx.session.set("count", &n)?;
            write!(cx.response, "count={n}")?;
            return Ok(());
        }
        if cx.request.query("stream").is_some() {
            cx.stream()?;
            for i in 0..3 {
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
