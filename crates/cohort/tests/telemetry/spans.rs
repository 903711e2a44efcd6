//! The spans a node opens, as a subscriber of the application's sees them. The subscriber is
//! the process's global one: tracing decides once per call site, for the whole process, whether
//! any subscriber wants it, and a subscriber set for one thread can miss the call sites another
//! thread reached first. Tests tell their spans apart by their nodes' names.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fmt;
use std::sync::{Arc, LazyLock, Mutex, Once};

use cohort::{ChangeLog, Cluster};
use cohort_testkit::wait;
use sqlx::SqlitePool;
use sqlx::sqlite::SqliteConnectOptions;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

/// A span as it was opened: its name and its fields, as text.
#[derive(Clone, Debug)]
struct Opened {
    name: &'static str,
    fields: BTreeMap<&'static str, String>,
}

impl Opened {
    fn field(&self, name: &str) -> Option<&str> {
        self.fields.get(name).map(String::as_str)
    }
}

/// Every span opened in this process.
#[derive(Clone, Default)]
struct Spans(Arc<Mutex<Vec<Opened>>>);

/// The spans, recorded from the first call on.
fn spans() -> &'static Spans {
    static SPANS: LazyLock<Spans> = LazyLock::new(Spans::default);
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let subscriber = tracing_subscriber::registry().with(SPANS.clone());
        tracing::subscriber::set_global_default(subscriber).expect("the only subscriber");
    });
    &SPANS
}

impl Spans {
    /// The spans opened by `node`.
    fn of(&self, node: &str) -> Vec<Opened> {
        let spans = self.0.lock().unwrap();
        let node = Some(node);
        spans
            .iter()
            .filter(|s| s.field("node") == node)
            .cloned()
            .collect()
    }

    /// The spans named `name` opened by `node`.
    fn named(&self, name: &str, node: &str) -> Vec<Opened> {
        let mut spans = self.of(node);
        spans.retain(|s| s.name == name);
        spans
    }
}

impl<S: tracing::Subscriber> Layer<S> for Spans {
    fn on_new_span(&self, attrs: &Attributes<'_>, _: &Id, _: Context<'_, S>) {
        let mut fields = Fields::default();
        attrs.record(&mut fields);
        self.0.lock().unwrap().push(Opened {
            name: attrs.metadata().name(),
            fields: fields.0,
        });
    }

    /// Events are kept as spans named [`EVENT`], their message a field.
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        self.0.lock().unwrap().push(Opened {
            name: EVENT,
            fields: fields.0,
        });
    }
}

/// The name under which events are recorded.
const EVENT: &str = "event";

#[derive(Default)]
struct Fields(BTreeMap<&'static str, String>);

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name(), value.to_owned());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.insert(field.name(), format!("{value:?}"));
    }
}

/// A database file with a `users` table keyed by text.
async fn database(dir: &std::path::Path) -> SqlitePool {
    let options = SqliteConnectOptions::new()
        .filename(dir.join("app.db"))
        .create_if_missing(true);
    let db = SqlitePool::connect_with(options).await.unwrap();
    sqlx::query("CREATE TABLE users (id TEXT PRIMARY KEY, name TEXT NOT NULL)")
        .execute(&db)
        .await
        .unwrap();
    db
}

