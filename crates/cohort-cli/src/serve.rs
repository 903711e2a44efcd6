//! `cohort serve`: the example users service as one cohort node.
//!
//! `GET /users/{id}` reads through the node's cache (`"source"` says whether the cache, the
//! key's owner on another node in partitioned mode, or the database answered), `GET
//! /users?ids=1,2,3` reads many at once (every miss in one query), `PUT /users/{id}` writes the
//! database through `update`, `PUT /teams/{id}` renames a team and invalidates its users' tag,
//! `POST /users/clear` bumps every team and clears the cache on every node; `/healthz`,
//! `/metrics` (Prometheus) and `/cluster` (members, lease, lag) report on the node; the JSON
//! bodies' shapes are in [`crate::api`]. `/` is the live cluster page (`cohort_page`),
//! refreshing from `/page.json`. The database holds a `users` table, created and seeded on first
//! run, watched through the change log so that writers bypassing the service are seen within
//! the bound too, and a `teams` table that is not watched: changes to it reach the caches only
//! through tag invalidations and clears.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Json;
use axum::extract::{DefaultBodyLimit, Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use cohort::{Cache, Cluster};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::api::{
    Cleared, ClusterState, Events, Health, Link, LogState, MemberState, Ready, Rename, Source,
    TeamWritten, UserRead, Written,
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

/// A user as the service caches it, with its team's name: a team's rename changes every one of
/// its users, and reaches their cached copies as a tag invalidation (`team:<id>`).
#[derive(Clone, Debug, Serialize, Deserialize)]
struct User {
    id: u64,
    name: String,
    /// The users row's version column, which the change log compares with cached copies.
    version: u64,
    team: u64,
    team_name: String,
    team_version: u64,
}

impl User {
    /// The version reads report: the user's row and its team's both only grow, so their sum
    /// grows with every change of what a read shows.
    fn shown_version(&self) -> u64 {
        self.version + self.team_version
    }

    /// How `GET /users/{id}` shows it.
    fn read(&self, source: Source) -> UserRead {
        UserRead {
            age_ms: None,
            id: self.id,
            name: self.name.clone(),
            source,
            team: self.team_name.clone(),
            version: self.shown_version(),
        }
    }
}

fn user(row: UserRow) -> Arc<User> {
    Arc::new(User {
        id: row.id.unsigned_abs(),
        name: row.name,
        version: row.version.unsigned_abs(),
        team: row.team.unsigned_abs(),
        // A row naming a team that does not exist (an outside writer's) shows no team.
        team_name: row.team_name.unwrap_or_default(),
        team_version: row.team_version.unwrap_or(0).unsigned_abs(),
    })
}

/// The tag of a team's users.
fn team_tag(team: u64) -> String {
    format!("team:{team}")
}

/// Reads user `id` from the database: what a read that misses the cache runs, and what an owner
/// runs for the other nodes in partitioned mode.
async fn load_user(db: UsersDb, id: u64) -> Result<Arc<User>, sqlx::Error> {
    // An id past i64 (which a peer may ask an owner for) names no row.
    let id = i64::try_from(id).map_err(|_| sqlx::Error::RowNotFound)?;
    db.user(id).await.map(user)
}

/// Reads the users of `ids` that exist, in one query: what a batch read runs for its misses.
async fn load_users(db: UsersDb, ids: Vec<u64>) -> Result<Vec<(u64, Arc<User>)>, sqlx::Error> {
    let ids: Vec<i64> = ids
        .into_iter()
        .filter_map(|id| i64::try_from(id).ok())
        .collect();
    let rows = db.users(&ids).await?;
    Ok(rows
        .into_iter()
        .map(|row| {
            let user = user(row);
            (user.id, user)
        })
        .collect())
}

#[derive(Clone)]
struct App {
    cluster: Cluster,
    users: Cache<u64, Arc<User>>,
    db: UsersDb,
    mode: Consistency,
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
    users.tags(|user: &Arc<User>| [team_tag(user.team)]);
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
        mode: args.mode,
        seeded: args
            .seeds
            .iter()
            .filter(|s| !s.is_empty())
            .cloned()
            .collect(),
    };
    let router = axum::Router::new()
        .route("/users", get(read_users))
        .route("/users/clear", post(clear_users))
        .route("/users/{id}", get(read_user).put(write_user))
        .route("/teams/{id}", put(write_team))
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
    row_id(text, "user")
}

/// The id of a row of `table`: a non-negative integer that fits the database's `i64`.
fn row_id(text: &str, table: &str) -> Result<u64, Failure> {
    text.parse::<i64>()
        .ok()
        .and_then(|id| u64::try_from(id).ok())
        .ok_or_else(|| {
            let shown: String = text.chars().take(32).collect();
            Failure(
                StatusCode::BAD_REQUEST,
                format!("{shown:?} is not a {table} id (0 to 2^63 - 1)"),
            )
        })
}

/// `GET /users/{id}`, and with `?max_stale=10s` the fail-safe: if the database fails (or does
/// not answer within a quarter of the bound), the value the node still holds, if younger than
/// that (`"source": "stale"`, with `age_ms`).
async fn read_user(
    State(app): State<App>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, Failure> {
    let id = user_id(&id)?;
    let max_stale = max_stale(query.as_deref())?;
    let fetched = match max_stale {
        Some(max_age) => {
            // A fail-safe read takes a database that does not answer within a quarter of the
            // bound (a change-log poll's interval) as down, as one that refuses: a stalled
            // connection would otherwise hold the read.
            let patience = app.cluster.max_staleness() / 4;
            let load = |id| async move {
                match tokio::time::timeout(patience, load_user(app.db.clone(), id)).await {
                    Ok(loaded) => loaded.map_err(Failure::from),
                    Err(_) => Err(Failure(
                        StatusCode::GATEWAY_TIMEOUT,
                        format!("the database did not answer within {patience:?}"),
                    )),
                }
            };
            app.users.fetch_or_stale(&id, load, max_age).await?
        }
        None => {
            let load = |id| load_user(app.db.clone(), id);
            app.users.fetch(&id, load).await?
        }
    };
    let (source, age) = match fetched.source {
        cohort::Source::Cache => (Source::Cache, None),
        cohort::Source::Owner => (Source::Owner, None),
        cohort::Source::OwnerSkipped => (Source::OwnerSkipped, None),
        // Rounded up: an age is never understated.
        cohort::Source::Stale { age } => (Source::Stale, Some(age.as_micros().div_ceil(1_000))),
        // Loaded, Bypassed, and whatever a later cohort adds: read from the database here.
        _ => (Source::Db, None),
    };
    let mut read = fetched.value.read(source);
    read.age_ms = age.map(|ms| ms as u64);
    Ok(Json(read).into_response())
}

/// The `?max_stale=10s` of a read: how old a value the client takes when the database fails.
fn max_stale(query: Option<&str>) -> Result<Option<Duration>, Failure> {
    let Some(text) = query
        .unwrap_or_default()
        .split('&')
        .find_map(|pair| pair.strip_prefix("max_stale="))
    else {
        return Ok(None);
    };
    parse_duration(text)
        .map(Some)
        .map_err(|e| Failure(StatusCode::BAD_REQUEST, format!("max_stale: {e}")))
}

async fn write_user(
    State(app): State<App>,
    Path(id): Path<String>,
    body: Result<Json<Rename>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, Failure> {
    let id = user_id(&id)?;
    let name = new_name(body)?;
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
        version: receipt.value.shown_version(),
    })
    .into_response())
}

