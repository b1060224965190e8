//! Workload users: with a range of user ids configured (`--workload-uids FIRST-LAST`), every
//! app's workloads run under a user id of their own, not the agent's.
//!
//! Why: a workload started under the agent's user could read what that user can — the host's
//! key and token in the state directory, and `/proc/PID/environ` of every other workload on
//! the host, that is, the secrets of every other app placed here. Under a user id of its own
//! it can read neither: the kernel shows a process's environment only to its own user (and
//! root), and the agent's files are 0600 in directories others may only pass through.
//!
//! * Each app gets the lowest free id of the range the first time one of its machines boots
//!   on this host, recorded in `STATE_DIR/workload-users.json` (0600, written atomically), and
//!   keeps it for the life of the state directory: ids are never handed to another app, so
//!   nothing a destroyed app's workloads left on the host (in `/tmp`, say) becomes readable by
//!   a new app. A full range fails the boot with a clear reason.
//! * The group id is the same number, and the workload has no supplementary groups (std drops
//!   them when it switches users).
//! * The range must hold ids that no account of the host uses; the agent must run as root.
//! * Directories on the way to a workload's home (the state directory, `machines/`, the
//!   machine's directory) are 0711: others may pass through, not list. Every file in them is
//!   0600 and owned by root. The home itself is 0700 and owned by the workload's user.

use anyhow::{bail, Context as _};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Mutex;

/// The file that records which app has which user id.
pub const USERS_FILE: &str = "workload-users.json";

/// Mode of the directories a workload's user must pass through to reach its home.
pub const PASS_THROUGH: u32 = 0o711;

/// An inclusive range of user ids for workloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UidRange {
    first: u32,
    last: u32,
}

impl UidRange {
    pub fn contains(&self, uid: u32) -> bool {
        (self.first..=self.last).contains(&uid)
    }

    /// How many ids the range holds.
    pub fn count(&self) -> u64 {
        u64::from(self.last - self.first) + 1
    }
}

impl fmt::Display for UidRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

impl FromStr for UidRange {
    type Err = String;

    /// `FIRST-LAST`, both included. Never 0 (root), never 4294967295 (`(uid_t)-1`, which
    /// `setuid` takes for "no change").
    fn from_str(s: &str) -> Result<Self, String> {
        let hint = "write FIRST-LAST, user ids no account of the host uses (e.g. 200000-299999)";
        let (first, last) = s
            .split_once('-')
            .ok_or_else(|| format!("workload user ids {s:?}: {hint}"))?;
        let parse = |n: &str| {
            n.trim()
                .parse::<u32>()
                .map_err(|_| format!("workload user ids {s:?}: {hint}"))
        };
        let (first, last) = (parse(first)?, parse(last)?);
        if first == 0 {
            return Err(format!("workload user ids {s:?}: 0 is root; {hint}"));
        }
        if last == u32::MAX {
            return Err(format!(
                "workload user ids {s:?}: 4294967295 is not a user id; {hint}"
            ));
        }
        if last < first {
            return Err(format!(
                "workload user ids {s:?}: LAST is below FIRST; {hint}"
            ));
        }
        Ok(UidRange { first, last })
    }
}

/// The apps' user ids on this host.
pub(crate) struct WorkloadUsers {
    range: UidRange,
    file: PathBuf,
    assigned: Mutex<Assigned>,
}

/// `workload-users.json`.
#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
struct Assigned {
    /// Each app's user id.
    apps: BTreeMap<String, u32>,
    /// Ids that apps had before the range was changed: never used again, by anyone, since
    /// what their workloads left on the host (in `/tmp`, say) is theirs.
    #[serde(default)]
    retired: BTreeSet<u32>,
}

