//! The `cohort` command. It parses arguments and hands over to the library and its subcommands.

mod api;
mod bench;
mod check;
mod config_file;
mod demo;
mod http_limits;
mod keys;
mod latency;
mod serve;
mod users_db;
mod workload;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Coherent in-process caches across the servers of an application.
#[derive(Parser)]
#[command(name = "cohort", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start a few nodes in this process over one SQLite database, run a mixed workload and
    /// check every read against the staleness bound.
    Demo(demo::Args),
    /// Run the example users service (HTTP + SQLite) as one node of a cluster.
    Serve(serve::Args),
    /// Start real nodes, inject real faults, and check every read against the bound.
    Check(check::Args),
    /// Measure cohort side by side with a bare local cache, and its mesh.
    Bench(bench::Args),
    /// Print a new cluster key (64 hexadecimal digits) for `--cluster-key-file`.
    Keygen,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args =
        match config_file::expand(std::env::args_os().collect(), |name| std::env::var_os(name)) {
            Ok(args) => args,
            Err(e) => {
                eprintln!("cohort: {e:#}");
                return ExitCode::FAILURE;
            }
        };
    let cli = Cli::parse_from(args);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("cohort: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = match cli.command {
        Command::Demo(args) => runtime.block_on(demo::run(args)),
        Command::Serve(args) => runtime.block_on(serve::run(args)),
        Command::Check(args) => runtime.block_on(check::run(args)),
        Command::Bench(args) => runtime.block_on(bench::run(args)),
        Command::Keygen => Ok(keys::keygen()),
    };
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("cohort: {e:#}");
            ExitCode::FAILURE
        }
    }
}