/// The name a `PUT` body gives.
fn new_name(
    body: Result<Json<Rename>, axum::extract::rejection::JsonRejection>,
) -> Result<String, Failure> {
    let Json(Rename { name }) = body.map_err(|e| Failure(e.status(), e.body_text()))?;
    if name.is_empty() || name.len() > MAX_NAME_BYTES {
        return Err(Failure(
            StatusCode::BAD_REQUEST,
            format!("a name is 1 to {MAX_NAME_BYTES} bytes"),
        ));
    }
    Ok(name)
}

/// The most ids one request may list.
const MAX_IDS: usize = 1_000;

/// The ids a request lists in its query, `?ids=1,2,3`, in order (repeats kept); `None` if it
/// lists none.
fn listed_ids(query: Option<&str>) -> Result<Option<Vec<u64>>, Failure> {
    let mut lists = query
        .unwrap_or_default()
        .split('&')
        .filter_map(|pair| pair.strip_prefix("ids="));
    let Some(text) = lists.next() else {
        return Ok(None);
    };
    if lists.next().is_some() {
        return Err(Failure(
            StatusCode::BAD_REQUEST,
            "list the ids once: ?ids=1,2,3".into(),
        ));
    }
    // Commas as some clients encode them.
    let text = text.replace("%2C", ",").replace("%2c", ",");
    let listed = text.split(',').count();
    if listed > MAX_IDS {
        return Err(Failure(
            StatusCode::BAD_REQUEST,
            format!("{listed} ids listed, over the {MAX_IDS} one request may ask for"),
        ));
    }
    text.split(',')
        .map(user_id)
        .collect::<Result<_, _>>()
        .map(Some)
}

