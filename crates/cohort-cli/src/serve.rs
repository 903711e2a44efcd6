//! `cohort serve`: the example users service as one cohort node.
//!
//! `GET /users/{id}` reads through the node's cache (`"source"` says whether the cache, the
//! key's owner on another node in partitioned mode, or the database answered),
//! `PUT /users/{id}` writes the database through `update`, `/healthz`, `/metrics` (Prometheus) and
//! `/cluster` (members, lease, lag) report on the node; the JSON bodies' shapes are in
//! [`crate::api`]. `/` is the live cluster page (`cohort_page`), refreshing from `/page.json`. The database holds a `users` table, created and seeded on first run, watched
//! through the change log so that writers bypassing the service are seen within the bound too.

use std::net::SocketAddr;
use std::path::PathBuf;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Json;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use cohort::{Cache, Cluster};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::api::{
    ClusterState, Events, Health, Link, LogState, MemberState, Ready, Rename, Source, UserRead,
    Written,
};
use crate::http_limits::{self, GuardedListener};
use crate::keys;
use crate::users_db::{UserRow, UsersDb};

/// Database connections a node opens.
pub(crate) const DB_CONNECTIONS: u32 = 8;

/// Options of `cohort serve`.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// This node's name, unique in the cluster [default: node-<peer port>].
    #[arg(long, env = "COHORT_NAME")]
    name: Option<String>,
    /// Where to serve HTTP (port 0: any free port, printed when ready).
    #[arg(long, env = "COHORT_HTTP", default_value = "127.0.0.1:8081")]
    http: SocketAddr,
    /// Where to accept peer links (port 0: any free port, printed when ready).
    #[arg(long, env = "COHORT_LISTEN", default_value = "127.0.0.1:7001")]
    listen: SocketAddr,
    /// The address peers should dial, when it differs from `--listen` (NAT, a proxy).
    #[arg(long, env = "COHORT_ADVERTISE")]
    advertise: Option<SocketAddr>,
    /// Peers to join through, comma-separated `host:port`.
    #[arg(long, env = "COHORT_SEEDS", value_delimiter = ',')]
    seeds: Vec<String>,
    /// The database: `sqlite://path` (created if missing) or `postgres://…`; the users table is
    /// created and seeded if missing.
    #[arg(long, env = "COHORT_DB", default_value = "sqlite://cohort-demo.db")]
    db: String,
    /// The staleness bound, e.g. `500ms` or `2s`.
    #[arg(long, env = "COHORT_MAX_STALENESS", default_value = "500ms", value_parser = parse_duration)]
    max_staleness: Duration,
    /// How long a member may stay unreached, or declared down, before this node forgets it,
    /// e.g. `30s` [default: 30s, or 4 × --max-staleness if longer]. A node restarted under the
    /// same name replaces its old entry at once.
    #[arg(long, env = "COHORT_FORGET_AFTER", value_parser = parse_duration)]
    forget_after: Option<Duration>,
    /// How long change-log rows are kept, e.g. `10m`.
    #[arg(long, env = "COHORT_LOG_RETENTION", default_value = "10m", value_parser = parse_duration)]
    log_retention: Duration,
    /// Users to create in a new database.
    #[arg(long, env = "COHORT_USERS", default_value_t = 1_000)]
    users: u64,
    /// What the cache promises, and where it keeps users: `bounded` (every node caches what it
    /// reads; no read older than the bound), `strong` (reads linearizable with respect to
    /// completed updates) or `partitioned` (each user cached once in the cluster, by its owner,
    /// and read from it by the other nodes; no read older than the bound).
    #[arg(long, env = "COHORT_MODE", value_enum, default_value_t = Consistency::Bounded)]
    mode: Consistency,
    /// Partitioned mode: how many bytes of copies of hot users owned by other nodes this node
    /// keeps, so they are read at local speed; 0 for none [default: 16777216].
    #[arg(long, env = "COHORT_HOT_COPIES_BYTES")]
    hot_copies_bytes: Option<u64>,
    /// A file of cluster keys, one per line (`cohort keygen` makes one), the first used to dial:
    /// peer links are then authenticated and encrypted. Read again on SIGHUP, for rotation.
    #[arg(long, env = "COHORT_CLUSTER_KEY_FILE")]
    cluster_key_file: Option<PathBuf>,
    /// Listen for peers beyond loopback without cluster keys: anything that reaches the peer
    /// port can then join, read every change and inject its own.
    #[arg(long, env = "COHORT_INSECURE")]
    insecure: bool,
    /// A TOML file of these flags (`max_staleness = "2s"`, `seeds = ["a:7001"]`, …), for those
    /// that neither the command line nor the environment sets.
    #[arg(long, env = "COHORT_CONFIG")]
    config: Option<PathBuf>,
    /// Serve cached values without checking that they are fresh: breaks the staleness bound on
    /// purpose, so that `cohort check` can show it catches it.
    #[arg(long, hide = true)]
    unsafe_ignore_leases: bool,
}

