// The web messenger in Chromium against the embedded server: people register,
// become contacts and chat through the UI, end to end encrypted.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import {
  PATIENCE, accessibilityViolations, acquainted, logout, assertNoConsoleErrors, befriend, browser, connected, embeddedServer, login, message, waitFor,
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
  await message(alice, secrets[0]).locator('.receipt', { hasText: /delivered|read/ }).waitFor({ timeout: PATIENCE });
  await send(bob, secrets[1]);
  await message(alice, secrets[1]).waitFor({ timeout: PATIENCE });
  await send(bob, secrets[3]);
  await message(alice, secrets[3]).waitFor({ timeout: PATIENCE });
  await screenshot(alice, 'conversation');

  // Bob leaves; alice writes; the server keeps it (sent), and bob's next login decrypts it.
  await logout(bob);
  await bob.page.locator('#welcome').waitFor({ timeout: PATIENCE });
  await alice.page.locator(`#contacts li[data-username="${bob.name}"] .dot:not(.online)`).waitFor({ timeout: PATIENCE });
  await send(alice, secrets[2]);
  await message(alice, secrets[2]).locator('.receipt', { hasText: 'sent' }).waitFor({ timeout: PATIENCE });
  await login(bob, bob.name);
  await bob.page.locator(`#contacts li[data-username="${alice.name}"] .unread`).waitFor({ timeout: PATIENCE });
  await openConversation(bob, alice.name);
  await message(bob, secrets[2]).waitFor({ timeout: PATIENCE });
  await message(alice, secrets[2]).locator('.receipt', { hasText: /delivered|read/ }).waitFor({ timeout: PATIENCE });

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
  await message(alice, secrets[0]).locator('.receipt', { hasText: /delivered|read/ }).waitFor({ timeout: PATIENCE });
  await message(bob, secrets[1]).locator('.receipt', { hasText: /delivered|read/ }).waitFor({ timeout: PATIENCE });
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
  await logout(carol);
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
    await logout(erin);
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

/** The texts of the open conversation, top to bottom. */
const shown = (who) => who.page.$$eval('#messages li .text', (els) => els.map((e) => e.textContent));

/** How the page scrolls: whether the page itself can, and where the message list and box are. */
const layout = (who) => who.page.evaluate(() => {
  const list = /** @type {HTMLElement} */ (document.getElementById('messages'));
  const box = /** @type {HTMLElement} */ (document.getElementById('compose')).getBoundingClientRect();
  return {
    pageScrolls: document.documentElement.scrollHeight > innerHeight + 1,
    boxInView: box.bottom <= innerHeight + 1 && box.top >= 0,
    listScrolls: list.scrollHeight > list.clientHeight,
    atBottom: list.scrollHeight - list.scrollTop - list.clientHeight < 48,
    scrollTop: list.scrollTop,
  };
});

