// Sealed payloads, as internal/seal writes them with a rule's (or caller's)
// 256-bit key:
//   - aes-256-gcm: JSON {"alg":"A256GCM","iv","ciphertext"} (standard base64;
//     the ciphertext ends with the 16-byte tag), content type
//     application/vnd.asyncmesh.sealed+json, the request id as additional
//     authenticated data, so a ciphertext cannot pass for another request's;
//   - jwe: JWE compact serialization, alg "dir", enc "A256GCM", the request id
//     in the protected header's "kid" (checked on opening), content type
//     application/jose. Done by hand with node:crypto: five base64url parts,
//     the protected header's encoded form as AAD (RFC 7516, 5.1).
// The signature of a callback covers the sealed bytes.

import { createCipheriv, createDecipheriv, randomBytes } from "node:crypto";
import { decodeStdBase64 } from "./webhook.js";

/** Algorithm names, as the rules file writes them (`callback.encryption.type`). */
export type SealAlgorithm = "aes-256-gcm" | "jwe";

/** Content type of an aes-256-gcm sealed body. */
export const CONTENT_TYPE_AESGCM = "application/vnd.asyncmesh.sealed+json";
/** Content type of a JWE sealed body. */
export const CONTENT_TYPE_JWE = "application/jose";

/** The largest sealed body {@link open} accepts (96 MiB, as the Go SDK). */
export const MAX_SEALED = 96 << 20;

/** A sealed body that could not be opened. */
export class SealError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "SealError";
  }
}

/**
 * Decodes a 256-bit key written in standard base64 (`openssl rand -base64 32`).
 * @throws Error when it is not 32 bytes of standard base64.
 */
export function parseKey(s: string): Uint8Array {
  let k: Buffer;
  try {
    k = decodeStdBase64(s.trim());
  } catch {
    k = Buffer.alloc(0);
  }
  if (k.length !== 32) throw new Error("want a 256-bit key in standard base64 (openssl rand -base64 32)");
  return k;
}

const B64URL = /^[A-Za-z0-9_-]*$/;

function b64url(b: Uint8Array | string): string {
  return Buffer.from(b).toString("base64url");
}

function unb64url(s: string, what: string): Buffer {
  // base64url, trailing "=" ignored, as go-jose reads compact JWE; a length
  // of 1 modulo 4 encodes no whole byte.
  const t = s.replace(/=+$/, "");
  if (!B64URL.test(t) || t.length % 4 === 1) throw new SealError(`open: JWE ${what}: not base64url`);
  return Buffer.from(t, "base64url");
}

function checkKey(key: Uint8Array): void {
  if (key.length !== 32) throw new SealError("seal: key must be 32 bytes");
}

function gcmSeal(key: Uint8Array, iv: Uint8Array, plaintext: Uint8Array, aad: Uint8Array): { ct: Buffer; tag: Buffer } {
  const c = createCipheriv("aes-256-gcm", key, iv, { authTagLength: 16 });
  c.setAAD(aad);
  const ct = Buffer.concat([c.update(plaintext), c.final()]);
  return { ct, tag: c.getAuthTag() };
}

function gcmOpen(key: Uint8Array, iv: Uint8Array, ct: Uint8Array, tag: Uint8Array, aad: Uint8Array): Buffer | null {
  if (iv.length !== 12 || tag.length !== 16) return null;
  try {
    const d = createDecipheriv("aes-256-gcm", key, iv, { authTagLength: 16 });
    d.setAAD(aad);
    d.setAuthTag(tag);
    return Buffer.concat([d.update(ct), d.final()]);
  } catch {
    return null;
  }
}

/**
 * Encrypts plaintext for request id, as the collector does. Returns the body
 * and its content type. (Callers only open; this is here for tests and for
 * services that play the collector's part.)
 */
export function seal(alg: SealAlgorithm, key: Uint8Array, id: string, plaintext: Uint8Array | string): { body: Buffer; contentType: string } {
  checkKey(key);
  const pt = typeof plaintext === "string" ? Buffer.from(plaintext, "utf8") : plaintext;
  const iv = randomBytes(12);
  switch (alg) {
    case "aes-256-gcm": {
      const { ct, tag } = gcmSeal(key, iv, pt, Buffer.from(id, "utf8"));
      const box = { alg: "A256GCM", iv: iv.toString("base64"), ciphertext: Buffer.concat([ct, tag]).toString("base64") };
      return { body: Buffer.from(JSON.stringify(box), "utf8"), contentType: CONTENT_TYPE_AESGCM };
    }
    case "jwe": {
      const protectedHeader = b64url(JSON.stringify({ alg: "dir", enc: "A256GCM", kid: id }));
      const { ct, tag } = gcmSeal(key, iv, pt, Buffer.from(protectedHeader, "ascii"));
      const s = [protectedHeader, "", b64url(iv), b64url(ct), b64url(tag)].join(".");
      return { body: Buffer.from(s, "ascii"), contentType: CONTENT_TYPE_JWE };
    }
  }
  throw new SealError(`seal: unknown algorithm ${JSON.stringify(alg)}`);
}

