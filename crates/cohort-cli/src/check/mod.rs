//! `cohort check`: real `cohort serve` processes, real faults, every operation recorded and
//! judged against the database's version history.
//!
//! The nodes share one SQLite file and reach each other only through the fault proxy. Clients
//! read and rename users (and with `--ops`, read them in batches, rename their teams and clear
//! every cache) over HTTP on random nodes while the scheduler kills, pauses,
//! partitions, slows and drops, and writes rows with plain SQL through no node. Each read is then
//! checked: it must show a version at least as new as every update that returned more than the
//! bound before the read started (bounded mode), or before it started at all (strong mode).
//!
//! Operations are judged as they complete and written to the history file at once, so the
//! checker's memory does not grow with the length of the run, and the verdict comes as soon as
//! the workload ends.
//!
//! # Layout
//! - `run`: one check from start to verdict: setup, the workload, fault injection and memory
//!   sampling side by side, shutdown.
//! - `nodes`: the `cohort serve` processes, started, signalled, stopped.
//! - `clients`: the workload's clients, reading and renaming over `http`.
//! - `faults`: the fault schedule, pure, drawn from the seed; `inject` carries it out.
//! - `proxy`: the fault proxy on every peer link; `dbproxy`: between the nodes and Postgres.
//! - `record`: every operation counted, written to the history file, handed to the judge.
//! - `memory`: the nodes' resident memory, sampled and judged.
//! - `report`: what ran, what the judge found, the verdict line.
//! - `html`: the same as one HTML file to look at (`--report`), with its charts.

mod clients;
mod dbproxy;
mod faults;
mod html;
mod http;
mod inject;
mod memory;
mod nodes;
mod proxy;
mod record;
mod report;
mod run;

use std::path::PathBuf;
use std::time::Duration;

use crate::serve::{Consistency, parse_duration};
use faults::FaultKind;

pub(crate) use run::run;

/// Options of `cohort check`.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// Nodes to start.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(2..=9))]
    nodes: u16,
    /// How long the workload runs, e.g. `30s`.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    duration: Duration,
    /// Faults to inject, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "kill,pause,partition,drop,slow,external"
    )]
    faults: Vec<FaultKind>,
    /// What the nodes promise: bounded staleness (`bounded`, and `partitioned`, where each key
    /// is cached by one owner), or reads linearizable with respect to completed updates
    /// (`strong`).
    #[arg(long, value_enum, default_value_t = Consistency::Bounded)]
    mode: Consistency,
    /// What the clients do, comma-separated, each picked in proportion to its weight: `reads`
    /// (`GET /users/{id}`, 60), `updates` (`PUT /users/{id}`, 15), `failsafe` (`GET /users/{id}?max_stale=5s`,
    /// served stale only if the database fails, judged against the age it declares, 10),
    /// `batches` (`GET
    /// /users?ids=` of 2 to 8 users, each user judged as a read, 15), `tags` (`PUT
    /// /teams/{id}`: every user of the team changed, invalidated by tag, 5) and `clears` (`POST
    /// /users/clear`: every user changed, every cache cleared, 1). Team renames and clears are
    /// held to the bound in every mode, strong included: they reach the nodes as tag
    /// invalidations and clears, which promise the bound.
    #[arg(long, value_delimiter = ',', default_value = "reads,updates")]
    ops: Vec<clients::OpKind>,
    /// Seed of the faults and the workload.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Concurrent clients.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=256))]
    clients: u16,
    /// The database: `sqlite://path` or `postgres://…` [default: a new SQLite file in a
    /// temporary directory]. The users table is created and seeded if missing.
    #[arg(long)]
    db: Option<String>,
    /// Where to write the history, one JSON line per operation.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Where to write the report as one self-contained HTML file: the verdict, the operations
    /// per node over time with every fault shaded, the staleness observed against the bound,
    /// reads by source, and the worst reads' timelines.
    #[arg(long)]
    report: Option<PathBuf>,
    /// The staleness bound the nodes are started with.
    #[arg(long, default_value = "500ms", value_parser = parse_duration)]
    max_staleness: Duration,
    /// Users the clients read and rename (a small set, so operations collide); at most 1000 with
    /// `--ops` tags or clears, whose requests list every one.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    keys: u64,
    /// Start node n0 with its leases ignored, and aim every pause at it (as a frozen machine):
    /// the checker must then find stale reads.
    #[arg(long, hide = true)]
    break_node: bool,
}
