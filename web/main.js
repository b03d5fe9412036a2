// The web messenger: screens, and the flows that tie the API, the relay, the
// browser's store and the encryption together. Message bodies are encrypted
// here before they leave and decrypted here when they arrive.

import { Api, ApiError } from './api.js';
import * as e2e from './crypto.js';
import { openDb } from './db.js';
import { DirectLinks } from './direct.js';
import { Relay } from './relay.js';

/**
 * @typedef {import('./db.js').Message} Message
 * @typedef {import('./db.js').Identity} Identity
 * @typedef {{id: number, username: string, public_key: string, is_online: boolean, last_seen?: string | null,
 *   user_id?: number, created_at?: string, mutual?: boolean}} Contact
 * @typedef {{id: number, username: string, email?: string, public_key: string, is_online?: boolean}} Me
 * @typedef {{id: number, username: string, is_online: boolean}} Found
 * @typedef {{
 *   me: Me, identity: Identity | undefined, contacts: Map<string, Contact>, flagged: Set<string>,
 *   found: Found[] | null, unread: Map<string, number>, current: string | null, relay: Relay | null,
 *   refresh: ReturnType<typeof setInterval> | undefined, acks: number[],
 *   last: Map<string, {at: number, dir: string, text: string}>, keyReplaced: boolean,
 *   direct: DirectLinks | null, iceServers: Promise<RTCIceServer[] | null> | null,
 *   unacked: Map<string, Unacked>, tops: Map<string, Top>, ephemeral: Promise<void>, signals: Promise<void>,
 * }} Session
 * @typedef {{peer: string, content: string, timer: ReturnType<typeof setTimeout>}} Unacked
 * @typedef {{server: number, seq: number}} Top
 */

/** The page's element with this id (index.html has every id named here). */
const $ = (/** @type {string} */ id) => /** @type {HTMLElement} */ (document.getElementById(id));
/** The form field with this id. */
const field = (/** @type {string} */ id) => /** @type {HTMLInputElement | HTMLTextAreaElement | HTMLButtonElement} */ ($(id));
/** A form's fields by name, as text. */
const fields = (/** @type {HTMLFormElement} */ form) => Object.fromEntries([...new FormData(form)].map(([name, value]) => [name, String(value)]));
/** How often the contact list and requests are read again (presence notices keep it current between). */
const REFRESH_MS = 20_000;

const api = new Api();
/** @type {import('./db.js').Db} */
let db;

/** The signed-in session; replaced whole on login and logout. */
// Null between sessions. Typed as always present: every handler that reads
// it runs inside a session (the screens that trigger them exist only then),
// and the asynchronous ones compare it with the session they started in.
/** @type {Session} */
let session = /** @type {any} */ (null);

/**
 * @param {Me} me
 * @param {Identity | undefined} identity
 * @returns {Session}
 */
function newSession(me, identity) {
  return {
    me, // the user object from /users/me
    identity, // {username, privateKey, publicKey}
    contacts: new Map(), // username -> contact entry
    flagged: new Set(), // contacts whose key differs from the one trusted here
    found: null, // the last search's results
    unread: new Map(), // username -> count not yet seen
    current: null, // the open conversation's username
    relay: null,
    refresh: undefined,
    acks: [], // received message ids not acknowledged yet (sent in batches)
    last: new Map(), // username -> {at, dir, text} of the conversation's last message
    keyReplaced: false, // another browser published a new key: this one stopped
    direct: null, // the WebRTC data channels, one per conversation
    iceServers: null, // the STUN and TURN servers for them (null inside: the server has none)
    unacked: new Map(), // envelope id -> what went over a channel and was not acknowledged yet
    tops: new Map(), // username -> the conversation's highest server id and direct sequence number
    ephemeral: Promise.resolve(), // ephemeral frames received, handled one after another
    signals: Promise.resolve(), // signals sent, sealed one after another so that they leave in order
  };
}

// ---- small DOM helpers; text goes in as text, never as markup

/**
 * @param {string} tag
 * @param {Record<string, any>} [props]
 * @param {...any} children
 * @returns {HTMLElement}
 */
function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === 'class') el.className = value;
    else if (key === 'on') for (const [ev, fn] of Object.entries(value)) el.addEventListener(ev, fn);
    else if (key === 'dataset') Object.assign(el.dataset, value);
    else el.setAttribute(key, value);
  }
  for (const child of children.flat()) {
    if (child !== null && child !== undefined && child !== false) el.append(child);
  }
  return el;
}

/** @type {ReturnType<typeof setTimeout> | undefined} */
let noticeTimer;
/**
 * @param {string} message
 * @param {string} [kind]
 */
function notify(message, kind = 'error') {
  const notice = $('notice');
  notice.textContent = message;
  notice.className = kind === 'info' ? 'notice info' : 'notice';
  notice.hidden = false;
  clearTimeout(noticeTimer);
  noticeTimer = setTimeout(() => { notice.hidden = true; }, 10_000);
}

/** @param {string} screen */
function show(screen) {
  for (const id of ['welcome', 'no-key', 'chat', 'account']) $(id).hidden = id !== screen;
  const signedIn = screen !== 'welcome';
  $('session-actions').hidden = !signedIn;
  $('connection').hidden = screen !== 'chat';
  $('whoami').textContent = signedIn && session ? session.me.username : '';
}

/**
 * An event handler that reports its failure instead of throwing it away, and keeps its button disabled while it runs.
 * @param {(event: any) => Promise<unknown> | unknown} fn
 * @returns {(event?: any) => Promise<void>}
 */
function action(fn) {
  return async (event) => {
    event?.preventDefault();
    const button = event?.submitter ?? (event?.currentTarget instanceof HTMLButtonElement ? event.currentTarget : null);
    if (button) button.disabled = true;
    try {
      await fn(event);
    } catch (err) {
      report(err);
    } finally {
      if (button) button.disabled = false;
    }
  };
}

/** @param {any} err */
function report(err) {
  if (err instanceof ApiError || err instanceof e2e.CryptoError) notify(err.message);
  else {
    console.warn(err);
    notify(`Something went wrong: ${err.message}`);
  }
}

/** @param {number} ms */
function when(ms) {
  const d = new Date(ms);
  const sameDay = d.toDateString() === new Date().toDateString();
  return sameDay ? d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' }) : d.toLocaleString();
}

// ---- signing in and out

/** @param {SubmitEvent & {currentTarget: HTMLFormElement}} event */
async function register(event) {
  const form = event.currentTarget;
  const { username, email, password, persist } = fields(form);
  const identity = await e2e.generateIdentity();
  let user;
  try {
    user = await api.register(username.trim(), email.trim(), password, identity.publicKey);
  } catch (err) {
    if (err instanceof ApiError && err.status === 400) {
      throw new ApiError(400, `The name "${username.trim()}" or that email is taken. Names that look alike count as the same name (aIice with a capital I is alice; paypaI is paypal): choose a name that reads differently.`);
    }
    throw err;
  }
  await db.saveIdentity({ username: user.username, ...identity });
  await api.login(user.username, password, persist === 'on');
  form.reset();
  await enter();
}

