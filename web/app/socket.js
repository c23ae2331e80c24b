// The WebSocket of the chat (SPEC §8) with reconnection.
//
// On close the socket reconnects with exponential backoff and jitter (0.5 s doubling up to
// 10 s), each time with a fresh access token. A connection counts as up once `hello` arrived;
// the app then re-syncs its open conversation. A heartbeat ping notices a dead link that never
// delivered a close (e.g. a silently dropped NAT mapping).

const BASE_DELAY = 500;
const MAX_DELAY = 10000;
const PING_EVERY = 20000;
const SILENT_LIMIT = 45000;

export class ChatSocket {
  /**
   * @param {object} o
   * @param {(force: boolean) => Promise<string>} o.token  a valid access token
   * @param {(frame: object) => void} o.onFrame  every server frame
   * @param {(status: string) => void} o.onStatus  connecting | online | reconnecting | offline
   */
  constructor({ token, onFrame, onStatus }) {
    this.token = token;
    this.onFrame = onFrame;
    this.onStatus = onStatus;
    this.ws = null;
    this.stopped = true;
    this.ready = false;
    this.attempt = 0;
    this.retryTimer = null;
    this.pingTimer = null;
    this.lastHeard = 0;
    this.forceRefresh = false;
    this.status = 'offline';
  }

  setStatus(s) {
    if (this.status === s) return;
    this.status = s;
    document.documentElement.dataset.ws = s;
    this.onStatus(s);
  }

  start() {
    if (!this.stopped) return;
    this.stopped = false;
    this.attempt = 0;
    this.setStatus('connecting');
    this.open();
  }

  /** Closes for good (logout): no reconnection. */
  stop() {
    this.stopped = true;
    this.ready = false;
    clearTimeout(this.retryTimer);
    clearInterval(this.pingTimer);
    const ws = this.ws;
    this.ws = null;
    if (ws) {
      try {
        ws.close(1000, 'logout');
      } catch {
        /* already closed */
      }
    }
    this.setStatus('offline');
  }

  /** Sends a frame if the connection is up; false otherwise. */
  send(frame) {
    if (!this.ws || !this.ready || this.ws.readyState !== WebSocket.OPEN) return false;
    this.ws.send(JSON.stringify(frame));
    return true;
  }

  get online() {
    return this.ready && !!this.ws && this.ws.readyState === WebSocket.OPEN;
  }

  async open() {
    if (this.stopped) return;
    let token;
    try {
      token = await this.token(this.forceRefresh);
    } catch (e) {
      // 401 on refresh: the app is told through the API and shows the login; stop here.
      if (e && (e.status === 401 || e.status === 403)) {
        this.stop();
        return;
      }
      this.retry();
      return;
    }
    if (this.stopped) return;
    this.forceRefresh = false;
    const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
    const url = `${scheme}//${location.host}/ws?token=${encodeURIComponent(token)}`;
    let ws;
    try {
      ws = new WebSocket(url);
    } catch {
      this.retry();
      return;
    }
    this.ws = ws;
    let opened = false;
    ws.onopen = () => {
      opened = true;
      this.lastHeard = Date.now();
    };
    ws.onmessage = (ev) => {
      if (this.ws !== ws) return;
      this.lastHeard = Date.now();
      let frame;
      try {
        frame = JSON.parse(ev.data);
      } catch {
        return;
      }
      if (frame.type === 'hello') {
        this.ready = true;
        this.attempt = 0;
        this.startHeartbeat(ws);
        this.setStatus('online');
      }
      if (frame.type === 'pong') return;
      this.onFrame(frame);
    };
    ws.onclose = () => {
      if (this.ws !== ws) return;
      this.ws = null;
      this.ready = false;
      clearInterval(this.pingTimer);
      if (this.stopped) return;
      // Refused before the upgrade (most likely an expired or revoked token): refresh first.
      if (!opened) this.forceRefresh = true;
      this.setStatus('reconnecting');
      this.retry();
    };
    ws.onerror = () => {
      /* onclose follows */
    };
  }

  retry() {
    if (this.stopped) return;
    clearTimeout(this.retryTimer);
    const base = Math.min(MAX_DELAY, BASE_DELAY * 2 ** this.attempt);
    const delay = base * (0.75 + Math.random() * 0.5); // ±25 % jitter
    this.attempt = Math.min(this.attempt + 1, 10);
    if (this.status !== 'reconnecting') this.setStatus('reconnecting');
    this.retryTimer = setTimeout(() => this.open(), delay);
  }

  startHeartbeat(ws) {
    clearInterval(this.pingTimer);
    this.pingTimer = setInterval(() => {
      if (this.ws !== ws) return;
      if (Date.now() - this.lastHeard > SILENT_LIMIT) {
        // Dead link: drop it and reconnect.
        ws.onclose = null;
        try {
          ws.close();
        } catch {
          /* ignore */
        }
        this.ws = null;
        this.ready = false;
        clearInterval(this.pingTimer);
        this.setStatus('reconnecting');
        this.retry();
        return;
      }
      try {
        ws.send(JSON.stringify({ type: 'ping' }));
      } catch {
        /* onclose follows */
      }
    }, PING_EVERY);
  }
}