/// What `cohort serve`'s cache promises (and `demo`'s and `check`'s nodes').
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Consistency {
    /// No read returns a value older than the bound.
    Bounded,
    /// Once an update returns, no read returns the old value.
    Strong,
    /// Each key cached by one owner and asked of it by the other nodes; no read returns a value
    /// older than the bound.
    Partitioned,
}

impl Consistency {
    /// The cache mode that keeps this promise.
    pub(crate) fn mode(self) -> cohort::Mode {
        match self {
            Self::Bounded => cohort::Mode::Invalidate,
            Self::Strong => cohort::Mode::Strong,
            Self::Partitioned => cohort::Mode::Partitioned,
        }
    }

    /// The flag's value, as `--mode` takes it.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Bounded => "bounded",
            Self::Strong => "strong",
            Self::Partitioned => "partitioned",
        }
    }
}

/// Hot copies a partitioned node keeps by default, in bytes: 16 MiB, room for 60,000 users or
/// more (a user takes 20 to 270 bytes on the wire), a small share beside the million users it
/// may own.
pub(crate) const DEFAULT_HOT_COPIES_BYTES: u64 = 16 << 20;

/// Parses a duration flag: `250ms`, `2s`, `10m`, `1h 30m` (humantime's units).
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text)
        .map_err(|e| format!("{text:?} is not a duration like 500ms, 2s or 10m ({e})"))
}

/// A user as the service returns it and caches it.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct User {
    id: u64,
    name: String,
    version: u64,
}

fn user((id, name, version): UserRow) -> Arc<User> {
    Arc::new(User {
        id: id.unsigned_abs(),
        name,
        version: version.unsigned_abs(),
    })
}

/// Reads user `id` from the database: what a read that misses the cache runs, and what an owner
/// runs for the other nodes in partitioned mode.
async fn load_user(db: UsersDb, id: u64) -> Result<Arc<User>, sqlx::Error> {
    // An id past i64 (which a peer may ask an owner for) names no row.
    let id = i64::try_from(id).map_err(|_| sqlx::Error::RowNotFound)?;
    db.user(id).await.map(user)
}

#[derive(Clone)]
struct App {
    cluster: Cluster,
    users: Cache<u64, Arc<User>>,
    db: UsersDb,
    /// The seeds this node was given: a node with none has joined from the start.
    seeded: Arc<[String]>,
}

