// Direct links across real NATs: the server and coturn on a "public"
// segment, two Chromium browsers each behind a NAT router of its own, all in
// network namespaces this test makes (tests/web/natlab.sh; root, iproute2,
// nftables and Debian's coturn). Where the machine cannot, the tests are
// skipped with the reason; direct.test.mjs covers the signalling on loopback.

import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import {
  PATIENCE, ROOT, SERVER, assertNoConsoleErrors, befriend, browser, connected, conversationTexts, login, logout, message,
  openConversation, pathShown, person, register, relayCounters, send, unique, waitFor,
} from './harness.mjs';

const LAB = `sc${process.pid % 100000}`;
const NATLAB = path.join(ROOT, 'tests/web/natlab.sh');
const PUBLIC = '203.0.113.10';
const URL = `http://${PUBLIC}:8000`;
const TAMPERED_URL = `http://${PUBLIC}:8001`;
const TURN_SECRET = `nat-test-${Math.random().toString(36).slice(2)}`;

/** Why these tests cannot run here, or null. */
function unable() {
  if (process.getuid?.() !== 0) return 'not root: network namespaces and nftables need it';
  for (const [tool, args] of [['ip', ['netns', 'list']], ['nft', ['--version']], ['turnserver', ['--version']], ['curl', ['--version']]]) {
    try {
      execFileSync(tool, args, { stdio: 'ignore' });
    } catch {
      return `${tool} is missing or refused (install iproute2, nftables, coturn and curl)`;
    }
  }
  try {
    execFileSync('ip', ['netns', 'add', `${LAB}-probe`], { stdio: 'ignore' });
    execFileSync('ip', ['netns', 'del', `${LAB}-probe`], { stdio: 'ignore' });
  } catch {
    return 'this machine does not let this process make network namespaces';
  }
  return null;
}
const skip = unable() ?? false;
if (skip) console.log(`# nat.test.mjs skipped: ${skip}`);

