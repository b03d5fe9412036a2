// The web messenger in Chromium against the embedded server: people register,
// become contacts and chat through the UI, end to end encrypted.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import {
  PATIENCE, acquainted, assertNoConsoleErrors, befriend, browser, connected, embeddedServer, login, message,
  openConversation, person, register, screenshot, send, unique,
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
  assertNoConsoleErrors([alice, bob]);
  await alice.context.close();
  await bob.context.close();
});

test('a friend request arrives live, without a reload or the periodic refresh', async () => {
  const alice = await person(chromium, server.url, unique('alice'));
  const bob = await person(chromium, server.url, unique('bob'));
  await register(alice, alice.name);
  await register(bob, bob.name);
  await connected(alice);
  await connected(bob);
  // Bob's lists were read when he signed in, and are read again only 20 s
  // later: a request that shows within 10 s of being sent came live.
  const live = 10_000;
  await alice.page.locator('#search').fill(bob.name);
  await alice.page.locator('#search-form button').click();
  await alice.page.locator(`#search-results li[data-username="${bob.name}"] button`).click();
  await bob.page.locator(`#requests li[data-username="${alice.name}"] button`, { hasText: 'Accept' }).click({ timeout: live });
  await bob.page.locator(`#contacts li[data-username="${alice.name}"]`).waitFor({ timeout: PATIENCE });
  assertNoConsoleErrors([alice, bob]);
  await alice.context.close();
  await bob.context.close();
});

test('a network drop: messages written offline wait, and both ways arrive once the network is back', async () => {
  const [alice, bob] = await acquainted(chromium, server.url);
  await openConversation(alice, bob.name);
  await openConversation(bob, alice.name);

  // Alice's network goes: her relay connection drops, the page says so.
  await alice.context.setOffline(true);
  await alice.page.locator('#connection.offline').waitFor({ timeout: PATIENCE });
  await bob.page.locator(`#contacts li[data-username="${alice.name}"] .dot:not(.online)`).waitFor({ timeout: PATIENCE });
  const secrets = ['written on the train', 'and one for the way back'];
  await send(alice, secrets[0]);
  await message(alice, secrets[0]).locator('.receipt', { hasText: 'sending' }).waitFor({ timeout: PATIENCE });
  // A request while offline is refused in words a person understands.
  await alice.page.locator('#search').fill(bob.name);
  await alice.page.locator('#search-form button').click();
  await alice.page.locator('#notice', { hasText: 'offline' }).waitFor({ timeout: PATIENCE });
  await send(bob, secrets[1]);
  await message(bob, secrets[1]).locator('.receipt', { hasText: 'sent' }).waitFor({ timeout: PATIENCE });

  // The network is back: the relay reconnects, what waited goes, what was stored arrives.
  await alice.context.setOffline(false);
  await connected(alice);
  await message(bob, secrets[0]).waitFor({ timeout: PATIENCE });
  await message(alice, secrets[1]).waitFor({ timeout: PATIENCE });
  await message(alice, secrets[0]).locator('.receipt', { hasText: 'delivered' }).waitFor({ timeout: PATIENCE });
  await message(bob, secrets[1]).locator('.receipt', { hasText: 'delivered' }).waitFor({ timeout: PATIENCE });
  for (const who of [alice, bob]) {
    for (const text of secrets) assert.equal(await message(who, text).count(), 1, `${who.name} shows "${text}" once`);
  }

  assertNoPlaintext([alice, bob], secrets);
  // Expected: the browser logs the requests the dropped network refused, nothing else.
  assertNoConsoleErrors([alice, bob], /ERR_INTERNET_DISCONNECTED/);
  await alice.context.close();
  await bob.context.close();
});

test('a new key is flagged, and nothing is sent to it until the person confirms it', async () => {
  const [alice, bob] = await acquainted(chromium, server.url);
  // Carol, another contact of alice's, is away when the key changes.
  const carol = await person(chromium, server.url, unique('carol'));
  await register(carol, carol.name);
  await befriend(alice, carol);
  await carol.page.locator('#logout').click();
  await carol.page.locator('#welcome').waitFor({ timeout: PATIENCE });

  // Alice on another browser: no key there, and the page says so.
  const laptop = await person(chromium, server.url, alice.name);
  await login(laptop, alice.name);
  await laptop.page.locator('#no-key').waitFor({ timeout: PATIENCE });
  await screenshot(laptop, 'no-key-in-this-browser');
  // A key change needs the password: a wrong one changes nothing.
  const keyForm = laptop.page.locator('#make-key-form');
  await keyForm.locator('[name=password]').fill('not the password');
  await laptop.page.locator('#make-key').click();
  await laptop.page.locator('#notice', { hasText: 'Wrong password' }).waitFor({ timeout: PATIENCE });
  await keyForm.locator('[name=password]').fill('correct horse battery');
  await laptop.page.locator('#make-key').click();
  await connected(laptop);

  // Bob's browser hears of it at once (key_changed) and stops writing to alice.
  await bob.page.locator(`#contacts li[data-username="${alice.name}"] .flag`).waitFor({ timeout: PATIENCE });
  await openConversation(bob, alice.name);
  await bob.page.locator('#key-warning').waitFor({ timeout: PATIENCE });
  assert.ok(await bob.page.locator('#send').isDisabled(), 'sending waits for confirmation');
  await screenshot(bob, 'key-changed');
  await bob.page.locator('#confirm-key').click();
  await bob.page.locator('#key-warning').waitFor({ state: 'hidden', timeout: PATIENCE });
  await send(bob, 'to your new key');
  await openConversation(laptop, bob.name);
  await message(laptop, 'to your new key').waitFor({ timeout: PATIENCE });

  // Carol was offline: her contact list (key_changed_at, the new key) tells her at her next login.
  await login(carol, carol.name);
  await carol.page.locator(`#contacts li[data-username="${alice.name}"] .flag`).waitFor({ timeout: PATIENCE });
  await openConversation(carol, alice.name);
  await carol.page.locator('#key-warning').waitFor({ timeout: PATIENCE });
  assert.ok(await carol.page.locator('#send').isDisabled(), 'sending waits for confirmation');

  // The first browser's key is no longer the account's: it says so too.
  await alice.page.reload();
  await alice.page.locator('#no-key').waitFor({ timeout: PATIENCE });
  assertNoConsoleErrors([alice, bob, carol]);
  // Expected: the refused key change with the wrong password (a 401).
  assertNoConsoleErrors([laptop], /status of 401/);
  for (const who of [alice, bob, carol, laptop]) await who.context.close();
});

