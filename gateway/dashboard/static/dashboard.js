/* ThriftGate dashboard: reads /admin/api/... (same origin, session cookie) and renders tables and uPlot
   charts. No framework, no network beyond the gateway. Every number shown carries its raw value in
   data-value, so tests can compare it with the database. */
"use strict";

const TG = (window.TG = { charts: {} });

async function api(path) {
  const r = await fetch(path, { credentials: "same-origin", headers: { accept: "application/json" } });
  if (r.status === 401 || r.status === 403) { location.href = "/admin/ui/login"; throw new Error("logged out"); }
  if (!r.ok) throw new Error(path + ": HTTP " + r.status);
  return r.json();
}

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined) continue;
    if (k === "class") e.className = v; else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(c === null || c === undefined ? "" : String(c)));
  return e;
}

const usd = (x) => (x === null || x === undefined ? "—" : "$" + Number(x).toFixed(Math.abs(x) < 1 ? 4 : 2));
const pct = (x) => (x === null || x === undefined ? "—" : (100 * x).toFixed(1) + "%");
const num = (x) => (x === null || x === undefined ? "—" : Number(x).toLocaleString("en-US"));
const ms = (x) => (x === null || x === undefined ? "no data" : Math.round(x) + " ms");
const FORMATS = { usd, pct, num, ms, text: (x) => (x === null || x === undefined || x === "" ? "—" : String(x)) };

function cell(value, format, testid) {
  return el("td", { "data-value": value === null || value === undefined ? "" : String(value), "data-testid": testid, class: format === "text" ? "" : "n" }, FORMATS[format](value));
}

/* A table from column specs [{key, label, format}] and rows; sortable by clicking a header. */
function table(target, columns, rows, opts) {
  target.replaceChildren();
  const head = el("tr", {}, ...columns.map((c) => el("th", { "data-key": c.key, scope: "col" }, c.label)));
  const body = el("tbody");
  const draw = (data) => {
    body.replaceChildren(...data.map((r) => el("tr", {}, ...columns.map((c) => (c.render ? el("td", {}, c.render(r)) : cell(r[c.key], c.format || "text"))))));
  };
  if (!rows.length) {
    target.append(el("caption", { class: "nodata" }, (opts && opts.empty) || "no data"));
  }
  target.append(el("thead", {}, head), body);
  draw(rows);
  if (target.classList.contains("sortable")) {
    let sortKey = null, dir = 1;
    head.querySelectorAll("th").forEach((th) => th.addEventListener("click", () => {
      const key = th.dataset.key;
      dir = key === sortKey ? -dir : (typeof rows[0]?.[key] === "number" ? -1 : 1);
      sortKey = key;
      head.querySelectorAll("th").forEach((h) => h.removeAttribute("aria-sort"));
      th.setAttribute("aria-sort", dir > 0 ? "ascending" : "descending");
      const sorted = [...rows].sort((a, b) => (a[key] > b[key] ? dir : a[key] < b[key] ? -dir : 0));
      draw(sorted);
    }));
  }
}

const PALETTE = ["#2563eb", "#dc2626", "#16a34a", "#ca8a04", "#9333ea", "#0891b2", "#db2777", "#65a30d", "#78716c"];

/* A uPlot line chart of series [{name, values}] over times (ISO strings); records how many points carry
   data in data-points. */
function chart(target, times, series, opts) {
  target.replaceChildren();
  if (TG.charts[target.id]) { TG.charts[target.id].destroy(); delete TG.charts[target.id]; }
  const xs = times.map((t) => Date.parse(t) / 1000);
  const counts = opts && opts.zeros ? (v) => v !== null && v !== undefined : (v) => v;  // zeros: 0 is data
  const points = series.reduce((n, s) => n + s.values.filter(counts).length, 0);
  target.dataset.points = String(points);
  if (!xs.length || !points) { target.append(el("p", { class: "nodata" }, "no data")); return null; }
  const fmt = (opts && opts.format) || usd;
  // One point: an hour either side of it (uPlot would otherwise spread the axis over years).
  const scales = xs.length === 1 ? { x: { time: true, range: [xs[0] - 3600, xs[0] + 3600] } } : undefined;
  const u = new uPlot({
    width: Math.max(320, target.clientWidth || 900), height: 260, scales,
    series: [{}, ...series.map((s, i) => ({ label: s.name, stroke: PALETTE[i % PALETTE.length], width: 1.5, value: (_, v) => (v === null ? "—" : fmt(v)) }))],
    axes: [{}, { values: (_, ticks) => ticks.map((t) => fmt(t)), size: 70 }],
  }, [xs, ...series.map((s) => s.values)], target);
  TG.charts[target.id] = u;
  return u;
}

