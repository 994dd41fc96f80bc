//! `pso serve`: a development server that runs the programs of `cgi-bin/` as CGI or FastCGI.

use std::path::PathBuf;
use std::process::ExitCode;

/// Where and how to serve.
#[derive(clap::Args)]
pub struct Args {
    /// The directory of programs, served under /cgi-bin/
    #[arg(long, default_value = "cgi-bin")]
    pub dir: PathBuf,
    /// The address to listen on
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub bind: String,
    /// Apache configuration whose SetEnv lines every program gets [default: DIR/.htaccess]
    #[arg(long, value_name = "FILE")]
    pub htaccess: Option<PathBuf>,
    /// Run each program as a FastCGI responder (a listening socket on its fd 0, as mod_fcgid does)
    #[arg(long)]
    pub fastcgi: bool,
    /// Seconds a program may take before it is killed and the client gets a 504
    #[arg(long, default_value_t = 30)]
    pub timeout: u64,
    /// Do not build the project's programs with cargo first
    #[arg(long)]
    pub no_build: bool,
}

pub fn run(_args: Args) -> ExitCode {
    crate::fail("pso serve: not built yet")
}
