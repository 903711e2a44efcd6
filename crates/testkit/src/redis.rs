//! A `redis-server` from the machine's PATH.

use std::io;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};

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
        crate::start_on_free_port(Self::start_once)
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
        crate::wait_listening(&mut server.child, server.addr, "redis-server")?;
        Ok(server)
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