test('the account page changes the password, logs out everywhere and deletes the account, at a phone\'s width', async () => {
  const phone = { width: 390, height: 844 };
  const name = unique('dave');
  const dave = await person(chromium, server.url, name, { viewport: phone });
  await screenshot(dave, 'phone-welcome');
  await register(dave, name);
  const tablet = await person(chromium, server.url, name);
  await login(tablet, name, 'a wrong password');
  await tablet.page.locator('#notice', { hasText: 'Wrong username or password' }).waitFor({ timeout: PATIENCE });
  await login(tablet, name);
  await tablet.page.locator('#no-key').waitFor({ timeout: PATIENCE });

  await dave.page.locator('#open-account').click();
  const form = dave.page.locator('#password-form');
  await form.locator('[name=old]').fill('not it');
  await form.locator('[name=new]').fill('a brand new passphrase');
  await form.locator('button').click();
  await dave.page.locator('#notice', { hasText: 'current password is wrong' }).waitFor({ timeout: PATIENCE });
  await form.locator('[name=old]').fill('correct horse battery');
  await form.locator('[name=new]').fill('a brand new passphrase');
  await form.locator('button').click();
  await dave.page.locator('#notice', { hasText: 'Password changed' }).waitFor({ timeout: PATIENCE });
  await screenshot(dave, 'phone-account');
  // The other device's token was revoked: its next request finds out.
  await tablet.page.reload();
  await tablet.page.locator('#welcome').waitFor({ timeout: PATIENCE });

  await dave.page.locator('#logout-all').click();
  await dave.page.locator('#welcome').waitFor({ timeout: PATIENCE });
  await login(dave, name, 'a brand new passphrase');
  await connected(dave);
  await dave.page.locator('#open-account').click();
  const deletion = dave.page.locator('#delete-form');
  await deletion.locator('[name=password]').fill('wrong');
  await deletion.locator('button').click();
  await dave.page.locator('#notice', { hasText: 'not deleted' }).waitFor({ timeout: PATIENCE });
  // The refused deletion left the session as it was: connected again.
  await dave.page.locator('#account-back').click();
  await connected(dave);
  await dave.page.locator('#open-account').click();
  await deletion.locator('[name=password]').fill('a brand new passphrase');
  await deletion.locator('button').click();
  await dave.page.locator('#notice', { hasText: 'deleted' }).waitFor({ timeout: PATIENCE });
  await login(dave, name, 'a brand new passphrase');
  await dave.page.locator('#notice', { hasText: 'Wrong username or password' }).waitFor({ timeout: PATIENCE });
  // Expected: the browser logs the refused requests themselves (401s), nothing else.
  assertNoConsoleErrors([dave, tablet], /status of 40[01]/);
  for (const who of [dave, tablet]) await who.context.close();
});

test('a rate-limited person is told how long to wait', async () => {
  const strict = await embeddedServer({ REGISTER_RATE_PER_IP: '1/hour' });
  try {
    const erin = await person(chromium, strict.url, unique('erin'));
    await register(erin, erin.name);
    await erin.page.locator('#logout').click();
    const form = erin.page.locator('#register-form');
    await form.locator('[name=username]').fill(unique('frank'));
    await form.locator('[name=email]').fill('frank@example.com');
    await form.locator('[name=password]').fill('correct horse battery');
    await form.locator('button[type=submit]').click();
    await erin.page.locator('#notice', { hasText: /wait \d+ s/ }).waitFor({ timeout: PATIENCE });
    await erin.context.close();
  } finally {
    await strict.stop();
  }
});

test('the API documentation renders under its own content security policy', async () => {
  const reader = await person(chromium, `${server.url}/docs`, 'docs-reader');
  await reader.page.locator('#swagger-ui .information-container').waitFor({ timeout: PATIENCE });
  await reader.page.locator('#swagger-ui .opblock').first().waitFor({ timeout: PATIENCE });
  // A CSP violation would show as a console error.
  assertNoConsoleErrors([reader]);
  await reader.context.close();
});
