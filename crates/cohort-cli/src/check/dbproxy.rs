//! The database's side of a check: a plain TCP forwarder between the nodes and the Postgres
//! server, so that the `dbpause` fault can freeze the database for the nodes (every byte held in
//! both directions, connections left open, as a stalled server or a stuck network does) while
//! the checker's own outside writes, which go to the server directly, keep changing the data.

use std::net::SocketAddr;

use anyhow::{Context, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A running forwarder to one database server.
pub(crate) struct DbProxy {
    addr: SocketAddr,
    paused: watch::Sender<bool>,
}

impl DbProxy {
    /// Starts forwarding a free loopback port to `target`.
    pub(crate) async fn start(target: SocketAddr) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (paused, _) = watch::channel(false);
        let pauses = paused.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let pauses = pauses.clone();
                tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(target).await {
                        forward(client, server, &pauses).await;
                    }
                });
            }
        });
        Ok(Self { addr, paused })
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Holds every byte in both directions until [`resume`](Self::resume).
    pub(crate) fn pause(&self) {
        self.paused.send_replace(true);
    }

    pub(crate) fn resume(&self) {
        self.paused.send_replace(false);
    }
}

async fn forward(client: TcpStream, server: TcpStream, pauses: &watch::Sender<bool>) {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    tokio::select! {
        () = pipe(&mut client_read, &mut server_write, pauses.subscribe()) => {}
        () = pipe(&mut server_read, &mut client_write, pauses.subscribe()) => {}
    }
}

/// Copies `from` to `to`, passing nothing on while paused. Ends when either side closes.
async fn pipe(
    from: &mut (impl AsyncReadExt + Unpin),
    to: &mut (impl AsyncWriteExt + Unpin),
    mut paused: watch::Receiver<bool>,
) {
    let mut buf = vec![0; 64 * 1024];
    loop {
        if paused.wait_for(|p| !*p).await.is_err() {
            return;
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        // Bytes read as the pause began wait for its end too.
        if paused.wait_for(|p| !*p).await.is_err() || to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// The host and port of a `postgres://` URL, and the URL with them replaced by `via`.
pub(crate) fn route_through(url: &str, via: SocketAddr) -> anyhow::Result<(String, String)> {
    let Some((scheme, rest)) = url.split_once("://") else {
        bail!("{url:?} is not a URL");
    };
    let (userinfo, rest) = match rest.rsplit_once('@') {
        Some((userinfo, rest)) => (Some(userinfo), rest),
        None => (None, rest),
    };
    let split = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(split);
    anyhow::ensure!(
        !authority.is_empty() && !authority.contains(','),
        "--db {url:?}: dbpause needs one host in the URL"
    );
    let target = if authority
        .rsplit_once(':')
        .is_some_and(|(_, port)| port.parse::<u16>().is_ok())
    {
        authority.to_owned()
    } else {
        format!("{authority}:5432")
    };
    let userinfo = userinfo.map(|u| format!("{u}@")).unwrap_or_default();
    Ok((target, format!("{scheme}://{userinfo}{via}{tail}")))
}

/// Resolves `host:port` to the first address it names.
pub(crate) async fn resolve(target: &str) -> anyhow::Result<SocketAddr> {
    tokio::net::lookup_host(target)
        .await
        .with_context(|| format!("cannot resolve {target}"))?
        .next()
        .with_context(|| format!("{target} resolves to nothing"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_routed_through_the_proxy() {
        let via: SocketAddr = "127.0.0.1:7000".parse().unwrap();
        assert_eq!(
            route_through("postgres://app:pw@db.local:6543/app?sslmode=disable", via).unwrap(),
            (
                "db.local:6543".to_owned(),
                "postgres://app:pw@127.0.0.1:7000/app?sslmode=disable".to_owned()
            )
        );
        assert_eq!(
            route_through("postgresql://db/app", via).unwrap(),
            (
                "db:5432".to_owned(),
                "postgresql://127.0.0.1:7000/app".to_owned()
            )
        );
        assert!(route_through("postgres://a,b/app", via).is_err());
        assert!(route_through("nonsense", via).is_err());
    }
}