test('200 messages written in bursts by both show in one order on both sides, before and after reloads, and only the conversation scrolls', async () => {
  const [alice, bob] = await acquainted(chromium, server.url);
  await openConversation(alice, bob.name);
  await openConversation(bob, alice.name);
  const burst = async (who, tag, round) => {
    for (let i = 0; i < 10; i++) {
      await who.page.locator('#compose-text').fill(`${tag} ${round}.${i}`);
      await who.page.locator('#compose-text').press('Enter');
    }
  };
  for (let round = 0; round < 10; round++) await Promise.all([burst(alice, 'a', round), burst(bob, 'b', round)]);
  for (const who of [alice, bob]) {
    await waitFor(`${who.name} to show 200 messages`, async () => (await shown(who)).length === 200);
    await who.page.locator('#messages .receipt', { hasText: 'sending' }).first().waitFor({ state: 'detached', timeout: PATIENCE });
  }
  const order = await shown(alice);
  assert.deepEqual(await shown(bob), order, 'both sides show one order');
  for (const tag of ['a', 'b']) {
    const own = order.filter((t) => t.startsWith(`${tag} `));
    const written = Array.from({ length: 100 }, (_, n) => `${tag} ${Math.floor(n / 10)}.${n % 10}`);
    assert.deepEqual(own, written, `${tag}'s messages in the order written`);
  }
  for (const who of [alice, bob]) {
    await who.page.reload();
    await connected(who);
    await openConversation(who, who === alice ? bob.name : alice.name);
    await waitFor(`${who.name}'s history after a reload`, async () => (await shown(who)).length === 200);
    assert.deepEqual(await shown(who), order, `${who.name}'s order after a reload`);
  }

  for (const viewport of [{ width: 1280, height: 800 }, { width: 390, height: 844 }]) {
    await bob.page.setViewportSize(viewport);
    let seen = await layout(bob);
    assert.equal(seen.pageScrolls, false, `the page itself does not scroll at ${viewport.width}px`);
    assert.ok(seen.boxInView, `the message box is in view at ${viewport.width}px`);
    assert.ok(seen.listScrolls && seen.atBottom, `the conversation scrolls, shown at its end (${viewport.width}px)`);
    // At the end: a new message keeps the view at the end.
    await send(alice, `at the end ${viewport.width}`);
    await message(bob, `at the end ${viewport.width}`).waitFor({ timeout: PATIENCE });
    await waitFor('the view to follow', async () => (await layout(bob)).atBottom);
    // Reading further up: the place is kept, and a button says there is more.
    await bob.page.locator('#messages').evaluate((el) => { el.scrollTop = 0; });
    await send(alice, `while reading ${viewport.width}`);
    await message(bob, `while reading ${viewport.width}`).waitFor({ state: 'attached', timeout: PATIENCE });
    await bob.page.locator('#new-messages').waitFor({ state: 'visible', timeout: PATIENCE });
    seen = await layout(bob);
    assert.ok(!seen.atBottom && seen.scrollTop < 5, 'the place one was reading stays put');
    await screenshot(bob, `new-messages-${viewport.width}`);
    await bob.page.locator('#new-messages').click();
    await waitFor('the view at the end', async () => (await layout(bob)).atBottom);
    assert.ok(await bob.page.locator('#new-messages').isHidden());
  }
  assertNoConsoleErrors([alice, bob]);
  await alice.context.close();
  await bob.context.close();
});

test('the box empties at once: nothing typed right after Enter is lost, and a double Enter sends once', async () => {
  const [alice, bob] = await acquainted(chromium, server.url);
  await openConversation(alice, bob.name);
  await openConversation(bob, alice.name);
  const box = alice.page.locator('#compose-text');
  for (let i = 0; i < 6; i++) {
    await box.pressSequentially(`first ${i}`);
    await box.press('Enter');
    await box.pressSequentially(`second ${i}`, { delay: 0 });
    assert.equal(await box.inputValue(), `second ${i}`, 'what was typed after Enter stays in the box');
    await box.press('Enter');
    await box.press('Enter'); // a second, quick Enter: nothing more to send
  }
  await waitFor('12 messages at bob', async () => (await shown(bob)).length === 12);
  await alice.page.waitForTimeout(1000);
  assert.equal((await shown(alice)).length, 12, 'each once');
  assert.deepEqual(await shown(bob), Array.from({ length: 6 }, (_, i) => [`first ${i}`, `second ${i}`]).flat());

  // Near the limit a counter shows; over it nothing is cut, and Send refuses with a reason.
  const long = 'x'.repeat(16_001);
  await box.fill(long);
  await alice.page.locator('#counter.over').waitFor({ timeout: PATIENCE });
  await box.press('Enter');
  await alice.page.locator('#notice', { hasText: 'too long' }).waitFor({ timeout: PATIENCE });
  assert.equal((await box.inputValue()).length, long.length, 'a long paste is kept whole');
  assertNoConsoleErrors([alice, bob]);
  await alice.context.close();
  await bob.context.close();
});

/** Pretends the page went to the background (or came back), as a switched tab does. */
async function setVisible(who, visible) {
  await who.page.evaluate((v) => {
    Object.defineProperty(document, 'visibilityState', { value: v ? 'visible' : 'hidden', configurable: true });
    Object.defineProperty(document, 'hidden', { value: !v, configurable: true });
    document.dispatchEvent(new Event('visibilitychange'));
  }, visible);
}

