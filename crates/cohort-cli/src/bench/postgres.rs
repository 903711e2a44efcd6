//! Postgres, as the source a cache saves trips to: a throwaway cluster made with the machine's
//! `initdb` and `pg_ctl` in a temporary directory, and a SELECT of a 1 KiB value by primary key.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, bail};
use sqlx::postgres::PgPoolOptions;

use super::Figure;

pub(super) async fn measure(quick: bool, cohort_hit: &Figure) -> Figure {
    match run(quick, cohort_hit).await {
        Ok(figure) => figure,
        Err(e) => Figure::skipped("postgres_select", format!("{e:#}")),
    }
}

/// A running throwaway cluster, stopped (fast) when dropped.
struct Cluster {
    bin: PathBuf,
    data: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = as_postgres(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "stop"])
            .output();
    }
}

/// Where `initdb` and `pg_ctl` are: on the PATH, or in Debian's versioned directory.
fn postgres_bin() -> anyhow::Result<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .find(|dir| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file());
    let debian = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|version| version.path().join("bin"))
        .find(|dir| dir.join("initdb").is_file());
    on_path
        .or(debian)
        .context("initdb and pg_ctl not found (install postgresql)")
}

/// `initdb` refuses to run as root: as root, run the tools as the `postgres` user.
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
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|uids| uids.split_whitespace().nth(1).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

fn start() -> anyhow::Result<(Cluster, u16)> {
    let bin = postgres_bin()?;
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    if is_root() {
        let status = Command::new("chown")
            .args(["postgres:postgres"])
            .arg(dir.path())
            .status()?;
        anyhow::ensure!(status.success(), "cannot hand the directory to postgres");
    }
    let out = as_postgres(&bin.join("initdb"))
        .arg("-D")
        .arg(&data)
        .args(["-A", "trust", "-U", "postgres", "--no-sync"])
        .output()
        .context("cannot run initdb")?;
    if !out.status.success() {
        bail!("initdb failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let cluster = Cluster {
        bin: bin.clone(),
        data: data.clone(),
        _dir: dir,
    };
    let options = format!(
        "-p {port} -h 127.0.0.1 -k {} -c fsync=off",
        cluster.data.display()
    );
    let out = as_postgres(&bin.join("pg_ctl"))
        .arg("-D")
        .arg(&data)
        .args(["-o", &options, "-w", "-l"])
        .arg(data.join("log"))
        .arg("start")
        .output()
        .context("cannot run pg_ctl")?;
    if !out.status.success() {
        bail!(
            "pg_ctl start failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok((cluster, port))
}

async fn run(quick: bool, cohort_hit: &Figure) -> anyhow::Result<Figure> {
    let (_cluster, port) = tokio::task::spawn_blocking(start).await??;
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .connect(&format!("postgres://postgres@127.0.0.1:{port}/postgres"))
        .await
        .context("cannot connect to the throwaway Postgres")?;
    sqlx::query("CREATE TABLE kv (id INT PRIMARY KEY, v BYTEA NOT NULL)")
        .execute(&pool)
        .await?;
    sqlx::query(
        "INSERT INTO kv SELECT i, decode(repeat('07', 1024), 'hex') FROM generate_series(0, 999) i",
    )
    .execute(&pool)
    .await?;
    let selects = if quick { 5_000 } else { 50_000 };
    let start = Instant::now();
    for i in 0..selects {
        let value: Vec<u8> = sqlx::query_scalar("SELECT v FROM kv WHERE id = $1")
            .bind(i % 1_000)
            .fetch_one(&pool)
            .await?;
        anyhow::ensure!(value.len() == 1024, "SELECT returned {} bytes", value.len());
    }
    let ns = start.elapsed().as_nanos() as f64 / f64::from(selects);
    Ok(Figure::plain("postgres_select", ns, "ns/op").against(cohort_hit))
}
