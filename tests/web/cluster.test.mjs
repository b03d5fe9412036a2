// The web messenger through nginx in front of three replicas on Postgres and
// Redis (deploy/local-cluster.sh): the same conversation works across
// replicas, and survives each replica being restarted in turn.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import {
  PATIENCE, acquainted, logout, assertNoConsoleErrors, browser, cluster, connected, login, message,
  openConversation, screenshot, send,
} from './harness.mjs';

let servers;
let chromium;
before(async () => {
  servers = await cluster();
  chromium = await browser();
});
after(async () => {
  await chromium?.close();
  await servers?.stop();
});

test('a conversation through the load balancer survives a rolling restart of the replicas', async () => {
  const [alice, bob] = await acquainted(chromium, servers.url);
  await openConversation(alice, bob.name);
  await openConversation(bob, alice.name);
  const said = [];
  const exchange = async (round) => {
    const there = `round ${round}: alice to bob`;
    const back = `round ${round}: bob to alice`;
    await send(alice, there);
    await message(bob, there).waitFor({ timeout: PATIENCE });
    await message(alice, there).locator('.receipt', { hasText: /delivered|read/ }).waitFor({ timeout: PATIENCE });
    await send(bob, back);
    await message(alice, back).waitFor({ timeout: PATIENCE });
    said.push(there, back);
  };
  await exchange(0);
  for (const replica of [1, 2, 3]) {
    await servers.restartReplica(replica);
    // Whoever was on that replica was told it is going away (1001) and came back through nginx.
    await connected(alice);
    await connected(bob);
    await exchange(replica);
  }
  await screenshot(alice, 'cluster-conversation');

  // Offline through the cluster: stored as ciphertext only, delivered on the next login.
  await logout(bob);
  await bob.page.locator('#welcome').waitFor({ timeout: PATIENCE });
  const away = 'kept for bob by the cluster';
  await send(alice, away);
  await message(alice, away).locator('.receipt', { hasText: 'sent' }).waitFor({ timeout: PATIENCE });
  const stored = servers.stored().toString('utf8');
  assert.ok(stored.includes('\"ct\"'), 'the message is stored, encrypted');
  for (const text of [...said, away]) assert.ok(!stored.includes(text), `"${text}" stored in plain text`);
  await login(bob, bob.name);
  await connected(bob);
  await openConversation(bob, alice.name);
  await message(bob, away).waitFor({ timeout: PATIENCE });
  assert.equal(await bob.page.locator('#messages li').count(), said.length + 1, 'each message once');

  for (const who of [alice, bob]) {
    for (const text of [...said, away]) {
      assert.equal(who.wire.find((w) => w.includes(text)), undefined, `"${text}" on ${who.name}'s wire`);
    }
  }
  // While replicas restart, nginx may find none live for a moment (each one
  // that refused a connection is left out for `fail_timeout`): the browser
  // logs the refused attempts (502, a failed WebSocket handshake), and the
  // page retries. Nothing else may appear.
  assertNoConsoleErrors([alice, bob], /status of 502|WebSocket connection to .* failed/);
});
