// The web messenger in Chromium against the embedded server: people register,
// become contacts and chat through the UI, end to end encrypted.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import {
  PATIENCE, befriend, browser, connected, embeddedServer, login, message, openConversation,
  person, register, screenshot, send, unique,
} from './harness.mjs';

let server;
let chromium;
before(async () => {
  server = await embeddedServer();
  chromium = await browser();
});
after(async () => {
  await chromium?.close();
  await server?.stop();
});

/** Nothing the browsers exchanged with the server, nor anything it stored, holds these texts. */
function assertNoPlaintext(people, secrets) {
  // The watchers saw the traffic: encrypted envelopes went by.
  for (const who of people) assert.ok(who.wire.some((w) => w.includes('\\"ct\\"')), `${who.name}'s traffic was recorded`);
  const stored = server.stored().toString('latin1') + server.stored().toString('utf8');
  for (const secret of secrets) {
    assert.ok(!stored.includes(secret), `the server stored "${secret}" in plain text`);
    for (const who of people) {
      const leaked = who.wire.find((w) => w.includes(secret));
      assert.equal(leaked, undefined, `${who.name}'s browser sent or received "${secret}" in plain text`);
    }
  }
}

test('two people register, become contacts and chat both ways, online and offline', async () => {
  const alice = await person(chromium, server.url, unique('alice'));
  const bob = await person(chromium, server.url, unique('bob'));
  await screenshot(alice, 'welcome');
  await register(alice, alice.name);
  await register(bob, bob.name);
  await befriend(alice, bob);
  await connected(alice);
  await connected(bob);
  // Presence: each sees the other online.
  await alice.page.locator(`#contacts li[data-username="${bob.name}"] .dot.online`).waitFor({ timeout: PATIENCE });

  const secrets = ['the eagle lands at noon', 'bring the blue umbrella', 'written while bob was away', '汉字 and ünïcödé'];
  await openConversation(alice, bob.name);
  await send(alice, secrets[0]);
  await openConversation(bob, alice.name);
  await message(bob, secrets[0]).waitFor({ timeout: PATIENCE });
  // Bob's browser acknowledged it: alice's message says so.
  await message(alice, secrets[0]).locator('.receipt', { hasText: 'delivered' }).waitFor({ timeout: PATIENCE });
  await send(bob, secrets[1]);
  await message(alice, secrets[1]).waitFor({ timeout: PATIENCE });
  await send(bob, secrets[3]);
  await message(alice, secrets[3]).waitFor({ timeout: PATIENCE });
  await screenshot(alice, 'conversation');

  // Bob leaves; alice writes; the server keeps it (sent), and bob's next login decrypts it.
  await bob.page.locator('#logout').click();
  await bob.page.locator('#welcome').waitFor({ timeout: PATIENCE });
  await alice.page.locator(`#contacts li[data-username="${bob.name}"] .dot:not(.online)`).waitFor({ timeout: PATIENCE });
  await send(alice, secrets[2]);
  await message(alice, secrets[2]).locator('.receipt', { hasText: 'sent' }).waitFor({ timeout: PATIENCE });
  await login(bob, bob.name);
  await bob.page.locator(`#contacts li[data-username="${alice.name}"] .unread`).waitFor({ timeout: PATIENCE });
  await openConversation(bob, alice.name);
  await message(bob, secrets[2]).waitFor({ timeout: PATIENCE });
  await message(alice, secrets[2]).locator('.receipt', { hasText: 'delivered' }).waitFor({ timeout: PATIENCE });

  // A reload keeps the session, the key and the history.
  await bob.page.reload();
  await connected(bob);
  await openConversation(bob, alice.name);
  for (const text of secrets) await message(bob, text).waitFor({ timeout: PATIENCE });
  assert.equal(await bob.page.locator('#messages li').count(), secrets.length, 'each message once');
  await screenshot(bob, 'history-after-reload');

  assertNoPlaintext([alice, bob], secrets);
  assert.deepEqual([...alice.errors, ...bob.errors], []);
  await alice.context.close();
  await bob.context.close();
});
