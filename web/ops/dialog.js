// The confirmation dialog every admin change goes through: a native <dialog> (focus is trapped
// and Escape cancels), optional fields, and the action run from it: an error keeps the dialog
// open and is shown in words; success closes it.

import { describe } from './api.js';

const $ = (id) => document.getElementById(id);

/**
 * `title`, `message` (a string, or a function of the fields' values), `fields`
 * ([{name, label, type, value, testid, attrs}]), `ok` (button text), `danger`, and
 * `action(values)` (async; its error is shown). Resolves true once the action succeeded,
 * false when cancelled.
 */
export function confirmDialog({ title, message, fields = [], ok = 'Confirm', danger = false, action }) {
  const dlg = $('confirm');
  const form = $('confirm-form');
  const okBtn = $('confirm-ok');
  const cancelBtn = $('confirm-cancel');
  const err = $('confirm-error');
  const msg = $('confirm-message');
  $('confirm-title').textContent = title;
  err.textContent = '';
  okBtn.textContent = ok;
  okBtn.classList.toggle('danger', danger);
  okBtn.disabled = false;

  const inputs = fields.map((f) => {
    const label = document.createElement('label');
    const span = document.createElement('span');
    span.textContent = f.label;
    const input = document.createElement('input');
    input.name = f.name;
    input.type = f.type || 'text';
    input.value = f.value === undefined ? '' : String(f.value);
    if (f.testid) input.dataset.testid = f.testid;
    for (const [k, v] of Object.entries(f.attrs || {})) input.setAttribute(k, v);
    label.append(span, input);
    return { f, label, input };
  });
  $('confirm-fields').replaceChildren(...inputs.map((i) => i.label));
  const values = () => Object.fromEntries(inputs.map(({ f, input }) => [f.name, input.value]));
  const showMessage = () => {
    msg.textContent = typeof message === 'function' ? message(values()) : message || '';
  };
  showMessage();

  return new Promise((resolve) => {
    let busy = false;
    const done = (result) => {
      form.removeEventListener('submit', onSubmit);
      form.removeEventListener('input', showMessage);
      cancelBtn.removeEventListener('click', onCancel);
      dlg.removeEventListener('cancel', onEsc);
      if (dlg.open) dlg.close();
      resolve(result);
    };
    const onSubmit = async (e) => {
      e.preventDefault();
      if (busy) return;
      busy = true;
      okBtn.disabled = true;
      err.textContent = '';
      try {
        if (action) await action(values());
        done(true);
      } catch (x) {
        err.textContent = describe(x);
        okBtn.disabled = false;
      } finally {
        busy = false;
      }
    };
    const onCancel = () => done(false);
    const onEsc = (e) => {
      e.preventDefault();
      if (!busy) done(false);
    };
    form.addEventListener('submit', onSubmit);
    form.addEventListener('input', showMessage);
    cancelBtn.addEventListener('click', onCancel);
    dlg.addEventListener('cancel', onEsc);
    dlg.showModal();
    (inputs.length ? inputs[0].input : okBtn).focus();
  });
}
