// Direct links: a WebRTC data channel per conversation, so that messages go
// from browser to browser and the server relays only when there is no
// channel. The page signals through the server (offers, answers, ICE
// candidates and hang-ups as sealed control messages, docs/E2E.md), so the
// DTLS fingerprints that authenticate the channel are as trustworthy as the
// end-to-end keys: the server can drop signals, not alter them.

/** After a link failed, no new attempt with that peer for this long (the relay carries on). */
const RETRY_AFTER_MS = 30_000;
/** A request for an offer is asked again no sooner than this. */
const CALL_EVERY_MS = 10_000;
/** A link whose ICE lost its path and has not found it again in this long is given up. */
const DISCONNECTED_MS = 4_000;
/** A link not open this long after it was started is given up (no answer, or no pair of candidates works). */
const CONNECT_MS = 20_000;
/** The largest frame a channel takes from a peer (a sealed message of the largest text, with room). */
const MAX_FRAME_BYTES = 64 * 1024;

/**
 * The path a link's data flows on: `direct` (a host or server-reflexive
 * pair: browser to browser through the NATs) or `turn` (through the TURN
 * server's relay).
 * @typedef {'direct' | 'turn'} Path
 * @typedef {{t: 'rtc', k: 'call' | 'offer' | 'answer' | 'candidate' | 'bye', call?: string, sdp?: string,
 *   candidate?: RTCIceCandidateInit | null}} Signal
 */

class Link {
  /**
   * @param {string} call
   * @param {RTCPeerConnection} pc
   */
  constructor(call, pc) {
    this.call = call;
    this.pc = pc;
    /** @type {RTCDataChannel | null} */
    this.channel = null;
    /** @type {Path | null} */
    this.path = null;
    /** Candidates that came before the description they belong to. @type {RTCIceCandidateInit[]} */
    this.early = [];
    /**
     * Our candidates found before our offer or answer was signalled: they go
     * after it, or the peer would have no attempt to add them to.
     * @type {RTCIceCandidateInit[] | null}
     */
    this.unsaid = [];
    /** @type {ReturnType<typeof setTimeout> | undefined} */
    this.lost = undefined;
    /** @type {ReturnType<typeof setTimeout> | undefined} */
    this.deadline = undefined;
  }

  get open() {
    return this.channel?.readyState === 'open' && this.path !== null;
  }
}

export class DirectLinks {
  /**
   * @param {string} me this user's name: the one of two names that sorts first makes the offers
   * @param {{
   *   iceServers: () => Promise<RTCIceServer[] | null>,
   *   signal: (peer: string, payload: Signal) => Promise<void>,
   *   frame: (peer: string, frame: any) => void,
   *   changed: (peer: string, open: boolean) => void,
   * }} on
   */
  constructor(me, on) {
    this.me = me;
    this.on = on;
    /** @type {Map<string, Link>} */
    this.links = new Map();
    /** Peer -> when a new attempt may start. @type {Map<string, number>} */
    this.resting = new Map();
    /** Peer -> when an offer was last asked for. @type {Map<string, number>} */
    this.asked = new Map();
    this.stopped = false;
  }

  /**
   * The path to `peer` if a channel is open, else null (the relay's turn).
   * @param {string} peer
   * @returns {Path | null}
   */
  path(peer) {
    const link = this.links.get(peer);
    return link?.open ? link.path : null;
  }

  /**
   * Sends a frame over the open channel to `peer`; false when there is none.
   * @param {string} peer
   * @param {object} frame
   */
  send(peer, frame) {
    const link = this.links.get(peer);
    if (!link?.open || !link.channel) return false;
    try {
      link.channel.send(JSON.stringify(frame));
      return true;
    } catch {
      this.drop(peer, link, true);
      return false;
    }
  }

  /**
   * Sets a link up with `peer` unless one is up, being set up, or resting
   * after a failure, or the server has no ICE servers: offers if this side
   * offers, asks for an offer if not.
   * @param {string} peer
   */
  async want(peer) {
    if (this.stopped || this.links.has(peer) || (this.resting.get(peer) ?? 0) > Date.now()) return;
    if (!(await this.on.iceServers())) return;
    if (this.offers(peer)) {
      await this.offer(peer);
    } else if ((this.asked.get(peer) ?? 0) + CALL_EVERY_MS <= Date.now()) {
      this.asked.set(peer, Date.now());
      await this.on.signal(peer, { t: 'rtc', k: 'call' });
    }
  }

