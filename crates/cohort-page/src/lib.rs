//! A live page of one cohort node, to mount in an application's own HTTP server.
//!
//! The page shows the node's members (name, process, SWIM state, link, what each leaves of the
//! peer lease), each cache's counters (entries, hit ratio, loads, bypasses, stale fills
//! rejected), the latest ping round trip to each peer and the change log's lag as charts over the
//! last five minutes, and the recent membership and flush events. It is one self-contained HTML
//! document (its chart library, [uPlot], is embedded: nothing is fetched from elsewhere) that
//! refreshes itself every second from a JSON document beside it, `page.json`.
//!
//! [`Page::start`] starts sampling the node once a second; the [`Page`] answers HTTP requests as a
//! [`tower_service::Service`], so it mounts in axum as is, and in hyper through
//! `hyper_util::service::TowerToHyperService`. Where neither fits, [`Page::html`] and
//! [`Page::json`] are the two bodies to serve.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let cluster = cohort::Cluster::builder().node_name("a").start().await?;
//! let page = cohort_page::Page::start(&cluster);
//! // The page at /cohort/, its JSON at /cohort/page.json.
//! let app: axum::Router = axum::Router::new().nest_service("/cohort", page);
//! # let _ = app;
//! # Ok(()) }
//! ```
//!
//! # Layout
//! - `history` (pure): the looks at the node, the window of samples the charts draw, the events
//!   found between looks, and the JSON view of them.
//! - here: the sampler (looks at the node through cohort's public API), the HTTP answers, the
//!   page's assets (`assets/`: the HTML, its script and style, and the vendored uPlot).
//!
//! # Feature flags
//! None.
//!
//! [uPlot]: https://github.com/leeoniya/uPlot

mod history;

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cohort::Cluster;
use http::{Method, Request, Response, StatusCode, header};
use parking_lot::Mutex;

use history::{CacheRow, History, Link, LogRow, Look, MemberRow, MeshRow, NodeInfo};

/// How often the page looks at the node (and the browser asks for the page's JSON).
pub const SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// How far back the charts go.
pub const HISTORY: Duration = Duration::from_secs(5 * 60);

/// The page's path for its JSON, relative to the page.
pub const JSON_PATH: &str = "page.json";

/// The chart library the page embeds, uPlot (MIT license; version and origin in
/// `assets/vendor/uplot/README.md`), for other self-contained pages of cohort's tools (`cohort
/// check --report`). Not part of the stable API.
#[doc(hidden)]
pub mod vendored {
    /// uPlot's script (`uPlot.iife.min.js`): defines the global `uPlot`.
    pub const UPLOT_JS: &str = include_str!("../assets/vendor/uplot/uPlot.iife.min.js");
    /// uPlot's style sheet.
    pub const UPLOT_CSS: &str = include_str!("../assets/vendor/uplot/uPlot.min.css");
}

/// The page: one HTML document, its style and scripts inline.
const HTML: &str = concat!(
    "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n",
    "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n",
    "<title>cohort</title>\n<style>\n",
    include_str!("../assets/vendor/uplot/uPlot.min.css"),
    "\n",
    include_str!("../assets/page.css"),
    "</style>\n</head>\n<body>\n",
    include_str!("../assets/page.html"),
    "<script>\n",
    include_str!("../assets/vendor/uplot/uPlot.iife.min.js"),
    "\n</script>\n<script>\n",
    include_str!("../assets/page.js"),
    "</script>\n</body>\n</html>\n",
);

/// The live page of one node: a handle to its sampler's history, cheap to clone.
///
/// As a [`Service`](tower_service::Service) it answers `GET` (and `HEAD`) of its mount point with
/// the HTML and of [`JSON_PATH`] beside it with the JSON, anything else under it with 404.
///
/// The page holds a handle to the node, so the node keeps running while a clone of the page
/// exists; the sampler stops at its next look after the last clone is dropped.
#[derive(Clone)]
pub struct Page {
    shared: Arc<Shared>,
}

struct Shared {
    node: NodeInfo,
    history: Mutex<History>,
}