/// Runs the service until SIGTERM or ctrl-c.
pub(crate) async fn run(args: Args) -> anyhow::Result<bool> {
    if let Some(path) = &args.config {
        tracing::info!(path = %path.display(), "flags not given otherwise read from the config file");
    }
    if args.hot_copies_bytes.is_some() && args.mode != Consistency::Partitioned {
        anyhow::bail!("--hot-copies-bytes is for --mode partitioned only");
    }
    let db = UsersDb::connect(&args.db, DB_CONNECTIONS).await?;
    db.ensure_users(args.users).await?;
    let mut builder = Cluster::builder();
    builder
        .listen(args.listen)
        .seeds(args.seeds.iter().filter(|s| !s.is_empty()).cloned())
        .max_staleness(args.max_staleness)
        .log_retention(args.log_retention)
        .insecure(args.insecure)
        .change_log(db.change_log())
        .unsafe_ignore_leases(args.unsafe_ignore_leases);
    if let Some(name) = &args.name {
        builder.node_name(name);
    }
    if let Some(addr) = args.advertise {
        builder.advertise(addr);
    }
    if let Some(grace) = args.forget_after {
        builder.forget_after(grace);
    }
    if let Some(path) = &args.cluster_key_file {
        builder.cluster_keys(keys::read_key_file(path)?);
    }
    let cluster = builder.start().await?;
    if let Some(path) = args.cluster_key_file.clone() {
        tokio::spawn(reload_keys_on_hangup(cluster.clone(), path));
    }
    let mut users = cluster.cache::<u64, Arc<User>>("users");
    users
        .capacity(1_000_000)
        .mode(args.mode.mode())
        // In partitioned mode updates carry the new row to its owner (and hot copies), which
        // keep the higher version instead of only dropping it; in every mode the change log's
        // row of this node's own update spares the copies that already have it.
        .version(|user| user.version)
        .watch_table("users", "id")
        .version_column("version");
    if args.mode == Consistency::Partitioned {
        let db = db.clone();
        users
            // What this node loads for the others, as the owner: the read `GET /users/{id}` makes.
            .loader(move |id| load_user(db.clone(), id))
            .hot_copies(args.hot_copies_bytes.unwrap_or(DEFAULT_HOT_COPIES_BYTES));
    }
    let users = users.build()?;
    let http = tokio::net::TcpListener::bind(args.http)
        .await
        .with_context(|| format!("cannot serve HTTP on {}", args.http))?;
    let app_db = db.display();
    let page = cohort_page::Page::start(&cluster);
    let app = App {
        cluster: cluster.clone(),
        users,
        db,
        seeded: args
            .seeds
            .iter()
            .filter(|s| !s.is_empty())
            .cloned()
            .collect(),
    };
    let router = axum::Router::new()
        .route("/users/{id}", get(read_user).put(write_user))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/cluster", get(cluster_state))
        // The live cluster page, and the JSON it refreshes from.
        .route_service("/", page.clone())
        .route_service(&format!("/{}", cohort_page::JSON_PATH), page)
        .layer(axum::middleware::from_fn(http_limits::request_timeout))
        .layer(DefaultBodyLimit::max(http_limits::MAX_BODY_BYTES))
        .with_state(app);
    println!(
        "serve: node={} http={} listen={} advertise={} db={} ready",
        cluster.node_id(),
        http.local_addr()?,
        cluster.bound_addr(),
        cluster.local_addr(),
        app_db
    );
    axum::serve(GuardedListener::new(http), router)
        .with_graceful_shutdown(shutdown_signal())
        .await
        .context("the HTTP server failed")?;
    cluster.shutdown().await;
    Ok(true)
}

/// Reads the key file again on every SIGHUP and makes it the node's keyring: how a key is
/// rotated without a restart (see the README). A file that cannot be read changes nothing.
async fn reload_keys_on_hangup(cluster: Cluster, path: PathBuf) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hangups) = signal(SignalKind::hangup()) else {
            return;
        };
        while hangups.recv().await.is_some() {
            let reloaded =
                keys::read_key_file(&path).and_then(|keys| Ok(cluster.set_cluster_keys(keys)?));
            match reloaded {
                Ok(()) => eprintln!("serve: cluster keys reloaded from {}", path.display()),
                Err(error) => eprintln!("serve: cluster keys not reloaded: {error:#}"),
            }
        }
    }
    #[cfg(not(unix))]
    let _ = (cluster, path);
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}

/// An HTTP error with a JSON body.
struct Failure(StatusCode, String);

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

impl From<sqlx::Error> for Failure {
    /// What went wrong inside the database is logged, not told to clients.
    fn from(error: sqlx::Error) -> Self {
        match error {
            sqlx::Error::RowNotFound => Self(StatusCode::NOT_FOUND, "no such user".into()),
            other => {
                tracing::error!(error = %other, "a database request failed");
                Self(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the database is unavailable".into(),
                )
            }
        }
    }
}

/// The longest name a user may be given, in bytes.
const MAX_NAME_BYTES: usize = 256;

/// A user id: a non-negative integer that fits the database's `i64`.
fn user_id(text: &str) -> Result<u64, Failure> {
    text.parse::<i64>()
        .ok()
        .and_then(|id| u64::try_from(id).ok())
        .ok_or_else(|| {
            let shown: String = text.chars().take(32).collect();
            Failure(
                StatusCode::BAD_REQUEST,
                format!("{shown:?} is not a user id (0 to 2^63 - 1)"),
            )
        })
}

async fn read_user(State(app): State<App>, Path(id): Path<String>) -> Result<Response, Failure> {
    let id = user_id(&id)?;
    let fetched = app
        .users
        .fetch(&id, |id| load_user(app.db.clone(), id))
        .await?;
    let source = match fetched.source {
        cohort::Source::Cache => Source::Cache,
        cohort::Source::Owner => Source::Owner,
        cohort::Source::OwnerSkipped => Source::OwnerSkipped,
        // Loaded, Bypassed, and whatever a later cohort adds: read from the database here.
        _ => Source::Db,
    };
    let user = &fetched.value;
    Ok(Json(UserRead {
        id: user.id,
        name: user.name.clone(),
        source,
        version: user.version,
    })
    .into_response())
}

