//! The `coffer` binary: parse, run, and print any error — here and nowhere else.

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use coffer_cli::args::Cli;
use coffer_cli::config::Env;
use coffer_cli::error::{CliError, Exit};

fn main() -> ExitCode {
    // Usage errors, --help and --version exit here, with clap's own codes (2 and 0).
    let cli = Cli::parse();
    let env = Env::from_process();
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::new(Exit::Other, format!("cannot start the runtime: {e}")))
        .and_then(|rt| rt.block_on(coffer_cli::run(cli, &env)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = std::io::stderr().lock().write_all(e.render().as_bytes());
            ExitCode::from(e.exit.code())
        }
    }
}