/** @param {SubmitEvent & {currentTarget: HTMLFormElement}} event */
async function login(event) {
  const form = event.currentTarget;
  const { username, password, persist } = fields(form);
  try {
    await api.login(username.trim(), password, persist === 'on');
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) throw new ApiError(401, 'Wrong username or password.');
    throw err;
  }
  form.reset();
  await enter();
}

/** With a token: finds this browser's key for the account, then opens the chat. */
async function enter() {
  const me = await api.me();
  const identity = await db.identity(me.username);
  session = newSession(me, identity);
  if (!identity || identity.publicKey !== me.public_key) {
    show('no-key');
    return;
  }
  await openChat();
}

/**
 * A new key for this browser, published with the password that confirms it.
 * @param {SubmitEvent & {currentTarget: HTMLFormElement}} event
 */
async function makeKey(event) {
  const form = event.currentTarget;
  const { password } = fields(form);
  const identity = await e2e.generateIdentity();
  let me;
  try {
    me = await api.publishKey(identity.publicKey, password);
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) throw new ApiError(401, 'Wrong password: the key was not replaced.');
    throw err;
  }
  form.reset();
  await db.saveIdentity({ username: me.username, ...identity });
  session.identity = { username: me.username, ...identity };
  session.me = me;
}

/**
 * Stops the session's connection and its periodic refresh.
 * @param {Session} current
 */
function pause(current) {
  current.direct?.stop();
  current.relay?.stop();
  clearInterval(current.refresh);
}

/** @param {Session} current */
function resume(current) {
  current.direct?.start();
  current.relay?.start();
  current.refresh = setInterval(() => {
    refreshContacts().catch(() => {});
    checkOwnKey(current).catch(() => {});
  }, REFRESH_MS);
}

/**
 * Another browser of this account published a new key: messages are now
 * sealed to that one, and this browser's key must not write any more. Says
 * so, and stops (the no-key screen offers a new key here, or logging out).
 * @param {Session} current
 */
async function checkOwnKey(current) {
  const me = await api.me();
  if (session !== current || me.public_key === current.identity?.publicKey) return;
  pause(current);
  current.keyReplaced = true;
  current.me = me;
  $('no-key-reason').textContent = 'Your key was replaced from another browser, so this browser can no longer read new messages or write under its old key. Make a new key here (the other browser then stops), or log out.';
  show('no-key');
}

/**
 * Runs `revoke`, a request that ends this session's token, with the session
 * quiet: no refresh or reconnect of its own can reach the server after the
 * revocation and be refused. If `revoke` fails the session carries on.
 * @param {() => Promise<unknown>} revoke
 */
async function ending(revoke) {
  const current = session;
  pause(current);
  await api.idle();
  try {
    await revoke();
  } catch (err) {
    if (session === current) resume(current);
    throw err;
  }
}

/** @param {string} [message] */
async function leave(message) {
  if (session) pause(session);
  session = /** @type {any} */ (null);
  api.forget();
  $('chat').classList.remove('in-thread');
  for (const list of ['contacts', 'requests', 'search-results', 'messages']) $(list).replaceChildren();
  $('thread').hidden = true;
  $('pick').hidden = false;
  show('welcome');
  if (message) notify(message, 'info');
}

/** Logging out asks first whether this browser should keep the conversations and the key. */
function logout() {
  const dialog = /** @type {HTMLDialogElement} */ ($('logout-dialog'));
  dialog.returnValue = '';
  dialog.showModal();
}

/** @param {string} choice */
async function logoutAs(choice) {
  if (choice !== 'keep' && choice !== 'wipe') return;
  const owner = session?.me.username;
  try {
    await ending(() => api.logout());
  } finally {
    if (choice === 'wipe' && owner) await db.forget(owner);
    await leave(choice === 'wipe' ? 'Logged out. This browser no longer holds your conversations or your key.' : undefined);
  }
}

// ---- the chat

/** Offers desktop notifications until the person has answered the browser's question. */
function renderNotificationsOffer() {
  $('notifications').hidden = !('Notification' in window) || Notification.permission !== 'default';
}

async function openChat() {
  show('chat');
  renderNotificationsOffer();
  setConnection(false);
  await refreshContacts();
  await fetchUnread();
  const current = session;
  session.relay = new Relay(() => api.fresh(), {
    frame: (frame) => onFrame(current, frame).catch(report),
    presence: (username, online) => onPresence(current, username, online),
    state: (up) => onConnection(current, up).catch(report),
    refused: () => { if (session === current) leave('Your session ended (logged out, the password changed, or it expired). Log in again.'); },
  });
  session.direct = new DirectLinks(session.me.username, {
    iceServers: () => iceServers(current),
    signal: (peer, payload) => signal(current, peer, payload),
    frame: (peer, frame) => onDirectFrame(current, peer, frame).catch(report),
    changed: (peer, open) => onDirectChange(current, peer, open),
  });
  resume(session);
}

/** @param {boolean} up */
function setConnection(up) {
  const el = $('connection');
  el.className = up ? 'connection online' : 'connection offline';
  el.textContent = up ? 'connected' : 'connecting…';
}

/**
 * @param {Session} current
 * @param {boolean} up
 */
async function onConnection(current, up) {
  if (session !== current) return;
  setConnection(up);
  if (!up) return;
  await checkOwnKey(current);
  if (session !== current || current.keyReplaced) return;
  // What was written while the connection was down goes now, in order; the
  // server drops a repeat of what it already took (same client_id).
  await resend(current);
  refreshContacts().catch(() => {});
  // The relay says now whether there are ICE servers: the open conversation may get its channel.
  if (current.current) current.direct?.want(current.current).catch(() => {});
}

/** The contact list and requests, and the keys they carry checked against those trusted here. */
async function refreshContacts() {
  const current = session;
  const [contacts, pending] = await Promise.all([api.contacts(), api.pending()]);
  if (session !== current) return;
  current.contacts = new Map(contacts.map((/** @type {Contact} */ c) => [c.username, c]));
  // A channel only between mutual contacts: one who left, or never accepted, has none.
  current.direct?.keepOnly((peer) => { const c = current.contacts.get(peer); return !!c && c.mutual !== false; });
  for (const c of contacts) await checkKey(c.username, c.public_key);
  await loadLastMessages(current);
  renderContacts();
  renderRequests(pending);
  renderSearch();
  if (current.current) renderThreadHead();
}

/**
 * Trust on first use: the first key seen for a contact is trusted; a later
 * different one flags the contact until the person confirms it.
 * @param {string} username
 * @param {string} publicKey
 */
