//! `pso`: the helper for people who run pso programs.

use std::process::ExitCode;

use clap::Parser;

/// Sessions for CGI programs: the helper for development and administration.
#[derive(Parser)]
#[command(version, about)]
struct Cli {}

fn main() -> ExitCode {
    let _cli = Cli::parse();
    ExitCode::SUCCESS
}
