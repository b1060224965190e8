//! Where the CLI finds the API URL, the token and the app.
//!
//! # The config file
//!
//! `$XDG_CONFIG_HOME/coffer/config.toml`, or `~/.config/coffer/config.toml` when
//! `XDG_CONFIG_HOME` is unset, empty or not absolute. `cofferd dev` writes it (mode 0600);
//! it may also be written by hand:
//!
//! ```toml
//! api_url = "http://127.0.0.1:4000"
//! token = "cfr_…"
//! ```
//!
//! Both keys are optional; other keys are ignored, so that newer versions can add some. A
//! missing file is not an error; an unreadable or malformed one is.
//!
//! # Precedence
//!
//! For the API URL and the token: the flag (`--api-url`, `--token`), else the environment
//! (`COFFER_API_URL`, `COFFER_API_TOKEN`), else the config file. An empty value counts as
//! absent. The file is read only when a flag or variable does not already answer.
//!
//! For the app: `-a/--app`, else `COFFER_APP`, else `app = "…"` in `./coffer.toml` (the
//! current directory only).
//!
//! Every function here that decides takes its inputs as arguments ([`Env`] is read from the
//! process once, in `main`), so the rules are unit-tested without touching the process.

use std::path::{Path, PathBuf};

use coffer_client::SecretToken;
use coffer_core::AppName;
use serde::Deserialize;
use zeroize::Zeroizing;

use crate::error::{CliError, Exit};

pub const ENV_API_URL: &str = "COFFER_API_URL";
pub const ENV_API_TOKEN: &str = "COFFER_API_TOKEN";
pub const ENV_APP: &str = "COFFER_APP";

/// The hint for a missing URL or token.
const HINT_NO_CONFIG: &str = "start `cofferd dev` (it writes this file) or pass --api-url/--token";

/// The environment variables the CLI reads, captured once.
#[derive(Default, Clone)]
pub struct Env {
    pub api_url: Option<String>,
    pub api_token: Option<String>,
    pub app: Option<String>,
    pub xdg_config_home: Option<PathBuf>,
    pub home: Option<PathBuf>,
    /// The current directory, where `coffer.toml` is looked for.
    pub cwd: Option<PathBuf>,
}

impl std::fmt::Debug for Env {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Env")
            .field("api_url", &self.api_url)
            .field("api_token", &self.api_token.as_ref().map(|_| "[REDACTED]"))
            .field("app", &self.app)
            .field("xdg_config_home", &self.xdg_config_home)
            .field("home", &self.home)
            .field("cwd", &self.cwd)
            .finish()
    }
}

impl Env {
    pub fn from_process() -> Self {
        let var = |k: &str| std::env::var(k).ok();
        let path = |k: &str| std::env::var_os(k).map(PathBuf::from);
        Env {
            api_url: var(ENV_API_URL),
            api_token: var(ENV_API_TOKEN),
            app: var(ENV_APP),
            xdg_config_home: path("XDG_CONFIG_HOME"),
            home: path("HOME"),
            cwd: std::env::current_dir().ok(),
        }
    }
}

/// The contents of the config file. See the [module documentation](self).
#[derive(Default, Deserialize)]
pub struct ConfigFile {
    #[serde(default)]
    pub api_url: Option<String>,
    #[serde(default)]
    pub token: Option<String>,
}

impl std::fmt::Debug for ConfigFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigFile")
            .field("api_url", &self.api_url)
            .field("token", &self.token.as_ref().map(|_| "[REDACTED]"))
            .finish()
    }
}

impl Drop for ConfigFile {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        if let Some(t) = self.token.as_mut() {
            t.zeroize();
        }
    }
}

/// The path of the config file, if there is a home to put it in.
pub fn config_path(env: &Env) -> Option<PathBuf> {
    let base = match &env.xdg_config_home {
        Some(x) if x.is_absolute() => x.clone(),
        _ => env
            .home
            .as_ref()
            .filter(|h| !h.as_os_str().is_empty())?
            .join(".config"),
    };
    Some(base.join("coffer").join("config.toml"))
}

