// REST client of the operations console and its session (SPEC §5, §11).
//
// The access token lives in memory only; the refresh token in sessionStorage under a key of its
// own (the chat app at `/` keeps its session under another one, so the two never clobber each
// other in one tab). Refresh tokens rotate on every use: concurrent callers share one refresh,
// since presenting an already-rotated token would revoke the whole session.

const REFRESH_KEY = 'questech.ops.refresh_token';

export class ApiError extends Error {
  constructor(status, code, message, retryAfter) {
    super(message || code || `HTTP ${status}`);
    this.status = status;
    this.code = code || (status === 0 ? 'network_error' : 'http_error');
    this.retryAfter = retryAfter;
  }
}

/** A sentence for any error, for the page (never raw HTML). */
export function describe(err) {
  if (!(err instanceof ApiError)) return String((err && err.message) || err || 'Unknown error');
  if (err.status === 0) return 'The server cannot be reached. Check that it is running.';
  let s = err.message;
  if (!/[.!?]$/.test(s)) s += '.';
  const wait = err.retryAfter ? ` Try again in ${err.retryAfter} s.` : '';
  return `${s}${wait} (${err.code}, HTTP ${err.status})`;
}

let access = null;
let expiresAt = 0;
let timer = null;
let refreshing = null;
/** Called when the session is gone (refresh refused): the page shows the login again. */
let onLost = () => {};

export function onSessionLost(fn) {
  onLost = fn;
}

export function hasSession() {
  return !!sessionStorage.getItem(REFRESH_KEY);
}

function setTokens(t) {
  access = t.access_token;
  sessionStorage.setItem(REFRESH_KEY, t.refresh_token);
  const ttl = Math.max(1, Number(t.expires_in) || 900) * 1000;
  expiresAt = Date.now() + ttl;
  clearTimeout(timer);
  // Refresh a minute before the end (half way for very short lifetimes).
  const lead = ttl > 120000 ? 60000 : ttl / 2;
  timer = setTimeout(() => refresh().catch(() => {}), ttl - lead);
}

export function clearSession() {
  access = null;
  expiresAt = 0;
  clearTimeout(timer);
  timer = null;
  sessionStorage.removeItem(REFRESH_KEY);
}

/** One HTTP exchange; JSON in and out; errors in the API's shape become ApiError. */
export async function raw(method, path, body, token, accept) {
  const headers = {};
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  if (token) headers.Authorization = `Bearer ${token}`;
  if (accept) headers.Accept = accept;
  let res;
  try {
    res = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: 'omit',
      cache: 'no-store',
    });
  } catch (e) {
    throw new ApiError(0, 'network_error', 'network error');
  }
  if (res.status === 204) return null;
  const text = await res.text();
  if (!res.ok) {
    let code;
    let message;
    try {
      const j = JSON.parse(text);
      code = j.error && j.error.code;
      message = j.error && j.error.message;
    } catch (e) {
      message = text.slice(0, 200) || res.statusText;
    }
    const ra = Number(res.headers.get('Retry-After')) || undefined;
    throw new ApiError(res.status, code, message, ra);
  }
  if (accept && accept !== 'application/json') return text;
  try {
    return text ? JSON.parse(text) : null;
  } catch (e) {
    throw new ApiError(res.status, 'bad_response', 'the server answered something that is not JSON');
  }
}

/** `POST /user/login`; keeps the tokens and answers the user. */
export async function login(username, password) {
  const r = await raw('POST', '/user/login', { username, password });
  setTokens(r.tokens);
  return r.user;
}

/** Rotates the refresh token; concurrent callers share one request. */
export function refresh() {
  if (refreshing) return refreshing;
  const rt = sessionStorage.getItem(REFRESH_KEY);
  if (!rt) return Promise.reject(new ApiError(401, 'unauthorized', 'not logged in'));
  refreshing = (async () => {
    try {
      const r = await raw('POST', '/user/token/refresh', { refresh_token: rt });
      setTokens(r.tokens || r);
      return access;
    } catch (e) {
      if (e.status === 401 || e.status === 403) {
        clearSession();
        onLost(e);
      } else {
        clearTimeout(timer);
        timer = setTimeout(() => refresh().catch(() => {}), 5000);
      }
      throw e;
    } finally {
      refreshing = null;
    }
  })();
  return refreshing;
}

async function token() {
  if (!access || Date.now() > expiresAt - 15000) await refresh();
  return access;
}

/** An authenticated API call; a 401 refreshes once and retries. */
export async function api(method, path, body) {
  const t = await token();
  try {
    return await raw(method, path, body, t);
  } catch (e) {
    if (e.status !== 401 || !hasSession()) throw e;
    await refresh();
    return raw(method, path, body, access);
  }
}

/** `GET /metrics` (Prometheus text); `metricsToken` when the server sets `METRICS_TOKEN`. */
export function metricsText(metricsToken) {
  return raw('GET', '/metrics', undefined, metricsToken || undefined, 'text/plain');
}

/** `POST /user/logout` (best effort), then forgets the tokens. */
export async function logout() {
  const t = access;
  clearSession();
  if (t) {
    try {
      await raw('POST', '/user/logout', undefined, t);
    } catch (e) {
      /* the session is forgotten here either way */
    }
  }
}
