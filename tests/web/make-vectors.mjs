// Writes docs/e2e-vectors.json: messages sealed by the web client's own
// crypto module (web/crypto.js) under fixed keys and nonces, which the Rust
// test tests/api/e2e_vectors.rs decrypts and re-seals byte for byte.
//   node tests/web/make-vectors.mjs
import { writeFileSync } from 'node:fs';
import { seal, toBase64, exportPublicKey } from '../../web/crypto.js';

const subtle = globalThis.crypto.subtle;
// PKCS #8 wrapping of a raw X25519 private key (RFC 8410).
const PKCS8_PREFIX = Uint8Array.from([0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x6e, 0x04, 0x22, 0x04, 0x20]);
const hex = (bytes) => Buffer.from(bytes).toString('hex');
const fill = (seed) => Uint8Array.from({ length: 32 }, (_, i) => (seed * 31 + i * 7) & 0xff);

async function identity(seed) {
  const raw = fill(seed);
  const pkcs8 = new Uint8Array([...PKCS8_PREFIX, ...raw]);
  const privateKey = await subtle.importKey('pkcs8', pkcs8, { name: 'X25519' }, true, ['deriveBits']);
  // The public key, from the private key's JWK (`x`).
  const jwk = await subtle.exportKey('jwk', privateKey);
  const pub = await subtle.importKey('jwk', { kty: 'OKP', crv: 'X25519', x: jwk.x }, { name: 'X25519' }, true, []);
  return { privateKey, publicKey: await exportPublicKey(pub), raw };
}

const alice = await identity(1);
const bob = await identity(2);
const people = { alice, bob };
const cases = [
  ['alice', 'bob', 'AAAAAAAAAAAAAAAAAAAAAA', 'hello, bob', 3],
  ['bob', 'alice', 'b2JmdXNjYXRlZC1pZC0x', '你好，世界 👋 — end to end', 4],
  ['alice', 'bob', 'empty-message', '', 5],
  ['bob', 'alice', 'x'.repeat(64), 'a longer line of text '.repeat(20), 6],
];
const vectors = [];
for (const [from, to, id, text, seed] of cases) {
  const iv = fill(seed).slice(0, 12);
  const content = await seal({ own: people[from], sender: from, recipient: to, recipientKey: people[to].publicKey, id, text, iv });
  vectors.push({ sender: from, recipient: to, id, iv_hex: hex(iv), plaintext: text, content });
}
const out = {
  description: 'secchat end-to-end format v1 (docs/E2E.md): each content is what the sender puts in a message; the recipient decrypts it to plaintext. Private keys are raw X25519 scalars, hex.',
  keys: Object.fromEntries(Object.entries(people).map(([name, p]) => [name, { private_hex: hex(p.raw), public_base64: p.publicKey }])),
  vectors,
};
writeFileSync(new URL('../../docs/e2e-vectors.json', import.meta.url), JSON.stringify(out, null, 2) + '\n');
console.log(`wrote ${vectors.length} vectors`);
