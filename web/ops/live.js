// The live panel: the engine's state from `GET /admin/actors` (SPEC §11), redrawn every poll.

import { fmt } from './charts.js';

const $ = (id) => document.getElementById(id);

function td(text, label, cls) {
  const c = document.createElement('td');
  c.textContent = text;
  if (label) c.dataset.label = label;
  if (cls) c.className = cls;
  return c;
}

function row(...cells) {
  const tr = document.createElement('tr');
  tr.append(...cells);
  return tr;
}

function set(id, v) {
  const e = $(id);
  const s = String(v);
  if (e.textContent !== s) e.textContent = s;
}

/** Turns started and not yet ended (the snapshot counts starts and each kind of end). */
export function turnsInFlight(s) {
  const t = s.turns;
  return Math.max(0, t.started - t.completed - t.failed - t.cancelled);
}

/**
 * `s`: the snapshot; `llmStats`: {provider: {p50, ttft50}} from `/metrics` (or undefined when
 * those are unavailable).
 */
export function renderLive(s, llmStats) {
  set('node-id', s.node_id);
  set('actors-users', s.actors.user_session);
  set('actors-conversations', s.actors.conversation);
  set('ws-connections', s.websocket_connections);
  set('turns-inflight', turnsInFlight(s));
  set('mailbox-max', s.mailbox.max_depth);
  set('mailbox-rejected', s.mailbox.rejected_total);
  set('restarts-users', s.restarts.user_session);
  set('restarts-conversations', s.restarts.conversation);
  set('turns-totals', `${s.turns.completed} complete · ${s.turns.failed} failed · ${s.turns.cancelled} cancelled`);
  set('credits-total', s.turns.credits_charged);

  const boxes = (s.mailbox.largest || []).filter((m) => m.depth > 0).map((m) =>
    row(td(m.kind.replace('_', ' '), 'Kind'), td(m.id, 'Actor', 'mono'), td(String(m.depth), 'Depth', 'num')),
  );
  if (!boxes.length) {
    const c = td('All mailboxes are empty.', '', 'empty');
    c.colSpan = 3;
    boxes.push(row(c));
  }
  $('mailbox-body').replaceChildren(...boxes);

  const pools = (s.llm || []).map((p) => {
    const name = td(p.provider, 'Provider');
    if (p.dev) {
      const b = document.createElement('small');
      b.className = 'badge';
      b.textContent = 'dev';
      name.append(' ', b);
    }
    const breaker = td('', 'Breaker');
    const b = document.createElement('span');
    b.className = `breaker breaker-${p.breaker}`;
    b.textContent = p.breaker.replace('_', ' ');
    breaker.append(b);
    const st = (llmStats && llmStats[p.provider]) || {};
    const tr = row(
      name,
      td(`${p.in_flight} / ${p.limit}`, 'In flight / limit', 'num'),
      td(`${p.queued} / ${p.queue_capacity}`, 'Queued / capacity', 'num'),
      breaker,
      td(String(p.requests_total), 'Requests', 'num'),
      td(String(p.failures_total), 'Failures', 'num'),
      td(fmt(st.p50, 's'), 'Latency p50', 'num'),
      td(fmt(st.ttft50, 's'), 'First token p50', 'num'),
    );
    tr.dataset.testid = 'llm-row';
    tr.dataset.provider = p.provider;
    return tr;
  });
  $('llm-body').replaceChildren(...pools);
}
