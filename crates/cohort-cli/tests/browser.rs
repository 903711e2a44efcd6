//! The live cluster page and the check report, looked at in a real headless Chromium (Debian's
//! `chromium` and `chromium-driver`) over WebDriver: three `cohort serve` processes, one of them
//! killed while the page of another is open; and the report of a short `cohort check`.
//!
//! Without chromedriver or Chromium these tests fail, saying what to install; they never skip.
//! Each saves a screenshot under the target directory (`CARGO_TARGET_TMPDIR`); with
//! `COHORT_UPDATE_SCREENSHOTS=1` also under `docs/`, where the README shows them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use cohort_testkit::Chromedriver;
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::sync::Mutex;

/// One browser at a time: with three nodes (or a check's three nodes) each, two would crowd a
/// two-core machine.
static BROWSER: Mutex<()> = Mutex::const_new(());

/// How long the page may take to show a change: it looks at the node every second and the
/// browser asks for it every second, so a few seconds; the wait allows for a loaded machine.
const PAGE_WAIT: Duration = Duration::from_secs(15);

/// A `cohort serve` process, killed when dropped.
struct Node {
    http: SocketAddr,
    listen: SocketAddr,
    child: Child,
}

impl Node {
    /// Starts node `name` on `db`, joining through `seeds`; returns once it says it is ready.
    async fn start(name: &str, db: &Path, seeds: &[&Node]) -> Self {
        let seeds: Vec<String> = seeds.iter().map(|n| n.listen.to_string()).collect();
        let mut child = Command::new(env!("CARGO_BIN_EXE_cohort"))
            .args(["serve", "--name", name, "--http", "127.0.0.1:0"])
            .args(["--listen", "127.0.0.1:0", "--seeds", &seeds.join(",")])
            .arg("--db")
            .arg(format!("sqlite://{}", db.display()))
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("cohort serve starts");
        let mut line = String::new();
        let stdout = child.stdout.take().expect("piped");
        tokio::time::timeout(
            Duration::from_secs(30),
            BufReader::new(stdout).read_line(&mut line),
        )
        .await
        .expect("cohort serve says it is ready within 30 s")
        .expect("cohort serve's output");
        assert!(line.ends_with("ready\n"), "unexpected first line {line:?}");
        let field = |key: &str| -> SocketAddr {
            line.split_whitespace()
                .find_map(|f| f.strip_prefix(key))
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("no {key} in {line:?}"))
        };
        Self {
            http: field("http="),
            listen: field("listen="),
            child,
        }
    }
}

/// One HTTP/1.1 request on a fresh connection; the response's body, or `None` if it failed.
async fn request(addr: SocketAddr, method: &str, path: &str, body: &str) -> Option<String> {
    let mut stream = TcpStream::connect(addr).await.ok()?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
}

/// Reads and renames users on `nodes` until aborted, so that the page has reads to chart and
/// events crossing the mesh.
async fn workload(nodes: Vec<SocketAddr>) {
    for round in 0_u64.. {
        let node = nodes[(round % nodes.len() as u64) as usize];
        let id = 1 + round % 20;
        if round % 5 == 0 {
            let body = json!({ "name": format!("r{round}") }).to_string();
            request(node, "PUT", &format!("/users/{id}"), &body).await;
        } else {
            request(node, "GET", &format!("/users/{id}"), "").await;
        }
    }
}

/// A Chromium session in a `width` × `height` window.
async fn browser(driver: &Chromedriver, width: u32, height: u32) -> Client {
    let mut capabilities = serde_json::Map::new();
    capabilities.insert("browserName".into(), json!("chrome"));
    capabilities.insert(
        "goog:chromeOptions".into(),
        json!({ "binary": driver.chromium(), "args": driver.chromium_args(width, height) }),
    );
    ClientBuilder::new(HttpConnector::new())
        .capabilities(capabilities)
        .connect(&driver.url())
        .await
        .expect("chromedriver opens a Chromium session")
}

/// Waits until the page has an element matching `css`.
async fn wait_for(client: &Client, css: &str) -> fantoccini::elements::Element {
    client
        .wait()
        .at_most(PAGE_WAIT)
        .every(Duration::from_millis(100))
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("the page never showed {css}: {e}"))
}

