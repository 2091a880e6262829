// The dashboard page: four views (Batches, Limits, Workers, Spend) redrawn from each live snapshot.

import { act, follow, getJSON, setToken, takeTokenFromAddress, token } from "./api.js";
import { lineChart } from "./chart.js";

const state = { reading: null, failures: new Map(), open: new Set() };

function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === false || value === null || value === undefined) continue;
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

const number = (v, digits = 0) => (v === null || v === undefined ? "–" : Number(v).toLocaleString("en-US", { maximumFractionDigits: digits }));
const money = (v) => (v === null || v === undefined ? "–" : `$${Number(v).toFixed(v >= 100 ? 2 : 4)}`);

function duration(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  const s = Math.round(seconds);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
  return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
}

function table(headings, rows, cls = "") {
  return h("table", { class: cls },
    h("thead", {}, h("tr", {}, headings.map((x) => h("th", {}, x)))),
    h("tbody", {}, rows.map((cells) => h("tr", {}, cells.map((c) => h("td", {}, c))))));
}

function stat(label, value, cls = "") {
  return h("div", { class: `stat ${cls}` }, h("span", { class: "label" }, label), h("span", { class: "value" }, value));
}

function notice(text, kind = "info") {
  const node = document.getElementById("notice");
  node.textContent = text;
  node.className = `notice ${kind}`;
  node.hidden = !text;
}

async function action(batchId, verb) {
  if (!token()) {
    notice("Actions need the dashboard's token: paste the one `llmqueue dashboard` printed into the token field.", "error");
    document.getElementById("token").focus();
    return;
  }
  if (verb === "cancel" && !confirm(`Cancel batch ${batchId}? Queued jobs end as cancelled.`)) return;
  const result = await act(`/api/batches/${encodeURIComponent(batchId)}/${verb}`);
  if (!result.ok) notice(`${verb} ${batchId}: refused (${result.status}): ${result.body.error || ""}`, "error");
  else if (verb === "cancel") notice(`batch ${batchId}: ${result.body.cancelled} job(s) cancelled; running jobs finish`, "ok");
  else if (verb === "pause") notice(`batch ${batchId} paused: no call starts until it is resumed; calls in flight finish`, "ok");
  else if (verb === "resume") notice(`batch ${batchId} resumed: its ${result.body.queued} queued job(s) go on`, "ok");
  else notice(`batch ${batchId}: ${result.body.requeued} failed job(s) queued again`, "ok");
}

async function scopeAction(scope, verb) {
  if (!token()) {
    notice("Actions need the dashboard's token: paste the one `llmqueue dashboard` printed into the token field.", "error");
    document.getElementById("token").focus();
    return;
  }
  const result = await act(`/api/limits/${encodeURIComponent(scope)}/${verb}`);
  if (!result.ok) notice(`${verb} ${scope}: refused (${result.status}): ${result.body.error || ""}`, "error");
  else if (verb === "pause") notice(`scope ${scope} paused: no call to it starts until it is resumed`, "ok");
  else notice(`scope ${scope} resumed: ${result.body.resumed} held job(s) start now`, "ok");
}

function scopeButton(scope, paused) {
  return paused
    ? h("button", { type: "button", class: "resume", "data-scope": scope, onclick: () => scopeAction(scope, "resume") }, "Resume")
    : h("button", { type: "button", class: "pause", "data-scope": scope, onclick: () => scopeAction(scope, "pause") }, "Pause");
}

function limitLines(limits) {
  return limits.filter((l) => l.rpm > 0).slice(0, 3).map((l) => ({ label: `${l.scope} limit ${number(l.rpm)}/min`, value: l.rpm }));
}

function failuresView(batch) {
  const count = batch.failed + batch.cancelled;
  if (!count) return null;
  // Grouped by the server at most every 10 s: asked again while its total lags behind the batch's count.
  const known = state.failures.get(batch.batch_id) || { groups: null, total: -1, askedAt: 0, pending: false };
  state.failures.set(batch.batch_id, known);
  if (known.total !== count && !known.pending && Date.now() - known.askedAt > 3000) {
    Object.assign(known, { pending: true, askedAt: Date.now() });
    getJSON(`/api/batches/${encodeURIComponent(batch.batch_id)}/failures`)
      .then((groups) => { Object.assign(known, { groups, total: groups.reduce((n, g) => n + g.count, 0) }); render(); })
      .catch(() => {})
      .finally(() => { known.pending = false; });
  }
  const groups = known.groups;
  const key = `failures:${batch.batch_id}`;
  return h("details", { class: "failures", "data-key": key, open: state.open.has(key) },
    h("summary", {}, `${count} failed or cancelled job(s), by reason`),
    groups === null ? h("p", {}, "reading…") : table(["reason", "jobs", "examples"], groups.map((g) => [
      g.reason, number(g.count),
      h("ul", {}, g.examples.map((e) => h("li", {}, h("code", {}, e.job_id), ` (${e.attempts} attempt(s)${e.status_code ? `, HTTP ${e.status_code}` : ""}): ${e.message}`))),
    ])));
}