test('requests show pending until accepted, arrive live with a badge, and contacts follow the latest conversation with a preview', async () => {
  const alice = await person(chromium, server.url, unique('alice'));
  const bob = await person(chromium, server.url, unique('bob'));
  const carol = await person(chromium, server.url, unique('carol'));
  for (const who of [alice, bob, carol]) {
    await register(who, who.name);
    await connected(who);
  }
  // Alice asks bob: on her side bob is a request, not a contact to write to.
  await alice.page.locator('#search').fill(bob.name);
  await alice.page.locator('#search-form button').click();
  const asked = alice.page.waitForResponse((r) => r.url().endsWith('/me/contacts/') && r.request().method() === 'POST');
  await alice.page.locator(`#search-results li[data-username="${bob.name}"] button`).click();
  await asked;
  const sentAt = Date.now();
  await bob.page.locator(`#requests li[data-username="${alice.name}"]`).waitFor({ timeout: PATIENCE });
  const latency = Date.now() - sentAt;
  console.log(`a friend request appeared at the addressee ${latency} ms after it was sent`);
  assert.ok(latency < 1_000, `the request showed within 1 s (${latency} ms)`);
  assert.equal(await bob.page.locator('#requests-badge').textContent(), '1');
  await alice.page.locator(`#contacts li[data-username="${bob.name}"] .preview.pending`).waitFor({ timeout: PATIENCE });
  await openConversation(alice, bob.name);
  await alice.page.locator('#peer-status', { hasText: 'once they accept' }).waitFor({ timeout: PATIENCE });
  assert.ok(await alice.page.locator('#compose-text').isDisabled(), 'nothing to deliver until bob accepts');
  await bob.page.locator(`#requests li[data-username="${alice.name}"] button`, { hasText: 'Accept' }).click();
  await bob.page.locator('#requests-badge').waitFor({ state: 'hidden', timeout: PATIENCE });
  await alice.page.locator('#peer-status', { hasText: 'online' }).waitFor({ timeout: PATIENCE });
  assert.ok(await alice.page.locator('#compose-text').isEnabled());

  // Carol too; then whoever wrote last comes first, with what they wrote.
  await befriend(carol, alice);
  await openConversation(carol, alice.name);
  await send(carol, 'from carol, first');
  await alice.page.locator(`#contacts li[data-username="${carol.name}"] .preview`, { hasText: 'from carol, first' }).waitFor({ timeout: PATIENCE });
  await openConversation(bob, alice.name);
  await send(bob, 'from bob, later');
  await alice.page.locator(`#contacts li[data-username="${bob.name}"] .preview`, { hasText: 'from bob, later' }).waitFor({ timeout: PATIENCE });
  const order = await alice.page.$$eval('#contacts li', (els) => els.map((e) => /** @type {HTMLElement} */ (e).dataset.username));
  assert.deepEqual(order, [bob.name, carol.name]);
  await screenshot(alice, 'contacts-by-activity');
  assertNoConsoleErrors([alice, bob, carol]);
  for (const who of [alice, bob, carol]) await who.context.close();
});