/// Parses the text of the config file. The error never quotes the file (it holds a token).
pub fn parse_config(text: &str, path: &Path) -> Result<ConfigFile, CliError> {
    toml::from_str(text).map_err(|e| {
        let at = e
            .span()
            .map(|s| format!(" at line {}", text[..s.start].matches('\n').count() + 1))
            .unwrap_or_default();
        CliError::new(
            Exit::Unreachable,
            format!("the config file {} is not valid{at}", path.display()),
        )
        .with_hint("fix it, or delete it and run `cofferd dev` to write a new one")
    })
}

/// Reads the config file; `Ok(None)` when there is none.
pub fn load_config(path: &Path) -> Result<Option<ConfigFile>, CliError> {
    match std::fs::read(path) {
        Ok(bytes) => {
            let bytes = Zeroizing::new(bytes);
            let text = std::str::from_utf8(&bytes).map_err(|_| {
                CliError::new(
                    Exit::Unreachable,
                    format!("the config file {} is not UTF-8 text", path.display()),
                )
            })?;
            parse_config(text, path).map(Some)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(CliError::new(
            Exit::Unreachable,
            format!("cannot read the config file {}: {e}", path.display()),
        )),
    }
}

/// The global flags that configure the connection.
#[derive(Default)]
pub struct Flags<'a> {
    pub api_url: Option<&'a str>,
    pub token: Option<&'a str>,
}

/// Where the API is and how to authenticate to it.
pub struct Connection {
    pub api_url: String,
    pub token: SecretToken,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Connection {{ api_url: {:?}, token: [REDACTED] }}",
            self.api_url
        )
    }
}

fn non_empty(s: Option<&str>) -> Option<&str> {
    s.filter(|s| !s.trim().is_empty())
}

/// Does the config file have to be read to answer? (Only when a flag or variable is missing.)
pub fn needs_file(flags: &Flags<'_>, env: &Env) -> bool {
    non_empty(flags.api_url)
        .or(non_empty(env.api_url.as_deref()))
        .is_none()
        || non_empty(flags.token)
            .or(non_empty(env.api_token.as_deref()))
            .is_none()
}

/// Applies the precedence flag > environment > file. `path` only names the file in errors.
pub fn resolve(
    flags: &Flags<'_>,
    env: &Env,
    file: Option<&ConfigFile>,
    path: Option<&Path>,
) -> Result<Connection, CliError> {
    let pick = |flag: Option<&str>, var: Option<&str>, key: Option<&str>| {
        non_empty(flag)
            .or(non_empty(var))
            .or(non_empty(key))
            .map(|s| s.trim().to_string())
    };
    let file_desc = match path {
        Some(p) => p.display().to_string(),
        None => "the config file (no home directory)".to_string(),
    };
    let api_url = pick(
        flags.api_url,
        env.api_url.as_deref(),
        file.and_then(|f| f.api_url.as_deref()),
    )
    .ok_or_else(|| {
        CliError::new(
            Exit::Unreachable,
            format!("no coffer API URL: none in --api-url, {ENV_API_URL} or {file_desc}"),
        )
        .with_hint(HINT_NO_CONFIG)
    })?;
    let token = pick(
        flags.token,
        env.api_token.as_deref(),
        file.and_then(|f| f.token.as_deref()),
    )
    .ok_or_else(|| {
        CliError::new(
            Exit::Unreachable,
            format!("no API token: none in --token, {ENV_API_TOKEN} or {file_desc}"),
        )
        .with_hint(HINT_NO_CONFIG)
    })?;
    Ok(Connection {
        api_url,
        token: SecretToken::new(token),
    })
}

/// `./coffer.toml`: the app of the project in the current directory.
#[derive(Debug, Default, Deserialize)]
pub struct ProjectFile {
    #[serde(default)]
    pub app: Option<String>,
}

pub const PROJECT_FILE: &str = "coffer.toml";

const HINT_NO_APP: &str = "pass -a NAME, set COFFER_APP, or add app = \"NAME\" to ./coffer.toml";

