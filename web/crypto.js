// The end-to-end encryption of message bodies (docs/E2E.md has the wire
// format and test vectors). WebCrypto only, so the same module runs in the
// browser and under Node (which generates the test vectors).

const subtle = globalThis.crypto.subtle;
const encoder = new TextEncoder();
const decoder = new TextDecoder('utf-8', { fatal: true });

/** The format's version, named in every envelope, key info and AAD. */
export const VERSION = 1;
const LABEL = 'secchat-e2e-v1';

export class CryptoError extends Error {}

/** @param {ArrayBuffer | Uint8Array} bytes */
export function toBase64(bytes) {
  let text = '';
  for (const b of new Uint8Array(bytes)) text += String.fromCharCode(b);
  return btoa(text);
}

/** @param {unknown} text */
export function fromBase64(text) {
  if (typeof text !== 'string' || !/^[A-Za-z0-9+/]*={0,2}$/.test(text) || text.length % 4 !== 0) {
    throw new CryptoError('not base64');
  }
  const raw = atob(text);
  const bytes = new Uint8Array(raw.length);
  for (let i = 0; i < raw.length; i++) bytes[i] = raw.charCodeAt(i);
  return bytes;
}

/** A new message id: 16 random bytes, base64url without padding (22 characters). */
export function newMessageId() {
  const bytes = globalThis.crypto.getRandomValues(new Uint8Array(16));
  return toBase64(bytes).replaceAll('+', '-').replaceAll('/', '_').replace(/=+$/, '');
}

/**
 * A new identity key pair. The private key cannot be exported: it stays in
 * the browser's key store, usable only to derive shared secrets.
 */
export async function generateIdentity() {
  const pair = /** @type {CryptoKeyPair} */ (await subtle.generateKey({ name: 'X25519' }, false, ['deriveBits']));
  return { privateKey: pair.privateKey, publicKey: await exportPublicKey(pair.publicKey) };
}

/**
 * The text form of a public key: standard base64 of its 32 raw bytes.
 * @param {CryptoKey} key
 */
export async function exportPublicKey(key) {
  return toBase64(await subtle.exportKey('raw', key));
}

/**
 * Whether `text` is a public key of this format.
 * @param {unknown} text
 */
export function isPublicKey(text) {
  try {
    return fromBase64(text).length === 32;
  } catch {
    return false;
  }
}

/** @param {string} text */
async function importPublicKey(text) {
  const raw = fromBase64(text);
  if (raw.length !== 32) throw new CryptoError('a public key is 32 bytes');
  return subtle.importKey('raw', raw, { name: 'X25519' }, false, []);
}

/**
 * `u16` big-endian length, then the UTF-8 bytes: fields that cannot run into each other.
 * @param {...(string | Uint8Array)} fields
 */
function lengthPrefixed(...fields) {
  const parts = fields.map((f) => (typeof f === 'string' ? encoder.encode(f) : f));
  const out = new Uint8Array(parts.reduce((n, p) => n + 2 + p.length, 0));
  let at = 0;
  for (const p of parts) {
    if (p.length > 0xffff) throw new CryptoError('field too long');
    out[at] = p.length >> 8;
    out[at + 1] = p.length & 0xff;
    out.set(p, at + 2);
    at += 2 + p.length;
  }
  return out;
}

/**
 * The AES-256-GCM key for messages from the owner of `senderKey` to the owner of `recipientKey`.
 * @param {CryptoKey} ownPrivateKey
 * @param {string} peerPublicKey
 * @param {string} senderKey
 * @param {string} recipientKey
 */
async function messageKey(ownPrivateKey, peerPublicKey, senderKey, recipientKey) {
  const shared = new Uint8Array(
    await subtle.deriveBits({ name: 'X25519', public: await importPublicKey(peerPublicKey) }, ownPrivateKey, 256),
  );
  // A low-order public key makes the secret all zeros: nothing secret about it.
  if (shared.every((b) => b === 0)) throw new CryptoError('the public key is not usable');
  const ikm = await subtle.importKey('raw', shared, 'HKDF', false, ['deriveKey']);
  const info = lengthPrefixed(`${LABEL} key`, fromBase64(senderKey), fromBase64(recipientKey));
  return subtle.deriveKey(
    { name: 'HKDF', hash: 'SHA-256', salt: new Uint8Array(0), info },
    ikm,
    { name: 'AES-GCM', length: 256 },
    false,
    ['encrypt', 'decrypt'],
  );
}