#[tokio::test]
async fn loads_updates_invalidations_and_flushes_are_traced_by_key_hash_not_key() {
    let spans = spans();
    let dir = tempfile::tempdir().unwrap();
    let db = database(dir.path()).await;
    let cluster = Cluster::builder()
        .node_name("traced")
        .change_log(ChangeLog::sqlite(db.clone()))
        .start()
        .await
        .unwrap();
    // Keys are "user:<name>"; a logged key of another shape does not parse, and flushes.
    let users = cluster
        .cache::<String, String>("users")
        .watch_table_with("users", "id", |id| {
            id.starts_with("user:").then(|| id.to_owned())
        })
        .build()
        .unwrap();
    let key = "user:ada".to_owned();
    wait::poll(async || users.is_serving().then_some(()))
        .await
        .expect("the first poll of the log");

    let load = |_| async { Ok::<_, Infallible>("Ada".to_owned()) };
    users.get_or_load(&key, load).await.unwrap();
    users.get_or_load(&key, load).await.unwrap();
    users
        .update(&key, |_| async { Ok::<_, Infallible>("Ada L.".to_owned()) })
        .await
        .unwrap();
    users.invalidate(&key).await.unwrap();
    sqlx::query("INSERT INTO cohort_changes (cache, key) VALUES ('users', 'not a key')")
        .execute(&db)
        .await
        .unwrap();
    wait::poll(async || (users.stats().flushes == 1).then_some(()))
        .await
        .expect("the flush of the unparsable row");

    let node = "traced";
    let loads = spans.named("cohort.load", node);
    assert_eq!(loads.len(), 1, "the second read hit: {:?}", spans.of(node));
    assert_eq!(loads[0].field("reason"), Some("miss"));
    let [update] = &spans.named("cohort.update", node)[..] else {
        panic!("one update span: {:?}", spans.of(node));
    };
    let [invalidate] = &spans.named("cohort.invalidate", node)[..] else {
        panic!("one invalidate span: {:?}", spans.of(node));
    };
    for span in [&loads[0], update, invalidate] {
        assert_eq!(span.field("cache"), Some("users"), "{span:?}");
        assert_eq!(
            span.field("key_hash"),
            loads[0].field("key_hash"),
            "one key, one hash: {span:?}"
        );
    }
    assert!(
        loads[0]
            .field("key_hash")
            .is_some_and(|h| h.parse::<u64>().is_ok()),
        "{loads:?}"
    );
    let flushes = spans.named("cohort.flush", node);
    assert!(
        flushes.iter().any(|s| s.field("cache") == Some("users")),
        "{flushes:?}"
    );
    for span in spans.of(node) {
        assert!(
            span.fields.values().all(|value| !value.contains("ada")),
            "a span shows the key: {span:?}"
        );
    }
    cluster.shutdown().await;
}

/// A service that reads before its cache first served is told once why nothing is cached.
#[tokio::test]
async fn reads_before_the_cache_first_served_are_logged_once() {
    let spans = spans();
    let dir = tempfile::tempdir().unwrap();
    let db = database(dir.path()).await;
    let cluster = Cluster::builder()
        .node_name("unready")
        .change_log(ChangeLog::sqlite(db.clone()))
        .start()
        .await
        .unwrap();
    // With its database gone the cache never serves: every read below comes before.
    db.close().await;
    let users = cluster
        .cache::<String, String>("users")
        .watch_table("users", "id")
        .build()
        .unwrap();
    let load = |_| async { Ok::<_, Infallible>("Ada".to_owned()) };
    for _ in 0..3 {
        users
            .get_or_load(&"user:ada".to_owned(), load)
            .await
            .unwrap();
        assert_eq!(users.get(&"user:ada".to_owned()), None);
    }
    let told: Vec<_> = spans
        .named(EVENT, "unready")
        .into_iter()
        .filter(|e| {
            e.field("message")
                .is_some_and(|m| m.contains("Cache::ready"))
        })
        .collect();
    assert_eq!(told.len(), 1, "{:?}", spans.of("unready"));
    assert_eq!(told[0].field("cache"), Some("users"));
}

#[tokio::test]
async fn members_coming_and_leaving_are_traced() {
    let spans = spans();
    let a = Cluster::builder()
        .node_name("member-a")
        .start()
        .await
        .unwrap();
    let b = Cluster::builder()
        .node_name("member-b")
        .seeds([a.local_addr().to_string()])
        .start()
        .await
        .unwrap();
    wait::within(a.wait_for_peers(1))
        .await
        .expect("a links to b");
    let on_a = |change: &str| {
        spans
            .named("cohort.membership", "member-a")
            .into_iter()
            .find(|s| {
                s.field("change") == Some(change)
                    && s.field("members").is_some_and(|m| m.contains("member-b"))
            })
    };
    wait::poll(async || on_a("member_up"))
        .await
        .unwrap_or_else(|e| panic!("b up on a ({e}): {:?}", spans.of("member-a")));

    b.shutdown().await;
    wait::poll(async || on_a("member_left"))
        .await
        .unwrap_or_else(|e| panic!("b left on a ({e}): {:?}", spans.of("member-a")));
    a.shutdown().await;
}
