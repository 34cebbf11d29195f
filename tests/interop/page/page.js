// The browser side of the interop tests: matrix-js-sdk's own call code (MatrixCall), driven
// by the test through window.mx, logging call states and remote feeds to window.mxLog.
import * as sdk from 'matrix-js-sdk-browser';
import { CallEvent, createNewMatrixCall } from 'matrix-js-sdk-browser/lib/webrtc/call.js';
import { CallEventHandlerEvent } from 'matrix-js-sdk-browser/lib/webrtc/callEventHandler.js';
import { decodeRecoveryKey } from 'matrix-js-sdk-browser/lib/crypto-api/index.js';

const log = [];
window.mxLog = log;
const calls = new Map();
const feeds = new Map();  // stream id -> { purpose, video: {frames, first}, el }
let client;
let password = null; // the account's, for user-interactive auth, when encryption is on

function note(kind, data = {}) {
  log.push({ t: Date.now(), kind, ...data });
}

// Counts decoded frames of a remote feed by playing it in a muted <video>.
function watchFeed(call, feed) {
  const id = feed.stream.id;
  if (feeds.has(id)) {
    // Back after a hold: play its tracks again.
    const known = feeds.get(id);
    known.el.srcObject = feed.stream;
    known.el.play().catch(() => {});
    return;
  }
  const rec = { callId: call.callId, purpose: feed.purpose, streamId: id, frames: 0, firstFrameAt: null, audioTracks: feed.stream.getAudioTracks().length, videoTracks: feed.stream.getVideoTracks().length };
  const el = document.createElement('video');
  Object.defineProperty(rec, 'el', { value: el, enumerable: false });
  feeds.set(id, rec);
  el.muted = true;
  el.autoplay = true;
  el.playsInline = true;
  el.srcObject = feed.stream;
  document.body.appendChild(el);
  const onFrame = () => {
    rec.frames++;
    if (!rec.firstFrameAt) {
      rec.firstFrameAt = Date.now();
      note('first_frame', { callId: call.callId, purpose: feed.purpose, streamId: id });
    }
    el.requestVideoFrameCallback(onFrame);
  };
  el.requestVideoFrameCallback(onFrame);
  el.play().catch(() => {});
}

function watch(call) {
  calls.set(call.callId, call);
  call.on(CallEvent.State, (state) => note('state', { callId: call.callId, state }));
  call.on(CallEvent.Hangup, () => note('hangup', { callId: call.callId, reason: call.hangupReason, party: call.hangupParty }));
  call.on(CallEvent.Replaced, (newCall) => {
    note('replaced', { callId: call.callId, by: newCall.callId });
    watch(newCall);
  });
  call.on(CallEvent.Error, (err) => note('error', { callId: call.callId, code: err.code, message: String(err.message ?? err) }));
  call.on(CallEvent.RemoteHoldUnhold, (held) => note('remote_hold', { callId: call.callId, held }));
  // The other side holds us (their transceivers go sendonly or inactive).
  call.on(CallEvent.LocalHoldUnhold, (held) => note('held_by_remote', { callId: call.callId, held }));
  call.on(CallEvent.FeedsChanged, (list) => {
    const remote = list.filter((f) => !f.isLocal());
    note('feeds', { callId: call.callId, feeds: remote.map((f) => ({ purpose: f.purpose, streamId: f.stream.id, video: f.stream.getVideoTracks().length })) });
    for (const f of remote) watchFeed(call, f);
  });
}

function find(callId) {
  const call = calls.get(callId);
  if (!call) throw new Error(`no call ${callId}`);
  return call;
}

