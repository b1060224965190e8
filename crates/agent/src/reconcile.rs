//! What to do, as pure functions of what the control plane wants and what this host has.
//!
//! Two levels:
//!
//! * [`plan_host`]: given the host's assignments, the machines that have a worker here and the
//!   machine directories on disk, which workers to start, update or retire and which
//!   leftover directories to delete.
//! * [`decide`]: for one machine, given its assignment (or none) and its local state, the next
//!   step — boot, stop, restart for a new generation, report, destroy, forget, or wait.
//!
//! Neither does I/O; the machine worker (`machine.rs`) carries out the decisions and feeds
//! the outcomes back into [`LocalState`].

use coffer_core::wire::agent::Assignment;
use coffer_core::wire::machines::{DesiredState, RestartPolicy};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// First retry delay after a failed boot or a quick exit; doubles up to [`MAX_BACKOFF`].
pub const FIRST_BACKOFF: Duration = Duration::from_secs(1);
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A workload that ran at least this long before exiting resets the backoff.
pub const HEALTHY_RUN: Duration = Duration::from_secs(10);

/// The delay before retry number `failures` (1-based): 1 s, 2 s, 4 s, … 30 s.
pub fn backoff_delay(failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(16);
    FIRST_BACKOFF.saturating_mul(1u32 << exp).min(MAX_BACKOFF)
}

/// Does `policy` restart a workload that exited with `status` (a signal counts as 128+n)?
pub fn should_restart(policy: RestartPolicy, status: i32) -> bool {
    // One definition, shared with the control plane's releases (which must know which exited
    // machines are coming back).
    policy.restarts_after(status)
}

/// Machine ids become directory names and URL segments: only short runs of
/// `[A-Za-z0-9_-]` are accepted (the control plane's ids are hex).
pub fn valid_machine_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The running workload, as far as decisions care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Running {
    pub generation: i64,
}

/// How the last workload of this machine ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LastExit {
    pub generation: i64,
    pub status: i32,
}

/// Retry no earlier than `until` — for this generation only: a new generation (a `start`
/// after a `stop`, a release) boots at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub generation: i64,
    pub until: Instant,
}

/// What this host knows of one machine.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LocalState {
    pub running: Option<Running>,
    pub last_exit: Option<LastExit>,
    /// The generation for which `stopped` was reported.
    pub stopped_reported: Option<i64>,
    pub backoff: Option<Backoff>,
    /// Consecutive failed boots and quick exits (reset by a run of [`HEALTHY_RUN`]).
    pub failures: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Nothing to do until the assignment changes, the workload exits, or `until` passes.
    Wait { until: Option<Instant> },
    /// Get a grant, decrypt, spawn.
    Boot,
    /// Stop the workload (desired `stopped`), then report `stopped`.
    Stop,
    /// Stop the workload without reporting: its generation moved, a fresh boot follows.
    Restart,
    /// Not running and desired `stopped`, but not reported yet (e.g. after an agent restart).
    ReportStopped,
    /// Desired `destroyed`: stop, delete the machine's directory, report `destroyed`.
    Destroy,
    /// No longer assigned to this host at all (its app was destroyed): stop and delete the
    /// directory; there is nobody to report to.
    Forget,
}

/// The next step for one machine.
pub fn decide(desired: Option<&Assignment>, local: &LocalState, now: Instant) -> Decision {
    let Some(a) = desired else {
        return Decision::Forget;
    };
    match a.desired {
        DesiredState::Destroyed => Decision::Destroy,
        DesiredState::Stopped => {
            if local.running.is_some() {
                Decision::Stop
            } else if local.stopped_reported != Some(a.generation) {
                Decision::ReportStopped
            } else {
                Decision::Wait { until: None }
            }
        }
        DesiredState::Running => {
            if let Some(r) = local.running {
                return if r.generation == a.generation {
                    Decision::Wait { until: None }
                } else {
                    Decision::Restart
                };
            }
            if let Some(e) = local.last_exit {
                if e.generation == a.generation && !should_restart(a.restart, e.status) {
                    // Exited, and the policy keeps it so until the user starts it again
                    // (which bumps the generation).
                    return Decision::Wait { until: None };
                }
            }
            match local.backoff {
                Some(b) if b.generation == a.generation && b.until > now => Decision::Wait {
                    until: Some(b.until),
                },
                _ => Decision::Boot,
            }
        }
    }
}

