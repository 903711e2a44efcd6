// The live cluster page: asks page.json beside the page every second and redraws. Every text
// that comes from the node (names, addresses, errors, which peers may have chosen) is set as
// text, never as HTML.
(() => {
  "use strict";
  const base = location.pathname.endsWith("/") ? location.pathname : location.pathname + "/";
  const jsonUrl = base + "page.json";
  const palette = ["#2f6fde", "#d9480f", "#2b8a3e", "#9c36b5", "#e67700", "#0b7285", "#c2255c", "#5c940d"];
  const charts = {};
  let lastOk = null;

  const $ = (id) => document.getElementById(id);
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value !== undefined && value !== null) node.setAttribute(key, value);
    }
    for (const child of children) {
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }
  const badge = (text, tone) => el("span", { class: "badge " + tone }, text);
  const clock = (ms) => new Date(ms).toLocaleTimeString([], { hour12: false });
  function duration(ms) {
    if (ms === null || ms === undefined) return "—";
    if (ms === 0) return "0 ms";
    if (ms < 1) return Math.round(ms * 1000) + " µs";
    if (ms < 10) return ms.toFixed(2) + " ms";
    if (ms < 10000) return Math.round(ms) + " ms";
    return (ms / 1000).toFixed(1) + " s";
  }
  const count = (n) => (n === null || n === undefined ? "—" : n.toLocaleString("en"));
  const cell = (content, cls) => el("td", cls ? { class: cls } : {}, content);

  function renderHeader(state) {
    const node = state.node;
    $("node-name").textContent = node.name;
    $("node-facts").textContent =
      `process ${node.incarnation} · peers dial ${node.addr} · bound Δ ${node.max_staleness_ms} ms`;
    document.title = `cohort ${node.name}`;
  }

  function renderMembers(state) {
    const body = $("members").tBodies[0];
    const rows = [];
    const node = state.node;
    rows.push(el("tr", { class: "self", "data-node": node.name, "data-link": "self" },
      cell(node.name + " (this node)"), cell(node.addr), cell(node.incarnation), cell("—"),
      cell("—"), cell("—"), cell("—"), cell("—"),
      cell(state.change_log ? duration(state.change_log.lease_remaining_ms) + " (change log)" : "—", "num")));
    for (const m of state.members) {
      const link = m.link === "up" ? badge("up", "good") : badge("down", "bad");
      const swimTone = { alive: "good", suspect: "meh", down: "bad" }[m.swim] || "meh";
      rows.push(el("tr", { "data-node": m.node ?? m.addr, "data-link": m.link, "data-swim": m.swim ?? "unknown" },
        cell(m.node ?? "(seed, not reached)"), cell(m.addr), cell(m.incarnation ?? "—"), cell(link),
        cell(m.swim ? badge(m.swim, swimTone) : "—"), cell(m.live ? "yes" : "no"),
        cell(m.last_heard_ms === null ? "—" : duration(m.last_heard_ms) + " ago", "num"),
        cell(m.round_trip_us === null ? "—"
          : m.link === "up" ? duration(m.round_trip_us / 1000)
          : `— (last ${duration(m.round_trip_us / 1000)})`, "num"),
        cell(m.lease_remaining_ms === 0 ? "expired" : duration(m.lease_remaining_ms), "num")));
    }
    body.replaceChildren(...rows);
  }

  function renderCaches(state) {
    const body = $("caches").tBodies[0];
    body.replaceChildren(...state.caches.map((c) => {
      const reads = c.hits + c.misses;
      const ratio = reads === 0 ? "—" : (100 * c.hits / reads).toFixed(1) + " %";
      return el("tr", { "data-cache": c.name },
        cell(c.name), cell(count(c.entries), "num"), cell(ratio, "num"), cell(count(c.hits), "num"),
        cell(count(c.misses), "num"), cell(count(c.loads), "num"), cell(count(c.bypasses), "num"),
        cell(count(c.fills_rejected), "num"), cell(count(c.flushes), "num"),
        cell(count(c.updates), "num"), cell(count(c.invalidations_applied), "num"));
    }));
    const log = state.change_log;
    const mesh = state.mesh;
    const parts = [];
    if (log) {
      parts.push(log.serving ? "change-log lease held" : "change-log lease LAPSED: caches read the database");
      parts.push(`last poll ${duration(log.last_poll_age_ms)} ago`, `${count(log.behind_rows)} rows behind`,
        `${count(log.polls)} polls`, `${count(log.errors)} errors`);
      if (log.last_error) parts.push(`last error: ${log.last_error}`);
    } else {
      parts.push("no change log: caches rest on the mesh alone");
    }
    if (mesh) {
      parts.push(`mesh: ${count(mesh.events_sent)} events sent, ${count(mesh.events_applied)} applied, ` +
        `${count(mesh.gaps)} gaps, ${count(mesh.frames_rejected)} frames rejected`);
    }
    $("change-log").textContent = parts.join(" · ");
  }

  function renderEvents(state) {
    $("events").replaceChildren(...state.events.map((e) =>
      el("li", { "data-kind": e.kind, "data-node": e.node },
        el("time", {}, clock(e.at_ms)), badge(e.kind, e.kind === "flush" ? "bad" : e.kind === "link" ? "meh" : "good"),
        " ", e.text)));
  }

  // Draws `series` ([{label, values, scale, dash}]) over times `t` in the chart at `id`; makes
  // the chart again when the set of series changes (a peer came or went).
  function draw(id, t, series, axes) {
    const target = $(id);
    const key = series.map((s) => s.label).join("\u0000");
    const data = [t, ...series.map((s) => s.values)];
    const points = series.reduce((n, s) => n + s.values.filter((v) => v !== null).length, 0);
    target.setAttribute("data-points", String(points));
    let chart = charts[id];
    if (chart && chart.key === key) {
      chart.plot.setData(data);
      return;
    }
    if (chart) chart.plot.destroy();
    const opts = {
      width: Math.max(target.clientWidth, 320),
      height: 220,
      scales: { x: { time: true } },
      legend: { live: false },
      series: [{}, ...series.map((s, i) => ({
        label: s.label, scale: s.scale || "y", stroke: s.color || palette[i % palette.length],
        width: 2, dash: s.dash, spanGaps: false, points: { show: false },
      }))],
      axes: [{}, ...axes],
    };
    charts[id] = { key, plot: new uPlot(opts, data, target) };
  }

  function renderCharts(state) {
    const s = state.series;
    draw("chart-rtt", s.t, s.round_trip_ms.map((p) => ({ label: p.peer, values: p.values })),
      [{ label: "ms", size: 60 }]);
    const bound = s.t.map(() => state.node.max_staleness_ms);
    draw("chart-log", s.t, [
      { label: "last poll age", values: s.log_poll_age_ms, scale: "ms" },
      { label: "lease left", values: s.log_lease_ms, scale: "ms" },
      { label: "bound Δ", values: bound, scale: "ms", dash: [6, 4], color: "#868e96" },
      { label: "rows behind", values: s.log_behind_rows, scale: "rows", color: "#9c36b5" },
    ], [{ scale: "ms", label: "ms", size: 60 }, { scale: "rows", label: "rows", side: 1, grid: { show: false } }]);
    draw("chart-reads", s.t, [
      { label: "hits", values: s.hits_per_s, color: "#2b8a3e" },
      { label: "misses", values: s.misses_per_s, color: "#e67700" },
      { label: "bypasses", values: s.bypasses_per_s, color: "#c62828" },
    ], [{ label: "per second", size: 60 }]);
  }

  function setStatus(ok, text) {
    const status = $("status");
    status.dataset.state = ok ? "ok" : "down";
    status.textContent = text;
  }

  async function refresh() {
    let every = 1000;
    try {
      const response = await fetch(jsonUrl, { cache: "no-store" });
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      const state = await response.json();
      every = state.node.sample_every_ms || every;
      renderHeader(state);
      renderMembers(state);
      renderCaches(state);
      renderCharts(state);
      renderEvents(state);
      lastOk = Date.now();
      setStatus(true, `live · updated ${clock(lastOk)}`);
    } catch (error) {
      const since = lastOk ? ` (last answer ${clock(lastOk)})` : "";
      setStatus(false, `this node does not answer: ${error.message}${since}`);
    }
    setTimeout(refresh, every);
  }

  window.addEventListener("resize", () => {
    for (const [id, chart] of Object.entries(charts)) {
      chart.plot.setSize({ width: Math.max($(id).clientWidth, 320), height: 220 });
    }
  });
  refresh();
})();
