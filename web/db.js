// What this browser keeps, in IndexedDB: each account's key pair (the private
// key non-extractable), the contacts' keys it trusts, and the conversations,
// decrypted. Nothing here is sent anywhere.

const NAME = 'secchat';
const VERSION = 1;

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

class Db {
  constructor(db) {
    this.db = db;
  }

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

  identity(username) { return this.run('identities', 'readonly', (s) => promised(s.get(username))); }
  saveIdentity(identity) { return this.run('identities', 'readwrite', (s) => promised(s.put(identity))); }

  pin(owner, contact) { return this.run('pins', 'readonly', (s) => promised(s.get([owner, contact]))); }
  savePin(owner, contact, publicKey) {
    return this.run('pins', 'readwrite', (s) => promised(s.put({ owner, contact, publicKey, at: Date.now() })));
  }

  message(owner, id) { return this.run('messages', 'readonly', (s) => promised(s.get([owner, id]))); }
  /** Stores a message unless one with its id is there; true when it was new. */
  addMessage(message) {
    return this.run('messages', 'readwrite', async (s) => {
      if (await promised(s.getKey([message.owner, message.id]))) return false;
      await promised(s.add(message));
      return true;
    });
  }
  updateMessage(owner, id, change) {
    return this.run('messages', 'readwrite', async (s) => {
      const m = await promised(s.get([owner, id]));
      if (!m) return null;
      Object.assign(m, change(m));
      await promised(s.put(m));
      return m;
    });
  }
  /** The message the server numbered `serverId` (receipts name that number). */
  async byServerId(owner, serverId) {
    return this.run('messages', 'readonly', (s) => promised(s.index('server').get([owner, serverId])));
  }
  conversation(owner, peer) {
    const range = IDBKeyRange.bound([owner, peer, -Infinity], [owner, peer, Infinity]);
    return this.run('messages', 'readonly', (s) => promised(s.index('conversation').getAll(range)));
  }
  /** The latest message of a conversation, by time. */
  lastMessage(owner, peer) {
    const range = IDBKeyRange.bound([owner, peer, -Infinity], [owner, peer, Infinity]);
    return this.run('messages', 'readonly', async (s) => {
      const cursor = await promised(s.index('conversation').openCursor(range, 'prev'));
      return cursor ? cursor.value : null;
    });
  }
  withStatus(owner, status) {
    return this.run('messages', 'readonly', (s) => promised(s.index('pending').getAll([owner, status])));
  }
  /** Forgets everything kept for `owner` (its account was deleted). */
  async forget(owner) {
    await this.run('identities', 'readwrite', (s) => promised(s.delete(owner)));
    const range = IDBKeyRange.bound([owner], [owner, []]);
    await this.run('pins', 'readwrite', (s) => promised(s.delete(range)));
    await this.run('messages', 'readwrite', (s) => promised(s.delete(range)));
  }
}