test('typing shows, is never stored, and is paced; read receipts come when a message is seen; notifications and the title count what is missed', async () => {
  const [alice, bob] = await acquainted(chromium, server.url);
  await openConversation(alice, bob.name);
  await openConversation(bob, alice.name);
  // Typing: bob sees it; the notice is an ephemeral, sealed frame, at most one per 3 s.
  await alice.page.locator('#compose-text').pressSequentially('hello there, bob', { delay: 60 });
  await bob.page.locator('#peer-status', { hasText: 'typing' }).waitFor({ timeout: PATIENCE });
  const typingFrames = alice.wire.filter((w) => w.includes('"ephemeral":true'));
  assert.equal(typingFrames.length, 1, 'one notice for a second of typing');
  const envelope = JSON.parse(JSON.parse(typingFrames[0]).content);
  assert.ok(envelope.ct && !typingFrames[0].includes('typing'), 'sealed: the server cannot tell it is typing');
  await alice.page.locator('#compose-text').press('Enter');
  await message(bob, 'hello there, bob').waitFor({ timeout: PATIENCE });
  assert.ok(!server.stored().includes(envelope.id), 'the typing notice was never stored');

  // Seen at once (open and visible): alice's message says read.
  await message(alice, 'hello there, bob').locator('.receipt', { hasText: 'read' }).waitFor({ timeout: PATIENCE });
  await send(bob, 'hi alice! noon at the usual place?');
  await message(alice, 'hi alice! noon at the usual place?').waitFor({ timeout: PATIENCE });
  await bob.page.waitForTimeout(3_000); // his last notice (while writing that) was under 3 s ago
  await bob.page.locator('#compose-text').pressSequentially('yes, and bring', { delay: 40 });
  await alice.page.locator('#peer-status', { hasText: 'typing' }).waitFor({ timeout: PATIENCE });
  await alice.page.setViewportSize({ width: 1280, height: 720 });
  await screenshot(alice, 'typing-and-read');
  await bob.page.locator('#compose-text').fill('');

  // Bob's tab in the background: a notification, the count in the title, and no read receipt yet.
  await bob.context.grantPermissions(['notifications']);
  await bob.page.evaluate(() => {
    const seen = [];
    Object.assign(window, { seenNotices: seen });
    window.Notification = /** @type {any} */ (class { constructor(title) { seen.push(title); } static permission = 'granted'; close() {} });
  });
  await setVisible(bob, false);
  await send(alice, 'while you were away');
  await waitFor('a notification', async () => (await bob.page.evaluate(() => /** @type {any} */ (window).seenNotices.length)) === 1);
  await waitFor('the unread count in the title', async () => (await bob.page.title()) === '(1) secchat');
  await message(alice, 'while you were away').locator('.receipt', { hasText: /delivered/ }).waitFor({ timeout: PATIENCE });
  await bob.page.waitForTimeout(1500);
  assert.match(await message(alice, 'while you were away').locator('.receipt').textContent(), /delivered/, 'not read while hidden');
  await setVisible(bob, true);
  await message(alice, 'while you were away').locator('.receipt', { hasText: 'read' }).waitFor({ timeout: PATIENCE });
  await waitFor('the title without a count', async () => (await bob.page.title()) === 'secchat');

  // What is unread survives a reload, until the conversation is on screen.
  await setVisible(bob, false);
  await send(alice, 'unread across a reload');
  await waitFor('the unread count in the title', async () => (await bob.page.title()) === '(1) secchat');
  await bob.page.reload();
  await connected(bob);
  await bob.page.locator(`#contacts li[data-username="${alice.name}"] .unread`, { hasText: '1' }).waitFor({ timeout: PATIENCE });
  assert.equal(await bob.page.title(), '(1) secchat');
  await openConversation(bob, alice.name);
  await message(alice, 'unread across a reload').locator('.receipt', { hasText: 'read' }).waitFor({ timeout: PATIENCE });
  await waitFor('the title without a count after the reload', async () => (await bob.page.title()) === 'secchat');
  assertNoConsoleErrors([alice, bob]);
  await alice.context.close();
  await bob.context.close();
});

test('removing asks first, short searches say why, and logging out can erase this browser\'s copy', async () => {
  const [alice, bob] = await acquainted(chromium, server.url);
  await alice.page.locator('#search').fill('ab');
  await alice.page.locator('#search-form button').click();
  await alice.page.locator('#search-results', { hasText: 'at least 3 characters' }).waitFor({ timeout: PATIENCE });
  await openConversation(alice, bob.name);
  alice.page.once('dialog', (d) => d.dismiss());
  await alice.page.locator('#remove-contact').click();
  await alice.page.waitForTimeout(300);
  assert.equal(await alice.page.locator(`#contacts li[data-username="${bob.name}"]`).count(), 1, 'kept when not confirmed');
  await send(alice, 'something to erase');
  await message(alice, 'something to erase').waitFor({ timeout: PATIENCE });
  await logout(alice, { wipe: true });
  const left = await alice.page.evaluate(() => new Promise((resolve) => {
    const open = indexedDB.open('secchat');
    open.onsuccess = () => {
      const tx = open.result.transaction(['messages', 'identities'], 'readonly');
      const count = tx.objectStore('messages').count();
      const keys = tx.objectStore('identities').count();
      tx.oncomplete = () => resolve([count.result, keys.result]);
    };
  }));
  assert.deepEqual(left, [0, 0], 'no conversation and no key left in this browser');
  // Bob removes alice, confirming.
  await openConversation(bob, alice.name);
  bob.page.once('dialog', (d) => d.accept());
  await bob.page.locator('#remove-contact').click();
  await bob.page.locator(`#contacts li[data-username="${alice.name}"]`).waitFor({ state: 'detached', timeout: PATIENCE });
  assertNoConsoleErrors([alice, bob]);
  await alice.context.close();
  await bob.context.close();
});

