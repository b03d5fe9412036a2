// The HTTP API (docs: /docs), with its errors turned into sentences a person
// can act on.

export class ApiError extends Error {
  /**
   * @param {number} status
   * @param {string} message
   * @param {number | null} [retryAfter]
   */
  constructor(status, message, retryAfter = null) {
    super(message);
    this.status = status;
    this.retryAfter = retryAfter;
  }
}

/**
 * FastAPI's `{"detail": ...}`, a string or a list of validation errors.
 * @param {any} body
 * @param {string} fallback
 * @returns {string}
 */
function describe(body, fallback) {
  const detail = body && body.detail;
  if (typeof detail === 'string') return detail;
  if (Array.isArray(detail)) {
    return detail.map((d) => `${(d.loc || []).slice(-1)[0] ?? 'input'}: ${d.msg}`).join('; ');
  }
  return fallback;
}

/** The server's answer to a token it does not accept (expired, revoked). */
const TOKEN_REFUSED = 'Could not validate credentials';
/** Where a session's tokens are kept: this tab only, or (kept signed in) this browser. */
const SESSION_KEY = 'secchat.session';
/** Renew this long before the access token expires (or at 80% of its life, if sooner). */
const RENEW_AHEAD_MS = 60_000;

/**
 * @typedef {{token: string, refreshToken: string, expiresAt: number}} Tokens
 */

/** The session's tokens, renewed before they expire. */
export class Api {
  constructor() {
    /** @type {string | null} */
    this.token = null;
    /** @type {string | null} */
    this.refreshToken = null;
    this.expiresAt = 0;
    /** Kept in localStorage (signed in on this browser) rather than sessionStorage (this tab). */
    this.persist = false;
    /** @type {Set<Promise<Response>>} */
    this.inflight = new Set();
    /** @type {Promise<void> | null} */
    this.renewing = null;
    /** @type {ReturnType<typeof setTimeout> | undefined} */
    this.timer = undefined;
    /** Called with each new access token (the relay renews its connection in-band). */
    this.onRenewed = (/** @type {string} */ _token) => {};
    /** Called once when the session cannot go on (expired, revoked, reused). */
    this.onEnded = (/** @type {string} */ _message) => {};
    // Another tab of this browser renewed the shared session: take its tokens.
    window.addEventListener('storage', (event) => {
      if (event.key === SESSION_KEY && this.persist && this.token) this.adopt(localStorage);
    });
    // A laptop waking from sleep: timers ran late; renew now if due.
    document.addEventListener('visibilitychange', () => {
      if (document.visibilityState === 'visible' && this.refreshToken && this.due()) this.renew().catch(() => {});
    });
  }

  /** The session this tab or browser kept, if any; true when one was found. */
  restore() {
    for (const [storage, persist] of /** @type {const} */ ([[sessionStorage, false], [localStorage, true]])) {
      this.persist = persist;
      if (this.adopt(storage)) return true;
    }
    this.persist = false;
    return false;
  }

  /**
   * Takes the tokens kept in `storage`; false when there are none.
   * @param {Storage} storage
   */
  adopt(storage) {
    let kept;
    try {
      kept = JSON.parse(storage.getItem(SESSION_KEY) ?? 'null');
    } catch {
      kept = null;
    }
    if (!kept || typeof kept.token !== 'string' || typeof kept.refreshToken !== 'string') return false;
    const fresh = kept.token !== this.token;
    this.token = kept.token;
    this.refreshToken = kept.refreshToken;
    this.expiresAt = Number(kept.expiresAt) || 0;
    this.schedule();
    if (fresh) this.onRenewed(kept.token);
    return true;
  }

