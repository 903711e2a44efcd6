//! The workload's clients: reads and renames (and as `--ops` asks, batch reads, team renames and
//! clears) over HTTP on random nodes, recorded as they complete.

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use super::http;
use super::nodes::Cluster;
use super::record::{Actor, Bulk, FAILSAFE_MAX_STALE, Op, Recorded};
use crate::api::{Cleared, Rename, TeamWritten, UserRead, Written};
use crate::users_db::TEAMS;

/// How long a client waits for one answer. Reads sent to a paused node in its last second are
/// answered, and judged, once it resumes; the others give up, so the workload goes on.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(1);

/// An operation the clients may do (`--ops`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, clap::ValueEnum)]
pub(crate) enum OpKind {
    /// `GET /users/{id}`.
    Reads,
    /// `PUT /users/{id}`.
    Updates,
    /// `GET /users/{id}?max_stale=…`.
    Failsafe,
    /// `GET /users?ids=…`.
    Batches,
    /// `PUT /teams/{id}`.
    Tags,
    /// `POST /users/clear`.
    Clears,
}

impl OpKind {
    /// How often a client picks it, against the others asked for.
    fn weight(self) -> u32 {
        match self {
            Self::Reads => 60,
            Self::Updates => 15,
            Self::Failsafe => 10,
            Self::Batches => 15,
            Self::Tags => 5,
            Self::Clears => 1,
        }
    }
}

/// The most users a batch read asks for.
const MOST_IN_BATCH: u64 = 8;

/// What a request answered, to be recorded.
enum Answer {
    Read(UserRead),
    Written(Written),
    Batch(Vec<UserRead>),
    Bulk(Vec<Written>, Bulk),
}

/// One client: random operations of `ops` on random nodes until the deadline.
pub(crate) async fn run_client(
    client: u16,
    cluster: Cluster,
    recorded: Arc<Mutex<Recorded>>,
    (keys, ops): (u64, Arc<[OpKind]>),
    seed: u64,
    deadline: Instant,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    let total: u32 = ops.iter().map(|op| op.weight()).sum();
    // The users every team rename and clear answers the versions of: all the clients use.
    let all: Vec<String> = (1..=keys).map(|id| id.to_string()).collect();
    let all = all.join(",");
    let mut renames = 0_u64;
    while Instant::now() < deadline {
        let node = rng.random_range(0..cluster.lock().len());
        let target = cluster.lock()[node].as_ref().map(|n| n.http);
        let Some(http) = target else {
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        };
        let mut pick = rng.random_range(0..total.max(1));
        let op = ops
            .iter()
            .copied()
            .find(|op| {
                let hit = pick < op.weight();
                pick = pick.saturating_sub(op.weight());
                hit
            })
            .unwrap_or(OpKind::Reads);
        let key = rng.random_range(1..=keys);
        let started = Instant::now();
        let answer = match op {
            OpKind::Reads => http::get(http, &format!("/users/{key}"), REQUEST_TIMEOUT)
                .await
                .map(Answer::Read),
            OpKind::Failsafe => {
                let max_stale = humantime::format_duration(FAILSAFE_MAX_STALE);
                let path = format!("/users/{key}?max_stale={max_stale}");
                http::get(http, &path, REQUEST_TIMEOUT)
                    .await
                    .map(Answer::Read)
            }
            OpKind::Updates => {
                renames += 1;
                let rename = Rename {
                    name: format!("c{client}-{renames}"),
                };
                http::put(http, &format!("/users/{key}"), &rename, REQUEST_TIMEOUT)
                    .await
                    .map(Answer::Written)
            }
            OpKind::Batches => {
                let size = rng.random_range(2..=MOST_IN_BATCH);
                let ids: Vec<String> = (0..size)
                    .map(|_| rng.random_range(1..=keys).to_string())
                    .collect();
                http::get(
                    http,
                    &format!("/users?ids={}", ids.join(",")),
                    REQUEST_TIMEOUT,
                )
                .await
                .map(Answer::Batch)
            }
            OpKind::Tags => {
                renames += 1;
                let team = rng.random_range(0..TEAMS);
                let rename = Rename {
                    name: format!("c{client}-{renames}"),
                };
                let path = format!("/teams/{team}?ids={all}");
                http::put::<TeamWritten>(http, &path, &rename, REQUEST_TIMEOUT)
                    .await
                    .map(|written| Answer::Bulk(written.users, Bulk::TeamRename))
            }
            OpKind::Clears => {
                http::post::<Cleared>(http, &format!("/users/clear?ids={all}"), REQUEST_TIMEOUT)
                    .await
                    .map(|cleared| Answer::Bulk(cleared.users, Bulk::Clear))
            }
        };
        let ended = Instant::now();
        let mut recorded = recorded.lock();
        let Ok(answer) = answer else {
            recorded.counts.failed += 1;
            continue;
        };
        let op = |key, version, source| Op {
            actor: Actor::Client { client, node },
            key,
            version,
            source,
            started,
            ended,
            age: None,
        };
        match answer {
            Answer::Read(user) => recorded.read(Op {
                age: user.age_ms.map(Duration::from_millis),
                ..op(key, user.version, Some(user.source))
            }),
            Answer::Written(written) => recorded.update(op(key, written.version, None)),
            Answer::Batch(users) => {
                recorded.counts.batches += 1;
                for user in users {
                    recorded.read(op(user.id, user.version, Some(user.source)));
                }
            }
            Answer::Bulk(users, what) => {
                for user in users {
                    recorded.bulk_update(op(user.id, user.version, None), what);
                }
            }
        }
    }
}