impl Page {
    /// Starts sampling `cluster` every [`SAMPLE_EVERY`], keeping [`HISTORY`].
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime (the sampler is a task of it).
    pub fn start(cluster: &Cluster) -> Self {
        let keep = (HISTORY.as_millis() / SAMPLE_EVERY.as_millis()) as usize;
        let mut history = History::new(keep);
        // A first look at once, so that the page has something to show when first opened.
        history.record(look(cluster));
        let shared = Arc::new(Shared {
            node: NodeInfo {
                name: cluster.node_id().to_string(),
                incarnation: cluster.incarnation(),
                addr: cluster.local_addr(),
                max_staleness_ms: millis(cluster.max_staleness()),
                sample_every_ms: millis(SAMPLE_EVERY),
            },
            history: Mutex::new(history),
        });
        tokio::spawn(sample(cluster.clone(), Arc::downgrade(&shared)));
        Self { shared }
    }

    /// The page's HTML, the same for every node: it asks [`JSON_PATH`] beside it for the rest.
    pub fn html(&self) -> &'static str {
        HTML
    }

    /// The page's JSON: the node, its latest look, the charts' series and the recent events.
    pub fn json(&self) -> String {
        let history = self.shared.history.lock();
        // The view holds only strings, numbers, options and sequences: it always serializes.
        serde_json::to_string(&history.view(&self.shared.node)).expect("the view serializes")
    }

    /// The answer to a request for `path` (as seen below the page's mount point).
    fn respond(&self, method: &Method, path: &str) -> Response<String> {
        if method != Method::GET && method != Method::HEAD {
            let mut response = plain(StatusCode::METHOD_NOT_ALLOWED, "GET or HEAD only");
            response
                .headers_mut()
                .insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
            return response;
        }
        let (content_type, body) = match path.trim_start_matches('/') {
            "" => ("text/html; charset=utf-8", HTML.to_owned()),
            JSON_PATH => ("application/json", self.json()),
            _ => return plain(StatusCode::NOT_FOUND, "no such page"),
        };
        let mut response = Response::new(body);
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static(content_type),
        );
        // Every answer is of now.
        headers.insert(
            header::CACHE_CONTROL,
            header::HeaderValue::from_static("no-store"),
        );
        response
    }
}

/// Answers `GET /` with the page and `GET /page.json` with its JSON, relative to where it is
/// mounted.
impl<B> tower_service::Service<Request<B>> for Page {
    type Response = Response<String>;
    type Error = Infallible;
    type Future = Ready<Result<Response<String>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        ready(Ok(self.respond(request.method(), request.uri().path())))
    }
}

/// A plain-text answer.
fn plain(status: StatusCode, text: &str) -> Response<String> {
    let mut response = Response::new(format!("{text}\n"));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// Looks at the node every [`SAMPLE_EVERY`] until the page is dropped.
async fn sample(cluster: Cluster, shared: Weak<Shared>) {
    let mut ticks =
        tokio::time::interval_at(tokio::time::Instant::now() + SAMPLE_EVERY, SAMPLE_EVERY);
    // After a stall (a paused process), one look, not a burst of them.
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let look = look(&cluster);
        shared.history.lock().record(look);
    }
}