  /**
   * Keeps a login's or a refresh's answer, and schedules the next renewal.
   * @param {{access_token: string, refresh_token?: string, expires_in?: number}} answer
   */
  keep(answer) {
    this.token = answer.access_token;
    this.refreshToken = answer.refresh_token ?? null;
    this.expiresAt = Date.now() + (Number(answer.expires_in) || 1800) * 1000;
    const kept = JSON.stringify({ token: this.token, refreshToken: this.refreshToken, expiresAt: this.expiresAt });
    (this.persist ? localStorage : sessionStorage).setItem(SESSION_KEY, kept);
    (this.persist ? sessionStorage : localStorage).removeItem(SESSION_KEY);
    this.schedule();
  }

  /** Forgets the session here (logged out, or over). */
  forget() {
    clearTimeout(this.timer);
    this.token = null;
    this.refreshToken = null;
    this.expiresAt = 0;
    sessionStorage.removeItem(SESSION_KEY);
    if (this.persist) localStorage.removeItem(SESSION_KEY);
  }

  /** When renewal is due: a minute ahead, or at 80% of a shorter life. */
  renewAt() {
    const life = Math.max(0, this.expiresAt - Date.now());
    return this.expiresAt - Math.min(RENEW_AHEAD_MS, life * 0.2 + 5_000);
  }

  due() { return Date.now() >= this.renewAt(); }

  schedule() {
    clearTimeout(this.timer);
    if (!this.refreshToken) return;
    const wait = Math.max(1_000, this.renewAt() - Date.now());
    this.timer = setTimeout(() => this.renew().catch(() => {}), Math.min(wait, 2 ** 31 - 1));
  }

  /**
   * Trades the refresh token for new tokens, once at a time in this browser:
   * a tab that finds the kept session renewed by another tab takes those
   * tokens instead (a refresh token works once; presenting it twice would
   * end the session). Rejects with an ApiError when the session is over,
   * after telling `onEnded`.
   */
  renew() {
    if (this.renewing) return this.renewing;
    const presented = this.refreshToken;
    const run = async () => {
      if (!presented) throw this.ended('Your session has ended. Log in again.');
      const storage = this.persist ? localStorage : sessionStorage;
      const kept = JSON.parse(storage.getItem(SESSION_KEY) ?? 'null');
      if (kept && kept.refreshToken !== presented && this.adopt(storage) && !this.due()) return;
      let answer;
      try {
        answer = await this.request('POST', '/token/refresh', { form: { refresh_token: this.refreshToken ?? '' }, auth: false });
      } catch (err) {
        if (err instanceof ApiError && err.status === 401) {
          throw this.ended('Your session expired or was ended elsewhere. Log in again.');
        }
        this.timer = setTimeout(() => this.renew().catch(() => {}), 10_000); // offline: try again soon
        throw err;
      }
      this.keep(answer);
      this.onRenewed(answer.access_token);
    };
    const locked = navigator.locks
      ? navigator.locks.request('secchat-renew', run).then(() => {})
      : run();
    this.renewing = locked.finally(() => { this.renewing = null; });
    return this.renewing;
  }

  /** The access token, renewed first if due. */
  async fresh() {
    if (this.refreshToken && this.due()) await this.renew();
    return this.token ?? '';
  }

  /**
   * The session is over: forget it, say so once, and give the error to throw.
   * @param {string} message
   */
  ended(message) {
    const had = this.token !== null;
    this.forget();
    if (had) this.onEnded(message);
    return new ApiError(401, message);
  }

  /** Resolves once every request sent so far has its answer. */
  async idle() {
    await Promise.allSettled([...this.inflight]);
  }

