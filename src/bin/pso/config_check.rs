//! `pso config`: the effective configuration of a deployment, checked.

use std::process::ExitCode;

/// What to check.
#[derive(clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> ExitCode {
    crate::fail("pso config: not built yet")
}
