//! A Postgres cluster made with the machine's `initdb` and `pg_ctl`.

use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A running throwaway Postgres cluster (trust authentication, user `postgres`, fsync off),
/// stopped when dropped.
///
/// `initdb` refuses to run as root; as root, the tools run as the `postgres` user, which owns
/// the data directory.
pub struct Postgres {
    bin: PathBuf,
    data: PathBuf,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Postgres {
    /// Creates a cluster in a temporary directory and starts it on a free loopback port; returns
    /// once it accepts connections.
    pub fn start() -> io::Result<Self> {
        let bin = binaries()?;
        let dir = tempfile::tempdir()?;
        let data = dir.path().join("data");
        if is_root() {
            check(
                "chown",
                &Command::new("chown")
                    .arg("postgres:postgres")
                    .arg(dir.path())
                    .output()?,
            )?;
        }
        let initdb = as_postgres(&bin.join("initdb"))
            .arg("-D")
            .arg(&data)
            .args(["-A", "trust", "-U", "postgres", "--no-sync"])
            .output()?;
        check("initdb", &initdb)?;
        let port = crate::free_port()?;
        let server = Self {
            bin,
            data,
            port,
            _dir: dir,
        };
        server.start_again()?;
        Ok(server)
    }

    /// Stops the server at once (`pg_ctl stop -m immediate`, as a crash would): every connection
    /// drops and new ones are refused until [`start_again`](Self::start_again).
    pub fn stop(&self) -> io::Result<()> {
        let stop = as_postgres(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "-w", "stop"])
            .output()?;
        check("pg_ctl stop", &stop)
    }

    /// Starts the stopped server again on its port, with its data; returns once it accepts
    /// connections.
    pub fn start_again(&self) -> io::Result<()> {
        let options = format!(
            "-p {} -h 127.0.0.1 -k {} -c fsync=off -c max_connections=300",
            self.port,
            self.data.display()
        );
        let start = as_postgres(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(&self.data)
            .args(["-o", &options, "-w", "-l"])
            .arg(self.data.join("log"))
            .arg("start")
            .output()?;
        check("pg_ctl start", &start)
    }

    /// The connection URL of the `postgres` database.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// The port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // Nothing to report to from a drop; the temporary directory goes either way.
        let _ = as_postgres(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "stop"])
            .output();
    }
}

/// Where `initdb` and `pg_ctl` are: on the PATH, or in Debian's versioned directory.
fn binaries() -> io::Result<PathBuf> {
    let has_tools = |dir: &Path| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file();
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .find(|dir| has_tools(dir));
    let debian = || {
        std::fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .flatten()
            .map(|version| version.path().join("bin"))
            .find(|dir| has_tools(dir))
    };
    on_path.or_else(debian).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            "initdb and pg_ctl not found on the PATH or in /usr/lib/postgresql (install postgresql)",
        )
    })
}

fn as_postgres(tool: &Path) -> Command {
    if is_root() {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(tool);
        command
    } else {
        Command::new(tool)
    }
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("Uid:"))
                .and_then(|uids| uids.split_whitespace().nth(1).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}

fn check(what: &str, output: &Output) -> io::Result<()> {
    if output.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "{what} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )))
    }
}
