// LogQueue web page: polls the broker's JSON endpoints and renders topics, rates, consumer
// registrations and a live tail. Plain JavaScript modules, no build step, no dependencies.
// Text goes into the page through textContent only (topic and consumer names are arbitrary).

import { $, Unauthorized, TOKEN_KEY, ago, decimal, duration, el, getJSON, num, rateText, token }
  from "./lib.js";
import { Rates, sparkline } from "./rates.js";
import { Tail } from "./tail.js";

const MAX_DESCRIBED = 200;    // topics described (and their history asked for) per refresh
const IDLE_AFTER = "1h";      // registrations unused longer are left out when asked
const LIVE_MS = 90_000;       // last use within this: live (a registration is marked in use
                              // at most every 30 s per broker process)

const refreshMs = Number(document.body.dataset.refreshMs) || 2000;
const rates = new Rates();
const tail = new Tail();

let timer = null;
let paused = false;
let busy = false;
let again = false;            // asked to refresh while one ran: run again right after
let waitingForToken = false;
let status = null;            // {database, version} once known

// --- rendering ----------------------------------------------------------------------------
const lagClass = (lag) => (lag === 0 ? "lag ok" : "lag behind");

function retentionText(d) {
  const parts = [];
  if (d?.retention_ms) parts.push(duration(d.retention_ms));
  if (d?.retention_messages) parts.push(`${num(d.retention_messages)} msgs`);
  return parts.join(" · ");
}

function rateCell(topic, now) {
  const points = rates.points(topic);
  const current = rates.current(topic);
  const history = rates.history(topic);
  const peak = points.length ? Math.max(...points.map((p) => p.rate)) : null;
  const title = peak == null ? "no rate yet"
    : `peak ${decimal(peak)} msg/s in the last minute` +
      (history?.total != null ? ` · ${num(history.total)} appended in the minute before ` +
        `the page opened${history.exact ? "" : " (estimated)"}` : "");
  return el("td", { class: "rate", title, "data-history-total": history?.total ?? null },
    el("span", { class: "rate-cell" }, sparkline(points, now),
      el("span", { class: "rate-now", text: rateText(current) })));
}

function renderTopics(topics, described, now) {
  const rows = topics.map((t, i) => {
    const d = described[i];
    const retention = retentionText(d);
    return el("tr", { "data-topic": t.topic },
      el("th", { scope: "row", class: "topic", text: t.topic }),
      el("td", { class: "num messages", text: num(t.messages) }),
      el("td", { class: "num offsets muted", text: `${num(t.first_offset)} / ${num(t.next_offset)}` }),
      rateCell(t.topic, now),
      el("td", { class: "num producers", text: d ? num(d.producers) : "–" }),
      el("td", { class: "num consumers", text: num(t.consumers) }),
      el("td", { class: `num max-lag ${lagClass(t.max_lag)}`, text: num(t.max_lag) }),
      el("td", { class: retention ? "retention" : "retention muted",
        title: retention ? null : "no limit on this topic (a broker-wide --retention applies if set)",
        text: retention || "default" }));
  });
  $("topics").tBodies[0].replaceChildren(...rows);
  $("topics-empty").hidden = topics.length > 0;
}

function consumerRow(t, c) {
  const share = t.messages > 0 ? Math.min(1, c.lag / t.messages) : 0;
  const bar = el("span", { class: "lagbar-fill" });
  bar.style.width = `${(share * 100).toFixed(1)}%`;
  const since = c.active ? Date.now() - Date.parse(c.active) : Infinity;
  const state = since < LIVE_MS || c.holders > 0 ? "live" : "idle";
  return el("tr", { "data-topic": t.topic, "data-consumer": c.name ?? "", "data-state": state },
    el("td", { class: "topic", text: t.topic }),
    el("td", { class: c.name == null ? "name unnamed" : "name", text: c.name ?? "(unnamed)" }),
    el("td", { class: "num position", text: num(c.position) }),
    el("td", { class: `num lag ${lagClass(c.lag)}`, text: num(c.lag) }),
    el("td", { class: "num leases", title: "leases outstanding", text: num(c.leases ?? 0) }),
    el("td", { class: "num holders", title: "lease holders seen in the last minute",
      text: num(c.holders ?? 0) }),
    el("td", { class: "seen", title: c.active ? `last used ${c.active} (to within 30 s)` : null },
      el("span", { class: "dot", "aria-hidden": "true" }),
      el("span", { class: "ago", text: c.active ? `${ago(c.active)} ago` : "–" })),
    el("td", { class: "lagbar-col", title: `${(share * 100).toFixed(0)}% of the kept messages` },
      el("span", { class: "lagbar" }, bar)));
}

function renderConsumers(topics) {
  const rows = [];
  for (const t of topics) {
    const regs = [...(t.registrations ?? [])].sort((a, b) => b.lag - a.lag);
    for (const c of regs) rows.push(consumerRow(t, c));
  }
  $("consumers").tBodies[0].replaceChildren(...rows);
  $("consumers-empty").hidden = rows.length > 0;
}

