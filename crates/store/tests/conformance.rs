//! The conformance suite: every scenario is written once, against `Store`, and runs on a fresh
//! SQLite file (`sqlite::…` tests) and on a fresh PostgreSQL database (`postgres::…` tests).
//!
//! PostgreSQL tests need a server (see `coffer_store::testing`): run them with
//! `pg_virtualenv -c '-c fsync=off' cargo test -p coffer-store`. Without one they are skipped
//! with a note, unless `CI` is set, in which case they fail.

use coffer_core::{Action, AppName, SecretName};
use coffer_store::{
    testing, AppKeyRecord, AppRecord, BaseRead, ChangeKind, ChangeRecord, DatabaseUrl, Engine,
    ListedSecret, NewToken, NewValue, NewVersion, OpenMode, Store, StoreError, StoredSecret,
};
use std::future::Future;

async fn on_sqlite<F, Fut>(scenario: F)
where
    F: FnOnce(Store) -> Fut,
    Fut: Future<Output = ()>,
{
    let dir = tempfile::tempdir().unwrap();
    let url = testing::sqlite_url_in(dir.path());
    let store = Store::open(&url, OpenMode::CreateIfMissing).await.unwrap();
    assert_eq!(store.engine(), Engine::Sqlite);
    scenario(store.clone()).await;
    store.close().await;
}

async fn on_postgres<F, Fut>(scenario: F)
where
    F: FnOnce(Store) -> Fut,
    Fut: Future<Output = ()>,
{
    let Some(admin) = testing::require_postgres() else {
        return;
    };
    let db = testing::fresh_postgres_database(&admin).await;
    let url = DatabaseUrl::parse(&db).unwrap();
    let store = Store::open(&url, OpenMode::MustExist).await.unwrap();
    assert_eq!(store.engine(), Engine::Postgres);
    scenario(store.clone()).await;
    store.close().await;
    testing::drop_postgres_database(&admin, &db).await;
}

/// One test per scenario and engine: `sqlite::NAME` and `postgres::NAME`.
macro_rules! conformance {
    ($($scenario:ident),+ $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $scenario() {
                    super::on_sqlite(super::all::$scenario).await;
                }
            )+
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $scenario() {
                    super::on_postgres(super::all::$scenario).await;
                }
            )+
        }
    };
}

conformance!(
    apps,
    delete_app_cascades,
    write_versions,
    stale_base_conflicts,
    writes_with_the_callers_base,
    release_writes_with_the_callers_base,
    unset_of_a_missing_name_rolls_back,
    deploy_flag_and_mark_deployed,
    app_with_listing,
    tokens,
    vault_keys,
    meta,
    concurrent_writers,
    concurrent_writes_with_failures,
    concurrent_creates_with_collisions,
    hosts_and_machines,
    boot_facts,
    releases,
    releases_without_machines_complete_at_once,
    release_writes_are_fenced_by_their_owner,
    only_releases_with_an_expired_lease_are_taken_over,
);

// ------------------------------------------------------------------------------- fixtures

fn app_name(s: &str) -> AppName {
    AppName::parse(s).unwrap()
}

fn secret(s: &str) -> SecretName {
    SecretName::parse(s).unwrap()
}

/// A stand-in for a sealed value: the store never looks inside.
fn value(name: &str, tag: &str) -> NewValue {
    NewValue {
        name: secret(name),
        ciphertext: format!("sealed({name}={tag})").into_bytes(),
        digest: format!("{:0>32}", tag),
        value_len: tag.len() as i64,
    }
}

fn change(
    app_id: &str,
    base: i64,
    sets: Vec<NewValue>,
    unsets: &[&str],
    deploy: bool,
) -> NewVersion {
    NewVersion {
        app_id: app_id.into(),
        base_version: base,
        base: None,
        version: base + 1,
        actor: "tester".into(),
        sets,
        unsets: unsets.iter().map(|n| secret(n)).collect(),
        deploy,
        release: None,
    }
}

/// A write computed against `base`, as the API computes it.
trait WithBase {
    fn with_base(self, base: BaseRead) -> Self;
}

impl WithBase for NewVersion {
    fn with_base(mut self, base: BaseRead) -> Self {
        self.base = Some(base);
        self
    }
}

/// `write_version`, reduced to the version it wrote (releases have their own scenario).
trait WriteV {
    fn write_v(&self, v: NewVersion) -> impl Future<Output = Result<i64, StoreError>> + Send;
}

impl WriteV for Store {
    async fn write_v(&self, v: NewVersion) -> Result<i64, StoreError> {
        self.write_version(v).await.map(|o| o.version)
    }
}

fn names(snapshot: &[StoredSecret]) -> Vec<&str> {
    snapshot.iter().map(|s| s.name.as_str()).collect()
}

fn find<'a>(snapshot: &'a [StoredSecret], name: &str) -> &'a StoredSecret {
    snapshot
        .iter()
        .find(|s| s.name.as_str() == name)
        .unwrap_or_else(|| panic!("{name} not in {:?}", names(snapshot)))
}

fn token(id: &str, app_id: Option<&str>, action: Action) -> NewToken {
    NewToken {
        id: id.into(),
        secret_hash: format!("hash-of-{id}").into_bytes(),
        app_id: app_id.map(Into::into),
        action,
        description: format!("token {id}"),
        expires_at: coffer_store::now_micros() + 3_600_000_000,
    }
}

#[track_caller]
fn assert_conflict<T: std::fmt::Debug>(r: Result<T, StoreError>, needle: &str) {
    match r {
        Err(StoreError::Conflict(msg)) => assert!(msg.contains(needle), "{msg:?} lacks {needle:?}"),
        other => panic!("expected a conflict mentioning {needle:?}, got {other:?}"),
    }
}

#[track_caller]
fn assert_not_found<T: std::fmt::Debug>(r: Result<T, StoreError>, what: &str) {
    match r {
        Err(StoreError::NotFound(w)) => assert_eq!(w, what),
        other => panic!("expected NotFound({what:?}), got {other:?}"),
    }
}

// ------------------------------------------------------------------------------ scenarios

mod scenarios {
    use super::*;

    pub async fn apps(store: Store) {
        assert!(store.list_apps().await.unwrap().is_empty());
        store.ping().await.unwrap();

        let before = coffer_store::now_micros();
        let web = store.create_app("id-web", &app_name("web")).await.unwrap();
        assert_eq!(web.id, "id-web");
        assert_eq!(web.name, app_name("web"));
        assert_eq!((web.secrets_version, web.deployed_version), (0, 0));
        assert_eq!(web.crash_window_ms, 30_000);
        assert!(web.created_at >= before && web.created_at <= coffer_store::now_micros());

        assert_conflict(
            store.create_app("id-other", &app_name("web")).await,
            "app web already exists",
        );
        assert_conflict(
            store.create_app("id-web", &app_name("web2")).await,
            "id-web",
        );
        assert_not_found(store.app_by_name(&app_name("web2")).await, "app");

        assert_eq!(store.app_by_name(&app_name("web")).await.unwrap(), web);
        assert_eq!(store.app_by_id("id-web").await.unwrap(), web);
        assert_not_found(store.app_by_id("nope").await, "app");
        assert_not_found(store.app_by_name(&app_name("nope")).await, "app");

        // Ordered by name, bytewise on both engines ('-' sorts before letters; a PostgreSQL
        // locale collation would ignore it and put "ba" first).
        for (id, name) in [("id-ba", "ba"), ("id-b-app", "b-app"), ("id-a", "a")] {
            store.create_app(id, &app_name(name)).await.unwrap();
        }
        let listed: Vec<String> = store
            .list_apps()
            .await
            .unwrap()
            .into_iter()
            .map(|a| a.name.to_string())
            .collect();
        assert_eq!(listed, ["a", "b-app", "ba", "web"]);

        store.set_crash_window("id-web", 5_000).await.unwrap();
        assert_eq!(
            store.app_by_id("id-web").await.unwrap().crash_window_ms,
            5_000
        );
        assert_eq!(
            store.app_by_id("id-a").await.unwrap().crash_window_ms,
            30_000
        );
        assert_not_found(store.set_crash_window("nope", 1).await, "app");
    }

    pub async fn delete_app_cascades(store: Store) {
        let app = store
            .create_app("id-doomed", &app_name("doomed"))
            .await
            .unwrap();
        let other = store
            .create_app("id-other", &app_name("other"))
            .await
            .unwrap();
        store
            .write_v(change(
                &app.id,
                0,
                vec![value("A", "1"), value("B", "1")],
                &[],
                true,
            ))
            .await
            .unwrap();
        store
            .write_v(change(&app.id, 1, vec![value("A", "2")], &["B"], false))
            .await
            .unwrap();
        store
            .write_v(change(&other.id, 0, vec![value("A", "x")], &[], false))
            .await
            .unwrap();
        store
            .insert_token(token("t-app", Some(&app.id), Action::Deploy))
            .await
            .unwrap();
        store
            .insert_token(token("t-other", Some(&other.id), Action::Read))
            .await
            .unwrap();
        store
            .insert_token(token("t-all", None, Action::Admin))
            .await
            .unwrap();
        let key = AppKeyRecord {
            app_id: app.id.clone(),
            public_key: vec![1; 32],
            wrapped_private_key: vec![2; 60],
            wrapped_digest_key: vec![3; 60],
            created_at: 1,
        };
        store.insert_app_key(&key).await.unwrap();

        store.delete_app(&app.id).await.unwrap();

        assert_not_found(store.app_by_id(&app.id).await, "app");
        assert_not_found(store.app_by_name(&app.name).await, "app");
        assert_not_found(store.versions(&app.id).await, "app");
        assert_not_found(store.snapshot(&app.id, 1).await, "secrets version");
        assert_not_found(store.snapshot(&app.id, 2).await, "secrets version");
        assert_not_found(store.token("t-app").await, "token");
        let left: Vec<String> = store
            .list_tokens()
            .await
            .unwrap()
            .into_iter()
            .map(|t| t.id)
            .collect();
        assert_eq!(left, ["t-other", "t-all"]);
        // The vault's keys are the vault's to delete.
        assert_eq!(store.app_key(&app.id).await.unwrap(), key);
        // The other app is untouched.
        assert_eq!(store.versions(&other.id).await.unwrap().len(), 1);
        assert_eq!(names(&store.snapshot(&other.id, 1).await.unwrap()), ["A"]);

        assert_not_found(store.delete_app(&app.id).await, "app");

        // Nothing of the old app is left behind: an app with the same ID (which should never
        // happen, IDs are random) starts from scratch and can write the same rows again.
        let again = store
            .create_app(&app.id, &app_name("doomed"))
            .await
            .unwrap();
        assert_eq!(again.secrets_version, 0);
        assert!(store.versions(&app.id).await.unwrap().is_empty());
        store
            .write_v(change(&app.id, 0, vec![value("B", "new")], &[], false))
            .await
            .unwrap();
        let snap = store.snapshot(&app.id, 1).await.unwrap();
        assert_eq!(names(&snap), ["B"]);
        assert_eq!(snap[0].ciphertext, b"sealed(B=new)");
        store
            .write_v(change(&app.id, 1, vec![value("A", "new")], &[], false))
            .await
            .unwrap();
        assert_eq!(
            names(&store.snapshot(&app.id, 2).await.unwrap()),
            ["A", "B"]
        );
    }