async function checkKey(username, publicKey) {
  const owner = session.me.username;
  const pin = await db.pin(owner, username);
  if (!pin) {
    if (e2e.isPublicKey(publicKey)) await db.savePin(owner, username, publicKey);
    session.flagged.delete(username);
  } else if (pin.publicKey !== publicKey) {
    session.flagged.add(username);
  } else {
    session.flagged.delete(username);
  }
}

/** Stored messages waiting since the last session: fetched without marking, acknowledged once kept here. */
async function fetchUnread() {
  const byId = new Map([...session.contacts.values()].map((c) => [c.id, c.username]));
  const messages = await api.unread();
  const kept = [];
  for (const m of messages) {
    const sender = byId.get(m.sender_id);
    // From someone not in the contact list: the relay brings it with the sender's name.
    if (!sender) continue;
    await receive({ id: m.id, sender_username: sender, content: m.encrypted_content, timestamp: m.sent_at });
    kept.push(m.id);
  }
  if (kept.length) await api.ack(kept);
}

/**
 * @param {Session} current
 * @param {any} frame
 */
async function onFrame(current, frame) {
  if (session !== current) return;
  const owner = current.me.username;
  switch (frame.type) {
    case 'offline_message':
    case 'p2p_message':
      if (frame.ephemeral) {
        // One at a time, in the order they came: a link's candidates after its offer.
        current.ephemeral = current.ephemeral.then(() => receiveEphemeral(current, frame)).catch(report);
        return; // never stored, never acknowledged
      }
      await receive(frame);
      acknowledge(current, frame.id);
      return;
    case 'not_delivered':
      return; // a typing notice to someone not connected: nothing to do
    case 'sent': {
      const m = await db.updateMessage(owner, frame.client_id, (m) => ({
        serverId: frame.id,
        status: m.status === 'delivered' || m.status === 'read' ? m.status : 'sent',
      }));
      if (m) {
        noteOrder(current, m);
        showStatus(m);
      }
      return;
    }
    case 'delivered': {
      const found = await db.byServerId(owner, frame.id);
      if (!found) return;
      const m = await db.updateMessage(owner, found.id, (m) => ({ status: m.status === 'read' ? 'read' : 'delivered' }));
      if (m) showStatus(m);
      return;
    }
    case 'contact_request':
    case 'contact_accepted':
    case 'contact_removed':
      // Someone asked, accepted or left: the lists are read now, not at the next refresh.
      await refreshContacts().catch(() => {});
      return;
    case 'key_changed': {
      const contact = current.contacts.get(frame.username);
      if (contact) contact.public_key = frame.public_key;
      await checkKey(frame.username, frame.public_key);
      renderContacts();
      if (current.current === frame.username) renderThreadHead();
      return;
    }
    default:
      if (typeof frame.error !== 'string') return;
      // Over the server's budget after all: what is still "sending" goes again when it says.
      const wait = /retry in (\d+) s/.exec(frame.error);
      if (wait) {
        setTimeout(() => { if (session === current) resend(current).catch(report); }, Number(wait[1]) * 1000);
        return;
      }
      notify(frame.error);
  }
}

/**
 * Acknowledges received messages a batch at a time: one frame for a burst of them.
 * @param {Session} current
 * @param {number} id
 */
function acknowledge(current, id) {
  current.acks.push(id);
  if (current.acks.length === 1) {
    setTimeout(() => {
      const ids = current.acks.splice(0);
      if (ids.length && session === current) current.relay?.send({ type: 'ack', ids });
    }, 150);
  }
}

/**
 * Sends again, in order, what has not been taken by the server yet.
 * @param {Session} current
 */
async function resend(current) {
  const waiting = await db.withStatus(current.me.username, 'sending');
  waiting.sort((a, b) => a.at - b.at);
  for (const m of waiting) transmit(m);
}

/**
 * @param {Session} current
 * @param {string} username
 * @param {boolean} online
 */
function onPresence(current, username, online) {
  if (session !== current) return;
  const contact = current.contacts.get(username);
  if (!contact) return;
  contact.is_online = online;
  if (!online) contact.last_seen = new Date().toISOString();
  if (online && current.current === username) current.direct?.want(username).catch(() => {});
  renderContacts();
  renderSearch();
  if (current.current === username) renderThreadHead();
}

/**
 * Control messages travel inside the ciphertext like any text, so that the
 * server cannot tell them from messages (docs/E2E.md): their plaintext starts
 * with NUL, then JSON, `{"t": "typing"}` or `{"t": "read", "ids": [...]}`.
 * Text that itself starts with NUL is sent as `{"t": "text", "text"}`.
 */
const CONTROL = '\u0000';

/** @param {string} text */
function plaintextOf(text) {
  return text.startsWith(CONTROL) ? control({ t: 'text', text }) : text;
}

/** @param {object} payload */
function control(payload) {
  return CONTROL + JSON.stringify(payload);
}

/**
 * A control payload, or null for plain text.
 * @param {string} text
 * @returns {{t: string, [field: string]: any} | null}
 */
function parseControl(text) {
  if (!text.startsWith(CONTROL)) return null;
  try {
    const payload = JSON.parse(text.slice(1));
    return payload && typeof payload === 'object' && typeof payload.t === 'string' ? payload : { t: 'unknown' };
  } catch {
    return { t: 'unknown' };
  }
}

/**
 * Decrypts and keeps one incoming message (once, whatever path brought it:
 * the relay with the server's id, or a channel with the sender's place in
 * the conversation's order).
 * @param {{id: number | null, sender_username: string, content: string, timestamp: string, after?: number, seq?: number, channelId?: string}} frame
 */
async function receive({ id: serverId, sender_username: sender, content, timestamp, after, seq, channelId }) {
  const current = session;
  const owner = current.me.username;
  const at = Date.parse(timestamp) || Date.now();
  /** @type {Message} */
  let entry;
  try {
    const opened = await e2e.open({ own: keyOf(current), sender, recipient: owner, content });
    const payload = parseControl(opened.text);
    if (payload?.t === 'read') {
      await markRead(current, sender, payload.ids);
      return;
    }
    if (payload && payload.t !== 'text') return; // a kind of a later version: nothing to show
    const text = payload ? String(payload.text ?? '') : opened.text;
    const pin = await db.pin(owner, sender);
    const caution = pin && pin.publicKey !== opened.senderKey ? `sent under a key of ${sender}'s you have not confirmed` : null;
    entry = { owner, id: opened.id, peer: sender, dir: 'in', text, at, serverId, after, seq, caution, readSent: false };
  } catch (err) {
    if (!(err instanceof e2e.CryptoError)) throw err;
    if (err.message.startsWith('encrypted for another key')) checkOwnKey(current).catch(() => {});
    entry = { owner, id: serverId === null ? `direct:${channelId}` : `server:${serverId}`, peer: sender, dir: 'in', text: `This message could not be decrypted: ${err.message}.`, at, serverId, broken: true };
  }
  const seen = current.current === sender && document.visibilityState === 'visible';
  entry.unseen = !seen;
  if (!(await db.addMessage(entry))) return; // seen before: a repeat delivery or a replay
  if (session !== current) return;
  noteLast(current, entry);
  typing.delete(sender); // a message ends its "typing…"
  if (!seen) current.unread.set(sender, (current.unread.get(sender) ?? 0) + 1);
  renderContacts();
  if (current.current === sender) {
    renderThreadHead();
    appendMessage(entry);
  }
  if (document.visibilityState === 'hidden') desktopNotice(sender, entry.text);
}

