// Admin basics over the existing admin API (SPEC §11): users (search, grant credits,
// disable/enable) and models (enable/disable, prices, fallbacks). Every change goes through the
// confirmation dialog; every server string is rendered with textContent.

import { api, describe } from './api.js';
import { confirmDialog } from './dialog.js';

const $ = (id) => document.getElementById(id);

function el(tag, props = {}, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === 'testid') e.dataset.testid = v;
    else if (k === 'label') e.dataset.label = v;
    else if (k === 'className') e.className = v;
    else if (k === 'text') e.textContent = v;
    else e.setAttribute(k, v);
  }
  e.append(...kids);
  return e;
}

function status(id, text, bad = false) {
  const s = $(id);
  s.textContent = text;
  s.classList.toggle('error', bad);
}

// ---- users ----

const users = { page: 1, q: '', total: 0, pageSize: 20, seq: 0 };

export async function loadUsers() {
  const seq = ++users.seq; // an answer to an older search is dropped
  const qs = new URLSearchParams({ page: String(users.page), page_size: String(users.pageSize) });
  if (users.q) qs.set('q', users.q);
  try {
    const r = await api('GET', `/admin/users?${qs}`);
    if (seq !== users.seq) return;
    users.total = r.total;
    renderUsers(r.items);
    const pages = Math.max(1, Math.ceil(r.total / users.pageSize));
    $('users-page').textContent = `page ${r.page} of ${pages} · ${r.total} users`;
    $('users-prev').disabled = r.page <= 1;
    $('users-next').disabled = r.page >= pages;
  } catch (e) {
    if (seq !== users.seq) return;
    status('users-status', `Could not load users: ${describe(e)}`, true);
  }
}

function renderUsers(items) {
  const rows = items.map((u) => {
    const credits = el('td', { label: 'Credits', className: 'num', text: String(u.credits) });
    const state = el('td', { label: 'Status', text: u.disabled ? 'disabled' : 'active' });
    const grant = el('button', { type: 'button', testid: 'grant-credits', text: 'Grant credits' });
    const toggle = el('button', {
      type: 'button',
      testid: 'disable-user',
      className: u.disabled ? '' : 'danger',
      text: u.disabled ? 'Enable' : 'Disable',
    });
    toggle.dataset.disabled = String(!!u.disabled);
    grant.addEventListener('click', () => grantCredits(u));
    toggle.addEventListener('click', () => toggleUser(u));
    const tr = el(
      'tr',
      { testid: 'user-row' },
      el('td', { label: 'User' }, el('b', { text: u.username }), el('small', { text: ` ${u.nickname || ''}` })),
      el('td', { label: 'Id', className: 'mono', text: u.id }),
      el('td', { label: 'Role', text: u.role }),
      credits,
      state,
      el('td', { label: 'Actions', className: 'actions' }, grant, toggle),
    );
    tr.dataset.id = u.id;
    tr.classList.toggle('is-disabled', !!u.disabled);
    return tr;
  });
  if (!rows.length) rows.push(el('tr', {}, el('td', { colspan: '6', className: 'empty', text: 'No users match.' })));
  $('users-body').replaceChildren(...rows);
}

async function grantCredits(u) {
  let balance = null;
  const ok = await confirmDialog({
    title: 'Grant credits',
    message: (v) => {
      const d = Number(v.delta);
      if (!Number.isInteger(d) || d === 0) return `Enter a non-zero whole number of credits for ${u.username}.`;
      const verb = d > 0 ? `Grant ${d} credits to` : `Take ${-d} credits from`;
      return `${verb} ${u.username}: balance ${u.credits} → ${u.credits + d}.`;
    },
    fields: [
      { name: 'delta', label: 'Credits (negative takes away)', type: 'number', value: 50, testid: 'grant-amount', attrs: { step: '1', required: '' } },
      { name: 'reason', label: 'Reason (shown in their ledger)', value: 'granted from the ops console', testid: 'grant-reason', attrs: { maxlength: '255', required: '' } },
    ],
    ok: 'Grant',
    action: async (v) => {
      const delta = Number(v.delta);
      if (!Number.isInteger(delta) || delta === 0) throw new Error('Credits must be a non-zero whole number.');
      if (!v.reason.trim()) throw new Error('A reason is required.');
      const r = await api('POST', `/admin/users/${encodeURIComponent(u.id)}/credits`, { delta, reason: v.reason.trim() });
      balance = r.balance;
    },
  });
  if (ok) {
    status('users-status', `${u.username} now has ${balance} credits.`);
    await loadUsers();
  }
}

async function toggleUser(u) {
  const disable = !u.disabled;
  const ok = await confirmDialog({
    title: disable ? 'Disable user' : 'Enable user',
    message: disable
      ? `Disable ${u.username}? Their sessions are revoked and their sockets closed at once; they cannot log in until enabled again.`
      : `Enable ${u.username}? They can log in again.`,
    ok: disable ? 'Disable' : 'Enable',
    danger: disable,
    action: () => api('PATCH', `/admin/users/${encodeURIComponent(u.id)}`, { disabled: disable }),
  });
  if (ok) {
    status('users-status', `${u.username} is ${disable ? 'disabled' : 'enabled'}.`);
    await loadUsers();
  }
}

// ---- models ----

let modelIds = [];

export async function loadModels() {
  try {
    const r = await api('GET', '/admin/models?page_size=100');
    modelIds = r.items.map((m) => m.id);
    renderModels(r.items);
  } catch (e) {
    status('models-status', `Could not load models: ${describe(e)}`, true);
  }
}

