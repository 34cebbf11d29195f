// The browser side of the interop tests: matrix-js-sdk's own call code (MatrixCall), driven
// by the test through window.mx, logging call states and remote feeds to window.mxLog.
import * as sdk from 'matrix-js-sdk-browser';
import { CallEvent, createNewMatrixCall } from 'matrix-js-sdk-browser/lib/webrtc/call.js';
import { CallEventHandlerEvent } from 'matrix-js-sdk-browser/lib/webrtc/callEventHandler.js';

const log = [];
window.mxLog = log;
const calls = new Map();
const feeds = new Map();  // stream id -> { purpose, video: {frames, first}, el }
let client;

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
  async start({ baseUrl, userId, accessToken, deviceId, forceTURN, autoAnswer }) {
    client = sdk.createClient({ baseUrl, userId, accessToken, deviceId, forceTURN, useAuthorizationHeader: true });
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
    stats.forEach((s) => {
      if (s.type === 'inbound-rtp' && s.kind === 'audio') {
        audioSamples += s.totalSamplesReceived ?? 0;
        audioPackets += s.packetsReceived ?? 0;
      }
      if (s.type === 'inbound-rtp' && s.kind === 'video') videoFrames += s.framesDecoded ?? 0;
      if (s.type === 'candidate-pair' && s.nominated && s.state === 'succeeded') {
        relay = relay || byId.get(s.localCandidateId)?.candidateType === 'relay';
      }
    });
    return { audioSamples, audioPackets, videoFrames, relay };
  },
  async stop() {
    client?.stopClient();
  },
};
