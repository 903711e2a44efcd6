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

use std::io;
use std::net::{SocketAddr, TcpStream};
use std::process::Child;
use std::time::{Duration, Instant};

mod chromedriver;
pub mod history;
mod postgres;
mod redis;
pub mod wait;

pub use chromedriver::Chromedriver;
pub use postgres::Postgres;
pub use redis::Redis;

/// Starts a server with `start_once` on a free port, again on another while it finds its port
/// taken ([`io::ErrorKind::AddrInUse`]), five times at most.
fn start_on_free_port<T>(mut start_once: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    let mut last_error = None;
    for _ in 0..5 {
        match start_once() {
            Ok(server) => return Ok(server),
            Err(error) if error.kind() == io::ErrorKind::AddrInUse => last_error = Some(error),
            Err(error) => return Err(error),
        }
    }
    Err(last_error.unwrap_or_else(|| io::ErrorKind::AddrInUse.into()))
}

/// Waits until `child`, the server `name` told to listen on `addr`, accepts connections there.
/// A server that exits first is taken to have found its port taken
/// ([`io::ErrorKind::AddrInUse`]); one that does not listen within 10 s, to have failed.
fn wait_listening(child: &mut Child, addr: SocketAddr, name: &str) -> io::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait()? {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!(
                    "{name} exited at start ({status}): port {} taken?",
                    addr.port()
                ),
            ));
        }
        if TcpStream::connect(addr).is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("{name} did not start listening"),
            ));
        }
        // Another process's readiness: nothing announces it but the port answering.
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A loopback port free at the time of asking; a server told to listen on it may still find it
/// taken by then (see [`start_on_free_port`]).
fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}
