// The web messenger: screens, and the flows that tie the API, the relay, the
// browser's store and the encryption together. Message bodies are encrypted
// here before they leave and decrypted here when they arrive.

import { Api, ApiError } from './api.js';
import * as e2e from './crypto.js';
import { openDb } from './db.js';
import { Relay } from './relay.js';

/** The page's element with this id (index.html has every id named here). */
const $ = (id) => document.getElementById(id);
/** The form field with this id. */
const field = (id) => /** @type {HTMLInputElement | HTMLTextAreaElement | HTMLButtonElement} */ ($(id));
/** A form's fields by name, as text. */
const fields = (form) => Object.fromEntries([...new FormData(form)].map(([name, value]) => [name, String(value)]));
const TOKEN_KEY = 'secchat.token';
/** How often the contact list and requests are read again (presence notices keep it current between). */
const REFRESH_MS = 20_000;

const api = new Api();
let db;

/** The signed-in session; replaced whole on login and logout. */
let session = null;

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
    refresh: null,
  };
}

// ---- small DOM helpers; text goes in as text, never as markup

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

let noticeTimer;
function notify(message, kind = 'error') {
  const notice = $('notice');
  notice.textContent = message;
  notice.className = kind === 'info' ? 'notice info' : 'notice';
  notice.hidden = false;
  clearTimeout(noticeTimer);
  noticeTimer = setTimeout(() => { notice.hidden = true; }, 10_000);
}

function show(screen) {
  for (const id of ['welcome', 'no-key', 'chat', 'account']) $(id).hidden = id !== screen;
  const signedIn = screen !== 'welcome';
  $('session-actions').hidden = !signedIn;
  $('connection').hidden = screen !== 'chat';
  $('whoami').textContent = signedIn && session ? session.me.username : '';
}

/** An event handler that reports its failure instead of throwing it away, and keeps its button disabled while it runs. */
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

function report(err) {
  if (err instanceof ApiError || err instanceof e2e.CryptoError) notify(err.message);
  else {
    console.warn(err);
    notify(`Something went wrong: ${err.message}`);
  }
}

function when(ms) {
  const d = new Date(ms);
  const sameDay = d.toDateString() === new Date().toDateString();
  return sameDay ? d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' }) : d.toLocaleString();
}

// ---- signing in and out

async function register(event) {
  const form = event.currentTarget;
  const { username, email, password } = fields(form);
  const identity = await e2e.generateIdentity();
  const user = await api.register(username.trim(), email.trim(), password, identity.publicKey);
  await db.saveIdentity({ username: user.username, ...identity });
  await api.login(user.username, password);
  form.reset();
  await enter();
}

async function login(event) {
  const form = event.currentTarget;
  const { username, password } = fields(form);
  try {
    await api.login(username.trim(), password);
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) throw new ApiError(401, 'Wrong username or password.');
    throw err;
  }
  form.reset();
  await enter();
}

/** With a token: finds this browser's key for the account, then opens the chat. */
async function enter() {
  sessionStorage.setItem(TOKEN_KEY, api.token);
  const me = await api.me();
  const identity = await db.identity(me.username);
  session = newSession(me, identity);
  if (!identity || identity.publicKey !== me.public_key) {
    show('no-key');
    return;
  }
  await openChat();
}

/** A new key for this browser, published with the password that confirms it. */
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

/** Stops the session's connection and its periodic refresh. */
function pause(current) {
  current.relay?.stop();
  clearInterval(current.refresh);
}

function resume(current) {
  current.relay?.start();
  current.refresh = setInterval(() => refreshContacts().catch(() => {}), REFRESH_MS);
}

/**
 * Runs `revoke`, a request that ends this session's token, with the session
 * quiet: no refresh or reconnect of its own can reach the server after the
 * revocation and be refused. If `revoke` fails the session carries on.
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

async function leave(message) {
  if (session) pause(session);
  session = null;
  api.token = null;
  sessionStorage.removeItem(TOKEN_KEY);
  $('chat').classList.remove('in-thread');
  for (const list of ['contacts', 'requests', 'search-results', 'messages']) $(list).replaceChildren();
  $('thread').hidden = true;
  $('pick').hidden = false;
  show('welcome');
  if (message) notify(message, 'info');
}

async function logout() {
  try {
    await ending(() => api.logout());
  } finally {
    await leave();
  }
}

// ---- the chat

async function openChat() {
  show('chat');
  setConnection(false);
  await refreshContacts();
  await fetchUnread();
  const current = session;
  session.relay = new Relay(() => api.token, {
    frame: (frame) => onFrame(current, frame).catch(report),
    presence: (username, online) => onPresence(current, username, online),
    state: (up) => onConnection(current, up).catch(report),
    refused: () => { if (session === current) leave('Your session ended (logged out, or the password changed). Log in again.'); },
  });
  resume(session);
}

function setConnection(up) {
  const el = $('connection');
  el.className = up ? 'connection online' : 'connection offline';
  el.textContent = up ? 'connected' : 'connecting…';
}

async function onConnection(current, up) {
  if (session !== current) return;
  setConnection(up);
  if (!up) return;
  // What was written while the connection was down goes now, in order; the
  // server drops a repeat of what it already took (same client_id).
  const waiting = await db.withStatus(current.me.username, 'sending');
  waiting.sort((a, b) => a.at - b.at);
  for (const m of waiting) transmit(m);
  refreshContacts().catch(() => {});
}

/** The contact list and requests, and the keys they carry checked against those trusted here. */
async function refreshContacts() {
  const current = session;
  const [contacts, pending] = await Promise.all([api.contacts(), api.pending()]);
  if (session !== current) return;
  current.contacts = new Map(contacts.map((c) => [c.username, c]));
  for (const c of contacts) await checkKey(c.username, c.public_key);
  renderContacts();
  renderRequests(pending);
  renderSearch();
  if (current.current) renderThreadHead();
}

