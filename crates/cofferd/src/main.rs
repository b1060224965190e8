//! `cofferd`: the daemon. One binary, one role per process (`api`, `vault`), or all of them in
//! one process on loopback (`dev`). The roles live in library crates; this binary only reads
//! configuration, sets up logging and wires listeners.

mod config;
mod dev;
mod logging;
mod operator;
mod roles;

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = config::Cli::parse();
    match run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // The chain of causes, minus the hint, which gets its own line.
            let message: Vec<String> = e
                .chain()
                .filter(|c| c.downcast_ref::<config::Hint>().is_none())
                .map(|c| c.to_string())
                .collect();
            eprintln!("error: {}", message.join(": "));
            if let Some(hint) = e.chain().find_map(|c| c.downcast_ref::<config::Hint>()) {
                eprintln!("hint: {}", hint.0);
            }
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: config::Cli) -> anyhow::Result<()> {
    match cli.command {
        config::Command::Dev(args) => dev::run(args).await,
        config::Command::Api(args) => roles::api(args).await,
        config::Command::Vault(mut args) => match args.command.take() {
            Some(config::VaultCommand::Operator(op)) => operator::run(op).await,
            None => roles::vault(*args).await,
        },
        config::Command::Init(args) => roles::init(args).await,
        config::Command::Agent(args) => roles::agent(args).await,
    }
}
