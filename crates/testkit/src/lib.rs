//! Throwaway servers (Postgres, Redis) for cohort's tests, benchmarks and checks: real servers from the
//! machine's own binaries, in temporary directories, on free loopback ports, stopped when
//! dropped. A server that cannot start is an error that says why (missing binaries, a failed
//! `initdb`), never a silent skip.
//!
//! ```no_run
//! let postgres = cohort_testkit::Postgres::start()?;
//! println!("connect to {}", postgres.url());
//! # Ok::<(), std::io::Error>(())
//! ```

mod postgres;
mod redis;

pub use postgres::Postgres;
pub use redis::Redis;