/**
 * Trust on first use: the first key seen for a contact is trusted; a later
 * different one flags the contact until the person confirms it.
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

async function onFrame(current, frame) {
  if (session !== current) return;
  const owner = current.me.username;
  switch (frame.type) {
    case 'offline_message':
    case 'p2p_message':
      await receive(frame);
      current.relay.send({ type: 'ack', ids: [frame.id] });
      return;
    case 'sent': {
      const m = await db.updateMessage(owner, frame.client_id, (m) => ({
        serverId: frame.id,
        status: m.status === 'delivered' ? 'delivered' : 'sent',
      }));
      if (m) showStatus(m);
      return;
    }
    case 'delivered': {
      const found = await db.byServerId(owner, frame.id);
      if (!found) return;
      const m = await db.updateMessage(owner, found.id, () => ({ status: 'delivered' }));
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
      if (typeof frame.error === 'string') notify(frame.error);
  }
}

function onPresence(current, username, online) {
  if (session !== current) return;
  const contact = current.contacts.get(username);
  if (!contact) return;
  contact.is_online = online;
  if (!online) contact.last_seen = new Date().toISOString();
  renderContacts();
  renderSearch();
  if (current.current === username) renderThreadHead();
}

/** Decrypts and keeps one incoming message (once, whatever path brought it). */
async function receive({ id: serverId, sender_username: sender, content, timestamp }) {
  const owner = session.me.username;
  const at = Date.parse(timestamp) || Date.now();
  let entry;
  try {
    const opened = await e2e.open({ own: session.identity, sender, recipient: owner, content });
    const pin = await db.pin(owner, sender);
    let caution = null;
    if (!pin) caution = `${sender} is not among your contacts`;
    else if (pin.publicKey !== opened.senderKey) caution = `sent under a key of ${sender}'s you have not confirmed`;
    entry = { owner, id: opened.id, peer: sender, dir: 'in', text: opened.text, at, serverId, caution };
  } catch (err) {
    if (!(err instanceof e2e.CryptoError)) throw err;
    entry = { owner, id: `server:${serverId}`, peer: sender, dir: 'in', text: `This message could not be decrypted: ${err.message}.`, at, serverId, broken: true };
  }
  if (!(await db.addMessage(entry))) return; // seen before: a repeat delivery or a replay
  if (session.current === sender) {
    appendMessage(entry);
  } else {
    session.unread.set(sender, (session.unread.get(sender) ?? 0) + 1);
    renderContacts();
  }
}

async function send() {
  const peer = session.current;
  const input = field('compose-text');
  const text = input.value;
  if (!peer || text.trim() === '') return;
  const contact = session.contacts.get(peer);
  if (!contact) throw new Error(`${peer} is no longer a contact`);
  if (session.flagged.has(peer)) throw new e2e.CryptoError(`Confirm ${peer}'s new key before writing to them.`);
  const owner = session.me.username;
  const pin = await db.pin(owner, peer);
  if (!pin) throw new e2e.CryptoError(`${peer} has no key this messenger can encrypt to.`);
  const id = e2e.newMessageId();
  const content = await e2e.seal({ own: session.identity, sender: owner, recipient: peer, recipientKey: pin.publicKey, id, text });
  const message = { owner, id, peer, dir: 'out', text, at: Date.now(), status: 'sending', content, serverId: null };
  await db.addMessage(message);
  input.value = '';
  appendMessage(message);
  transmit(message);
}

function transmit(m) {
  // Not connected now: sent when the connection is back (onConnection).
  session.relay?.send({ recipient_username: m.peer, content: m.content, client_id: m.id });
}

// ---- rendering

function renderContacts() {
  const list = $('contacts');
  const contacts = [...session.contacts.values()].sort((a, b) => a.username.localeCompare(b.username));
  list.replaceChildren(...contacts.map((c) => {
    const unread = session.unread.get(c.username);
    return h('li', {
      class: c.username === session.current ? 'active' : '',
      dataset: { username: c.username },
      tabindex: '0',
      on: { click: () => openThread(c.username).catch(report), keydown: (e) => { if (e.key === 'Enter') openThread(c.username).catch(report); } },
    },
    h('span', { class: c.is_online ? 'dot online' : 'dot', title: c.is_online ? 'online' : 'offline' }),
    h('span', { class: 'name' }, c.username),
    session.flagged.has(c.username) ? h('span', { class: 'flag', title: 'key changed' }, 'key changed') : null,
    unread ? h('span', { class: 'unread' }, String(unread)) : null);
  }));
  $('no-contacts').hidden = contacts.length > 0;
}

