//! One function per command: resolve the app and the connection, call the API, render.
//!
//! Order of checks in every command: the arguments themselves (no I/O), then the app, then
//! the connection settings, then stdin (so nobody types a secret only to learn that the app
//! is missing), then the local validation of the change, then the API.

use std::io::{BufRead, IsTerminal, Read, Write};

use coffer_client::{write_request, Client};
use coffer_core::wire::machines::RunMachine;
use coffer_core::wire::CreateToken;
use coffer_core::{AppName, ChangeSet, SecretName};
use jiff::Timestamp;
use zeroize::Zeroizing;

use crate::args::{
    AppsCommand, Command, MachinesArgs, MachinesCommand, ReleasesArgs, ReleasesCommand, ScopeArg,
    SecretsArgs, SecretsCommand, TokensCommand, WriteFlags,
};
use crate::config::{self, Env, Flags};
use crate::error::{CliError, Exit};
use crate::input;
use crate::output::{self, json, note, print, MachineVerb};

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
        Command::Machines(m) => machines(ctx, m).await,
        Command::Tokens(c) => tokens(ctx, c).await,
        Command::Releases(r) => releases(ctx, r).await,
    }
}

async fn releases(ctx: &Ctx<'_>, args: ReleasesArgs) -> Result<(), CliError> {
    let app = ctx.app(args.app.app.as_deref())?;
    match args.command {
        ReleasesCommand::List => {
            let list = ctx.client()?.releases(app.as_str()).await?;
            if ctx.json {
                print(&json(&list)?)
            } else if list.is_empty() {
                note(&format!("App {app} has no releases yet."));
                Ok(())
            } else {
                print(&output::releases_table(&list, Timestamp::now(), ctx.tty))
            }
        }
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
        AppsCommand::Update { name, crash_window } => {
            let name = config::parse_app(&name)?;
            let mut update = coffer_core::wire::UpdateApp::default();
            if let Some(w) = crash_window {
                let d = coffer_core::duration::parse_duration(&w)
                    .map_err(|e| CliError::new(Exit::Invalid, e.to_string()))?;
                update.crash_window_secs = Some(d.as_secs());
            }
            let app = ctx.client()?.update_app(name.as_str(), &update).await?;
            if ctx.json {
                print(&json(&app)?)
            } else {
                print(&format!(
                    "Updated app {}: crash window {}s\n",
                    app.name, app.crash_window_secs
                ))
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
                follow_release(&client, &app, result.release, detach, ctx.json).await?;
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
        follow_release(client, app, result.release, flags.detach, ctx.json).await?;
    }
    if ctx.json {
        print(&json(&result)?)
    } else {
        print(&output::write_sentence(&description, &result))
    }
}

/// Follows a release until its outcome, unless `detach`: progress lines (which machine, the
/// crash-watch countdown) on stderr, then the outcome. A failed release is an error (exit 8)
/// that names the machine, its exit status and how long it ran.
async fn follow_release(
    client: &Client,
    app: &AppName,
    release: Option<i64>,
    detach: bool,
    json_output: bool,
) -> Result<(), CliError> {
    let Some(version) = release else {
        return Ok(());
    };
    if detach {
        if !json_output {
            note(&format!(
                "Release v{version} started; follow it with `coffer releases list -a {app}`"
            ));
        }
        return Ok(());
    }
    let mut last = String::new();
    loop {
        let r = client.release(app.as_str(), version).await?;
        match r.status.as_str() {
            "running" => {
                if !r.progress.is_empty() && r.progress != last && !json_output {
                    note(&format!("release v{version}: {}", r.progress));
                    last = r.progress.clone();
                }
                tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            }
            "failed" => {
                let reason = r.reason.unwrap_or_else(|| "no reason recorded".into());
                return Err(CliError::new(
                    Exit::ReleaseFailed,
                    format!("release v{version} failed: {reason}"),
                )
                .with_hint(format!(
                    "it was rolled back: the machines run the previous secrets and the app's secrets are the previous set again (see `coffer releases list -a {app}`)"
                )));
            }
            _ => {
                if !json_output {
                    note(&format!("release v{version}: {}", r.status));
                }
                return Ok(());
            }
        }
    }
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

/// `machines …`. Run, stop, start and destroy return once the control plane has recorded
/// the change (destroy: once the machine's access to the secrets is revoked); the host acts
/// on it within moments, and `machines list` shows its progress. Destroy does not ask for
/// confirmation: it concerns one machine, not an app's data.
async fn machines(ctx: &Ctx<'_>, args: MachinesArgs) -> Result<(), CliError> {
    let app_flag = args.app.app.as_deref();
    match args.command {
        MachinesCommand::Run {
            name,
            env,
            restart,
            check_http,
            check_tcp,
            command,
        } => {
            let env = input::parse_env(&env)?;
            let check = input::parse_check(check_http.as_deref(), check_tcp.as_deref())?;
            let app = ctx.app(app_flag)?;
            let request = RunMachine {
                name,
                command,
                env,
                restart: restart.into(),
                check,
            };
            let m = ctx.client()?.run_machine(app.as_str(), &request).await?;
            machine_result(ctx, MachineVerb::Run, &m)?;
            if !ctx.json {
                note(&format!(
                    "Follow its output with `coffer machines logs {} --follow`.",
                    m.id
                ));
            }
            Ok(())
        }
        MachinesCommand::List => {
            let app = ctx.app(app_flag)?;
            let list = ctx.client()?.list_machines(app.as_str()).await?;
            if ctx.json {
                print(&json(&list)?)
            } else if list.is_empty() {
                note(&format!(
                    "App {app} has no machines. Run one with `coffer machines run -- CMD ARG…`."
                ));
                Ok(())
            } else {
                print(&output::machines_table(&list, Timestamp::now(), ctx.tty))
            }
        }
        MachinesCommand::Stop { id } => {
            let app = ctx.app(app_flag)?;
            let m = ctx.client()?.stop_machine(app.as_str(), &id).await?;
            machine_result(ctx, MachineVerb::Stop, &m)
        }
        MachinesCommand::Start { id } => {
            let app = ctx.app(app_flag)?;
            let m = ctx.client()?.start_machine(app.as_str(), &id).await?;
            machine_result(ctx, MachineVerb::Start, &m)
        }
        MachinesCommand::Destroy { id, yes: _ } => {
            let app = ctx.app(app_flag)?;
            let m = ctx.client()?.destroy_machine(app.as_str(), &id).await?;
            machine_result(ctx, MachineVerb::Destroy, &m)
        }
        MachinesCommand::Logs { id, follow } => {
            let app = ctx.app(app_flag)?;
            let client = ctx.client()?;
            let mut logs = client.machine_logs(app.as_str(), &id, follow).await?;
            let mut out = std::io::stdout().lock();
            while let Some(chunk) = logs.next_chunk().await? {
                match out.write_all(&chunk).and_then(|()| out.flush()) {
                    Ok(()) => {}
                    // `coffer machines logs ID | head`: the reader has had enough.
                    Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
                    Err(e) => {
                        return Err(CliError::new(
                            Exit::Other,
                            format!("cannot write to stdout: {e}"),
                        ))
                    }
                }
            }
            Ok(())
        }
    }
}

fn machine_result(
    ctx: &Ctx<'_>,
    verb: MachineVerb,
    m: &coffer_core::wire::machines::Machine,
) -> Result<(), CliError> {
    if ctx.json {
        print(&json(m)?)
    } else {
        print(&output::machine_sentence(verb, m))
    }
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