/* ---- pages -------------------------------------------------------------------------------------- */

const WINDOW_LABELS = { today: "Today (UTC)", "7d": "Last 7 days", "30d": "Last 30 days" };

async function overview() {
  const data = await api("/admin/api/overview");
  const root = document.getElementById("overview");
  root.replaceChildren();
  for (const [name, w] of Object.entries(data.windows)) {
    const rows = [
      ["Spend", "spend_usd", usd], ["Without ThriftGate", "counterfactual_usd", usd], ["Saved", "saved_usd", usd],
      ["Saved %", "saved_pct", (x) => (x === null ? "—" : x.toFixed(1) + "%")], ["Requests", "requests", num],
      ["Error rate", "error_rate", pct], ["Cache hit rate", "cache_hit_rate", pct],
    ];
    const dl = el("dl");
    for (const [label, key, f] of rows) {
      dl.append(el("dt", {}, label), el("dd", { "data-testid": `ov-${name}-${key}`, "data-value": w[key] ?? "" }, f(w[key])));
    }
    for (const [label, key] of [["Latency", "latency_ms"], ["Time to first token", "ttft_ms"]]) {
      for (const p of ["p50", "p95"]) {
        dl.append(el("dt", {}, `${label} ${p}`), el("dd", { "data-testid": `ov-${name}-${key}-${p}`, "data-value": w[key][p] ?? "" }, ms(w[key][p])));
      }
    }
    root.append(el("section", { class: "window", "data-window": name }, el("h2", {}, WINDOW_LABELS[name] || name), dl));
  }
  root.removeAttribute("aria-busy");
  table(document.getElementById("mechanisms"), [
    { key: "mechanism", label: "Mechanism" },
    { key: "requests", label: "Requests (30d)", format: "num" },
    { key: "saved_usd", label: "Saved (30d)", format: "usd" },
  ], data.windows["30d"].saved_by_mechanism.map((m) => ({ ...m, mechanism: m.requests ? m.mechanism : m.mechanism + " (no data)" })));
  const spend = await api("/admin/api/spend?since=7d&by=model&step=hour");
  chart(document.getElementById("overview-chart"), spend.times, spend.series.map((s) => ({ name: s.name, values: s.cost_usd })));
  document.body.dataset.ready = "1";
}

async function spendPage() {
  const form = document.getElementById("spend-controls");
  const load = async () => {
    const q = new URLSearchParams(new FormData(form));
    document.getElementById("csv-export").href = `/admin/api/spend.csv?since=${q.get("since")}&by=${q.get("by")}`;
    const data = await api(`/admin/api/spend?${q}`);
    chart(document.getElementById("spend-chart"), data.times, data.series.map((s) => ({ name: s.name, values: s.cost_usd })));
    table(document.getElementById("spend-table"), [
      { key: "name", label: data.by }, { key: "requests", label: "Requests", format: "num" },
      { key: "cost_usd", label: "Spend", format: "usd" }, { key: "counterfactual_usd", label: "Without ThriftGate", format: "usd" },
      { key: "saved_usd", label: "Saved", format: "usd" }, { key: "input_tokens", label: "Input tokens", format: "num" },
      { key: "output_tokens", label: "Output tokens", format: "num" }, { key: "unpriced_requests", label: "Unpriced", format: "num" },
    ], data.table);
    document.body.dataset.ready = "1";
  };
  form.addEventListener("change", () => { document.body.dataset.ready = ""; load(); });
  await load();
}

function keyForms(k, csrf) {
  const limits = el("form", { method: "post", action: `/admin/ui/keys/${k.id}/limits`, class: "inline", "data-testid": `limits-${k.id}` },
    el("input", { type: "hidden", name: "csrf_token", value: csrf }),
    el("input", { name: "budget_usd", type: "number", min: "0", step: "any", value: k.budget_usd ?? "", placeholder: "budget", "aria-label": "budget USD" }),
    el("input", { name: "rpm", type: "number", min: "1", value: k.rpm ?? "", placeholder: "rpm", "aria-label": "rpm" }),
    el("input", { name: "tpm", type: "number", min: "1", value: k.tpm ?? "", placeholder: "tpm", "aria-label": "tpm" }),
    el("button", { type: "submit" }, "Save"));
  const frag = el("div", {}, limits);
  if (!k.revoked) {
    frag.append(el("form", { method: "post", action: `/admin/ui/keys/${k.id}/revoke`, class: "inline", "data-testid": `revoke-${k.id}` },
      el("input", { type: "hidden", name: "csrf_token", value: csrf }), el("button", { type: "submit", class: "danger" }, "Revoke")));
  }
  return frag;
}

