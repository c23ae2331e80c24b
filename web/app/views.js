// DOM pieces of the app that are not messages: screens, the conversation list, the model
// picker, the error notice, attachment chips, the theme and the drawer.

export const $ = (id) => document.getElementById(id);

export function showScreen(name) {
  $('login-screen').hidden = name !== 'login';
  $('app-screen').hidden = name !== 'app';
  document.documentElement.dataset.screen = name;
}

// --- login

export function setLoginMode(mode) {
  // mode: 'login' | 'register' | 'sms'
  const sms = mode === 'sms';
  $('password-form').hidden = sms;
  $('sms-form').hidden = !sms;
  $('tab-password').setAttribute('aria-selected', String(!sms));
  $('tab-sms').setAttribute('aria-selected', String(sms));
  const register = mode === 'register';
  $('password-heading').textContent = register ? 'Create an account' : 'Log in';
  $('login-submit').textContent = register ? 'Create account' : 'Log in';
  $('register-toggle').textContent = register
    ? 'Already have an account? Log in'
    : 'No account? Create one';
  $('nickname-row').hidden = !register;
  $('login-password').autocomplete = register ? 'new-password' : 'current-password';
  $('password-form').dataset.mode = register ? 'register' : 'login';
  loginError('');
}

export function loginError(text) {
  const el = $('login-error');
  el.textContent = text;
  el.hidden = !text;
}

export function loginInfo(text) {
  $('login-info').textContent = text;
}

// --- the error notice of the conversation

export function showError(text) {
  $('error-text').textContent = text;
  $('error').hidden = !text;
}

// --- conversation list

export function convTitle(c) {
  return (c.title && c.title.trim()) || 'New chat';
}

/** A list item with open, rename and delete buttons. */
export function convItem(c, handlers) {
  const li = document.createElement('li');
  li.className = 'conv-item';
  li.setAttribute('data-testid', 'conv-item');
  li.dataset.id = c.id;
  const open = document.createElement('button');
  open.type = 'button';
  open.className = 'conv-open';
  open.setAttribute('data-testid', 'conv-open');
  const rename = document.createElement('button');
  rename.type = 'button';
  rename.className = 'icon conv-action';
  rename.setAttribute('data-testid', 'conv-rename');
  rename.textContent = '✎';
  const del = document.createElement('button');
  del.type = 'button';
  del.className = 'icon conv-action';
  del.setAttribute('data-testid', 'conv-delete');
  del.textContent = '✕';
  li.append(open, rename, del);
  updateConvItem(li, c);
  open.addEventListener('click', () => handlers.open(li.dataset.id));
  rename.addEventListener('click', () => startRename(li, handlers.rename));
  del.addEventListener('click', () => handlers.remove(li.dataset.id, li.dataset.title));
  return li;
}

export function updateConvItem(li, c) {
  const title = convTitle(c);
  li.dataset.title = title;
  const open = li.querySelector('.conv-open');
  open.textContent = title;
  open.title = `${title} · ${c.model}`;
  li.querySelector('[data-testid="conv-rename"]').setAttribute('aria-label', `Rename “${title}”`);
  li.querySelector('[data-testid="conv-delete"]').setAttribute('aria-label', `Delete “${title}”`);
}

function startRename(li, onRename) {
  const open = li.querySelector('.conv-open');
  if (li.querySelector('input')) return;
  const input = document.createElement('input');
  input.className = 'conv-rename-input';
  input.setAttribute('data-testid', 'conv-rename-input');
  input.setAttribute('aria-label', 'New title');
  input.maxLength = 255;
  input.value = li.dataset.title === 'New chat' ? '' : li.dataset.title;
  open.hidden = true;
  li.insertBefore(input, open);
  input.focus();
  input.select();
  let finished = false;
  const finish = (save) => {
    if (finished) return;
    finished = true;
    const value = input.value.trim();
    input.remove();
    open.hidden = false;
    open.focus();
    if (save && value && value !== li.dataset.title) onRename(li.dataset.id, value);
  };
  input.addEventListener('keydown', (e) => {
    if (e.key === 'Enter') {
      e.preventDefault();
      finish(true);
    } else if (e.key === 'Escape') {
      e.preventDefault();
      finish(false);
    }
  });
  input.addEventListener('blur', () => finish(true));
}

