// What the browser tests share: the server (embedded, or three replicas
// behind nginx), Chromium, people using the messenger through its UI, and
// watchers that record every frame and request body the browser exchanged.

import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, mkdirSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { chromium } from 'playwright-core';

export const ROOT = path.resolve(import.meta.dirname, '../..');
export const SERVER = process.env.SECCHAT_BIN
  ? path.resolve(process.env.SECCHAT_BIN)
  : path.join(ROOT, 'target/debug/secchat');
export const ARTIFACTS = path.join(ROOT, 'target/web-artifacts');
/** How long a test waits for something a person would see; generous, for a busy CI machine. */
export const PATIENCE = 30_000;

mkdirSync(ARTIFACTS, { recursive: true });

export function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
    server.on('error', reject);
  });
}

export async function waitFor(what, check, timeout = PATIENCE) {
  const deadline = Date.now() + timeout;
  for (;;) {
    try {
      if (await check()) return;
    } catch {
      // not yet
    }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(200);
  }
}

const ready = (url) => waitFor(`${url}/readyz`, async () => (await fetch(`${url}/readyz`)).ok);

/**
 * The embedded default: one process, a SQLite file in a directory of its
 * own. Registrations from this one address are allowed more often than the
 * default (10 an hour), unless `settings` say otherwise.
 */
