// The conversation list: paged loading ("load more"), create, rename, delete, and moving a
// conversation to the top when it has news.

import { $, convItem, updateConvItem, markActive } from './views.js';

const PAGE_SIZE = 20;

export class ConvList {
  /**
   * @param {import('./api.js').Api} api
   * @param {{open: (id: string) => void, renamed: (c: object) => void,
   *          deleted: (id: string) => void, error: (e: Error) => void}} hooks
   */
  constructor(api, hooks) {
    this.api = api;
    this.hooks = hooks;
    this.byId = new Map();
    this.page = 0;
    this.total = 0;
    this.loading = false;
    this.handlers = {
      open: (id) => this.hooks.open(id),
      rename: (id, title) => this.rename(id, title),
      remove: (id, title) => this.remove(id, title),
    };
    $('conv-more').addEventListener('click', () => this.loadMore());
  }

  clear() {
    this.byId.clear();
    this.page = 0;
    this.total = 0;
    $('conv-list').replaceChildren();
    this.updateChrome();
  }

  get(id) {
    const e = this.byId.get(String(id));
    return e ? e.conv : null;
  }

  updateChrome() {
    $('conv-more').hidden = this.byId.size >= this.total || this.page === 0;
    $('conv-empty').hidden = this.byId.size > 0 || this.page === 0;
  }

  /** First page (again). */
  async reload() {
    this.clear();
    await this.loadMore();
  }

  async loadMore() {
    if (this.loading) return;
    this.loading = true;
    $('conv-more').disabled = true;
    try {
      const r = await this.api.listConversations(this.page + 1, PAGE_SIZE);
      this.page = r.page || this.page + 1;
      this.total = r.total ?? 0;
      for (const c of r.items || []) this.put(c, false);
    } catch (e) {
      this.hooks.error(e);
    } finally {
      this.loading = false;
      $('conv-more').disabled = false;
      this.updateChrome();
    }
  }

  /** Adds or updates a conversation; `top`: (re)insert it first. */
  put(c, top) {
    const id = String(c.id);
    let e = this.byId.get(id);
    if (e) {
      e.conv = { ...e.conv, ...c };
      updateConvItem(e.li, e.conv);
    } else {
      e = { conv: c, li: convItem(c, this.handlers) };
      this.byId.set(id, e);
      if (!top) $('conv-list').append(e.li);
      this.total += top ? 1 : 0;
    }
    if (top) {
      const list = $('conv-list');
      if (list.firstElementChild !== e.li) list.prepend(e.li);
    }
    this.updateChrome();
    return e.conv;
  }

  /** A conversation had a message: first in the list (fetched if it is not listed yet). */
  async bump(id, patch) {
    const c = this.get(id);
    if (c) {
      this.put({ ...c, ...(patch || {}), id: c.id }, true);
      return;
    }
    try {
      this.put(await this.api.getConversation(id), true);
    } catch {
      /* deleted meanwhile */
    }
  }

  async create(body) {
    const c = await this.api.createConversation(body);
    this.put(c, true);
    return c;
  }

  async rename(id, title) {
    try {
      const c = await this.api.patchConversation(id, { title });
      this.put(c, false);
      this.hooks.renamed(c);
    } catch (e) {
      this.hooks.error(e);
    }
  }

  async remove(id, title) {
    if (!window.confirm(`Delete “${title}”? Its messages will be gone.`)) return;
    try {
      await this.api.deleteConversation(id);
    } catch (e) {
      if (e.status !== 404) {
        this.hooks.error(e);
        return;
      }
    }
    this.forget(id);
    this.hooks.deleted(String(id));
  }

  /** Drops a conversation from the list (deleted). */
  forget(id) {
    const e = this.byId.get(String(id));
    if (e) {
      e.li.remove();
      this.byId.delete(String(id));
      this.total = Math.max(0, this.total - 1);
    }
    this.updateChrome();
  }

  active(id) {
    markActive(id);
  }
}
