// End-to-end keys as devices make them, for the tests: the spec's canonical JSON and Ed25519
// signatures of objects ("Signing JSON").
import { generateKeyPairSync, sign } from 'node:crypto';

export const b64 = (buf) => Buffer.from(buf).toString('base64').replace(/=+$/, '');

// The spec's canonical JSON: keys sorted, no whitespace.
export function canonical(v) {
  if (Array.isArray(v)) return `[${v.map(canonical).join(',')}]`;
  if (v !== null && typeof v === 'object') {
    return `{${Object.keys(v).sort().map((k) => `${JSON.stringify(k)}:${canonical(v[k])}`).join(',')}}`;
  }
  return JSON.stringify(v);
}

// An Ed25519 key pair that signs as `userId` with key id "ed25519:<name>" (the public key
// itself when no name is given, as cross-signing keys are named).
export function keyPair(userId, name) {
  const { publicKey, privateKey } = generateKeyPairSync('ed25519');
  const pub = b64(publicKey.export({ format: 'der', type: 'spki' }).subarray(-32));
  const keyId = `ed25519:${name ?? pub}`;
  const signObject = (obj) => {
    const { signatures, unsigned, ...rest } = obj;
    const sig = b64(sign(null, Buffer.from(canonical(rest)), privateKey));
    return { ...obj, signatures: { ...(signatures ?? {}), [userId]: { ...(signatures?.[userId] ?? {}), [keyId]: sig } } };
  };
  return { pub, keyId, signObject };
}