/**
 * A desktop notification for a message to a page in the background, if the person allowed them.
 * @param {string} sender
 * @param {string} text
 */
function desktopNotice(sender, text) {
  if (!('Notification' in window) || Notification.permission !== 'granted') return;
  const notice = new Notification(`secchat: ${sender}`, { body: text.slice(0, 120), tag: `secchat-${sender}` });
  notice.onclick = () => { window.focus(); openThread(sender).catch(report); notice.close(); };
}

/** Who is typing, until when (ms). */
/** @type {Map<string, number>} */
const typing = new Map();
const TYPING_SHOWN_MS = 5_000;
/** A typing notice goes at most this often to one person. */
const TYPING_EVERY_MS = 3_000;
/** @type {Map<string, number>} */
const typingSent = new Map();

/** @param {string} peer */
function typingUntil(peer) {
  return (typing.get(peer) ?? 0) > Date.now();
}

/**
 * An ephemeral frame: a typing notice or a direct link's signal, sealed like
 * a message. A signal that does not open, or opens under a key other than
 * the one trusted for its sender, is refused and said so: it may carry
 * another party's DTLS fingerprint, put there to sit between the two of us.
 * @param {Session} current
 * @param {{sender_username: string, content: string}} frame
 */
async function receiveEphemeral(current, frame) {
  const sender = frame.sender_username;
  let opened;
  try {
    opened = await e2e.open({ own: keyOf(current), sender, recipient: current.me.username, content: frame.content });
  } catch {
    refuseSignal(current, sender);
    return;
  }
  const payload = parseControl(opened.text);
  if (session !== current) return;
  if (payload?.t === 'rtc') {
    const pin = await db.pin(current.me.username, sender);
    if (!pin || pin.publicKey !== opened.senderKey || current.flagged.has(sender)) {
      refuseSignal(current, sender);
      return;
    }
    await current.direct?.signalled(sender, /** @type {any} */ (payload));
    return;
  }
  if (payload?.t !== 'typing') return;
  typing.set(sender, Date.now() + TYPING_SHOWN_MS);
  if (current.current === sender) renderThreadHead();
  setTimeout(() => { if (session === current && current.current === sender) renderThreadHead(); }, TYPING_SHOWN_MS + 50);
}

/** Tells the open conversation's peer that this person is typing: at most once every 3 s. */
async function sendTyping() {
  const current = session;
  const peer = current?.current;
  const contact = peer ? current.contacts.get(peer) : null;
  if (!peer || !contact || contact.mutual === false || field('compose-text').value === '') return;
  if (Date.now() - (typingSent.get(peer) ?? 0) < TYPING_EVERY_MS) return;
  typingSent.set(peer, Date.now());
  const content = await sealControl(current, peer, { t: 'typing' });
  if (content && !current.direct?.send(peer, { t: 'typing', content })) current.relay?.send({ recipient_username: peer, content, ephemeral: true });
}

/**
 * This browser's key pair for the session: there is none on the no-key
 * screen, where nothing is sealed or opened.
 * @param {Session} current
 */
function keyOf(current) {
  if (!current.identity) throw new e2e.CryptoError('this browser holds no key for this account');
  return current.identity;
}

/**
 * A control payload sealed to `peer`'s trusted key; null when there is none to trust.
 * @param {Session} current
 * @param {string} peer
 * @param {object} payload
 */
async function sealControl(current, peer, payload) {
  const owner = current.me.username;
  const pin = await db.pin(owner, peer);
  if (!pin || current.flagged.has(peer)) return null;
  return e2e.seal({ own: keyOf(current), sender: owner, recipient: peer, recipientKey: pin.publicKey, id: e2e.newMessageId(), text: control(payload) });
}

/**
 * Messages of ours that `peer` says it has read.
 * @param {Session} current
 * @param {string} peer
 * @param {unknown} ids
 */
async function markRead(current, peer, ids) {
  if (!Array.isArray(ids)) return;
  const owner = current.me.username;
  for (const id of ids.slice(0, 500)) {
    if (typeof id !== 'string') continue;
    const m = await db.updateMessage(owner, id, (m) => (m.dir === 'out' && m.peer === peer ? { status: 'read' } : {}));
    if (m && session === current) showStatus(m);
  }
}

/** Incoming messages seen on screen and not yet said to be read, by sender. */
/** @type {Map<string, string[]>} */
const toSayRead = new Map();
/** @type {ReturnType<typeof setTimeout> | null} */
let readTimer = null;

/**
 * Notes that message `m` was seen (visible page, open conversation, scrolled into view).
 * @param {Message} m
 */
function seenOnScreen(m) {
  if (m.dir !== 'in' || m.readSent || m.broken) return;
  m.readSent = true;
  const ids = toSayRead.get(m.peer) ?? [];
  ids.push(m.id);
  toSayRead.set(m.peer, ids);
  readTimer ??= setTimeout(() => { readTimer = null; sayRead(session).catch(report); }, 1_000);
}

/**
 * Sends the read receipts collected: one sealed message per conversation, stored if the peer is away.
 * @param {Session} current
 */
async function sayRead(current) {
  if (!current) return;
  const batches = [...toSayRead.entries()];
  toSayRead.clear();
  for (const [peer, ids] of batches) {
    const contact = current.contacts.get(peer);
    if (!contact || contact.mutual === false) continue;
    const content = await sealControl(current, peer, { t: 'read', ids });
    if (!content) continue;
    for (const id of ids) await db.updateMessage(current.me.username, id, () => ({ readSent: true }));
    const clientId = e2e.newMessageId();
    if (!sendDirect(current, peer, clientId, content)) current.relay?.send({ recipient_username: peer, content, client_id: clientId });
  }
}

/** Watches incoming messages come into view, to say they were read while the page is visible. */
const readObserver = new IntersectionObserver((entries) => {
  if (document.visibilityState !== 'visible' || !session) return;
  for (const entry of entries) {
    if (!entry.isIntersecting) continue;
    const el = /** @type {HTMLElement} */ (entry.target);
    const m = shownMessages.get(el.dataset.id ?? '');
    if (m) seenOnScreen(m);
  }
}, { threshold: 0.6 });

/** The messages on screen, by id, for the observer. */
/** @type {Map<string, Message>} */
const shownMessages = new Map();

/** The longest message, in UTF-8 bytes: its envelope stays well under the server's 64 KiB frame. */
const MAX_TEXT_BYTES = 16_000;
/** Sends in the order written, one after another: sealing takes a moment each. */
/** @type {Promise<void>} */
let sending = Promise.resolve();

