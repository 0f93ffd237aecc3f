// A topic's live tail, filtered as `lq tail --level/--logger/--grep` filters.
//
// Messages come from GET /topics/tail, which reads by offset without a registration: the page
// never registers a consumer nor moves one. The filter runs here (render.js), over the messages
// read so far: the last READ when a topic is chosen, more read back (up to KEEP) while fewer
// than SHOW match, and the new ones as they arrive.

import { $, el, getJSON, num } from "./lib.js";
import { RecordFilter, formatParts, joinParts, parseRecord } from "./render.js";

const READ = 1000;        // messages per request (the broker's most)
const KEEP = 5000;        // messages kept in the page
const SHOW = 200;         // lines shown: the last that match
const MAX_BYTES = 1 << 20;
const LEVEL_CLASSES = new Set(["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]);

export class Tail {
  constructor() {
    this.topic = "";
    this.buffer = [];     // {offset, message, ts, record, text}, oldest first
    this.first = 0;       // the topic's oldest message kept
    this.next = 0;        // the next offset to read
    this.generation = 0;  // bumped when the topic changes: late replies are dropped
    this.queue = Promise.resolve();
    this.filter = new RecordFilter();
    this.problem = null;
    this.onError = () => {};
    $("tail-topic").addEventListener("change", () => this.choose($("tail-topic").value));
    for (const id of ["tail-level", "tail-logger", "tail-grep"]) {
      $(id).addEventListener("input", () => this.refilter());
    }
  }

  /** Offer the topics the token may read; a chosen topic that went away is let go. */
  setTopics(names) {
    const select = $("tail-topic");
    const have = [...select.options].slice(1).map((o) => o.value);
    if (have.join("\n") !== names.join("\n")) {
      select.replaceChildren(select.options[0], ...names.map((n) => el("option", { value: n, text: n })));
      select.value = names.includes(this.topic) ? this.topic : "";
    }
    if (this.topic && !names.includes(this.topic)) this.choose("");
  }

  /** Serialize the reads: a poll never interleaves with a topic change or a read-back. */
  run(work) {
    this.queue = this.queue.then(work).catch((err) => this.onError(err));
    return this.queue;
  }

  choose(topic) {
    this.generation++;
    this.topic = topic;
    this.buffer = [];
    this.render();
    if (!topic) return this.queue;
    return this.run(async () => {
      const gen = this.generation;
      const reply = await this.read({ max: READ });
      if (gen !== this.generation) return;
      const got = reply.messages;
      this.first = reply.first_offset;
      this.next = got.length ? got[got.length - 1].offset + 1 : reply.next_offset;
      this.add(got, true);
      this.render();
      await this.readBack(gen);
    });
  }

  /** Follow the chosen topic: the messages appended since the last read. */
  poll() {
    if (!this.topic) return this.queue;
    return this.run(async () => {
      const gen = this.generation;
      for (let i = 0; i < 5; i++) {  // catch up at most 5,000 a poll
        const reply = await this.read({ offset: this.next, max: READ });
        if (gen !== this.generation) return;
        if (reply.next_offset < this.next) {  // deleted and created again
          this.choose(this.topic);
          return;
        }
        this.first = reply.first_offset;
        this.add(reply.messages, false);
        if (reply.messages.length) this.next = reply.messages[reply.messages.length - 1].offset + 1;
        if (reply.messages.length < READ || this.next >= reply.next_offset) break;
      }
      this.render();
    });
  }

  read(params) {
    return getJSON("/topics/tail", { params: { topic: this.topic, max_bytes: MAX_BYTES, ...params } });
  }

  add(messages, older) {
    const parsed = messages.map((m) => {
      const record = parseRecord(m.message);
      return { ...m, record, parts: record && formatParts(record, m.ts) };
    });
    this.buffer = older ? [...parsed, ...this.buffer] : [...this.buffer, ...parsed];
    if (this.buffer.length > KEEP && !older) this.buffer.splice(0, this.buffer.length - KEEP);
  }

  /** Read older messages while fewer than SHOW match, up to KEEP kept in all. */
  async readBack(gen) {
    while (gen === this.generation && this.matching().length < SHOW && this.buffer.length < KEEP) {
      const oldest = this.buffer.length ? this.buffer[0].offset : this.next;
      if (oldest <= this.first) return;
      const lo = Math.max(this.first, oldest - READ);
      const older = [];
      for (let offset = lo; offset < oldest;) {  // a byte bound may cut a reply short
        const reply = await this.read({ offset, max: oldest - offset });
        if (gen !== this.generation) return;
        const got = reply.messages.filter((m) => m.offset < oldest);
        if (!got.length) break;
        older.push(...got);
        offset = got[got.length - 1].offset + 1;
      }
      if (!older.length) return;
      this.add(older, true);
      this.render();
    }
  }

  refilter() {
    const level = $("tail-level").value || null;
    const logger = $("tail-logger").value.trim() || null;
    const grep = $("tail-grep").value || null;
    try {
      this.filter = new RecordFilter({ level, logger, grep });
      this.problem = null;
    } catch (err) {
      this.problem = err.message;
    }
    this.render();
    const gen = this.generation;
    if (this.topic && !this.problem) this.run(() => this.readBack(gen));
  }

  matching() {
    if (this.problem) return [];
    return this.buffer.filter((m) => this.filter.matches(m.record, text(m)));
  }

  render() {
    const list = $("tail-lines");
    const atBottom = list.scrollTop + list.clientHeight >= list.scrollHeight - 4;
    const matching = this.matching();
    const shown = matching.slice(-SHOW);
    list.replaceChildren(...shown.map(line));
    if (atBottom) list.scrollTop = list.scrollHeight;
    const status = $("tail-status");
    status.classList.toggle("error", Boolean(this.problem));
    if (this.problem) status.textContent = this.problem;
    else if (!this.topic) status.textContent = "Choose a topic to follow its new messages.";
    else if (this.filter.active) {
      status.textContent = `${num(shown.length)} shown · ${num(matching.length)} of the ` +
        `last ${num(this.buffer.length)} messages match`;
    } else status.textContent = `${num(shown.length)} shown of the last ${num(this.buffer.length)}`;
  }
}

/** The line as `lq tail` prints it (the text --grep searches). */
const text = (m) => (m.parts ? joinParts(m.parts) : m.message);

function line(m) {
  if (!m.parts) return el("li", { class: "plain", "data-offset": m.offset, text: m.message });
  const p = m.parts;
  const level = LEVEL_CLASSES.has(p.level) ? `lvl lvl-${p.level.toLowerCase()}` : "lvl";
  return el("li", { "data-offset": m.offset },
    el("span", { class: "when", text: p.when }), " ",
    el("span", { class: level, text: p.head }), " ",
    p.logger == null ? null : el("span", { class: "logger", text: p.logger }),
    p.logger == null ? null : ": ",
    el("span", { class: "msg", text: p.message }),
    p.extra ? el("span", { class: "extra", text: p.extra }) : null);
}
