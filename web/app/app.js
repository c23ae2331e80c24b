// The Questech chat app: wiring of the API, the socket, the thread and the views.

import { Api } from './api.js';
import { ChatSocket } from './socket.js';
import { Thread } from './thread.js';
import { ConvList } from './convs.js';
import { errorSentence } from './render.js';
import * as V from './views.js';
import { bindLogin } from './login.js';
import { bindComposer } from './composer.js';

const { $ } = V;
const HISTORY_PAGE = 50;
const OPEN_KEY = 'questech.open_conversation';

const api = new Api();
const state = {
  user: null,
  models: new Map(), // id -> model (usable ones)
  agents: new Map(), // id -> agent
  openId: null,
  active: new Set(), // conversations with a turn in flight
  sends: new Map(), // client_msg_id -> { convId, text } (sent from here, not yet acknowledged)
  stick: true, // the thread follows new output
};

const thread = new Thread($('messages'), () => threadChanged());
const socket = new ChatSocket({
  token: (force) => api.freshAccess(60000, force),
  onFrame: (f) => onFrame(f),
  onStatus: (s) => {
    $('conn-status').textContent = s;
    $('conn-status').dataset.state = s;
  },
});
const convs = new ConvList(api, {
  open: (id) => openConversation(id),
  renamed: (c) => {
    if (String(c.id) === state.openId) $('conv-title').textContent = V.convTitle(c);
  },
  deleted: (id) => {
    if (id === state.openId) closeConversation();
  },
  error: (e) => V.showError(errorSentence(e)),
});
const composer = bindComposer({ api, state, thread, socket, convs, currentModel, ensureConversation });

// --- screens and session

async function enterApp() {
  V.showScreen('app');
  V.showError('');
  const [me, models, agents] = await Promise.all([
    api.me(),
    api.models().catch(() => []),
    api.agents().catch(() => []),
  ]);
  state.user = me;
  setBalance(me.credits);
  $('whoami').textContent = me.nickname || me.username || '';
  state.models = new Map(models.filter((m) => m.enabled).map((m) => [m.id, m]));
  state.agents = new Map(agents.map((a) => [String(a.id), a]));
  V.fillModelSelect([...state.models.values()], [...state.agents.values()]);
  composer.modelChanged();
  socket.start();
  await convs.reload();
  const last = sessionStorage.getItem(OPEN_KEY);
  if (last && convs.get(last)) openConversation(last);
  else $('composer').focus();
}

function toLogin(message) {
  socket.stop();
  api.clear();
  state.user = null;
  state.openId = null;
  state.active.clear();
  state.sends.clear();
  sessionStorage.removeItem(OPEN_KEY);
  thread.reset(null);
  convs.clear();
  composer.reset();
  $('balance').textContent = '–';
  V.showScreen('login');
  V.loginError(message || '');
  $('login-username').focus();
}

api.onAuthLost = () => {
  if (state.user) toLogin('Your session has ended. Please log in again.');
};

async function logout() {
  socket.stop();
  await api.logout();
  toLogin('');
}

function setBalance(n) {
  if (typeof n === 'number' && Number.isFinite(n)) $('balance').textContent = String(n);
}

// --- the open conversation

function currentModel() {
  const v = $('model-select').value || '';
  if (v.startsWith('agent:')) {
    const a = state.agents.get(v.slice(6));
    return a ? state.models.get(a.model) || null : null;
  }
  return state.models.get(v.slice(6)) || null;
}

function selectFor(conv) {
  const sel = $('model-select');
  const want = conv.agent_id && state.agents.has(String(conv.agent_id))
    ? `agent:${conv.agent_id}`
    : `model:${conv.model}`;
  if ([...sel.options].some((o) => o.value === want)) sel.value = want;
  composer.modelChanged();
}

function closeConversation() {
  state.openId = null;
  sessionStorage.removeItem(OPEN_KEY);
  thread.reset(null);
  convs.active(null);
  $('conv-title').textContent = 'New chat';
  composer.update();
}

async function openConversation(id) {
  id = String(id);
  V.setDrawer(false);
  V.showError('');
  if (state.openId !== id) {
    state.openId = id;
    thread.reset(id);
  }
  sessionStorage.setItem(OPEN_KEY, id);
  convs.active(id);
  const listed = convs.get(id);
  if (listed) {
    $('conv-title').textContent = V.convTitle(listed);
    selectFor(listed);
  }
  composer.update();
  try {
    const conv = await api.getConversation(id);
    if (state.openId !== id) return;
    convs.put(conv, false);
    $('conv-title').textContent = V.convTitle(conv);
    selectFor(conv);
    // The latest page: history pages forward only, so start HISTORY_PAGE before last_seq.
    let after = Math.max(0, (conv.last_seq || 0) - HISTORY_PAGE);
    for (let i = 0; i < 20; i++) {
      const r = await api.messages(id, after, HISTORY_PAGE);
      if (state.openId !== id) return;
      for (const m of r.items || []) thread.upsert(m);
      if (!r.has_more || !(r.items || []).length) break;
      after = r.items[r.items.length - 1].seq;
    }
    state.stick = true;
    scrollToEnd();
    // Anything that arrived between the page and now (and on the socket meanwhile).
    syncOpen();
  } catch (e) {
    if (state.openId !== id) return;
    if (e.status === 404) {
      convs.forget(id); // deleted from another device
      closeConversation();
    }
    V.showError(errorSentence(e));
  }
  $('composer').focus();
}