/**
 * Sends what the box holds. The box is emptied at once, before anything is
 * awaited, so that what is typed next is kept for the next message, and a
 * second Enter finds nothing to send twice.
 */
function send() {
  const peer = session.current;
  const input = field('compose-text');
  const text = input.value;
  if (!peer || text.trim() === '') return;
  if (utf8Length(text) > MAX_TEXT_BYTES) {
    notify(`That message is too long (${utf8Length(text).toLocaleString()} of ${MAX_TEXT_BYTES.toLocaleString()} bytes): split it.`);
    return;
  }
  input.value = '';
  updateCounter();
  const at = Date.now();
  const current = session;
  sending = sending.then(() => seal(current, peer, text, at)).catch((err) => {
    // Not sent: the text goes back in the box unless something new was typed there.
    if (session === current && current.current === peer && input.value === '') {
      input.value = text;
      updateCounter();
    }
    report(err);
  });
}

/**
 * @param {Session} current
 * @param {string} peer
 * @param {string} text
 * @param {number} at
 */
async function seal(current, peer, text, at) {
  if (session !== current) return;
  const contact = current.contacts.get(peer);
  if (!contact) throw new Error(`${peer} is no longer a contact`);
  if (contact.mutual === false) throw new Error(`${peer} has not accepted your request yet`);
  if (current.flagged.has(peer)) throw new e2e.CryptoError(`Confirm ${peer}'s new key before writing to them.`);
  const owner = current.me.username;
  const pin = await db.pin(owner, peer);
  if (!pin) throw new e2e.CryptoError(`${peer} has no key this messenger can encrypt to.`);
  const id = e2e.newMessageId();
  const content = await e2e.seal({ own: keyOf(current), sender: owner, recipient: peer, recipientKey: pin.publicKey, id, text: plaintextOf(text) });
  /** @type {Message} */
  const message = { owner, id, peer, dir: 'out', text, at, status: 'sending', content, serverId: null };
  await db.addMessage(message);
  if (session !== current) return;
  noteLast(current, message);
  renderContacts();
  if (current.current === peer) appendMessage(message);
  transmit(message);
}

const utf8 = new TextEncoder();
/** @param {string} text */
function utf8Length(text) { return utf8.encode(text).length; }

/** Near the limit, the box says how much is left; over it, Send waits. */
function updateCounter() {
  const used = utf8Length(field('compose-text').value);
  const counter = $('counter');
  counter.hidden = used < MAX_TEXT_BYTES * 0.8;
  counter.textContent = `${used.toLocaleString()} / ${MAX_TEXT_BYTES.toLocaleString()}`;
  counter.classList.toggle('over', used > MAX_TEXT_BYTES);
}

/**
 * Sends a message of ours: over the conversation's channel when one is open
 * (acknowledged by the peer's browser there), else through the server's
 * relay (or, when not connected now, when the connection is back: onConnection).
 * @param {Message} m
 */
function transmit(m) {
  const current = session;
  if (m.content && sendDirect(current, m.peer, m.id, m.content, m)) {
    db.updateMessage(current.me.username, m.id, (was) => ({ status: was.status === 'sending' ? 'sent' : was.status, after: m.after, seq: m.seq }))
      .then((updated) => { if (updated && session === current) showStatus(updated); }).catch(report);
    return;
  }
  current.relay?.send({ recipient_username: m.peer, content: m.content, client_id: m.id });
  current.direct?.want(m.peer).catch(() => {});
}

// ---- the direct path: a WebRTC data channel per conversation (web/direct.js)

/** A message over a channel not acknowledged in this long goes through the relay instead, and the channel is given up (generous: a busy browser may take a while to open and keep a burst). */
const DIRECT_ACK_MS = 6_000;

/**
 * The STUN and TURN servers, from the server's short-lived credentials
 * (asked once a session, and again when they are half spent); null when it
 * has none (its relay says so): then no channel is tried, and everything
 * goes through the relay.
 * @param {Session} current
 */
async function iceServers(current) {
  if (!current.relay?.turn) return null;
  current.iceServers ??= api.turnCredentials().then(
    (c) => {
      setTimeout(() => { if (current.iceServers === asked) current.iceServers = null; }, (Number(c.ttl) || 60) * 500);
      return c.uris.length ? [{ urls: c.uris, username: c.username, credential: c.password }] : null;
    },
    () => {
      current.iceServers = null; // asked again at the next attempt
      return null;
    },
  );
  const asked = current.iceServers;
  return asked;
}

/**
 * A signal for the direct link with `peer`: sealed like a message, sent as
 * an ephemeral frame (never stored; dropped when the peer is not connected).
 * @param {Session} current
 * @param {string} peer
 * @param {object} payload
 */
function signal(current, peer, payload) {
  const contact = current.contacts.get(peer);
  if (!contact || contact.mutual === false) return Promise.resolve();
  const sent = current.signals.then(async () => {
    const content = await sealControl(current, peer, payload);
    if (content && session === current) current.relay?.send({ recipient_username: peer, content, ephemeral: true });
  });
  current.signals = sent.catch(() => {}); // one that failed does not hold the others back
  return sent;
}

/**
 * @param {Session} current
 * @param {string} sender
 */
function refuseSignal(current, sender) {
  if (session !== current) return;
  current.direct?.fail(sender);
  notify(`A direct connection offered by ${sender} failed its end-to-end check and was refused: messages go through the server, still encrypted.`);
}

/**
 * Sends sealed content over the channel to `peer` if one is open, to be
 * acknowledged there; a message (`m`) is given its place in the
 * conversation's order first. False when there is no channel.
 * @param {Session} current
 * @param {string} peer
 * @param {string} id
 * @param {string} content
 * @param {Message} [m]
 */
function sendDirect(current, peer, id, content, m) {
  if (!current.direct?.path(peer)) return false;
  /** @type {{t: string, id: string, content: string, after?: number, seq?: number, at?: number}} */
  const frame = { t: 'msg', id, content };
  if (m) {
    if (m.seq === undefined) {
      const top = topOf(current, peer);
      m.after = top.server;
      m.seq = top.seq + 1;
      noteOrder(current, m);
    }
    Object.assign(frame, { after: m.after, seq: m.seq, at: m.at });
  }
  if (!current.direct.send(peer, frame)) return false;
  clearTimeout(current.unacked.get(id)?.timer);
  const timer = setTimeout(() => { if (session === current) current.direct?.fail(peer); }, DIRECT_ACK_MS);
  current.unacked.set(id, { peer, content, timer });
  return true;
}

/**
 * The channel with `peer` opened or closed. Closed: what went over it
 * unacknowledged goes through the relay, in order (the peer drops what it
 * got already: the same envelope id).
 * @param {Session} current
 * @param {string} peer
 * @param {boolean} open
 */