  /**
   * The link with `peer` does not work (a message went unacknowledged):
   * closed, and left to rest before another attempt.
   * @param {string} peer
   */
  fail(peer) {
    const link = this.links.get(peer);
    if (link) this.drop(peer, link, true);
  }

  /**
   * A signal from `peer`, already opened and checked against the key
   * trusted for it (the page refuses any other). One the browser cannot use
   * (a description it refuses) ends the attempt, as a failure.
   * @param {string} peer
   * @param {Signal} signal
   */
  async signalled(peer, signal) {
    if (this.stopped) return;
    try {
      await this.apply(peer, signal);
    } catch {
      this.fail(peer);
    }
  }

  /**
   * @param {string} peer
   * @param {Signal} signal
   */
  async apply(peer, signal) {
    const link = this.links.get(peer);
    switch (signal.k) {
      case 'call':
        // The peer has no link: whatever this side had is stale. After a
        // failure, though, the next attempt waits its turn.
        if (!this.offers(peer) || (this.resting.get(peer) ?? 0) > Date.now()) return;
        if (link) this.drop(peer, link, false);
        await this.offer(peer);
        return;
      case 'offer':
        if (this.offers(peer) || typeof signal.call !== 'string' || typeof signal.sdp !== 'string') return;
        if (link) this.drop(peer, link, false);
        await this.answer(peer, signal.call, signal.sdp);
        return;
      case 'answer':
        if (!link || link.call !== signal.call || typeof signal.sdp !== 'string') return;
        if (link.pc.signalingState !== 'have-local-offer') return;
        await link.pc.setRemoteDescription({ type: 'answer', sdp: signal.sdp });
        await this.addEarly(link);
        return;
      case 'candidate':
        if (!link || link.call !== signal.call || !signal.candidate) return;
        if (link.pc.remoteDescription) await link.pc.addIceCandidate(signal.candidate).catch(() => {});
        else if (link.early.length < 64) link.early.push(signal.candidate);
        return;
      case 'bye':
        if (link && link.call === signal.call) this.drop(peer, link, false);
        return;
      default:
    }
  }

  /**
   * Hangs up the links with peers `keep` says no to (no longer contacts).
   * @param {(peer: string) => boolean} keep
   */
  keepOnly(keep) {
    for (const [peer, link] of this.links) {
      if (keep(peer)) continue;
      this.on.signal(peer, { t: 'rtc', k: 'bye', call: link.call }).catch(() => {});
      this.drop(peer, link, false);
    }
  }

  /** Links may be made again (the session resumes after a pause). */
  start() {
    this.stopped = false;
  }

  /** Hangs up every link (the session ends or pauses). */
  stop() {
    this.stopped = true;
    this.keepOnly(() => false);
  }

  /** @param {string} peer */
  offers(peer) {
    return this.me < peer;
  }

  /** @param {string} peer */
  async offer(peer) {
    const link = await this.open(peer, randomCall());
    if (!link) return;
    this.watch(peer, link, link.pc.createDataChannel('secchat', { ordered: true }));
    const offer = await link.pc.createOffer();
    await link.pc.setLocalDescription(offer);
    await this.on.signal(peer, { t: 'rtc', k: 'offer', call: link.call, sdp: offer.sdp });
    this.said(peer, link);
  }

  /**
   * @param {string} peer
   * @param {string} call
   * @param {string} sdp
   */
  async answer(peer, call, sdp) {
    const link = await this.open(peer, call);
    if (!link) return;
    link.pc.ondatachannel = (event) => this.watch(peer, link, event.channel);
    await link.pc.setRemoteDescription({ type: 'offer', sdp });
    await this.addEarly(link);
    const answer = await link.pc.createAnswer();
    await link.pc.setLocalDescription(answer);
    await this.on.signal(peer, { t: 'rtc', k: 'answer', call, sdp: answer.sdp });
    this.said(peer, link);
  }

  /**
   * Our description is signalled: the candidates found meanwhile follow it.
   * @param {string} peer
   * @param {Link} link
   */
  said(peer, link) {
    const unsaid = link.unsaid ?? [];
    link.unsaid = null;
    for (const candidate of unsaid) this.on.signal(peer, { t: 'rtc', k: 'candidate', call: link.call, candidate }).catch(() => {});
  }