export async function embeddedServer(settings = {}) {
  const dir = mkdtempSync(path.join(tmpdir(), 'secchat-web-'));
  const port = await freePort();
  // No DATABASE_URL or REDIS_URL: the embedded default, its file in `dir`.
  const { DATABASE_URL: _d, REDIS_URL: _r, ...env } = process.env;
  const child = spawn(SERVER, ['--bind', `127.0.0.1:${port}`], {
    cwd: dir,
    env: { ...env, RUST_LOG: 'info', REGISTER_RATE_PER_IP: '1000/hour', ...settings },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const log = [];
  child.stdout.on('data', (d) => log.push(d));
  child.stderr.on('data', (d) => log.push(d));
  const url = `http://127.0.0.1:${port}`;
  await ready(url);
  return {
    url,
    pid: child.pid,
    /** Every byte the server keeps on disk: the database, its WAL, the logs. */
    stored() {
      const files = readdirSync(dir).map((f) => readFileSync(path.join(dir, f)));
      return Buffer.concat([...files, ...log]);
    },
    async stop() {
      child.kill('SIGTERM');
      await new Promise((resolve) => child.once('exit', resolve));
    },
  };
}

/**
 * Three replicas on Postgres and Redis behind nginx, started by
 * deploy/local-cluster.sh, in a fresh database.
 */
export async function cluster() {
  const state = mkdtempSync(path.join(tmpdir(), 'secchat-cluster-'));
  const database = `web_${process.pid}_${Date.now()}`;
  const base = (process.env.TEST_DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/test').replace(/\/[^/]*$/, '');
  const env = {
    ...process.env,
    STATE_DIR: state,
    LB_PORT: String(await freePort()),
    BASE_PORT: String(20000 + Math.floor(Math.random() * 20000)),
    REPLICAS: '3',
    SECCHAT_BIN: SERVER,
    DATABASE_URL: `${base}/${database}`,
    REDIS_URL: process.env.TEST_REDIS_URL ?? 'redis://127.0.0.1:6379',
    REDIS_PREFIX: `web${process.pid}${Date.now()}`,
    JWT_SECRET: `web-test-secret-${Math.random().toString(36).slice(2)}-0123456789`,
  };
  const script = path.join(ROOT, 'deploy/local-cluster.sh');
  execFileSync(script, ['start'], { env, stdio: 'inherit' });
  const url = `http://127.0.0.1:${env.LB_PORT}`;
  const replicaPid = (i) => Number(readFileSync(path.join(state, `replica-${i}.pid`), 'utf8'));
  return {
    url,
    /** The messages table, every row and column, as Postgres holds it. */
    stored() {
      return Buffer.from(execFileSync('psql', [env.DATABASE_URL, '-qAtc', 'SELECT * FROM messages'], { encoding: 'utf8' }));
    },
    /** Stops replica `i` (1-3) the way an orchestrator does, then starts it again. */
    async restartReplica(i) {
      const pid = replicaPid(i);
      process.kill(pid, 'SIGTERM');
      await waitFor(`replica ${i} to exit`, () => {
        try {
          process.kill(pid, 0);
          return false;
        } catch {
          return true;
        }
      });
      const port = Number(env.BASE_PORT) + i - 1;
      const child = spawn(SERVER, [], {
        env: { ...env, BIND: `127.0.0.1:${port}`, TRUSTED_PROXIES: '127.0.0.1/32' },
        stdio: 'ignore',
        detached: true,
      });
      child.unref();
      writeFileSync(path.join(state, `replica-${i}.pid`), String(child.pid));
      await ready(`http://127.0.0.1:${port}`);
    },
    async stop() {
      execFileSync(script, ['stop'], { env, stdio: 'inherit' });
      execFileSync('psql', [`${base}/postgres`, '-qc', `DROP DATABASE IF EXISTS ${database} WITH (FORCE)`]);
    },
  };
}

/**
 * Chromium; `args` adds to its command line, `executablePath` and `env`
 * start it another way (inside a network namespace, say).
 */
export async function browser({ args = [], executablePath, env } = {}) {
  return chromium.launch({
    executablePath: executablePath ?? process.env.CHROMIUM ?? '/usr/bin/chromium',
    headless: true,
    args: ['--no-sandbox', ...args],
    env,
  });
}

/**
 * One person in a browser context of their own: a page, and a record of
 * what the page sent and received (WebSocket frames, request bodies) and of
 * any console error.
 */
export async function person(browser, url, name, { viewport } = {}) {
  const context = await browser.newContext({ viewport: viewport ?? { width: 1100, height: 760 } });
  const page = await context.newPage();
  const wire = [];
  const errors = [];
  page.on('websocket', (ws) => {
    ws.on('framesent', (f) => wire.push(String(f.payload)));
    ws.on('framereceived', (f) => wire.push(String(f.payload)));
  });
  page.on('request', (request) => {
    const body = request.postData();
    if (body) wire.push(body);
  });
  page.on('response', async (response) => {
    if (response.request().resourceType() === 'fetch') {
      wire.push(await response.text().catch(() => ''));
    }
  });
  page.on('console', (msg) => {
    if (msg.type() === 'error') errors.push(`${name}: ${msg.text()} (${msg.location().url})`);
  });
  page.on('pageerror', (err) => errors.push(String(err)));
  await page.goto(url);
  return { name, context, page, wire, errors, url };
}

export async function screenshot(who, label) {
  await who.page.screenshot({ path: path.join(ARTIFACTS, `${label}.png`), fullPage: true });
}

export const unique = (base) => `${base}${Date.now().toString(36)}${Math.random().toString(36).slice(2, 5)}`;

export async function register(who, username, password = 'correct horse battery', { persist = false } = {}) {
  const form = who.page.locator('#register-form');
  await form.locator('[name=username]').fill(username);
  await form.locator('[name=email]').fill(`${username}@example.com`);
  await form.locator('[name=password]').fill(password);
  if (persist) await form.locator('[name=persist]').check();
  await form.locator('button[type=submit]').click();
  await who.page.locator('#chat').waitFor({ state: 'visible', timeout: PATIENCE });
}

export async function login(who, username, password = 'correct horse battery', { persist = false } = {}) {
  const form = who.page.locator('#login-form');
  await form.locator('[name=username]').fill(username);
  await form.locator('[name=password]').fill(password);
  if (persist) await form.locator('[name=persist]').check();
  await form.locator('button[type=submit]').click();
}

export async function connected(who) {
  await who.page.locator('#connection.online').waitFor({ timeout: PATIENCE });
}

/** `from` finds `to` by name and asks; `to` accepts: both are contacts. */
export async function befriend(from, to) {
  await from.page.locator('#search').fill(to.name);
  await from.page.locator('#search-form button').click();
  await from.page.locator(`#search-results li[data-username="${to.name}"] button`).click();
  await from.page.locator(`#contacts li[data-username="${to.name}"]`).waitFor({ timeout: PATIENCE });
  await from.page.locator(`#search-results li[data-username="${to.name}"] .hint`, { hasText: 'contact' }).waitFor({ timeout: PATIENCE });
  // The request arrives live (a `contact_request` frame).
  await to.page.locator(`#requests li[data-username="${from.name}"] button`, { hasText: 'Accept' }).click({ timeout: PATIENCE });
  await to.page.locator(`#contacts li[data-username="${from.name}"]`).waitFor({ timeout: PATIENCE });
}

/** Alice and Bob, registered in browsers of their own, contacts of each other, both connected. */
export async function acquainted(browser, url, { persist = false } = {}) {
  const alice = await person(browser, url, unique('alice'));
  const bob = await person(browser, url, unique('bob'));
  await register(alice, alice.name, undefined, { persist });
  await register(bob, bob.name);
  await befriend(alice, bob);
  await connected(alice);
  await connected(bob);
  return [alice, bob];
}

/**
 * No console error in these people's browsers but those `expected` matches
 * (what a test provoked and the browser itself logs, such as refused requests).
 */
export function assertNoConsoleErrors(people, expected = null) {
  const unexpected = people.flatMap((who) => who.errors).filter((e) => !expected?.test(e));
  assert.deepEqual(unexpected, []);
}

export async function openConversation(who, peer) {
  await who.page.locator(`#contacts li[data-username="${peer}"]`).click();
  await who.page.locator('#peer-name', { hasText: peer }).waitFor({ timeout: PATIENCE });
}

export async function send(who, text) {
  await who.page.locator('#compose-text').fill(text);
  await who.page.locator('#send').click();
}

/** The message with this text in the open conversation. */
export function message(who, text) {
  return who.page.locator('#messages li', { hasText: text });
}

/** Logs out through the page's dialog, keeping this browser's history or (wipe) erasing it. */
export async function logout(who, { wipe = false } = {}) {
  await who.page.locator('#logout').click();
  await who.page.locator('#logout-dialog button', { hasText: wipe ? 'erase' : /^Log out$/ }).click();
  await who.page.locator('#welcome').waitFor({ state: 'visible', timeout: PATIENCE });
}

/**
 * Accessibility problems axe-core (from npm, injected into the page) finds on
 * what the page shows now, as "rule: where" lines; none is the bar.
 */
export async function accessibilityViolations(who) {
  // Evaluated over the DevTools protocol: the page's CSP rightly refuses an injected script tag.
  await who.page.evaluate(readFileSync(path.join(ROOT, 'tests/web/node_modules/axe-core/axe.min.js'), 'utf8'));
  const violations = await who.page.evaluate(async () => {
    const axe = /** @type {any} */ (window).axe;
    const result = await axe.run(document, { resultTypes: ['violations'] });
    return result.violations.map((v) => `${v.id} (${v.impact}): ${v.help} at ${v.nodes.map((n) => n.target.join(' ')).join(', ')}`);
  });
  return violations;
}

/** The path the open conversation's messages take, as the page shows it: `direct`, `turn` or `server`. */
export async function pathShown(who, path, timeout = PATIENCE) {
  await who.page.locator(`#peer-path[data-path="${path}"]`).waitFor({ timeout });
}

/**
 * What the server carried for people, from its Prometheus text: directed
 * frames delivered to connections (messages, receipts, signals, typing) and
 * messages it stored. A direct channel moves neither.
 */
export function relayCounters(metrics) {
  const sum = (name) => metrics.split('\n')
    .filter((line) => line.startsWith(name))
    .reduce((total, line) => total + Number(line.trim().split(/\s+/).pop()), 0);
  return {
    directed: sum('secchat_ws_deliveries_total{kind="direct"}'),
    stored: sum('secchat_messages_stored_total'),
  };
}

/** The texts of the open conversation's messages, top to bottom. */
export async function conversationTexts(who) {
  return who.page.locator('#messages li .text').allTextContents();
}
