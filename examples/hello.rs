//! A pso program that never touches its session: what pso costs with no session work, the
//! baseline of the FastCGI benchmark (`bench/run`).

use std::io::Write;

fn main() {
    pso::run(|cx: &mut pso::Context| {
        write!(cx.response, "Hello World!")?;
        Ok(())
    })
}