/// Applies the precedence `-a` > `COFFER_APP` > `./coffer.toml` and validates the name.
pub fn pick_app(
    flag: Option<&str>,
    env: &Env,
    project: Option<&ProjectFile>,
) -> Result<AppName, CliError> {
    let raw = non_empty(flag)
        .or(non_empty(env.app.as_deref()))
        .or(non_empty(project.and_then(|p| p.app.as_deref())))
        .ok_or_else(|| CliError::new(Exit::Usage, "no app given").with_hint(HINT_NO_APP))?;
    parse_app(raw)
}

/// Validates an app name given on the command line.
pub fn parse_app(raw: &str) -> Result<AppName, CliError> {
    AppName::parse(raw.trim()).map_err(|e| CliError::new(Exit::Invalid, e.to_string()))
}

/// Reads `./coffer.toml` from `dir`; `Ok(None)` when there is none.
pub fn load_project(dir: &Path) -> Result<Option<ProjectFile>, CliError> {
    let path = dir.join(PROJECT_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => toml::from_str(&text).map(Some).map_err(|e| {
            CliError::new(
                Exit::Usage,
                format!("./{PROJECT_FILE} is not valid TOML: {}", e.message()),
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(CliError::new(
            Exit::Other,
            format!("cannot read ./{PROJECT_FILE}: {e}"),
        )),
    }
}

/// The app of a command: the flag or the environment, else `./coffer.toml` (read only then).
pub fn resolve_app(flag: Option<&str>, env: &Env) -> Result<AppName, CliError> {
    if non_empty(flag).or(non_empty(env.app.as_deref())).is_some() {
        return pick_app(flag, env, None);
    }
    let project = match &env.cwd {
        Some(dir) => load_project(dir)?,
        None => None,
    };
    pick_app(flag, env, project.as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> Env {
        Env {
            api_url: Some("http://env:1".into()),
            api_token: Some("tok-env".into()),
            app: Some("env-app".into()),
            xdg_config_home: None,
            home: Some("/home/u".into()),
            cwd: None,
        }
    }

    fn file() -> ConfigFile {
        ConfigFile {
            api_url: Some("http://file:1".into()),
            token: Some("tok-file".into()),
        }
    }

    fn res(
        flags: Flags<'_>,
        env: &Env,
        file: Option<&ConfigFile>,
    ) -> Result<(String, String), CliError> {
        let c = resolve(&flags, env, file, Some(Path::new("/cfg/config.toml")))?;
        Ok((c.api_url, c.token.expose().to_string()))
    }

    #[test]
    fn flag_beats_env_beats_file() {
        let flags = Flags {
            api_url: Some("http://flag:1"),
            token: Some("tok-flag"),
        };
        assert_eq!(
            res(flags, &env(), Some(&file())).unwrap(),
            ("http://flag:1".into(), "tok-flag".into())
        );
        assert_eq!(
            res(Flags::default(), &env(), Some(&file())).unwrap(),
            ("http://env:1".into(), "tok-env".into())
        );
        assert_eq!(
            res(Flags::default(), &Env::default(), Some(&file())).unwrap(),
            ("http://file:1".into(), "tok-file".into())
        );
        // Each key is resolved on its own.
        let e = Env {
            api_token: None,
            ..env()
        };
        assert_eq!(
            res(Flags::default(), &e, Some(&file())).unwrap(),
            ("http://env:1".into(), "tok-file".into())
        );
        // Empty counts as absent.
        let e = Env {
            api_url: Some(String::new()),
            ..env()
        };
        let flags = Flags {
            api_url: Some(""),
            token: None,
        };
        assert_eq!(res(flags, &e, Some(&file())).unwrap().0, "http://file:1");
    }

    #[test]
    fn file_is_read_only_when_needed() {
        assert!(!needs_file(&Flags::default(), &env()));
        assert!(needs_file(
            &Flags::default(),
            &Env {
                api_token: None,
                ..env()
            }
        ));
        assert!(!needs_file(
            &Flags {
                api_url: Some("u"),
                token: Some("t")
            },
            &Env::default()
        ));
    }

    #[test]
    fn missing_url_or_token_says_where_it_looked() {
        let e = res(Flags::default(), &Env::default(), None).unwrap_err();
        assert_eq!(e.exit, Exit::Unreachable);
        assert_eq!(
            e.render(),
            "error: no coffer API URL: none in --api-url, COFFER_API_URL or /cfg/config.toml\n\
             hint: start `cofferd dev` (it writes this file) or pass --api-url/--token\n"
        );
        let e = res(
            Flags {
                api_url: Some("http://x"),
                token: None,
            },
            &Env::default(),
            None,
        )
        .unwrap_err();
        assert!(e.message.starts_with("no API token"), "{}", e.message);
    }

    #[test]
    fn config_path_follows_xdg() {
        let mut e = Env::default();
        assert_eq!(config_path(&e), None);
        e.home = Some("/home/u".into());
        assert_eq!(
            config_path(&e).unwrap(),
            Path::new("/home/u/.config/coffer/config.toml")
        );
        e.xdg_config_home = Some("relative/ignored".into());
        assert_eq!(
            config_path(&e).unwrap(),
            Path::new("/home/u/.config/coffer/config.toml")
        );
        e.xdg_config_home = Some("/xdg".into());
        assert_eq!(
            config_path(&e).unwrap(),
            Path::new("/xdg/coffer/config.toml")
        );
    }

    #[test]
    fn config_file_format() {
        let p = Path::new("/cfg/config.toml");
        let f = parse_config(
            "api_url = \"http://127.0.0.1:4000\"\ntoken = \"cfr_abc\"\nfuture_key = 1\n",
            p,
        )
        .unwrap();
        assert_eq!(f.api_url.as_deref(), Some("http://127.0.0.1:4000"));
        assert_eq!(f.token.as_deref(), Some("cfr_abc"));
        assert!(!format!("{f:?}").contains("cfr_abc"));
        let e = parse_config("api_url = \"x\"\ntoken = cfr_sentinel\n", p).unwrap_err();
        assert!(!e.render().contains("sentinel"), "{}", e.render());
        assert!(e.message.contains("line 2"), "{}", e.message);
    }

    #[test]
    fn app_precedence() {
        let project = ProjectFile {
            app: Some("file-app".into()),
        };
        let a = |flag, env: &Env, p| pick_app(flag, env, p).map(|a| a.to_string());
        assert_eq!(
            a(Some("flag-app"), &env(), Some(&project)).unwrap(),
            "flag-app"
        );
        assert_eq!(a(None, &env(), Some(&project)).unwrap(), "env-app");
        assert_eq!(
            a(None, &Env::default(), Some(&project)).unwrap(),
            "file-app"
        );
        let e = a(None, &Env::default(), None).unwrap_err();
        assert_eq!(e.exit, Exit::Usage);
        assert_eq!(
            e.render(),
            "error: no app given\n\
             hint: pass -a NAME, set COFFER_APP, or add app = \"NAME\" to ./coffer.toml\n"
        );
        assert_eq!(
            a(Some("Bad_App"), &env(), None).unwrap_err().exit,
            Exit::Invalid
        );
    }

    #[test]
    fn project_file_is_read_from_the_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let env = Env {
            cwd: Some(dir.to_path_buf()),
            ..Env::default()
        };
        assert_eq!(resolve_app(None, &env).unwrap_err().message, "no app given");
        std::fs::write(dir.join(PROJECT_FILE), "app = \"web\"\n[other]\nx = 1\n").unwrap();
        assert_eq!(resolve_app(None, &env).unwrap().as_str(), "web");
        assert_eq!(resolve_app(Some("api"), &env).unwrap().as_str(), "api");
        std::fs::write(dir.join(PROJECT_FILE), "app = [\n").unwrap();
        assert_eq!(resolve_app(None, &env).unwrap_err().exit, Exit::Usage);
    }
}