    pub async fn write_versions(store: Store) {
        let app = store.create_app("id-web", &app_name("web")).await.unwrap();
        assert!(store.versions(&app.id).await.unwrap().is_empty());
        assert!(store.snapshot(&app.id, 0).await.unwrap().is_empty());
        assert_not_found(store.snapshot(&app.id, 1).await, "secrets version");

        // v1: set A and B (given out of order: snapshots are ordered by name).
        let t0 = coffer_store::now_micros();
        let v = store
            .write_v(change(
                &app.id,
                0,
                vec![value("B", "b1"), value("A", "a1")],
                &[],
                false,
            ))
            .await
            .unwrap();
        assert_eq!(v, 1);
        let a = store.app_by_id(&app.id).await.unwrap();
        assert_eq!((a.secrets_version, a.deployed_version), (1, 0));
        let v1 = store.snapshot(&app.id, 1).await.unwrap();
        assert_eq!(names(&v1), ["A", "B"]);
        for s in &v1 {
            assert_eq!(s.value_version, 1);
            assert_eq!(s.created_at, s.updated_at);
            assert!(s.created_at >= t0);
        }
        let a1 = find(&v1, "A");
        assert_eq!(a1.ciphertext, b"sealed(A=a1)");
        assert_eq!(a1.digest, format!("{:0>32}", "a1"));
        assert_eq!(a1.value_len, 2);

        // v2: update B, add C; A is carried over as it was.
        store
            .write_v(change(
                &app.id,
                1,
                vec![value("B", "b2"), value("C", "c2")],
                &[],
                false,
            ))
            .await
            .unwrap();
        let v2 = store.snapshot(&app.id, 2).await.unwrap();
        assert_eq!(names(&v2), ["A", "B", "C"]);
        assert_eq!(find(&v2, "A"), find(&v1, "A"));
        let (b1, b2) = (find(&v1, "B"), find(&v2, "B"));
        assert_eq!(b2.value_version, 2);
        assert_eq!(b2.ciphertext, b"sealed(B=b2)");
        assert_eq!(
            b2.created_at, b1.created_at,
            "created_at is kept across updates"
        );
        assert!(b2.updated_at > b1.updated_at, "updated_at moves on");
        let c2 = find(&v2, "C");
        assert_eq!((c2.value_version, c2.created_at), (2, c2.updated_at));
        assert_eq!(c2.updated_at, b2.updated_at, "one write, one time");

        // v3: unset A.
        store
            .write_v(change(&app.id, 2, vec![], &["A"], false))
            .await
            .unwrap();
        let v3 = store.snapshot(&app.id, 3).await.unwrap();
        assert_eq!(names(&v3), ["B", "C"]);
        assert_eq!(find(&v3, "B"), b2);
        assert_eq!(find(&v3, "C"), c2);

        // v4: set A again: a new name as far as created_at goes.
        store
            .write_v(change(&app.id, 3, vec![value("A", "a4")], &[], false))
            .await
            .unwrap();
        let v4 = store.snapshot(&app.id, 4).await.unwrap();
        let a4 = find(&v4, "A");
        assert_eq!(a4.value_version, 4);
        assert_eq!(a4.created_at, a4.updated_at);
        assert!(a4.created_at > a1.created_at);

        // v5: unset everything: an empty version, which exists.
        store
            .write_v(change(&app.id, 4, vec![], &["A", "B", "C"], false))
            .await
            .unwrap();
        assert!(store.snapshot(&app.id, 5).await.unwrap().is_empty());
        assert_not_found(store.snapshot(&app.id, 6).await, "secrets version");
        assert_not_found(store.snapshot(&app.id, -1).await, "secrets version");

        // Old versions are immutable.
        assert_eq!(store.snapshot(&app.id, 1).await.unwrap(), v1);
        assert_eq!(store.snapshot(&app.id, 2).await.unwrap(), v2);
        assert_eq!(store.snapshot(&app.id, 3).await.unwrap(), v3);
        assert_eq!(store.snapshot(&app.id, 4).await.unwrap(), v4);

        // History, newest first, with what changed.
        let history = store.versions(&app.id).await.unwrap();
        assert_eq!(
            history.iter().map(|v| v.version).collect::<Vec<_>>(),
            [5, 4, 3, 2, 1]
        );
        assert!(history.iter().all(|v| v.actor == "tester"));
        assert!(history
            .windows(2)
            .all(|w| w[0].created_at >= w[1].created_at));
        let set = |name: &str, tag: &str| ChangeRecord {
            name: name.into(),
            kind: ChangeKind::Set,
            digest: Some(format!("{:0>32}", tag)),
        };
        let unset = |name: &str| ChangeRecord {
            name: name.into(),
            kind: ChangeKind::Unset,
            digest: None,
        };
        assert_eq!(history[4].changes, [set("B", "b1"), set("A", "a1")]);
        assert_eq!(history[3].changes, [set("B", "b2"), set("C", "c2")]);
        assert_eq!(history[2].changes, [unset("A")]);
        assert_eq!(history[1].changes, [set("A", "a4")]);
        assert_eq!(history[0].changes, [unset("A"), unset("B"), unset("C")]);
        assert_eq!(history[4].created_at, v1[0].updated_at);

        let a = store.app_by_id(&app.id).await.unwrap();
        assert_eq!((a.secrets_version, a.deployed_version), (5, 0));

        // Many names in one write (more rows than one multi-row INSERT takes).
        let many: Vec<NewValue> = (0..250).map(|i| value(&format!("K{i:03}"), "v")).collect();
        store
            .write_v(change(&app.id, 5, many, &[], false))
            .await
            .unwrap();
        store
            .write_v(change(
                &app.id,
                6,
                vec![value("K000", "w")],
                &["K001"],
                false,
            ))
            .await
            .unwrap();
        let v7 = store.snapshot(&app.id, 7).await.unwrap();
        assert_eq!(v7.len(), 249);
        assert_eq!(find(&v7, "K000").value_version, 7);
        assert_eq!(find(&v7, "K249").value_version, 6);
    }

    /// A write whose caller gives the base's listing (as the API does; on PostgreSQL one
    /// statement) leaves exactly what a write whose base the store reads leaves (a
    /// transaction of several statements): the same changes to two apps, one written each
    /// way, compared after every step through every read of a version.
    pub async fn writes_with_the_callers_base(store: Store) {
        let read = store
            .create_app("id-read", &app_name("read"))
            .await
            .unwrap();
        let given = store
            .create_app("id-given", &app_name("given"))
            .await
            .unwrap();
        let steps: Vec<(Vec<NewValue>, &[&str], bool)> = vec![
            (vec![value("B", "b1"), value("A", "a1")], &[], false),
            (vec![value("B", "b2"), value("C", "c2")], &[], true),
            (vec![], &["A"], false),
            (vec![value("A", "a4")], &["C"], true),
            (vec![], &["A", "B"], false),
            (vec![value("Z", "z6")], &[], false),
        ];
        for (base, (sets, unsets, deploy)) in (0..).zip(steps) {
            store
                .write_v(change(&read.id, base, sets.clone(), unsets, deploy))
                .await
                .unwrap();
            let v = with_callers_base(&store, &given.name, sets, unsets, deploy).await;
            assert_eq!(store.write_version(v).await.unwrap().version, base + 1);
            assert_same_secrets(&store, &read, &given).await;
        }

        // Refusals change nothing either way (the rows are counted too: on PostgreSQL values
        // have no foreign key, so stray rows would not show in any read).
        let rows = testing::rows_of_app(&store, &given.id).await.unwrap();
        let v = with_callers_base(&store, &given.name, vec![value("Q", "q")], &["A"], false).await;
        assert_conflict(store.write_version(v).await, "cannot unset A");
        let stale = with_callers_base(&store, &given.name, vec![value("Q", "q")], &[], true).await;
        store
            .write_v(change(&given.id, 6, vec![value("Z", "z7")], &[], false))
            .await
            .unwrap();
        let rows_at_7 = testing::rows_of_app(&store, &given.id).await.unwrap();
        assert_eq!(rows_at_7, (rows.0 + 1, rows.1 + 1));
        assert_conflict(store.write_version(stale).await, "now at version 7");
        assert_eq!(
            testing::rows_of_app(&store, &given.id).await.unwrap(),
            rows_at_7
        );
        let app = store.app_by_id(&given.id).await.unwrap();
        assert_eq!((app.secrets_version, app.deployed_version), (7, 4));
        assert_eq!(names(&store.snapshot(&given.id, 7).await.unwrap()), ["Z"]);
        assert_not_found(store.snapshot(&given.id, 8).await, "secrets version");
        // A base read of another version than the write's base is refused.
        let mut mismatched =
            with_callers_base(&store, &given.name, vec![value("Q", "q")], &[], false).await;
        mismatched.base_version = 6;
        mismatched.version = 7;
        assert_conflict(
            store.write_version(mismatched).await,
            "computed against version 7",
        );
        assert_eq!(
            testing::rows_of_app(&store, &given.id).await.unwrap(),
            rows_at_7
        );

        // Writers racing from one read: exactly one wins, the others conflict and leave nothing.
        let read = store.base_read(&given.name).await.unwrap();
        let racers: Vec<_> = (0..8)
            .map(|i| {
                let (store, read) = (store.clone(), read.clone());
                tokio::spawn(async move {
                    let sets = vec![value("R", &format!("r{i}")), value("S", "s")];
                    let with_release = i % 2 == 0;
                    let mut v =
                        change(&read.app().id, 7, sets, &["Z"], with_release).with_base(read);
                    v.release = with_release.then(|| coffer_store::NewRelease {
                        description: format!("racer {i}"),
                        actor: "tester".into(),
                        owner: format!("api-{i}"),
                    });
                    store.write_version(v).await
                })
            })
            .collect();
        let mut won = 0;
        for racer in racers {
            match racer.await.unwrap() {
                Ok(outcome) => {
                    assert_eq!(outcome.version, 8);
                    won += 1;
                }
                Err(e) => assert_conflict::<()>(Err(e), "retry"),
            }
        }
        assert_eq!(won, 1, "one write of version 8");
        // Two values (R, S; Z unset), one version.
        assert_eq!(
            testing::rows_of_app(&store, &given.id).await.unwrap(),
            (rows_at_7.0 + 2, rows_at_7.1 + 1)
        );
        assert_eq!(
            names(&store.snapshot(&given.id, 8).await.unwrap()),
            ["R", "S"]
        );

        let gone = with_callers_base(&store, &given.name, vec![value("Q", "q")], &[], false).await;
        store.delete_app(&given.id).await.unwrap();
        assert_not_found(store.write_version(gone).await, "app");
    }

    /// The next version of app `name`, computed against its base as the API reads it.
    async fn with_callers_base(
        store: &Store,
        name: &AppName,
        sets: Vec<NewValue>,
        unsets: &[&str],
        deploy: bool,
    ) -> NewVersion {
        let read = store.base_read(name).await.unwrap();
        change(
            &read.app().id,
            read.app().secrets_version,
            sets,
            unsets,
            deploy,
        )
        .with_base(read)
    }

