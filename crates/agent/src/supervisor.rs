//! Process lifecycle: spawning a workload in its own process group with exactly its
//! environment, pumping its output into the machine's log, waiting for it, stopping it, and
//! finding the workloads a previous agent left behind.
//!
//! * Each workload is the leader of its own process group (`process_group(0)`), so a stop
//!   reaches everything it started, and a Ctrl-C aimed at the agent's terminal does not reach
//!   it. Stopping is SIGTERM to the group, up to the stop timeout for the leader to exit,
//!   then SIGKILL to the group. When the leader exits by itself, what is left of its group is
//!   killed too (as a container's processes die with its init): a machine is one unit.
//! * `process.json` in the machine's directory records `{pid, start_time, generation,
//!   secrets_version}` while a workload runs. `start_time` (field 22 of `/proc/<pid>/stat`,
//!   clock ticks since boot) tells the recorded process from a later one that reuses its pid.
//! * The environment is handed to `Command` and the `Command` is dropped right after the
//!   spawn: std keeps its own (non-wiped) copy of every variable until then, and the
//!   [`WorkloadEnv`] is wiped when it is dropped here.

use crate::environment::WorkloadEnv;
use crate::identity::write_private;
use crate::logs::MachineLog;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt as _;
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;

pub const PROCESS_FILE: &str = "process.json";
/// How long the output pumps may take to drain after the workload's group is gone.
const PUMP_DRAIN: Duration = Duration::from_secs(2);

/// `process.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessRecord {
    pub pid: u32,
    pub start_time: u64,
    pub generation: i64,
    pub secrets_version: i64,
}

impl ProcessRecord {
    pub fn save(&self, machine_dir: &Path) -> std::io::Result<()> {
        let json = serde_json::to_vec_pretty(self).expect("a process record serializes");
        write_private(&machine_dir.join(PROCESS_FILE), &json)
    }

    pub fn load(machine_dir: &Path) -> Option<ProcessRecord> {
        let bytes = std::fs::read(machine_dir.join(PROCESS_FILE)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    pub fn remove(machine_dir: &Path) {
        let _ = std::fs::remove_file(machine_dir.join(PROCESS_FILE));
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("the machine has no command")]
    NoCommand,
    #[error("cannot start {program:?}: {source}")]
    Exec {
        program: String,
        #[source]
        source: std::io::Error,
    },
}

/// How a workload ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    /// The exit code, or 128 + the signal number for a workload killed by a signal.
    pub status: i32,
    pub signal: Option<i32>,
    pub ran_for: Duration,
}

impl Exit {
    fn from_status(status: ExitStatus, ran_for: Duration) -> Exit {
        use std::os::unix::process::ExitStatusExt as _;
        match (status.code(), status.signal()) {
            (Some(code), _) => Exit {
                status: code,
                signal: None,
                ran_for,
            },
            (None, Some(sig)) => Exit {
                status: 128 + sig,
                signal: Some(sig),
                ran_for,
            },
            (None, None) => Exit {
                status: -1,
                signal: None,
                ran_for,
            },
        }
    }