window.mx = {
  // autoAnswer: answer every incoming call at once ({ video }), as a benchmark peer does.
  async start({ baseUrl, userId, accessToken, deviceId, forceTURN, autoAnswer, encryption }) {
    // Secret storage keys this device knows: the one it made, or the recovery key it was given.
    const secretKeys = new Map();
    const cryptoCallbacks = {
      async getSecretStorageKey({ keys }) {
        for (const id of Object.keys(keys)) if (secretKeys.has(id)) return [id, secretKeys.get(id)];
        if (!encryption?.recoveryKey) return null;
        const id = Object.keys(keys)[0];
        return [id, decodeRecoveryKey(encryption.recoveryKey)];
      },
      cacheSecretStorageKey(keyId, _info, key) {
        secretKeys.set(keyId, key);
      },
    };
    client = sdk.createClient({ baseUrl, userId, accessToken, deviceId, forceTURN, useAuthorizationHeader: true, cryptoCallbacks });
    if (encryption) {
      password = encryption.password;
      await client.initRustCrypto({ useIndexedDB: false });
      client.on(sdk.MatrixEventEvent.Decrypted, (ev) => {
        note('decrypted', { sender: ev.getSender(), type: ev.getType(), wireType: ev.getWireType(), eventId: ev.getId(), callId: ev.getContent()?.call_id ?? null, failed: ev.isDecryptionFailure() });
      });
    }
    client.on(CallEventHandlerEvent.Incoming, (call) => {
      watch(call);
      note('incoming', { callId: call.callId, from: call.getOpponentMember?.()?.userId });
      if (autoAnswer) call.answer(true, !!autoAnswer.video);
    });
    await client.startClient({ initialSyncLimit: 20 });
    await new Promise((resolve) => {
      const check = () => (['PREPARED', 'SYNCING'].includes(client.getSyncState()) ? resolve() : setTimeout(check, 20));
      check();
    });
    note('ready', { userId, deviceId });
  },
  async place(roomId, { video = false, invitee } = {}) {
    const call = createNewMatrixCall(client, roomId, { invitee });
    if (!call) throw new Error('createNewMatrixCall returned null (no WebRTC?)');
    watch(call);
    note('placing', { callId: call.callId });
    if (video) await call.placeVideoCall();
    else await call.placeVoiceCall();
    return call.callId;
  },
  async answer(callId, { video = false } = {}) {
    await find(callId).answer(true, video);
  },
  reject(callId) {
    find(callId).reject();
  },
  hangup(callId) {
    find(callId).hangup('user_hangup', false);
  },
  async screenshare(callId, on) {
    return find(callId).setScreensharingEnabled(on);
  },
  hold(callId, on) {
    find(callId).setRemoteOnHold(on);
  },
  info(callId) {
    const call = calls.get(callId);
    return call ? { callId, state: call.state, hangupReason: call.hangupReason ?? null, remoteOnHold: call.isRemoteOnHold(), feeds: [...feeds.values()].filter((f) => f.callId === callId) } : null;
  },
  calls() {
    return [...calls.keys()];
  },
  // Audio samples decoded and packets received, video frames decoded, from the peer connection.
  async media(callId) {
    const call = calls.get(callId);
    if (!call?.peerConn) return { audioSamples: 0, videoFrames: 0 };
    const stats = await call.peerConn.getStats();
    let audioSamples = 0;
    let audioPackets = 0;
    let videoFrames = 0;
    let relay = false;
    const byId = new Map();
    stats.forEach((s) => byId.set(s.id, s));
    // The pair the transport selected (the spec's selectedCandidatePairId); Chromium may show
    // the pair in use without its `nominated` flag for a while, so that counts only without one.
    const selected = new Set();
    stats.forEach((s) => {
      if (s.type === 'transport' && s.selectedCandidatePairId) selected.add(s.selectedCandidatePairId);
    });
    stats.forEach((s) => {
      if (s.type === 'inbound-rtp' && s.kind === 'audio') {
        audioSamples += s.totalSamplesReceived ?? 0;
        audioPackets += s.packetsReceived ?? 0;
      }
      if (s.type === 'inbound-rtp' && s.kind === 'video') videoFrames += s.framesDecoded ?? 0;
      const inUse = selected.size ? selected.has(s.id) : s.nominated && s.state === 'succeeded';
      if (s.type === 'candidate-pair' && inUse) {
        relay = relay || byId.get(s.localCandidateId)?.candidateType === 'relay';
      }
    });
    return { audioSamples, audioPackets, videoFrames, relay };
  },
  // Element's first-run set-up: cross-signing keys (answering user-interactive auth with the
  // password if the server asks), then secret storage with a new recovery key and a new key
  // backup. Returns the recovery key and what the SDK then reports.
  async bootstrapEncryption() {
    const crypto = client.getCrypto();
    const auth = [];
    await crypto.bootstrapCrossSigning({
      async authUploadDeviceSigningKeys(makeRequest) {
        try {
          await makeRequest(null);
          auth.push('none');
        } catch (e) {
          if (e.httpStatus !== 401 || !e.data?.flows) throw e;
          await makeRequest({ type: 'm.login.password', identifier: { type: 'm.id.user', user: client.getUserId() }, password, session: e.data.session });
          auth.push('password');
        }
      },
    });
    let recovery;
    await crypto.bootstrapSecretStorage({
      createSecretStorageKey: async () => (recovery = await crypto.createRecoveryKeyFromPassphrase()),
      setupNewKeyBackup: true,
    });
    return {
      auth,
      recoveryKey: recovery.encodedPrivateKey,
      crossSigningReady: await crypto.isCrossSigningReady(),
      secretStorageReady: await crypto.isSecretStorageReady(),
      backupVersion: await crypto.getActiveSessionBackupVersion(),
    };
  },
  async createEncryptedDirectRoom(invitee) {
    const { room_id: roomId } = await client.createRoom({
      preset: 'trusted_private_chat',
      is_direct: true,
      invite: [invitee],
      initial_state: [{ type: 'm.room.encryption', state_key: '', content: { algorithm: 'm.megolm.v1.aes-sha2' } }],
    });
    return roomId;
  },
  async join(roomId) {
    await client.joinRoom(roomId);
    // Joined, and the room's encryption known to the crypto, before any call is placed.
    for (;;) {
      if (client.getRoom(roomId)?.getMyMembership() === 'join' && (await client.getCrypto().isEncryptionEnabledInRoom(roomId))) return;
      await new Promise((r) => setTimeout(r, 50));
    }
  },
  membership(roomId, userId) {
    return client.getRoom(roomId)?.getMember(userId)?.membership ?? null;
  },
  // The devices of `userId` this device's crypto knows of.
  async deviceIds(userId) {
    const devices = await client.getCrypto().getUserDeviceInfo([userId]);
    return [...(devices.get(userId)?.keys() ?? [])];
  },
  async isEncrypted(roomId) {
    return client.getCrypto().isEncryptionEnabledInRoom(roomId);
  },
  // Restores the room keys from the key backup, with the backup key from secret storage.
  async restoreKeyBackup() {
    const crypto = client.getCrypto();
    await crypto.loadSessionBackupPrivateKeyFromSecretStorage();
    const { total, imported } = await crypto.restoreKeyBackup();
    return { total, imported };
  },
  // Every event of the room from its start, fetched from the server and decrypted where this
  // device can: [{ wireType, type, callId, failed }].
  async history(roomId) {
    const res = await client.createMessagesRequest(roomId, null, 1000, 'f');
    const mapper = client.getEventMapper();
    const out = [];
    for (const raw of res.chunk) {
      const ev = mapper(raw);
      await client.decryptEventIfNeeded(ev);
      out.push({ eventId: ev.getId(), wireType: ev.getWireType(), type: ev.getType(), callId: ev.getContent()?.call_id ?? null, failed: ev.isDecryptionFailure() });
    }
    return out;
  },
  // A test's client goes away with its calls: those it placed or answered are hung up, the
  // hangup sent, before it stops, so no live invite is left in the room for the next test.
  async stop() {
    for (const call of calls.values()) {
      if (call.state === 'ended' || (call.direction === 'inbound' && call.state === 'ringing')) continue;
      const hangup = { call_id: call.callId, party_id: client.getDeviceId(), version: '1', reason: 'user_hangup' };
      await client.sendEvent(call.roomId, 'm.call.hangup', hangup).catch(() => {});
      call.hangup('user_hangup', true);
    }
    client?.stopClient();
  },
};
