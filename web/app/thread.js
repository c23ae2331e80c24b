// The messages of the open conversation, in the DOM.
//
// Stored messages are keyed by id and placed by seq, so a message that arrives twice (history,
// sync replay, a `message` frame from another device, `chat.done`) is shown once. A bubble being
// streamed is keyed by the assistant message id the deltas carry, and replaced in place by the
// stored message when it arrives. Deltas are kept by `index`, so a late or repeated one cannot
// garble the text.

import { bubble, fill } from './render.js';

const FINAL = new Set(['complete', 'cancelled', 'failed']);

export class Thread {
  constructor(container, onChange) {
    this.el = container;
    this.onChange = () => {};
    this.scheduled = false;
    this.reset(null);
    this.onChange = onChange || (() => {});
  }

  reset(convId) {
    this.convId = convId;
    this.byId = new Map(); // message id -> { el, msg }
    this.pending = new Map(); // client_msg_id -> el (sent, not yet acknowledged)
    this.streams = new Map(); // assistant message id -> { el, parts, model }
    this.maxSeq = 0;
    this.minSeq = Infinity;
    this.el.replaceChildren();
    this.onChange();
  }

  get empty() {
    return this.el.childElementCount === 0;
  }

  /** Inserts `el` before the first bubble with a larger seq (unsequenced ones stay last). */
  place(el, seq) {
    for (const child of this.el.children) {
      if (child === el) continue;
      const s = child.dataset.seq;
      if (!s || Number(s) > seq) {
        if (el.nextElementSibling !== child) this.el.insertBefore(el, child);
        return;
      }
    }
    if (el.parentNode !== this.el || el !== this.el.lastElementChild) this.el.append(el);
  }

  /** A stored message (history, sync, ack, done, another device). True if it is this thread's. */
  upsert(m) {
    if (!m || String(m.conversation_id) !== String(this.convId)) return false;
    const live = this.streams.get(m.id);
    if (live && !FINAL.has(m.status)) {
      // A partial copy of the bubble being streamed: the deltas stay the source of its text.
      live.el.dataset.seq = String(m.seq);
      this.place(live.el, m.seq);
      this.maxSeq = Math.max(this.maxSeq, m.seq - 1);
      return true;
    }
    let entry = this.byId.get(m.id);
    if (!entry) {
      let el = null;
      if (m.role === 'user' && m.client_msg_id && this.pending.has(m.client_msg_id)) {
        el = this.pending.get(m.client_msg_id);
        this.pending.delete(m.client_msg_id);
      }
      const s = this.streams.get(m.id);
      if (s && FINAL.has(m.status)) {
        el = s.el;
        this.streams.delete(m.id);
      }
      entry = { el: el || bubble(m.role), msg: null };
      this.byId.set(m.id, entry);
    } else if (entry.msg && FINAL.has(entry.msg.status) && m.status === 'streaming') {
      return true; // never go back from a final message to a partial one
    }
    entry.msg = m;
    const el = entry.el;
    el.dataset.id = m.id;
    el.dataset.seq = String(m.seq);
    el.dataset.role = m.role;
    fill(el, m);
    this.place(el, m.seq);
    this.maxSeq = Math.max(this.maxSeq, m.seq);
    this.minSeq = Math.min(this.minSeq, m.seq);
    this.onChange();
    return true;
  }

  /** A user message sent from here, shown until its ack. */
  addPending(clientId, content, attachments) {
    const el = bubble('user');
    el.dataset.clientId = clientId;
    fill(el, { role: 'user', content, status: 'sending', attachments });
    this.pending.set(clientId, el);
    this.el.append(el);
    this.onChange();
    return el;
  }

  /** Drops a pending bubble (the send was refused); returns its text. */
  dropPending(clientId) {
    const el = this.pending.get(clientId);
    if (!el) return null;
    this.pending.delete(clientId);
    el.remove();
    this.onChange();
    return el.querySelector('.msg-body').textContent;
  }

  /** A `chat.delta` frame. */
  delta(f) {
    if (String(f.conversation_id) !== String(this.convId)) return;
    const known = this.byId.get(f.message_id);
    if (known && known.msg && FINAL.has(known.msg.status)) return;
    let s = this.streams.get(f.message_id);
    if (!s && known) {
      // Shown as stored while still streaming: keep its bubble, the deltas take over.
      this.byId.delete(f.message_id);
      s = { el: known.el, parts: [], dirty: false };
      this.streams.set(f.message_id, s);
    }
    if (!s) {
      const el = bubble('assistant');
      el.dataset.id = f.message_id;
      el.dataset.seq = '';
      fill(el, { role: 'assistant', content: '', status: 'streaming' });
      s = { el, parts: [], dirty: false };
      this.streams.set(f.message_id, s);
      this.el.append(el);
      this.onChange();
    }
    const i = Number(f.index);
    if (Number.isInteger(i) && i >= 0 && i < 1e6) s.parts[i] = f.delta || '';
    s.dirty = true;
    this.schedule();
  }

  /** Marks this thread's streaming bubbles failed (the turn ended in `chat.error`). */
  failStreams() {
    for (const s of this.streams.values()) {
      s.dirty = false;
      fill(s.el, { role: 'assistant', content: s.parts.join(''), status: 'failed' });
    }
  }

  get streaming() {
    return this.streams.size > 0;
  }

  /** Re-renders dirty streaming bubbles once per frame (or soon, in a hidden tab). */
  schedule() {
    if (this.scheduled) return;
    this.scheduled = true;
    const run = () => {
      if (!this.scheduled) return;
      this.scheduled = false;
      this.flush();
    };
    if (document.hidden) {
      setTimeout(run, 150);
    } else {
      requestAnimationFrame(run);
      setTimeout(run, 250); // rAF may be paused; whichever comes first renders
    }
  }

  flush() {
    for (const s of this.streams.values()) {
      if (!s.dirty) continue;
      s.dirty = false;
      fill(s.el, { role: 'assistant', content: s.parts.join(''), status: 'streaming' });
    }
    this.onChange();
  }
}