impl WorkloadUsers {
    /// Loads what was assigned before. An app whose id lies outside `range` (the range was
    /// changed, and the id may now belong to an account of the host) gets a new one; its old
    /// id is retired, never given to another app.
    pub fn open(state_dir: &Path, range: UidRange) -> anyhow::Result<Self> {
        let file = state_dir.join(USERS_FILE);
        let mut assigned: Assigned = match std::fs::read(&file) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .with_context(|| format!("{} is not valid", file.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Assigned::default(),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", file.display())),
        };
        let outside: Vec<String> = assigned
            .apps
            .iter()
            .filter(|(_, uid)| !range.contains(**uid))
            .map(|(app, _)| app.clone())
            .collect();
        for app in outside {
            if let Some(uid) = assigned.apps.remove(&app) {
                assigned.retired.insert(uid);
            }
        }
        Ok(Self {
            range,
            file,
            assigned: Mutex::new(assigned),
        })
    }

    /// The app's user id: the one it has, or the lowest free one, recorded before it is used.
    pub fn uid_of(&self, app_id: &str) -> Result<u32, UsersError> {
        let mut assigned = self.assigned.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(uid) = assigned.apps.get(app_id) {
            return Ok(*uid);
        }
        let taken: BTreeSet<u32> = assigned
            .apps
            .values()
            .chain(&assigned.retired)
            .copied()
            .collect();
        let uid = (self.range.first..=self.range.last)
            .find(|uid| !taken.contains(uid))
            .ok_or(UsersError::Full {
                range: self.range,
                apps: assigned.apps.len(),
            })?;
        let mut next = assigned.clone();
        next.apps.insert(app_id.to_string(), uid);
        let json = serde_json::to_vec(&next).expect("a map of numbers serializes");
        crate::identity::write_private(&self.file, &json).map_err(UsersError::Record)?;
        *assigned = next;
        Ok(uid)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum UsersError {
    #[error(
        "no free workload user id: all {} of {range} are taken ({apps} apps); widen --workload-uids",
        range.count()
    )]
    Full { range: UidRange, apps: usize },
    #[error("cannot record the app's workload user id: {0}")]
    Record(std::io::Error),
}

/// Checks, at the agent's start, what running workloads under other users needs: root, and
/// a state directory whose every ancestor others may pass through. Then makes the state
/// directory and `machines/` pass-through ([`PASS_THROUGH`]).
pub(crate) fn prepare_state_dir(state_dir: &Path, machines_dir: &Path) -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "--workload-uids needs the agent to run as root (it starts each app's workloads \
             under a user id of their own)"
        );
    }
    let absolute = std::path::absolute(state_dir)
        .with_context(|| format!("cannot resolve {}", state_dir.display()))?;
    for dir in absolute.ancestors().skip(1) {
        let mode = std::fs::metadata(dir)
            .with_context(|| format!("cannot read {}", dir.display()))?
            .permissions()
            .mode();
        if mode & 0o001 == 0 {
            bail!(
                "with --workload-uids, workloads must be able to pass through {} to reach their \
                 homes in the state directory; run `chmod o+x {}` or choose another state \
                 directory",
                dir.display(),
                dir.display()
            );
        }
    }
    for dir in [state_dir, machines_dir] {
        pass_through(dir)?;
    }
    Ok(())
}

/// Sets `dir` to [`PASS_THROUGH`].
pub(crate) fn pass_through(dir: &Path) -> std::io::Result<()> {
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(PASS_THROUGH))
}

/// Gives the workload's user its home (the machine's directory pass-through, the home 0700
/// and owned by `uid`).
pub(crate) fn hand_over_home(machine_dir: &Path, home: &Path, uid: u32) -> std::io::Result<()> {
    pass_through(machine_dir)?;
    std::os::unix::fs::chown(home, Some(uid), Some(uid))?;
    std::fs::set_permissions(home, std::fs::Permissions::from_mode(0o700))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_and_refuse_what_is_not_a_range_of_users() {
        let r: UidRange = "200000-200002".parse().unwrap();
        assert_eq!(r.count(), 3);
        assert!(r.contains(200000) && r.contains(200002) && !r.contains(200003));
        assert_eq!(r.to_string(), "200000-200002");
        assert_eq!("7-7".parse::<UidRange>().unwrap().count(), 1);
        for bad in [
            "",
            "200000",
            "0-10",
            "10-5",
            "a-b",
            "1-4294967295",
            "-5",
            "5-",
            "1-99999999999",
        ] {
            let e = bad.parse::<UidRange>().unwrap_err();
            assert!(e.contains("FIRST-LAST"), "{bad}: {e}");
        }
    }

    #[test]
    fn apps_get_ids_of_their_own_which_they_keep() {
        let dir = tempfile::tempdir().unwrap();
        let range: UidRange = "5000-5002".parse().unwrap();
        let users = WorkloadUsers::open(dir.path(), range).unwrap();
        assert_eq!(users.uid_of("app-a").unwrap(), 5000);
        assert_eq!(users.uid_of("app-b").unwrap(), 5001);
        assert_eq!(users.uid_of("app-a").unwrap(), 5000);
        let file = dir.path().join(USERS_FILE);
        assert_eq!(
            std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o600
        );

        // Kept across restarts of the agent.
        let users = WorkloadUsers::open(dir.path(), range).unwrap();
        assert_eq!(users.uid_of("app-b").unwrap(), 5001);
        assert_eq!(users.uid_of("app-c").unwrap(), 5002);
        let full = users.uid_of("app-d").unwrap_err();
        assert!(
            full.to_string().contains("all 3 of 5000-5002 are taken"),
            "{full}"
        );
        // A refused app got nothing recorded; the others keep theirs.
        assert_eq!(users.uid_of("app-a").unwrap(), 5000);

        // A new range: an app outside it gets a new id.
        let users = WorkloadUsers::open(dir.path(), "5001-5010".parse().unwrap()).unwrap();
        assert_eq!(users.uid_of("app-b").unwrap(), 5001);
        assert_eq!(users.uid_of("app-a").unwrap(), 5003);
        // Its old id is retired, also when the range is widened back: never another app's.
        let users = WorkloadUsers::open(dir.path(), "5000-5010".parse().unwrap()).unwrap();
        assert_eq!(users.uid_of("app-a").unwrap(), 5003);
        assert_eq!(users.uid_of("app-new").unwrap(), 5004);
    }
}