async function loadEarlier() {
  const id = state.openId;
  if (!id || !(thread.minSeq > 1)) return;
  const before = thread.minSeq;
  const after = Math.max(0, before - 1 - HISTORY_PAGE);
  const box = $('thread');
  const height = box.scrollHeight;
  $('load-earlier').disabled = true;
  try {
    const r = await api.messages(id, after, before - 1 - after);
    if (state.openId !== id) return;
    state.stick = false;
    for (const m of r.items || []) if (m.seq < before) thread.upsert(m);
    box.scrollTop += box.scrollHeight - height; // keep the reader's place
  } catch (e) {
    V.showError(errorSentence(e));
  } finally {
    $('load-earlier').disabled = false;
  }
}

function syncOpen() {
  if (!state.openId) return;
  socket.send({ type: 'conversation.sync', conversation_id: state.openId, after_seq: thread.maxSeq });
}

let creating = null;

/** The open conversation, created first if none is open (one at a time). */
function ensureConversation() {
  if (state.openId) return Promise.resolve(state.openId);
  if (!creating) creating = createOpen().finally(() => (creating = null));
  return creating;
}

async function createOpen() {
  const v = $('model-select').value || '';
  const body = v.startsWith('agent:') ? { agent_id: v.slice(6) } : v ? { model: v.slice(6) } : {};
  const c = await convs.create(body);
  state.openId = String(c.id);
  thread.reset(state.openId);
  sessionStorage.setItem(OPEN_KEY, state.openId);
  convs.active(state.openId);
  $('conv-title').textContent = V.convTitle(c);
  return state.openId;
}

async function newConversation() {
  V.showError('');
  try {
    state.openId = null;
    const id = await ensureConversation();
    V.setDrawer(false);
    composer.update();
    $('composer').focus();
    return id;
  } catch (e) {
    V.showError(errorSentence(e));
    return null;
  }
}

// --- frames

function onFrame(f) {
  const conv = f.conversation_id != null ? String(f.conversation_id) : null;
  const open = conv !== null && conv === state.openId;
  switch (f.type) {
    case 'hello':
      setBalance(f.credits);
      syncOpen();
      break;
    case 'chat.ack': {
      state.active.add(conv);
      state.sends.delete(f.id);
      thread.upsert(f.message);
      convs.bump(conv);
      break;
    }
    case 'chat.delta':
      state.active.add(conv);
      thread.delta(f);
      break;
    case 'chat.done':
      state.active.delete(conv);
      thread.upsert(f.message);
      if (f.credits) setBalance(f.credits.balance);
      convs.bump(conv);
      break;
    case 'chat.error': {
      const mine = f.id && state.sends.get(f.id);
      if (mine) {
        // Refused before it started: the message was not stored; give its text back.
        state.sends.delete(f.id);
        const text = thread.dropPending(f.id);
        composer.restore(text);
      } else {
        // The turn in flight failed: its stored message (status failed) comes with a sync.
        state.active.delete(conv);
        if (open) {
          thread.failStreams();
          syncOpen();
        }
      }
      if (open || mine) V.showError(errorSentence(f.error));
      break;
    }
    case 'message': {
      const m = f.message || {};
      const c = String(m.conversation_id);
      if (m.client_msg_id) state.sends.delete(m.client_msg_id);
      thread.upsert(m);
      if (m.role === 'assistant' && m.status !== 'streaming' && c === state.openId &&
          !thread.streaming && m.seq >= thread.maxSeq) {
        state.active.delete(c);
      }
      break;
    }
    case 'sync.done':
      break;
    case 'credits.updated':
      setBalance(f.balance);
      break;
    case 'error':
      if (f.error && f.error.code !== 'invalid_request') V.showError(errorSentence(f.error));
      break;
    default:
      break;
  }
  composer.update();
}

// --- thread chrome: empty state, "load earlier", following the output

function threadChanged() {
  $('thread-empty').textContent = state.openId ? 'No messages yet. Say hello!' : 'Send a message to start.';
  $('thread-empty').hidden = !thread.empty;
  $('load-earlier').hidden = !(Number.isFinite(thread.minSeq) && thread.minSeq > 1);
  if (state.stick) scrollToEnd();
}

function scrollToEnd() {
  const box = $('thread');
  box.scrollTop = box.scrollHeight;
}

// --- boot

function bind() {
  V.initTheme();
  V.initDrawer();
  bindLogin(api, { entered: () => enterApp().catch(bootFailed) });
  $('logout').addEventListener('click', () => logout());
  $('conv-new').addEventListener('click', () => newConversation());
  $('load-earlier').addEventListener('click', () => loadEarlier());
  $('error-close').addEventListener('click', () => V.showError(''));
  $('model-select').addEventListener('change', () => composer.modelSelected());
  $('thread').addEventListener('scroll', () => {
    const box = $('thread');
    state.stick = box.scrollHeight - box.scrollTop - box.clientHeight < 80;
  });
}

function bootFailed(e) {
  if (e && (e.status === 401 || e.status === 403)) {
    toLogin('Your session has ended. Please log in again.');
  } else {
    V.showScreen('login');
    V.loginError(errorSentence(e));
  }
}

async function boot() {
  bind();
  if (!api.hasSession()) {
    toLogin('');
    return;
  }
  // A reload of the tab: the refresh token of sessionStorage gets a new access token.
  for (let i = 0; ; i++) {
    try {
      await api.refresh();
      break;
    } catch (e) {
      if (e.status === 401 || e.status === 403 || i >= 3) {
        toLogin(e.status === 401 ? '' : errorSentence(e));
        return;
      }
      await new Promise((r) => setTimeout(r, 1000 * (i + 1)));
    }
  }
  await enterApp().catch(bootFailed);
}

boot();