    /// Apps `a` and `b` have the same versions, secrets, listings and history (dates aside,
    /// and values sealed to the same tags).
    pub(super) async fn assert_same_secrets(store: &Store, a: &AppRecord, b: &AppRecord) {
        let (app_a, app_b) = (
            store.app_by_id(&a.id).await.unwrap(),
            store.app_by_id(&b.id).await.unwrap(),
        );
        assert_eq!(
            testing::rows_of_app(store, &a.id).await.unwrap(),
            testing::rows_of_app(store, &b.id).await.unwrap(),
            "value and version rows"
        );
        assert_eq!(
            (app_a.secrets_version, app_a.deployed_version),
            (app_b.secrets_version, app_b.deployed_version)
        );
        let stored = |s: &StoredSecret| {
            let dates = (s.created_at == s.updated_at, s.created_at <= s.updated_at);
            let ct = s.ciphertext.clone();
            (
                s.name.clone(),
                s.value_version,
                ct,
                s.digest.clone(),
                s.value_len,
                dates,
            )
        };
        let listed = |s: &ListedSecret| {
            let dates = (s.created_at == s.updated_at, s.created_at <= s.updated_at);
            (
                s.name.clone(),
                s.value_version,
                s.digest.clone(),
                s.value_len,
                s.deployed,
                dates,
            )
        };
        for version in 0..=app_a.secrets_version {
            let (sa, sb) = (
                store.snapshot(&a.id, version).await.unwrap(),
                store.snapshot(&b.id, version).await.unwrap(),
            );
            assert_eq!(
                sa.iter().map(stored).collect::<Vec<_>>(),
                sb.iter().map(stored).collect::<Vec<_>>(),
                "version {version}"
            );
            let (la, lb) = (
                store
                    .listing(&a.id, version, app_a.deployed_version)
                    .await
                    .unwrap(),
                store
                    .listing(&b.id, version, app_b.deployed_version)
                    .await
                    .unwrap(),
            );
            assert_eq!(
                la.iter().map(listed).collect::<Vec<_>>(),
                lb.iter().map(listed).collect::<Vec<_>>()
            );
        }
        // The kept listings (what `secrets list` and the next write read).
        let (ka, kb) = (
            store.app_with_listing(&a.name).await.unwrap().1,
            store.app_with_listing(&b.name).await.unwrap().1,
        );
        assert_eq!(
            ka.iter().map(listed).collect::<Vec<_>>(),
            kb.iter().map(listed).collect::<Vec<_>>()
        );
        // A name keeps its creation time across values; the listing and the record agree.
        let current = store.snapshot(&b.id, app_b.secrets_version).await.unwrap();
        for (k, s) in kb.iter().zip(&current) {
            assert_eq!((k.created_at, k.updated_at), (s.created_at, s.updated_at));
        }
        let (ha, hb) = (
            store.versions(&a.id).await.unwrap(),
            store.versions(&b.id).await.unwrap(),
        );
        let history = |h: &[coffer_store::VersionRecord]| {
            h.iter()
                .map(|r| (r.version, r.actor.clone(), r.changes.clone()))
                .collect::<Vec<_>>()
        };
        assert_eq!(history(&ha), history(&hb));
    }

    pub async fn stale_base_conflicts(store: Store) {
        let app = store.create_app("id-web", &app_name("web")).await.unwrap();
        store
            .write_v(change(&app.id, 0, vec![value("A", "1")], &[], false))
            .await
            .unwrap();

        // Two writers computed their change against version 1; the first one wins.
        let first = change(&app.id, 1, vec![value("B", "first")], &[], false);
        let second = change(
            &app.id,
            1,
            vec![value("B", "second"), value("C", "2")],
            &["A"],
            true,
        );
        assert_eq!(store.write_v(first).await.unwrap(), 2);
        assert_conflict(store.write_v(second).await, "now at version 2");

        // Nothing of the second write is visible.
        let a = store.app_by_id(&app.id).await.unwrap();
        assert_eq!((a.secrets_version, a.deployed_version), (2, 0));
        assert_eq!(store.versions(&app.id).await.unwrap().len(), 2);
        let v2 = store.snapshot(&app.id, 2).await.unwrap();
        assert_eq!(names(&v2), ["A", "B"]);
        assert_eq!(find(&v2, "B").ciphertext, b"sealed(B=first)");
        assert_not_found(store.snapshot(&app.id, 3).await, "secrets version");

        // A base from the future conflicts too.
        assert_conflict(
            store
                .write_v(change(&app.id, 5, vec![value("A", "x")], &[], false))
                .await,
            "now at version 2",
        );
        // The new version must follow its base.
        let mut skip = change(&app.id, 2, vec![value("A", "x")], &[], false);
        skip.version = 4;
        assert_conflict(store.write_v(skip).await, "cannot follow");
        let mut same = change(&app.id, 2, vec![value("A", "x")], &[], false);
        same.version = 2;
        assert_conflict(store.write_v(same).await, "cannot follow");
        // A name changed twice in one write.
        assert_conflict(
            store
                .write_v(change(
                    &app.id,
                    2,
                    vec![value("A", "x"), value("A", "y")],
                    &[],
                    false,
                ))
                .await,
            "A is changed twice",
        );
        assert_conflict(
            store
                .write_v(change(&app.id, 2, vec![value("A", "x")], &["A"], false))
                .await,
            "A is changed twice",
        );
        // No such app.
        assert_not_found(
            store
                .write_v(change("nope", 0, vec![value("A", "x")], &[], false))
                .await,
            "app",
        );
        assert_not_found(
            store.write_v(change("nope", 0, vec![], &[], false)).await,
            "app",
        );

        let a = store.app_by_id(&app.id).await.unwrap();
        assert_eq!(a.secrets_version, 2);
        assert_eq!(store.snapshot(&app.id, 2).await.unwrap(), v2);
        // And the next write from the right base goes through.
        store
            .write_v(change(&app.id, 2, vec![value("A", "3")], &[], false))
            .await
            .unwrap();
    }

    pub async fn unset_of_a_missing_name_rolls_back(store: Store) {
        let app = store.create_app("id-web", &app_name("web")).await.unwrap();
        store
            .write_v(change(&app.id, 0, vec![value("A", "1")], &[], true))
            .await
            .unwrap();
        let v1 = store.snapshot(&app.id, 1).await.unwrap();

        // The sets come before the unset in the change: they must go too.
        assert_conflict(
            store
                .write_v(change(
                    &app.id,
                    1,
                    vec![value("B", "2")],
                    &["A", "MISSING"],
                    true,
                ))
                .await,
            "MISSING",
        );
        let a = store.app_by_id(&app.id).await.unwrap();
        assert_eq!((a.secrets_version, a.deployed_version), (1, 1));
        let history = store.versions(&app.id).await.unwrap();
        assert_eq!(history.len(), 1);
        assert_eq!(history[0].version, 1);
        assert_not_found(store.snapshot(&app.id, 2).await, "secrets version");
        assert_eq!(store.snapshot(&app.id, 1).await.unwrap(), v1);

        // Nothing was left behind: the same version with the same rows can be written now.
        store
            .write_v(change(&app.id, 1, vec![value("B", "2")], &["A"], true))
            .await
            .unwrap();
        let v2 = store.snapshot(&app.id, 2).await.unwrap();
        assert_eq!(names(&v2), ["B"]);
        assert_eq!(v2[0].ciphertext, b"sealed(B=2)");
        // Unsetting a name of an empty app is refused too.
        let empty = store
            .create_app("id-empty", &app_name("empty"))
            .await
            .unwrap();
        assert_conflict(
            store
                .write_v(change(&empty.id, 0, vec![], &["A"], false))
                .await,
            "cannot unset A",
        );
        assert_eq!(store.app_by_id(&empty.id).await.unwrap().secrets_version, 0);
    }

    pub async fn deploy_flag_and_mark_deployed(store: Store) {
        let app = store.create_app("id-web", &app_name("web")).await.unwrap();
        let versions = |a: coffer_store::AppRecord| (a.secrets_version, a.deployed_version);

        // Staged: written but not deployed.
        store
            .write_v(change(&app.id, 0, vec![value("A", "1")], &[], false))
            .await
            .unwrap();
        assert_eq!(versions(store.app_by_id(&app.id).await.unwrap()), (1, 0));
        store.mark_deployed(&app.id, 1).await.unwrap();
        assert_eq!(versions(store.app_by_id(&app.id).await.unwrap()), (1, 1));

        // Deployed in the same transaction.
        store
            .write_v(change(&app.id, 1, vec![value("A", "2")], &[], true))
            .await
            .unwrap();
        assert_eq!(versions(store.app_by_id(&app.id).await.unwrap()), (2, 2));

        // A failed release goes back to the previous version.
        store.mark_deployed(&app.id, 1).await.unwrap();
        assert_eq!(versions(store.app_by_id(&app.id).await.unwrap()), (2, 1));
        store.mark_deployed(&app.id, 2).await.unwrap();

        assert_conflict(
            store.mark_deployed(&app.id, 3).await,
            "the app is at version 2",
        );
        assert_conflict(store.mark_deployed(&app.id, -1).await, "-1");
        assert_eq!(versions(store.app_by_id(&app.id).await.unwrap()), (2, 2));
        assert_not_found(store.mark_deployed("nope", 1).await, "app");

        // A staged write leaves the deployed version alone.
        store
            .write_v(change(&app.id, 2, vec![value("B", "3")], &[], false))
            .await
            .unwrap();
        assert_eq!(versions(store.app_by_id(&app.id).await.unwrap()), (3, 2));
    }

    /// `app_with_listing` is `app_by_name` + `listing` of the app's own versions, in one read.
    pub async fn app_with_listing(store: Store) {
        // Name, value version, deployed.
        fn shown(listed: &[ListedSecret]) -> Vec<(&str, i64, bool)> {
            listed
                .iter()
                .map(|l| (l.name.as_str(), l.value_version, l.deployed))
                .collect()
        }
        // The app's read with its listing is the listing of its own versions.
        async fn agrees(store: &Store, name: &str) -> Vec<ListedSecret> {
            let (app, listed) = store.app_with_listing(&app_name(name)).await.unwrap();
            let joined = store
                .listing(&app.id, app.secrets_version, app.deployed_version)
                .await
                .unwrap();
            assert_eq!(listed, joined, "app_with_listing against listing");
            listed
        }
        let app = store.create_app("id-web", &app_name("web")).await.unwrap();
        let (got, listed) = store.app_with_listing(&app_name("web")).await.unwrap();
        assert_eq!(got, app);
        assert!(listed.is_empty(), "a new app lists nothing");

        store
            .write_v(change(
                &app.id,
                0,
                vec![value("B", "1"), value("A", "1")],
                &[],
                true,
            ))
            .await
            .unwrap();
        // The listed version is the deployed one: everything is deployed.
        let (_, listed) = store.app_with_listing(&app_name("web")).await.unwrap();
        assert_eq!(shown(&listed), vec![("A", 1, true), ("B", 1, true)]);
        agrees(&store, "web").await;

        // Staged: a kept value is still the deployed one, a changed one is not.
        store
            .write_v(change(&app.id, 1, vec![value("C", "2")], &[], false))
            .await
            .unwrap();
        let (_, listed) = store.app_with_listing(&app_name("web")).await.unwrap();
        assert_eq!(
            shown(&listed),
            vec![("A", 1, true), ("B", 1, true), ("C", 2, false)]
        );
        assert_eq!(listed, store.listing(&app.id, 2, 1).await.unwrap());
        // Version 2 lists version 1's values with version 1's dates.
        let kept_a = listed[0].clone();
        agrees(&store, "web").await;
        // The deployed version's listing read too.
        store
            .write_v(change(&app.id, 2, vec![value("D", "4")], &[], false))
            .await
            .unwrap();
        let listed = agrees(&store, "web").await;
        assert_eq!(
            shown(&listed),
            vec![
                ("A", 1, true),
                ("B", 1, true),
                ("C", 2, false),
                ("D", 3, false)
            ]
        );
        assert_eq!(listed[0], kept_a, "an unchanged value keeps its dates");
        store
            .write_v(change(&app.id, 3, vec![], &["D"], false))
            .await
            .unwrap();

        store
            .write_v(change(
                &app.id,
                4,
                vec![value("C", "3"), value("A", "3")],
                &["B"],
                false,
            ))
            .await
            .unwrap();
        let app = store.app_by_id(&app.id).await.unwrap();
        assert_eq!((app.secrets_version, app.deployed_version), (5, 1));
        let (got, listed) = store.app_with_listing(&app_name("web")).await.unwrap();
        assert_eq!(got, app);
        assert_eq!(listed, store.listing(&app.id, 5, 1).await.unwrap());
        assert_eq!(shown(&listed), vec![("A", 5, false), ("C", 5, false)]);
        // A changed value keeps its name's creation date, with a new update date.
        assert_eq!(listed[0].created_at, kept_a.created_at);
        assert!(listed[0].updated_at > kept_a.updated_at);
        assert_eq!(agrees(&store, "web").await, listed);
        // Versions 3 (deployed) to 5 (current).
        store.mark_deployed(&app.id, 4).await.unwrap();
        assert_eq!(
            shown(&agrees(&store, "web").await),
            vec![("A", 5, false), ("C", 5, false)]
        );
        store.mark_deployed(&app.id, 5).await.unwrap();
        assert_eq!(
            shown(&agrees(&store, "web").await),
            vec![("A", 5, true), ("C", 5, true)]
        );

        // Everything unset: the app, no secrets.
        store
            .write_v(change(&app.id, 5, vec![], &["A", "C"], false))
            .await
            .unwrap();
        let (got, listed) = store.app_with_listing(&app_name("web")).await.unwrap();
        assert_eq!(got.secrets_version, 6);
        assert!(listed.is_empty());
        assert!(agrees(&store, "web").await.is_empty());

        // Staged before anything was deployed: nothing is deployed.
        let other = store.create_app("id-api", &app_name("api")).await.unwrap();
        store
            .write_v(change(&other.id, 0, vec![value("K", "1")], &[], false))
            .await
            .unwrap();
        let listed = agrees(&store, "api").await;
        assert_eq!(shown(&listed), vec![("K", 1, false)]);

        assert_not_found(store.app_with_listing(&app_name("nope")).await, "app");
    }

