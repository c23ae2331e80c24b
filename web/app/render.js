// Message rendering: Markdown for replies (marked, then DOMPurify), plain text for users, and
// the error sentences of the conversation.

import { marked } from '/static/vendor/marked.esm.js';
import DOMPurify from '/static/vendor/purify.es.mjs';

const ESC = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' };
const escapeHtml = (s) => String(s).replace(/[&<>"']/g, (c) => ESC[c]);

// Raw HTML in a reply is shown as the text it is, not parsed: a model writes Markdown, and
// HTML it emits (quoted or injected) stays inert. DOMPurify below is the second line.
marked.use({
  gfm: true,
  breaks: true,
  renderer: {
    html(token) {
      return escapeHtml(typeof token === 'string' ? token : token.text || token.raw || '');
    },
  },
});

// Links open in a new tab without handing it this window; DOMPurify already removes
// `javascript:` and other unsafe URLs.
DOMPurify.addHook('afterSanitizeAttributes', (node) => {
  if (node.tagName === 'A') {
    if (node.hasAttribute('href')) {
      node.setAttribute('target', '_blank');
      node.setAttribute('rel', 'noopener noreferrer');
    } else {
      node.removeAttribute('target');
    }
  }
});

const PURIFY = {
  USE_PROFILES: { html: true },
  FORBID_TAGS: ['style', 'form', 'input', 'button', 'textarea', 'select', 'iframe'],
  FORBID_ATTR: ['style'],
  ADD_ATTR: ['target'],
};

/** Sanitised HTML of Markdown text. */
export function markdownToHtml(text) {
  const html = marked.parse(text || '', { async: false });
  return DOMPurify.sanitize(html, PURIFY);
}

/** Puts rendered Markdown into `el`. */
export function renderMarkdown(el, text) {
  el.innerHTML = markdownToHtml(text);
}

// --- errors in words

const SENTENCES = {
  insufficient_credits: () => 'You do not have enough credits for this message.',
  rate_limited: (e) => `You are sending messages too fast. Try again in ${retry(e, 'a few')} s.`,
  conversation_busy: () =>
    'A reply is still being written in this conversation. Wait for it to finish, or cancel it.',
  overloaded: (e) => `The service is very busy right now. Try again in ${retry(e, 'a few')} s.`,
  upstream_error: () => 'The AI provider failed to answer. Please try again.',
  upstream_timeout: () => 'The AI provider took too long to answer. Please try again.',
  model_not_found: () => 'This model is not available any more. Pick another one.',
  not_found: () => 'This conversation no longer exists.',
  payload_too_large: () => 'That file is too large.',
  unauthorized: () => 'Your session has ended. Please log in again.',
  forbidden: () => 'Your account is not allowed to do this.',
  internal_error: () => 'Something went wrong on the server. Please try again.',
  unavailable: (e) =>
    `The service is briefly unavailable. Send your message again in ${retry(e, 'a few')} s.`,
  network_error: () => 'The server cannot be reached. Check your connection.',
  not_connected: () => 'Not connected to the server. Reconnecting — try again in a moment.',
};

function retry(e, fallback) {
  const n = Number(e.retry_after ?? e.retryAfter);
  return Number.isFinite(n) && n > 0 ? String(Math.ceil(n)) : fallback;
}

/** A sentence for an error `{code, message, retry_after?}` (falls back to the server's words). */
export function errorSentence(e) {
  if (!e) return 'Something went wrong.';
  const f = SENTENCES[e.code];
  if (f) return f(e);
  return e.message || `Error: ${e.code || 'unknown'}`;
}

// --- message bubbles

const STATUS_LABEL = {
  streaming: 'writing…',
  sending: 'sending…',
  cancelled: 'cancelled',
  failed: 'failed',
};

/** A new bubble element. */
export function bubble(role) {
  const el = document.createElement('article');
  el.className = `msg msg-${role}`;
  el.setAttribute('data-testid', 'msg');
  el.dataset.role = role;
  const body = document.createElement('div');
  body.className = 'msg-body';
  body.setAttribute('data-testid', 'msg-text');
  const att = document.createElement('div');
  att.className = 'msg-attachments';
  att.hidden = true;
  const meta = document.createElement('div');
  meta.className = 'msg-meta';
  el.append(body, att, meta);
  return el;
}

/** Fills a bubble from its text, status and attachments. */
export function fill(el, { role, content, status, attachments, model }) {
  const body = el.querySelector('.msg-body');
  if (role === 'user' || role === 'system') {
    body.textContent = content || '';
  } else {
    renderMarkdown(body, content || '');
  }
  el.dataset.status = status || 'complete';
  const meta = el.querySelector('.msg-meta');
  const label = STATUS_LABEL[status] || '';
  meta.textContent = role === 'assistant' && model && !label ? model : label;
  meta.classList.toggle('warn', status === 'failed' || status === 'cancelled');
  const att = el.querySelector('.msg-attachments');
  const list = Array.isArray(attachments) ? attachments : [];
  if (att.childElementCount !== list.length) {
    att.replaceChildren(
      ...list.map((a) => {
        const img = document.createElement('img');
        img.src = a.url;
        img.alt = 'attached image';
        img.loading = 'lazy';
        img.decoding = 'async';
        img.referrerPolicy = 'no-referrer';
        return img;
      }),
    );
  }
  att.hidden = list.length === 0;
}