function onDirectChange(current, peer, open) {
  if (session !== current) return;
  if (current.current === peer) renderThreadHead();
  if (open) return;
  for (const [id, sent] of current.unacked) {
    if (sent.peer !== peer) continue;
    clearTimeout(sent.timer);
    current.unacked.delete(id);
    db.updateMessage(current.me.username, id, (m) => (m.status === 'sent' && m.serverId === null ? { status: 'sending' } : {}))
      .then((m) => {
        if (session !== current) return;
        if (m) showStatus(m);
        // A receipt, or a message: the relay de-duplicates by client id.
        current.relay?.send({ recipient_username: peer, content: sent.content, client_id: id });
      }).catch(report);
  }
}

/**
 * A frame from `peer` over the channel: a sealed message (opened and kept as
 * from the relay, then acknowledged), an acknowledgement of ours, or a
 * sealed typing notice.
 * @param {Session} current
 * @param {string} peer
 * @param {any} frame
 */
async function onDirectFrame(current, peer, frame) {
  if (session !== current) return;
  if (frame.t === 'ack' && Array.isArray(frame.ids)) {
    for (const id of frame.ids.slice(0, 500)) {
      const sent = current.unacked.get(id);
      if (typeof id !== 'string' || sent?.peer !== peer) continue;
      clearTimeout(sent.timer);
      current.unacked.delete(id);
      const m = await db.updateMessage(current.me.username, id, (m) => (m.dir === 'out' && m.peer === peer && m.status !== 'read' ? { status: 'delivered' } : {}));
      if (m && session === current) showStatus(m);
    }
    return;
  }
  if (frame.t === 'typing' && typeof frame.content === 'string') {
    await receiveEphemeral(current, { sender_username: peer, content: frame.content });
    return;
  }
  if (frame.t !== 'msg' || typeof frame.id !== 'string' || typeof frame.content !== 'string') return;
  const order = Number.isSafeInteger(frame.after) && Number.isSafeInteger(frame.seq) ? { after: frame.after, seq: frame.seq } : {};
  await receive({ id: null, channelId: frame.id, sender_username: peer, content: frame.content, timestamp: new Date(Number(frame.at) || Date.now()).toISOString(), ...order });
  if (session === current) current.direct?.send(peer, { t: 'ack', ids: [frame.id] });
}

/**
 * The conversation's highest server id and direct sequence number known here.
 * @param {Session} current
 * @param {string} peer
 * @returns {Top}
 */
function topOf(current, peer) {
  return current.tops.get(peer) ?? { server: 0, seq: 0 };
}

/**
 * @param {Session} current
 * @param {Message} m
 */
function noteOrder(current, m) {
  const top = topOf(current, m.peer);
  current.tops.set(m.peer, { server: Math.max(top.server, m.serverId ?? m.after ?? 0), seq: Math.max(top.seq, m.seq ?? 0) });
}

// ---- rendering

/**
 * Contacts, the most recent conversation first, each with its last message
 * and what is unread; a request not yet accepted shows as such (no presence
 * and nothing to deliver to until it is). The tab's title counts the unread.
 */
function renderContacts() {
  const list = $('contacts');
  const activity = (/** @type {Contact} */ c) => session.last.get(c.username)?.at ?? (Date.parse(c.created_at ?? '') || 0);
  const contacts = [...session.contacts.values()]
    .sort((a, b) => activity(b) - activity(a) || a.username.localeCompare(b.username));
  list.replaceChildren(...contacts.map((c) => {
    const unread = session.unread.get(c.username);
    const last = session.last.get(c.username);
    const waiting = c.mutual === false;
    const status = waiting ? 'request sent, not accepted yet' : c.is_online ? 'online' : 'offline';
    return h('li', { class: c.username === session.current ? 'active' : '', dataset: { username: c.username } },
      h('button', {
        type: 'button',
        class: 'contact',
        'aria-current': c.username === session.current ? 'true' : 'false',
        on: { click: () => openThread(c.username).catch(report) },
      },
      h('span', { class: waiting ? 'dot waiting' : c.is_online ? 'dot online' : 'dot', title: status }),
      h('span', { class: 'who' },
        h('span', { class: 'name' }, c.username, h('span', { class: 'sr-only' }, `, ${status}${unread ? `, ${unread} unread` : ''}`)),
        waiting
          ? h('span', { class: 'preview pending' }, 'request sent · waiting for them to accept')
          : last ? h('span', { class: 'preview' }, `${last.dir === 'out' ? 'You: ' : ''}${last.text}`) : null),
      session.flagged.has(c.username) ? h('span', { class: 'flag', title: 'key changed' }, 'key changed') : null,
      unread ? h('span', { class: 'unread' }, String(unread)) : null));
  }));
  $('no-contacts').hidden = contacts.length > 0;
  const total = [...session.unread.values()].reduce((n, k) => n + k, 0);
  document.title = total ? `(${total}) secchat` : 'secchat';
}

/**
 * The last message of each conversation, for the contact list's previews and order.
 * @param {Session} current
 */
async function loadLastMessages(current) {
  const owner = current.me.username;
  for (const username of current.contacts.keys()) {
    if (current.last.has(username)) continue;
    const messages = await db.conversation(owner, username);
    const last = messages.reduce((a, m) => (a === null || m.at >= a.at ? m : a), /** @type {Message | null} */ (null));
    if (last) noteLast(current, last);
    // Unread across reloads: what came while this conversation was not on screen.
    const unseen = messages.filter((m) => m.unseen).length;
    if (unseen) current.unread.set(username, unseen);
  }
}

/**
 * The open conversation is on screen: what was unread in it is not any more.
 * @param {Session} current
 * @param {string} peer
 */
async function markSeen(current, peer) {
  current.unread.delete(peer);
  renderContacts();
  const owner = current.me.username;
  for (const m of await db.conversation(owner, peer)) {
    if (m.unseen) await db.updateMessage(owner, m.id, () => ({ unseen: false }));
  }
}

/**
 * @param {Session} current
 * @param {Message} m
 */
function noteLast(current, m) {
  noteOrder(current, m);
  const known = current.last.get(m.peer);
  if (!known || known.at <= m.at) current.last.set(m.peer, { at: m.at, dir: m.dir, text: m.text.slice(0, 80) });
}

/** @param {{user_id: number, username: string}[]} pending */
function renderRequests(pending) {
  const badge = $('requests-badge');
  badge.hidden = pending.length === 0;
  badge.textContent = String(pending.length);
  badge.setAttribute('aria-label', `${pending.length} waiting`);
  $('requests').replaceChildren(...pending.map((/** @type {{user_id: number, username: string}} */ r) => h('li', { dataset: { username: r.username } },
    h('span', { class: 'name' }, r.username),
    h('button', { type: 'button', on: { click: action(async () => { await api.accept(r.user_id); await refreshContacts(); }) } }, 'Accept'),
    h('button', { type: 'button', class: 'secondary', on: { click: action(async () => { await api.remove(r.user_id); await refreshContacts(); }) } }, 'Reject'))));
  $('no-requests').hidden = pending.length > 0;
}