/// Waits until the chart `id` draws at least `points` values: an observer in the page answers
/// once the chart's `data-points` attribute says so.
async fn wait_for_points(client: &Client, id: &str, points: u64) {
    let script = "const [id, want, done] = arguments;
        const chart = document.getElementById(id);
        const enough = () => Number(chart.dataset.points) >= want;
        if (enough()) return done(true);
        new MutationObserver((_, observer) => {
          if (enough()) { observer.disconnect(); done(true); }
        }).observe(chart, { attributes: true, attributeFilter: ['data-points'] });";
    let waited = client.execute_async(script, vec![json!(id), json!(points)]);
    tokio::time::timeout(PAGE_WAIT * 2, waited)
        .await
        .unwrap_or_else(|_| panic!("{id} never drew {points} values"))
        .unwrap_or_else(|e| panic!("{id} never drew {points} values: {e}"));
}

/// Every chart of the page: its id, the values it draws (its `data-points`), and its canvas's
/// size in pixels (0 without a canvas).
async fn charts(client: &Client) -> Vec<(String, u64, u64)> {
    let found = client
        .execute(
            "return [...document.querySelectorAll('.chart')].map((c) => {
               const canvas = c.querySelector('canvas');
               return [c.id, Number(c.dataset.points || 0), canvas ? canvas.width * canvas.height : 0];
             });",
            vec![],
        )
        .await
        .expect("the charts' state");
    serde_json::from_value(found).expect("[id, points, pixels] per chart")
}

/// Saves a screenshot under the target directory, and under `docs/` when asked to; returns
/// where it went.
fn save(name: &str, png: &[u8]) -> PathBuf {
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    let artifact = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    std::fs::write(&artifact, png).expect("the screenshot is saved");
    eprintln!("screenshot: {}", artifact.display());
    if std::env::var_os("COHORT_UPDATE_SCREENSHOTS").is_some() {
        let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs");
        std::fs::create_dir_all(&docs).expect("docs/ exists");
        std::fs::write(docs.join(name), png).expect("the screenshot is saved under docs/");
    }
    artifact
}

/// Three nodes; the page of n0 shows the other two linked, with round trips charted; n2 is
/// killed (SIGKILL), and within seconds the page shows its link down, then SWIM declaring it
/// down, in the table and among the events, while the charts go on with data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_page_shows_a_killed_node_go_down() {
    let _browser = BROWSER.lock().await;
    let driver = Chromedriver::start().expect("chromedriver starts (the browser tests need it)");
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("page.db");
    let n0 = Node::start("n0", &db, &[]).await;
    let n1 = Node::start("n1", &db, &[&n0]).await;
    let mut n2 = Node::start("n2", &db, &[&n0, &n1]).await;
    let load = tokio::spawn(workload(vec![n0.http, n1.http]));

    let client = browser(&driver, 1280, 1400).await;
    client
        .goto(&format!("http://{}/", n0.http))
        .await
        .expect("the page opens");
    for peer in ["n1", "n2"] {
        wait_for(
            &client,
            &format!("#members tr[data-node='{peer}'][data-link='up'][data-swim='alive']"),
        )
        .await;
    }
    wait_for(&client, "#status[data-state='ok']").await;
    // Ten seconds of round trips to both peers, so that the charts show the time before the
    // kill as well as after it.
    wait_for_points(&client, "chart-rtt", 20).await;

    n2.child.start_kill().expect("n2 is killed");
    n2.child.wait().await.expect("n2 is reaped");
    let killed = Instant::now();
    wait_for(&client, "#members tr[data-node='n2'][data-link='down']").await;
    let shown = killed.elapsed();
    assert!(
        shown < Duration::from_secs(5),
        "the page showed n2's link down {shown:?} after the kill"
    );
    wait_for(&client, "#members tr[data-node='n2'][data-swim='down']").await;
    let event = wait_for(&client, "#events li[data-node='n2'][data-kind='link']").await;
    let text = event.text().await.unwrap();
    assert!(text.contains("link to n2 down"), "{text}");
    wait_for(&client, "#members tr[data-node='n1'][data-link='up']").await;

    let charts = charts(&client).await;
    assert_eq!(
        charts
            .iter()
            .map(|(id, ..)| id.as_str())
            .collect::<Vec<_>>(),
        ["chart-rtt", "chart-log", "chart-reads"]
    );
    for (id, points, pixels) in &charts {
        assert!(*points > 0, "{id} draws no value: {charts:?}");
        assert!(*pixels > 0, "{id} has no canvas: {charts:?}");
    }
    let reads: Value = client
        .execute(
            "return fetch('page.json').then((r) => r.json()).then((s) => s.series.hits_per_s.concat(s.series.misses_per_s));",
            vec![],
        )
        .await
        .unwrap();
    assert!(
        reads
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v.as_f64().is_some_and(|v| v > 0.0)),
        "the reads chart has reads: {reads}"
    );

    let png = client.screenshot().await.expect("a screenshot");
    save("cluster-page.png", &png);
    client.close().await.expect("the session closes");
    load.abort();
}

