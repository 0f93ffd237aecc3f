// How people read records, and the filter that selects them: a port of sdk/render.py
// (format_text, RecordFilter), so the page shows and filters a topic as `lq tail` does.
// tests/test_web_page.py runs this module and sdk/render.py on the same cases.
//
// The filter runs here, in the browser, so a regular expression typed on the page can never
// cost the broker anything. Python's `re` syntax is translated where JavaScript spells it
// otherwise: leading flags such as (?i), (?P<name>...), (?P=name), \A and \Z.

const LEVELS = new Map([["DEBUG", 10], ["INFO", 20], ["WARNING", 30], ["WARN", 30],
  ["ERROR", 40], ["CRITICAL", 50], ["FATAL", 50]]);
export const REGEX_PREFIX = "re:";

// --- Python's view of JSON values -------------------------------------------------------------
/** Python's truth: None, False, 0, "", [] and {} are false. */
function truthy(v) {
  if (v == null || v === false || v === 0 || v === "") return false;
  if (Array.isArray(v)) return v.length > 0;
  if (typeof v === "object") return Object.keys(v).length > 0;
  return true;
}

function strRepr(s) {
  const quote = s.includes("'") && !s.includes('"') ? '"' : "'";
  let out = "";
  for (const ch of s) {
    if (ch === "\\" || ch === quote) out += `\\${ch}`;
    else if (ch === "\n") out += "\\n";
    else if (ch === "\r") out += "\\r";
    else if (ch === "\t") out += "\\t";
    else if (ch < " " || ch === "\x7f") out += `\\x${ch.charCodeAt(0).toString(16).padStart(2, "0")}`;
    else out += ch;
  }
  return quote + out + quote;
}

/** Python's repr() of a value json.loads gave. */
function repr(v) {
  if (v === null) return "None";
  if (typeof v === "boolean") return v ? "True" : "False";
  if (typeof v === "string") return strRepr(v);
  if (typeof v === "number") return String(v);
  if (Array.isArray(v)) return `[${v.map(repr).join(", ")}]`;
  return `{${Object.entries(v).map(([k, x]) => `${strRepr(k)}: ${repr(x)}`).join(", ")}}`;
}

/** Python's str(). */
const str = (v) => (typeof v === "string" ? v : repr(v));

/** json.dumps(v, ensure_ascii=False): Python's separators ", " and ": ". */
function dumps(v) {
  if (Array.isArray(v)) return `[${v.map(dumps).join(", ")}]`;
  if (v !== null && typeof v === "object") {
    return `{${Object.entries(v).map(([k, x]) => `${JSON.stringify(k)}: ${dumps(x)}`).join(", ")}}`;
  }
  return JSON.stringify(v);
}

// --- records ----------------------------------------------------------------------------------
/** `raw` as a log record (a JSON object with a `message`), or null: plain text, other JSON
 * and broken JSON are no record. */
export function parseRecord(raw) {
  if (raw[0] !== "{") return null;
  let value;
  try { value = JSON.parse(raw); } catch { return null; }
  if (value === null || typeof value !== "object" || Array.isArray(value)) return null;
  return Object.hasOwn(value, "message") ? value : null;
}

/** The broker's append time as Python's datetime.isoformat() prints it. */
const isoformat = (ts) => ts.replace(/\.000000(?=[+-]|Z|$)/, "");

/** The parts of format_text's line: `${when} ${head} ${logger}: ${message}${extra}` (no
 * `logger: ` when the record has none); `ts` stands in for a record without `time`. */
export function formatParts(record, ts) {
  const when = truthy(record.time) ? str(record.time) : (ts ? isoformat(ts) : "-");
  const level = str(truthy(record.level) ? record.level : "-");
  const logger = truthy(record.logger) ? str(record.logger) : null;
  const message = typeof record.message === "string" ? record.message : dumps(record.message);
  let extra = "";
  for (const key of ["exception", "stack"]) {
    if (truthy(record[key])) extra += `\n${str(record[key]).replace(/\n+$/, "")}`;
  }
  return { when, level, head: level.padEnd(8), logger, message, extra };
}

