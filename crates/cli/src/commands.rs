//! One function per command: resolve the app and the connection, call the API, render.
//!
//! Order of checks in every command: the arguments themselves (no I/O), then the app, then
//! the connection settings, then stdin (so nobody types a secret only to learn that the app
//! is missing), then the local validation of the change, then the API.

use std::io::{BufRead, IsTerminal, Read, Write};

use coffer_client::{write_request, Client};
use coffer_core::wire::CreateToken;
use coffer_core::{AppName, ChangeSet, SecretName};
use jiff::Timestamp;
use zeroize::Zeroizing;

use crate::args::{
    AppsCommand, Command, ScopeArg, SecretsArgs, SecretsCommand, TokensCommand, WriteFlags,
};
use crate::config::{self, Env, Flags};
use crate::error::{CliError, Exit};
use crate::input;
use crate::output::{self, json, note, print};

/// What every command needs besides its own arguments.
pub struct Ctx<'a> {
    pub flags: Flags<'a>,
    pub env: &'a Env,
    pub json: bool,
    /// Is stdout a terminal? (Styling of tables.)
    pub tty: bool,
}

impl Ctx<'_> {
    /// A client for the configured API (flag > env > config file).
    fn client(&self) -> Result<Client, CliError> {
        let path = config::config_path(self.env);
        let file = match &path {
            Some(p) if config::needs_file(&self.flags, self.env) => config::load_config(p)?,
            _ => None,
        };
        let conn = config::resolve(&self.flags, self.env, file.as_ref(), path.as_deref())?;
        Ok(Client::new(&conn.api_url, Some(conn.token))?)
    }

    fn app(&self, flag: Option<&str>) -> Result<AppName, CliError> {
        config::resolve_app(flag, self.env)
    }
}

pub async fn run(ctx: &Ctx<'_>, command: Command) -> Result<(), CliError> {
    match command {
        Command::Apps(c) => apps(ctx, c).await,
        Command::Secrets(s) => secrets(ctx, s).await,
        Command::Tokens(c) => tokens(ctx, c).await,
    }
}

async fn apps(ctx: &Ctx<'_>, command: AppsCommand) -> Result<(), CliError> {
    match command {
        AppsCommand::Create { name } => {
            let name = config::parse_app(&name)?;
            let app = ctx.client()?.create_app(name.as_str()).await?;
            if ctx.json {
                print(&json(&app)?)
            } else {
                print(&format!("Created app {}\n", app.name))
            }
        }
        AppsCommand::List => {
            let apps = ctx.client()?.list_apps().await?;
            if ctx.json {
                print(&json(&apps)?)
            } else if apps.is_empty() {
                note("No apps yet. Create one with `coffer apps create NAME`.");
                Ok(())
            } else {
                print(&output::apps_table(&apps, Timestamp::now(), ctx.tty))
            }
        }
        AppsCommand::Destroy { name, yes } => {
            let name = config::parse_app(&name)?;
            let interactive = std::io::stdin().is_terminal();
            if !yes && !interactive {
                return Err(CliError::new(
                    Exit::Usage,
                    format!("refusing to destroy app {name} without confirmation"),
                )
                .with_hint("stdin is not a terminal, so coffer cannot ask: pass --yes"));
            }
            let client = ctx.client()?;
            if !yes {
                // Fails early, before asking, if the app does not exist.
                client.get_app(name.as_str()).await?;
                confirm_destroy(&name)?;
            }
            client.destroy_app(name.as_str()).await?;
            if ctx.json {
                print(&json(
                    &serde_json::json!({ "app": name.as_str(), "destroyed": true }),
                )?)
            } else {
                print(&format!("Destroyed app {name}\n"))
            }
        }
    }
}

fn confirm_destroy(name: &AppName) -> Result<(), CliError> {
    let mut err = std::io::stderr().lock();
    let _ = write!(
        err,
        "Destroying app {name} deletes its machines, keys and secrets. This cannot be undone.\n\
         Type the app name to confirm: "
    );
    let _ = err.flush();
    drop(err);
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| CliError::new(Exit::Other, format!("cannot read the confirmation: {e}")))?;
    if line.trim() == name.as_str() {
        Ok(())
    } else {
        Err(CliError::new(
            Exit::Other,
            format!("the confirmation did not match; app {name} was not destroyed"),
        ))
    }
}

