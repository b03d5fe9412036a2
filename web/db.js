// What this browser keeps, in IndexedDB: each account's key pair (the private
// key non-extractable), the contacts' keys it trusts, and the conversations,
// decrypted. Nothing here is sent anywhere.

/**
 * @typedef {{username: string, privateKey: CryptoKey, publicKey: string}} Identity
 * @typedef {{owner: string, contact: string, publicKey: string, at: number}} Pin
 * @typedef {{owner: string, id: string, peer: string, dir: 'in' | 'out', text: string, at: number,
 *   serverId: number | null, after?: number, seq?: number, status?: string, content?: string, caution?: string | null,
 *   broken?: boolean, readSent?: boolean, unseen?: boolean}} Message
 */

const NAME = 'secchat';
const VERSION = 1;

/**
 * @template T
 * @param {IDBRequest<T>} request
 * @returns {Promise<T>}
 */
function promised(request) {
  return new Promise((resolve, reject) => {
    request.onsuccess = () => resolve(request.result);
    request.onerror = () => reject(request.error);
  });
}

export async function openDb() {
  const request = indexedDB.open(NAME, VERSION);
  request.onupgradeneeded = () => {
    const db = request.result;
    db.createObjectStore('identities', { keyPath: 'username' });
    db.createObjectStore('pins', { keyPath: ['owner', 'contact'] });
    const messages = db.createObjectStore('messages', { keyPath: ['owner', 'id'] });
    messages.createIndex('conversation', ['owner', 'peer', 'at']);
    messages.createIndex('pending', ['owner', 'status']);
    messages.createIndex('server', ['owner', 'serverId']);
  };
  return new Db(await promised(request));
}

export class Db {
  /** @param {IDBDatabase} db */
  constructor(db) {
    this.db = db;
  }

  /**
   * @template T
   * @param {string} store
   * @param {IDBTransactionMode} mode
   * @param {(s: IDBObjectStore) => Promise<T> | T} work
   * @returns {Promise<T>}
   */
  async run(store, mode, work) {
    const tx = this.db.transaction(store, mode);
    const done = new Promise((resolve, reject) => {
      tx.oncomplete = resolve;
      tx.onerror = () => reject(tx.error);
      tx.onabort = () => reject(tx.error);
    });
    const result = await work(tx.objectStore(store));
    await done;
    return result;
  }

  /**
   * @param {string} username
   * @returns {Promise<Identity | undefined>}
   */
  identity(username) { return this.run('identities', 'readonly', (s) => promised(s.get(username))); }
  /** @param {Identity} identity */
  saveIdentity(identity) { return this.run('identities', 'readwrite', (s) => promised(s.put(identity))); }

  /**
   * @param {string} owner
   * @param {string} contact
   * @returns {Promise<Pin | undefined>}
   */
  pin(owner, contact) { return this.run('pins', 'readonly', (s) => promised(s.get([owner, contact]))); }
  /**
   * @param {string} owner
   * @param {string} contact
   * @param {string} publicKey
   */
  savePin(owner, contact, publicKey) {
    return this.run('pins', 'readwrite', (s) => promised(s.put({ owner, contact, publicKey, at: Date.now() })));
  }

  /**
   * @param {string} owner
   * @param {string} id
   * @returns {Promise<Message | undefined>}
   */
  message(owner, id) { return this.run('messages', 'readonly', (s) => promised(s.get([owner, id]))); }
  /**
   * Stores a message unless one with its id is there; true when it was new.
   * @param {Message} message
   * @returns {Promise<boolean>}
   */
  addMessage(message) {
    return this.run('messages', 'readwrite', async (s) => {
      if (await promised(s.getKey([message.owner, message.id]))) return false;
      await promised(s.add(message));
      return true;
    });
  }
  /**
   * @param {string} owner
   * @param {string} id
   * @param {(m: Message) => Partial<Message>} change
   * @returns {Promise<Message | null>}
   */
  updateMessage(owner, id, change) {
    return this.run('messages', 'readwrite', async (s) => {
      const m = await promised(s.get([owner, id]));
      if (!m) return null;
      Object.assign(m, change(m));
      await promised(s.put(m));
      return m;
    });
  }
  /**
   * The message the server numbered `serverId` (receipts name that number).
   * @param {string} owner
   * @param {number} serverId
   * @returns {Promise<Message | undefined>}
   */
  async byServerId(owner, serverId) {
    return this.run('messages', 'readonly', (s) => promised(s.index('server').get([owner, serverId])));
  }
  /**
   * @param {string} owner
   * @param {string} peer
   * @returns {Promise<Message[]>}
   */
  conversation(owner, peer) {
    const range = IDBKeyRange.bound([owner, peer, -Infinity], [owner, peer, Infinity]);
    return this.run('messages', 'readonly', (s) => promised(s.index('conversation').getAll(range)));
  }
  /**
   * The latest message of a conversation, by time.
   * @param {string} owner
   * @param {string} peer
   * @returns {Promise<Message | null>}
   */
  lastMessage(owner, peer) {
    const range = IDBKeyRange.bound([owner, peer, -Infinity], [owner, peer, Infinity]);
    return this.run('messages', 'readonly', async (s) => {
      const cursor = await promised(s.index('conversation').openCursor(range, 'prev'));
      return cursor ? cursor.value : null;
    });
  }
  /**
   * @param {string} owner
   * @param {string} status
   * @returns {Promise<Message[]>}
   */
  withStatus(owner, status) {
    return this.run('messages', 'readonly', (s) => promised(s.index('pending').getAll([owner, status])));
  }
  /**
   * Forgets everything kept for `owner` (its account was deleted).
   * @param {string} owner
   */
  async forget(owner) {
    await this.run('identities', 'readwrite', (s) => promised(s.delete(owner)));
    const range = IDBKeyRange.bound([owner], [owner, []]);
    await this.run('pins', 'readwrite', (s) => promised(s.delete(range)));
    await this.run('messages', 'readwrite', (s) => promised(s.delete(range)));
  }
}
