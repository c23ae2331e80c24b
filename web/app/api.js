// REST client of the Questech API (SPEC §5–§7, §10) and the session's tokens.
//
// The access token lives in memory only. The refresh token is kept in sessionStorage (never
// localStorage), so reloading the tab keeps the user logged in while another tab or a closed
// browser does not inherit the session. Refresh tokens rotate: every refresh stores the new one.

const REFRESH_KEY = 'questech.refresh_token';

export class ApiError extends Error {
  constructor(status, code, message, retryAfter) {
    super(message || code || `HTTP ${status}`);
    this.status = status;
    this.code = code || (status === 0 ? 'network_error' : 'http_error');
    this.retryAfter = retryAfter;
  }
}

export class Api {
  constructor() {
    this.access = null;
    this.expiresAt = 0; // ms since epoch
    this.timer = null;
    this.refreshing = null;
    /** Called once when the session is gone (refresh refused): the app shows the login. */
    this.onAuthLost = () => {};
  }

  hasSession() {
    return !!sessionStorage.getItem(REFRESH_KEY);
  }

  setTokens(t) {
    this.access = t.access_token;
    sessionStorage.setItem(REFRESH_KEY, t.refresh_token);
    const ttl = Math.max(1, Number(t.expires_in) || 900) * 1000;
    this.expiresAt = Date.now() + ttl;
    clearTimeout(this.timer);
    // A minute before the end (half the lifetime for very short ones).
    const lead = ttl > 120000 ? 60000 : ttl / 2;
    this.timer = setTimeout(() => this.refresh().catch(() => {}), ttl - lead);
  }

  clear() {
    this.access = null;
    this.expiresAt = 0;
    clearTimeout(this.timer);
    this.timer = null;
    sessionStorage.removeItem(REFRESH_KEY);
  }

  /** Rotates the refresh token; concurrent callers share one request. */
  refresh() {
    if (this.refreshing) return this.refreshing;
    const rt = sessionStorage.getItem(REFRESH_KEY);
    if (!rt) return Promise.reject(new ApiError(401, 'unauthorized', 'not logged in'));
    this.refreshing = (async () => {
      try {
        const r = await this.raw('POST', '/user/token/refresh', { refresh_token: rt }, false);
        this.setTokens(r.tokens || r);
        return this.access;
      } catch (e) {
        if (e.status === 401 || e.status === 403) {
          this.clear();
          this.onAuthLost(e);
        } else {
          // Network trouble: try again a little later; a 401 on a request retries too.
          clearTimeout(this.timer);
          this.timer = setTimeout(() => this.refresh().catch(() => {}), 5000);
        }
        throw e;
      } finally {
        this.refreshing = null;
      }
    })();
    return this.refreshing;
  }

  /** An access token valid for at least `marginMs` more (refreshing if needed). */
  async freshAccess(marginMs = 30000, force = false) {
    if (force || !this.access || Date.now() > this.expiresAt - marginMs) {
      return this.refresh();
    }
    return this.access;
  }

  /** One request, no retry. `body`: object (JSON) or FormData. */
  async raw(method, path, body, auth = true) {
    const headers = { Accept: 'application/json' };
    let payload;
    if (body instanceof FormData) {
      payload = body;
    } else if (body !== undefined) {
      headers['Content-Type'] = 'application/json';
      payload = JSON.stringify(body);
    }
    if (auth && this.access) headers.Authorization = `Bearer ${this.access}`;
    let res;
    try {
      res = await fetch(path, { method, headers, body: payload, credentials: 'same-origin' });
    } catch (e) {
      throw new ApiError(0, 'network_error', 'The server cannot be reached.');
    }
    if (res.status === 204) return null;
    const text = await res.text();
    let data = null;
    try {
      data = text ? JSON.parse(text) : null;
    } catch {
      data = null;
    }
    if (!res.ok) {
      const err = (data && data.error) || {};
      const ra = Number(res.headers.get('Retry-After')) || undefined;
      throw new ApiError(res.status, err.code, err.message || res.statusText, ra);
    }
    return data;
  }

  /** An authenticated request: refreshes before it when due, and once more on a 401. */
  async request(method, path, body) {
    if (!this.access || Date.now() > this.expiresAt - 30000) await this.refresh();
    try {
      return await this.raw(method, path, body, true);
    } catch (e) {
      if (e.status !== 401) throw e;
      await this.refresh();
      return this.raw(method, path, body, true);
    }
  }

  // --- authentication (§5)
  async login(username, password) {
    const r = await this.raw('POST', '/user/login', { username, password }, false);
    this.setTokens(r.tokens);
    return r.user;
  }
  async register(username, password, nickname) {
    const body = { username, password };
    if (nickname) body.nickname = nickname;
    const r = await this.raw('POST', '/user/register', body, false);
    this.setTokens(r.tokens);
    return r.user;
  }
  smsSend(phone) {
    return this.raw('POST', '/user/sms/send', { phone }, false);
  }
  async smsLogin(phone, code) {
    const r = await this.raw('POST', '/user/login/sms', { phone, code }, false);
    this.setTokens(r.tokens);
    return r.user;
  }
  async logout() {
    try {
      if (this.hasSession()) {
        await this.freshAccess(5000);
        await this.raw('POST', '/user/logout', undefined, true);
      }
    } catch {
      // The session is dropped locally whatever the server said.
    } finally {
      this.clear();
    }
  }
  me() {
    return this.request('GET', '/user/me');
  }

  // --- models and agents (§6, §10)
  async models() {
    const r = await this.raw('GET', '/config/models', undefined, false);
    return (r && r.data) || [];
  }
  async agents() {
    const r = await this.raw('GET', '/intelligent/agents?page=1&page_size=100', undefined, false);
    return (r && r.items) || [];
  }

  // --- conversations (§7)
  listConversations(page, pageSize = 20) {
    return this.request('GET', `/chat/conversations?page=${page}&page_size=${pageSize}`);
  }
  createConversation(body) {
    return this.request('POST', '/chat/conversations', body);
  }
  getConversation(id) {
    return this.request('GET', `/chat/conversations/${encodeURIComponent(id)}`);
  }
  patchConversation(id, body) {
    return this.request('PATCH', `/chat/conversations/${encodeURIComponent(id)}`, body);
  }
  deleteConversation(id) {
    return this.request('DELETE', `/chat/conversations/${encodeURIComponent(id)}`);
  }
  messages(id, afterSeq, limit) {
    const q = `after_seq=${Math.max(0, afterSeq)}&limit=${limit}`;
    return this.request('GET', `/chat/conversations/${encodeURIComponent(id)}/messages?${q}`);
  }

  // --- uploads (§10): multipart, field `file`
  upload(file) {
    const fd = new FormData();
    fd.append('file', file, file.name || 'image');
    return this.request('POST', '/common/upload', fd);
  }
}