function budgetBar(k) {
  if (!k.budget_usd) return el("span", { class: "muted" }, `${usd(k.spend_usd)} (no budget)`);
  const used = Math.min(1, k.budget_used);
  const cls = k.budget_used >= 1 ? "bar over" : k.budget_used >= 0.8 ? "bar warn" : "bar";
  return el("div", { class: cls, title: `${usd(k.spend_usd)} of ${usd(k.budget_usd)}`, "data-value": k.budget_used },
    el("span", { style: `width:${(100 * used).toFixed(1)}%` }), el("em", {}, `${usd(k.spend_usd)} / ${usd(k.budget_usd)} (${pct(k.budget_used)})`));
}

async function keysPage() {
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  const data = await api("/admin/api/keys?since=30d");
  table(document.getElementById("keys-table"), [
    { key: "name", label: "Name" }, { key: "id", label: "Id" }, { key: "key_prefix", label: "Prefix" },
    { key: "budget", label: "Budget", render: budgetBar },
    { key: "window_requests", label: "Requests (30d)", format: "num" }, { key: "window_cost_usd", label: "Spend (30d)", format: "usd" },
    { key: "status", label: "Status", render: (k) => el("span", { "data-testid": `status-${k.id}` }, k.revoked ? "revoked" : "active") },
    { key: "actions", label: "Limits · revoke", render: (k) => keyForms(k, csrf) },
  ], data.data, { empty: "no keys yet" });
  document.body.dataset.ready = "1";
}

async function requestsPage() {
  const form = document.getElementById("request-filters");
  const params = new URLSearchParams(location.search);
  for (const [k, v] of params) if (form.elements[k]) form.elements[k].value = v;
  const columns = [
    { key: "created_at", label: "Time" }, { key: "key_id", label: "Key" }, { key: "requested_model", label: "Asked" },
    { key: "served_model", label: "Served" }, { key: "provider", label: "Provider" }, { key: "status_code", label: "Status" },
    { key: "cache", label: "Cache" }, { key: "route_reason", label: "Route reason" },
    { key: "input_tokens", label: "In", format: "num" }, { key: "output_tokens", label: "Out", format: "num" },
    { key: "cache_read_tokens", label: "Cached in", format: "num" },
    { key: "cost_usd", label: "Cost", format: "usd" }, { key: "counterfactual_usd", label: "Without", format: "usd" },
    { key: "saving_usd", label: "Saved", format: "usd" }, { key: "saving_mechanism", label: "By" },
    { key: "latency_ms", label: "Latency", format: "ms" }, { key: "error", label: "Error" },
  ];
  let rows = [];
  const load = async (before) => {
    const q = new URLSearchParams([...new URLSearchParams(new FormData(form))].filter(([, v]) => v));
    if (before) q.set("before", before);
    const page = await api(`/admin/api/requests?${q}`);
    rows = before ? rows.concat(page.data) : page.data;
    table(document.getElementById("requests-table"), columns, rows, { empty: "no requests match" });
    const more = document.getElementById("more");
    more.hidden = !page.next_before;
    more.onclick = () => load(page.next_before);
    document.body.dataset.ready = "1";
  };
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    const q = new URLSearchParams([...new URLSearchParams(new FormData(form))].filter(([, v]) => v));
    history.replaceState(null, "", "?" + q);
    load();
  });
  await load();
}

async function batchesPage() {
  const data = await api("/admin/api/batches");
  const root = document.getElementById("batches");
  const t = el("table", { class: "grid", id: "batches-table" });
  root.append(t);
  const progress = (j) => el("div", { class: "bar", "data-value": j.progress ?? "" },
    el("span", { style: `width:${(100 * (j.progress || 0)).toFixed(1)}%` }), el("em", {}, `${num(j.done)} / ${num(j.total)}`));
  table(t, [
    { key: "id", label: "Job" }, { key: "api", label: "API" }, { key: "key_id", label: "Key" }, { key: "status", label: "Status" },
    { key: "progress", label: "Progress", render: progress }, { key: "failed", label: "Failed", format: "num" },
    { key: "cost_usd", label: "Cost", format: "usd" }, { key: "saved_usd", label: "Saved", format: "usd" },
    { key: "created_at", label: "Created" },
  ], data.data, { empty: "no batch jobs yet" });
  document.body.dataset.ready = "1";
}

function summaryList(target, s, items) {
  const dl = el("dl");
  for (const [label, value] of items) dl.append(el("dt", {}, label), el("dd", {}, value));
  target.replaceChildren(s.requests ? dl : el("p", { class: "nodata" }, "no data"));
}

