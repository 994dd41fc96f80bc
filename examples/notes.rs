//! A notes page: the session lifecycle features a small application reaches for.
//!
//! - A form with a token against CSRF. A first-time visitor who only looks gets nothing
//!   stored: the token is tied to the form cookie until there is a session to keep it.
//! - A notice shown once after a post ("Note saved."), kept with `set_for` so that a notice
//!   never shown goes stale on its own after a minute.
//! - `?export`: the notes as plain text, after `release()` (PHP's `session_write_close`), so a
//!   long download does not hold up the visitor's other requests, and streamed.
//! - Links from `cx.url`, so the page also works without cookies when the server sets
//!   `PSOSessionUrl=on`.
//!
//! Its read-only companion, `note_count.rs`, answers a page's AJAX calls without the lock.
//! Run it from a terminal: `cargo run --example notes`, or under `pso serve` by copying the
//! built binary into `cgi-bin/`.

use std::io::Write;
use std::time::Duration;

use pso::{BoxError, Context};

/// Most notes kept per visitor, and longest note: a session must not grow without bound.
const MAX_NOTES: usize = 100;
const MAX_NOTE_CHARS: usize = 500;

fn main() {
    pso::run(notes);
}

fn notes(cx: &mut Context) -> Result<(), BoxError> {
    if cx.request.method() == "POST" {
        return add(cx);
    }
    let notes: Vec<String> = cx.session.get("notes")?.unwrap_or_default();
    if cx.request.query("export").is_some() {
        cx.session.release()?;
        cx.response.set_content_type("text/plain; charset=utf-8")?;
        cx.stream()?;
        for note in &notes {
            writeln!(cx.response, "{note}")?;
        }
        return Ok(());
    }
    let notice: Option<String> = cx.session.get("notice")?;
    if notice.is_some() {
        cx.session.remove("notice")?;
    }
    let token = cx.session.create_form_token()?;
    let here = cx.url(cx.request.script_name());
    let export = cx.url(&format!("{}?export", cx.request.script_name()));
    write!(
        cx.response,
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>Notes</title></head><body>\n"
    )?;
    if let Some(notice) = notice {
        writeln!(cx.response, "<p class=\"notice\">{}</p>", escape(&notice))?;
    }
    writeln!(cx.response, "<ul>")?;
    for note in &notes {
        writeln!(cx.response, "<li>{}</li>", escape(note))?;
    }
    write!(
        cx.response,
        "</ul>\n<form method=\"post\" action=\"{}\"><input type=\"hidden\" name=\"token\" value=\"{token}\">\
         <input name=\"note\"> <button>Add</button></form>\n<p><a href=\"{}\">Export</a></p>\n</body></html>\n",
        escape(&here),
        escape(&export)
    )?;
    Ok(())
}

/// A posted note: kept if the form's token is good, then back to the page (a GET, so that
/// reloading it posts nothing again).
fn add(cx: &mut Context) -> Result<(), BoxError> {
    let token = cx.request.form_value("token")?.unwrap_or_default();
    if !cx.session.take_form_token(&token)? {
        cx.response.set_status(403)?;
        write!(
            cx.response,
            "That form has expired: reload the page and try again."
        )?;
        return Ok(());
    }
    let note: String = cx
        .request
        .form_value("note")?
        .unwrap_or_default()
        .chars()
        .take(MAX_NOTE_CHARS)
        .collect();
    let mut notes: Vec<String> = cx.session.get("notes")?.unwrap_or_default();
    if !note.trim().is_empty() {
        notes.push(note);
        let excess = notes.len().saturating_sub(MAX_NOTES);
        notes.drain(..excess);
        cx.session.set("notes", &notes)?;
        cx.session
            .set_for("notice", "Note saved.", Duration::from_secs(60))?;
    }
    let back = cx.url(cx.request.script_name());
    cx.response.redirect(&back)?;
    Ok(())
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