function renderRequests(pending) {
  $('requests').replaceChildren(...pending.map((r) => h('li', { dataset: { username: r.username } },
    h('span', { class: 'name' }, r.username),
    h('button', { type: 'button', on: { click: action(async () => { await api.accept(r.user_id); await refreshContacts(); }) } }, 'Accept'),
    h('button', { type: 'button', class: 'secondary', on: { click: action(async () => { await api.remove(r.user_id); await refreshContacts(); }) } }, 'Reject'))));
  $('no-requests').hidden = pending.length > 0;
}

async function search() {
  const query = field('search').value.trim();
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
  const online = (u) => session.contacts.get(u.username)?.is_online ?? u.is_online;
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

async function openThread(username) {
  session.current = username;
  session.unread.delete(username);
  $('pick').hidden = true;
  $('thread').hidden = false;
  $('chat').classList.add('in-thread');
  renderContacts();
  renderThreadHead();
  const messages = await db.conversation(session.me.username, username);
  if (session?.current !== username) return;
  $('messages').replaceChildren(...messages.map(messageView));
  scrollDown();
  $('compose-text').focus();
}

async function renderThreadHead() {
  const peer = session.current;
  const contact = session.contacts.get(peer);
  $('peer-name').textContent = peer;
  $('peer-status').textContent = !contact ? 'not a contact'
    : contact.is_online ? 'online'
      : contact.last_seen ? `last seen ${when(Date.parse(contact.last_seen))}` : 'offline';
  const pin = await db.pin(session.me.username, peer);
  const flagged = session.flagged.has(peer);
  const usable = !!contact && !!pin && !flagged;
  field('send').disabled = !usable;
  field('compose-text').disabled = !usable;
  $('remove-contact').hidden = !contact;
  $('peer-fingerprint').textContent = pin ? `Key fingerprint ${await e2e.fingerprint(pin.publicKey)}` : 'No end-to-end key: messages cannot be encrypted to this user.';
  $('key-warning').hidden = !flagged;
  if (flagged && contact) {
    const fresh = e2e.isPublicKey(contact.public_key) ? await e2e.fingerprint(contact.public_key) : 'not an end-to-end key';
    $('key-warning-text').textContent = `${peer}'s key has changed (new fingerprint ${fresh}). They may have a new device, or someone may be posing as them. Check the fingerprint with ${peer} another way; nothing is sent until you confirm.`;
    $('confirm-key').hidden = !e2e.isPublicKey(contact.public_key);
  }
}

async function confirmKey() {
  const peer = session.current;
  const contact = session.contacts.get(peer);
  if (!contact || !e2e.isPublicKey(contact.public_key)) return;
  await db.savePin(session.me.username, peer, contact.public_key);
  session.flagged.delete(peer);
  renderContacts();
  await renderThreadHead();
}

const STATUS_TEXT = { sending: 'sending…', sent: 'sent ✓', delivered: 'delivered ✓✓' };

function messageView(m) {
  return h('li', { class: [m.dir, m.broken ? 'broken' : ''].join(' ').trim(), dataset: { id: m.id } },
    m.caution ? h('span', { class: 'caution' }, `⚠ ${m.caution}`) : null,
    h('span', { class: 'text' }, m.text),
    h('span', { class: 'meta' }, when(m.at), m.dir === 'out' ? h('span', { class: 'receipt' }, ` · ${STATUS_TEXT[m.status] ?? m.status}`) : null));
}

function appendMessage(m) {
  $('messages').append(messageView(m));
  scrollDown();
}

function showStatus(m) {
  if (session?.current !== m.peer) return;
  const el = [...$('messages').children].find((li) => li instanceof HTMLElement && li.dataset.id === m.id);
  if (el) el.replaceWith(messageView(m));
}

function scrollDown() {
  const list = $('messages');
  list.scrollTop = list.scrollHeight;
}

async function removeContact() {
  const contact = session.contacts.get(session.current);
  if (!contact) return;
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
  $('logout').addEventListener('click', action(logout));
  $('no-key-logout').addEventListener('click', action(logout));
  $('make-key-form').addEventListener('submit', action(async (event) => { await makeKey(event); await openChat(); }));
  $('search-form').addEventListener('submit', action(search));
  $('compose').addEventListener('submit', action(send));
  $('compose-text').addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && !e.shiftKey) {
      e.preventDefault();
      /** @type {HTMLFormElement} */ ($('compose')).requestSubmit();
    }
  });
  $('confirm-key').addEventListener('click', action(confirmKey));
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

  const saved = sessionStorage.getItem(TOKEN_KEY);
  if (saved) {
    api.token = saved;
    try {
      await enter();
      return;
    } catch (err) {
      // The token ran out or was revoked: log in again.
      api.token = null;
      sessionStorage.removeItem(TOKEN_KEY);
      if (!(err instanceof ApiError && err.status === 401)) report(err);
    }
  }
  show('welcome');
}

start().catch(report);
