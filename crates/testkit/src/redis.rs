//! A `redis-server` from the machine's PATH.

use std::io;
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running throwaway `redis-server` (no persistence) on a free loopback port, killed when
/// dropped.
pub struct Redis {
    addr: SocketAddr,
    child: Child,
}

impl Redis {
    /// Starts the server; returns once it accepts connections. The port is picked free, but may
    /// be taken by another process before the server binds it: a server that exits at start is
    /// started again on another port.
    pub fn start() -> io::Result<Self> {
        let mut last_error = None;
        for _ in 0..5 {
            match Self::start_once() {
                Ok(server) => return Ok(server),
                Err(error) if error.kind() == io::ErrorKind::AddrInUse => last_error = Some(error),
                Err(error) => return Err(error),
            }
        }
        Err(last_error.unwrap_or_else(|| io::ErrorKind::AddrInUse.into()))
    }

    fn start_once() -> io::Result<Self> {
        let port = crate::free_port()?;
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("cannot start redis-server (install redis-server): {e}"),
                )
            })?;
        let mut server = Self {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            child,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = server.child.try_wait()? {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!("redis-server exited at start ({status}): port {port} taken?"),
                ));
            }
            if TcpStream::connect(server.addr).is_ok() {
                return Ok(server);
            }
            if Instant::now() > deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "redis-server did not start listening",
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The server's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The connection URL.
    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        // Nothing to report to from a drop.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
