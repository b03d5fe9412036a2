// Direct links on one machine, no privileges needed: two browsers open a
// WebRTC data channel through the server's signalling (sealed, ephemeral
// frames), chat over it while the server carries nothing, and fall back to
// the relay, losing nothing, when the channel goes. The same across real
// NATs and a TURN server: nat.test.mjs (as root).

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import {
  PATIENCE, acquainted, assertNoConsoleErrors, browser, connected, conversationTexts, embeddedServer, message,
  openConversation, pathShown, relayCounters, send,
} from './harness.mjs';

let server;
let chromium;
before(async () => {
  // ICE servers are handed out, so the messenger tries channels; the STUN
  // server named answers nothing here, and host candidates are all it takes.
  server = await embeddedServer({ TURN_SECRET: 'loopback-test-secret', TURN_URIS: 'stun:127.0.0.1:9' });
  // Host candidates as addresses, not mDNS names: nothing answers multicast here.
  chromium = await browser({ args: ['--disable-features=WebRtcHideLocalIpsWithMdns', '--allow-loopback-in-peer-connection'] });
});
after(async () => {
  await chromium?.close();
  await server?.stop();
});

const counters = async () => relayCounters(await (await fetch(`${server.url}/metrics`)).text());

test('a data channel carries the conversation, receipts and order alike, and the relay takes over when it closes', async () => {
  const [alice, bob] = await acquainted(chromium, server.url);
  await openConversation(alice, bob.name);
  await openConversation(bob, alice.name);
  await pathShown(alice, 'direct');
  await pathShown(bob, 'direct');
  assert.equal(await alice.page.locator('#peer-path').textContent(), 'direct');

  const before = await counters();
  const texts = ['over the channel 1', 'over the channel 2', 'back over the channel 3', 'over the channel 4', 'back over the channel 5'];
  await send(alice, texts[0]);
  await send(alice, texts[1]);
  await message(bob, texts[1]).waitFor({ timeout: PATIENCE });
  await send(bob, texts[2]);
  await message(alice, texts[2]).waitFor({ timeout: PATIENCE });
  await send(alice, texts[3]);
  await send(bob, texts[4]);
  for (const who of [alice, bob]) {
    for (const text of texts) await message(who, text).waitFor({ timeout: PATIENCE });
  }
  // Receipts as on the relay: delivered when the other browser took it, read once seen.
  for (const [who, mine] of [[alice, [0, 1, 3]], [bob, [2, 4]]]) {
    for (const i of mine) await message(who, texts[i]).locator('.receipt', { hasText: /delivered|read/ }).waitFor({ timeout: PATIENCE });
  }
  // Read as well: each browser has seen the other's messages and sent its
  // read receipts, which are acknowledged like messages.
  for (const [who, mine] of [[alice, [0, 1, 3]], [bob, [2, 4]]]) {
    for (const i of mine) await message(who, texts[i]).locator('.receipt', { hasText: 'read' }).waitFor({ timeout: PATIENCE });
  }
  // Both sides show one order, whoever wrote first.
  assert.deepEqual(await conversationTexts(alice), await conversationTexts(bob));
  assert.deepEqual((await conversationTexts(alice)).slice(0, 3), texts.slice(0, 3));
  // The server carried none of it: no message, receipt or typing notice delivered or stored.
  assert.deepEqual(await counters(), before);

  // Bob's page goes away: the channel closes, and what alice writes now goes through the relay.
  await bob.page.goto('about:blank');
  await pathShown(alice, 'server');
  const later = 'after the channel closed';
  await send(alice, later);
  await message(alice, later).locator('.receipt', { hasText: 'sent' }).waitFor({ timeout: PATIENCE });
  // The counters do move for what the server carries: bob was away, so it
  // stored that one. A read receipt of alice's whose acknowledgement was still
  // on its way back when bob's page went goes through the relay too (bob's
  // page drops it as a repeat), so up to two more may be stored here.
  const stored = (await counters()).stored - before.stored;
  assert.ok(stored >= 1 && stored <= 3, `stored ${stored}: the message, and at most alice's two read receipts again`);
  await bob.page.goto(server.url); // the same tab: its session is kept
  await connected(bob);
  await openConversation(bob, alice.name);
  for (const text of [...texts, later]) await message(bob, text).waitFor({ timeout: PATIENCE });
  assert.equal(await bob.page.locator('#messages li').count(), texts.length + 1, 'each message once');
  // Back on the page, bob's browser and alice's open a channel again.
  await pathShown(bob, 'direct');

  assertNoConsoleErrors([alice, bob]);
  await alice.context.close();
  await bob.context.close();
});
