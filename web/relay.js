// The WebSocket relay: authenticated by its first frame (the token never
// appears in a URL), messages acknowledged by the client (`ack=manual`), and
// reconnection with backoff after a drop or a replica going away.

const PRESENCE = /^系统消息: 用户 (.+) 已(上线|下线)。$/;

/** Close codes after which reconnecting cannot help: the token is refused. */
const REFUSED = new Set([1008]);

export class Relay {
  /**
   * `token()` gives the current token; `on` holds handlers: frame(frame),
   * presence(username, online), state(connected), refused(reason).
   */
  constructor(token, on) {
    this.token = token;
    this.on = on;
    this.socket = null;
    this.ready = false;
    this.stopped = false;
    this.attempt = 0;
    this.timer = null;
  }

  start() {
    this.stopped = false;
    this.connect();
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
    const socket = this.socket;
    if (socket) {
      socket.close(1000, 'bye');
      // Its close event will find it replaced: say here that it is down.
      this.closed(socket, { code: 1000 });
    }
  }

  connect() {
    const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
    const socket = new WebSocket(`${scheme}//${location.host}/ws?ack=manual`);
    this.socket = socket;
    socket.onopen = () => socket.send(JSON.stringify({ type: 'auth', token: this.token() }));
    socket.onmessage = (event) => this.received(socket, event.data);
    socket.onclose = (event) => this.closed(socket, event);
    // An error is followed by close, which decides what to do.
    socket.onerror = () => {};
  }

  received(socket, data) {
    if (socket !== this.socket || typeof data !== 'string') return;
    const presence = PRESENCE.exec(data);
    if (presence) {
      this.on.presence(presence[1], presence[2] === '上线');
      return;
    }
    let frame;
    try {
      frame = JSON.parse(data);
    } catch {
      return; // another user's broadcast line: not part of this client
    }
    if (frame && frame.type === 'authenticated') {
      this.ready = true;
      this.attempt = 0;
      this.on.state(true);
      return;
    }
    if (frame && typeof frame === 'object') this.on.frame(frame);
  }

  closed(socket, event) {
    if (socket !== this.socket) return;
    this.socket = null;
    this.ready = false;
    this.on.state(false);
    if (this.stopped) return;
    if (REFUSED.has(event.code)) {
      this.on.refused(event.reason || 'the session ended');
      return;
    }
    // 0.5 s, 1 s, 2 s ... up to 30 s, with jitter so that the clients of a
    // replica that went away do not all come back at the same instant.
    const delay = Math.min(30_000, 500 * 2 ** this.attempt) * (0.5 + Math.random() / 2);
    this.attempt = Math.min(this.attempt + 1, 10);
    this.timer = setTimeout(() => this.connect(), delay);
  }

  /**
   * The browser lost its network: the connection is as good as gone, though
   * the socket may not notice for minutes. Drops it now, so that the page
   * says so and what is written waits; reconnects on the backoff, or at once
   * when the network is back (retryNow).
   */
  networkLost() {
    const socket = this.socket;
    if (!socket) return;
    socket.close();
    this.closed(socket, { code: 1006 });
  }

  /** Tries again now (the browser is back online), instead of waiting out the backoff. */
  retryNow() {
    if (this.stopped || this.socket) return;
    clearTimeout(this.timer);
    this.connect();
  }

  /** Sends a frame if the connection is up; false otherwise (the caller retries on `state(true)`). */
  send(frame) {
    if (!this.ready || !this.socket) return false;
    this.socket.send(JSON.stringify(frame));
    return true;
  }
}