/// What the host loop does with its workers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostAction {
    /// A machine without a worker here: start one.
    Spawn(Assignment),
    /// A machine whose assignment changed: hand the worker the new one.
    Update(Assignment),
    /// A worker whose machine is no longer assigned: tell it to forget the machine.
    Retire(String),
    /// A machine directory left on disk with no worker and no assignment (e.g. its app was
    /// destroyed while the agent was down): delete it.
    DeleteDir(String),
    /// An assignment whose id cannot be a directory name: ignored (and logged).
    Ignore(String),
}

/// Compares the host's assignments with its workers (`id → the assignment the worker has`)
/// and the machine directories on disk.
pub fn plan_host(
    assignments: &[Assignment],
    workers: &BTreeMap<String, Assignment>,
    local_dirs: &BTreeSet<String>,
) -> Vec<HostAction> {
    let mut actions = Vec::new();
    let mut assigned = BTreeSet::new();
    for a in assignments {
        if !valid_machine_id(&a.machine_id) {
            actions.push(HostAction::Ignore(a.machine_id.clone()));
            continue;
        }
        assigned.insert(a.machine_id.as_str());
        match workers.get(&a.machine_id) {
            None => actions.push(HostAction::Spawn(a.clone())),
            Some(current) if current != a => actions.push(HostAction::Update(a.clone())),
            Some(_) => {}
        }
    }
    for id in workers.keys() {
        if !assigned.contains(id.as_str()) {
            actions.push(HostAction::Retire(id.clone()));
        }
    }
    for id in local_dirs {
        if !assigned.contains(id.as_str()) && !workers.contains_key(id) {
            actions.push(HostAction::DeleteDir(id.clone()));
        }
    }
    actions
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assignment(id: &str, desired: DesiredState, generation: i64) -> Assignment {
        Assignment {
            machine_id: id.into(),
            app_id: "app1".into(),
            app_name: "web".into(),
            name: "web-1".into(),
            command: vec!["sleep".into(), "1000".into()],
            env: BTreeMap::new(),
            restart: RestartPolicy::OnFailure,
            check: None,
            desired,
            secrets_version: 1,
            release_version: 1,
            generation,
        }
    }

    #[test]
    fn backoff_doubles_to_thirty_seconds() {
        let secs: Vec<u64> = (1..=8).map(|n| backoff_delay(n).as_secs()).collect();
        assert_eq!(secs, vec![1, 2, 4, 8, 16, 30, 30, 30]);
        assert_eq!(backoff_delay(0).as_secs(), 1);
        assert_eq!(backoff_delay(u32::MAX).as_secs(), 30);
    }

    #[test]
    fn restart_policies() {
        use RestartPolicy::*;
        assert!(!should_restart(No, 1));
        assert!(!should_restart(No, 0));
        assert!(should_restart(OnFailure, 3));
        assert!(should_restart(OnFailure, 137));
        assert!(!should_restart(OnFailure, 0));
        assert!(should_restart(Always, 0));
        assert!(should_restart(Always, 1));
    }

    #[test]
    fn running_machines() {
        let now = Instant::now();
        let a = assignment("m1", DesiredState::Running, 3);
        let fresh = LocalState::default();
        assert_eq!(decide(Some(&a), &fresh, now), Decision::Boot);

        let running = LocalState {
            running: Some(Running { generation: 3 }),
            ..Default::default()
        };
        assert_eq!(
            decide(Some(&a), &running, now),
            Decision::Wait { until: None }
        );
        // A new generation (release, start, changed config) restarts with a fresh boot.
        let older = LocalState {
            running: Some(Running { generation: 2 }),
            ..Default::default()
        };
        assert_eq!(decide(Some(&a), &older, now), Decision::Restart);
    }

    #[test]
    fn exits_follow_the_restart_policy() {
        let now = Instant::now();
        let mut a = assignment("m1", DesiredState::Running, 3);
        let exited = |status| LocalState {
            last_exit: Some(LastExit {
                generation: 3,
                status,
            }),
            ..Default::default()
        };
        a.restart = RestartPolicy::No;
        assert_eq!(
            decide(Some(&a), &exited(1), now),
            Decision::Wait { until: None }
        );
        a.restart = RestartPolicy::OnFailure;
        assert_eq!(
            decide(Some(&a), &exited(0), now),
            Decision::Wait { until: None }
        );
        assert_eq!(decide(Some(&a), &exited(2), now), Decision::Boot);
        a.restart = RestartPolicy::Always;
        assert_eq!(decide(Some(&a), &exited(0), now), Decision::Boot);
        // An exit of an older generation does not hold back a new one (`machines start`).
        a.restart = RestartPolicy::No;
        a.generation = 4;
        assert_eq!(decide(Some(&a), &exited(1), now), Decision::Boot);
    }

    #[test]
    fn backoff_delays_boots_of_the_same_generation_only() {
        let now = Instant::now();
        let later = now + Duration::from_secs(4);
        let a = assignment("m1", DesiredState::Running, 3);
        let waiting = LocalState {
            backoff: Some(Backoff {
                generation: 3,
                until: later,
            }),
            failures: 3,
            ..Default::default()
        };
        assert_eq!(
            decide(Some(&a), &waiting, now),
            Decision::Wait { until: Some(later) }
        );
        assert_eq!(
            decide(Some(&a), &waiting, later + Duration::from_millis(1)),
            Decision::Boot
        );
        let mut b = a.clone();
        b.generation = 4;
        assert_eq!(decide(Some(&b), &waiting, now), Decision::Boot);
    }

    #[test]
    fn stopped_machines() {
        let now = Instant::now();
        let a = assignment("m1", DesiredState::Stopped, 5);
        let running = LocalState {
            running: Some(Running { generation: 4 }),
            ..Default::default()
        };
        assert_eq!(decide(Some(&a), &running, now), Decision::Stop);
        assert_eq!(
            decide(Some(&a), &LocalState::default(), now),
            Decision::ReportStopped
        );
        let reported = LocalState {
            stopped_reported: Some(5),
            ..Default::default()
        };
        assert_eq!(
            decide(Some(&a), &reported, now),
            Decision::Wait { until: None }
        );
    }

    #[test]
    fn destroyed_and_unassigned_machines() {
        let now = Instant::now();
        let a = assignment("m1", DesiredState::Destroyed, 9);
        let running = LocalState {
            running: Some(Running { generation: 8 }),
            ..Default::default()
        };
        assert_eq!(decide(Some(&a), &running, now), Decision::Destroy);
        assert_eq!(
            decide(Some(&a), &LocalState::default(), now),
            Decision::Destroy
        );
        assert_eq!(decide(None, &running, now), Decision::Forget);
    }

    #[test]
    fn host_plan() {
        let a1 = assignment("m1", DesiredState::Running, 1);
        let a2 = assignment("m2", DesiredState::Running, 1);
        let mut a3 = assignment("m3", DesiredState::Running, 1);
        let bad = assignment("../etc", DesiredState::Running, 1);
        let workers = BTreeMap::from([
            ("m1".to_string(), a1.clone()),
            ("m3".to_string(), a3.clone()),
            ("m4".to_string(), assignment("m4", DesiredState::Running, 1)),
        ]);
        a3.generation = 2;
        let dirs: BTreeSet<String> = ["m1", "m2", "m4", "m5"].map(String::from).into();
        let actions = plan_host(&[a1, a2.clone(), a3.clone(), bad], &workers, &dirs);
        assert_eq!(
            actions,
            vec![
                HostAction::Spawn(a2),
                HostAction::Update(a3),
                HostAction::Ignore("../etc".into()),
                HostAction::Retire("m4".into()),
                HostAction::DeleteDir("m5".into()),
            ]
        );
        // Nothing assigned any more: every worker retires, every leftover dir goes.
        let actions = plan_host(&[], &BTreeMap::new(), &dirs);
        assert_eq!(actions.len(), 4);
        assert!(actions
            .iter()
            .all(|a| matches!(a, HostAction::DeleteDir(_))));
    }

    #[test]
    fn machine_ids() {
        assert!(valid_machine_id("3f2a9c01"));
        assert!(valid_machine_id("web_1-a"));
        for bad in ["", ".", "..", "a/b", "a b", &"x".repeat(129)] {
            assert!(!valid_machine_id(bad), "{bad}");
        }
    }
}