    /// "exited with status 3", "killed by signal 9 (SIGKILL): status 137".
    pub fn describe(&self) -> String {
        match self.signal {
            Some(sig) => {
                let name = Signal::try_from(sig).map(|s| s.as_str()).unwrap_or("?");
                format!("killed by signal {sig} ({name}): status {}", self.status)
            }
            None => format!("exited with status {}", self.status),
        }
    }
}

/// A running workload.
pub struct Workload {
    child: Child,
    pub pid: u32,
    pub started: Instant,
    pumps: Vec<JoinHandle<()>>,
    machine_dir: PathBuf,
    done: bool,
}

/// Where `program` is, when it is a bare name: the first executable file of that name in the
/// workload's own `PATH` (relative entries from `home`, where the workload starts), as
/// `execvp` would find it; `None` when it is a path already, or when nothing is found (then
/// the spawn reports the error as before).
///
/// Why: std runs a bare name with a `PATH` in the child's environment through fork + `execvp`
/// (it must search the child's `PATH`, not the agent's), and a fork copies the page tables of
/// the whole agent — in `cofferd dev` the whole daemon, about 2 ms per boot and growing with
/// its memory (BENCHMARKS.md, *Machine boot latency*). Given a path, std spawns with posix_spawn
/// (vfork), which copies nothing.
fn program_path(program: &str, path: Option<&[u8]>, home: &Path) -> Option<PathBuf> {
    use std::os::unix::ffi::OsStrExt as _;
    use std::os::unix::fs::PermissionsExt as _;
    if program.is_empty() || program.contains('/') {
        return None;
    }
    path?.split(|b| *b == b':').find_map(|dir| {
        // An empty entry is the current directory, as for `execvp`.
        let dir = Path::new(OsStr::from_bytes(if dir.is_empty() { b"." } else { dir }));
        let candidate = home.join(dir).join(program);
        let meta = std::fs::metadata(&candidate).ok()?;
        (meta.is_file() && meta.permissions().mode() & 0o111 != 0).then_some(candidate)
    })
}

/// Spawns `command` with exactly `env` (consumed and wiped), in `home`, output to `log`,
/// under `user` (user and group id, no supplementary groups) or the agent's own user.
/// Writes `process.json` into `machine_dir`.
#[allow(clippy::too_many_arguments)]
pub fn spawn(
    command: &[String],
    env: WorkloadEnv,
    user: Option<u32>,
    home: &Path,
    machine_dir: &Path,
    log: &MachineLog,
    generation: i64,
    secrets_version: i64,
) -> Result<Workload, SpawnError> {
    let (program, args) = command.split_first().ok_or(SpawnError::NoCommand)?;
    let command_for = |program: &OsStr| {
        let mut cmd = Command::new(program);
        cmd.args(args)
            .env_clear()
            .envs(env.expose_all())
            .current_dir(home)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(false);
        if let Some(uid) = user {
            // std drops the supplementary groups when it changes the user. (It then starts
            // the child with fork rather than posix_spawn: slower, see `program_path`.)
            cmd.uid(uid).gid(uid);
        }
        cmd
    };
    let found = program_path(program, env.expose("PATH"), home);
    let mut spawned =
        command_for(found.as_deref().unwrap_or(Path::new(program)).as_os_str()).spawn();
    let unlike_execvp = |e: &std::io::Error| {
        matches!(
            e.raw_os_error(),
            Some(nix::libc::ENOEXEC | nix::libc::EACCES)
        )
    };
    if found.is_some() && matches!(&spawned, Err(e) if unlike_execvp(e)) {
        // Where `execvp`, which std uses for a bare name, would go on: a script without `#!`
        // (it runs it with /bin/sh), or a file this user may not run (it tries the rest of
        // the PATH). Spawn the name as before.
        spawned = command_for(OsStr::new(program)).spawn();
    }
    // The values now exist only in the spawned commands (std's copies, dropped with them)
    // and `env`: drop it right away.
    drop(env);
    let mut child = spawned.map_err(|source| SpawnError::Exec {
        program: program.clone(),
        source,
    })?;
    let started = Instant::now();
    let pid = child.id().expect("a just-spawned child has a pid");
    let mut pumps = Vec::with_capacity(2);
    if let Some(out) = child.stdout.take() {
        pumps.push(tokio::spawn(pump(out, log.clone())));
    }
    if let Some(err) = child.stderr.take() {
        pumps.push(tokio::spawn(pump(err, log.clone())));
    }
    let record = ProcessRecord {
        pid,
        start_time: proc_start_time(pid).unwrap_or(0),
        generation,
        secrets_version,
    };
    if let Err(e) = record.save(machine_dir) {
        tracing::warn!(pid, error = %e, "cannot write process.json");
    }
    Ok(Workload {
        child,
        pid,
        started,
        pumps,
        machine_dir: machine_dir.to_path_buf(),
        done: false,
    })
}

async fn pump(mut from: impl tokio::io::AsyncRead + Unpin, log: MachineLog) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => log.write(&buf[..n]),
        }
    }
}

impl Workload {
    /// Waits for the leader to exit. Cancel-safe: call again after a cancelled wait.
    pub async fn wait(&mut self) -> std::io::Result<ExitStatus> {
        self.child.wait().await
    }

    /// After [`Workload::wait`] returned: kills what is left of the group, lets the output
    /// pumps drain, removes `process.json`.
    pub async fn finish(mut self, status: std::io::Result<ExitStatus>) -> Exit {
        let ran_for = self.started.elapsed();
        signal_group(self.pid, Signal::SIGKILL);
        for mut p in std::mem::take(&mut self.pumps) {
            if tokio::time::timeout(PUMP_DRAIN, &mut p).await.is_err() {
                p.abort();
            }
        }
        ProcessRecord::remove(&self.machine_dir);
        self.done = true;
        match status {
            Ok(s) => Exit::from_status(s, ran_for),
            Err(e) => {
                tracing::warn!(pid = self.pid, error = %e, "cannot read a workload's exit status");
                Exit {
                    status: -1,
                    signal: None,
                    ran_for,
                }
            }
        }
    }

