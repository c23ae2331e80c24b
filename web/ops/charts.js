// Small line charts as inline SVG built with DOM calls (no library, nothing inline for the CSP:
// colours come from classes in ops.css). A chart keeps its points in memory for a few minutes.
//
// Test hooks on the chart element: `data-points` (how many points it holds) and `data-last`
// (the latest value of its first series, empty while that is unknown).

const SVG = 'http://www.w3.org/2000/svg';
const W = 600;
const H = 160;

function svg(name, attrs) {
  const el = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
  return el;
}

/** 1, 2 or 5 times a power of ten, at least `v`. */
function niceMax(v) {
  if (!(v > 0)) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

export function fmt(v, unit) {
  if (v === null || v === undefined || Number.isNaN(v)) return '–';
  if (unit === 's') {
    if (v < 1) return `${(v * 1000).toFixed(v < 0.01 ? 1 : 0)} ms`;
    return `${v.toFixed(2)} s`;
  }
  const s = Math.abs(v) >= 100 ? v.toFixed(0) : Math.abs(v) >= 10 ? v.toFixed(1) : v.toFixed(2);
  return unit ? `${s} ${unit}` : s;
}

export class Chart {
  /**
   * `el`: the chart's container (it gets the test hooks); `series`: [{key, label}] (more are
   * added as points bring new keys); `unit`: 's' for seconds, else a suffix such as '/s'.
   */
  constructor(el, { series = [], unit = '', windowSecs = 300 } = {}) {
    this.el = el;
    this.unit = unit;
    this.win = windowSecs;
    this.series = series.map((s) => ({ ...s }));
    this.points = []; // {t, v: {key: number|null}}
    el.classList.add('chart');
    this.head = document.createElement('div');
    this.head.className = 'chart-scale';
    this.plot = svg('svg', { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: 'none', role: 'img' });
    this.plot.classList.add('chart-plot');
    this.legend = document.createElement('ul');
    this.legend.className = 'chart-legend';
    el.replaceChildren(this.head, this.plot, this.legend);
    this.render();
  }

  push(t, values) {
    for (const key of Object.keys(values)) {
      if (!this.series.some((s) => s.key === key)) this.series.push({ key, label: key });
    }
    this.points.push({ t, v: values });
    while (this.points.length && t - this.points[0].t > this.win) this.points.shift();
    this.render();
  }

  render() {
    const pts = this.points;
    const first = this.series[0];
    const last = pts.length ? pts[pts.length - 1] : null;
    const lastVal = last && first ? last.v[first.key] : null;
    this.el.dataset.points = String(pts.length);
    this.el.dataset.last = lastVal === null || lastVal === undefined ? '' : String(lastVal);

    let max = 0;
    for (const p of pts) for (const s of this.series) max = Math.max(max, p.v[s.key] || 0);
    max = niceMax(max);
    const tEnd = last ? last.t : 0;
    const x = (t) => W - ((tEnd - t) / this.win) * W;
    const y = (v) => H - (v / max) * (H - 4) - 2;

    const kids = [];
    for (const f of [0.25, 0.5, 0.75]) {
      const grid = svg('line', { x1: 0, x2: W, y1: H * f, y2: H * f });
      grid.classList.add('chart-grid');
      kids.push(grid);
    }
    this.series.forEach((s, i) => {
      // A null value breaks the line (no data in that interval).
      let run = [];
      const flush = () => {
        if (run.length === 1) run.push(run[0].replace(/^[^,]+/, (a) => String(Number(a) - 2)));
        if (run.length) {
          const attrs = { points: run.join(' '), 'vector-effect': 'non-scaling-stroke' };
          const line = svg('polyline', attrs);
          line.classList.add('chart-line', `s${i % 8}`);
          kids.push(line);
        }
        run = [];
      };
      for (const p of pts) {
        const v = p.v[s.key];
        if (v === null || v === undefined || Number.isNaN(v)) flush();
        else run.push(`${x(p.t).toFixed(1)},${y(v).toFixed(1)}`);
      }
      flush();
    });
    this.plot.replaceChildren(...kids);
    this.head.textContent = `max ${fmt(max, this.unit)} · last ${Math.round(this.win / 60)} min`;

    const items = this.series.map((s, i) => {
      const li = document.createElement('li');
      const sw = document.createElement('span');
      sw.className = `swatch s${i % 8}`;
      const name = document.createElement('span');
      name.textContent = s.label;
      const val = document.createElement('b');
      val.textContent = fmt(last ? last.v[s.key] : null, this.unit);
      li.append(sw, name, val);
      return li;
    });
    this.legend.replaceChildren(...items);
    const summary = this.series.map((s) => `${s.label} ${fmt(last ? last.v[s.key] : null, this.unit)}`);
    this.plot.setAttribute('aria-label', summary.join(', ') || 'no data yet');
  }
}
