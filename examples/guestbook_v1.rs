//! A guestbook kept in the visitor's session, as first deployed; `guestbook_v2.rs` is its next
//! release, which changed its types. Together they show what a deploy that changes the types
//! in the session does to returning visitors (README: "When your types change").
//!
//! Run it from a terminal: `cargo run --example guestbook_v1`, or under `pso serve` by copying
//! the built binary into `cgi-bin/` as `guestbook`, then replacing it with `guestbook_v2`.

use std::io::Write;

use pso::{BoxError, Context};
use serde::{Deserialize, Serialize};

/// Most entries kept per visitor, and longest field: a session must not grow without bound.
const MAX_ENTRIES: usize = 50;
const MAX_CHARS: usize = 200;

/// One entry, kept in the session as a `Vec<Entry>` under "entries".
#[derive(Serialize, Deserialize)]
struct Entry {
    name: String,
    message: String,
}

fn main() {
    pso::run(guestbook);
}

fn guestbook(cx: &mut Context) -> Result<(), BoxError> {
    if cx.request.method() == "POST" {
        return sign(cx);
    }
    let entries: Vec<Entry> = cx.session.get("entries")?.unwrap_or_default();
    // The name last signed with, to fill in the form.
    let author: String = cx.session.get("author")?.unwrap_or_default();
    let token = cx.session.create_form_token()?;
    writeln!(
        cx.response,
        "<!DOCTYPE html>\n<title>Guestbook</title>\n<ul>"
    )?;
    for entry in &entries {
        writeln!(
            cx.response,
            "<li>{}: {}</li>",
            escape(&entry.name),
            escape(&entry.message)
        )?;
    }
    writeln!(
        cx.response,
        "</ul>\n<form method=\"post\"><input type=\"hidden\" name=\"token\" value=\"{token}\">\
         <input name=\"name\" value=\"{}\"> <input name=\"message\"> <button>Sign</button></form>",
        escape(&author)
    )?;
    Ok(())
}

fn sign(cx: &mut Context) -> Result<(), BoxError> {
    let token = cx.request.form_value("token")?.unwrap_or_default();
    if !cx.session.take_form_token(&token)? {
        cx.response.set_status(403)?;
        write!(cx.response, "That form has expired: reload the page.")?;
        return Ok(());
    }
    let entry = Entry {
        name: field(cx, "name")?,
        message: field(cx, "message")?,
    };
    let mut entries: Vec<Entry> = cx.session.get("entries")?.unwrap_or_default();
    cx.session.set("author", &entry.name)?;
    entries.push(entry);
    entries.drain(..entries.len().saturating_sub(MAX_ENTRIES));
    cx.session.set("entries", &entries)?;
    let back = cx.url(cx.request.script_name());
    cx.response.redirect(&back)?;
    Ok(())
}

/// A posted field, cut to its longest.
fn field(cx: &mut Context, name: &str) -> Result<String, BoxError> {
    let value = cx.request.form_value(name)?.unwrap_or_default();
    Ok(value.chars().take(MAX_CHARS).collect())
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