/** Starts a long-running command inside the lab's namespace `ns`, in a directory of its own, with this environment. */
function inLab(ns, command, args, env = process.env) {
  const child = spawn('ip', ['netns', 'exec', `${LAB}-${ns}`, command, ...args], {
    cwd: mkdtempSync(path.join(tmpdir(), 'secchat-nat-')),
    env,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const output = [];
  child.stdout.on('data', (d) => output.push(String(d)));
  child.stderr.on('data', (d) => output.push(String(d)));
  return { child, output, stop: () => { child.kill('SIGTERM'); return new Promise((resolve) => (child.exitCode !== null ? resolve() : child.once('exit', resolve))); } };
}

const curl = (url) => execFileSync('ip', ['netns', 'exec', `${LAB}-pub`, 'curl', '-sf', '-m', '5', url], { encoding: 'utf8' });
const counters = () => relayCounters(curl(`${URL}/metrics`));
/** Makes NAT `side`'s router translate as `mode` says (cone or symmetric). */
async function setNat(side, mode) {
  await lab();
  execFileSync(NATLAB, ['nat', LAB, side, mode]);
}

/** coturn as deployed (deploy/coturn/turnserver.conf), checking the server's credentials with the shared secret. */
function startTurn() {
  return inLab('pub', 'turnserver', [
    '-c', path.join(ROOT, 'deploy/coturn/turnserver.conf'), '--static-auth-secret', TURN_SECRET, '--realm', 'secchat.test',
    '--listening-ip', PUBLIC, '--relay-ip', PUBLIC, '--no-tls', '--no-dtls', '--pidfile', '',
  ]);
}

let turn;
let server;
let browsers;
/** @type {Promise<void> | undefined} */
let made;

/**
 * The lab, the server (embedded, on the public segment) and coturn beside
 * it, and a browser behind each NAT; made by the first test that needs
 * them, so that a failure here fails that test rather than skipping all.
 */
function lab() {
  made ??= (async () => {
    execFileSync(NATLAB, ['down', LAB]);
    execFileSync(NATLAB, ['up', LAB]);
    turn = startTurn();
    const { DATABASE_URL: _d, REDIS_URL: _r, ...env } = process.env;
    server = inLab('pub', SERVER, ['--bind', `${PUBLIC}:8000`], {
      ...env, RUST_LOG: 'info', REGISTER_RATE_PER_IP: '1000/hour',
      TURN_SECRET, TURN_URIS: `stun:${PUBLIC}:3478,turn:${PUBLIC}:3478?transport=udp`,
    });
    try {
      await waitFor('the server in the lab', () => curl(`${URL}/readyz`) !== undefined);
    } catch (err) {
      throw new Error(`${err.message}: ${server.output.join('').slice(-2000)}`);
    }
    const executablePath = path.join(ROOT, 'tests/web/chromium-in-netns');
    // The page needs a secure context (WebCrypto); a real deployment has
    // HTTPS, the lab plain HTTP on a documentation address.
    const args = [`--unsafely-treat-insecure-origin-as-secure=${URL},${TAMPERED_URL}`];
    browsers = {
      a: await browser({ executablePath, args, env: { ...process.env, SECCHAT_NETNS: `${LAB}-a` } }),
      b: await browser({ executablePath, args, env: { ...process.env, SECCHAT_NETNS: `${LAB}-b` } }),
    };
  })();
  return made;
}

after(async () => {
  if (!made) return;
  for (const b of Object.values(browsers ?? {})) await b.close();
  await server?.stop();
  await turn?.stop();
  execFileSync(NATLAB, ['down', LAB]);
});

/**
 * Alice behind NAT a and bob behind NAT b (translating as `a` and `b` say),
 * contacts, connected, each in the other's conversation; when `path` is
 * given, both pages show their channel on it.
 */
async function pair({ a = 'cone', b = 'cone', path: expected = null, bobUrl = URL, bobName = unique('bob') } = {}) {
  await setNat('a', a);
  await setNat('b', b);
  const alice = await person(browsers.a, URL, unique('alice'));
  const bob = await person(browsers.b, bobUrl, bobName);
  await register(alice, alice.name);
  await register(bob, bob.name);
  await befriend(alice, bob);
  await connected(alice);
  await connected(bob);
  await openConversation(alice, bob.name);
  await openConversation(bob, alice.name);
  if (expected) {
    await pathShown(alice, expected);
    await pathShown(bob, expected);
  }
  return [alice, bob];
}

/** No console error in their pages; their browser contexts closed. */
async function done(people) {
  assertNoConsoleErrors(people);
  for (const who of people) await who.context.close();
}

/**
 * Messages both ways over the open channel, each seen by the other and
 * acknowledged by its browser, one order on both sides, and nothing
 * delivered or stored by the server meanwhile.
 */
async function chatOverChannel(alice, bob, label) {
  const before = counters();
  const texts = [`${label} 1 from alice`, `${label} 2 from bob`, `${label} 3 from alice`, `${label} 4 from bob`];
  for (const [i, text] of texts.entries()) {
    const [from, to] = i % 2 === 0 ? [alice, bob] : [bob, alice];
    await send(from, text);
    await message(to, text).waitFor({ timeout: PATIENCE });
    await message(from, text).locator('.receipt', { hasText: /delivered|read/ }).waitFor({ timeout: PATIENCE });
  }
  assert.deepEqual(await conversationTexts(alice), await conversationTexts(bob));
  assert.deepEqual(counters(), before, 'nothing delivered or stored by the server');
  return { texts, before };
}

test('both behind endpoint-independent NATs: a direct channel, and the server carries no message', { skip }, async () => {
  const [alice, bob] = await pair({ path: 'direct' });
  await chatOverChannel(alice, bob, 'through the NATs');
  await done([alice, bob]);
});

test('one behind a symmetric NAT: the channel goes through coturn; coturn stopped: the relay, nothing lost', { skip }, async () => {
  const [alice, bob] = await pair({ a: 'symmetric', path: 'turn' });
  assert.equal(await alice.page.locator('#peer-path').textContent(), 'TURN relay');
  const { texts, before } = await chatOverChannel(alice, bob, 'through coturn');

  // coturn goes away mid-conversation: what alice writes now goes into a
  // channel that is dead; unacknowledged, it goes through the relay.
  await turn.stop();
  const after = ['written as coturn stopped 1', 'written as coturn stopped 2', 'written as coturn stopped 3'];
  for (const text of after) await send(alice, text);
  await send(bob, 'bob writes back after coturn stopped');
  for (const text of after) await message(bob, text).waitFor({ timeout: PATIENCE });
  await message(alice, 'bob writes back after coturn stopped').waitFor({ timeout: PATIENCE });
  await pathShown(alice, 'server');
  await pathShown(bob, 'server');
  for (const text of after) await message(alice, text).locator('.receipt', { hasText: /delivered|read/ }).waitFor({ timeout: PATIENCE });
  for (const text of [...texts, ...after]) assert.equal(await message(bob, text).count(), 1, `bob shows "${text}" once`);
  assert.ok(counters().directed > before.directed, 'the relay carried them');
  turn = startTurn();
  await done([alice, bob]);
});

test('the peer offline: the message is stored, and decrypted at its next login', { skip }, async () => {
  const [alice, bob] = await pair({ path: 'direct' });
  await logout(bob);
  await pathShown(alice, 'server');
  const text = 'written while bob was logged out';
  const before = counters();
  await send(alice, text);
  await message(alice, text).locator('.receipt', { hasText: 'sent' }).waitFor({ timeout: PATIENCE });
  assert.equal(counters().stored, before.stored + 1, 'the server stored it');
  await login(bob, bob.name);
  await connected(bob);
  await openConversation(bob, alice.name);
  await message(bob, text).waitFor({ timeout: PATIENCE });
  assert.equal(await message(bob, text).locator('.text').textContent(), text);
  await message(alice, text).locator('.receipt', { hasText: /delivered|read/ }).waitFor({ timeout: PATIENCE });
  await done([alice, bob]);
});

test('a signalling path that rewrites the DTLS fingerprint is detected, and no channel opens', { skip }, async () => {
  await lab();
  const bobName = unique('bob');
  const proxy = inLab('pub', process.execPath, [path.join(ROOT, 'tests/web/tamper-proxy.mjs'), `${PUBLIC}:8001`, `${PUBLIC}:8000`, bobName]);
  await waitFor('the tampering proxy', () => proxy.output.join('').includes('listening'));
  const [alice, bob] = await pair({ bobUrl: TAMPERED_URL, bobName });

  // Alice offers (her name sorts first); every signal to bob is changed on the way.
  await waitFor('a flipped and a resealed signal', () => /flipped/.test(proxy.output.join('')) && /resealed/.test(proxy.output.join('')));
  await bob.page.locator('#notice', { hasText: 'failed its end-to-end check' }).waitFor({ timeout: PATIENCE });
  // Refused: bob answered nothing, so no channel opened on either side, and
  // messages still go, through the server, still sealed.
  const before = counters();
  await send(alice, 'still through the server');
  await message(bob, 'still through the server').waitFor({ timeout: PATIENCE });
  assert.ok(counters().directed > before.directed, 'the relay carried it');
  for (const who of [alice, bob]) assert.equal(await who.page.locator('#peer-path').getAttribute('data-path'), 'server');
  await proxy.stop();
  await done([alice, bob]);
});
