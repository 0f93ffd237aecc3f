// LogQueue web page: polls the broker's JSON endpoints and renders topics, rates and lag.
// Plain JavaScript, no build step, no dependencies. Text goes into the page through
// textContent only (consumer names are arbitrary strings).
(() => {
  "use strict";

  const TOKEN_KEY = "lq.token";       // sessionStorage: this tab only, gone when it closes
  const HISTORY = 60;                 // samples of next_offset kept per topic
  const MAX_DESCRIBED = 200;          // topics described per refresh (one request each)
  const SVG_NS = "http://www.w3.org/2000/svg";

  const $ = (id) => document.getElementById(id);
  const refreshMs = Number(document.body.dataset.refreshMs) || 2000;
  const samples = new Map();          // topic -> [{t: ms, next: next_offset}]
  const fmt = new Intl.NumberFormat("en-US");
  const fmtRate = new Intl.NumberFormat("en-US", { maximumFractionDigits: 1 });

  let timer = null;
  let paused = false;
  let busy = false;
  let waitingForToken = false;
  let status = null;                  // {database, version} once known

  class Unauthorized extends Error {}

  // --- HTTP -------------------------------------------------------------------------------
  const token = () => sessionStorage.getItem(TOKEN_KEY);

  async function getJSON(path, { auth = true } = {}) {
    const headers = { Accept: "application/json" };
    const t = token();
    if (auth && t) headers.Authorization = `Bearer ${t}`;
    const resp = await fetch(path, { headers, cache: "no-store" });
    let body = null;
    try { body = await resp.json(); } catch { /* not JSON: reported below */ }
    if (resp.status === 401) throw new Unauthorized(body?.message || "unauthorized");
    if (!resp.ok || !body || body.status !== "success") {
      const err = new Error(body?.message || `${path}: HTTP ${resp.status}`);
      err.status = resp.status;
      err.code = body?.error;
      throw err;
    }
    return body;
  }

  // --- formatting -------------------------------------------------------------------------
  const num = (n) => fmt.format(n);

  function rateText(r) {
    if (r == null) return "–";
    return `${fmtRate.format(r)}/s`;
  }

  function duration(ms) {
    const units = [["d", 86400000], ["h", 3600000], ["m", 60000], ["s", 1000]];
    for (const [unit, size] of units) {
      if (ms >= size && ms % size === 0) return `${ms / size}${unit}`;
    }
    for (const [unit, size] of units) {
      if (ms >= size) return `${fmtRate.format(ms / size)}${unit}`;
    }
    return `${ms}ms`;
  }

  function retentionText(d) {
    const parts = [];
    if (d?.retention_ms) parts.push(duration(d.retention_ms));
    if (d?.retention_messages) parts.push(`${num(d.retention_messages)} msgs`);
    return parts.join(" · ");
  }

  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs)) {
      if (value == null || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else if (key.startsWith("data-") || key === "title" || key === "scope") {
        node.setAttribute(key, value);
      } else node[key] = value;
    }
    for (const child of children) if (child != null) node.append(child);
    return node;
  }

  // --- produce rates from successive next_offset values ------------------------------------
  function record(topic, next, now) {
    let list = samples.get(topic);
    if (!list || (list.length && next < list[list.length - 1].next)) {
      list = [];                      // new topic, or deleted and created again
      samples.set(topic, list);
    }
    list.push({ t: now, next });
    if (list.length > HISTORY + 1) list.splice(0, list.length - HISTORY - 1);
  }

  function rates(topic) {
    const list = samples.get(topic) || [];
    const out = [];
    for (let i = 1; i < list.length; i++) {
      const dt = (list[i].t - list[i - 1].t) / 1000;
      if (dt > 0) out.push((list[i].next - list[i - 1].next) / dt);
    }
    return out;
  }

  function sparkline(values) {
    const w = 120, h = 28, pad = 2;
    const svg = document.createElementNS(SVG_NS, "svg");
    svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
    svg.setAttribute("width", w);
    svg.setAttribute("height", h);
    svg.setAttribute("class", "spark");
    svg.setAttribute("aria-hidden", "true");
    const base = document.createElementNS(SVG_NS, "line");
    base.setAttribute("x1", 0); base.setAttribute("x2", w);
    base.setAttribute("y1", h - pad); base.setAttribute("y2", h - pad);
    base.setAttribute("class", "spark-base");
    svg.append(base);
    if (values.length < 2) return svg;
    const peak = Math.max(1, ...values);
    const step = w / (HISTORY - 1);
    const x0 = w - step * (values.length - 1);
    const pts = values.map((v, i) => [x0 + i * step, h - pad - (v / peak) * (h - 2 * pad)]);
    const line = pts.map(([x, y]) => `${x.toFixed(1)},${y.toFixed(1)}`).join(" ");
    const area = document.createElementNS(SVG_NS, "polygon");
    area.setAttribute("points", `${x0.toFixed(1)},${h - pad} ${line} ${w},${h - pad}`);
    area.setAttribute("class", "spark-area");
    const poly = document.createElementNS(SVG_NS, "polyline");
    poly.setAttribute("points", line);
    poly.setAttribute("class", "spark-line");
    svg.append(area, poly);
    return svg;
  }

  // --- rendering ----------------------------------------------------------------------------
  function lagClass(lag) {
    return lag === 0 ? "lag ok" : "lag behind";
  }

  function renderTopics(topics, described) {
    const tbody = $("topics").tBodies[0];
    const rows = topics.map((t, i) => {
      const d = described[i];
      const r = rates(t.topic);
      const current = r.length ? r[r.length - 1] : null;
      const peak = r.length ? Math.max(...r) : null;
      const retention = retentionText(d);
      return el("tr", { "data-topic": t.topic },
        el("th", { scope: "row", class: "topic", text: t.topic }),
        el("td", { class: "num messages", text: num(t.messages) }),
        el("td", { class: "num offsets muted", text: `${num(t.first_offset)} / ${num(t.next_offset)}` }),
        el("td", { class: "rate", title: peak == null ? "needs two samples"
          : `peak ${fmtRate.format(peak)} msg/s over the last ${r.length} samples` },
        el("span", { class: "rate-cell" }, sparkline(r),
          el("span", { class: "rate-now", text: rateText(current) }))),
        el("td", { class: "num producers", text: d ? num(d.producers) : "–" }),
        el("td", { class: "num consumers", text: num(t.consumers) }),
        el("td", { class: `num max-lag ${lagClass(t.max_lag)}`, text: num(t.max_lag) }),
        el("td", { class: retention ? "retention" : "retention muted",
          title: retention ? null : "no limit on this topic (a broker-wide --retention applies if set)",
          text: retention || "default" }));
    });
    tbody.replaceChildren(...rows);
    $("topics-empty").hidden = topics.length > 0;
  }

  function renderConsumers(topics, described) {
    const tbody = $("consumers").tBodies[0];
    const rows = [];
    topics.forEach((t, i) => {
      const d = described[i];
      if (!d) return;
      const consumers = [...d.consumers].sort((a, b) => b.lag - a.lag);
      for (const c of consumers) {
        const share = t.messages > 0 ? Math.min(1, c.lag / t.messages) : 0;
        const bar = el("span", { class: "lagbar-fill" });
        bar.style.width = `${(share * 100).toFixed(1)}%`;
        rows.push(el("tr", { "data-topic": t.topic, "data-consumer": c.name ?? "" },
          el("td", { class: "topic", text: t.topic }),
          el("td", { class: c.name == null ? "name unnamed" : "name",
            text: c.name ?? "(unnamed)" }),
          el("td", { class: "num position", text: num(c.position) }),
          el("td", { class: `num ${lagClass(c.lag)}`, text: num(c.lag) }),
          el("td", { class: "lagbar-col", title: `${(share * 100).toFixed(0)}% of the kept messages` },
            el("span", { class: "lagbar" }, bar))));
      }
    });
    tbody.replaceChildren(...rows);
    $("consumers-empty").hidden = rows.length > 0;
  }

  function renderSummary(topics, described) {
    let messages = 0, consumers = 0, lag = 0, rate = 0, known = false;
    for (const t of topics) {
      messages += t.messages;
      consumers += t.consumers;
      lag = Math.max(lag, t.max_lag);
      const r = rates(t.topic);
      if (r.length) { rate += r[r.length - 1]; known = true; }
    }
    $("sum-topics").textContent = num(topics.length);
    $("sum-messages").textContent = num(messages);
    $("sum-rate").textContent = known ? rateText(rate) : "–";
    $("sum-consumers").textContent = num(consumers);
    $("sum-lag").textContent = num(lag);
    if (described.length < topics.length) {
      $("sum-consumers").title = `details for the first ${described.length} topics only`;
    }
  }

  function setHealth(state, text) {
    $("health").dataset.state = state;
    $("health-text").textContent = text;
  }

  function showError(message) {
    const box = $("error");
    box.textContent = message || "";
    box.hidden = !message;
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
      return await getJSON(`/topics/describe?topic=${encodeURIComponent(topic)}`);
    } catch (err) {
      if (err instanceof Unauthorized) throw err;
      return null;                    // e.g. deleted between /stats and now
    }
  }

  async function refresh() {
    if (busy || waitingForToken) return;
    busy = true;
    clearTimeout(timer);
    const health = checkHealth();
    try {
      const stats = await getJSON("/stats");
      const now = performance.now();
      const topics = stats.topics;
      for (const t of topics) record(t.topic, t.next_offset, now);
      for (const name of [...samples.keys()]) {
        if (!topics.some((t) => t.topic === name)) samples.delete(name);
      }
      const described = await Promise.all(topics.slice(0, MAX_DESCRIBED).map((t) => describe(t.topic)));
      renderTopics(topics, described);
      renderConsumers(topics, described);
      renderSummary(topics, described);
      showError(null);
      $("dashboard").hidden = false;
      $("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
    } catch (err) {
      if (err instanceof Unauthorized) {
        askForToken(token() ? "That token was refused." : null);
      } else {
        showError(`Could not load the broker's data: ${err.message}`);
      }
    } finally {
      await health;
      busy = false;
      schedule();
    }
  }

  function schedule() {
    clearTimeout(timer);
    if (!paused && !waitingForToken) timer = setTimeout(refresh, refreshMs);
  }

  // --- token ----------------------------------------------------------------------------------
  function askForToken(problem) {
    sessionStorage.removeItem(TOKEN_KEY);
    status = null;
    waitingForToken = true;
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
    waitingForToken = false;
    refresh();
  });

  $("forget").addEventListener("click", () => {
    samples.clear();
    askForToken(null);
  });

  $("pause").addEventListener("click", () => {
    paused = !paused;
    $("pause").textContent = paused ? "Resume" : "Pause";
    $("pause").setAttribute("aria-pressed", String(paused));
    if (paused) clearTimeout(timer); else refresh();
  });

  $("forget").hidden = !token();
  refresh();
})();
