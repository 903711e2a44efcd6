//! The fail-safe read with the database really down: three nodes meshed over TCP, their
//! Postgres server stopped and started again.

use std::time::Duration;

use cohort::{Cache, ChangeLog, Cluster, Source};
use cohort_testkit::{Postgres, wait};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use tokio::time::Instant;

use super::cluster::{applied, wait_linked};
use super::{BOUND, User, database};

/// More than a tick of the coarse clock the ages are read from.
const TICK: Duration = Duration::from_millis(20);

/// Long enough for any age this test sees, so that only the loader decides.
const ANY_AGE: Duration = Duration::from_secs(600);

/// A node meshed with `seed`'s, if given, tailing the log through its own pool, which gives up
/// on a connection after 300 ms (a load against a stopped server fails rather than waits).
async fn node(server: &Postgres, seed: Option<&Cluster>) -> (Cluster, Cache<u64, User>, PgPool) {
    let db = PgPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(Duration::from_millis(300))
        .connect(&server.url())
        .await
        .unwrap();
    let mut builder = Cluster::builder();
    builder
        .max_staleness(BOUND)
        .change_log(ChangeLog::postgres(db.clone()));
    if let Some(seed) = seed {
        builder.seeds([seed.local_addr().to_string()]);
    }
    let cluster = builder.start().await.unwrap();
    let users = cluster
        .cache::<u64, User>("users")
        .watch_table("users", "id")
        .build()
        .unwrap();
    users.ready(wait::PATIENCE).await.unwrap();
    (cluster, users, db)
}

async fn select(db: PgPool, id: u64) -> Result<User, sqlx::Error> {
    sqlx::query_as("SELECT name, version FROM users WHERE id = $1")
        .bind(id as i64)
        .fetch_one(&db)
        .await
}

async fn fetch_or_stale(
    users: &Cache<u64, User>,
    db: &PgPool,
    id: u64,
    max_age: Duration,
) -> Result<(User, Source), sqlx::Error> {
    let fetched = users
        .fetch_or_stale(&id, |id| select(db.clone(), id), max_age)
        .await?;
    Ok((fetched.value, fetched.source))
}

fn age(source: Source) -> Duration {
    match source {
        Source::Stale { age } => age,
        other => panic!("a stale value, not one from {other:?}"),
    }
}

/// With the server up, `fetch_or_stale` is a plain read. Once it is down and the leases lapsed,
/// a node answers a key it still holds as stale, with an age that covers the outage and grows,
/// and only while the age is under `max_age`; a key a newer write dropped, a key never held and
/// a loader that succeeds are never answered stale. With the server back, reads are fresh again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_value_only_while_the_database_is_down_and_within_its_age() {
    let (server, _) = database().await;
    let a = node(&server, None).await;
    let b = node(&server, Some(&a.0)).await;
    let c = node(&server, Some(&a.0)).await;
    let nodes = [a, b, c];
    for (cluster, ..) in &nodes {
        wait_linked(cluster, 2).await;
    }
    for (_, users, db) in &nodes {
        for id in 1..=3 {
            fetch_or_stale(users, db, id, ANY_AGE).await.unwrap();
            let (_, source) = fetch_or_stale(users, db, id, ANY_AGE).await.unwrap();
            assert_eq!(source, Source::Cache, "up: a plain hit");
        }
    }
    // A rename through b before the outage: a and c drop user 1.
    let mut events: Vec<_> = nodes.iter().map(|(c, ..)| c.subscribe()).collect();
    let renamed = {
        let db = nodes[1].2.clone();
        nodes[1]
            .1
            .update(&1, |id| async move {
                sqlx::query_as::<_, User>(
                    "UPDATE users SET name = 'grace', version = version + 1 WHERE id = $1 \
                     RETURNING name, version",
                )
                .bind(id as i64)
                .fetch_one(&db)
                .await
            })
            .await
            .unwrap()
    };
    for i in [0, 2] {
        applied(&mut events[i], &renamed.event).await;
    }

    let stop = {
        let server = &server;
        tokio::task::block_in_place(|| server.stop())
    };
    stop.expect("the server stops");
    let down = Instant::now();
    for (cluster, users, _) in &nodes {
        wait::until(&mut cluster.subscribe(), || !users.is_serving())
            .await
            .expect("the lease lapses with the database down");
    }

    let (a_users, a_db) = (&nodes[0].1, &nodes[0].2);
    let since_down = down.elapsed();
    let (user, source) = fetch_or_stale(a_users, a_db, 2, ANY_AGE).await.unwrap();
    assert_eq!(user, ("user 2".to_owned(), 1));
    let first_age = age(source);
    // Last proven by a poll before the server stopped, and within the bound of it; the coarse
    // clock may read up to a tick behind.
    assert!(
        first_age + TICK >= since_down,
        "{first_age:?}: at least as old as the outage ({since_down:?})"
    );
    assert!(
        first_age < down.elapsed() + BOUND,
        "{first_age:?}: current within the bound before the outage"
    );
    let (_, source) = fetch_or_stale(a_users, a_db, 2, ANY_AGE).await.unwrap();
    assert!(age(source) >= first_age, "the age grows");
    assert!(
        fetch_or_stale(a_users, a_db, 2, first_age).await.is_err(),
        "older than max_age: the loader's error"
    );
    assert!(
        fetch_or_stale(a_users, a_db, 1, ANY_AGE).await.is_err(),
        "a newer write dropped it: never served stale"
    );
    assert!(
        fetch_or_stale(a_users, a_db, 7, ANY_AGE).await.is_err(),
        "never held"
    );
    let elsewhere = a_users
        .fetch_or_stale(
            &3,
            |_| async { Ok::<_, sqlx::Error>(("from a replica".to_owned(), 1)) },
            ANY_AGE,
        )
        .await
        .unwrap();
    assert_eq!(
        elsewhere.source,
        Source::Bypassed,
        "a loader that succeeds is used"
    );
    for (_, users, db) in &nodes[1..] {
        let (user, source) = fetch_or_stale(users, db, 3, ANY_AGE).await.unwrap();
        assert_eq!(user.0, "user 3");
        age(source);
    }

    tokio::task::block_in_place(|| server.start_again()).expect("the server starts again");
    for (_, users, db) in &nodes {
        users.ready(wait::PATIENCE).await.unwrap();
        let (user, source) = fetch_or_stale(users, db, 2, ANY_AGE).await.unwrap();
        assert_eq!(user.0, "user 2");
        assert!(
            matches!(source, Source::Cache | Source::Loaded),
            "{source:?}"
        );
    }
}