    pub async fn tokens(store: Store) {
        let web = store.create_app("id-web", &app_name("web")).await.unwrap();
        let api = store.create_app("id-api", &app_name("api")).await.unwrap();
        let t0 = coffer_store::now_micros();
        let admin = store
            .insert_token(token("t1", None, Action::Admin))
            .await
            .unwrap();
        assert_eq!(admin.id, "t1");
        assert_eq!(admin.secret_hash, b"hash-of-t1");
        assert_eq!(
            (admin.app_id.as_deref(), admin.app_name.as_ref()),
            (None, None)
        );
        assert_eq!(admin.action, Action::Admin);
        assert_eq!(admin.description, "token t1");
        assert!(admin.created_at >= t0 && admin.created_at <= coffer_store::now_micros());
        assert!(admin.expires_at > admin.created_at);
        assert_eq!(admin.revoked_at, None);

        let deploy = store
            .insert_token(token("t2", Some(&web.id), Action::Deploy))
            .await
            .unwrap();
        assert_eq!(deploy.app_id.as_deref(), Some("id-web"));
        assert_eq!(deploy.app_name, Some(app_name("web")));
        let read = store
            .insert_token(token("t3", Some(&api.id), Action::Read))
            .await
            .unwrap();

        assert_eq!(store.token("t1").await.unwrap(), admin);
        assert_eq!(store.token("t2").await.unwrap(), deploy);
        assert_not_found(store.token("nope").await, "token");
        assert_eq!(
            store.list_tokens().await.unwrap(),
            [admin.clone(), deploy.clone(), read]
        );

        assert_conflict(
            store.insert_token(token("t1", None, Action::Read)).await,
            "t1",
        );
        assert_eq!(store.token("t1").await.unwrap(), admin);
        assert_not_found(
            store
                .insert_token(token("t4", Some("nope"), Action::Read))
                .await,
            "app",
        );
        assert_not_found(store.token("t4").await, "token");

        // Revocation.
        let before = coffer_store::now_micros();
        store.revoke_token("t2").await.unwrap();
        let revoked = store.token("t2").await.unwrap();
        let at = revoked.revoked_at.expect("revoked");
        assert!(at >= before && at <= coffer_store::now_micros());
        assert_eq!(revoked.app_name, Some(app_name("web")));
        store.revoke_token("t2").await.unwrap();
        assert_eq!(
            store.token("t2").await.unwrap().revoked_at,
            Some(at),
            "first time kept"
        );
        assert_eq!(store.token("t1").await.unwrap().revoked_at, None);
        assert_not_found(store.revoke_token("nope").await, "token");

        // An app's tokens go with it.
        store.delete_app(&web.id).await.unwrap();
        assert_not_found(store.token("t2").await, "token");
        let left: Vec<String> = store
            .list_tokens()
            .await
            .unwrap()
            .into_iter()
            .map(|t| t.id)
            .collect();
        assert_eq!(left, ["t1", "t3"]);
    }

    pub async fn vault_keys(store: Store) {
        // No foreign key: the vault may use another database than the API.
        let key = AppKeyRecord {
            app_id: "id-elsewhere".into(),
            public_key: (0..32).collect(),
            wrapped_private_key: vec![0, 255, 7, 0, 9],
            wrapped_digest_key: vec![42; 72],
            created_at: coffer_store::now_micros(),
        };
        assert_not_found(store.app_key(&key.app_id).await, "app key");
        store.insert_app_key(&key).await.unwrap();
        assert_eq!(store.app_key(&key.app_id).await.unwrap(), key);

        let replacement = AppKeyRecord {
            public_key: vec![9; 32],
            ..key.clone()
        };
        assert_conflict(store.insert_app_key(&replacement).await, "already has keys");
        assert_eq!(store.app_key(&key.app_id).await.unwrap(), key);

        let other = AppKeyRecord {
            app_id: "id-other".into(),
            ..replacement
        };
        store.insert_app_key(&other).await.unwrap();

        store.delete_app_key(&key.app_id).await.unwrap();
        assert_not_found(store.app_key(&key.app_id).await, "app key");
        store.delete_app_key(&key.app_id).await.unwrap();
        assert_eq!(store.app_key("id-other").await.unwrap(), other);
        // After a delete, keys may be created afresh.
        store.insert_app_key(&key).await.unwrap();
        assert_eq!(store.app_key(&key.app_id).await.unwrap(), key);
    }

    pub async fn meta(store: Store) {
        assert_eq!(store.meta_get("cluster_id").await.unwrap(), None);
        assert_eq!(
            store
                .meta_set_if_absent("cluster_id", "first")
                .await
                .unwrap(),
            "first"
        );
        assert_eq!(
            store
                .meta_set_if_absent("cluster_id", "second")
                .await
                .unwrap(),
            "first"
        );
        assert_eq!(
            store.meta_get("cluster_id").await.unwrap().as_deref(),
            Some("first")
        );
        assert_eq!(store.meta_get("other").await.unwrap(), None);
        assert_eq!(store.meta_set_if_absent("other", "").await.unwrap(), "");

        // Replicas racing to set the same key all agree on one value.
        let tasks: Vec<_> = (0..8)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move {
                    store
                        .meta_set_if_absent("race", &format!("v{i}"))
                        .await
                        .unwrap()
                })
            })
            .collect();
        let mut seen = Vec::new();
        for t in tasks {
            seen.push(t.await.unwrap());
        }
        let stored = store.meta_get("race").await.unwrap().unwrap();
        assert!(seen.iter().all(|v| *v == stored), "{seen:?} vs {stored}");
    }

    pub async fn concurrent_writers(store: Store) {
        const WRITERS: usize = 8;
        let app = store.create_app("id-web", &app_name("web")).await.unwrap();
        let tasks: Vec<_> = (0..WRITERS)
            .map(|i| {
                let store = store.clone();
                let app_id = app.id.clone();
                tokio::spawn(async move {
                    let mut conflicts = 0;
                    loop {
                        let base = store.app_by_id(&app_id).await.unwrap().secrets_version;
                        let name = format!("W{i}");
                        let sets = vec![value(&name, &i.to_string())];
                        match store.write_v(change(&app_id, base, sets, &[], false)).await {
                            Ok(v) => return (i, v, conflicts),
                            Err(StoreError::Conflict(_)) => conflicts += 1,
                            Err(e) => panic!("writer {i}: {e}"),
                        }
                        assert!(conflicts < 1000, "writer {i} starved");
                    }
                })
            })
            .collect();
        let mut written = Vec::new();
        for t in tasks {
            written.push(t.await.unwrap());
        }
        let mut got: Vec<i64> = written.iter().map(|(_, v, _)| *v).collect();
        got.sort_unstable();
        assert_eq!(
            got,
            (1..=WRITERS as i64).collect::<Vec<_>>(),
            "no gaps, no duplicates"
        );

        let history = store.versions(&app.id).await.unwrap();
        assert_eq!(
            history.iter().map(|v| v.version).collect::<Vec<_>>(),
            (1..=WRITERS as i64).rev().collect::<Vec<_>>()
        );
        let last = store.snapshot(&app.id, WRITERS as i64).await.unwrap();
        assert_eq!(
            names(&last),
            (0..WRITERS).map(|i| format!("W{i}")).collect::<Vec<_>>()
        );
        for (i, v, _) in &written {
            let s = find(&last, &format!("W{i}"));
            assert_eq!(s.value_version, *v, "W{i} was written at version {v}");
            // Each version holds exactly the names written up to it.
            assert_eq!(store.snapshot(&app.id, *v).await.unwrap().len() as i64, *v);
        }
        let app = store.app_by_id(&app.id).await.unwrap();
        assert_eq!(app.secrets_version, WRITERS as i64);
    }

    /// Apps and their keys created all at once, with names and key records that collide: on
    /// SQLite they share transactions (group commit); each collision is refused alone.
    pub async fn concurrent_creates_with_collisions(store: Store) {
        const NAMES: usize = 12;
        let mut tasks = Vec::new();
        for i in 0..NAMES {
            for attempt in 0..3 {
                let store = store.clone();
                tasks.push(tokio::spawn(async move {
                    let id = format!("id-{i}-{attempt}");
                    let created = store.create_app(&id, &app_name(&format!("app-{i}"))).await;
                    let key = AppKeyRecord {
                        app_id: format!("keys-{i}"),
                        public_key: vec![attempt as u8; 32],
                        wrapped_private_key: vec![1, 2, 3],
                        wrapped_digest_key: vec![4, 5, 6],
                        created_at: 1,
                    };
                    (i, id, created, store.insert_app_key(&key).await)
                }));
            }
        }
        let mut apps = vec![0; NAMES];
        let mut keys = vec![0; NAMES];
        for t in tasks {
            let (i, id, created, keyed) = t.await.unwrap();
            match created {
                Ok(app) => {
                    assert_eq!(app.id, id);
                    apps[i] += 1;
                }
                Err(e) => assert_conflict::<()>(Err(e), "already exists"),
            }
            match keyed {
                Ok(()) => keys[i] += 1,
                Err(e) => assert_conflict::<()>(Err(e), "already has keys"),
            }
        }
        assert_eq!(apps, vec![1; NAMES], "one app per name");
        assert_eq!(keys, vec![1; NAMES], "one key record per app");
        assert_eq!(store.list_apps().await.unwrap().len(), NAMES);
    }

    /// Many writes at once, to many apps, some of which must fail: on SQLite they share
    /// transactions (group commit), so a failing write must not take the others down with it,
    /// nor leave anything of itself behind.
    pub async fn concurrent_writes_with_failures(store: Store) {
        const APPS: usize = 24;
        let mut apps = Vec::new();
        for i in 0..APPS {
            let app = store
                .create_app(&format!("id-{i}"), &app_name(&format!("app-{i}")))
                .await
                .unwrap();
            apps.push(app.id);
        }
        // Per app: a good write, a second write at the same base (exactly one of the two
        // wins), and an unset of a name that does not exist (always refused).
        let mut tasks = Vec::new();
        for (i, app_id) in apps.iter().enumerate() {
            for (kind, v) in [
                (
                    "first",
                    change(app_id, 0, vec![value("A", &format!("a{i}"))], &[], false),
                ),
                (
                    "second",
                    change(app_id, 0, vec![value("B", &format!("b{i}"))], &[], false),
                ),
                (
                    "bad",
                    change(app_id, 0, vec![value("C", "c")], &["MISSING"], false),
                ),
            ] {
                let store = store.clone();
                tasks.push(tokio::spawn(
                    async move { (i, kind, store.write_v(v).await) },
                ));
            }
        }
        let mut winners = vec![Vec::new(); APPS];
        for t in tasks {
            let (i, kind, result) = t.await.unwrap();
            match (kind, result) {
                // Refused for the missing name, or for its stale base if a good write
                // came first.
                ("bad", Err(StoreError::Conflict(_))) => {}
                ("bad", other) => panic!("app {i}: the bad write gave {other:?}"),
                (_, Ok(1)) => winners[i].push(kind),
                (_, Err(StoreError::Conflict(_))) => {}
                (_, other) => panic!("app {i}: {kind} gave {other:?}"),
            }
        }
        for (i, app_id) in apps.iter().enumerate() {
            assert_eq!(winners[i].len(), 1, "app {i}: winners {:?}", winners[i]);
            let app = store.app_by_id(app_id).await.unwrap();
            assert_eq!(app.secrets_version, 1, "app {i}");
            let snapshot = store.snapshot(app_id, 1).await.unwrap();
            let expected = if winners[i][0] == "first" { "A" } else { "B" };
            assert_eq!(names(&snapshot), vec![expected], "app {i}");
            assert_eq!(store.versions(app_id).await.unwrap().len(), 1, "app {i}");
        }
    }
}

