// Shared by the page's modules: the HTTP call with the token, and small DOM and number helpers.
// Text goes into the page through textContent only (topic, consumer and log text is arbitrary).

export const TOKEN_KEY = "lq.token";  // sessionStorage: this tab only, gone when it closes

export class Unauthorized extends Error {}

export const token = () => sessionStorage.getItem(TOKEN_KEY);

export const $ = (id) => document.getElementById(id);

/** GET `path` (with `params` as the query) and return the success body; throws Unauthorized
 * on 401, else an Error carrying the broker's message, status and error code. */
export async function getJSON(path, { auth = true, params = null } = {}) {
  const headers = { Accept: "application/json" };
  const t = token();
  if (auth && t) headers.Authorization = `Bearer ${t}`;
  const url = params ? `${path}?${new URLSearchParams(params)}` : path;
  const resp = await fetch(url, { headers, cache: "no-store" });
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

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value == null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("data-") || key.startsWith("aria-") || key === "title" || key === "scope") {
      node.setAttribute(key, value);
    } else node[key] = value;
  }
  for (const child of children) if (child != null) node.append(child);
  return node;
}

const fmt = new Intl.NumberFormat("en-US");
const fmtRate = new Intl.NumberFormat("en-US", { maximumFractionDigits: 1 });

export const num = (n) => fmt.format(n);
export const decimal = (n) => fmtRate.format(n);
export const rateText = (r) => (r == null ? "–" : `${fmtRate.format(r)}/s`);

const UNITS = [["d", 86400000], ["h", 3600000], ["m", 60000], ["s", 1000]];

/** 7d, 1.5h, 500ms: a retention or an age. */
export function duration(ms) {
  for (const [unit, size] of UNITS) {
    if (ms >= size && ms % size === 0) return `${ms / size}${unit}`;
  }
  for (const [unit, size] of UNITS) {
    if (ms >= size) return `${fmtRate.format(ms / size)}${unit}`;
  }
  return `${ms}ms`;
}

/** How long ago an ISO-8601 time was, in its largest whole unit: 12s, 5m, 3h, 2d. */
export function ago(iso, now = Date.now()) {
  const seconds = Math.max(0, Math.floor((now - Date.parse(iso)) / 1000));
  for (const [unit, size] of UNITS.slice(0, 3)) {
    if (seconds * 1000 >= size) return `${Math.floor((seconds * 1000) / size)}${unit}`;
  }
  return `${seconds}s`;
}
