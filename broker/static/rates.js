// Produce rates per topic over the last minute: seeded with the broker's appends per second
// (/topics/history, from the messages' append times), so a fresh page has a minute of history
// at once, then extended from successive next_offset values of /stats.

const WINDOW_MS = 60_000;
const SVG_NS = "http://www.w3.org/2000/svg";

export class Rates {
  constructor() {
    this.topics = new Map();  // topic -> {points: [{t, rate, partial}], last: {t, next}, history}
  }

  entry(topic) {
    let e = this.topics.get(topic);
    if (!e) {
      e = { points: [], last: null, history: null };
      this.topics.set(topic, e);
    }
    return e;
  }

  /** Whether the broker's history of `topic` is still to be asked for. */
  needsHistory(topic) {
    return this.entry(topic).history === null;
  }

  /** The broker's appends per second, the last one under way, as received at `now`. */
  seed(topic, reply, now) {
    const e = this.entry(topic);
    const counts = reply.appends;
    const n = counts.length;
    const history = counts.map((count, i) => ({
      t: now - (n - 1 - i) * 1000, rate: count, partial: i === n - 1 }));
    const since = history.length ? history[0].t : now;
    e.points = [...history, ...e.points.filter((p) => p.t > now)];
    e.points = e.points.filter((p) => p.t >= since);
    e.history = { total: counts.reduce((a, b) => a + b, 0), exact: reply.exact };
    e.last = { t: now, next: reply.next_offset };
  }

  /** A history that could not be had (e.g. an older broker): the live samples only. */
  noHistory(topic) {
    this.entry(topic).history = { total: null, exact: false };
  }

  /** /stats said `next` at `now`: a rate point since the last sample. */
  sample(topic, next, now) {
    const e = this.entry(topic);
    if (e.last && next < e.last.next) {  // deleted and created again
      e.points = [];
      e.last = null;
    }
    if (e.last && now > e.last.t) {
      e.points.push({ t: now, rate: ((next - e.last.next) * 1000) / (now - e.last.t), partial: false });
    }
    if (!e.last || now > e.last.t) e.last = { t: now, next };
    e.points = e.points.filter((p) => p.t > now - WINDOW_MS);
  }

  /** Forget the topics not in `names` (deleted, or no longer readable). */
  keep(names) {
    const live = new Set(names);
    for (const name of [...this.topics.keys()]) if (!live.has(name)) this.topics.delete(name);
  }

  clear() {
    this.topics.clear();
  }

  points(topic) {
    return this.topics.get(topic)?.points ?? [];
  }

  history(topic) {
    return this.topics.get(topic)?.history ?? null;
  }

  /** The latest whole-second (or live) rate, or null before there is one. */
  current(topic) {
    const done = this.points(topic).filter((p) => !p.partial);
    return done.length ? done[done.length - 1].rate : null;
  }
}

function svgNode(tag, attrs) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  return node;
}

/** The last minute of `points` as an SVG sparkline, `now` at the right edge. */
export function sparkline(points, now) {
  const w = 120, h = 28, pad = 2;
  const svg = svgNode("svg", { viewBox: `0 0 ${w} ${h}`, width: w, height: h, class: "spark",
    "aria-hidden": "true", "data-points": points.length });
  svg.append(svgNode("line", { x1: 0, x2: w, y1: h - pad, y2: h - pad, class: "spark-base" }));
  if (points.length < 2) return svg;
  const peak = Math.max(1, ...points.map((p) => p.rate));
  const xy = points.map((p) => [
    Math.max(0, w - ((now - p.t) / WINDOW_MS) * w), h - pad - (p.rate / peak) * (h - 2 * pad)]);
  const line = xy.map(([x, y]) => `${x.toFixed(1)},${y.toFixed(1)}`).join(" ");
  const x0 = xy[0][0].toFixed(1), x1 = xy[xy.length - 1][0].toFixed(1);
  svg.append(svgNode("polygon", { points: `${x0},${h - pad} ${line} ${x1},${h - pad}`,
    class: "spark-area" }));
  svg.append(svgNode("polyline", { points: line, class: "spark-line" }));
  return svg;
}