async fn secrets(ctx: &Ctx<'_>, args: SecretsArgs) -> Result<(), CliError> {
    let app_flag = args.app.app.as_deref();
    match args.command {
        SecretsCommand::Set { pairs, write } => {
            let pairs = input::parse_pairs(&pairs)?;
            let app = ctx.app(app_flag)?;
            let client = ctx.client()?;
            let stdin = match input::stdin_name(&pairs) {
                Some(name) => Some(read_stdin(&format!(
                    "Reading the value of {name} from stdin until end of input (Ctrl-D); \
                     it is stored exactly as typed, final newline included."
                ))?),
                None => None,
            };
            let change = input::build_set(pairs, stdin.map(|mut s| std::mem::take(&mut *s)))?;
            write_change(ctx, &client, &app, change, write).await
        }
        SecretsCommand::Unset { names, write } => {
            let change = input::validate(vec![], names)?;
            let app = ctx.app(app_flag)?;
            let client = ctx.client()?;
            write_change(ctx, &client, &app, change, write).await
        }
        SecretsCommand::Import { write } => {
            let app = ctx.app(app_flag)?;
            let client = ctx.client()?;
            let text = read_stdin("Reading dotenv text from stdin until end of input (Ctrl-D).")?;
            let change = input::build_import(&text)?;
            drop(text);
            write_change(ctx, &client, &app, change, write).await
        }
        SecretsCommand::List => {
            let app = ctx.app(app_flag)?;
            let list = ctx.client()?.list_secrets(app.as_str()).await?;
            if ctx.json {
                print(&json(&list.secrets)?)
            } else if list.secrets.is_empty() {
                note(&format!(
                    "App {app} has no secrets yet. Set one with `coffer secrets set NAME=VALUE`."
                ));
                Ok(())
            } else {
                print(&output::secrets_table(
                    &list.secrets,
                    Timestamp::now(),
                    ctx.tty,
                ))
            }
        }
        SecretsCommand::Deploy { detach } => {
            let app = ctx.app(app_flag)?;
            let client = ctx.client()?;
            let result = client.deploy(app.as_str()).await?;
            if result.changed {
                follow_release(&client, &app, result.version, detach).await?;
            }
            if ctx.json {
                print(&json(&result)?)
            } else if result.changed {
                print(&format!("Deployed secrets version {}\n", result.version))
            } else {
                print(&format!(
                    "Nothing to deploy: secrets version {} is already deployed\n",
                    result.version
                ))
            }
        }
        SecretsCommand::History { name } => {
            let name = name
                .map(|n| SecretName::parse(&n))
                .transpose()
                .map_err(|e| CliError::new(Exit::Invalid, e.to_string()))?;
            let app = ctx.app(app_flag)?;
            let name = name.as_ref().map(SecretName::as_str);
            let versions = ctx.client()?.history(app.as_str(), name).await?;
            if ctx.json {
                print(&json(&versions)?)
            } else if versions.is_empty() {
                match name {
                    Some(n) => note(&format!("No secrets version of app {app} changed {n}.")),
                    None => note(&format!("App {app} has no secrets versions yet.")),
                }
                Ok(())
            } else {
                print(&output::history_table(&versions, Timestamp::now(), ctx.tty))
            }
        }
    }
}

/// Sends one validated change and reports the new version.
async fn write_change(
    ctx: &Ctx<'_>,
    client: &Client,
    app: &AppName,
    change: ChangeSet,
    flags: WriteFlags,
) -> Result<(), CliError> {
    let description = change.describe();
    let request = write_request(&change, flags.stage);
    // The plaintext now lives only in the request, which is dropped (and wiped) once sent.
    drop(change);
    let result = client.write_secrets(app.as_str(), request).await?;
    if result.deployed {
        follow_release(client, app, result.version, flags.detach).await?;
    }
    if ctx.json {
        print(&json(&result)?)
    } else {
        print(&output::write_sentence(&description, &result))
    }
}

/// Follows the release of `version` until its outcome, unless `detach`.
///
/// Today the API finishes a deploy before it answers, so there is nothing to follow yet.
/// When releases land, this is where progress (canary, crash-watch countdown, outcome) is
/// shown on stderr and a failed release becomes an error; with `detach` it returns at once.
async fn follow_release(
    _client: &Client,
    _app: &AppName,
    _version: i64,
    detach: bool,
) -> Result<(), CliError> {
    let _ = detach;
    Ok(())
}

/// Reads all of stdin as bytes, telling the user first when stdin is a terminal.
fn read_stdin(prompt: &str) -> Result<Zeroizing<Vec<u8>>, CliError> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        note(prompt);
    }
    let mut buf = Zeroizing::new(Vec::new());
    stdin
        .lock()
        .read_to_end(&mut buf)
        .map_err(|e| CliError::new(Exit::Other, format!("cannot read stdin: {e}")))?;
    Ok(buf)
}

async fn tokens(ctx: &Ctx<'_>, command: TokensCommand) -> Result<(), CliError> {
    match command {
        TokensCommand::Create {
            app,
            scope,
            expires,
            description,
        } => {
            let app = app.as_deref().map(config::parse_app).transpose()?;
            let request = CreateToken {
                app: app.as_ref().map(ToString::to_string),
                scope: scope.into(),
                expires_in_secs: expires.map(|d| d.as_secs()),
                description,
            };
            let created = ctx.client()?.create_token(&request).await?;
            let shown = if ctx.json {
                Zeroizing::new(json(&created)?)
            } else {
                Zeroizing::new(format!("{}\n", created.token))
            };
            print(&shown)?;
            let reach = match &created.info.app {
                Some(a) => format!("app {a}"),
                None => "every app".to_string(),
            };
            note(&format!(
                "Created {} token {} for {reach}, expiring {}.\n\
                 Copy it now: it will not be shown again.",
                scope_name(scope),
                created.info.id,
                output::relative(&created.info.expires_at, Timestamp::now()),
            ));
            Ok(())
        }
        TokensCommand::List => {
            let tokens = ctx.client()?.list_tokens().await?;
            if ctx.json {
                print(&json(&tokens)?)
            } else if tokens.is_empty() {
                note("No tokens.");
                Ok(())
            } else {
                print(&output::tokens_table(&tokens, Timestamp::now(), ctx.tty))
            }
        }
        TokensCommand::Revoke { id } => {
            ctx.client()?.revoke_token(&id).await?;
            if ctx.json {
                print(&json(&serde_json::json!({ "id": id, "revoked": true }))?)
            } else {
                print(&format!("Revoked token {id}\n"))
            }
        }
    }
}

fn scope_name(s: ScopeArg) -> &'static str {
    coffer_core::Action::from(s).as_str()
}