function batchCard(batch, limits) {
  const pct = batch.total ? (100 * batch.finished) / batch.total : 0;
  const chart = batch.chart.length
    ? lineChart({
      title: `requests per minute of ${batch.batch_id} against the limit`,
      series: [{ label: "requests/min", cls: "requests", points: batch.chart.map((p) => [p[0], p[1]]) }],
      limits: limitLines(limits),
    })
    : null;
  return h("article", { class: `batch ${batch.state.replace(" ", "-")}`, "data-batch": batch.batch_id },
    h("header", {},
      h("h2", {}, batch.batch_id),
      h("span", { class: "badge" }, batch.state),
      h("span", { class: "actions" },
        batch.paused
          ? h("button", { type: "button", class: "resume", disabled: batch.done, onclick: () => action(batch.batch_id, "resume") }, "Resume")
          : h("button", { type: "button", class: "pause", disabled: batch.done || batch.cancel_requested, onclick: () => action(batch.batch_id, "pause") }, "Pause"),
        h("button", { type: "button", class: "cancel", disabled: batch.done || batch.cancel_requested, onclick: () => action(batch.batch_id, "cancel") }, "Cancel"),
        h("button", { type: "button", class: "retry", disabled: !batch.failed, onclick: () => action(batch.batch_id, "retry") }, "Retry failed"))),
    h("div", { class: "progress" },
      h("progress", { max: Math.max(1, batch.total), value: batch.finished }),
      h("span", { class: "progress-text" }, `${number(batch.finished)} / ${number(batch.total)} done (${pct.toFixed(1)}%)`)),
    h("div", { class: "stats" },
      stat("succeeded", number(batch.succeeded), "ok"),
      stat("failed", number(batch.failed), batch.failed ? "bad" : ""),
      stat("cancelled", number(batch.cancelled)),
      stat("cached", number(batch.cached)),
      stat("running", number(batch.running)),
      stat("queued", number(batch.queued + batch.retry_waiting)),
      stat("requests/min", number(batch.requests_per_minute, 1)),
      stat("tokens/min", number(batch.tokens_per_minute)),
      stat("429s", number(batch.rate_limited), batch.rate_limited ? "warn" : ""),
      stat("cost", money(batch.cost)),
      stat("projected", money(batch.projected_cost)),
      stat(batch.done ? "took" : "ETA", duration(batch.done ? batch.elapsed : batch.eta_seconds))),
    chart,
    failuresView(batch));
}

function renderBatches(reading) {
  const list = reading.batches;
  if (!list.length) return [h("p", { class: "empty" }, "No batch in this Redis yet: `llmqueue submit FILE` or `llmqueue run FILE`.")];
  return list.map((b) => batchCard(b, reading.limits));
}

function renderLimits(reading) {
  const shown = new Set(reading.limits.map((l) => l.scope));
  const unseen = (reading.paused_scopes || []).filter((s) => !shown.has(s));
  const pausedList = unseen.length
    ? h("p", { class: "notice paused-scopes" }, "Paused, not used yet: ", ...unseen.map((s) => h("span", { class: "scope" }, `${s} `, scopeButton(s, true))))
    : null;
  if (!reading.limits.length) return [pausedList, h("p", { class: "empty" }, "No limit scope in use (no worker has taken from the limiter in the last hour).")].filter(Boolean);
  const rows = reading.limits.map((l) => [
    h("span", { class: "scope" }, l.scope, l.deployment_of ? h("small", {}, ` deployment of ${l.deployment_of}`) : null),
    h("span", { class: l.paused ? "warn" : "" }, l.paused ? `paused (${l.state})` : l.state), l.source,
    l.rpm ? `${number(l.rpm)}/min` : "–",
    l.tpm ? `${number(l.tpm)}/min` : "–",
    `${number(l.request_level, 1)} / ${number(l.request_capacity, 1)}`,
    l.tpm ? `${number(l.token_level)} / ${number(l.token_capacity)}` : "–",
    l.cooldown > 0 ? `${l.cooldown.toFixed(1)}s` : "–",
    `${Math.round(l.others_request_share * 100)}%`,
    number(l.requests_last_minute),
    h("span", { class: l.rate_limited_last_minute ? "warn" : "" }, number(l.rate_limited_last_minute)),
    scopeButton(l.scope, l.paused),
  ]);
  const charts = reading.limits.filter((l) => l.chart.length > 1).map((l) => h("figure", { class: "scope-chart" },
    h("figcaption", {}, `${l.scope}: requests in the last minute against its limit`),
    lineChart({
      title: `${l.scope} requests per minute`,
      series: [
        { label: "requests last minute", cls: "requests", points: l.chart.map((p) => [p[0], p[1]]) },
        { label: "429s last minute", cls: "errors", points: l.chart.map((p) => [p[0], p[3]]) },
      ],
      limits: l.rpm > 0 ? [{ label: `limit ${number(l.rpm)}/min`, value: l.rpm }] : [],
    })));
  return [table(["scope", "state", "source", "requests limit", "tokens limit", "request bucket", "token bucket", "cooldown", "others' share", "requests (1 min)", "429s (1 min)", ""], rows, "limits"), pausedList, ...charts].filter(Boolean);
}