function renderSummary(topics, described) {
  let messages = 0, consumers = 0, lag = 0, rate = 0, known = false;
  for (const t of topics) {
    messages += t.messages;
    consumers += t.consumers;
    lag = Math.max(lag, t.max_lag);
    const r = rates.current(t.topic);
    if (r != null) { rate += r; known = true; }
  }
  $("sum-topics").textContent = num(topics.length);
  $("sum-messages").textContent = num(messages);
  $("sum-rate").textContent = known ? rateText(rate) : "–";
  $("sum-consumers").textContent = num(consumers);
  $("sum-lag").textContent = num(lag);
  $("sum-consumers").title = described.length < topics.length
    ? `details for the first ${described.length} topics only` : "";
}

function setHealth(state, text) {
  $("health").dataset.state = state;
  $("health-text").textContent = text;
}

function showError(message) {
  $("error").textContent = message || "";
  $("error").hidden = !message;
  if (message) $("loading").hidden = true;
}

// --- the loop -------------------------------------------------------------------------------
async function checkHealth() {
  try {
    await getJSON("/healthz", { auth: false });
  } catch (err) {
    setHealth("down", err.status === 503 ? "database unavailable" : "broker unreachable");
    return;
  }
  if (!status) {
    try { status = await getJSON("/status"); } catch { /* needs the token: later */ }
  }
  setHealth("ok", status ? `healthy · ${status.database} · v${status.version}` : "healthy");
}

async function describe(topic) {
  try {
    return await getJSON("/topics/describe", { params: { topic } });
  } catch (err) {
    if (err instanceof Unauthorized) throw err;
    return null;                    // e.g. deleted between /stats and now
  }
}

async function loadHistory(topic) {
  try {
    rates.seed(topic, await getJSON("/topics/history", { params: { topic } }), performance.now());
  } catch (err) {
    if (err instanceof Unauthorized) throw err;
    rates.noHistory(topic);         // an older broker, or the topic deleted meanwhile
  }
}

async function refresh() {
  if (waitingForToken) return;
  if (busy) { again = true; return; }
  busy = true;
  again = false;
  clearTimeout(timer);
  const health = checkHealth();
  try {
    const stats = await getJSON("/stats", { params: $("hide-idle").checked ? { active: IDLE_AFTER } : null });
    const topics = stats.topics;
    const sampled = performance.now();
    for (const t of topics) rates.sample(t.topic, t.next_offset, sampled);
    rates.keep(topics.map((t) => t.topic));
    tail.setTopics(topics.map((t) => t.topic));
    const first = topics.slice(0, MAX_DESCRIBED);
    const [described] = await Promise.all([
      Promise.all(first.map((t) => describe(t.topic))),
      Promise.all(first.filter((t) => rates.needsHistory(t.topic)).map((t) => loadHistory(t.topic))),
      tail.poll(),
    ]);
    const now = performance.now();
    renderTopics(topics, described, now);
    renderConsumers(topics);
    renderSummary(topics, described);
    showError(null);
    $("loading").hidden = true;
    $("dashboard").hidden = false;
    $("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
  } catch (err) {
    if (err instanceof Unauthorized) askForToken(token() ? "That token was refused." : null);
    else showError(`Could not load the broker's data: ${err.message}`);
  } finally {
    await health;
    busy = false;
    if (again) refresh(); else schedule();
  }
}

function schedule() {
  clearTimeout(timer);
  if (!paused && !waitingForToken) timer = setTimeout(refresh, refreshMs);
}

tail.onError = (err) => {
  if (err instanceof Unauthorized) askForToken("That token was refused.");
  else $("tail-status").textContent = `Could not read the topic: ${err.message}`;
};

// --- token ----------------------------------------------------------------------------------
function askForToken(problem) {
  sessionStorage.removeItem(TOKEN_KEY);
  status = null;
  waitingForToken = true;
  $("loading").hidden = true;
  $("dashboard").hidden = true;
  $("forget").hidden = true;
  showError(null);
  $("login-error").textContent = problem || "";
  $("login-error").hidden = !problem;
  $("login").hidden = false;
  $("token").focus();
}

$("login").addEventListener("submit", (event) => {
  event.preventDefault();
  const value = $("token").value.trim();
  if (!value) return;
  sessionStorage.setItem(TOKEN_KEY, value);
  $("token").value = "";
  $("login").hidden = true;
  $("forget").hidden = false;
  $("loading").hidden = false;
  waitingForToken = false;
  refresh();
});

$("forget").addEventListener("click", () => {
  rates.clear();
  tail.choose("");
  askForToken(null);
});

$("pause").addEventListener("click", () => {
  paused = !paused;
  $("pause").textContent = paused ? "Resume" : "Pause";
  $("pause").setAttribute("aria-pressed", String(paused));
  if (paused) clearTimeout(timer); else refresh();
});

$("hide-idle").addEventListener("change", () => refresh());

$("forget").hidden = !token();
refresh();
