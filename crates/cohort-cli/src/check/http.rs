//! The checker's HTTP client: one request per connection, JSON bodies, a deadline.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends one request and returns the JSON body of a 200 answer.
pub(crate) async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&Value>,
    timeout: Duration,
) -> anyhow::Result<Value> {
    tokio::time::timeout(timeout, exchange(addr, method, path, body))
        .await
        .with_context(|| format!("{method} {path} on {addr} timed out"))?
}

async fn exchange(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> anyhow::Result<Value> {
    let mut stream = TcpStream::connect(addr).await?;
    let body = body.map(Value::to_string).unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    let response = String::from_utf8(response)?;
    let status = response.get(9..12).context("not an HTTP response")?;
    let (_, body) = response
        .split_once("\r\n\r\n")
        .context("an HTTP response without a body")?;
    if status != "200" {
        bail!("{method} {path} on {addr}: {status} {body}");
    }
    Ok(serde_json::from_str(body)?)
}