function renderWorkers(reading) {
  if (!reading.workers.length) return [h("p", { class: "empty" }, "No worker is running: start one with `llmqueue worker`.")];
  return [table(["host", "pid", "queue", "jobs in flight", "last heartbeat", "up", "version"], reading.workers.map((w) => [
    w.host, w.pid, w.queue, number(w.in_flight),
    h("span", { class: w.age > 15 ? "warn" : "" }, `${w.age.toFixed(1)}s ago`),
    duration(w.uptime), w.version || h("span", { class: "muted" }, "not recorded"),
  ]), "workers")];
}

function spendRow(name, row) {
  const share = row.share === null ? "–" : `${Math.round(row.share * 100)}%`;
  const cls = row.reached ? "bad" : row.warning ? "warn" : "";
  return [name, money(row.spent), row.in_flight > 0 ? money(row.in_flight) : "–",
    row.limit === null ? "none" : money(row.limit),
    h("span", { class: cls }, row.reached ? `${share}: reached, jobs held` : share)];
}

function renderSpend(reading) {
  const spend = reading.spend;
  const part = (title, period) => h("div", { class: "spend-period" },
    h("h2", {}, `${title}: ${money(period.spent)}`),
    table(["model", "spent", "in flight", "limit", "of the limit"],
      [spendRow("all models", period), ...Object.entries(period.by_model).map(([m, row]) => spendRow(m, row))], "spend-models"),
    Object.keys(period.by_batch).length
      ? table(["batch", "cost"], Object.entries(period.by_batch).map(([id, cost]) => [id, money(cost)]))
      : h("p", { class: "empty" }, "no batch"));
  const alerts = [
    ...spend.warnings.map((w) => h("p", { class: "notice spend-warning" }, `Spending warning: ${w}`)),
    spend.held ? h("p", { class: "notice error spend-held" }, `${spend.held} job(s) held: ${spend.held_reasons.join("; ")}`) : null,
    spend.limits_set ? null : h("p", { class: "muted" }, "No spending limit is set ([budget] in config.toml): spend by model is recorded only under one."),
  ];
  return [
    ...alerts.filter(Boolean),
    h("div", { class: "spend" }, part("Today (UTC)", spend.today), part("This month (UTC)", spend.month)),
    h("p", { class: "muted" }, `${spend.note}.`),
  ];
}

const PAGES = { batches: renderBatches, limits: renderLimits, workers: renderWorkers, spend: renderSpend };

function currentPage() {
  const name = location.hash.slice(1);
  return name in PAGES ? name : "batches";
}

function render() {
  const reading = state.reading;
  const page = currentPage();
  for (const link of document.querySelectorAll("nav a")) link.classList.toggle("active", link.dataset.page === page);
  for (const name of Object.keys(PAGES)) document.getElementById(name).hidden = name !== page;
  if (!reading) return;
  const section = document.getElementById(page);
  for (const node of section.querySelectorAll("details[data-key]")) {
    if (node.open) state.open.add(node.dataset.key); else state.open.delete(node.dataset.key);
  }
  if (reading.error) {
    section.replaceChildren(h("p", { class: "notice error" }, reading.error));
    return;
  }
  section.replaceChildren(...PAGES[page](reading));
  document.body.dataset.updated = String(reading.at);
}

function main() {
  takeTokenFromAddress();
  const input = document.getElementById("token");
  input.value = token();
  input.addEventListener("change", () => setToken(input.value.trim()));
  document.getElementById("token-form").addEventListener("submit", (event) => { event.preventDefault(); setToken(input.value.trim()); });
  window.addEventListener("hashchange", render);
  render();
  const connection = document.getElementById("connection");
  follow(
    (reading) => { state.reading = reading; render(); },
    (status) => { connection.textContent = status; connection.className = `connection ${status === "live" ? "live" : "down"}`; },
  );
}

main();
