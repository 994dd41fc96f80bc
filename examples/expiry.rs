//! Expiry control at run time, as pso had it: `?expire=` chooses when the session ends.
//!
//! - `?expire=browser`: at browser close (the default for a new session);
//! - `?expire=now`: now (the session is deleted and its cookie revoked: a logout);
//! - `?expire=15*60`, `?expire=%2B30m`, `?expire=2h`: a duration, in pso's expression syntax;
//! - `?expire=Mon, 15 Apr 2041 19:00:00 GMT`: a date, as an HTTP date;
//! - `?expire=Mon, 15 APR 2041 19:00:00&format=%a, %d %b %Y %H:%M:%S`: a date in a format
//!   of your own (pso's `expire(date, format)`).
//!
//! Run it from a terminal: `QUERY_STRING='expire=15*60' cargo run --example expiry`.

use std::io::Write;

use pso::Expiry;

fn main() {
    pso::run(|cx: &mut pso::Context| {
        let visits: u64 = cx.session.get("visits")?.unwrap_or(0) + 1;
        cx.session.set("visits", &visits)?;

        let expire = cx.request.query("expire");
        let format = cx.request.query("format");
        match (expire.as_deref(), format.as_deref()) {
            (None, _) => {}
            (Some("browser"), _) => cx.session.expire(Expiry::BrowserClose)?,
            (Some("now"), _) => cx.session.expire(Expiry::Now)?,
            (Some(date), Some(format)) => cx
                .session
                .expire(Expiry::parse_with_format(date, format)?)?,
            (Some(text), None) => cx.session.expire(Expiry::parse(text)?)?,
        }

        let until = match cx.session.expiry() {
            Expiry::BrowserClose => "until you close the browser".to_owned(),
            Expiry::Now => "no longer: it ends with this page".to_owned(),
            Expiry::At(at) => format!("until {}", httpdate::fmt_http_date(at)),
            Expiry::In(left) => format!("for {} more seconds", left.as_secs()),
        };
        write!(cx.response, "Visit {visits}. This session lasts {until}.")?;
        Ok(())
    })
}