/**
 * @param {string} sender
 * @param {string} recipient
 * @param {string} id
 */
function additionalData(sender, recipient, id) {
  return lengthPrefixed(LABEL, sender, recipient, id);
}

/**
 * Encrypts `text` from `sender` (whose key pair is `own`) to `recipient`
 * (whose public key is `recipientKey`); returns the envelope, the JSON text
 * that travels as the message's content. `iv` is for test vectors only.
 * @param {{own: {privateKey: CryptoKey, publicKey: string}, sender: string, recipient: string,
 *   recipientKey: string, id: string, text: string, iv?: Uint8Array<ArrayBuffer>}} message
 */
export async function seal({ own, sender, recipient, recipientKey, id, text, iv }) {
  const key = await messageKey(own.privateKey, recipientKey, own.publicKey, recipientKey);
  iv = iv ?? globalThis.crypto.getRandomValues(new Uint8Array(12));
  const ct = await subtle.encrypt(
    { name: 'AES-GCM', iv, additionalData: additionalData(sender, recipient, id) },
    key,
    encoder.encode(text),
  );
  return JSON.stringify({
    v: VERSION,
    id,
    spk: own.publicKey,
    rpk: recipientKey,
    iv: toBase64(iv),
    ct: toBase64(ct),
  });
}

/**
 * The envelope's fields, or a CryptoError when `content` is not one.
 * @param {string} content
 * @returns {{v: number, id: string, spk: string, rpk: string, iv: string, ct: string}}
 */
export function parseEnvelope(content) {
  let e;
  try {
    e = JSON.parse(content);
  } catch {
    throw new CryptoError('not an encrypted message');
  }
  const fields = ['id', 'spk', 'rpk', 'iv', 'ct'];
  if (e === null || typeof e !== 'object' || e.v !== VERSION || fields.some((f) => typeof e[f] !== 'string')) {
    throw new CryptoError('not an encrypted message of this version');
  }
  if (e.id.length === 0 || e.id.length > 64) throw new CryptoError('bad message id');
  return e;
}

/**
 * Decrypts an envelope that `sender` sent to `recipient` (whose key pair is
 * `own`). Returns `{id, text, senderKey}`; the caller checks `senderKey`
 * against the key it trusts for `sender`. Anything altered, replayed to
 * someone else or under another name fails with a CryptoError.
 * @param {{own: {privateKey: CryptoKey, publicKey: string}, sender: string, recipient: string, content: string}} message
 */
export async function open({ own, sender, recipient, content }) {
  const e = parseEnvelope(content);
  if (e.rpk !== own.publicKey) {
    throw new CryptoError('encrypted for another key of yours (made on another browser, or replaced)');
  }
  const iv = fromBase64(e.iv);
  if (iv.length !== 12) throw new CryptoError('bad nonce');
  const key = await messageKey(own.privateKey, e.spk, e.spk, e.rpk);
  let plain;
  try {
    plain = await subtle.decrypt(
      { name: 'AES-GCM', iv, additionalData: additionalData(sender, recipient, e.id) },
      key,
      fromBase64(e.ct),
    );
  } catch {
    throw new CryptoError('the message was altered or is not meant for this conversation');
  }
  return { id: e.id, text: decoder.decode(plain), senderKey: e.spk };
}

/**
 * A short fingerprint of a public key for people to compare: SHA-256, first 10 bytes, in groups.
 * @param {string} publicKey
 */
export async function fingerprint(publicKey) {
  const digest = new Uint8Array(await subtle.digest('SHA-256', fromBase64(publicKey)));
  const hex = [...digest.slice(0, 10)].map((b) => b.toString(16).padStart(2, '0')).join('');
  return (hex.match(/.{4}/g) ?? []).join(' ');
}
