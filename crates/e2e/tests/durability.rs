//! Nothing acknowledged is lost: the daemon killed with SIGKILL in the middle of concurrent
//! writes comes back with every write it acknowledged, on SQLite (group commit on its writer
//! thread) and on PostgreSQL.

mod common;

use common::{Dev, Engine};
use serde_json::Value;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

const APPS: [&str; 4] = ["ack-a", "ack-b", "ack-c", "ack-d"];

/// `Set K7: secrets version 7, staged …` → 7.
fn written_version(stdout: &str) -> i64 {
    let rest = stdout
        .split("secrets version ")
        .nth(1)
        .unwrap_or_else(|| panic!("no version in {stdout:?}"));
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().unwrap()
}

async fn acknowledged_writes_survive_kill_9(engine: Engine) {
    let Some(db) = common::database_url(engine).await else {
        return;
    };
    let mut dev = Dev::start(db);
    for app in APPS {
        dev.ok(&["apps", "create", app]);
    }
    // One writer per app, all at once: on SQLite their writes share group commits. Each write
    // adds a new name, so version N of an app holds exactly K1..KN.
    let stop = AtomicBool::new(false);
    let acknowledged: Mutex<Vec<(&str, i64)>> = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for app in APPS {
            let (dev, stop, acknowledged) = (&dev, &stop, &acknowledged);
            scope.spawn(move || {
                let mut next = 1;
                while !stop.load(Ordering::SeqCst) {
                    let set = format!("K{next}=value-{next}");
                    let out = dev
                        .coffer()
                        .args(["secrets", "set", "-a", app, &set, "--stage"])
                        .output()
                        .unwrap();
                    if out.status.success() {
                        let version = written_version(&String::from_utf8_lossy(&out.stdout));
                        assert_eq!(version, next, "{app}: one version per write");
                        acknowledged.lock().unwrap().push((app, version));
                        next += 1;
                    }
                }
            });
        }
        // Until every app has a few acknowledged writes, then kill the daemon mid-stream.
        common::wait_for(60, "acknowledged writes on every app", || {
            let acked = acknowledged.lock().unwrap();
            APPS.iter()
                .all(|app| acked.iter().filter(|(a, _)| a == app).count() >= 5)
                .then_some(())
        });
        std::thread::sleep(Duration::from_millis(300));
        let killed = std::process::Command::new("kill")
            .args(["-KILL", &dev.pid().to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
        stop.store(true, Ordering::SeqCst);
    });
    dev.stop(true);
    dev.restart();

    let acknowledged = acknowledged.into_inner().unwrap();
    for app in APPS {
        let acked: BTreeSet<i64> = acknowledged
            .iter()
            .filter(|(a, _)| *a == app)
            .map(|(_, v)| *v)
            .collect();
        let history: Vec<Value> =
            serde_json::from_str(&dev.ok(&["secrets", "history", "-a", app, "--json"])).unwrap();
        let versions: BTreeSet<i64> = history
            .iter()
            .map(|v| v["version"].as_i64().unwrap())
            .collect();
        // Every acknowledged version is there; one committed just before the kill may be
        // there without its answer; none is missing in between.
        assert!(
            acked.is_subset(&versions),
            "{app}: acknowledged {acked:?}, stored {versions:?}"
        );
        let newest = *versions.last().unwrap();
        eprintln!(
            "{app}: {} acknowledged, newest stored version {newest}",
            acked.len()
        );
        assert_eq!(versions, (1..=newest).collect(), "{app}: no gap");
        assert!(newest <= acked.last().unwrap() + 1, "{app}: {versions:?}");
        // And the newest version holds every name written up to it.
        let listed: Vec<Value> =
            serde_json::from_str(&dev.ok(&["secrets", "list", "-a", app, "--json"])).unwrap();
        let names: BTreeSet<String> = listed
            .iter()
            .map(|s| s["name"].as_str().unwrap().to_string())
            .collect();
        let expected: BTreeSet<String> = (1..=newest).map(|i| format!("K{i}")).collect();
        assert_eq!(names, expected, "{app}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sqlite_acknowledged_writes_survive_kill_9() {
    acknowledged_writes_survive_kill_9(Engine::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_acknowledged_writes_survive_kill_9() {
    acknowledged_writes_survive_kill_9(Engine::Postgres).await;
}
