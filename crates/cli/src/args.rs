//! The command line, as clap types. Parsing only: nothing here reads the environment or files
//! (environment variables are read once, into [`crate::config::Env`], and resolved there, so
//! that precedence is testable without touching the process environment).

use std::ffi::OsString;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use coffer_core::wire::machines::RestartPolicy;
use coffer_core::Action;

use crate::error::EXIT_CODES_HELP;

/// coffer: app secrets you can set but never read back.
#[derive(Debug, Parser)]
#[command(name = "coffer", version, after_long_help = EXIT_CODES_HELP)]
pub struct Cli {
    /// URL of the coffer API [env: COFFER_API_URL] [config: api_url]
    #[arg(long, global = true, value_name = "URL")]
    pub api_url: Option<String>,

    /// API token [env: COFFER_API_TOKEN] [config: token]
    #[arg(long, global = true, value_name = "TOKEN")]
    pub token: Option<String>,

    /// Print results as JSON (stable field names) instead of tables and sentences
    #[arg(long, global = true)]
    pub json: bool,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create, list and destroy apps
    #[command(subcommand)]
    Apps(AppsCommand),
    /// Set, unset, import, list and deploy an app's secrets
    Secrets(SecretsArgs),
    /// Run, list, stop, start and destroy the app's machines, and read their logs
    Machines(MachinesArgs),
    /// Create, list and revoke scoped, expiring API tokens
    #[command(subcommand)]
    Tokens(TokensCommand),
    /// The app's releases: status, description, date, and why a release failed
    Releases(ReleasesArgs),
}

#[derive(Debug, Args)]
pub struct ReleasesArgs {
    #[command(flatten)]
    pub app: AppArg,
    #[command(subcommand)]
    pub command: ReleasesCommand,
}

#[derive(Debug, Subcommand)]
pub enum ReleasesCommand {
    /// List the app's releases, newest first
    List,
}

#[derive(Debug, Subcommand)]
pub enum AppsCommand {
    /// Create an app
    Create {
        /// 1 to 63 lowercase letters, digits and '-', starting with a letter
        name: String,
    },
    /// List the apps this token can see
    List,
    /// Change an app's settings
    Update {
        name: String,
        /// How long a machine must run after a release restarts it (at least 1s), e.g. 30s
        #[arg(long, value_name = "DURATION")]
        crash_window: Option<String>,
    },
    /// Destroy an app: its machines, keys and secrets (asks for confirmation)
    Destroy {
        name: String,
        /// Do not ask for confirmation (required when stdin is not a terminal)
        #[arg(long, short = 'y')]
        yes: bool,
    },
}

/// Which app a command acts on.
#[derive(Debug, Args)]
pub struct AppArg {
    /// The app [env: COFFER_APP] [default: app = "…" in ./coffer.toml]
    #[arg(short = 'a', long = "app", global = true, value_name = "APP")]
    pub app: Option<String>,
}

#[derive(Debug, Args)]
pub struct SecretsArgs {
    #[command(flatten)]
    pub app: AppArg,
    #[command(subcommand)]
    pub command: SecretsCommand,
}

/// Flags of every write (`set`, `unset`, `import`).
#[derive(Debug, Clone, Copy, Args)]
pub struct WriteFlags {
    /// Record the change without deploying it (deploy later with `coffer secrets deploy`)
    #[arg(long)]
    pub stage: bool,
    /// Return once the release has started instead of following it
    #[arg(long)]
    pub detach: bool,
}

