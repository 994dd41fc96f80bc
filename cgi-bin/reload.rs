//! The reload counter: counts how often one visitor has loaded the page.
//!
//! Deploy it as a CGI program (see `htaccess.sample`), or run it from a terminal:
//! `./reload`, then `HTTP_COOKIE='reload=<id>' ./reload` with the id from the first answer.

use std::io::Write;

fn main() {
    pso::run(|cx: &mut pso::Context| {
        let n: u64 = cx.session.get("reloads")?.unwrap_or(0) + 1;
        cx.session.set("reloads", &n)?;
        write!(
            cx.response,
            "Hello World! ~ You reloaded: {n} times ~ Try Reload !"
        )?;
        Ok(())
    })
}