async function panelsPage() {
  const cache = await api("/admin/api/panels/cache?since=7d");
  summaryList(document.getElementById("cache-summary"), cache.summary, [
    ["Requests", num(cache.summary.requests)], ["Cache hits", num(cache.summary.cache_hits)], ["Hit rate", pct(cache.summary.cache_hit_rate)],
  ]);
  const hits = cache.hours.filter((h) => h.hits);
  chart(document.getElementById("cache-chart"), hits.length ? cache.hours.map((h) => h.hour) : [],
    [{ name: "hit rate", values: cache.hours.map((h) => h.hit_rate) }], { format: pct });
  const routing = await api("/admin/api/panels/routing?since=7d");
  const total = routing.models.reduce((n, m) => n + m.requests, 0);
  table(document.getElementById("routing-models"), [
    { key: "name", label: "Model" }, { key: "requests", label: "Requests", format: "num" }, { key: "share", label: "Share", format: "pct" },
    { key: "cost_usd", label: "Spend", format: "usd" }, { key: "saved_usd", label: "Saved", format: "usd" },
  ], routing.models.map((m) => ({ ...m, share: total ? m.requests / total : null })));
  table(document.getElementById("routing-reasons"), [{ key: "reason", label: "Reason" }, { key: "requests", label: "Requests", format: "num" }], routing.reasons);
  const fb = routing.fallbacks;
  document.getElementById("routing-fallbacks").replaceChildren(
    el("p", { "data-testid": "fallbacks-total", "data-value": fb.requests }, `${num(fb.requests)} requests sent to a fallback model`));
  chart(document.getElementById("routing-fallbacks-chart"), fb.hours.map((h) => h.hour),
    [{ name: "fallbacks", values: fb.hours.map((h) => h.requests) }], { format: num });
  table(document.getElementById("routing-fallback-reasons"), [{ key: "reason", label: "Route (fallback)" }, { key: "requests", label: "Requests", format: "num" }],
    fb.reasons, { empty: "no fallbacks in this window" });
  const br = routing.breakers;
  const breakers = document.getElementById("routing-breakers");
  if (!br) {
    breakers.replaceChildren(el("p", { class: "nodata" }, "no data (this router keeps no circuit breakers)"));
  } else {
    breakers.replaceChildren(el("p", { "data-testid": "breakers-transitions" },
      `Since the gateway started: ${num(br.opened)} opened, ${num(br.closed)} closed again (sampled every ${br.interval_s} s).`));
    const now = el("table", { class: "grid" });
    breakers.append(now);
    table(now, [{ key: "deployment", label: "Deployment" }, { key: "state", label: "Breaker" }], br.now, { empty: "no upstream called yet" });
    chart(document.getElementById("routing-breakers-chart"), br.series.map((x) => x.at), [
      { name: "open now", values: br.series.map((x) => x.open) },
      { name: "opened (total)", values: br.series.map((x) => x.opened) },
      { name: "closed (total)", values: br.series.map((x) => x.closed) },
    ], { format: num, zeros: true });
  }
  const local = await api("/admin/api/panels/local?since=7d");
  summaryList(document.getElementById("local-summary"), local.summary, [
    ["Requests", num(local.summary.requests)], ["Output tokens", num(local.summary.output_tokens)],
    ["Output tokens per second", local.output_tokens_per_s === null ? "no data" : local.output_tokens_per_s.toFixed(1)],
    ["Latency p50 / p95", `${ms(local.summary.latency_ms.p50)} / ${ms(local.summary.latency_ms.p95)}`],
  ]);
  const rate = (x) => (x === null || x === undefined ? "—" : Number(x).toFixed(1));
  chart(document.getElementById("local-rate-chart"), local.hours.map((h) => h.hour),
    [{ name: "output tokens/s", values: local.hours.map((h) => h.output_tokens_per_s) }], { format: rate });
  chart(document.getElementById("local-queue-chart"), local.live.map((x) => x.at), [
    { name: "waiting", values: local.live.map((x) => x.waiting) },
    { name: "running", values: local.live.map((x) => x.running) },
    { name: "tokens/s", values: local.live.map((x) => x.tokens_per_s) },
  ], { format: rate, zeros: true });
  document.body.dataset.ready = "1";
}

const PAGE_SCRIPTS = { overview, spend: spendPage, keys: keysPage, requests: requestsPage, batches: batchesPage, panels: panelsPage };
const run = PAGE_SCRIPTS[document.body.dataset.page];
if (run) run().catch((e) => { document.body.dataset.error = String(e); console.error(e); });
