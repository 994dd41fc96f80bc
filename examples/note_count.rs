//! The read-only companion of `notes.rs`: how many notes the visitor has, as JSON, for a
//! page's AJAX calls. `pso::run_read_only` reads the session without its lock, so such calls
//! run side by side, and even while a slow request of the same visitor writes; they renew
//! nothing and store nothing. Both programs must share a service (`PSOServiceId`).

use std::io::Write;

fn main() {
    pso::run_read_only(|cx: &mut pso::Context| {
        let notes: Vec<String> = cx.session.get("notes")?.unwrap_or_default();
        cx.response.set_content_type("application/json")?;
        write!(cx.response, "{{\"notes\":{}}}", notes.len())?;
        Ok(())
    })
}
