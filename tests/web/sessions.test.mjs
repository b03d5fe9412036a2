// Sessions that last, in Chromium against the embedded server with access
// tokens that live 60 s and WebSockets that close when their token expires:
// the page renews both before they run out, keeps a session across a
// reload (and, when asked, across closing the tab), and says plainly when a
// session is over.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import {
  PATIENCE, acquainted, assertNoConsoleErrors, browser, connected, embeddedServer, message, openConversation, send,
} from './harness.mjs';

let server;
let chromium;
before(async () => {
  server = await embeddedServer({ TOKEN_TTL_SECS: '60', WS_TOKEN_GRACE_SECS: '0' });
  chromium = await browser();
});
after(async () => {
  await chromium?.close();
  await server?.stop();
});

/** The refresh token the page keeps (sessionStorage, or localStorage when kept signed in). */
async function keptSession(who) {
  return who.page.evaluate(() => JSON.parse(sessionStorage.getItem('secchat.session') ?? localStorage.getItem('secchat.session') ?? 'null'));
}

test('five minutes of use on 60-second tokens: nothing fails, the connection stays, a reload keeps the session', async () => {
  const [alice, bob] = await acquainted(chromium, server.url, { persist: true });
  await openConversation(alice, bob.name);
  await openConversation(bob, alice.name);
  const first = await keptSession(alice);
  const started = Date.now();
  let round = 0;
  while (Date.now() - started < 5 * 60_000) {
    round += 1;
    await send(alice, `ping ${round}`);
    await message(bob, `ping ${round}`).waitFor({ timeout: PATIENCE });
    await send(bob, `pong ${round}`);
    await message(alice, `pong ${round}`).waitFor({ timeout: PATIENCE });
    if (round === 6) {
      // Past several token lifetimes: a reload finds the session kept.
      await bob.page.reload();
      await connected(bob);
      await openConversation(bob, alice.name);
    }
    await sleep(20_000);
  }
  assert.ok(round >= 10, `${round} rounds`);
  // HTTP still works (a search), and the connection never dropped to the login page.
  await alice.page.locator('#search').fill(bob.name.slice(0, 5));
  await alice.page.locator('#search-form button').click();
  await alice.page.locator(`#search-results li[data-username="${bob.name}"]`).waitFor({ timeout: PATIENCE });
  await connected(alice);
  await connected(bob);
  assert.ok(await alice.page.locator('#welcome').isHidden());
  const later = await keptSession(alice);
  assert.notEqual(later.refreshToken, first.refreshToken, 'the refresh token was rotated');
  assert.ok(later.expiresAt > Date.now(), 'the kept access token is current');

  // Kept signed in on this browser: a new tab (the old one closed) opens the chat.
  await alice.page.close();
  const again = await alice.context.newPage();
  await again.goto(server.url);
  await again.locator('#chat').waitFor({ state: 'visible', timeout: PATIENCE });
  await again.locator('#connection.online').waitFor({ timeout: PATIENCE });
  // Not kept: bob's new tab asks him to log in.
  await bob.page.close();
  const bobAgain = await bob.context.newPage();
  await bobAgain.goto(server.url);
  await bobAgain.locator('#welcome').waitFor({ state: 'visible', timeout: PATIENCE });
  assertNoConsoleErrors([alice, bob], /401|Unauthorized/);
  await alice.context.close();
  await bob.context.close();
});

test('a session ended elsewhere is said plainly and leads to the login page', async () => {
  const [alice, bob] = await acquainted(chromium, server.url);
  // Alice logs out everywhere from another device.
  const login = await fetch(`${server.url}/token`, {
    method: 'POST',
    body: new URLSearchParams({ username: alice.name, password: 'correct horse battery' }),
  });
  const { access_token: token } = await login.json();
  const out = await fetch(`${server.url}/logout/all`, { method: 'POST', headers: { Authorization: `Bearer ${token}` } });
  assert.equal(out.status, 200);
  await alice.page.locator('#welcome').waitFor({ state: 'visible', timeout: PATIENCE });
  await alice.page.locator('#notice', { hasText: /session/i }).waitFor({ timeout: PATIENCE });
  // Her refresh token is refused too: a reload stays on the login page.
  await alice.page.reload();
  await alice.page.locator('#welcome').waitFor({ state: 'visible', timeout: PATIENCE });
  assert.equal(await keptSession(alice), null);
  assertNoConsoleErrors([alice, bob], /401|Unauthorized/);
  await alice.context.close();
  await bob.context.close();
});

test('a refresh token used twice (a stolen copy) ends the session in the page too', async () => {
  const [alice, bob] = await acquainted(chromium, server.url);
  const stolen = (await keptSession(alice)).refreshToken;
  // The thief refreshes first; alice's page presents the same token when it renews, a reuse.
  const thief = await fetch(`${server.url}/token/refresh`, { method: 'POST', body: new URLSearchParams({ refresh_token: stolen }) });
  assert.equal(thief.status, 200);
  const { access_token: thiefs } = await thief.json();
  await alice.page.evaluate(() => {
    const kept = JSON.parse(sessionStorage.getItem('secchat.session') ?? 'null');
    kept.expiresAt = Date.now(); // due now
    sessionStorage.setItem('secchat.session', JSON.stringify(kept));
  });
  await alice.page.reload();
  await alice.page.locator('#welcome').waitFor({ state: 'visible', timeout: PATIENCE });
  const me = await fetch(`${server.url}/users/me`, { headers: { Authorization: `Bearer ${thiefs}` } });
  assert.equal(me.status, 401, "the thief's token is revoked with the session");
  assertNoConsoleErrors([alice, bob], /401|Unauthorized/);
  await alice.context.close();
  await bob.context.close();
});