// -------------------------------------------------------------------- opening and migrating

/// Several processes (here: stores) opening one database at once: the migrations run once.
async fn open_concurrently(url: DatabaseUrl, mode: OpenMode) {
    let opens: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { Store::open(&url, mode).await })
        })
        .collect();
    let mut stores = Vec::new();
    for o in opens {
        stores.push(o.await.unwrap().unwrap());
    }
    stores[0]
        .create_app("id-web", &app_name("web"))
        .await
        .unwrap();
    for s in &stores {
        assert_eq!(s.list_apps().await.unwrap().len(), 1);
        s.close().await;
    }
    // And again, on an existing schema.
    let store = Store::open(&url, OpenMode::MustExist).await.unwrap();
    assert_eq!(
        store.app_by_name(&app_name("web")).await.unwrap().id,
        "id-web"
    );
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_open_concurrently() {
    let dir = tempfile::tempdir().unwrap();
    let url = testing::sqlite_url_in(dir.path());
    open_concurrently(url, OpenMode::CreateIfMissing).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_open_concurrently() {
    let Some(admin) = testing::require_postgres() else {
        return;
    };
    let db = testing::fresh_postgres_database(&admin).await;
    open_concurrently(DatabaseUrl::parse(&db).unwrap(), OpenMode::MustExist).await;
    testing::drop_postgres_database(&admin, &db).await;
}

/// Compiles only if every method's future can be spawned (is `Send + 'static` once it owns its
/// arguments), as axum handlers and `tokio::spawn` require. Never run.
#[allow(dead_code)]
fn every_future_is_spawnable(s: Store, url: DatabaseUrl, key: AppKeyRecord, n: AppName) {
    fn spawnable<F: Future + Send + 'static>(_: F) {}
    macro_rules! check {
        ($($v:ident),* => $call:expr) => {{
            $(let $v = $v.clone();)*
            spawnable(async move { $call });
        }};
    }
    check!(url => Store::open(&url, OpenMode::MustExist).await);
    check!(s => s.ping().await);
    check!(s => s.close().await);
    check!(s, n => s.create_app("id", &n).await);
    check!(s, n => s.app_by_name(&n).await);
    check!(s => s.app_by_id("id").await);
    check!(s => s.list_apps().await);
    check!(s => s.delete_app("id").await);
    check!(s => s.set_crash_window("id", 1).await);
    check!(s => s.snapshot("id", 1).await);
    check!(s => s.write_v(change("id", 0, vec![], &[], false)).await);
    check!(s => s.mark_deployed("id", 1).await);
    check!(s => s.versions("id").await);
    check!(s => s.insert_token(token("t", None, Action::Read)).await);
    check!(s => s.token("t").await);
    check!(s => s.list_tokens().await);
    check!(s => s.revoke_token("t").await);
    check!(s, key => s.insert_app_key(&key).await);
    check!(s => s.app_key("id").await);
    check!(s => s.delete_app_key("id").await);
    check!(s => s.meta_get("k").await);
    check!(s => s.meta_set_if_absent("k", "v").await);
    check!(=> testing::fresh_postgres_database("postgres://x").await);
    check!(=> testing::drop_postgres_database("postgres://x", "postgres://x/coffer_test_0").await);
}

mod machine_scenarios {
    use super::*;
    use coffer_core::wire::machines::{DesiredState, HealthCheck, MachineState, RestartPolicy};
    use coffer_store::{MachineConfig, NewMachine};

    pub(super) fn config() -> MachineConfig {
        MachineConfig {
            command: vec!["sleep".into(), "1".into()],
            env: [("PLAIN".to_string(), "1".to_string())].into(),
            restart: RestartPolicy::OnFailure,
            check: Some(HealthCheck::Http {
                port: 8080,
                path: "/healthz".into(),
            }),
        }
    }

    /// The vault's one read before a boot decrypt.
    pub async fn boot_facts(store: Store) {
        let app = store.create_app("app1", &app_name("web")).await.unwrap();
        store
            .register_host("h1", "dev", "http://127.0.0.1:1", "ab", b"hash")
            .await
            .unwrap();
        store
            .write_v(change(
                &app.id,
                0,
                vec![value("A", "1"), value("B", "1")],
                &[],
                true,
            ))
            .await
            .unwrap();
        store
            .write_v(change(&app.id, 1, vec![value("B", "2")], &[], true))
            .await
            .unwrap();
        let new = |id: &str, secrets_version: i64| NewMachine {
            id: id.into(),
            app_id: app.id.clone(),
            host_id: "h1".into(),
            name: format!("m-{id}"),
            config: config(),
            secrets_version,
            release_version: 0,
        };
        let m1 = store.create_machine(new("m1", 2)).await.unwrap();
        let facts = store.boot_facts("m1").await.unwrap();
        assert_eq!(facts.machine, m1);
        assert_eq!(facts.host_public_key, "ab");
        assert_eq!(facts.app_public_key, None, "no key record yet");
        let key = AppKeyRecord {
            app_id: app.id.clone(),
            public_key: vec![5; 32],
            wrapped_private_key: vec![1],
            wrapped_digest_key: vec![2],
            created_at: 1,
        };
        store.insert_app_key(&key).await.unwrap();
        let facts = store.boot_facts("m1").await.unwrap();
        assert_eq!(facts.app_public_key, Some(vec![5; 32]));
        store.delete_app_key(&app.id).await.unwrap();
        assert_eq!(store.boot_facts("m1").await.unwrap().app_public_key, None);
        assert_eq!(
            facts.members,
            [("A".to_string(), 1), ("B".to_string(), 2)].into()
        );
        // A machine at version 0 has no members; an unknown one is not found.
        store.create_machine(new("m0", 0)).await.unwrap();
        assert!(store.boot_facts("m0").await.unwrap().members.is_empty());
        assert_not_found(store.boot_facts("nope").await, "machine");
    }

    pub async fn hosts_and_machines(store: Store) {
        let app = store.create_app("app1", &app_name("web")).await.unwrap();
        let h = store
            .register_host("h1", "dev", "http://127.0.0.1:1", "ab", b"hash")
            .await
            .unwrap();
        assert_eq!(h.generation, 0);
        assert_eq!(store.host("h1").await.unwrap(), h);
        assert_not_found(store.host("nope").await, "host");
        store.touch_host("h1", "http://127.0.0.1:2").await.unwrap();
        assert_eq!(
            store.host("h1").await.unwrap().address,
            "http://127.0.0.1:2"
        );
        assert_not_found(store.touch_host("nope", "x").await, "host");

        let new = |id: &str| NewMachine {
            id: id.into(),
            app_id: app.id.clone(),
            host_id: "h1".into(),
            name: format!("m-{id}"),
            config: config(),
            secrets_version: 0,
            release_version: 0,
        };
        let m1 = store.create_machine(new("m1")).await.unwrap();
        assert_eq!(
            (m1.desired, m1.state),
            (DesiredState::Running, MachineState::Pending)
        );
        assert_eq!(m1.config, config());
        assert_eq!(m1.generation, 1);
        let mut unchecked = new("m2");
        unchecked.config.check = None;
        let m2 = store.create_machine(unchecked).await.unwrap();
        assert_eq!(m2.generation, 2);
        assert_eq!(m2.config.check, None);
        let (gen, assigned) = store.host_assignments("h1").await.unwrap();
        assert_eq!(gen, 2);
        assert_eq!(
            assigned.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(),
            ["m1", "m2"]
        );
        // A machine for an unknown app or host is refused.
        let mut orphan = new("m3");
        orphan.app_id = "nope".into();
        assert!(store.create_machine(orphan).await.is_err());
        let mut orphan = new("m4");
        orphan.host_id = "nope".into();
        assert_not_found(store.create_machine(orphan).await, "host");

        // A failing health check is a state of its own, with the host's reason.
        let r = store
            .report_machine_state(
                "m2",
                "h1",
                MachineState::Unhealthy,
                None,
                Some("http check GET :8080/healthz: status 500"),
                2,
            )
            .await
            .unwrap();
        assert_eq!(r.state, MachineState::Unhealthy);
        assert_eq!(store.machine("m2").await.unwrap(), r);

        // Reports only from the machine's host.
        let r = store
            .report_machine_state("m1", "h1", MachineState::Exited, Some(3), Some("bye"), 1)
            .await
            .unwrap();
        assert_eq!(
            (r.state, r.exit_status, r.message.as_deref()),
            (MachineState::Exited, Some(3), Some("bye"))
        );
        assert_eq!(r.generation, 1, "reports do not wake the host");
        assert_eq!(r.state_generation, 1);
        assert_not_found(
            store
                .report_machine_state("m1", "h2", MachineState::Started, None, None, 1)
                .await,
            "machine",
        );

        // Desired changes bump the host's generation; destroy is final.
        let m = store
            .set_machine_desired("m1", DesiredState::Stopped)
            .await
            .unwrap();
        assert_eq!(m.generation, 3);
        let m = store.set_machine_version("m1", 4, 2).await.unwrap();
        assert_eq!(
            (m.secrets_version, m.release_version, m.generation),
            (4, 2, 4)
        );
        let m = store
            .set_machine_desired("m1", DesiredState::Destroyed)
            .await
            .unwrap();
        assert!(m.destroyed_at.is_some());
        assert_conflict(
            store.set_machine_desired("m1", DesiredState::Running).await,
            "destroyed",
        );
        assert_conflict(
            store
                .report_machine_state("m1", "h1", MachineState::Started, None, None, 4)
                .await,
            "destroyed",
        );
        // Still assigned until the host acknowledges the destruction.
        assert_eq!(store.host_assignments("h1").await.unwrap().1.len(), 2);
        store
            .report_machine_state("m1", "h1", MachineState::Destroyed, None, None, 5)
            .await
            .unwrap();
        let (gen, assigned) = store.host_assignments("h1").await.unwrap();
        assert_eq!(gen, 5);
        assert_eq!(
            assigned.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(),
            ["m2"]
        );
        // The row stays, so the vault can tell a destroyed machine from an unknown one.
        assert!(store.machine("m1").await.unwrap().destroyed_at.is_some());
        assert_eq!(store.app_machines(&app.id).await.unwrap().len(), 2);

        // Destroying the app removes its machines, and tells their host (a new generation
        // ends its agent's long-poll).
        store.delete_app(&app.id).await.unwrap();
        assert_not_found(store.machine("m2").await, "machine");
        let (gen, assigned) = store.host_assignments("h1").await.unwrap();
        assert!(assigned.is_empty());
        assert_eq!(gen, 6, "the host's generation is bumped");
    }
}

mod release_scenarios {
    use super::*;
    use coffer_store::{NewRelease, ReleaseRecord, ReleaseStatus};

    fn rel(d: &str) -> NewRelease {
        NewRelease {
            description: d.into(),
            actor: "tester".into(),
            owner: "api-a-1".into(),
        }
    }

    /// A machine of `app_id` on a host of its own, so that the app's releases have something
    /// to roll out.
    async fn with_a_machine(store: &Store, app_id: &str) -> coffer_store::MachineRecord {
        store
            .register_host("h1", "dev", "http://127.0.0.1:1", "ab", b"hash")
            .await
            .unwrap();
        store.create_machine(new_machine_of(app_id)).await.unwrap()
    }

    /// Machine `m1` of `app_id`, on host `h1`.
    fn new_machine_of(app_id: &str) -> coffer_store::NewMachine {
        coffer_store::NewMachine {
            id: "m1".into(),
            app_id: app_id.into(),
            host_id: "h1".into(),
            name: "m-1".into(),
            config: coffer_store::MachineConfig {
                command: vec!["sleep".into(), "1".into()],
                env: Default::default(),
                restart: coffer_core::wire::machines::RestartPolicy::OnFailure,
                check: None,
            },
            secrets_version: 0,
            release_version: 0,
        }
    }

    /// Writes with a release computed against the caller's read of the app (on PostgreSQL one
    /// statement) start the same releases and refuse the same writes as writes whose base the
    /// store reads (a transaction): the same steps on two apps, one written each way.
    pub async fn release_writes_with_the_callers_base(store: Store) {
        store
            .register_host("h1", "dev", "http://127.0.0.1:1", "ab", b"hash")
            .await
            .unwrap();
        let read = store
            .create_app("id-read", &app_name("read"))
            .await
            .unwrap();
        let given = store
            .create_app("id-given", &app_name("given"))
            .await
            .unwrap();
        // Each step: the release of one write per app, or the refusal of both.
        async fn step(
            store: &Store,
            (read, given): (&AppRecord, &AppRecord),
            sets: Vec<NewValue>,
            release: bool,
        ) -> Result<(Option<ReleaseRecord>, Option<ReleaseRecord>), (StoreError, StoreError)>
        {
            let app = store.app_by_id(&read.id).await.unwrap();
            let mut v = change(&read.id, app.secrets_version, sets.clone(), &[], release);
            v.release = release.then(|| rel("step"));
            let by_store = store.write_version(v).await;
            let read = store.base_read(&given.name).await.unwrap();
            let mut v =
                change(&given.id, read.app().secrets_version, sets, &[], release).with_base(read);
            v.release = release.then(|| rel("step"));
            let by_caller = store.write_version(v).await;
            match (by_store, by_caller) {
                (Ok(a), Ok(b)) => Ok((a.release, b.release)),
                (Err(a), Err(b)) => Err((a, b)),
                (a, b) => panic!("the two ways differ: {a:?} against {b:?}"),
            }
        }
        let same = |a: &ReleaseRecord, b: &ReleaseRecord| {
            let fields = |r: &ReleaseRecord| {
                (
                    r.version,
                    r.secrets_version,
                    r.previous_secrets_version,
                    r.previous_release_version,
                    r.description.clone(),
                    r.actor.clone(),
                    r.status,
                    r.reason.clone(),
                    r.progress.clone(),
                    r.owner.clone(),
                    r.lease_until > r.created_at,
                    r.created_at == r.updated_at,
                )
            };
            assert_eq!(fields(a), fields(b));
        };
        let apps = (&read, &given);

        // No machine: the release completes at once.
        let (a, b) = step(&store, apps, vec![value("A", "1")], true)
            .await
            .unwrap();
        let (a, b) = (a.unwrap(), b.unwrap());
        same(&a, &b);
        assert_eq!(
            (a.status, a.owner.as_deref(), a.lease_until),
            (ReleaseStatus::Complete, None, 0)
        );

        // With a machine: it runs, owned, until its lease ends; meanwhile no other release.
        for app in [&read, &given] {
            let mut m = new_machine_of(&app.id);
            m.id = format!("m-{}", app.id);
            m.name = format!("m-{}", app.name);
            store.create_machine(m).await.unwrap();
        }
        let (a, b) = step(&store, apps, vec![value("A", "2")], true)
            .await
            .unwrap();
        let (a, b) = (a.unwrap(), b.unwrap());
        same(&a, &b);
        assert_eq!(a.status, ReleaseStatus::Running);
        assert_eq!(
            (a.owner.as_deref(), a.previous_secrets_version),
            (Some("api-a-1"), 1)
        );
        let (ea, eb) = step(&store, apps, vec![value("A", "3")], true)
            .await
            .unwrap_err();
        for e in [ea, eb] {
            assert!(
                matches!(&e, StoreError::Conflict(m) if m.contains("already running")),
                "{e:?}"
            );
        }
        // A staged write goes on while the release runs.
        let (a3, b3) = step(&store, apps, vec![value("B", "3")], false)
            .await
            .unwrap();
        assert_eq!((a3, b3), (None, None));
        super::scenarios::assert_same_secrets(&store, &read, &given).await;

        // Once it is over, the next release records what ran before it.
        for app in [&read, &given] {
            let running = store.release(&app.id, 2).await.unwrap();
            store
                .complete_release(&running.lease().unwrap())
                .await
                .unwrap();
        }
        let (a, b) = step(&store, apps, vec![value("A", "4")], true)
            .await
            .unwrap();
        let (a, b) = (a.unwrap(), b.unwrap());
        same(&a, &b);
        assert_eq!(
            (
                a.version,
                a.previous_secrets_version,
                a.previous_release_version
            ),
            (3, 2, 2)
        );
        super::scenarios::assert_same_secrets(&store, &read, &given).await;
        let (ra, rb) = (
            store.releases(&read.id).await.unwrap(),
            store.releases(&given.id).await.unwrap(),
        );
        assert_eq!(ra.len(), 3);
        for (a, b) in ra.iter().zip(&rb) {
            same(a, b);
        }

        // A read of the app that is no longer what runs is not what the release records. On
        // PostgreSQL (one statement, checked against the read) the write conflicts and the
        // caller reads again; on SQLite the transaction reads what runs itself.
        let running = store.release(&given.id, 3).await.unwrap();
        store
            .complete_release(&running.lease().unwrap())
            .await
            .unwrap();
        let read = store.base_read(&given.name).await.unwrap();
        store.mark_deployed(&given.id, 1).await.unwrap();
        let rows = testing::rows_of_app(&store, &given.id).await.unwrap();
        let mut v = change(
            &given.id,
            read.app().secrets_version,
            vec![value("A", "5")],
            &[],
            true,
        )
        .with_base(read);
        v.release = Some(rel("stale read"));
        let release = match (store.engine(), store.write_version(v.clone()).await) {
            (Engine::Sqlite, Ok(outcome)) => outcome.release.unwrap(),
            (Engine::Postgres, Err(e)) => {
                assert_conflict::<()>(Err(e), "deployed secrets changed meanwhile; retry");
                assert_eq!(testing::rows_of_app(&store, &given.id).await.unwrap(), rows);
                v.base = Some(store.base_read(&given.name).await.unwrap());
                store.write_version(v).await.unwrap().release.unwrap()
            }
            (engine, other) => panic!("{engine:?}: {other:?}"),
        };
        assert_eq!(
            (
                release.previous_secrets_version,
                release.previous_release_version
            ),
            (1, 3)
        );
    }

    pub async fn releases_without_machines_complete_at_once(store: Store) {
        let app = store.create_app("app1", &app_name("web")).await.unwrap();
        let mut v = change(&app.id, 0, vec![value("A", "1")], &[], true);
        v.release = Some(rel("Set A"));
        let r1 = store.write_version(v).await.unwrap().release.unwrap();
        assert_eq!((r1.version, r1.status), (1, ReleaseStatus::Complete));
        assert!(store.running_releases().await.unwrap().is_empty());
        assert_eq!(store.release(&app.id, 1).await.unwrap(), r1);
        // So the next deploying write is not refused, and neither is a deploy of staged secrets.
        let mut v = change(&app.id, 1, vec![value("A", "2")], &[], true);
        v.release = Some(rel("Set A again"));
        let r2 = store.write_version(v).await.unwrap().release.unwrap();
        assert_eq!((r2.version, r2.status), (2, ReleaseStatus::Complete));
        store
            .write_v(change(&app.id, 2, vec![value("B", "3")], &[], false))
            .await
            .unwrap();
        let r3 = store.deploy_staged(&app.id, &rel("Deploy")).await.unwrap();
        assert_eq!(
            (r3.version, r3.secrets_version, r3.status),
            (3, 3, ReleaseStatus::Complete)
        );
        // A destroyed machine has nothing to roll out either; a live one has.
        let m = with_a_machine(&store, &app.id).await;
        let mut v = change(&app.id, 3, vec![value("A", "4")], &[], true);
        v.release = Some(rel("With a machine"));
        let r4 = store.write_version(v).await.unwrap().release.unwrap();
        assert_eq!(r4.status, ReleaseStatus::Running);
        store.complete_release(&r4.lease().unwrap()).await.unwrap();
        store
            .set_machine_desired(&m.id, coffer_core::wire::machines::DesiredState::Destroyed)
            .await
            .unwrap();
        let mut v = change(&app.id, 4, vec![value("A", "5")], &[], true);
        v.release = Some(rel("After the machine"));
        let r5 = store.write_version(v).await.unwrap().release.unwrap();
        assert_eq!(r5.status, ReleaseStatus::Complete);
    }

    fn fenced<T: std::fmt::Debug>(r: Result<T, StoreError>) {
        assert!(matches!(r, Err(StoreError::Fenced)), "{r:?}");
    }

    fn secs(n: i64) -> i64 {
        n * 1_000_000
    }

    /// A running release owned by "api-a-1" (see [`rel`]), of an app with machine m1.
    async fn a_running_release(store: &Store) -> coffer_store::ReleaseRecord {
        let app = store.create_app("app1", &app_name("web")).await.unwrap();
        with_a_machine(store, &app.id).await;
        let mut v = change(&app.id, 0, vec![value("A", "1")], &[], true);
        v.release = Some(rel("Set A"));
        let r = store.write_version(v).await.unwrap().release.unwrap();
        assert_eq!(r.status, ReleaseStatus::Running);
        r
    }

    /// Several API replicas: the orchestration that owns a release changes it and its
    /// machines; any other — one that lost it to a take-over, or a stranger — changes nothing,
    /// and neither does anyone once the release is settled.
    pub async fn release_writes_are_fenced_by_their_owner(store: Store) {
        let before = coffer_store::now_micros();
        let r = a_running_release(&store).await;
        let app_id = r.app_id.clone();
        assert_eq!(r.owner.as_deref(), Some("api-a-1"));
        assert!(r.lease_until >= before + secs(15), "a fresh lease: {r:?}");
        let a = r.lease().unwrap();
        let stranger = coffer_store::ReleaseLease {
            owner: "api-b-1".into(),
            ..a.clone()
        };

        // The owner moves the machine to the release's version.
        let m = store
            .move_machine_for_release(&a, "m1", r.secrets_version, r.version)
            .await
            .unwrap();
        assert_eq!((m.secrets_version, m.release_version), (1, 1));
        let host_generation = store.host_assignments("h1").await.unwrap().0;

        // A stranger changes nothing: not the machine (nor its host), not the release.
        fenced(store.move_machine_for_release(&stranger, "m1", 0, 0).await);
        fenced(store.set_release_progress(&stranger, "hijacked").await);
        fenced(store.renew_release_lease(&stranger).await);
        fenced(store.complete_release(&stranger).await);
        fenced(store.fail_release(&stranger, "hijacked").await);
        assert_eq!(store.machine("m1").await.unwrap(), m);
        assert_eq!(
            store.host_assignments("h1").await.unwrap().0,
            host_generation
        );
        let now = store.release(&app_id, 1).await.unwrap();
        assert_eq!(
            (now.status, now.progress.as_str(), now.owner.as_deref()),
            (ReleaseStatus::Running, "", Some("api-a-1"))
        );
        // Not another app's machine either, even with the right lease.
        let other = coffer_store::ReleaseLease {
            app_id: "nope".into(),
            ..a.clone()
        };
        fenced(store.set_release_progress(&other, "x").await);

        // The owner's writes renew its lease.
        store
            .set_release_progress(&a, "watching m-1")
            .await
            .unwrap();
        store.renew_release_lease(&a).await.unwrap();
        assert!(store.release(&app_id, 1).await.unwrap().lease_until >= r.lease_until);

        // Another replica takes the release over (as if A's lease had passed): from then on,
        // A changes nothing, while B rolls it back.
        let later = coffer_store::now_micros() + secs(60);
        let taken = store
            .take_over_expired_releases("api-b-2", later)
            .await
            .unwrap();
        assert_eq!(taken.len(), 1);
        let b = taken[0].lease().unwrap();
        assert_eq!(b.owner, "api-b-2");
        fenced(store.move_machine_for_release(&a, "m1", 1, 1).await);
        fenced(store.set_release_progress(&a, "still watching").await);
        fenced(store.renew_release_lease(&a).await);
        fenced(store.complete_release(&a).await);
        fenced(store.fail_release(&a, "too late").await);
        store
            .move_machine_for_release(
                &b,
                "m1",
                r.previous_secrets_version,
                r.previous_release_version,
            )
            .await
            .unwrap();
        store.fail_release(&b, "interrupted").await.unwrap();

        // Settled: the machine stays where the rollback put it, whoever asks.
        fenced(store.move_machine_for_release(&b, "m1", 1, 1).await);
        fenced(store.move_machine_for_release(&a, "m1", 1, 1).await);
        fenced(store.set_release_progress(&b, "x").await);
        fenced(store.renew_release_lease(&b).await);
        let m = store.machine("m1").await.unwrap();
        assert_eq!((m.secrets_version, m.release_version), (0, 0));
        let failed = store.release(&app_id, 1).await.unwrap();
        assert_eq!(
            (failed.status, failed.reason.as_deref()),
            (ReleaseStatus::Failed, Some("interrupted"))
        );
        assert!(store
            .take_over_expired_releases("api-c-1", later + secs(60))
            .await
            .unwrap()
            .is_empty());
    }

    /// Recovery (at start, and the periodic sweep) takes a running release only once its
    /// owner's lease has passed, and of several replicas sweeping at once exactly one gets it.
    pub async fn only_releases_with_an_expired_lease_are_taken_over(store: Store) {
        let r = a_running_release(&store).await;
        let a = r.lease().unwrap();
        // A live lease: nobody takes it, not even just before it ends.
        for at in [coffer_store::now_micros(), r.lease_until - 1] {
            assert!(store
                .take_over_expired_releases("api-b-1", at)
                .await
                .unwrap()
                .is_empty());
        }
        let still = store.release(&r.app_id, r.version).await.unwrap();
        assert_eq!(still.owner.as_deref(), Some("api-a-1"));
        store.set_release_progress(&a, "A goes on").await.unwrap();

        // Renewed, it is not expired at the old end either.
        let renewed = store.release(&r.app_id, r.version).await.unwrap();
        assert!(store
            .take_over_expired_releases("api-b-1", renewed.lease_until - 1)
            .await
            .unwrap()
            .is_empty());

        // Past its end, five replicas sweep at once: one takes it.
        let after = renewed.lease_until + 1;
        let sweeps: Vec<_> = (0..5)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move {
                    store
                        .take_over_expired_releases(&format!("api-s-{i}"), after)
                        .await
                        .unwrap()
                })
            })
            .collect();
        let mut winners = Vec::new();
        for sweep in sweeps {
            winners.extend(sweep.await.unwrap());
        }
        assert_eq!(winners.len(), 1, "{winners:?}");
        let owner = winners[0].owner.clone().unwrap();
        assert!(owner.starts_with("api-s-"));
        assert_eq!(
            store.release(&r.app_id, r.version).await.unwrap().owner,
            Some(owner.clone())
        );
        // The new owner's lease is fresh from the sweep's time: not taken again before it ends.
        assert!(store
            .take_over_expired_releases("api-c-1", after)
            .await
            .unwrap()
            .is_empty());
        fenced(store.set_release_progress(&a, "A is out").await);
        store
            .set_release_progress(&winners[0].lease().unwrap(), "rolling back")
            .await
            .unwrap();
    }

    pub async fn releases(store: Store) {
        let app = store.create_app("app1", &app_name("web")).await.unwrap();
        with_a_machine(&store, &app.id).await;
        // A deploying write with a release: version 1, release 1, running.
        let mut v = change(&app.id, 0, vec![value("A", "1")], &[], true);
        v.release = Some(rel("Set A"));
        let out = store.write_version(v).await.unwrap();
        let r1 = out.release.unwrap();
        assert_eq!(
            (out.version, r1.version, r1.status),
            (1, 1, ReleaseStatus::Running)
        );
        assert_eq!(
            (r1.previous_secrets_version, r1.previous_release_version),
            (0, 0)
        );
        assert_eq!(store.running_releases().await.unwrap(), vec![r1.clone()]);

        // A second deploying write is refused whole while it runs; a staged one is accepted.
        let mut v = change(&app.id, 1, vec![value("B", "2")], &[], true);
        v.release = Some(rel("Set B"));
        assert_conflict(store.write_version(v).await, "release is already running");
        let a = store.app_by_id(&app.id).await.unwrap();
        assert_eq!(
            (a.secrets_version, a.deployed_version),
            (1, 1),
            "nothing of it was written"
        );
        assert_eq!(
            store
                .write_v(change(&app.id, 1, vec![value("B", "2")], &[], false))
                .await
                .unwrap(),
            2
        );
        // The listing says which values are also deployed, without reading ciphertexts.
        let listed = store.listing(&app.id, 2, 1).await.unwrap();
        let flags: Vec<(&str, bool)> = listed
            .iter()
            .map(|l| (l.name.as_str(), l.deployed))
            .collect();
        assert_eq!(flags, [("A", true), ("B", false)]);
        assert_eq!(listed[0].value_len, 1);
        assert_not_found(store.listing(&app.id, 9, 1).await, "secrets version");
        assert_conflict(
            store.deploy_staged(&app.id, &rel("Deploy")).await,
            "release is already running",
        );

        let lease1 = r1.lease().unwrap();
        store
            .set_release_progress(&lease1, "watching web-1")
            .await
            .unwrap();
        assert_eq!(
            store.release(&app.id, 1).await.unwrap().progress,
            "watching web-1"
        );
        let done = store.complete_release(&lease1).await.unwrap();
        assert_eq!(
            (done.status, done.progress.as_str()),
            (ReleaseStatus::Complete, "")
        );
        assert!(matches!(
            store.complete_release(&lease1).await,
            Err(StoreError::Fenced)
        ));

        // Deploy the staged version 2 as release 2, then fail it: the app goes back to the
        // members of version 1 as version 3, deployed, recorded by release 3 (rolled_back).
        let r2 = store
            .deploy_staged(&app.id, &rel("Deploy 2"))
            .await
            .unwrap();
        assert_eq!(
            (r2.version, r2.secrets_version, r2.previous_secrets_version),
            (2, 2, 1)
        );
        assert_conflict(
            store.deploy_staged(&app.id, &rel("again")).await,
            "nothing is staged",
        );
        let lease2 = r2.lease().unwrap();
        let (failed, rollback) = store
            .fail_release(&lease2, "machine m exited with status 1")
            .await
            .unwrap();
        assert_eq!(failed.status, ReleaseStatus::Failed);
        assert_eq!(
            failed.reason.as_deref(),
            Some("machine m exited with status 1")
        );
        assert_eq!(
            (rollback.version, rollback.secrets_version, rollback.status),
            (3, 3, ReleaseStatus::RolledBack)
        );
        let a = store.app_by_id(&app.id).await.unwrap();
        assert_eq!(
            (a.secrets_version, a.deployed_version, a.release_version),
            (3, 3, 3)
        );
        assert_eq!(names(&store.snapshot(&app.id, 3).await.unwrap()), ["A"]);
        // The rollback version lists what ran before the release, all of it deployed.
        let (_, listed) = store.app_with_listing(&app_name("web")).await.unwrap();
        assert_eq!(listed, store.listing(&app.id, 3, 3).await.unwrap());
        let shown: Vec<(&str, i64, bool)> = listed
            .iter()
            .map(|l| (l.name.as_str(), l.value_version, l.deployed))
            .collect();
        assert_eq!(shown, [("A", 1, true)]);
        assert_eq!(
            find(&store.snapshot(&app.id, 3).await.unwrap(), "A").value_version,
            1
        );
        let history = store.versions(&app.id).await.unwrap();
        assert!(
            history[0].actor.contains("rollback of release 2"),
            "{:?}",
            history[0]
        );
        assert_eq!(history[0].changes.len(), 1);
        assert_eq!(history[0].changes[0].kind, ChangeKind::Unset);
        assert!(matches!(
            store.fail_release(&lease2, "again").await,
            Err(StoreError::Fenced)
        ));
        assert!(store.running_releases().await.unwrap().is_empty());
        assert_conflict(
            store.deploy_staged(&app.id, &rel("nothing")).await,
            "nothing is staged",
        );
        let all = store.releases(&app.id).await.unwrap();
        assert_eq!(all.iter().map(|r| r.version).collect::<Vec<_>>(), [3, 2, 1]);
        // Releases go with their app.
        store.delete_app(&app.id).await.unwrap();
        assert_not_found(store.release(&app.id, 1).await, "release");
    }
}