function numInput(value, label, step) {
  return el('input', { type: 'number', min: '0', step, value: String(value), 'aria-label': label, className: 'narrow' });
}

function renderModels(items) {
  const rows = items.map((m) => {
    const enabled = el('input', { type: 'checkbox', testid: 'model-enabled', 'aria-label': `${m.id} enabled` });
    enabled.checked = !!m.enabled;
    const prompt = numInput(m.price.prompt_per_1k, `${m.id} prompt credits per 1k tokens`, 'any');
    const completion = numInput(m.price.completion_per_1k, `${m.id} completion credits per 1k tokens`, 'any');
    const perReq = numInput(m.price.per_request, `${m.id} credits per request`, '1');
    const fallbacks = el('input', {
      type: 'text',
      value: (m.fallbacks || []).join(', '),
      'aria-label': `${m.id} fallbacks (model ids, comma separated)`,
      list: 'model-ids',
      placeholder: 'none',
    });
    const save = el('button', { type: 'button', testid: 'model-save', text: 'Save' });
    enabled.addEventListener('change', () => toggleModel(m, enabled));
    save.addEventListener('click', () => saveModel(m, { prompt, completion, perReq, fallbacks }));
    const tr = el(
      'tr',
      { testid: 'model-row' },
      el('td', { label: 'Model' }, el('b', { className: 'mono', text: m.id }), el('small', { text: ` ${m.display_name}` })),
      el('td', { label: 'Provider', text: m.provider }),
      el('td', { label: 'Enabled' }, enabled),
      el('td', { label: 'Prompt /1k' }, prompt),
      el('td', { label: 'Completion /1k' }, completion),
      el('td', { label: 'Per request' }, perReq),
      el('td', { label: 'Fallbacks' }, fallbacks),
      el('td', { label: 'Actions', className: 'actions' }, save),
    );
    tr.dataset.id = m.id;
    return tr;
  });
  $('models-body').replaceChildren(...rows);
  $('model-ids').replaceChildren(...modelIds.map((id) => el('option', { value: id })));
}

async function toggleModel(m, box) {
  const want = box.checked;
  box.checked = !want; // shown as it is until the change is confirmed and made
  const ok = await confirmDialog({
    title: want ? 'Enable model' : 'Disable model',
    message: want
      ? `Enable ${m.id}? New turns may use it (if its provider is configured).`
      : `Disable ${m.id}? New turns and /v1 calls with it answer model_not_found.`,
    ok: want ? 'Enable' : 'Disable',
    danger: !want,
    action: () => api('PATCH', `/admin/models/${encodeURIComponent(m.id)}`, { enabled: want }),
  });
  if (ok) {
    status('models-status', `${m.id} is ${want ? 'enabled' : 'disabled'}.`);
    await loadModels();
  }
  const row = [...document.querySelectorAll('#models-body tr')].find((r) => r.dataset.id === m.id);
  const again = row && row.querySelector('[data-testid="model-enabled"]');
  (again || box).focus();
}

async function saveModel(m, f) {
  const price = {
    prompt_per_1k: Number(f.prompt.value),
    completion_per_1k: Number(f.completion.value),
    per_request: Number(f.perReq.value),
  };
  const fallbacks = f.fallbacks.value.split(/[\s,]+/).filter(Boolean);
  const bad = [];
  if (f.prompt.value === '' || !(price.prompt_per_1k >= 0)) bad.push('prompt price must be a number ≥ 0');
  if (f.completion.value === '' || !(price.completion_per_1k >= 0)) bad.push('completion price must be a number ≥ 0');
  if (!Number.isInteger(price.per_request) || price.per_request < 0) bad.push('per-request price must be a whole number ≥ 0');
  const unknown = fallbacks.filter((id) => !modelIds.includes(id));
  if (unknown.length) bad.push(`unknown fallback model ${unknown.join(', ')}`);
  if (bad.length) {
    status('models-status', `${m.id} not saved: ${bad.join('; ')}.`, true);
    return;
  }
  const fb = fallbacks.length ? fallbacks.join(', ') : 'none';
  const ok = await confirmDialog({
    title: 'Change model',
    message: `Set ${m.id} to ${price.prompt_per_1k} credits per 1k prompt tokens, ${price.completion_per_1k} per 1k completion tokens, ${price.per_request} per request, fallbacks: ${fb}?`,
    ok: 'Save',
    action: () => api('PATCH', `/admin/models/${encodeURIComponent(m.id)}`, { price, fallbacks }),
  });
  if (ok) {
    status('models-status', `${m.id} saved.`);
    await loadModels();
  }
}

// ---- wiring ----

let searchTimer = null;

export function initAdmin() {
  const search = $('user-search');
  const run = () => {
    users.q = search.value.trim();
    users.page = 1;
    loadUsers();
  };
  $('user-search-form').addEventListener('submit', (e) => {
    e.preventDefault();
    clearTimeout(searchTimer);
    run();
  });
  search.addEventListener('input', () => {
    clearTimeout(searchTimer);
    searchTimer = setTimeout(run, 300);
  });
  $('users-prev').addEventListener('click', () => {
    users.page = Math.max(1, users.page - 1);
    loadUsers();
  });
  $('users-next').addEventListener('click', () => {
    users.page += 1;
    loadUsers();
  });
  $('models-reload').addEventListener('click', () => loadModels());
}