/// A short check with kills and partitions: its report opens in Chromium with the verdict, one
/// timeline per node with the faults shaded over the nodes they struck, the staleness histogram,
/// reads by source, and the worst reads' timelines, every chart drawn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_check_report_renders_its_charts() {
    let _browser = BROWSER.lock().await;
    let driver = Chromedriver::start().expect("chromedriver starts (the browser tests need it)");
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report.html");
    let output = Command::new(env!("CARGO_BIN_EXE_cohort"))
        .args(["check", "--nodes", "3", "--duration", "10s"])
        .args(["--faults", "kill,partition", "--seed", "7", "--report"])
        .arg(&report)
        .arg("--out")
        .arg(dir.path().join("history"))
        .output()
        .await
        .expect("cohort check runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    eprintln!("{stdout}{}", String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "cohort check failed");
    assert!(stdout.trim_end().ends_with("result=PASS"), "{stdout}");
    let history = std::fs::read_to_string(dir.path().join("history/history.jsonl")).unwrap();
    assert!(
        history.lines().count() > 100,
        "--out still writes the history"
    );

    let client = browser(&driver, 1280, 1500).await;
    client
        .goto(&format!("file://{}", report.display()))
        .await
        .expect("the report opens");
    wait_for(&client, "body[data-rendered='true']").await;
    let verdict = client.find(Locator::Id("verdict")).await.unwrap();
    assert_eq!(verdict.text().await.unwrap(), "PASS");

    let charts = charts(&client).await;
    let ids: Vec<&str> = charts.iter().map(|(id, ..)| id.as_str()).collect();
    for id in [
        "timeline-n0",
        "timeline-n1",
        "timeline-n2",
        "chart-staleness",
        "worst-0",
    ] {
        assert!(ids.contains(&id), "no {id} among {ids:?}");
    }
    for (id, points, pixels) in &charts {
        assert!(*points > 0, "{id} draws no value: {charts:?}");
        assert!(*pixels > 0, "{id} has no canvas: {charts:?}");
    }
    let sources = client.find(Locator::Css("#sources")).await.unwrap();
    assert_eq!(
        sources.attr("data-points").await.unwrap().as_deref(),
        Some("3")
    );
    let faults: Value = client
        .execute(
            "return JSON.parse(document.getElementById('report-data').textContent).faults;",
            vec![],
        )
        .await
        .unwrap();
    let faults = faults.as_array().unwrap();
    assert!(
        faults
            .iter()
            .any(|f| f["kind"] == "kill" && f["nodes"].as_array().unwrap().len() == 1),
        "a kill shaded over the node it struck: {faults:?}"
    );
    assert!(
        faults.iter().any(|f| f["kind"] == "partition"),
        "{faults:?}"
    );
    for fault in faults {
        assert!(
            fault["to_s"].as_f64() >= fault["from_s"].as_f64(),
            "{fault}"
        );
    }

    let png = client.screenshot().await.expect("a screenshot");
    save("check-report.png", &png);
    client.close().await.expect("the session closes");
}
