//! `pso sessions`: see and clean a session store.

use std::process::ExitCode;

/// What to do with the store.
#[derive(clap::Subcommand)]
pub enum Command {
    /// List the sessions
    List,
}

pub fn run(_command: Command) -> ExitCode {
    crate::fail("pso sessions: not built yet")
}