    /// SIGTERM to the group, up to `timeout` for the leader to exit, then SIGKILL.
    pub async fn stop(mut self, timeout: Duration) -> Exit {
        signal_group(self.pid, Signal::SIGTERM);
        let status = match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(s) => s,
            Err(_) => {
                tracing::info!(
                    pid = self.pid,
                    "workload did not exit {}s after SIGTERM; sending SIGKILL",
                    timeout.as_secs_f32()
                );
                signal_group(self.pid, Signal::SIGKILL);
                self.child.wait().await
            }
        };
        self.finish(status).await
    }
}

impl Drop for Workload {
    /// A workload is never left running by accident (a panicking worker): its group is
    /// killed, and tokio reaps the leader.
    fn drop(&mut self) {
        if !self.done {
            signal_group(self.pid, Signal::SIGKILL);
        }
    }
}

/// Sends `sig` to the process group led by `pgid`; a group that is gone is fine.
fn signal_group(pgid: u32, sig: Signal) {
    let Ok(raw) = i32::try_from(pgid) else { return };
    if raw <= 1 {
        return; // never the whole session or init's group
    }
    match killpg(Pid::from_raw(raw), sig) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
        Err(e) => {
            tracing::warn!(pgid, signal = %sig, error = %e, "cannot signal a workload's process group")
        }
    }
}

/// `(state, start_time)` from the text of `/proc/<pid>/stat`. The command name (field 2) is
/// in parentheses and may itself contain spaces and parentheses, so fields are counted from
/// the last `)`.
pub fn parse_stat(stat: &str) -> Option<(char, u64)> {
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is field 3 (state); field 22 (starttime) is fields[19].
    let state = fields.first()?.chars().next()?;
    let start_time = fields.get(19)?.parse().ok()?;
    Some((state, start_time))
}

/// The start time of a live process, `None` if there is none (or only a zombie).
pub fn proc_start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    match parse_stat(&stat)? {
        ('Z' | 'X', _) => None,
        (_, t) => Some(t),
    }
}

/// Is the process of `record` still alive (same pid, same start time, not a zombie)?
pub fn is_alive(record: &ProcessRecord) -> bool {
    proc_start_time(record.pid) == Some(record.start_time) && record.start_time != 0
}

