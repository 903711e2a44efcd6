//! A `chromedriver` from the machine's PATH, driving the machine's headless Chromium (Debian's
//! `chromium-driver` and `chromium`), for tests that look at cohort's pages in a real browser.

use std::io;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use rustix::process::{Pid, Signal, kill_process_group};
use tempfile::TempDir;

/// Where Debian's `chromium` package puts the browser.
const CHROMIUM: &str = "/usr/bin/chromium";

/// How to install both, for the errors that say they are missing.
const INSTALL: &str = "install Debian's chromium and chromium-driver (scripts/test does)";

/// A running throwaway `chromedriver` on a free loopback port, with a new empty browser profile
/// for its sessions; killed when dropped, with every browser it started.
pub struct Chromedriver {
    addr: SocketAddr,
    child: Child,
    /// The browser's profile: a new one, so that no earlier run's state leaks in.
    profile: TempDir,
}

impl Chromedriver {
    /// Starts the driver; returns once it accepts connections. Fails, saying what to install,
    /// where `chromedriver` or Chromium is missing. The port is picked free, but may be taken by
    /// another process before the driver binds it: a driver that exits at start is started again
    /// on another port.
    pub fn start() -> io::Result<Self> {
        if !Path::new(CHROMIUM).exists() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("no Chromium at {CHROMIUM}: {INSTALL}"),
            ));
        }
        crate::start_on_free_port(Self::start_once)
    }

    fn start_once() -> io::Result<Self> {
        let port = crate::free_port()?;
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            // A process group of its own, which the browsers it starts join: a test that fails
            // with a session open leaves no browser behind (chromedriver killed does not end
            // them, and they would not notice).
            .process_group(0)
            .spawn()
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("cannot start chromedriver ({INSTALL}): {e}"),
                )
            })?;
        let mut driver = Self {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            child,
            profile: tempfile::tempdir()?,
        };
        crate::wait_listening(&mut driver.child, driver.addr, "chromedriver")?;
        Ok(driver)
    }

    /// The WebDriver endpoint.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The browser a session should run: Debian's Chromium.
    pub fn chromium(&self) -> PathBuf {
        PathBuf::from(CHROMIUM)
    }

    /// The browser's arguments for a session (`goog:chromeOptions.args`): headless, in a window
    /// of `width` × `height` pixels, with the new empty profile. Running as root needs
    /// `--no-sandbox`; the rest keep Chromium from calling out, which a closed network refuses
    /// many times a second.
    pub fn chromium_args(&self, width: u32, height: u32) -> Vec<String> {
        let mut args: Vec<String> = [
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
        ]
        .map(str::to_owned)
        .to_vec();
        args.push(format!("--window-size={width},{height}"));
        args.push(format!("--user-data-dir={}", self.profile.path().display()));
        args
    }
}

impl Drop for Chromedriver {
    fn drop(&mut self) {
        // Nothing to report to from a drop. The group's id is the driver's process id.
        let group = i32::try_from(self.child.id()).ok().and_then(Pid::from_raw);
        if let Some(group) = group {
            let _ = kill_process_group(group, Signal::KILL);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