/** The line of formatParts' parts. */
export const joinParts = (p) =>
  `${p.when} ${p.head} ${p.logger == null ? "" : `${p.logger}: `}${p.message}${p.extra}`;

/** format_text: `TIME LEVEL logger: message`, then the exception and stack text. */
export const formatText = (record, ts) => joinParts(formatParts(record, ts));

// --- the filter -------------------------------------------------------------------------------
/** A level name (any case; WARN, FATAL too) or number -> the level number. */
export function parseLevel(value) {
  const text = String(value).trim();
  if (/^[0-9]+$/.test(text)) return Number(text);
  const number = LEVELS.get(text.toUpperCase());
  if (number === undefined) throw new Error(`unknown level ${JSON.stringify(text)}`);
  return number;
}

export function recordLevelno(record) {
  const n = record.levelno;
  if (typeof n === "number" && Number.isInteger(n)) return n;
  return LEVELS.get(str(truthy(record.level) ? record.level : "").toUpperCase()) ?? null;
}

/** `shop.db` matches `shop.db` and `shop.db.pool`, not `shop.dbx`. */
export function loggerMatches(name, prefix) {
  if (typeof name !== "string") return false;
  const p = prefix.replace(/\.+$/, "");
  return !p || name === p || name.startsWith(`${p}.`);
}

/** A Python regular expression as a JavaScript RegExp; throws SyntaxError saying why not. */
export function pyRegex(source) {
  let flags = "";
  let rest = source;
  for (let m; (m = /^\(\?([aiLmsux]+)\)/.exec(rest)); rest = rest.slice(m[0].length)) {
    for (const f of m[1]) {
      if (f === "x") throw new SyntaxError("the verbose flag (?x) is not supported on the page");
      if ("ims".includes(f) && !flags.includes(f)) flags += f;  // a, L, u: as Unicode matches
    }
  }
  let out = "";
  for (let i = 0; i < rest.length; i++) {
    if (rest[i] === "\\" && i + 1 < rest.length) {
      const next = rest[++i];
      out += next === "A" ? "(?<![\\s\\S])" : next === "Z" ? "(?![\\s\\S])" : `\\${next}`;
    } else if (rest.startsWith("(?P<", i)) {
      out += "(?<";
      i += 3;
    } else if (rest.startsWith("(?P=", i)) {
      const end = rest.indexOf(")", i);
      if (end < 0) throw new SyntaxError("missing ), unterminated name");
      out += `\\k<${rest.slice(i + 4, end)}>`;
      i = end;
    } else out += rest[i];
  }
  return new RegExp(out, flags);
}

/** TEXT -> a case-sensitive substring test; re:EXPR -> a regular expression search. */
export function compileGrep(pattern) {
  if (!pattern.startsWith(REGEX_PREFIX)) return (text) => text.includes(pattern);
  const expr = pattern.slice(REGEX_PREFIX.length);
  let regex;
  try {
    regex = pyRegex(expr);
  } catch (err) {
    throw new Error(`invalid regular expression ${JSON.stringify(expr)}: ${err.message}`);
  }
  return (text) => regex.test(text);
}

/** The records `lq tail --level/--logger/--grep` shows: every given condition holds. A plain
 * message has no level and no logger: it passes only a filter with neither. */
export class RecordFilter {
  constructor({ level = null, logger = null, grep = null } = {}) {
    this.levelno = level == null ? null : parseLevel(level);
    this.logger = logger;
    this.search = grep == null ? null : compileGrep(grep);
  }

  get active() {
    return this.levelno != null || this.logger != null || this.search != null;
  }

  /** `record`: parseRecord's, or null for a plain message; `text`: the line as shown. */
  matches(record, text) {
    if (record == null) {
      if (this.levelno != null || this.logger != null) return false;
    } else {
      if (this.levelno != null && (recordLevelno(record) || 0) < this.levelno) return false;
      if (this.logger != null && !loggerMatches(record.logger, this.logger)) return false;
    }
    return this.search == null || this.search(text);
  }
}