/// Kills the process group a previous agent recorded in `process.json`, if its leader is
/// still the recorded process: SIGTERM, up to `timeout`, SIGKILL. Its pipes died with that
/// agent, so it cannot be adopted; the machine is booted again by the reconcile loop.
/// Returns whether there was something to kill. Removes `process.json`.
pub async fn kill_leftover(machine_dir: &Path, timeout: Duration) -> bool {
    let Some(record) = ProcessRecord::load(machine_dir) else {
        return false;
    };
    let found = is_alive(&record);
    if found {
        tracing::info!(
            pid = record.pid,
            generation = record.generation,
            "stopping a workload left by a previous agent"
        );
        signal_group(record.pid, Signal::SIGTERM);
        let deadline = Instant::now() + timeout;
        while is_alive(&record) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // The leader if it ignored SIGTERM, and whatever is left of its group.
        signal_group(record.pid, Signal::SIGKILL);
        let deadline = Instant::now() + Duration::from_secs(2);
        while is_alive(&record) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    ProcessRecord::remove(machine_dir);
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::environment::{build, Platform};
    use coffer_core::SecretValue;
    use std::collections::BTreeMap;

    fn env_for(dir: &Path, secrets: Vec<(&str, &str)>) -> WorkloadEnv {
        build(
            secrets
                .into_iter()
                .map(|(n, v)| (n.to_string(), SecretValue::from_str_value(v)))
                .collect(),
            &BTreeMap::new(),
            &Platform {
                app_name: "web",
                machine_id: "m1",
                release_version: 2,
            },
            dir,
        )
        .unwrap()
    }

    fn sh(script: &str) -> Vec<String> {
        vec!["sh".into(), "-c".into(), script.into()]
    }

    #[test]
    fn stat_parsing() {
        let stat = "1234 (we(ird) name) S 1 1234 1234 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 987654 1000000 100 18446744073709551615";
        assert_eq!(parse_stat(stat), Some(('S', 987654)));
        assert_eq!(parse_stat("garbage"), None);
        let me = std::process::id();
        assert!(proc_start_time(me).is_some());
    }

    #[test]
    fn process_record_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let r = ProcessRecord {
            pid: 42,
            start_time: 123456,
            generation: 3,
            secrets_version: 7,
        };
        r.save(dir.path()).unwrap();
        assert_eq!(ProcessRecord::load(dir.path()), Some(r));
        ProcessRecord::remove(dir.path());
        assert_eq!(ProcessRecord::load(dir.path()), None);
    }

    #[tokio::test]
    async fn runs_with_the_given_env_logs_output_and_reports_the_status() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("home");
        std::fs::create_dir(&home).unwrap();
        std::env::set_var("AGENT_SIDE_SENTINEL", "must-not-leak");
        let log = MachineLog::new(dir.path().to_path_buf());
        let mut w = spawn(
            &sh("echo $X; echo err >&2; echo \"[$AGENT_SIDE_SENTINEL]\"; pwd; exit 3"),
            env_for(&home, vec![("X", "hello from a secret")]),
            None,
            &home,
            dir.path(),
            &log,
            1,
            1,
        )
        .unwrap();
        let rec = ProcessRecord::load(dir.path()).unwrap();
        assert_eq!(rec.pid, w.pid);
        let status = w.wait().await;
        let exit = w.finish(status).await;
        assert_eq!(exit.status, 3);
        assert_eq!(exit.signal, None);
        assert_eq!(exit.describe(), "exited with status 3");
        let out = std::fs::read_to_string(dir.path().join("output.log")).unwrap();
        assert!(out.contains("hello from a secret\n"), "{out}");
        assert!(out.contains("err\n"), "{out}");
        assert!(out.contains("[]\n"), "the agent's variable leaked: {out}");
        assert!(out.contains(&format!("{}\n", home.display())), "{out}");
        assert!(ProcessRecord::load(dir.path()).is_none());
    }

    fn write_file(path: &Path, text: &str, mode: u32) {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::write(path, text).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn a_bare_name_is_found_in_the_workloads_path_as_execvp_would() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("home");
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        for d in [&home, &a, &b, &home.join("bin")] {
            std::fs::create_dir_all(d).unwrap();
        }
        write_file(&a.join("tool"), "", 0o644); // not executable: skipped
        write_file(&b.join("tool"), "", 0o755);
        std::fs::create_dir(a.join("dir")).unwrap(); // a directory: skipped
        write_file(&b.join("dir"), "", 0o755);
        write_file(&home.join("bin/mine"), "", 0o700);
        let path = format!("{}:{}:bin", a.display(), b.display());
        let find = |program: &str, path: Option<&str>| {
            program_path(program, path.map(str::as_bytes), &home)
        };

        assert_eq!(find("tool", Some(&path)), Some(b.join("tool")));
        assert_eq!(find("dir", Some(&path)), Some(b.join("dir")));
        // A relative entry is relative to where the workload starts.
        assert_eq!(
            find("mine", Some(&path)),
            Some(home.join("bin").join("mine"))
        );
        // An empty entry is the current directory.
        write_file(&home.join("here"), "", 0o755);
        assert_eq!(find("here", Some("::")), Some(home.join(".").join("here")));
        // Paths, unknown names and a missing PATH are left to the spawn.
        assert_eq!(find("./tool", Some(&path)), None);
        assert_eq!(
            find(&b.join("tool").display().to_string(), Some(&path)),
            None
        );
        assert_eq!(find("nowhere", Some(&path)), None);
        assert_eq!(find("tool", None), None);
        assert_eq!(find("", Some(&path)), None);
    }

    #[tokio::test]
    async fn a_bare_name_runs_from_the_workloads_path_even_a_script_without_shebang() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        write_file(&bin.join("greet"), "#!/bin/sh\necho greet ran\n", 0o755);
        // No `#!`: execvp runs it with /bin/sh, and so must the agent.
        write_file(&bin.join("plain"), "echo plain ran\n", 0o755);
        let path = format!("{}:/usr/bin:/bin", bin.display());
        let log = MachineLog::new(dir.path().to_path_buf());
        for program in ["greet", "plain"] {
            let mut w = spawn(
                &[program.to_string()],
                env_for(dir.path(), vec![("PATH", &path)]),
                None,
                dir.path(),
                dir.path(),
                &log,
                1,
                1,
            )
            .unwrap();
            let status = w.wait().await;
            assert_eq!(w.finish(status).await.status, 0, "{program}");
        }
        let out = std::fs::read_to_string(dir.path().join("output.log")).unwrap();
        assert!(out.contains("greet ran\n"), "{out}");
        assert!(out.contains("plain ran\n"), "{out}");
        // A name nowhere on the PATH fails as before.
        let missing = spawn(
            &["no-such-program-here".to_string()],
            env_for(dir.path(), vec![("PATH", &path)]),
            None,
            dir.path(),
            dir.path(),
            &log,
            1,
            1,
        );
        assert!(matches!(missing, Err(SpawnError::Exec { .. })));
    }

    #[tokio::test]
    async fn the_workload_sees_exactly_its_environment() {
        let dir = tempfile::tempdir().unwrap();
        std::env::set_var("AGENT_SIDE_SENTINEL", "must-not-leak");
        let log = MachineLog::new(dir.path().to_path_buf());
        let mut w = spawn(
            &["env".to_string()],
            env_for(dir.path(), vec![("API_KEY", "k")]),
            None,
            dir.path(),
            dir.path(),
            &log,
            1,
            1,
        )
        .unwrap();
        let status = w.wait().await;
        assert_eq!(w.finish(status).await.status, 0);
        let out = std::fs::read_to_string(dir.path().join("output.log")).unwrap();
        let mut names: Vec<&str> = out.lines().filter_map(|l| l.split('=').next()).collect();
        names.sort();
        assert_eq!(
            names,
            vec![
                "API_KEY",
                "COFFER_APP_NAME",
                "COFFER_MACHINE_ID",
                "COFFER_RELEASE_VERSION",
                "HOME",
                "PATH"
            ]
        );
    }

    fn gone(pid: u32) -> bool {
        proc_start_time(pid).is_none()
    }

    #[tokio::test]
    async fn stop_kills_the_whole_group() {
        let dir = tempfile::tempdir().unwrap();
        let log = MachineLog::new(dir.path().to_path_buf());
        // A shell that ignores SIGTERM, with a child of its own: SIGKILL after the timeout
        // must take both.
        let w = spawn(
            &sh("trap '' TERM; sleep 1000 & echo $! > child.pid; wait"),
            env_for(dir.path(), vec![]),
            None,
            dir.path(),
            dir.path(),
            &log,
            1,
            1,
        )
        .unwrap();
        let pid = w.pid;
        let child_pid_file = dir.path().join("child.pid");
        let deadline = Instant::now() + Duration::from_secs(5);
        while !child_pid_file.exists() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let child: u32 = std::fs::read_to_string(&child_pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!(!gone(pid) && !gone(child));
        let exit = w.stop(Duration::from_millis(300)).await;
        assert_eq!(exit.signal, Some(9));
        assert_eq!(exit.status, 137);
        assert_eq!(exit.describe(), "killed by signal 9 (SIGKILL): status 137");
        // The grandchild was reparented and is reaped by init (or is a zombie until then).
        let deadline = Instant::now() + Duration::from_secs(5);
        while !(gone(pid) && gone(child)) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(gone(pid), "leader {pid} still alive");
        assert!(gone(child), "group member {child} still alive");
    }

    #[tokio::test]
    async fn a_plain_sleep_stops_on_sigterm() {
        let dir = tempfile::tempdir().unwrap();
        let log = MachineLog::new(dir.path().to_path_buf());
        let w = spawn(
            &["sleep".into(), "1000".into()],
            env_for(dir.path(), vec![]),
            None,
            dir.path(),
            dir.path(),
            &log,
            1,
            1,
        )
        .unwrap();
        let pid = w.pid;
        assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
        let exit = w.stop(Duration::from_secs(10)).await;
        assert_eq!(exit.signal, Some(15));
        assert!(exit.ran_for < Duration::from_secs(5));
        assert!(gone(pid));
    }

    #[tokio::test]
    async fn leftovers_of_a_previous_agent_are_killed() {
        let dir = tempfile::tempdir().unwrap();
        // A workload started "by another agent": its own group, recorded in process.json.
        use std::os::unix::process::CommandExt as _;
        let mut child = std::process::Command::new("sleep")
            .arg("1000")
            .process_group(0)
            .spawn()
            .unwrap();
        let pid = child.id();
        let record = ProcessRecord {
            pid,
            start_time: proc_start_time(pid).unwrap(),
            generation: 1,
            secrets_version: 1,
        };
        record.save(dir.path()).unwrap();
        // The test process is the parent, so reap in the background (init would).
        let reaper = std::thread::spawn(move || child.wait());
        assert!(kill_leftover(dir.path(), Duration::from_secs(5)).await);
        assert!(reaper.join().unwrap().is_ok());
        assert!(gone(pid));
        assert!(ProcessRecord::load(dir.path()).is_none());
        // A record whose pid now belongs to another process (other start time) is left alone.
        let me = ProcessRecord {
            pid: std::process::id(),
            start_time: 1,
            generation: 1,
            secrets_version: 1,
        };
        me.save(dir.path()).unwrap();
        assert!(!kill_leftover(dir.path(), Duration::from_secs(1)).await);
    }
}
