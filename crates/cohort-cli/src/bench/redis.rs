//! Redis, as a user would run it instead: a `redis-server` started on a free loopback port for
//! the run, a GET of a 1 KiB value, the same message relayed by pub/sub, and cohort's own
//! propagation with its nodes linked over that server (`RedisBus`) instead of TCP.
//!
//! The client speaks RESP directly (one command, one reply, over one connection), so the
//! figures are Redis's round trip and not a client library's overhead.

use std::net::SocketAddr;
use std::time::Instant;

use anyhow::{Context, bail};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use super::{Figure, propagation};
use crate::latency::Latencies;

/// One RESP connection.
pub(super) struct Conn(BufReader<TcpStream>);

/// A reply, as far as the benchmark needs it.
#[derive(Debug)]
pub(super) enum Reply {
    Simple,
    Integer,
    Bulk(Option<Vec<u8>>),
    Array(Vec<Reply>),
}

impl Conn {
    pub(super) async fn open(addr: SocketAddr) -> anyhow::Result<Self> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Self(BufReader::new(stream)))
    }

    async fn send(&mut self, args: &[&[u8]]) -> anyhow::Result<()> {
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for arg in args {
            out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
            out.extend_from_slice(arg);
            out.extend_from_slice(b"\r\n");
        }
        self.0.get_mut().write_all(&out).await?;
        Ok(())
    }

    pub(super) async fn call(&mut self, args: &[&[u8]]) -> anyhow::Result<Reply> {
        self.send(args).await?;
        self.reply().await
    }

    async fn reply(&mut self) -> anyhow::Result<Reply> {
        let mut line = String::new();
        self.0.read_line(&mut line).await?;
        let (kind, rest) = line
            .trim_end()
            .split_at_checked(1)
            .context("an empty reply")?;
        Ok(match kind {
            "+" => Reply::Simple,
            ":" => Reply::Integer,
            "-" => bail!("redis: {rest}"),
            "$" => match rest.parse::<i64>()? {
                len if len < 0 => Reply::Bulk(None),
                len => {
                    let mut body = vec![0; usize::try_from(len)? + 2];
                    self.0.read_exact(&mut body).await?;
                    body.truncate(body.len() - 2);
                    Reply::Bulk(Some(body))
                }
            },
            "*" => {
                let mut items = Vec::new();
                for _ in 0..rest.parse::<usize>()? {
                    items.push(Box::pin(self.reply()).await?);
                }
                Reply::Array(items)
            }
            other => bail!("an unknown reply type {other:?}"),
        })
    }
}

pub(super) async fn measure(quick: bool, cohort_hit: &Figure, cohort_p50: &Figure) -> Vec<Figure> {
    match run(quick, cohort_hit, cohort_p50).await {
        Ok(figures) => figures,
        Err(e) => vec![
            Figure::skipped("redis_get", format!("{e:#}")),
            Figure::skipped("redis_pubsub_p50", format!("{e:#}")),
            Figure::skipped("propagation_redis_bus_p50", format!("{e:#}")),
        ],
    }
}

async fn run(quick: bool, cohort_hit: &Figure, cohort_p50: &Figure) -> anyhow::Result<Vec<Figure>> {
    let server = tokio::task::spawn_blocking(cohort_testkit::Redis::start).await??;
    let mut conn = Conn::open(server.addr()).await?;
    let value = vec![7_u8; 1024];
    for key in 0..1_000 {
        conn.call(&[b"SET", format!("k{key}").as_bytes(), &value])
            .await?;
    }
    let gets = if quick { 5_000 } else { 50_000 };
    let start = Instant::now();
    for i in 0..gets {
        let Reply::Bulk(Some(got)) = conn
            .call(&[b"GET", format!("k{}", i % 1_000).as_bytes()])
            .await?
        else {
            bail!("GET returned no value");
        };
        anyhow::ensure!(got.len() == 1024, "GET returned {} bytes", got.len());
    }
    let get_ns = start.elapsed().as_nanos() as f64 / gets as f64;
    let get = Figure::plain("redis_get", get_ns, "ns/op").against(cohort_hit);

    let mut subscriber = Conn::open(server.addr()).await?;
    subscriber.call(&[b"SUBSCRIBE", b"bench"]).await?;
    let messages = if quick { 2_000 } else { 20_000 };
    let mut relayed = Latencies::default();
    for i in 0..messages {
        let payload = format!("invalidate {i}");
        let sent = Instant::now();
        conn.send(&[b"PUBLISH", b"bench", payload.as_bytes()])
            .await?;
        let Reply::Array(message) = subscriber.reply().await? else {
            bail!("the subscriber got no message");
        };
        let received = Instant::now();
        anyhow::ensure!(
            matches!(message.last(), Some(Reply::Bulk(Some(p))) if p == payload.as_bytes()),
            "the subscriber got another message"
        );
        relayed.record(received - sent);
        conn.reply().await?;
    }
    let relay = Figure::micros("redis_pubsub_p50", relayed.quantile(0.5));

    let nodes = propagation::cluster_on_redis(2, &server.url()).await?;
    let bus = propagation::latencies(&nodes, messages).await?;
    for (node, _) in &nodes {
        node.shutdown().await;
    }
    let bus_p50 =
        Figure::micros("propagation_redis_bus_p50", bus.quantile(0.5)).against(cohort_p50);
    let bus_p99 = Figure::micros("propagation_redis_bus_p99", bus.quantile(0.99));
    Ok(vec![
        bus_p50,
        bus_p99,
        get,
        relay.clone(),
        Figure::micros("redis_pubsub_p99", relayed.quantile(0.99)),
        cohort_p50
            .clone()
            .renamed("propagation_2_nodes_p50_vs_redis")
            .against(&relay),
    ])
}
