//! A page of users read with one `GET /users?ids=` against the same users read with one `GET
//! /users/{id}` each, on one real `cohort serve` process with its default SQLite database:
//! cold (every user a miss) and warm (every user cached). Both go over one kept-alive HTTP/1
//! connection, so the difference is the requests and the database queries, not TCP handshakes.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::HOST;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::Command;

use super::{Figure, median};

/// Users on a page.
const PAGE: u64 = 50;

/// Users in the database: enough for every round's pages to be new (cold) ones.
const USERS: u64 = 10_000;

/// Measures the four ways of reading a page; `quick` takes fewer rounds.
pub(crate) async fn measure(quick: bool) -> anyhow::Result<Vec<Figure>> {
    let rounds: u64 = if quick { 5 } else { 25 };
    let dir = tempfile::tempdir().context("cannot create a temporary directory")?;
    let db = format!("sqlite://{}", dir.path().join("users.db").display());
    let exe = std::env::current_exe().context("cannot find the cohort binary")?;
    let mut child = Command::new(exe)
        .args(["serve", "--name", "bench", "--db", &db])
        .args(["--http", "127.0.0.1:0", "--listen", "127.0.0.1:0"])
        .args(["--users", &USERS.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("cannot start cohort serve")?;
    let mut stdout = BufReader::new(child.stdout.take().context("no stdout")?);
    let mut line = String::new();
    tokio::time::timeout(Duration::from_secs(20), stdout.read_line(&mut line))
        .await
        .context("cohort serve did not start within 20 s")??;
    let http: SocketAddr = line
        .split_whitespace()
        .find_map(|f| f.strip_prefix("http="))
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("cohort serve did not start: {line:?}"))?;
    let mut client = Client::connect(http).await?;
    client.until_serving().await?;

    let mut samples: [Vec<f64>; 4] = Default::default();
    let mut loads = [0_u64; 2];
    for round in 0..rounds {
        let page = |block: u64| -> Vec<u64> { (1 + block * PAGE..=(block + 1) * PAGE).collect() };
        let (batched, single) = (page(2 * round), page(2 * round + 1));
        let list: Vec<String> = batched.iter().map(u64::to_string).collect();
        let batch_path = format!("/users?ids={}", list.join(","));
        // Which goes first alternates, so that neither always finds the other's warm-up.
        for first in [round % 2 == 0, round % 2 == 1] {
            if first {
                let before = client.loads().await?;
                samples[0].push(client.time(std::slice::from_ref(&batch_path)).await?);
                loads[0] += client.loads().await? - before;
                samples[1].push(client.time(std::slice::from_ref(&batch_path)).await?);
            } else {
                let paths: Vec<String> = single.iter().map(|id| format!("/users/{id}")).collect();
                let before = client.loads().await?;
                samples[2].push(client.time(&paths).await?);
                loads[1] += client.loads().await? - before;
                samples[3].push(client.time(&paths).await?);
            }
        }
    }
    drop(client);
    child.start_kill()?;
    child.wait().await?;

    let [batch_cold, batch_warm, single_cold, single_warm] = samples.map(|mut s| median(&mut s));
    let batch_cold = Figure::plain(format!("serve_page{PAGE}_batch_cold"), batch_cold, "us");
    let batch_warm = Figure::plain(format!("serve_page{PAGE}_batch_warm"), batch_warm, "us");
    let single_cold = Figure::plain(format!("serve_page{PAGE}_singles_cold"), single_cold, "us")
        .against(&batch_cold);
    let single_warm = Figure::plain(format!("serve_page{PAGE}_singles_warm"), single_warm, "us")
        .against(&batch_warm);
    let per_page = |loads: u64| loads as f64 / rounds as f64;
    let batch_queries = Figure::plain(
        format!("serve_page{PAGE}_batch_cold_queries"),
        per_page(loads[0]),
        "queries",
    );
    let single_queries = Figure::plain(
        format!("serve_page{PAGE}_singles_cold_queries"),
        per_page(loads[1]),
        "queries",
    )
    .against(&batch_queries);
    Ok(vec![
        batch_cold,
        single_cold,
        batch_warm,
        single_warm,
        batch_queries,
        single_queries,
    ])
}

/// One kept-alive HTTP/1 connection to the node.
struct Client {
    addr: SocketAddr,
    sender: SendRequest<Empty<Bytes>>,
}

impl Client {
    async fn connect(addr: SocketAddr) -> anyhow::Result<Self> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        Ok(Self { addr, sender })
    }

    /// The body of a 200 answer to `GET path`.
    async fn get(&mut self, path: &str) -> anyhow::Result<Bytes> {
        let request = Request::get(path)
            .header(HOST, self.addr.to_string())
            .body(Empty::new())?;
        self.sender.ready().await?;
        let response = self.sender.send_request(request).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        if status != StatusCode::OK {
            bail!("GET {path}: {status} {}", String::from_utf8_lossy(&body));
        }
        Ok(body)
    }

    /// Microseconds to get every path in turn.
    async fn time(&mut self, paths: &[String]) -> anyhow::Result<f64> {
        let started = Instant::now();
        for path in paths {
            self.get(path).await?;
        }
        Ok(started.elapsed().as_secs_f64() * 1e6)
    }

    /// The users cache's loader calls so far: one per database query.
    async fn loads(&mut self) -> anyhow::Result<u64> {
        let metrics = self.get("/metrics").await?;
        String::from_utf8_lossy(&metrics)
            .lines()
            .find(|l| l.starts_with("cohort_cache_loads_total{") && l.contains("cache=\"users\""))
            .and_then(|l| l.split_whitespace().last()?.parse().ok())
            .context("no users loads counter in /metrics")
    }

    /// Waits until the node serves from its cache (or a cold page would read the database
    /// without filling it). The node offers nothing to wait on but its answers.
    async fn until_serving(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let health: serde_json::Value = serde_json::from_slice(&self.get("/healthz").await?)?;
            if health["serving"] == true {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("cohort serve never served from its cache: {health}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
