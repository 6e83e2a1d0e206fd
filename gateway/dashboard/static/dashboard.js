// The Sluice dashboard: reads the gateway's reporting API with the key kept in localStorage
// and draws it with uPlot. Every chart's element gets `data-points` (steps drawn) and
// `data-rendered` (steps with data), and <body> gets `data-state` (loading, ready, error),
// so a headless browser can tell what was drawn.
//
// `#key=<key>` or `?key=<key>` in the address hands the page a key: it is stored and then
// removed from the address bar.
"use strict";

(function () {
  const STORE = "sluice.dashboard.key";
  const COLORS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2"];
  const $ = (id) => document.getElementById(id);
  let charts = [];

  function takeKeyFromAddress() {
    const hash = new URLSearchParams(location.hash.slice(1));
    const query = new URLSearchParams(location.search);
    const key = hash.get("key") || query.get("key");
    if (!key) return;
    localStorage.setItem(STORE, key);
    hash.delete("key");
    query.delete("key");
    const q = query.toString(), h = hash.toString();
    history.replaceState(null, "", location.pathname + (q ? "?" + q : "") + (h ? "#" + h : ""));
  }

  function setStatus(text, error) {
    $("status").textContent = text;
    $("status").className = error ? "error" : "";
  }

  class ApiError extends Error {
    constructor(status, message) { super(message); this.status = status; }
  }

  async function api(path, params) {
    const url = new URL(path, location.origin);
    for (const [k, v] of Object.entries(params || {})) {
      if (v !== undefined && v !== null && v !== "") url.searchParams.set(k, v);
    }
    const r = await fetch(url, {
      headers: { Authorization: "Bearer " + localStorage.getItem(STORE), Accept: "application/json" },
    });
    if (!r.ok) {
      let message = r.status + " " + r.statusText;
      try { message = r.status + ": " + (await r.json()).error.message; } catch (e) { /* not JSON */ }
      throw new ApiError(r.status, message);
    }
    return r.json();
  }

  // -- formatting -------------------------------------------------------------------------

  const usd = (micros) => micros / 1e6;
  function num(v, digits) {
    if (v === null || v === undefined || Number.isNaN(v)) return "–";
    if (Math.abs(v) >= 1e6) return (v / 1e6).toFixed(2) + "M";
    if (Math.abs(v) >= 1e4) return (v / 1e3).toFixed(1) + "k";
    return Number.isInteger(v) ? String(v) : v.toFixed(digits === undefined ? 2 : digits);
  }
  const money = (micros) => "$" + usd(micros).toFixed(usd(micros) >= 100 ? 2 : 4);
  const pct = (ratio) => (ratio === null || ratio === undefined ? "–" : (ratio * 100).toFixed(2) + "%");

  function tile(label, value) {
    const div = document.createElement("div");
    div.className = "tile";
    const b = document.createElement("b");
    b.textContent = value;
    const span = document.createElement("span");
    span.textContent = label;
    div.append(b, span);
    return div;
  }

  function table(el, headings, rows) {
    el.replaceChildren();
    const head = el.insertRow();
    for (const h of headings) {
      const th = document.createElement("th");
      th.textContent = h;
      head.append(th);
    }
    for (const row of rows) {
      const tr = el.insertRow();
      for (const cell of row) tr.insertCell().textContent = cell;
    }
  }

  // -- charts ---------------------------------------------------------------------------

  function width(el) {
    return Math.max(300, (el.clientWidth || el.parentElement.clientWidth || 560) - 4);
  }

  function mark(el, points, data) {
    const withData = points.filter((_, i) => data.some((s) => s[i] !== null && s[i] !== 0)).length;
    el.dataset.points = String(points.length);
    el.dataset.rendered = String(withData);
    el.classList.toggle("empty", withData === 0);
  }

  // A line chart over time: `lines` are [{label, value: point => number|null, scale}].
  function timeChart(id, points, lines, format) {
    const el = $(id);
    el.replaceChildren();
    const xs = points.map((p) => p.t);
    const data = lines.map((l) => points.map((p) => l.value(p)));
    mark(el, xs, data);
    const scales = [...new Set(lines.map((l) => l.scale || "y"))];
    charts.push(new uPlot({
      width: width(el), height: 220,
      tzDate: (ts) => uPlot.tzDate(new Date(ts * 1e3), "Etc/UTC"),
      scales: Object.fromEntries([["x", { time: true }], ...scales.map((s) => [s, { auto: true }])]),
      series: [{ label: "UTC" }, ...lines.map((l, i) => ({
        label: l.label, scale: l.scale || "y", stroke: COLORS[i % COLORS.length], width: 2,
        spanGaps: true, value: (u, v) => format(v),
      }))],
      axes: [{}, ...scales.map((s, i) => ({
        scale: s, side: i === 0 ? 3 : 1, size: 72, grid: { show: i === 0 },
        values: (u, vals) => vals.map((v) => format(v)),
      }))],
    }, [xs, ...data], el));
  }

  // Bars per category: `bars` are [{label, values, scale}], side by side.
  function barChart(id, names, bars, format) {
    const el = $(id);
    el.replaceChildren();
    const xs = names.map((_, i) => i);
    const data = bars.map((b) => b.values);
    mark(el, xs, data);
    if (!xs.length) return;
    const scales = [...new Set(bars.map((b) => b.scale || "y"))];
    const gap = 0.8 / bars.length;
    charts.push(new uPlot({
      width: width(el), height: 220,
      scales: Object.fromEntries([
        ["x", { time: false, range: () => [-0.5, names.length - 0.5] }],
        ...scales.map((s) => [s, { range: (u, min, max) => [0, max > 0 ? max * 1.1 : 1] }]),
      ]),
      series: [{ label: "", value: (u, i) => (i === null ? "" : names[i]) },
        ...bars.map((b, i) => ({
          label: b.label, scale: b.scale || "y", fill: COLORS[i % COLORS.length] + "cc",
          stroke: COLORS[i % COLORS.length], value: (u, v) => format(v),
          // Side by side: each series' bars start at their own offset, in x units.
          paths: uPlot.paths.bars({ disp: {
            x0: { unit: 1, values: () => xs.map((x) => x - 0.4 + i * gap) },
            size: { unit: 1, values: () => [gap * 0.9] },
          } }),
          points: { show: false },
        }))],
      axes: [
        { splits: () => xs, values: (u, splits) => splits.map((i) => names[i] ?? ""),
          grid: { show: false } },
        ...scales.map((s, i) => ({
          scale: s, side: i === 0 ? 3 : 1, size: 72, grid: { show: i === 0 },
          values: (u, vals) => vals.map((v) => format(v)),
        })),
      ],
    }, [xs, ...data], el));
  }

  // -- the page -------------------------------------------------------------------------

  function renderSummary(s) {
    const tiles = $("tiles");
    tiles.replaceChildren(
      tile("requests", num(s.requests)),
      tile("error rate", pct(s.error_rate)),
      tile("tokens", num(s.tokens.total)),
      tile("spend", money(s.spend.total_micros)),
      tile("cache hit rate", pct(s.cache.hit_rate)),
      tile("cache savings", money(s.cache.savings_micros)),
      tile("tokens saved", num(s.cache.tokens_saved)),
      tile("latency p50 / p95 / p99 ms",
           [s.latency_ms.p50, s.latency_ms.p95, s.latency_ms.p99].map((v) => num(v, 0)).join(" / ")),
      tile("TTFT p50 / p95 ms", [s.ttft_ms.p50, s.ttft_ms.p95].map((v) => num(v, 0)).join(" / ")),
    );
    const p = s.series.points;
    timeChart("chart-requests", p, [
      { label: "requests", value: (x) => x.requests },
      { label: "errors", value: (x) => x.errors },
    ], (v) => num(v, 0));
    timeChart("chart-tokens", p, [
      { label: "prompt", value: (x) => x.tokens.prompt },
      { label: "completion", value: (x) => x.tokens.completion },
    ], (v) => num(v, 0));
    timeChart("chart-spend", p, [
      { label: "USD", value: (x) => usd(x.cost_micros) },
    ], (v) => (v === null ? "–" : "$" + v.toFixed(4)));
    timeChart("chart-errors", p, [
      { label: "error rate", value: (x) => (x.error_rate === null ? null : x.error_rate * 100) },
    ], (v) => (v === null ? "–" : v.toFixed(1) + "%"));
    const quantiles = (field) => ["p50", "p95", "p99"].map((q) => ({
      label: q, value: (x) => x[field][q],
    }));
    timeChart("chart-latency", p, quantiles("latency_ms"), (v) => num(v, 0));
    timeChart("chart-ttft", p, quantiles("ttft_ms"), (v) => num(v, 0));
  }

  function renderBreakdowns(models, keys) {
    const m = models.data;
    barChart("chart-models", m.map((r) => r.model || "(none)"), [
      { label: "requests", values: m.map((r) => r.requests) },
      { label: "tokens (k)", scale: "k", values: m.map((r) => (r.prompt_tokens + r.completion_tokens) / 1e3) },
    ], (v) => num(v, 1));
    table($("table-models"), ["model", "requests", "errors", "prompt", "completion", "spend",
                               "cache hits", "saved"],
          m.map((r) => [r.model, num(r.requests), num(r.errors), num(r.prompt_tokens),
                        num(r.completion_tokens), money(r.cost_micros), ...cacheCells(r)]));
    const k = keys.data;
    barChart("chart-keys", k.map((r) => r.key_id || "(none)"), [
      { label: "requests", values: k.map((r) => r.requests) },
      { label: "USD", scale: "usd", values: k.map((r) => usd(r.cost_micros)) },
    ], (v) => num(v, 4));
    table($("table-keys"), ["key", "requests", "errors", "tokens", "spend", "cache hits",
                             "saved"],
          k.map((r) => [r.key_id, num(r.requests), num(r.errors),
                        num(r.prompt_tokens + r.completion_tokens), money(r.cost_micros),
                        ...cacheCells(r)]));
  }

  // An export row's cache hits (with the hit rate of its lookups) and net savings.
  function cacheCells(r) {
    const lookups = r.cache_hits + r.cache_misses;
    const hits = lookups ? `${num(r.cache_hits)} (${pct(r.cache_hits / lookups)})` : "–";
    return [hits, money(r.cache_savings_micros)];
  }

  async function renderAbTests(experiments) {
    const box = $("ab-tests");
    box.replaceChildren();
    if (experiments === null) {
      $("ab-note").textContent = "A/B tests are listed for the admin key.";
      return;
    }
    const recent = experiments.slice(-6).reverse();
    $("ab-note").textContent = recent.length ? "" : "No A/B tests yet.";
    for (const e of recent) {
      const fig = document.createElement("figure");
      const cap = document.createElement("figcaption");
      cap.textContent = `${e.name} (${e.experiment_id}, ${e.status}): ` +
        `${e.model_a} vs ${e.model_b}, ${e.split}% to B`;
      const chart = document.createElement("div");
      chart.className = "chart";
      chart.id = "chart-ab-" + e.experiment_id;
      const t = document.createElement("table");
      fig.append(cap, chart, t);
      box.append(fig);
      let r;
      try {
        r = await api("/v1/admin/ab-tests/" + encodeURIComponent(e.experiment_id));
      } catch (err) {
        chart.textContent = "readout unavailable: " + err.message;
        continue;
      }
      const a = r.variants.a, b = r.variants.b;
      barChart(chart.id, ["latency p50", "p95", "p99", "TTFT p50", "p95 "], [
        { label: "A " + a.model, values: [a.latency_ms.p50, a.latency_ms.p95, a.latency_ms.p99, a.ttft_ms.p50, a.ttft_ms.p95] },
        { label: "B " + b.model, values: [b.latency_ms.p50, b.latency_ms.p95, b.latency_ms.p99, b.ttft_ms.p50, b.ttft_ms.p95] },
      ], (v) => num(v, 0));
      table(t, ["variant", "requests", "error rate", "tokens", "spend"], [a, b].map((v, i) => [
        (i ? "B " : "A ") + v.model, num(v.requests), pct(v.error_rate),
        num(v.prompt_tokens + v.completion_tokens), money(v.cost_micros)]));
      const lead = document.createElement("p");
      lead.textContent = "Leader: " + (r.leader ? r.leader.toUpperCase() : "none") + " (" + r.reason + ")";
      fig.append(lead);
    }
  }

  // The admin key may list A/B tests; a tenant's key is refused (403).
  async function whoIsIt() {
    try {
      return { admin: true, experiments: (await api("/v1/admin/ab-tests")).data };
    } catch (e) {
      if (e.status === 403) return { admin: false, experiments: null };
      throw e;
    }
  }

  async function load() {
    charts.forEach((c) => c.destroy());
    charts = [];
    if (!localStorage.getItem(STORE)) {
      $("main").hidden = true;
      setStatus("Enter a key to see its usage.");
      document.body.dataset.state = "no-key";
      return;
    }
    document.body.dataset.state = "loading";
    setStatus("Loading…");
    try {
      const who = await whoIsIt();
      const [span, bucket] = $("period").value.split(":");
      const to = Math.ceil(Date.now() / 60000) * 60;
      const scope = { from: String(to - Number(span)), to: String(to) };
      if (who.admin && $("tenant").value.trim()) scope.tenant = $("tenant").value.trim();
      const prefix = who.admin ? "/v1/admin" : "/v1";
      $("tenant-label").hidden = !who.admin;
      const [summary, models, keys] = await Promise.all([
        api(prefix + "/analytics", { ...scope, bucket }),
        api(prefix + "/usage/export", { ...scope, group_by: "model", format: "json" }),
        api(prefix + "/usage/export", { ...scope, group_by: "key", format: "json" }),
      ]);
      $("who").textContent = who.admin
        ? "admin key" + (summary.tenant ? ", tenant " + summary.tenant : ", every tenant")
        : "tenant " + summary.tenant;
      $("main").hidden = false;
      renderSummary(summary);
      renderBreakdowns(models, keys);
      await renderAbTests(who.experiments);
      setStatus(`${summary.period.from} to ${summary.period.to} (UTC)`);
      document.body.dataset.state = "ready";
    } catch (e) {
      setStatus(e.message, true);
      document.body.dataset.state = "error";
    }
  }

  $("key-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const key = $("key-input").value.trim();
    if (key) localStorage.setItem(STORE, key);
    $("key-input").value = "";
    load();
  });
  $("forget").addEventListener("click", () => { localStorage.removeItem(STORE); load(); });
  $("period").addEventListener("change", load);
  $("refresh").addEventListener("click", load);
  $("tenant").addEventListener("change", load);
  let resizing = null;
  window.addEventListener("resize", () => {
    clearTimeout(resizing);
    resizing = setTimeout(() => charts.forEach((c) => c.setSize({
      width: width(c.root.parentElement), height: 220 })), 200);
  });

  takeKeyFromAddress();
  load();
})();