async fn write_user(
    State(app): State<App>,
    Path(id): Path<String>,
    body: Result<Json<Rename>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, Failure> {
    let id = user_id(&id)?;
    let Json(Rename { name }) = body.map_err(|e| Failure(e.status(), e.body_text()))?;
    if name.is_empty() || name.len() > MAX_NAME_BYTES {
        return Err(Failure(
            StatusCode::BAD_REQUEST,
            format!("a name is 1 to {MAX_NAME_BYTES} bytes"),
        ));
    }
    let db = app.db.clone();
    let receipt = app
        .users
        .update(&id, |id| async move {
            db.rename(id as i64, &name).await.map(user)
        })
        .await
        .map_err(|e| match e {
            cohort::UpdateError::Write(e) => Failure::from(e),
            fenced @ cohort::UpdateError::Fenced => {
                Failure(StatusCode::SERVICE_UNAVAILABLE, fenced.to_string())
            }
            other => Failure(StatusCode::INTERNAL_SERVER_ERROR, other.to_string()),
        })?;
    Ok(Json(Written {
        id,
        version: receipt.value.version,
    })
    .into_response())
}

async fn healthz(State(app): State<App>) -> Response {
    Json(Health {
        node: app.cluster.node_id().to_string(),
        serving: app.users.is_serving(),
        status: "ok".to_owned(),
    })
    .into_response()
}

/// `GET /readyz`: 200 once the node joined (it reached a peer; or it was given no seeds, or
/// every seed turned out to be itself: a cluster of one) and its cache serves from memory; 503
/// otherwise. A load balancer sends traffic only to ready nodes; an unready one still answers
/// reads, from the database.
async fn readyz(State(app): State<App>) -> Response {
    let members = app.cluster.members();
    let joined = app.seeded.is_empty()
        || members.iter().any(|m| m.connected)
        || members.iter().all(|m| m.node.is_some());
    let serving = app.users.is_serving();
    let status = if joined && serving {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let ready = Ready {
        node: app.cluster.node_id().to_string(),
        ready: status == StatusCode::OK,
        joined,
        serving,
    };
    (status, Json(ready)).into_response()
}

async fn metrics(State(app): State<App>) -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        app.cluster.prometheus(),
    )
        .into_response()
}

async fn cluster_state(State(app): State<App>) -> Response {
    let millis = |d: Option<Duration>| d.map(|d| d.as_millis() as u64);
    let members = app
        .cluster
        .members()
        .into_iter()
        .map(|m| MemberState {
            addr: m.addr,
            incarnation: m.incarnation,
            last_heard_ms: millis(m.last_heard),
            live: m.live,
            node: m.node.map(|n| n.to_string()),
            state: if m.connected {
                Link::Connected
            } else {
                Link::Connecting
            },
            swim: m.swim.map(|s| s.to_string()),
            up: m.up,
        })
        .collect();
    let change_log = app.cluster.change_log_status().map(|log| LogState {
        cursor: log.cursor,
        errors: log.errors,
        lag_rows: log.behind_rows,
        last_error: log.last_error,
        last_poll_age_ms: millis(log.last_poll_age),
        lease_remaining_ms: millis(log.lease_remaining),
        polls: log.polls,
        pruned_flushes: log.pruned_flushes,
        serving: log.serving,
    });
    let stats = app.cluster.stats();
    Json(ClusterState {
        change_log,
        events: Events {
            applied: stats.events_applied,
            auth_failures: stats.auth_failures,
            frames_rejected: stats.frames_rejected,
            gaps: stats.gaps,
            members_forgotten: stats.members_forgotten,
            members_refused: stats.members_refused,
            sent: stats.events_sent,
        },
        incarnation: app.cluster.incarnation(),
        listen: app.cluster.local_addr(),
        max_staleness_ms: app.cluster.max_staleness().as_millis() as u64,
        members,
        node: app.cluster.node_id().to_string(),
    })
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("1h 30m"), Ok(Duration::from_secs(5_400)));
        for bad in ["10", "fast", "5 parsecs", ""] {
            let error = parse_duration(bad).unwrap_err();
            assert!(error.contains("not a duration like 500ms"), "{error}");
        }
    }
}