/// Every scenario module, for the `conformance!` macro.
mod all {
    pub use super::machine_scenarios::*;
    pub use super::release_scenarios::*;
    pub use super::scenarios::*;
}

/// Schema v7 drops `secret_members`: each version's kept listing becomes the record of its
/// values. What a coffer of schema v6 wrote, including versions from before v4 that have no
/// listing, must read the same after the upgrade, on both engines.
mod upgrade_to_v7 {
    use super::*;
    use coffer_store::NewMachine;
    use sqlx::AnyPool;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite() {
        let dir = tempfile::tempdir().unwrap();
        data_of_v6_reads_the_same(testing::sqlite_url_in(dir.path())).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        let Some(admin) = testing::require_postgres() else {
            return;
        };
        let db = testing::fresh_postgres_database(&admin).await;
        data_of_v6_reads_the_same(DatabaseUrl::parse(&db).unwrap()).await;
        testing::drop_postgres_database(&admin, &db).await;
    }

    /// A bound parameter.
    enum P<'a> {
        T(&'a str),
        I(i64),
        B(&'a [u8]),
        Null,
    }

    async fn exec(pool: &AnyPool, sql: &str, params: &[P<'_>]) {
        let mut q = sqlx::query(sql);
        for p in params {
            q = match p {
                P::T(t) => q.bind(t.to_string()),
                P::I(i) => q.bind(*i),
                P::B(b) => q.bind(b.to_vec()),
                P::Null => q.bind(None::<String>),
            };
        }
        q.execute(pool).await.unwrap();
    }

    async fn text(pool: &AnyPool, sql: &str) -> String {
        use sqlx::Row;
        sqlx::query(sql).fetch_one(pool).await.unwrap().get(0)
    }

    /// A value row: name, version, digest, created and updated; the ciphertext is derived.
    async fn value_row(pool: &AnyPool, app: &str, name: &str, v: i64, d: &str, c: i64, u: i64) {
        let ct = format!("sealed({name}@{v})");
        exec(
            pool,
            "INSERT INTO secret_values \
             (app_id, name, version, ciphertext, digest, value_len, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            &[
                P::T(app),
                P::T(name),
                P::I(v),
                P::B(ct.as_bytes()),
                P::T(d),
                P::I(d.len() as i64),
                P::I(c),
                P::I(u),
            ],
        )
        .await;
    }

    /// A version row and its members (name, value version).
    async fn version_rows(
        pool: &AnyPool,
        app: &str,
        version: i64,
        listing: Option<&str>,
        members: &[(&str, i64)],
    ) {
        exec(
            pool,
            "INSERT INTO secret_versions (app_id, version, actor, created_at, changes, listing) \
             VALUES ($1, $2, $3, $4, $5, $6)",
            &[
                P::T(app),
                P::I(version),
                P::T("tester"),
                P::I(1),
                P::T("[]"),
                listing.map_or(P::Null, P::T),
            ],
        )
        .await;
        for (name, value) in members {
            exec(
                pool,
                "INSERT INTO secret_members (app_id, version, name, value_version) \
                 VALUES ($1, $2, $3, $4)",
                &[P::T(app), P::I(version), P::T(name), P::I(*value)],
            )
            .await;
        }
    }

    fn listed(name: &str, v: i64, d: &str, c: i64, u: i64, deployed: bool) -> ListedSecret {
        ListedSecret {
            name: secret(name),
            value_version: v,
            digest: d.into(),
            value_len: d.len() as i64,
            created_at: c,
            updated_at: u,
            deployed,
        }
    }

    #[track_caller]
    fn assert_corrupt<T: std::fmt::Debug>(r: Result<T, StoreError>) {
        assert!(
            matches!(r, Err(StoreError::Corrupt(_))),
            "expected Corrupt, got {r:?}"
        );
    }

    /// The names and value versions of a snapshot, with the ciphertext each read.
    fn held(snapshot: &[StoredSecret]) -> Vec<(&str, i64, String)> {
        snapshot
            .iter()
            .map(|s| {
                let ct = String::from_utf8(s.ciphertext.clone()).unwrap();
                (s.name.as_str(), s.value_version, ct)
            })
            .collect()
    }

    async fn data_of_v6_reads_the_same(url: DatabaseUrl) {
        let pool = testing::database_at_schema(&url, 6).await.unwrap();
        // App "old", written before v4 (no listings): version 1 sets B and A, version 2 unsets
        // both, version 3 has B's value of version 1 again (as a rollback would) with new
        // values of A and C; deployed at 1.
        exec(
            &pool,
            "INSERT INTO apps (id, name, created_at, secrets_version, deployed_version) \
             VALUES ($1, $2, $3, $4, $5)",
            &[P::T("id-old"), P::T("old"), P::I(1), P::I(3), P::I(1)],
        )
        .await;
        for (name, v, d, c, u) in [
            ("B", 1, "db1", 100, 100),
            ("A", 1, "da1", 100, 100),
            ("A", 3, "da3x", 100, 300),
            ("C", 3, "dc3", 300, 300),
        ] {
            value_row(&pool, "id-old", name, v, d, c, u).await;
        }
        version_rows(&pool, "id-old", 1, None, &[("B", 1), ("A", 1)]).await;
        version_rows(&pool, "id-old", 2, None, &[]).await;
        version_rows(&pool, "id-old", 3, None, &[("C", 3), ("B", 1), ("A", 3)]).await;
        // App "new", written since v4: its listing is kept as it is.
        let kept = r#"[{"n":"K","v":1,"d":"dk1","l":3,"c":5,"u":5}]"#;
        exec(
            &pool,
            "INSERT INTO apps (id, name, created_at, secrets_version, deployed_version) \
             VALUES ($1, $2, $3, $4, $5)",
            &[P::T("id-new"), P::T("new"), P::I(1), P::I(1), P::I(1)],
        )
        .await;
        value_row(&pool, "id-new", "K", 1, "dk1", 5, 5).await;
        version_rows(&pool, "id-new", 1, Some(kept), &[("K", 1)]).await;
        // PostgreSQL has had no foreign keys on these rows since v5, so a member whose value is
        // missing could be there (SQLite's keys refuse it).
        let postgres = url.engine() == Engine::Postgres;
        if postgres {
            exec(
                &pool,
                "INSERT INTO apps (id, name, created_at, secrets_version, deployed_version) \
                 VALUES ($1, $2, $3, $4, $5)",
                &[P::T("id-broken"), P::T("broken"), P::I(1), P::I(1), P::I(1)],
            )
            .await;
            value_row(&pool, "id-broken", "Y", 1, "dy1", 5, 5).await;
            version_rows(&pool, "id-broken", 1, None, &[("X", 1), ("Y", 1)]).await;
        }

        let store = Store::open(&url, OpenMode::MustExist).await.unwrap();

        // The records are the same, listed and snapshot.
        let (app, now) = store.app_with_listing(&app_name("old")).await.unwrap();
        assert_eq!((app.secrets_version, app.deployed_version), (3, 1));
        assert_eq!(
            now,
            vec![
                listed("A", 3, "da3x", 100, 300, false),
                listed("B", 1, "db1", 100, 100, true),
                listed("C", 3, "dc3", 300, 300, false),
            ]
        );
        assert_eq!(
            store.listing("id-old", 1, 1).await.unwrap(),
            vec![
                listed("A", 1, "da1", 100, 100, true),
                listed("B", 1, "db1", 100, 100, true),
            ]
        );
        assert!(store.listing("id-old", 2, 1).await.unwrap().is_empty());
        assert!(store.snapshot("id-old", 2).await.unwrap().is_empty());
        assert_eq!(
            held(&store.snapshot("id-old", 1).await.unwrap()),
            [
                ("A", 1, "sealed(A@1)".to_string()),
                ("B", 1, "sealed(B@1)".to_string())
            ]
        );
        assert_eq!(
            held(&store.snapshot("id-old", 3).await.unwrap()),
            [
                ("A", 3, "sealed(A@3)".to_string()),
                ("B", 1, "sealed(B@1)".to_string()),
                ("C", 3, "sealed(C@3)".to_string())
            ]
        );
        assert_not_found(store.snapshot("id-old", 4).await, "secrets version");
        // Sorted by name, as the store writes listings.
        let first = text(
            &pool,
            "SELECT listing FROM secret_versions WHERE app_id = 'id-old' AND version = 1",
        )
        .await;
        let first: Vec<serde_json::Value> = serde_json::from_str(&first).unwrap();
        assert_eq!(
            first
                .iter()
                .map(|e| e["n"].as_str().unwrap())
                .collect::<Vec<_>>(),
            ["A", "B"]
        );
        assert_eq!(
            text(
                &pool,
                "SELECT listing FROM secret_versions WHERE app_id = 'id-new' AND version = 1"
            )
            .await,
            kept,
            "a kept listing is left as it was"
        );
        assert_eq!(
            store.listing("id-new", 1, 1).await.unwrap(),
            vec![listed("K", 1, "dk1", 5, 5, true)]
        );

        // A boot reads the members from the listing.
        store
            .register_host("h1", "dev", "http://127.0.0.1:1", "ab", b"hash")
            .await
            .unwrap();
        store
            .create_machine(NewMachine {
                id: "m1".into(),
                app_id: "id-old".into(),
                host_id: "h1".into(),
                name: "m-1".into(),
                config: super::machine_scenarios::config(),
                secrets_version: 3,
                release_version: 0,
            })
            .await
            .unwrap();
        assert_eq!(
            store.boot_facts("m1").await.unwrap().members,
            [
                ("A".to_string(), 3),
                ("B".to_string(), 1),
                ("C".to_string(), 3)
            ]
            .into()
        );

        // A write on top of a migrated version keeps what it does not change.
        store
            .write_v(change("id-old", 3, vec![value("D", "4")], &["A"], false))
            .await
            .unwrap();
        assert_eq!(
            held(&store.snapshot("id-old", 4).await.unwrap()),
            [
                ("B", 1, "sealed(B@1)".to_string()),
                ("C", 3, "sealed(C@3)".to_string()),
                ("D", 4, "sealed(D=4)".to_string())
            ]
        );

        // A member without its value is kept, and its version reads as corrupt rather than as
        // a version without that secret.
        if postgres {
            let listing = text(
                &pool,
                "SELECT listing FROM secret_versions WHERE app_id = 'id-broken' AND version = 1",
            )
            .await;
            let listing: Vec<serde_json::Value> = serde_json::from_str(&listing).unwrap();
            assert_eq!(listing.len(), 2);
            assert_eq!(
                (&listing[0]["n"], &listing[0]["d"]),
                (&"X".into(), &None::<String>.into())
            );
            assert_corrupt(store.snapshot("id-broken", 1).await);
            assert_corrupt(store.app_with_listing(&app_name("broken")).await);
        }

        // The members' table is gone, and no version can lose its listing.
        assert!(sqlx::query("SELECT count(*) FROM secret_members")
            .fetch_one(&pool)
            .await
            .is_err());
        let forget = "UPDATE secret_versions SET listing = NULL WHERE app_id = 'id-new'";
        assert!(sqlx::query(forget).execute(&pool).await.is_err());
        let unlisted = "INSERT INTO secret_versions (app_id, version, actor, created_at, changes) \
                        VALUES ('id-new', 2, 'tester', 1, '[]')";
        assert!(sqlx::query(unlisted).execute(&pool).await.is_err());
        assert_eq!(store.listing("id-new", 1, 1).await.unwrap().len(), 1);
        pool.close().await;
        store.close().await;
    }
}