  /**
   * @param {string} method
   * @param {string} path
   * @param {{json?: unknown, form?: Record<string, string>, auth?: boolean}} [options]
   * @param {boolean} [retried]
   * @returns {Promise<any>}
   */
  async request(method, path, { json, form, auth = true } = {}, retried = false) {
    if (auth && this.refreshToken && this.due()) await this.renew();
    /** @type {Record<string, string>} */
    const headers = {};
    let body;
    if (auth && this.token) headers.Authorization = `Bearer ${this.token}`;
    if (json !== undefined) {
      headers['Content-Type'] = 'application/json';
      body = JSON.stringify(json);
    } else if (form !== undefined) {
      body = new URLSearchParams(form);
    }
    let response;
    try {
      const call = fetch(path, { method, headers, body, cache: 'no-store' });
      this.inflight.add(call);
      call.finally(() => this.inflight.delete(call)).catch(() => {});
      response = await call;
    } catch {
      throw new ApiError(0, 'You are offline, or the server cannot be reached. Try again in a moment.');
    }
    if (response.status === 204) return null;
    const data = await response.json().catch(() => null);
    if (response.ok) return data;
    // A refused token (not a wrong password, which account controls answer with 401 too).
    if (response.status === 401 && auth && this.token && describe(data, '') === TOKEN_REFUSED) {
      // The token ran out early (a sleeping laptop) or was revoked: one renewal, then the request again.
      if (!retried && this.refreshToken) {
        await this.renew();
        return this.request(method, path, { json, form, auth }, true);
      }
      throw this.ended('Your session expired or was ended elsewhere. Log in again.');
    }
    const retry = Number.parseInt(response.headers.get('Retry-After') ?? '', 10);
    const retryAfter = Number.isFinite(retry) ? retry : null;
    let message = describe(data, `The server answered ${response.status}.`);
    if (response.status === 429 || (response.status === 503 && retryAfter !== null)) {
      message = `${message}. Too many attempts: wait ${retryAfter ?? 'a few'} s and try again.`;
    } else if (response.status >= 500) {
      message = 'The server could not do that just now. Try again in a moment.';
    }
    throw new ApiError(response.status, message, retryAfter);
  }

  /**
   * @param {string} username
   * @param {string} email
   * @param {string} password
   * @param {string} publicKey
   */
  register(username, email, password, publicKey) {
    return this.request('POST', '/users/', { json: { username, email, password, public_key: publicKey }, auth: false });
  }
  /**
   * Logs in; `persist` keeps the session in this browser (not only this tab).
   * @param {string} username
   * @param {string} password
   * @param {boolean} [persist]
   */
  async login(username, password, persist = false) {
    const answer = await this.request('POST', '/token', { form: { username, password }, auth: false });
    this.persist = persist;
    this.keep(answer);
  }
  logout() { return this.request('POST', '/logout'); }
  logoutEverywhere() { return this.request('POST', '/logout/all'); }
  me() { return this.request('GET', '/users/me'); }
  /** @param {string} query */
  search(query) { return this.request('GET', `/users/search/${encodeURIComponent(query)}?limit=20`); }
  contacts() { return this.request('GET', '/me/contacts/?limit=1000'); }
  pending() { return this.request('GET', '/me/contacts/pending'); }
  /** @param {number} id */
  addContact(id) { return this.request('POST', '/me/contacts/', { json: { friend_id: id } }); }
  /** @param {number} id */
  accept(id) { return this.request('PUT', `/me/contacts/${id}`); }
  /** @param {number} id */
  remove(id) { return this.request('DELETE', `/me/contacts/${id}`); }
  unread() { return this.request('GET', '/messages/?ack=manual'); }
  /** @param {number[]} ids */
  ack(ids) { return this.request('POST', '/messages/ack', { json: { ids } }); }
  /**
   * @param {string} oldPassword
   * @param {string} newPassword
   */
  changePassword(oldPassword, newPassword) {
    return this.request('PUT', '/users/me/password', { json: { old_password: oldPassword, new_password: newPassword } });
  }
  /**
   * @param {string} publicKey
   * @param {string} password
   */
  publishKey(publicKey, password) {
    return this.request('PUT', '/users/me/public-key', { json: { public_key: publicKey, password } });
  }
  /** Short-lived STUN/TURN credentials for direct links; 404 when the server has no TURN server. */
  turnCredentials() { return this.request('GET', '/me/turn-credentials'); }
  /** @param {string} password */
  deleteAccount(password) { return this.request('DELETE', '/users/me', { json: { password } }); }
}
