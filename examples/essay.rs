//! The seed essay's scenario, fixed: a user is cached on server a, renames themselves through
//! server b, comes back to server a and sees the new name.
//!
//! Two cohort nodes in one process stand for the two servers; one SQLite file is the database.
//! Run it with `cargo run -p cohort-examples --bin essay`.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use cohort::{Cache, Cluster, ClusterEvent};
use serde::{Deserialize, Serialize};
use sqlx::SqlitePool;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode};

#[derive(Clone, Debug, Serialize, Deserialize)]
struct User {
    name: String,
}

/// One server: a cohort node with a cache of users in front of the shared database.
struct Server {
    cluster: Cluster,
    users: Cache<u64, Arc<User>>,
    db: SqlitePool,
}

impl Server {
    async fn start(name: &str, seeds: &[String], db: SqlitePool) -> anyhow::Result<Self> {
        let cluster = Cluster::builder()
            .node_name(name)
            .seeds(seeds.iter().cloned())
            .start()
            .await?;
        let users = cluster
            .cache::<u64, Arc<User>>("users")
            .capacity(100_000)
            .build()?;
        Ok(Self { cluster, users, db })
    }

    async fn show(&self, id: u64) -> anyhow::Result<Arc<User>> {
        let db = self.db.clone();
        Ok(self
            .users
            .get_or_load(&id, |id| async move {
                let (name,): (String,) = sqlx::query_as("SELECT name FROM users WHERE id = ?")
                    .bind(id as i64)
                    .fetch_one(&db)
                    .await?;
                Ok::<_, sqlx::Error>(Arc::new(User { name }))
            })
            .await?)
    }

    async fn rename(&self, id: u64, name: &str) -> anyhow::Result<cohort::EventId> {
        let (db, name) = (self.db.clone(), name.to_owned());
        let receipt = self
            .users
            .update(&id, |id| async move {
                sqlx::query("UPDATE users SET name = ? WHERE id = ?")
                    .bind(&name)
                    .bind(id as i64)
                    .execute(&db)
                    .await?;
                Ok::<_, sqlx::Error>(Arc::new(User { name }))
            })
            .await?;
        Ok(receipt.event)
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let options = SqliteConnectOptions::new()
        .filename(dir.path().join("essay.db"))
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal);
    let db = SqlitePool::connect_with(options)
        .await
        .context("open the database")?;
    sqlx::query("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT NOT NULL)")
        .execute(&db)
        .await?;
    sqlx::query("INSERT INTO users VALUES (1, 'Ada')")
        .execute(&db)
        .await?;

    let a = Server::start("server-a", &[], db.clone()).await?;
    let b = Server::start("server-b", &[a.cluster.local_addr().to_string()], db).await?;
    let linked = async { tokio::join!(a.cluster.wait_for_peers(1), b.cluster.wait_for_peers(1)) };
    tokio::time::timeout(Duration::from_secs(5), linked)
        .await
        .context("the servers did not link")?;

    println!(
        "server-a shows {:?} (now cached on a)",
        a.show(1).await?.name
    );
    let mut heard_on_a = a.cluster.subscribe();
    let event = b.rename(1, "Grace").await?;
    println!("renamed to \"Grace\" through server-b");
    // Waits for server-a to apply the change; over loopback that takes well under a millisecond.
    loop {
        if let ClusterEvent::Applied { event: applied, .. } = heard_on_a.recv().await?
            && applied == event
        {
            break;
        }
    }
    println!("server-a shows {:?}", a.show(1).await?.name);
    Ok(())
}