test('a key replaced from another browser: this one says so and stops writing under the old key', async () => {
  const [alice, bob] = await acquainted(chromium, server.url);
  const elsewhere = await person(chromium, server.url, alice.name);
  await login(elsewhere, alice.name);
  await elsewhere.page.locator('#no-key').waitFor({ state: 'visible', timeout: PATIENCE });
  await elsewhere.page.locator('#make-key-form [name=password]').fill('correct horse battery');
  await elsewhere.page.locator('#make-key').click();
  await elsewhere.page.locator('#chat').waitFor({ state: 'visible', timeout: PATIENCE });
  // The first browser notices (at its next check, within the contact refresh) and stops.
  await alice.page.locator('#no-key-reason', { hasText: 'replaced from another browser' }).waitFor({ state: 'visible', timeout: 45_000 });
  assert.ok(await alice.page.locator('#chat').isHidden());
  const sentBefore = alice.wire.length;
  await alice.page.waitForTimeout(1000);
  assert.ok(!alice.wire.slice(sentBefore).some((w) => w.includes('"recipient_username"')), 'nothing sent under the old key');
  assertNoConsoleErrors([alice, bob, elsewhere]);
  for (const who of [alice, bob, elsewhere]) await who.context.close();
});

test('lookalike names and weak passwords are refused with a clear message', async () => {
  const suffix = unique('');
  const first = await person(chromium, server.url, 'first');
  await register(first, `alice${suffix}`);
  const third = await person(chromium, server.url, 'third');
  await register(third, `paypaI${suffix}`);
  const second = await person(chromium, server.url, 'second');
  const form = second.page.locator('#register-form');
  const attempt = async (username, password) => {
    await form.locator('[name=username]').fill(username);
    await form.locator('[name=email]').fill(`${username.toLowerCase()}-2@example.com`);
    await form.locator('[name=password]').fill(password);
    await form.locator('button[type=submit]').click();
  };
  for (const lookalike of [`aIice${suffix}`, `paypal${suffix}`]) {
    await attempt(lookalike, 'correct horse battery');
    await second.page.locator('#notice', { hasText: 'look alike' }).waitFor({ timeout: PATIENCE });
    await second.page.locator('#notice', { hasText: lookalike }).waitFor({ timeout: PATIENCE });
  }
  await attempt(`carol${suffix}`, '12345678');
  await second.page.locator('#notice', { hasText: 'most commonly used passwords' }).waitFor({ timeout: PATIENCE });
  assert.ok(await second.page.locator('#welcome').isVisible());
  assertNoConsoleErrors([first, second, third], /400|422|Bad Request|Unprocessable/);
  for (const who of [first, second, third]) await who.context.close();
});

test('axe-core finds no accessibility violation on any screen, at desktop and phone widths', async () => {
  const [alice, bob] = await acquainted(chromium, server.url);
  const found = [];
  const check = async (who, screen) => {
    for (const v of await accessibilityViolations(who)) found.push(`${screen}: ${v}`);
  };
  const stranger = await person(chromium, server.url, 'stranger');
  await check(stranger, 'welcome');
  await openConversation(alice, bob.name);
  await send(alice, 'checking how this reads');
  await message(alice, 'checking how this reads').locator('.receipt', { hasText: /delivered|read/ }).waitFor({ timeout: PATIENCE });
  await alice.page.locator('#search').fill(bob.name);
  await alice.page.locator('#search-form button').click();
  await alice.page.locator(`#search-results li[data-username="${bob.name}"]`).waitFor({ timeout: PATIENCE });
  await check(alice, 'chat');
  await bob.page.setViewportSize({ width: 390, height: 844 });
  await openConversation(bob, alice.name);
  await check(bob, 'chat at phone width');
  await alice.page.locator('#open-account').click();
  await alice.page.locator('#account').waitFor({ state: 'visible', timeout: PATIENCE });
  await check(alice, 'account');
  await alice.page.locator('#account-back').click();
  await alice.page.locator('#logout').click();
  await alice.page.locator('#logout-dialog').waitFor({ state: 'visible', timeout: PATIENCE });
  await check(alice, 'logout dialog');
  assert.deepEqual(found, []);
  for (const who of [alice, bob, stranger]) await who.context.close();
});