export function markActive(id) {
  for (const li of $('conv-list').children) {
    const on = li.dataset.id === String(id);
    li.classList.toggle('active', on);
    const b = li.querySelector('.conv-open');
    if (on) b.setAttribute('aria-current', 'true');
    else b.removeAttribute('aria-current');
  }
}

// --- model picker: models and agents

export function fillModelSelect(models, agents) {
  const sel = $('model-select');
  sel.replaceChildren();
  const group = (label, items) => {
    const g = document.createElement('optgroup');
    g.label = label;
    g.append(...items);
    return g;
  };
  const modelOpts = models.map((m) => {
    const o = document.createElement('option');
    o.value = `model:${m.id}`;
    o.textContent = m.display_name || m.id;
    return o;
  });
  const agentOpts = agents.map((a) => {
    const o = document.createElement('option');
    o.value = `agent:${a.id}`;
    o.textContent = a.name;
    return o;
  });
  if (agentOpts.length) sel.append(group('Models', modelOpts), group('Agents', agentOpts));
  else sel.append(...modelOpts);
}

// --- attachments being composed

export function renderChips(list, onRemove) {
  const box = $('attachments');
  box.replaceChildren(
    ...list.map((a, i) => {
      const chip = document.createElement('div');
      chip.className = 'chip';
      chip.setAttribute('data-testid', 'attachment-chip');
      const img = document.createElement('img');
      img.src = a.url;
      img.alt = a.name || 'image';
      const x = document.createElement('button');
      x.type = 'button';
      x.className = 'icon';
      x.textContent = '×';
      x.setAttribute('aria-label', `Remove ${a.name || 'image'}`);
      x.addEventListener('click', () => onRemove(i));
      chip.append(img, x);
      return chip;
    }),
  );
  box.hidden = list.length === 0;
}

// --- theme: automatic (prefers-color-scheme), light or dark; the choice is remembered

const THEME_KEY = 'questech.theme';
const THEMES = ['auto', 'light', 'dark'];

export function applyTheme(theme) {
  const t = THEMES.includes(theme) ? theme : 'auto';
  if (t === 'auto') delete document.documentElement.dataset.theme;
  else document.documentElement.dataset.theme = t;
  const b = $('theme-toggle');
  b.textContent = t === 'dark' ? '☾' : t === 'light' ? '☀' : '◐';
  b.setAttribute('aria-label', `Theme: ${t === 'auto' ? 'automatic' : t}`);
  b.title = b.getAttribute('aria-label');
  return t;
}

export function initTheme() {
  let t = 'auto';
  try {
    t = localStorage.getItem(THEME_KEY) || 'auto';
  } catch {
    /* storage blocked */
  }
  let current = applyTheme(t);
  $('theme-toggle').addEventListener('click', () => {
    current = applyTheme(THEMES[(THEMES.indexOf(current) + 1) % THEMES.length]);
    try {
      localStorage.setItem(THEME_KEY, current);
    } catch {
      /* storage blocked */
    }
  });
}

// --- drawer (phone-sized screens)

export function setDrawer(open) {
  document.documentElement.classList.toggle('drawer-open', open);
  $('drawer-toggle').setAttribute('aria-expanded', String(open));
  $('drawer-backdrop').hidden = !open;
}

export function initDrawer() {
  $('drawer-toggle').addEventListener('click', () =>
    setDrawer(!document.documentElement.classList.contains('drawer-open')),
  );
  $('drawer-backdrop').addEventListener('click', () => setDrawer(false));
  document.addEventListener('keydown', (e) => {
    if (e.key === 'Escape' && document.documentElement.classList.contains('drawer-open')) {
      setDrawer(false);
      $('drawer-toggle').focus();
    }
  });
}