/// One look at the node, through its public API.
fn look(cluster: &Cluster) -> Look {
    let bound = cluster.max_staleness();
    let members = cluster
        .members()
        .into_iter()
        .map(|m| MemberRow {
            node: m.node.map(|n| n.to_string()),
            addr: m.addr,
            incarnation: m.incarnation,
            link: if m.connected { Link::Up } else { Link::Down },
            swim: m.swim.map(|s| s.to_string()),
            live: m.live,
            last_heard_ms: m.last_heard.map(millis),
            last_confirmed_ms: m.last_confirmed.map(millis),
            lease_remaining_ms: m
                .last_confirmed
                .map(|age| millis(bound.saturating_sub(age))),
            round_trip_us: m.round_trip.map(|rtt| rtt.as_micros() as u64),
        })
        .collect();
    let caches = cluster
        .cache_stats()
        .into_iter()
        .map(|(name, s)| CacheRow {
            name,
            entries: s.entries as u64,
            hits: s.hits,
            misses: s.misses,
            loads: s.loads,
            bypasses: s.bypasses,
            fills_rejected: s.fills_rejected,
            flushes: s.flushes,
            updates: s.updates,
            invalidations_applied: s.invalidations_applied,
        })
        .collect();
    let log = cluster.change_log_status().map(|log| LogRow {
        serving: log.serving,
        lease_remaining_ms: log.lease_remaining.map(millis),
        last_poll_age_ms: log.last_poll_age.map(millis),
        behind_rows: log.behind_rows,
        polls: log.polls,
        errors: log.errors,
        last_error: log.last_error,
        pruned_flushes: log.pruned_flushes,
    });
    let stats = cluster.stats();
    Look {
        // A clock set before 1970 shows as 1970.
        at_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, millis),
        members,
        caches,
        log,
        mesh: MeshRow {
            events_sent: stats.events_sent,
            events_applied: stats.events_applied,
            gaps: stats.gaps,
            frames_rejected: stats.frames_rejected,
            auth_failures: stats.auth_failures,
        },
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use cohort_testkit::wait;
    use tower_service::Service;

    use super::*;

    async fn answer(page: &mut Page, method: Method, path: &str) -> Response<String> {
        let request = Request::builder()
            .method(method)
            .uri(path)
            .body(())
            .unwrap();
        page.call(request).await.unwrap()
    }

    /// The page, its JSON, and nothing else; a node with a peer shows it, with a round trip once
    /// a pong came back.
    #[tokio::test]
    async fn the_page_answers_with_the_html_and_the_json() {
        let a = Cluster::builder().node_name("a").start().await.unwrap();
        let b = Cluster::builder()
            .node_name("b")
            .seeds([a.local_addr().to_string()])
            .start()
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(10), b.wait_for_peers(1))
            .await
            .unwrap();
        let mut page = Page::start(&b);

        let html = answer(&mut page, Method::GET, "/").await;
        assert_eq!(html.status(), StatusCode::OK);
        assert_eq!(
            html.headers()[header::CONTENT_TYPE],
            "text/html; charset=utf-8"
        );
        assert!(html.body().contains("var uPlot="), "uPlot is inline");
        assert!(
            !html.body().contains("src=\"http"),
            "nothing is fetched from elsewhere"
        );

        let json = answer(&mut page, Method::GET, "/page.json").await;
        assert_eq!(json.headers()[header::CONTENT_TYPE], "application/json");
        let json: serde_json::Value = serde_json::from_str(json.body()).unwrap();
        assert_eq!(json["node"]["name"], "b");
        let members = json["members"].as_array().unwrap();
        assert_eq!(members.len(), 1, "{json}");
        assert_eq!(members[0]["node"], "a");
        assert_eq!(members[0]["link"], "up");
        assert!(members[0]["round_trip_us"].as_u64().is_some(), "{json}");
        assert_eq!(json["series"]["round_trip_ms"][0]["peer"], "a");

        assert_eq!(answer(&mut page, Method::GET, "/other").await.status(), 404);
        let post = answer(&mut page, Method::POST, "/").await;
        assert_eq!(post.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(post.headers()[header::ALLOW], "GET, HEAD");
    }

    /// The page samples the node every second, and holds it running until the last clone of
    /// the page is dropped: then the sampler lets go of it at its next look, and the node stops.
    #[tokio::test]
    async fn the_page_holds_the_node_until_it_is_dropped() {
        let node = Cluster::builder().node_name("a").start().await.unwrap();
        let addr = node.local_addr();
        let page = Page::start(&node);
        drop(node);
        let samples = || page.shared.history.lock().samples();
        wait::poll(async || (samples() >= 3).then_some(()))
            .await
            .expect("the sampler looks every second");
        assert!(
            tokio::net::TcpStream::connect(addr).await.is_ok(),
            "the page keeps the node running"
        );
        drop(page);
        wait::poll(async || tokio::net::TcpStream::connect(addr).await.err())
            .await
            .expect("the node stops once the page is dropped");
    }
}