/// `GET /users?ids=1,2,3`: the users listed, in the order listed (an id listed twice answered
/// twice), those with no row left out; hits answered from the cache, every miss loaded by one
/// query.
async fn read_users(
    State(app): State<App>,
    RawQuery(query): RawQuery,
) -> Result<Response, Failure> {
    let Some(ids) = listed_ids(query.as_deref())? else {
        return Err(Failure(
            StatusCode::BAD_REQUEST,
            "list the users to read: /users?ids=1,2,3".into(),
        ));
    };
    let mut loaded = HashSet::new();
    let db = &app.db;
    let found = app
        .users
        .get_or_load_many(&ids, |missing| {
            loaded.extend(missing.iter().copied());
            load_users(db.clone(), missing)
        })
        .await?;
    let me = app.cluster.node_id();
    // The batch says which keys it loaded, not where the others came from: a key not loaded
    // here was held (or filled by a concurrent load on this node, which the batch waited for),
    // or in partitioned mode answered by its owner (a hot copy of it is labelled so too). A key
    // whose owner did not answer in time was loaded here.
    let source = |id: &u64| {
        if loaded.contains(id) {
            Source::Db
        } else if app.mode == Consistency::Partitioned && app.users.owner(id) != Some(me.clone()) {
            Source::Owner
        } else {
            Source::Cache
        }
    };
    let users: Vec<UserRead> = ids
        .iter()
        .filter_map(|id| Some(found.get(id)?.read(source(id))))
        .collect();
    Ok(Json(users).into_response())
}

/// What a failed tag invalidation or clear answers: the database changed, the caches may not
/// all know within the bound.
fn not_recorded(error: cohort::BulkError) -> Failure {
    tracing::error!(%error, "a bulk invalidation was not recorded");
    Failure(
        StatusCode::SERVICE_UNAVAILABLE,
        format!("written, but not yet invalidated everywhere ({error}): retry"),
    )
}

/// `PUT /teams/{id}` with `{"name"}`: renames the team (a table no change log watches), then
/// drops its users' copies on every node with a tag invalidation. Answers the new versions of
/// the team's users (those of `?ids=` only, if given), read in the write's transaction.
async fn write_team(
    State(app): State<App>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
    body: Result<Json<Rename>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, Failure> {
    let team = row_id(&id, "team")?;
    let only = listed_ids(query.as_deref())?.map(to_rows);
    let name = new_name(body)?;
    let bumped = app
        .db
        .rename_team(team as i64, &name, only.as_deref())
        .await
        .map_err(|e| match e {
            sqlx::Error::RowNotFound => Failure(StatusCode::NOT_FOUND, "no such team".into()),
            other => Failure::from(other),
        })?;
    app.users
        .invalidate_tag(&team_tag(team))
        .await
        .map_err(not_recorded)?;
    Ok(Json(TeamWritten {
        team,
        users: written(bumped),
    })
    .into_response())
}

/// `POST /users/clear`: bumps every team's version (a change of every user that no change-log
/// row records), then clears the users cache on every node. Answers the users' new versions
/// (those of `?ids=` only, if given), read in the write's transaction.
async fn clear_users(
    State(app): State<App>,
    RawQuery(query): RawQuery,
) -> Result<Response, Failure> {
    let only = listed_ids(query.as_deref())?.map(to_rows);
    let bumped = app.db.bump_all_teams(only.as_deref()).await?;
    app.users.clear().await.map_err(not_recorded)?;
    Ok(Json(Cleared {
        users: written(bumped),
    })
    .into_response())
}

/// Ids as the database stores them; [`user_id`] keeps them within `i64`.
fn to_rows(ids: Vec<u64>) -> Vec<i64> {
    ids.into_iter().map(|id| id as i64).collect()
}

fn written(bumped: Vec<crate::users_db::Bumped>) -> Vec<Written> {
    bumped
        .into_iter()
        .map(|(id, version)| Written {
            id: id.unsigned_abs(),
            version: version.unsigned_abs(),
        })
        .collect()
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
