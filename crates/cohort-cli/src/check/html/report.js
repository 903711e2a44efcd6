// The report of a `cohort check` run: draws the data embedded in the page (#report-data) with
// uPlot, also embedded. Texts from the run are set as text, never as HTML.
(() => {
  "use strict";
  const data = JSON.parse(document.getElementById("report-data").textContent);
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
  const count = (n) => Number(n).toLocaleString("en");
  const ms = (v) => (v < 10 ? v.toFixed(2) : Math.round(v)) + " ms";
  const secs = (v) => v.toFixed(3) + " s";
  const faultColors = {
    kill: "224,49,49", pause: "112,72,232", partition: "240,140,0", drop: "28,126,214",
    slow: "12,166,120", external: "134,142,150", dbpause: "160,82,45",
  };
  const faultColor = (kind, alpha) => `rgba(${faultColors[kind] || "134,142,150"},${alpha})`;
  const width = (element) => Math.max(element.clientWidth, 320);
  const dpr = () => window.devicePixelRatio || 1;

  // A uPlot hook that shades `windows` ({kind, from_s, to_s}) under the series, labelled.
  function shade(windows) {
    return (u) => {
      const ctx = u.ctx;
      ctx.save();
      ctx.font = `${11 * dpr()}px system-ui, sans-serif`;
      for (const w of windows) {
        const x0 = u.valToPos(w.from_s, "x", true);
        const x1 = u.valToPos(w.to_s, "x", true);
        const wide = Math.max(x1 - x0, 2 * dpr());
        ctx.fillStyle = faultColor(w.kind, 0.16);
        ctx.fillRect(x0, u.bbox.top, wide, u.bbox.height);
        ctx.fillStyle = faultColor(w.kind, 0.9);
        ctx.fillText(w.kind, x0 + 2 * dpr(), u.bbox.top + 12 * dpr());
      }
      ctx.restore();
    };
  }

  // Draws a chart in `target` and counts the values it shows in its data-points attribute.
  function plot(target, opts, rows) {
    const points = rows.slice(1).reduce((n, ys) => n + ys.filter((v) => v !== null && v !== undefined).length, 0);
    target.setAttribute("data-points", String(points));
    return new uPlot({ width: width(target), legend: { live: false }, ...opts }, rows, target);
  }

  function header() {
    const v = data.verdict;
    const r = data.run;
    const verdict = $("verdict");
    verdict.textContent = v.passed ? "PASS" : "FAIL";
    verdict.className = "verdict " + (v.passed ? "pass" : "fail");
    $("run").textContent = `${r.nodes} nodes · ${r.duration_s} s · faults ${r.faults.join(", ") || "none"} · ` +
      `mode ${r.mode} · bound ${r.bound_ms} ms (plain SQL: ${r.max_staleness_ms} ms) · seed ${r.seed} · ` +
      `${r.clients} clients on ${r.keys} keys`;
    const figure = (value, label, tone) => el("div", { class: "figure " + (tone || "") }, el("b", {}, value), el("span", {}, label));
    $("figures").replaceChildren(
      figure(count(v.stale_beyond_bound), "reads stale beyond the bound", v.stale_beyond_bound ? "bad" : "good"),
      figure((v.max_staleness_at_least ? "≥ " : "") + ms(v.max_staleness_ms), `max staleness (bound ${r.bound_ms} ms)`),
      figure(count(v.judged), `reads judged: ${count(v.fresh)} fresh, ${count(v.stale_within_bound)} behind within the bound`),
      figure(count(v.updates), `updates (${count(v.by_sql)} by plain SQL)`),
      figure(count(data.faults.length), "faults injected"),
      figure(count(v.failed), "requests failed or timed out"));
    const problems = [...v.problems];
    if (v.too_old) problems.push(`${count(v.too_old)} reads reached the judge too late to be judged`);
    if (v.recorded_late) problems.push(`${count(v.recorded_late)} updates were recorded after reads they bear on were judged`);
    $("problems").replaceChildren(...problems.map((p) => el("li", {}, p)));
  }

  function timelines() {
    const kinds = [...new Set(data.faults.map((f) => f.kind))];
    // Reads answered by another node, the key's owner: partitioned mode only.
    const owners = data.timeline.nodes.some((bins) => bins.some((b) => b[1] > 0));
    const key = (color, label) => el("span", {}, el("i", { style: `background:${color}` }), label);
    $("fault-legend").replaceChildren(
      key("#2b8a3e", "reads from cache/s"), ...(owners ? [key("#7048e8", "reads from the key's owner/s")] : []),
      key("#e67700", "reads from the database/s"), key("#1c7ed6", "updates/s"),
      ...kinds.map((kind) => key(faultColor(kind, 0.5), `fault: ${kind}`)));
    const t = data.timeline;
    const bins = t.sql.length;
    const xs = Array.from({ length: bins }, (_, i) => i * t.bin_s);
    const container = $("timelines");
    const rows = t.nodes.map((_, node) => ({ name: `n${node}`, node }));
    if (t.sql.some((v) => v > 0)) rows.push({ name: "plain SQL", node: null });
    for (const row of rows) {
      const target = el("div", { class: "chart", id: `timeline-${row.name.replace(" ", "-")}` });
      container.append(el("h3", {}, row.name), target);
      const windows = data.faults.filter((f) => row.node === null ? f.nodes.length === 0 : (f.nodes.length === 0 || f.nodes.includes(row.node)));
      const series = row.node === null
        ? [{ label: "plain-SQL updates/s", stroke: "#495057", values: t.sql }]
        : [
          { label: "reads from cache/s", stroke: "#2b8a3e", values: t.nodes[row.node].map((b) => b[0]) },
          ...(owners ? [{ label: "reads from the key's owner/s", stroke: "#7048e8", values: t.nodes[row.node].map((b) => b[1]) }] : []),
          { label: "reads from the database/s", stroke: "#e67700", values: t.nodes[row.node].map((b) => b[2]) },
          { label: "updates/s", stroke: "#1c7ed6", values: t.nodes[row.node].map((b) => b[3]) },
        ];
      plot(target, {
        height: 150,
        legend: { show: false },
        scales: { x: { time: false, range: [0, Math.max(data.run.duration_s, xs[xs.length - 1] || 0)] } },
        axes: [{ label: "seconds", values: (u, splits) => splits.map((s) => s + " s") }, { size: 50 }],
        series: [{}, ...series.map((s) => ({ label: s.label, stroke: s.stroke, width: 1.5, points: { show: false } }))],
        hooks: { drawClear: [shade(windows)] },
      }, [xs, ...series.map((s) => s.values)]);
    }
  }

  function staleness() {
    const h = data.staleness;
    const v = data.verdict;
    const bound = data.run.bound_ms;
    const short = (v) => (v >= 1000 ? `${v / 1000}s` : `${v}`);
    const labels = [`<${short(h.edges_ms[0])}`];
    for (let i = 1; i < h.edges_ms.length; i++) labels.push(`${short(h.edges_ms[i - 1])}–${short(h.edges_ms[i])}`);
    labels.push(`≥${short(h.edges_ms[h.edges_ms.length - 1])}`);
    // Bins up to the last one with a read, or to just past the bound.
    const boundBin = h.edges_ms.indexOf(bound) + 1;
    let last = Math.min(labels.length - 1, boundBin + 1);
    for (let i = 0; i < labels.length; i++) if (h.within[i] + h.beyond[i] > 0) last = Math.max(last, i);
    const n = last + 1;
    const xs = Array.from({ length: n }, (_, i) => i);
    const total = xs.map((i) => h.within[i] + h.beyond[i]);
    const within = xs.map((i) => h.within[i]);
    $("staleness-note").textContent = `Reads behind an update that had returned before they started, by how far ` +
      `behind (ms); ${count(v.fresh)} of ${count(v.judged)} judged reads saw the newest version and are not drawn. ` +
      `Red: beyond the update's promise (the bound ${bound} ms, dashed).`;
    const bars = uPlot.paths.bars({ size: [0.8, 64] });
    plot($("chart-staleness"), {
      height: 260,
      scales: { x: { time: false, range: [-0.5, n - 0.5] }, y: { range: (u, min, max) => [0, Math.max(1, max * 1.1)] } },
      axes: [
        { label: "lag, ms", splits: () => xs, values: (u, splits) => splits.map((i) => labels[i] ?? ""), rotate: -35, size: 56 },
        { label: "reads", size: 50 },
      ],
      series: [{},
        { label: "beyond the promise", fill: "rgba(198,40,40,0.8)", stroke: "rgb(198,40,40)", paths: bars, points: { show: false } },
        { label: "within the promise", fill: "rgba(47,111,222,0.8)", stroke: "rgb(47,111,222)", paths: bars, points: { show: false } }],
      hooks: {
        draw: [(u) => {
          if (boundBin <= 0) return;
          const x = u.valToPos(boundBin - 0.5, "x", true);
          const ctx = u.ctx;
          ctx.save();
          ctx.strokeStyle = "#495057";
          ctx.setLineDash([6 * dpr(), 4 * dpr()]);
          ctx.lineWidth = dpr();
          ctx.beginPath();
          ctx.moveTo(x, u.bbox.top);
          ctx.lineTo(x, u.bbox.top + u.bbox.height);
          ctx.stroke();
          ctx.fillStyle = "#495057";
          ctx.font = `${11 * dpr()}px system-ui, sans-serif`;
          ctx.fillText(`bound ${bound} ms`, x + 4 * dpr(), u.bbox.top + 12 * dpr());
          ctx.restore();
        }],
      },
    }, [xs, total, within]);
  }

  function sources() {
    const target = $("sources");
    const kinds = [["cache", "#2b8a3e", "cache"], ["owner", "#7048e8", "owner"],
      ["owner_skipped", "#f08c00", "db, owner skipped"], ["db", "#e67700", "db"]]
      .filter(([name]) => data.sources.some((s) => (s[name] || 0) > 0));
    const total = (s) => kinds.reduce((n, [name]) => n + (s[name] || 0), 0);
    const most = Math.max(1, ...data.sources.map(total));
    const rows = data.sources.map((s, node) => {
      const reads = total(s);
      const share = (n) => `${(100 * n / most).toFixed(2)}%`;
      return el("div", { class: "row" },
        el("span", {}, `n${node}`),
        el("div", { class: "track" }, ...kinds.map(([name, color, label]) =>
          el("div", { style: `width:${share(s[name] || 0)};background:${color}`, title: `${s[name] || 0} from ${label}` }))),
        el("span", { class: "count" }, kinds.map(([name, , label]) => `${count(s[name] || 0)} ${label}`).join(" · ") +
          (reads ? ` (${(100 * (s.cache || 0) / reads).toFixed(0)} % hits)` : "")));
    });
    const legend = el("div", { class: "legend" },
      ...kinds.map(([, color, label]) => el("span", {}, el("i", { style: `background:${color}` }), label)));
    target.classList.add("bars");
    target.replaceChildren(legend, ...rows);
    target.setAttribute("data-points", String(data.sources.filter((s) => total(s) > 0).length));
  }

  function worst() {
    const container = $("worst");
    if (data.worst.length === 0) {
      container.replaceChildren(el("p", { class: "note" }, "No read missed an update that had returned before it started."));
      return;
    }
    data.worst.forEach((w, i) => {
      const read = w.read;
      const late = w.beyond ? el("span", { class: "late-beyond" }, `${w.at_least ? "at least " : ""}${ms(w.lag_ms)} behind: beyond the promise of ${ms(w.missed.promise_ms)}`)
        : `${ms(w.lag_ms)} behind, within the promise of ${ms(w.missed.promise_ms)}`;
      const target = el("div", { class: "chart", id: `worst-${i}` });
      container.append(el("div", { class: "offender" },
        el("p", {}, el("b", {}, `key ${w.key}`),
          `: a read on n${read.node} (${read.source}) started at ${secs(read.from_s)} and saw v${read.version}; ` +
          `v${w.missed.version} had returned at ${secs(w.missed.returned_s)} by ${w.missed.by}: `, late),
        target));
      // One x per point: updates at their return, reads at their start.
      const points = [];
      for (const op of w.context) {
        const series = op.kind === "update" ? (op.node === null ? 1 : 0) : (op.source === "cache" || op.source === "owner" ? 2 : 3);
        points.push({ x: op.kind === "update" ? op.to_s : op.from_s, y: op.version, series });
      }
      points.push({ x: read.from_s, y: read.version, series: 4 });
      points.sort((a, b) => a.x - b.x);
      const xs = points.map((p) => p.x);
      const ys = [0, 1, 2, 3, 4].map((s) => points.map((p) => (p.series === s ? p.y : null)));
      const due = w.missed.returned_s + w.missed.promise_ms / 1000;
      const lo = Math.min(xs[0], w.missed.returned_s) - 0.05;
      const hi = Math.max(xs[xs.length - 1], due) + 0.05;
      const windows = data.faults.filter((f) => f.to_s >= lo && f.from_s <= hi);
      const dot = (stroke, size) => ({ stroke, paths: () => null, points: { show: true, size, stroke, fill: stroke } });
      plot(target, {
        height: 170,
        scales: { x: { time: false, range: [lo, hi] } },
        axes: [{ values: (u, splits) => splits.map((s) => s.toFixed(2) + " s") }, { label: "version", size: 50 }],
        series: [{},
          { label: "update through a node", ...dot("#1c7ed6", 7) },
          { label: "plain-SQL update", ...dot("#495057", 7) },
          { label: "read from a cache", ...dot("#2b8a3e", 5) },
          { label: "read from the database", ...dot("#e67700", 5) },
          { label: "this read", ...dot("#c62828", 11) }],
        hooks: {
          drawClear: [shade(windows)],
          draw: [(u) => {
            const ctx = u.ctx;
            ctx.save();
            ctx.lineWidth = dpr();
            ctx.font = `${11 * dpr()}px system-ui, sans-serif`;
            for (const [x, label, dash] of [[w.missed.returned_s, `v${w.missed.version} returned`, []], [due, "due", [5 * dpr(), 4 * dpr()]]]) {
              const px = u.valToPos(x, "x", true);
              ctx.strokeStyle = "#c62828";
              ctx.setLineDash(dash);
              ctx.beginPath();
              ctx.moveTo(px, u.bbox.top);
              ctx.lineTo(px, u.bbox.top + u.bbox.height);
              ctx.stroke();
              ctx.fillStyle = "#c62828";
              ctx.fillText(label, px + 3 * dpr(), u.bbox.top + u.bbox.height - 4 * dpr());
            }
            ctx.restore();
          }],
        },
      }, [xs, ...ys]);
    });
  }

  header();
  timelines();
  staleness();
  sources();
  worst();
  document.body.setAttribute("data-rendered", "true");
})();
