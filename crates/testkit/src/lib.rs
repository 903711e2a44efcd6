//! The test kit of cohort: what its tests, benchmarks, `cohort check` and `cohort demo` share, so
//! that each is written once.
//!
//! - Throwaway servers ([`Postgres`], [`Redis`], [`Chromedriver`]): real servers from the
//!   machine's own binaries, in temporary directories, on free loopback ports, stopped when
//!   dropped. A server that cannot start is an error that says why (missing binaries, a failed
//!   `initdb`), never a silent skip.
//! - The staleness checker ([`history`]): the one statement of the bound every history is judged
//!   by, online (`cohort check`) or at once (the demo, the simulations).
//! - Waits ([`wait`]): for an event, for a condition re-checked as events come, or for a
//!   condition polled where nothing announces the change; never a sleep standing in for one.
//!
//! ```no_run
//! let postgres = cohort_testkit::Postgres::start()?;
//! println!("connect to {}", postgres.url());
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! # Layout
//! - `history`: the checker, pure (no I/O, no clock: times are passed in).
//! - `postgres`, `redis`: the servers; `chromedriver`: a WebDriver server for the browser tests.
//! - `wait`: the wait helpers, on tokio's broadcast channels and timers (no runtime of their own).
//!
//! # Feature flags
//! None.

mod chromedriver;
pub mod history;
mod postgres;
mod redis;
pub mod wait;

pub use chromedriver::Chromedriver;
pub use postgres::Postgres;
pub use redis::Redis;

/// A loopback port free at the time of asking; a server told to listen on it may still find it
/// taken by then (the Redis server retries on another).
fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}