#[derive(Debug, Subcommand)]
pub enum SecretsCommand {
    /// Set one or more secrets in one atomic change, then deploy them
    #[command(after_long_help = SET_HELP)]
    Set {
        /// NAME=VALUE pairs; NAME=- reads that value from stdin (at most one per command)
        #[arg(required = true, value_name = "NAME=VALUE")]
        pairs: Vec<OsString>,
        #[command(flatten)]
        write: WriteFlags,
    },
    /// Remove one or more secrets in one atomic change, then deploy
    Unset {
        #[arg(required = true, value_name = "NAME")]
        names: Vec<String>,
        #[command(flatten)]
        write: WriteFlags,
    },
    /// Set every pair of a dotenv file read from stdin, atomically, then deploy
    #[command(after_long_help = IMPORT_HELP)]
    Import {
        #[command(flatten)]
        write: WriteFlags,
    },
    /// List the app's secrets: names, digests, dates, status — never values
    List,
    /// Deploy what was staged
    Deploy {
        /// Return once the release has started instead of following it
        #[arg(long)]
        detach: bool,
    },
    /// Show the app's secrets versions, newest first
    History {
        /// Only the versions that changed this secret
        name: Option<String>,
    },
}

const SET_HELP: &str = "\
Examples:
  coffer secrets set DATABASE_URL=postgres://db/app API_KEY=abc123
  coffer secrets set TLS_KEY=- < key.pem

A value read with NAME=- is stored byte for byte as read, trailing newline included.
Values may be any bytes but NUL, up to 64 KiB each and 512 KiB per app.";

const IMPORT_HELP: &str = "\
Example:
  coffer secrets import < .env

Accepts comments, single and double quotes, multi-line \"\"\" values and an `export ` prefix.
$VAR is never expanded. On any error nothing is imported.";

#[derive(Debug, Args)]
pub struct MachinesArgs {
    #[command(flatten)]
    pub app: AppArg,
    #[command(subcommand)]
    pub command: MachinesCommand,
}

