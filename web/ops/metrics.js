// Prometheus text parsing and the numbers the console derives from it (SPEC §12 `/metrics`):
// rates from counter deltas between polls, quantiles from histogram bucket deltas.

const LINE = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)/;
const LABEL = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g;

function num(s) {
  if (s === '+Inf' || s === 'Inf') return Infinity;
  if (s === '-Inf') return -Infinity;
  return Number(s);
}

/** Text → Map(name → [{labels, value}]). */
export function parse(text) {
  const out = new Map();
  for (const line of text.split('\n')) {
    if (!line || line[0] === '#') continue;
    const m = LINE.exec(line);
    if (!m) continue;
    const labels = {};
    if (m[2]) {
      LABEL.lastIndex = 0;
      let l;
      while ((l = LABEL.exec(m[2]))) labels[l[1]] = l[2].replace(/\\(.)/g, (_, c) => (c === 'n' ? '\n' : c));
    }
    if (!out.has(m[1])) out.set(m[1], []);
    out.get(m[1]).push({ labels, value: num(m[3]) });
  }
  return out;
}

function sum(p, name, keep = () => true) {
  let s = 0;
  for (const x of p.get(name) || []) if (keep(x.labels)) s += x.value;
  return s;
}

function byLabel(p, name, label, keep = () => true) {
  const o = {};
  for (const x of p.get(name) || []) {
    if (!keep(x.labels)) continue;
    const k = x.labels[label];
    o[k] = (o[k] || 0) + x.value;
  }
  return o;
}

/** Cumulative buckets of a histogram, summed over the series `keep` accepts: [[le, count]]. */
function buckets(p, name, keep = () => true) {
  const m = new Map();
  for (const x of p.get(`${name}_bucket`) || []) {
    if (!keep(x.labels)) continue;
    const le = num(x.labels.le);
    m.set(le, (m.get(le) || 0) + x.value);
  }
  return [...m.entries()].sort((a, b) => a[0] - b[0]);
}

/** Routes of the console's own traffic and of the pages: left out of the latency chart. */
const OWN = (route) =>
  route === '/metrics' || route === '/admin/actors' || route === '/ops' || route === '/' ||
  route.startsWith('/static/');

const isV1 = (route) => route.startsWith('/v1/') || route === '/chat/completions';

/** What one poll of `/metrics` contributes: the cumulative values the charts need. */
export function reading(text, t) {
  const p = parse(text);
  const httpTotal = 'questech_http_requests_total';
  const errors = byLabel(p, httpTotal, 'status', (l) => Number(l.status) >= 400);
  const providers = {};
  for (const x of p.get('questech_llm_in_flight') || []) {
    const pr = x.labels.provider;
    const only = (l) => l.provider === pr;
    providers[pr] = {
      dur: buckets(p, 'questech_llm_request_duration_seconds', only),
      ttft: buckets(p, 'questech_llm_time_to_first_token_seconds', only),
    };
  }
  return {
    t,
    v1: sum(p, httpTotal, (l) => isV1(l.route || '')),
    errors,
    latency: buckets(p, 'questech_http_request_duration_seconds', (l) => !OWN(l.route || '')),
    providers,
  };
}

/** Per-second rate of a counter between two cumulative values (a reset counts from zero). */
export function rate(now, then, dt) {
  if (!(dt > 0)) return null;
  const d = now >= then ? now - then : now;
  return d / dt;
}

/** Quantile `q` (0..1) of the observations between two bucket snapshots; null if none. */
export function quantile(now, then, q) {
  const before = new Map(then || []);
  const deltas = now.map(([le, c]) => {
    const d = c - (before.get(le) || 0);
    return [le, d >= 0 ? d : c];
  });
  const total = deltas.length ? deltas[deltas.length - 1][1] : 0;
  if (!(total > 0)) return null;
  const rank = q * total;
  let prevLe = 0;
  let prevC = 0;
  for (const [le, c] of deltas) {
    if (c >= rank) {
      if (!Number.isFinite(le)) return prevLe; // beyond the last finite bucket
      const inBucket = c - prevC;
      const frac = inBucket > 0 ? (rank - prevC) / inBucket : 1;
      return prevLe + (le - prevLe) * frac;
    }
    prevLe = Number.isFinite(le) ? le : prevLe;
    prevC = c;
  }
  return prevLe;
}

/** Error statuses in the words of SPEC §4 (the metric carries the status, not the code). */
const CODES = {
  400: 'invalid_request',
  401: 'unauthorized',
  402: 'insufficient_credits',
  403: 'forbidden',
  404: 'not_found',
  409: 'conflict/busy',
  413: 'payload_too_large',
  429: 'rate_limited',
  500: 'internal_error',
  502: 'upstream_error',
  503: 'overloaded',
  504: 'upstream_timeout',
};

export function statusLabel(status) {
  return CODES[status] ? `${status} ${CODES[status]}` : `HTTP ${status}`;
}

/** The reading at least `win` seconds older than the newest (else the oldest one). */
function since(list, win) {
  const r = list[list.length - 1];
  let old = list[0];
  for (const x of list) if (r.t - x.t >= win - 0.25) old = x;
  return old;
}

/**
 * Per-second rates of cumulative counters over the last `win` seconds (one-second windows make
 * a comb of 0, 1, 2 out of a steady one request a second). `push(t, {key: total})` answers
 * {key: rate}, or null for the very first reading.
 */
export class Rates {
  constructor(win = 3) {
    this.win = win;
    this.list = [];
  }

  push(t, totals) {
    this.list.push({ t, v: totals });
    while (this.list.length > 2 && t - this.list[1].t >= this.win) this.list.shift();
    if (this.list.length < 2) return null;
    const old = since(this.list, this.win);
    const out = {};
    for (const [k, v] of Object.entries(totals)) out[k] = rate(v, old.v[k] || 0, t - old.t);
    return out;
  }
}

/**
 * Keeps recent `/metrics` readings and turns them into chart points: rates over the last few
 * seconds, latency quantiles over a window of a few seconds (a one-second p99 is noise).
 */
export class Deriver {
  constructor(rateSecs = 3, quantileSecs = 5) {
    this.qwin = quantileSecs;
    this.rates = new Rates(rateSecs);
    this.list = [];
  }

  push(r) {
    this.list.push(r);
    while (this.list.length > 2 && r.t - this.list[1].t >= this.qwin) this.list.shift();
    const totals = { v1: r.v1 };
    for (const [status, n] of Object.entries(r.errors)) totals[statusLabel(status)] = n;
    const rates = this.rates.push(r.t, totals);
    if (!rates) return null;
    const old = since(this.list, this.qwin);
    const providers = {};
    for (const [name, h] of Object.entries(r.providers)) {
      const o = old.providers[name] || { dur: [], ttft: [] };
      providers[name] = {
        p50: quantile(h.dur, o.dur, 0.5),
        ttft50: quantile(h.ttft, o.ttft, 0.5),
      };
    }
    const { v1, ...errors } = rates;
    return {
      v1,
      errors,
      p50: quantile(r.latency, old.latency, 0.5),
      p99: quantile(r.latency, old.latency, 0.99),
      providers,
    };
  }
}
