// The composer: text box (Enter sends, Shift+Enter new line), send and cancel, image uploads
// for vision models, and the model of the open conversation.

import { $, showError, renderChips } from './views.js';
import { errorSentence } from './render.js';

const MAX_IMAGES = 4;

function uuid() {
  if (crypto.randomUUID) return crypto.randomUUID();
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const h = [...b].map((x) => x.toString(16).padStart(2, '0')).join('');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

export function bindComposer({ api, state, thread, socket, convs, currentModel, ensureConversation }) {
  const box = $('composer');
  let attachments = []; // [{url, name}]
  let uploading = 0;

  const busy = () => !!state.openId && (state.active.has(state.openId) || thread.streaming);

  function autosize() {
    box.style.height = 'auto';
    box.style.height = `${Math.min(box.scrollHeight, 240)}px`;
  }

  function update() {
    const b = busy();
    $('cancel').hidden = !b;
    $('send').disabled = b || uploading > 0;
    $('send').textContent = uploading > 0 ? 'Uploading…' : 'Send';
  }

  function chips() {
    renderChips(attachments, (i) => {
      attachments.splice(i, 1);
      chips();
    });
  }

  function modelChanged() {
    const m = currentModel();
    const vision = !!(m && m.capabilities && m.capabilities.vision);
    $('attach').hidden = !vision;
    if (!vision && attachments.length) {
      attachments = [];
      chips();
    }
  }

  async function modelSelected() {
    modelChanged();
    const v = $('model-select').value || '';
    const id = state.openId;
    if (!id || !v.startsWith('model:')) return;
    const model = v.slice(6);
    const c = convs.get(id);
    if (c && c.model === model) return;
    try {
      convs.put(await api.patchConversation(id, { model }), false);
    } catch (e) {
      showError(errorSentence(e));
    }
  }

  async function send() {
    if (busy()) {
      showError(errorSentence({ code: 'conversation_busy' }));
      return;
    }
    const text = box.value;
    if (!text.trim()) {
      if (attachments.length) showError('Write a message to go with the image.');
      return;
    }
    if (uploading > 0) return;
    if (!socket.online) {
      showError(errorSentence({ code: 'not_connected' }));
      return;
    }
    showError('');
    let convId;
    try {
      convId = await ensureConversation();
    } catch (e) {
      showError(errorSentence(e));
      return;
    }
    const id = uuid();
    const frame = { type: 'chat.send', id, conversation_id: convId, content: text };
    const atts = attachments.map((a) => ({ url: a.url }));
    if (atts.length) frame.attachments = atts;
    if (!socket.send(frame)) {
      showError(errorSentence({ code: 'not_connected' }));
      return;
    }
    state.sends.set(id, { convId, text });
    state.stick = true;
    thread.addPending(id, text, atts);
    box.value = '';
    attachments = [];
    chips();
    autosize();
    update();
    const c = convs.get(convId);
    if (c && !(c.title || '').trim()) {
      // Name a new conversation after its first message.
      const title = text.trim().replace(/\s+/g, ' ').slice(0, 48);
      api.patchConversation(convId, { title }).then(
        (r) => {
          convs.put(r, false);
          if (String(r.id) === state.openId) $('conv-title').textContent = r.title;
        },
        () => {},
      );
    }
  }

  async function upload(files) {
    for (const file of files) {
      if (attachments.length + uploading >= MAX_IMAGES) {
        showError(`At most ${MAX_IMAGES} images per message.`);
        break;
      }
      uploading += 1;
      update();
      try {
        const r = await api.upload(file);
        attachments.push({ url: r.url, name: file.name });
        chips();
      } catch (e) {
        showError(e.code === 'invalid_request' ? e.message : errorSentence(e));
      } finally {
        uploading -= 1;
        update();
      }
    }
  }

  $('composer-form').addEventListener('submit', (e) => {
    e.preventDefault();
    send();
  });
  box.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && !e.shiftKey && !e.isComposing && e.keyCode !== 229) {
      e.preventDefault();
      send();
    }
  });
  box.addEventListener('input', autosize);
  $('cancel').addEventListener('click', () => {
    if (state.openId) socket.send({ type: 'chat.cancel', conversation_id: state.openId });
  });
  $('attach').addEventListener('click', () => $('file-input').click());
  $('file-input').addEventListener('change', (e) => {
    const files = [...e.target.files];
    e.target.value = '';
    upload(files);
  });

  return {
    update,
    modelChanged,
    modelSelected,
    reset() {
      box.value = '';
      attachments = [];
      chips();
      autosize();
      update();
    },
    /** Puts back the text of a refused message (unless something new was typed). */
    restore(text) {
      if (text && !box.value) {
        box.value = text;
        autosize();
      }
    },
  };
}
