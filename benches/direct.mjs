// Messages over a direct WebRTC channel against the server's relay, as the
// web messenger sends them: two Chromium pages (Playwright, Debian's
// Chromium) on this machine, the embedded server (release build), rate
// limits on as by default. Prints one JSON line per path and phase: messages
// a second, the latency from Send to the recipient's screen (p50, p99), and
// the server's CPU per message.
//
//   (cd tests/web && npm ci) && cargo build --release && node benches/direct.mjs
//
// Phases: `one-by-one` (30 messages, each waiting for the last to arrive),
// `burst` (50 at once, under the relay's client-side burst of 60) and
// `sustained` (300 at once: the relay is paced to 8 frames a second by the
// page, to stay inside the server's per-connection budget; a channel is not).

import path from 'node:path';
import { readFileSync, readdirSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';

process.env.SECCHAT_BIN ??= path.resolve(import.meta.dirname, '../target/release/secchat');
const { acquainted, browser, embeddedServer, openConversation, pathShown } = await import('../tests/web/harness.mjs');

/** The process's CPU time so far, in seconds: every thread's time on a CPU (schedstat, nanoseconds). */
function cpu(pid) {
  return readdirSync(`/proc/${pid}/task`)
    .map((task) => Number(readFileSync(`/proc/${pid}/task/${task}/schedstat`, 'utf8').split(' ')[0]))
    .reduce((a, b) => a + b, 0) / 1e9;
}

const quantile = (sorted, q) => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];

async function phase(server, alice, bob, name, count, oneByOne) {
  const texts = Array.from({ length: count }, (_, i) => `${name} ${i} ${Math.random().toString(36).slice(2)}`);
  const startCpu = cpu(server.pid);
  const started = Date.now();
  const sent = {};
  const write = (batch) => alice.page.evaluate((batch) => {
    const box = /** @type {HTMLTextAreaElement} */ (document.getElementById('compose-text'));
    const form = /** @type {HTMLFormElement} */ (document.getElementById('compose'));
    const at = {};
    for (const text of batch) {
      box.value = text;
      at[text] = Date.now();
      form.requestSubmit();
    }
    return at;
  }, batch);
  const arrived = () => bob.page.evaluate((texts) => texts.filter((t) => window.__arrivals[t]).length, texts);
  if (oneByOne) {
    for (const text of texts) {
      Object.assign(sent, await write([text]));
      while (!(await bob.page.evaluate((t) => !!window.__arrivals[t], text))) await sleep(5);
    }
  } else {
    Object.assign(sent, await write(texts));
    while ((await arrived()) < count) await sleep(20);
  }
  const elapsed = (Date.now() - started) / 1000;
  const arrivals = await bob.page.evaluate((texts) => texts.map((t) => window.__arrivals[t]), texts);
  const latencies = texts.map((t, i) => arrivals[i] - sent[t]).sort((a, b) => a - b);
  const serverCpu = cpu(server.pid) - startCpu;
  return {
    phase: name,
    messages: count,
    msg_per_s: Math.round(count / elapsed),
    latency_p50_ms: quantile(latencies, 0.5),
    latency_p99_ms: quantile(latencies, 0.99),
    server_cpu_us_per_msg: Math.round((serverCpu * 1e6) / count),
  };
}

for (const path of ['direct', 'server']) {
  const settings = path === 'direct' ? { TURN_SECRET: 'bench-secret', TURN_URIS: 'stun:127.0.0.1:9' } : {};
  const server = await embeddedServer(settings);
  const chromium = await browser({ args: ['--disable-features=WebRtcHideLocalIpsWithMdns', '--allow-loopback-in-peer-connection'] });
  const [alice, bob] = await acquainted(chromium, server.url);
  await openConversation(alice, bob.name);
  await openConversation(bob, alice.name);
  await pathShown(alice, path);
  await pathShown(bob, path);
  await bob.page.evaluate(() => {
    window.__arrivals = {};
    new MutationObserver(() => {
      for (const el of document.querySelectorAll('#messages li.in .text')) window.__arrivals[el.textContent] ??= Date.now();
    }).observe(document.getElementById('messages'), { childList: true, subtree: true });
  });
  for (const [name, count, oneByOne] of [['one-by-one', 30, true], ['burst', 50, false], ['sustained', 300, false]]) {
    // Each phase starts with the relay's client-side budget full again.
    await sleep(8_000);
    console.log(JSON.stringify({ path, ...(await phase(server, alice, bob, name, count, oneByOne)) }));
  }
  await chromium.close();
  await server.stop();
}