/** The shortest search the server takes (SEARCH_MIN_CHARS). */
const SEARCH_MIN_CHARS = 3;

async function search() {
  const query = field('search').value.trim();
  if (query.length > 0 && [...query].length < SEARCH_MIN_CHARS) {
    session.found = null;
    renderSearch();
    $('search-results').replaceChildren(h('li', { class: 'empty' }, `Type at least ${SEARCH_MIN_CHARS} characters of a name to search.`));
    return;
  }
  session.found = query ? await api.search(query) : null;
  renderSearch();
}

/** The last search's results, each a contact already or a button to ask (which makes it one on this side). */
function renderSearch() {
  const list = $('search-results');
  const found = session.found;
  if (!found) {
    list.replaceChildren();
    return;
  }
  if (found.length === 0) {
    list.replaceChildren(h('li', { class: 'empty' }, 'Nobody by that name.'));
    return;
  }
  // A contact's presence is kept current; a stranger's is as the search found it.
  const online = (/** @type {Found} */ u) => session.contacts.get(u.username)?.is_online ?? u.is_online;
  list.replaceChildren(...found.map((u) => h('li', { dataset: { username: u.username } },
    h('span', { class: online(u) ? 'dot online' : 'dot', title: online(u) ? 'online' : 'offline' }),
    h('span', { class: 'name' }, u.username),
    session.contacts.has(u.username)
      ? h('span', { class: 'hint' }, 'contact')
      : h('button', { type: 'button', on: { click: action(async () => {
        await api.addContact(u.id);
        notify(`Friend request sent to ${u.username}.`, 'info');
        await refreshContacts();
      }) } }, 'Add'))));
}

/** @param {string} username */
async function openThread(username) {
  session.current = username;
  if (document.visibilityState === 'visible') markSeen(session, username).catch(report);
  $('pick').hidden = true;
  $('thread').hidden = false;
  $('chat').classList.add('in-thread');
  renderContacts();
  renderThreadHead();
  session.direct?.want(username).catch(() => {});
  const messages = await db.conversation(session.me.username, username);
  if (session?.current !== username) return;
  messages.sort(inOrder);
  readObserver.disconnect();
  shownMessages.clear();
  $('messages').replaceChildren();
  for (const m of messages) placeMessage(m);
  scrollDown();
  $('compose-text').focus();
}

async function renderThreadHead() {
  const peer = session.current;
  if (!peer) return;
  const contact = session.contacts.get(peer);
  // Read before anything is shown, so that what the head says and whether
  // the box takes text change together.
  const pin = await db.pin(session.me.username, peer);
  if (session?.current !== peer) return; // another conversation, or the session ended meanwhile
  $('peer-name').textContent = peer;
  renderPath(peer);
  const waiting = contact?.mutual === false;
  $('peer-status').textContent = !contact ? 'not a contact'
    : waiting ? 'request sent: you can write once they accept'
      : typingUntil(peer) ? 'typing…'
        : contact.is_online ? 'online'
          : contact.last_seen ? `last seen ${when(Date.parse(contact.last_seen))}` : 'offline';
  const flagged = session.flagged.has(peer);
  const usable = !!contact && !!pin && !flagged && !waiting;
  field('send').disabled = !usable;
  field('compose-text').disabled = !usable;
  /** @type {HTMLTextAreaElement} */ ($('compose-text')).placeholder = waiting ? `You can write once ${peer} accepts your request` : 'Write a message';
  $('remove-contact').hidden = !contact;
  $('peer-fingerprint').textContent = pin ? `Key fingerprint ${await e2e.fingerprint(pin.publicKey)}` : 'No end-to-end key: messages cannot be encrypted to this user.';
  $('key-warning').hidden = !flagged;
  if (flagged && contact) {
    const fresh = e2e.isPublicKey(contact.public_key) ? await e2e.fingerprint(contact.public_key) : 'not an end-to-end key';
    $('key-warning-text').textContent = `${peer}'s key has changed (new fingerprint ${fresh}). They may have a new device, or someone may be posing as them. Check the fingerprint with ${peer} another way; nothing is sent until you confirm.`;
    $('confirm-key').hidden = !e2e.isPublicKey(contact.public_key);
  }
}

/** @type {Record<string, [string, string]>} */
const PATH_TEXT = {
  direct: ['direct', 'Messages go straight to their browser, end-to-end encrypted; the server does not carry them.'],
  turn: ['TURN relay', 'Messages go to their browser through the TURN relay, end-to-end encrypted.'],
  server: ['server relay', 'Messages go through the server, end-to-end encrypted (no direct connection now).'],
};

/**
 * Which path the conversation's messages take now.
 * @param {string} peer
 */
function renderPath(peer) {
  const el = $('peer-path');
  const contact = session.contacts.get(peer);
  el.hidden = !contact || contact.mutual === false;
  const path = session.direct?.path(peer) ?? 'server';
  const [text, title] = PATH_TEXT[path];
  el.textContent = text;
  el.title = title;
  el.dataset.path = path;
}

async function confirmKey() {
  const peer = session.current;
  if (!peer) return;
  const contact = session.contacts.get(peer);
  if (!contact || !e2e.isPublicKey(contact.public_key)) return;
  await db.savePin(session.me.username, peer, contact.public_key);
  session.flagged.delete(peer);
  renderContacts();
  await renderThreadHead();
}

/** @type {Record<string, string>} */
const STATUS_TEXT = { sending: 'sending…', sent: 'sent ✓', delivered: 'delivered ✓✓', read: 'read ✓✓' };

/**
 * What to warn of on a message: a key not confirmed (as it was received), or
 * a sender who is not a contact now (earlier versions kept that as text).
 * @param {Message} m
 */
function caution(m) {
  if (m.caution && !m.caution.endsWith('is not among your contacts')) return m.caution;
  return m.dir === 'in' && !session.contacts.has(m.peer) ? `${m.peer} is not among your contacts` : null;
}

/** @param {Message} m */
function messageView(m) {
  return h('li', { class: [m.dir, m.broken ? 'broken' : ''].join(' ').trim(), dataset: { id: m.id } },
    caution(m) ? h('span', { class: 'caution' }, `⚠ ${caution(m)}`) : null,
    h('span', { class: 'text' }, m.text),
    h('span', { class: 'meta' }, when(m.at), m.dir === 'out' ? h('span', { class: 'receipt' }, ` · ${STATUS_TEXT[m.status ?? ''] ?? m.status}`) : null));
}

/**
 * A conversation's order, which both sides see alike whatever their clocks:
 * the server's message ids; a message that went over a channel just after
 * the server id its sender knew (`after`), by the conversation's sequence
 * number its sender gave it, then its sender's time; what has neither yet
 * (still being sent) last, in the order it was written.
 * @param {Message} m
 * @returns {[number, number, number]}
 */