  /**
   * A new peer connection for `call`, its candidates signalled as they come;
   * null when the server hands out no ICE servers (nothing to reach a peer
   * behind a NAT with) or another attempt started meanwhile.
   * @param {string} peer
   * @param {string} call
   */
  async open(peer, call) {
    const iceServers = await this.on.iceServers();
    if (!iceServers || this.stopped || this.links.has(peer)) return null;
    const pc = new RTCPeerConnection({ iceServers });
    const link = new Link(call, pc);
    this.links.set(peer, link);
    link.deadline = setTimeout(() => { if (!link.open) this.drop(peer, link, true); }, CONNECT_MS);
    pc.onicecandidate = (event) => {
      if (!event.candidate || this.links.get(peer) !== link) return;
      const candidate = event.candidate.toJSON();
      if (link.unsaid) link.unsaid.push(candidate);
      else this.on.signal(peer, { t: 'rtc', k: 'candidate', call, candidate }).catch(() => {});
    };
    pc.onconnectionstatechange = () => {
      const state = pc.connectionState;
      if (state === 'failed' || state === 'closed') {
        this.drop(peer, link, state === 'failed');
      } else if (state === 'disconnected') {
        link.lost ??= setTimeout(() => this.drop(peer, link, true), DISCONNECTED_MS);
      } else if (state === 'connected') {
        clearTimeout(link.lost);
        link.lost = undefined;
        this.findPath(peer, link).catch(() => {});
      }
    };
    return link;
  }

  /** @param {Link} link */
  async addEarly(link) {
    for (const candidate of link.early.splice(0)) await link.pc.addIceCandidate(candidate).catch(() => {});
  }

  /**
   * @param {string} peer
   * @param {Link} link
   * @param {RTCDataChannel} channel
   */
  watch(peer, link, channel) {
    link.channel = channel;
    channel.onopen = () => this.findPath(peer, link).catch(() => {});
    channel.onclose = () => this.drop(peer, link, false);
    channel.onmessage = (event) => {
      if (this.links.get(peer) !== link || typeof event.data !== 'string' || event.data.length > MAX_FRAME_BYTES) return;
      let frame;
      try {
        frame = JSON.parse(event.data);
      } catch {
        return;
      }
      if (frame && typeof frame === 'object') this.on.frame(peer, frame);
    };
  }

  /**
   * Which pair ICE chose: through the TURN relay if either end is a relay
   * candidate, direct otherwise. The link counts as open from then on; a
   * browser that has no pair to report yet is asked again shortly.
   * @param {string} peer
   * @param {Link} link
   * @param {number} [tries]
   */
  async findPath(peer, link, tries = 20) {
    if (link.channel?.readyState !== 'open') return;
    const stats = await link.pc.getStats();
    /** @type {any} */
    let pair = null;
    stats.forEach((s) => {
      if (s.type === 'transport' && s.selectedCandidatePairId) pair = stats.get(s.selectedCandidatePairId);
    });
    if (!pair) stats.forEach((s) => { if (s.type === 'candidate-pair' && s.nominated && s.state === 'succeeded') pair = s; });
    if (this.links.get(peer) !== link) return;
    if (!pair) {
      if (tries > 0) setTimeout(() => this.findPath(peer, link, tries - 1).catch(() => {}), 250);
      return;
    }
    const relayed = [pair.localCandidateId, pair.remoteCandidateId].some((id) => stats.get(id)?.candidateType === 'relay');
    const was = link.path;
    link.path = relayed ? 'turn' : 'direct';
    if (was !== link.path) this.on.changed(peer, true);
  }

  /**
   * @param {string} peer
   * @param {Link} link
   * @param {boolean} failed the link did not work: rest before the next attempt
   */
  drop(peer, link, failed) {
    if (this.links.get(peer) !== link) return;
    this.links.delete(peer);
    clearTimeout(link.lost);
    clearTimeout(link.deadline);
    if (failed) this.resting.set(peer, Date.now() + RETRY_AFTER_MS);
    link.channel?.close();
    link.pc.close();
    this.on.changed(peer, false);
  }
}

/** A new attempt's id: signals of an earlier attempt are told apart by it. */
function randomCall() {
  const bytes = crypto.getRandomValues(new Uint8Array(9));
  return btoa(String.fromCharCode(...bytes));
}
