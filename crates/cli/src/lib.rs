//! The `coffer` CLI: a thin layer over [`coffer_client`].
//!
//! # Commands
//!
//! ```text
//! coffer [--api-url URL] [--token TOKEN] [--json]
//!   apps create NAME
//!   apps list
//!   apps destroy NAME [--yes]
//!   secrets [-a APP] set NAME=VALUE… [--stage] [--detach]    (NAME=- reads stdin)
//!   secrets [-a APP] unset NAME… [--stage] [--detach]
//!   secrets [-a APP] import [--stage] [--detach]            (dotenv text on stdin)
//!   secrets [-a APP] list
//!   secrets [-a APP] deploy [--detach]
//!   secrets [-a APP] history [NAME]
//!   machines [-a APP] run [--name N] [--env K=V]… [--restart no|on-failure|always] -- CMD ARG…
//!   machines [-a APP] list
//!   machines [-a APP] stop ID
//!   machines [-a APP] start ID
//!   machines [-a APP] destroy ID                           (no confirmation: one machine)
//!   machines [-a APP] logs ID [--follow]
//!   tokens create [-a/--app APP] [--scope read|deploy|admin|join] [--expires 24h] [--description TEXT]
//!   tokens list
//!   tokens revoke ID
//! ```
//!
//! Results go to stdout (a table or a sentence, or JSON with `--json`; see [`output`] for the
//! shapes); notes and errors go to stderr. Errors are printed in one place, `main`, as
//! `error:`/`hint:` lines, with the exit codes documented in [`error`]. Where the API URL,
//! the token and the app come from is documented in [`config`].
//!
//! Layout: [`args`] (clap types), [`config`] (settings and their precedence), [`input`]
//! (`NAME=VALUE` arguments and dotenv input into a validated change), [`commands`] (one
//! function per command), [`output`] (pure renderers), [`error`] (the error type and exit
//! codes).

pub mod args;
pub mod commands;
pub mod config;
pub mod error;
pub mod input;
pub mod output;

use std::io::IsTerminal;

use args::Cli;
use config::{Env, Flags};
use error::CliError;

/// Runs one parsed command line against the environment `env`.
pub async fn run(cli: Cli, env: &Env) -> Result<(), CliError> {
    let Cli {
        api_url,
        token,
        json,
        command,
    } = cli;
    let token = token.map(zeroize::Zeroizing::new);
    let ctx = commands::Ctx {
        flags: Flags {
            api_url: api_url.as_deref(),
            token: token.as_deref().map(String::as_str),
        },
        env,
        json,
        tty: std::io::stdout().is_terminal(),
    };
    commands::run(&ctx, command).await
}
