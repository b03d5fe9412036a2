// A malicious signalling path, for nat.test.mjs: a TCP proxy in front of the
// server that passes everything through except the ephemeral frames it
// delivers to one person, which carry WebRTC signalling. It cannot read
// them (they are sealed end to end), so it tries what a server in the
// middle could: alternately it flips bits of the ciphertext where the DTLS
// fingerprint would be, and it replaces the envelope with an offer of its
// own, sealed under its own key, whose fingerprint is its own. The page
// must refuse both. Prints a line per frame it changed.
//
//   node tamper-proxy.mjs LISTEN_HOST:PORT UPSTREAM_HOST:PORT VICTIM_USERNAME

import net from 'node:net';
import { generateIdentity, newMessageId, parseEnvelope, seal, fromBase64, toBase64 } from '../../web/crypto.js';

const [listen, upstream, victim] = process.argv.slice(2);
const [listenHost, listenPort] = listen.split(':');
const [upHost, upPort] = upstream.split(':');
const mallory = await generateIdentity();
// An offer as a browser writes one, but for a DTLS certificate that is the proxy's.
const FORGED_SDP = [
  'v=0', 'o=- 4611731400430051336 2 IN IP4 127.0.0.1', 's=-', 't=0 0', 'a=group:BUNDLE 0', 'a=msid-semantic: WMS',
  'm=application 9 UDP/DTLS/SCTP webrtc-datachannel', 'c=IN IP4 0.0.0.0', 'a=ice-ufrag:mall', 'a=ice-pwd:mallorymallorymallorymallo',
  'a=fingerprint:sha-256 6D:41:4C:4C:4F:52:59:00:6D:41:4C:4C:4F:52:59:00:6D:41:4C:4C:4F:52:59:00:6D:41:4C:4C:4F:52:59:00',
  'a=setup:actpass', 'a=mid:0', 'a=sctp-port:5000', 'a=max-message-size:262144', '',
].join('\r\n');
let changed = 0;

/** A frame to the victim, changed if it is an ephemeral message; the text to send instead, or null. */
async function tamper(text) {
  let frame;
  try {
    frame = JSON.parse(text);
  } catch {
    return null;
  }
  if (!frame || frame.type !== 'p2p_message' || frame.ephemeral !== true || typeof frame.content !== 'string') return null;
  const envelope = parseEnvelope(frame.content);
  changed += 1;
  if (changed % 2 === 1) {
    const ct = fromBase64(envelope.ct);
    for (let i = Math.floor(ct.length / 3); i < Math.min(ct.length, Math.floor(ct.length / 3) + 8); i++) ct[i] ^= 0x5a;
    frame.content = JSON.stringify({ ...envelope, ct: toBase64(ct) });
    console.log(`flipped ${changed}`);
  } else {
    const forged = `\u0000${JSON.stringify({ t: 'rtc', k: 'offer', call: `mallory${changed}`, sdp: FORGED_SDP })}`;
    frame.content = await seal({
      own: mallory, sender: frame.sender_username, recipient: victim, recipientKey: envelope.rpk, id: newMessageId(), text: forged,
    });
    console.log(`resealed ${changed}`);
  }
  return JSON.stringify(frame);
}

/** A server-to-client WebSocket frame (never masked), FIN set. */
function encode(opcode, payload) {
  const n = payload.length;
  const head = n < 126 ? Buffer.from([0x80 | opcode, n])
    : n < 65536 ? Buffer.from([0x80 | opcode, 126, n >> 8, n & 0xff])
      : Buffer.concat([Buffer.from([0x80 | opcode, 127]), (() => { const b = Buffer.alloc(8); b.writeBigUInt64BE(BigInt(n)); return b; })()]);
  return Buffer.concat([head, payload]);
}

net.createServer((client) => {
  const server = net.connect(Number(upPort), upHost);
  let websocket = false;
  let pending = Buffer.alloc(0);
  // Frames are changed in order, one at a time: what the server sent stays in its order.
  let queue = Promise.resolve();
  client.on('data', (chunk) => {
    // No compression, so that the frames can be read.
    server.write(websocket ? chunk : Buffer.from(chunk.toString('latin1').replace(/\r\nSec-WebSocket-Extensions:[^\r]*/gi, ''), 'latin1'));
  });
  server.on('data', (chunk) => {
    if (!websocket) {
      const head = chunk.toString('latin1');
      if (!head.startsWith('HTTP/1.1 101')) {
        client.write(chunk);
        return;
      }
      const end = head.indexOf('\r\n\r\n') + 4;
      client.write(chunk.subarray(0, end));
      websocket = true;
      chunk = chunk.subarray(end);
    }
    pending = Buffer.concat([pending, chunk]);
    for (;;) {
      if (pending.length < 2) return;
      let length = pending[1] & 0x7f;
      let offset = 2;
      if (length === 126) {
        if (pending.length < 4) return;
        length = pending.readUInt16BE(2);
        offset = 4;
      } else if (length === 127) {
        if (pending.length < 10) return;
        length = Number(pending.readBigUInt64BE(2));
        offset = 10;
      }
      if (pending.length < offset + length) return;
      const raw = pending.subarray(0, offset + length);
      const payload = pending.subarray(offset, offset + length);
      pending = pending.subarray(offset + length);
      const textFrame = raw[0] === 0x81;
      queue = queue.then(async () => {
        const replaced = textFrame ? await tamper(payload.toString('utf8')) : null;
        client.write(replaced === null ? raw : encode(0x1, Buffer.from(replaced, 'utf8')));
      });
    }
  });
  const close = () => { client.destroy(); server.destroy(); };
  client.on('error', close).on('close', close);
  server.on('error', close).on('close', close);
}).listen(Number(listenPort), listenHost, () => console.log('listening'));