function orderKey(m) {
  if (m.serverId != null) return [m.serverId, 0, m.at];
  if (m.after != null && m.seq != null) return [m.after + 0.5, m.seq, m.at];
  return [Number.MAX_SAFE_INTEGER, 0, m.at];
}

/**
 * @param {[number, number, number]} x
 * @param {[number, number, number]} y
 */
function compareKeys(x, y) {
  return x[0] - y[0] || x[1] - y[1] || x[2] - y[2];
}

/**
 * @param {Message} a
 * @param {Message} b
 */
function inOrder(a, b) {
  return compareKeys(orderKey(a), orderKey(b));
}

/**
 * Puts a message's view where its order says: mostly at the end.
 * @param {Message} m
 */
function placeMessage(m) {
  const list = $('messages');
  const view = messageView(m);
  shownMessages.set(m.id, m);
  if (m.dir === 'in' && !m.readSent) readObserver.observe(view);
  const key = orderKey(m);
  view.dataset.order = key.join(' ');
  let before = null;
  for (let el = list.lastElementChild; el instanceof HTMLElement; el = el.previousElementSibling) {
    const other = /** @type {[number, number, number]} */ ((el.dataset.order ?? '').split(' ').map(Number));
    if (compareKeys(other, key) <= 0) break;
    before = el;
  }
  list.insertBefore(view, before);
}

/** Whether the conversation is scrolled to (nearly) its end. */
function atBottom() {
  const list = $('messages');
  return list.scrollHeight - list.scrollTop - list.clientHeight < 48;
}

/**
 * Shows a new message: the view follows it when it was at the end already
 * (or the message is one's own); otherwise the "new messages" button says
 * there is more below, and the place one was reading stays put.
 * @param {Message} m
 */
function appendMessage(m) {
  const following = m.dir === 'out' || atBottom();
  placeMessage(m);
  if (following) scrollDown();
  else $('new-messages').hidden = false;
}

/** @param {Message} m */
function showStatus(m) {
  if (session?.current !== m.peer) return;
  const el = [...$('messages').children].find((li) => li instanceof HTMLElement && li.dataset.id === m.id);
  if (!el) return;
  el.remove(); // its id may have just come: it moves to its place
  placeMessage(m);
}

function scrollDown() {
  const list = $('messages');
  list.scrollTop = list.scrollHeight;
  $('new-messages').hidden = true;
}

async function removeContact() {
  const contact = session.contacts.get(session.current ?? '');
  if (!contact) return;
  const sure = window.confirm(`Remove ${contact.username} from your contacts? You will no longer see each other online or write to each other until one of you asks again.`);
  if (!sure) return;
  await api.remove(contact.id);
  session.current = null;
  $('thread').hidden = true;
  $('pick').hidden = false;
  $('chat').classList.remove('in-thread');
  await refreshContacts();
}

// ---- the account page

async function openAccount() {
  show('account');
  $('account-name').textContent = session.me.username;
  $('own-fingerprint').textContent = session.identity ? await e2e.fingerprint(session.identity.publicKey) : 'none in this browser';
}

/** @param {SubmitEvent & {currentTarget: HTMLFormElement}} event */
async function changePassword(event) {
  const form = event.currentTarget;
  const { old, new: fresh } = fields(form);
  try {
    await api.changePassword(old, fresh);
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) throw new ApiError(401, 'The current password is wrong.');
    throw err;
  }
  form.reset();
  notify('Password changed. Your other devices were logged out.', 'info');
}

/** @param {SubmitEvent & {currentTarget: HTMLFormElement}} event */
async function deleteAccount(event) {
  const form = event.currentTarget;
  const { password } = fields(form);
  try {
    await ending(() => api.deleteAccount(password));
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) throw new ApiError(401, 'Wrong password: the account was not deleted.');
    throw err;
  }
  form.reset();
  await db.forget(session.me.username);
  await leave('Your account was deleted.');
}

// ---- start

async function start() {
  db = await openDb();
  $('login-form').addEventListener('submit', action(login));
  $('register-form').addEventListener('submit', action(register));
  $('logout').addEventListener('click', logout);
  $('no-key-logout').addEventListener('click', logout);
  $('logout-dialog').addEventListener('close', () => {
    logoutAs(/** @type {HTMLDialogElement} */ ($('logout-dialog')).returnValue).catch(report);
  });
  $('notifications').addEventListener('click', action(async () => {
    await Notification.requestPermission();
    renderNotificationsOffer();
  }));
  $('make-key-form').addEventListener('submit', action(async (event) => { await makeKey(event); await openChat(); }));
  $('search-form').addEventListener('submit', action(search));
  $('compose').addEventListener('submit', (event) => { event.preventDefault(); send(); });
  $('compose-text').addEventListener('keydown', (e) => {
    // One send per press: a held key's repeats and an input method's Enter send nothing.
    if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      if (!e.repeat) send();
    }
  });
  $('compose-text').addEventListener('input', () => { updateCounter(); sendTyping().catch(() => {}); });
  document.addEventListener('visibilitychange', () => {
    if (document.visibilityState !== 'visible' || !session?.current) return;
    // Back to the page: the open conversation is being seen now.
    markSeen(session, session.current).catch(report);
    for (const el of $('messages').children) { readObserver.unobserve(el); readObserver.observe(el); }
  });
  $('confirm-key').addEventListener('click', action(confirmKey));
  $('new-messages').addEventListener('click', () => scrollDown());
  $('messages').addEventListener('scroll', () => { if (atBottom()) $('new-messages').hidden = true; }, { passive: true });
  $('remove-contact').addEventListener('click', action(removeContact));
  $('back').addEventListener('click', () => {
    session.current = null;
    $('chat').classList.remove('in-thread');
    renderContacts();
  });
  $('open-account').addEventListener('click', action(openAccount));
  $('account-back').addEventListener('click', () => show(session.identity ? 'chat' : 'no-key'));
  $('password-form').addEventListener('submit', action(changePassword));
  $('logout-all').addEventListener('click', action(async () => { await ending(() => api.logoutEverywhere()); await leave('Logged out on every device.'); }));
  $('new-key-form').addEventListener('submit', action(async (event) => {
    await makeKey(event);
    notify('New key made. Your contacts must confirm it before they write to you again.', 'info');
    await openAccount();
  }));
  $('delete-form').addEventListener('submit', action(deleteAccount));
  window.addEventListener('offline', () => session?.relay?.networkLost());
  window.addEventListener('online', () => session?.relay?.retryNow());

  api.onRenewed = (token) => session?.relay?.renew(token);
  api.onEnded = (message) => { if (session) leave(message); else notify(message, 'info'); };
  if (api.restore()) {
    try {
      await enter();
      return;
    } catch (err) {
      // The session is over (said by onEnded), or the server cannot be reached.
      if (!(err instanceof ApiError && err.status === 401)) report(err);
    }
  }
  show('welcome');
}

start().catch(report);
