// The WebSocket relay: authenticated by its first frame (the token never
// appears in a URL), messages acknowledged by the client (`ack=manual`), and
// reconnection with backoff after a drop or a replica going away.

const PRESENCE = /^系统消息: 用户 (.+) 已(上线|下线)。$/;

/**
 * Frames a connection sends at most, on average and at once: under the
 * server's default budget (100 frames in 10 s per connection), so that a
 * burst of messages is paced here instead of refused there.
 */
const FRAMES_PER_SECOND = 8;
const FRAME_BURST = 60;

/** Close codes after which reconnecting cannot help: the token is refused. */
const REFUSED = new Set([1008]);

export class Relay {
  /**
   * `token()` gives (a promise of) a current token; `on` holds handlers: frame(frame),
   * presence(username, online), state(connected), refused(reason).
   * @param {() => Promise<string>} token
   * @param {{frame: (frame: any) => void, presence: (username: string, online: boolean) => void, state: (up: boolean) => void, refused: (reason: string) => void}} on
   */
  constructor(token, on) {
    this.token = token;
    this.on = on;
    this.socket = null;
    this.ready = false;
    /** Whether the server hands out TURN credentials (its `authenticated` frame says). */
    this.turn = false;
    this.stopped = false;
    this.attempt = 0;
    /** @type {ReturnType<typeof setTimeout> | undefined} */
    this.timer = undefined;
    /** Frames waiting for the pace, in order. @type {string[]} */
    this.queue = [];
    this.tokens = FRAME_BURST;
    this.filled = Date.now();
    /** @type {ReturnType<typeof setTimeout> | null} */
    this.pump = null;
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
    socket.onopen = async () => {
      // A token renewed first if due (after a sleep, say): an expired one would be refused for good.
      let token;
      try {
        token = await this.token();
      } catch {
        socket.close();
        return; // the session is over: the page has said so
      }
      if (socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify({ type: 'auth', token }));
    };
    socket.onmessage = (event) => this.received(socket, event.data);
    socket.onclose = (event) => this.closed(socket, event);
    // An error is followed by close, which decides what to do.
    socket.onerror = () => {};
  }

  /**
   * @param {WebSocket} socket
   * @param {unknown} data
   */
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
      this.turn = frame.turn === true;
      if (this.ready) return; // an in-band renewal was taken
      this.ready = true;
      this.attempt = 0;
      this.on.state(true);
      return;
    }
    if (frame && typeof frame === 'object') this.on.frame(frame);
  }

  /**
   * @param {WebSocket} socket
   * @param {{code: number, reason?: string}} event
   */
  closed(socket, event) {
    if (socket !== this.socket) return;
    this.socket = null;
    this.ready = false;
    // What waited is sent again by the page when the connection is back.
    this.queue = [];
    if (this.pump) clearTimeout(this.pump);
    this.pump = null;
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

  /**
   * Gives the open connection a renewed token, before its own expires.
   * @param {string} token
   */
  renew(token) {
    if (this.ready && this.socket) this.socket.send(JSON.stringify({ type: 'auth', token }));
  }

  /**
   * Sends a frame if the connection is up, paced to FRAMES_PER_SECOND after
   * a burst, in order; false when it is down (the caller sends again on
   * `state(true)`).
   * @param {object} frame
   */
  send(frame) {
    if (!this.ready || !this.socket) return false;
    this.queue.push(JSON.stringify(frame));
    this.flush();
    return true;
  }

  flush() {
    const now = Date.now();
    this.tokens = Math.min(FRAME_BURST, this.tokens + ((now - this.filled) / 1000) * FRAMES_PER_SECOND);
    this.filled = now;
    while (this.queue.length && this.tokens >= 1 && this.socket) {
      this.socket.send(/** @type {string} */ (this.queue.shift()));
      this.tokens -= 1;
    }
    if (this.queue.length && !this.pump) {
      this.pump = setTimeout(() => { this.pump = null; this.flush(); }, 1000 / FRAMES_PER_SECOND);
    }
  }
}