/**
 * Decrypts a body sealed for request id.
 * @throws SealError when it is malformed, too large, sealed with another key
 * or for another request.
 */
export function open(alg: SealAlgorithm, key: Uint8Array, id: string, body: Uint8Array): Buffer {
  if (body.length > MAX_SEALED) throw new SealError("open: sealed body too large");
  checkKey(key);
  switch (alg) {
    case "aes-256-gcm":
      return openGCM(key, id, body);
    case "jwe":
      return openJWE(key, id, body);
  }
  throw new SealError(`open: unknown algorithm ${JSON.stringify(alg)}`);
}

function openGCM(key: Uint8Array, id: string, body: Uint8Array): Buffer {
  const shape = new SealError('open: want {"alg":"A256GCM","iv","ciphertext"}');
  let box: unknown;
  try {
    box = JSON.parse(Buffer.from(body).toString("utf8"));
  } catch {
    throw shape;
  }
  if (typeof box !== "object" || box === null || Array.isArray(box)) throw shape;
  const { alg, iv, ciphertext } = box as Record<string, unknown>;
  if (alg !== "A256GCM") throw shape;
  // Go decodes a JSON null or an absent field as no bytes.
  let ivb: Buffer, ctb: Buffer;
  try {
    ivb = iv == null ? Buffer.alloc(0) : typeof iv === "string" ? decodeStdBase64(iv) : badType();
    ctb = ciphertext == null ? Buffer.alloc(0) : typeof ciphertext === "string" ? decodeStdBase64(ciphertext) : badType();
  } catch {
    throw shape;
  }
  if (ivb.length !== 12) throw new SealError("open: bad iv");
  if (ctb.length < 16) throw new SealError("open: authentication failed (wrong key, or sealed for another request)");
  const pt = gcmOpen(key, ivb, ctb.subarray(0, ctb.length - 16), ctb.subarray(ctb.length - 16), Buffer.from(id, "utf8"));
  if (pt === null) throw new SealError("open: authentication failed (wrong key, or sealed for another request)");
  return pt;
}

function badType(): never {
  throw new Error("bad type");
}

function openJWE(key: Uint8Array, id: string, body: Uint8Array): Buffer {
  const s = Buffer.from(body).toString("utf8");
  const parts = s.split(".");
  if (parts.length !== 5) throw new SealError("open: not a JWE compact serialization (five parts)");
  const [ph, ek, ivs, cts, tags] = parts as [string, string, string, string, string];
  let header: unknown;
  try {
    header = JSON.parse(unb64url(ph, "protected header").toString("utf8"));
  } catch (e) {
    throw e instanceof SealError ? e : new SealError("open: JWE protected header: not JSON");
  }
  if (typeof header !== "object" || header === null || Array.isArray(header)) {
    throw new SealError("open: JWE protected header: not a JSON object");
  }
  const h = header as Record<string, unknown>;
  if (h.alg !== "dir") throw new SealError("open: JWE alg must be dir");
  if (h.enc !== "A256GCM") throw new SealError("open: JWE enc must be A256GCM");
  // Nothing else this reader would have to understand: no compression, no
  // critical extensions.
  if (h.zip !== undefined) throw new SealError("open: JWE zip is not supported");
  if (h.crit !== undefined) throw new SealError("open: JWE crit is not supported");
  if (unb64url(ek, "encrypted key").length !== 0) throw new SealError("open: JWE with alg dir has no encrypted key");
  if (h.kid !== id) throw new SealError("open: JWE kid is not this request's id");
  const iv = unb64url(ivs, "iv");
  const ct = unb64url(cts, "ciphertext");
  const tag = unb64url(tags, "tag");
  const pt = gcmOpen(key, iv, ct, tag, Buffer.from(ph, "ascii"));
  if (pt === null) throw new SealError("open: authentication failed (wrong key)");
  return pt;
}

/** The algorithm of a sealed body by its content type: JWE for application/jose, else aes-256-gcm (as the Go SDK). */
export function algorithmOf(contentType: string | null | undefined): SealAlgorithm {
  return (contentType ?? "").startsWith(CONTENT_TYPE_JWE) ? "jwe" : "aes-256-gcm";
}
