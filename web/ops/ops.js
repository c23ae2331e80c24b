// The operations console (`/ops`, role admin): login, the live panel polled every second,
// charts of the last minutes from `/metrics`, and the admin basics.

import * as API from './api.js';
import { Chart } from './charts.js';
import { Deriver, Rates, reading } from './metrics.js';
import { renderLive } from './live.js';
import { initAdmin, loadModels, loadUsers } from './admin.js';

const $ = (id) => document.getElementById(id);
const POLL_MS = 1000;

let polling = false;
let pollTimer = null;
let metricsToken = null;
let metricsBlocked = false;
let charts = null;
let deriver = null;
let snapRates = null; // rates of the snapshot's counters (turns, credits)
let llmStats;

function show(view) {
  $('login-view').hidden = view !== 'login';
  $('console').hidden = view !== 'console';
  $('ops-logout').hidden = view !== 'console';
  $('sections-nav').hidden = view !== 'console';
  if (view !== 'console') $('whoami').textContent = '';
}

function loginError(text) {
  const e = $('ops-error');
  e.textContent = text;
  e.hidden = !text;
}

function makeCharts() {
  charts = {
    turns: new Chart($('chart-turns'), { series: [{ key: 'turns', label: 'turns ended' }], unit: '/s' }),
    v1: new Chart($('chart-v1'), { series: [{ key: 'v1', label: '/v1 requests' }], unit: '/s' }),
    latency: new Chart($('chart-latency'), {
      series: [
        { key: 'p50', label: 'p50' },
        { key: 'p99', label: 'p99' },
      ],
      unit: 's',
    }),
    errors: new Chart($('chart-errors'), {
      series: [
        { key: 'all', label: 'all errors' },
        { key: 'turn failed', label: 'turn failed' },
      ],
      unit: '/s',
    }),
    credits: new Chart($('chart-credits'), { series: [{ key: 'credits', label: 'credits charged' }], unit: '/s' }),
  };
  deriver = new Deriver(3, 5);
  snapRates = new Rates(3);
}

async function fetchMetrics() {
  if (metricsBlocked) return null;
  try {
    return await API.metricsText(metricsToken);
  } catch (e) {
    if (e.status === 401) {
      metricsBlocked = true;
      $('metrics-token-form').hidden = false;
      setMetricsNote('/metrics needs the server\'s METRICS_TOKEN: enter it to see the /v1, latency and error charts.');
    } else {
      setMetricsNote(`/metrics: ${API.describe(e)}`);
    }
    return null;
  }
}

function setMetricsNote(t) {
  $('metrics-note').textContent = t;
}

/** One poll: the snapshot for the live panel, `/metrics` for the charts. */
async function tick() {
  const started = performance.now();
  const t = started / 1000;
  const [snapR, textR] = await Promise.allSettled([API.api('GET', '/admin/actors'), fetchMetrics()]);
  if (!polling) return;
  if (snapR.status === 'rejected') {
    const e = snapR.reason;
    $('live-status').textContent = `Live data unavailable: ${API.describe(e)}`;
    $('live-status').classList.add('error');
    if (e.status === 403 || (e.status === 401 && !API.hasSession())) return lost('Your session ended; log in again.');
  }
  let d = null;
  if (textR.status === 'fulfilled' && textR.value) {
    setMetricsNote('');
    d = deriver.push(reading(textR.value, t));
    if (d) llmStats = d.providers;
  }
  if (snapR.status === 'fulfilled') {
    const s = snapR.value;
    renderLive(s, llmStats);
    $('live-status').textContent = `Updated ${new Date().toLocaleTimeString()}`;
    $('live-status').classList.remove('error');
    const tu = s.turns;
    // Turns and credits come from the snapshot's counters (the same ones `/metrics` shows),
    // so these two charts work even when `/metrics` is out of reach.
    const r = snapRates.push(t, { ended: tu.completed + tu.failed + tu.cancelled, failed: tu.failed, credits: tu.credits_charged });
    if (r) {
      charts.turns.push(t, { turns: r.ended });
      charts.credits.push(t, { credits: r.credits });
      if (d) {
        const all = Object.values(d.errors).reduce((a, b) => a + (b || 0), 0);
        charts.errors.push(t, { all, 'turn failed': r.failed, ...d.errors });
      } else if (metricsBlocked) {
        charts.errors.push(t, { all: null, 'turn failed': r.failed });
      }
    }
  }
  if (d) {
    charts.v1.push(t, { v1: d.v1 });
    charts.latency.push(t, { p50: d.p50, p99: d.p99 });
  }
  schedule(Math.max(0, POLL_MS - (performance.now() - started)));
}

function schedule(ms) {
  clearTimeout(pollTimer);
  if (polling) pollTimer = setTimeout(tick, ms);
}

function startConsole(user) {
  $('whoami').textContent = user.username;
  show('console');
  loginError('');
  makeCharts();
  polling = true;
  metricsBlocked = false;
  tick();
  loadUsers();
  loadModels();
  $('live').focus();
}

function stopConsole() {
  polling = false;
  clearTimeout(pollTimer);
}

function lost(why) {
  stopConsole();
  show('login');
  loginError(why);
  $('ops-username').focus();
}

async function onLogin(e) {
  e.preventDefault();
  const btn = $('ops-login');
  const username = $('ops-username').value.trim();
  const password = $('ops-password').value;
  if (!username || !password) return loginError('Enter a username and a password.');
  btn.disabled = true;
  loginError('');
  try {
    const user = await API.login(username, password);
    if (user.role !== 'admin') {
      await API.logout();
      return loginError(`This console is for admins only; ${user.username} is not an admin.`);
    }
    $('ops-password').value = '';
    startConsole(user);
  } catch (x) {
    loginError(x.status === 401 ? 'Wrong username or password.' : API.describe(x));
  } finally {
    btn.disabled = false;
  }
}

async function onLogout() {
  stopConsole();
  await API.logout();
  show('login');
  loginError('');
  $('ops-username').focus();
}

async function restore() {
  if (!API.hasSession()) return show('login');
  try {
    await API.refresh();
    const me = await API.api('GET', '/user/me');
    if (me.role !== 'admin') {
      await API.logout();
      show('login');
      return loginError('This console is for admins only.');
    }
    startConsole(me);
  } catch (e) {
    show('login');
    if (e.status !== 401) loginError(API.describe(e));
  }
}

function init() {
  API.onSessionLost(() => lost('Your session ended; log in again.'));
  $('login-form').addEventListener('submit', onLogin);
  $('ops-logout').addEventListener('click', onLogout);
  $('metrics-token-form').addEventListener('submit', (e) => {
    e.preventDefault();
    metricsToken = $('metrics-token').value.trim() || null;
    metricsBlocked = false;
    $('metrics-token-form').hidden = true;
    setMetricsNote('');
  });
  initAdmin();
  restore();
}

init();
