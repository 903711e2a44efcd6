//! The checker's HTTP client: hyper's HTTP/1 client, one request per connection, JSON bodies, a
//! deadline.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, bail};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1;
use hyper::header::{CONTENT_TYPE, HOST};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::net::TcpStream;

/// `GET path` on `addr`: the JSON body of a 200 answer.
pub(crate) async fn get<T: DeserializeOwned>(
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
) -> anyhow::Result<T> {
    request(addr, Method::GET, path, Bytes::new(), timeout).await
}

/// `PUT path` on `addr` with `body` as JSON: the JSON body of a 200 answer.
pub(crate) async fn put<T: DeserializeOwned>(
    addr: SocketAddr,
    path: &str,
    body: &impl Serialize,
    timeout: Duration,
) -> anyhow::Result<T> {
    let body = Bytes::from(serde_json::to_vec(body)?);
    request(addr, Method::PUT, path, body, timeout).await
}

/// `POST path` on `addr` with no body: the JSON body of a 200 answer.
pub(crate) async fn post<T: DeserializeOwned>(
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
) -> anyhow::Result<T> {
    request(addr, Method::POST, path, Bytes::new(), timeout).await
}

async fn request<T: DeserializeOwned>(
    addr: SocketAddr,
    method: Method,
    path: &str,
    body: Bytes,
    timeout: Duration,
) -> anyhow::Result<T> {
    let what = format!("{method} {path} on {addr}");
    let body = tokio::time::timeout(timeout, exchange(addr, method, path, body))
        .await
        .with_context(|| format!("{what} timed out"))?
        .with_context(|| format!("{what} failed"))?;
    Ok(serde_json::from_slice(&body)?)
}

/// The body of a 200 answer. The connection is driven here, not on a task of its own, so that a
/// request given up on (a paused node) closes its connection at once.
async fn exchange(
    addr: SocketAddr,
    method: Method,
    path: &str,
    body: Bytes,
) -> anyhow::Result<Bytes> {
    let stream = TcpStream::connect(addr).await?;
    let (mut sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header(HOST, addr.to_string())
        .header(CONTENT_TYPE, "application/json")
        .body(Full::new(body))?;
    let answer = async {
        let response = sender.send_request(request).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        if status != StatusCode::OK {
            bail!("{status} {}", String::from_utf8_lossy(&body));
        }
        anyhow::Ok(body)
    };
    tokio::pin!(answer);
    tokio::select! {
        answer = &mut answer => answer,
        // A connection that ends cleanly has handed the whole answer over.
        ended = connection => {
            ended?;
            answer.await
        }
    }
}