#[derive(Debug, Subcommand)]
pub enum MachinesCommand {
    /// Create a machine and boot it on a host with the app's current secrets
    #[command(after_long_help = RUN_HELP)]
    Run {
        /// A name to recognise the machine by (default: chosen by the server)
        #[arg(long, value_name = "NAME")]
        name: Option<String>,
        /// A plain (non-secret) environment variable of the machine; repeatable
        #[arg(long = "env", short = 'e', value_name = "K=V")]
        env: Vec<String>,
        /// Restart the workload when it exits: never, after a failure, or always
        #[arg(long, value_enum, default_value_t = RestartArg::No)]
        restart: RestartArg,
        /// Health check: GET PATH on 127.0.0.1:PORT must answer 2xx or 3xx (e.g. 8080/healthz;
        /// PORT alone checks /)
        #[arg(long, value_name = "PORT/PATH", conflicts_with = "check_tcp")]
        check_http: Option<String>,
        /// Health check: 127.0.0.1:PORT must accept a TCP connection
        #[arg(long, value_name = "PORT")]
        check_tcp: Option<String>,
        /// The program and its arguments, after `--`
        #[arg(required = true, last = true, value_name = "CMD")]
        command: Vec<String>,
    },
    /// List the app's machines
    List,
    /// Stop a machine's workload (SIGTERM, then SIGKILL after a timeout)
    Stop { id: String },
    /// Start a stopped or exited machine again, with a fresh boot
    Start { id: String },
    /// Destroy a machine: its host stops it, deletes its logs and loses access to the app's secrets
    #[command(after_long_help = DESTROY_HELP)]
    Destroy {
        id: String,
        /// Accepted for symmetry with `apps destroy`; machines are destroyed without asking
        #[arg(long, short = 'y', hide = true)]
        yes: bool,
    },
    /// Print a machine's output (stdout and stderr of its workload)
    Logs {
        id: String,
        /// Keep printing new output as it comes (Ctrl-C to stop)
        #[arg(long, short = 'f')]
        follow: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RestartArg {
    No,
    OnFailure,
    Always,
}

impl From<RestartArg> for RestartPolicy {
    fn from(r: RestartArg) -> RestartPolicy {
        match r {
            RestartArg::No => RestartPolicy::No,
            RestartArg::OnFailure => RestartPolicy::OnFailure,
            RestartArg::Always => RestartPolicy::Always,
        }
    }
}

const RUN_HELP: &str = "\
Examples:
  coffer machines run -- ./server --port 8080
  coffer machines run --name worker --env QUEUE=emails --restart on-failure -- ./worker
  coffer machines run -- sh -c 'echo $DATABASE_URL | wc -c'
  coffer machines run --check-http 8080/healthz -- ./server --port 8080

The workload's environment holds exactly the app's secrets, the --env pairs, COFFER_APP_NAME,
COFFER_MACHINE_ID, COFFER_RELEASE_VERSION, and PATH=/usr/local/bin:/usr/bin:/bin and HOME
(which --env may replace). A secret wins over an --env pair of the same name. Secrets do not
belong in --env: --env values are stored and shown in plain text.

With --check-http PORT/PATH or --check-tcp PORT, the host checks the running workload on
127.0.0.1 every second (the first check a second after it starts): an HTTP GET must answer
2xx or 3xx, a TCP connection must be accepted. After two failed checks in a row the machine
is `unhealthy` (`coffer machines list` shows why); it is `started` again once a check
passes. The check never restarts or stops the workload, but a machine that becomes
unhealthy inside a release's crash window fails the release, which is rolled back as for a
crash. A workload that has not opened its port yet fails its checks too: with a check, a
workload should listen within about 2s of starting, or a release restarting it fails.

The command returns once the machine is created; `coffer machines list` shows its state and
`coffer machines logs ID --follow` its output.";

const DESTROY_HELP: &str = "\
Destroy does not ask for confirmation: it acts on one machine, whose workload is stopped
(SIGTERM, then SIGKILL) and whose logs are deleted. When the command returns, the machine's
host can no longer decrypt the app's secrets.";

#[derive(Debug, Subcommand)]
pub enum TokensCommand {
    /// Create a token; it is printed once, on stdout
    Create {
        /// Limit the token to this app (default: every app; never taken from COFFER_APP)
        #[arg(short = 'a', long, value_name = "APP")]
        app: Option<String>,
        /// What the token may do: read lists names and digests only; join registers hosts only
        #[arg(long, value_enum, default_value_t = ScopeArg::Deploy)]
        scope: ScopeArg,
        /// Lifetime, e.g. 30m, 24h, 7d (default: the server's, 24h)
        #[arg(long, value_name = "DURATION", value_parser = parse_expires)]
        expires: Option<Duration>,
        /// A note to recognise the token by in `coffer tokens list`
        #[arg(long, value_name = "TEXT")]
        description: Option<String>,
    },
    /// List tokens
    List,
    /// Revoke a token by its ID
    Revoke { id: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ScopeArg {
    Read,
    Deploy,
    Admin,
    /// Registers hosts (`cofferd agent --join-token-file`) and nothing else
    Join,
}

impl From<ScopeArg> for Action {
    fn from(s: ScopeArg) -> Action {
        match s {
            ScopeArg::Read => Action::Read,
            ScopeArg::Deploy => Action::Deploy,
            ScopeArg::Admin => Action::Admin,
            ScopeArg::Join => Action::Join,
        }
    }
}

fn parse_expires(s: &str) -> Result<Duration, String> {
    let d = coffer_core::duration::parse_duration(s).map_err(|e| e.to_string())?;
    if d.is_zero() {
        return Err("a token must live at least 1s".into());
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn app_flag_goes_before_or_after_the_subcommand() {
        for argv in [
            &["coffer", "secrets", "-a", "x", "list"][..],
            &["coffer", "secrets", "list", "-a", "x"][..],
            &["coffer", "secrets", "list", "--app=x", "--json"][..],
        ] {
            let cli = Cli::try_parse_from(argv).unwrap();
            let Command::Secrets(s) = cli.command else {
                panic!()
            };
            assert_eq!(s.app.app.as_deref(), Some("x"), "{argv:?}");
        }
    }

    #[test]
    fn values_that_look_like_flags_are_pairs() {
        let cli =
            Cli::try_parse_from(["coffer", "secrets", "set", "A=-", "B=--x", "--stage"]).unwrap();
        let Command::Secrets(SecretsArgs {
            command: SecretsCommand::Set { pairs, write },
            ..
        }) = cli.command
        else {
            panic!()
        };
        assert_eq!(pairs, vec![OsString::from("A=-"), OsString::from("B=--x")]);
        assert!(write.stage && !write.detach);
    }

    #[test]
    fn machines_run_takes_the_command_after_the_double_dash() {
        let cli = Cli::try_parse_from([
            "coffer",
            "machines",
            "-a",
            "web",
            "run",
            "--name",
            "w1",
            "--env",
            "A=1",
            "-e",
            "B=x=y",
            "--restart",
            "on-failure",
            "--",
            "sh",
            "-c",
            "echo --env $A",
        ])
        .unwrap();
        let Command::Machines(MachinesArgs {
            app,
            command:
                MachinesCommand::Run {
                    name,
                    env,
                    restart,
                    check_http,
                    check_tcp,
                    command,
                },
        }) = cli.command
        else {
            panic!()
        };
        assert_eq!(app.app.as_deref(), Some("web"));
        assert_eq!(name.as_deref(), Some("w1"));
        assert_eq!(env, vec!["A=1", "B=x=y"]);
        assert_eq!(restart, RestartArg::OnFailure);
        assert_eq!((check_http, check_tcp), (None, None));
        assert_eq!(command, vec!["sh", "-c", "echo --env $A"]);
        // The app flag also goes after the subcommand.
        let cli =
            Cli::try_parse_from(["coffer", "machines", "logs", "3f2a", "-f", "-a", "web"]).unwrap();
        let Command::Machines(MachinesArgs {
            app,
            command: MachinesCommand::Logs { id, follow },
        }) = cli.command
        else {
            panic!()
        };
        assert_eq!(
            (app.app.as_deref(), id.as_str(), follow),
            (Some("web"), "3f2a", true)
        );
    }

    #[test]
    fn machines_run_takes_a_health_check() {
        let run = |argv: &[&str]| {
            let cli = Cli::try_parse_from(argv).unwrap();
            let Command::Machines(MachinesArgs {
                command:
                    MachinesCommand::Run {
                        check_http,
                        check_tcp,
                        command,
                        ..
                    },
                ..
            }) = cli.command
            else {
                panic!()
            };
            assert_eq!(command, vec!["./server"]);
            (check_http, check_tcp)
        };
        assert_eq!(
            run(&[
                "coffer",
                "machines",
                "run",
                "--check-http",
                "8080/healthz",
                "--",
                "./server"
            ]),
            (Some("8080/healthz".into()), None)
        );
        assert_eq!(
            run(&[
                "coffer",
                "machines",
                "run",
                "--check-tcp=5432",
                "--",
                "./server"
            ]),
            (None, Some("5432".into()))
        );
    }

    #[test]
    fn usage_errors_exit_2() {
        for argv in [
            &["coffer", "secrets", "set"][..],
            &["coffer", "tokens", "create", "--scope", "root"][..],
            &["coffer", "tokens", "create", "--expires", "soon"][..],
            &["coffer", "apps", "destroy"][..],
            &["coffer", "machines", "run"][..],
            &["coffer", "machines", "run", "--"][..],
            &["coffer", "machines", "run", "sh", "-c", "x"][..],
            &[
                "coffer",
                "machines",
                "run",
                "--restart",
                "sometimes",
                "--",
                "x",
            ][..],
            &["coffer", "machines", "stop"][..],
            &[
                "coffer",
                "machines",
                "run",
                "--check-http",
                "8080/healthz",
                "--check-tcp",
                "5432",
                "--",
                "x",
            ][..],
            &["coffer", "machines", "run", "--check-tcp", "--", "x"][..],
        ] {
            let e = Cli::try_parse_from(argv).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{argv:?}");
        }
    }
}
