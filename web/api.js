// The HTTP API (docs: /docs), with its errors turned into sentences a person
// can act on.

export class ApiError extends Error {
  constructor(status, message, retryAfter = null) {
    super(message);
    this.status = status;
    this.retryAfter = retryAfter;
  }
}

/** FastAPI's `{"detail": ...}`, a string or a list of validation errors. */
function describe(body, fallback) {
  const detail = body && body.detail;
  if (typeof detail === 'string') return detail;
  if (Array.isArray(detail)) {
    return detail.map((d) => `${(d.loc || []).slice(-1)[0] ?? 'input'}: ${d.msg}`).join('; ');
  }
  return fallback;
}

export class Api {
  constructor() {
    this.token = null;
    this.inflight = new Set();
  }

  /** Resolves once every request sent so far has its answer. */
  async idle() {
    await Promise.allSettled([...this.inflight]);
  }

  /**
   * @param {string} method
   * @param {string} path
   * @param {{json?: unknown, form?: Record<string, string>, auth?: boolean}} [options]
   */
  async request(method, path, { json, form, auth = true } = {}) {
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

  register(username, email, password, publicKey) {
    return this.request('POST', '/users/', { json: { username, email, password, public_key: publicKey }, auth: false });
  }
  async login(username, password) {
    const answer = await this.request('POST', '/token', { form: { username, password }, auth: false });
    this.token = answer.access_token;
  }
  logout() { return this.request('POST', '/logout'); }
  logoutEverywhere() { return this.request('POST', '/logout/all'); }
  me() { return this.request('GET', '/users/me'); }
  search(query) { return this.request('GET', `/users/search/${encodeURIComponent(query)}?limit=20`); }
  contacts() { return this.request('GET', '/me/contacts/?limit=1000'); }
  pending() { return this.request('GET', '/me/contacts/pending'); }
  addContact(id) { return this.request('POST', '/me/contacts/', { json: { friend_id: id } }); }
  accept(id) { return this.request('PUT', `/me/contacts/${id}`); }
  remove(id) { return this.request('DELETE', `/me/contacts/${id}`); }
  unread() { return this.request('GET', '/messages/?ack=manual'); }
  ack(ids) { return this.request('POST', '/messages/ack', { json: { ids } }); }
  changePassword(oldPassword, newPassword) {
    return this.request('PUT', '/users/me/password', { json: { old_password: oldPassword, new_password: newPassword } });
  }
  publishKey(publicKey, password) {
    return this.request('PUT', '/users/me/public-key', { json: { public_key: publicKey, password } });
  }
  deleteAccount(password) { return this.request('DELETE', '/users/me', { json: { password } }); }
}
