// Standard Webhooks v1, as internal/webhook signs and verifies: headers
// webhook-id, webhook-timestamp and webhook-signature ("v1,<base64
// HMAC-SHA256 of id.timestamp.body>", space-separated when several secrets
// sign during a rotation). Secrets are written "whsec_<base64 key>".

import { createHmac, randomBytes, timingSafeEqual } from "node:crypto";

/** Header names of a Standard Webhooks signature. */
export const HEADER_ID = "webhook-id";
/** @see HEADER_ID */
export const HEADER_TIMESTAMP = "webhook-timestamp";
/** @see HEADER_ID */
export const HEADER_SIGNATURE = "webhook-signature";

/** How old (or early) a timestamp {@link verify} accepts, in seconds (5 minutes, as the Go SDK). */
export const TOLERANCE_SECONDS = 5 * 60;

const SECRET_PREFIX = "whsec_";

/** Why a callback's signature was refused. */
export class WebhookVerificationError extends Error {
  /** "missing_headers" | "timestamp" | "signature" */
  readonly code: "missing_headers" | "timestamp" | "signature";
  constructor(code: "missing_headers" | "timestamp" | "signature", message: string) {
    super(message);
    this.name = "WebhookVerificationError";
    this.code = code;
  }
}

/** A decoded signing key (see {@link parseSecret}). Never printed. */
export class Secret {
  readonly #key: Buffer;
  /** @internal use {@link parseSecret} */
  constructor(key: Uint8Array) {
    this.#key = Buffer.from(key);
  }
  /** Signs id.timestamp.body: "v1,<base64>". */
  sign(id: string, timestamp: string, body: Uint8Array): string {
    const m = createHmac("sha256", this.#key);
    m.update(id, "utf8");
    m.update(".");
    m.update(timestamp, "utf8");
    m.update(".");
    m.update(body);
    return "v1," + m.digest("base64");
  }
  toString(): string {
    return "whsec_[redacted]";
  }
  toJSON(): string {
    return "whsec_[redacted]";
  }
  [Symbol.for("nodejs.util.inspect.custom")](): string {
    return "Secret(whsec_[redacted])";
  }
}

const STD_BASE64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;

/**
 * Decodes standard base64 strictly (padding required, no other characters),
 * as Go's base64.StdEncoding does; throws otherwise.
 * @internal
 */
export function decodeStdBase64(s: string): Buffer {
  if (!STD_BASE64.test(s)) throw new Error("not standard base64");
  return Buffer.from(s, "base64");
}

/**
 * Decodes a signing secret "whsec_<base64>" (the prefix is optional), a key
 * of 16 to 64 bytes, as the Go SDK does.
 * @throws Error when it is not base64 or the key's length is out of range.
 */
export function parseSecret(s: string): Secret {
  let t = s.trim();
  if (t.startsWith(SECRET_PREFIX)) t = t.slice(SECRET_PREFIX.length);
  t = t.trim();
  let key: Buffer;
  try {
    key = decodeStdBase64(t);
  } catch {
    throw new Error("webhook secret: not base64 after whsec_");
  }
  if (key.length < 16 || key.length > 64) {
    throw new Error(`webhook secret: key is ${key.length} bytes, want 16..64`);
  }
  return new Secret(key);
}

/** A fresh random secret in its "whsec_" form (32 bytes). */
export function newSecret(): string {
  return SECRET_PREFIX + randomBytes(32).toString("base64");
}

/** A way to read a header by its (lower-case) name. */
export type HeaderSource =
  | Headers
  | Record<string, string | string[] | undefined>
  | ((name: string) => string | null | undefined);

/** Reads header name from any of the usual shapes (the first value when repeated). @internal */
export function headerOf(h: HeaderSource, name: string): string {
  if (typeof h === "function") return h(name) ?? "";
  if (typeof (h as Headers).get === "function" && typeof (h as Headers).has === "function") {
    return (h as Headers).get(name) ?? "";
  }
  const rec = h as Record<string, string | string[] | undefined>;
  let v = rec[name];
  if (v === undefined) {
    for (const k of Object.keys(rec)) {
      if (k.toLowerCase() === name) {
        v = rec[k];
        break;
      }
    }
  }
  if (Array.isArray(v)) return v[0] ?? "";
  return v ?? "";
}

/**
 * Signs body as a Standard Webhooks sender: returns the three headers, with a
 * signature by every secret (several during a rotation).
 * @param now - the time to sign at, in milliseconds since the epoch.
 */
export function sign(secrets: readonly Secret[], id: string, body: Uint8Array | string, now: number = Date.now()): Record<string, string> {
  const ts = String(Math.floor(now / 1000));
  const b = typeof body === "string" ? Buffer.from(body, "utf8") : body;
  return {
    [HEADER_ID]: id,
    [HEADER_TIMESTAMP]: ts,
    [HEADER_SIGNATURE]: secrets.map((s) => s.sign(id, ts, b)).join(" "),
  };
}

const DECIMAL = /^[+-]?[0-9]+$/;

/**
 * Checks a received callback's signature headers against any of the secrets,
 * and its timestamp against {@link TOLERANCE_SECONDS} around now. Returns the
 * webhook id (the request id) on success.
 * @param now - milliseconds since the epoch.
 * @throws WebhookVerificationError
 */
export function verify(headers: HeaderSource, body: Uint8Array, secrets: readonly Secret[], now: number = Date.now()): string {
  const id = headerOf(headers, HEADER_ID);
  const ts = headerOf(headers, HEADER_TIMESTAMP);
  const sigs = headerOf(headers, HEADER_SIGNATURE);
  if (id === "" || ts === "" || sigs === "") {
    throw new WebhookVerificationError("missing_headers", "webhook: missing webhook-id, webhook-timestamp or webhook-signature");
  }
  // Go's strconv.ParseInt: decimal, an optional sign, within int64.
  if (!DECIMAL.test(ts) || ts.replace(/^[+-]/, "").length > 19) {
    throw new WebhookVerificationError("timestamp", "webhook: timestamp outside tolerance");
  }
  const sec = BigInt(ts);
  const nowSec = BigInt(Math.floor(now / 1000));
  const d = nowSec - sec;
  // Go compares durations at nanosecond precision (now may be up to 1 s
  // past nowSec): |now - ts| <= tolerance.
  const frac = BigInt(Math.floor(now)) % 1000n;
  const tol = BigInt(TOLERANCE_SECONDS);
  if (d > tol || (d === tol && frac > 0n) || d < -tol) {
    throw new WebhookVerificationError("timestamp", "webhook: timestamp outside tolerance");
  }
  const got = sigs.split(/\s+/).filter((s) => s !== "").map((s) => Buffer.from(s, "utf8"));
  for (const s of secrets) {
    const want = Buffer.from(s.sign(id, ts, body), "utf8");
    for (const g of got) {
      if (g.length === want.length && timingSafeEqual(g, want)) return id;
    }
  }
  throw new WebhookVerificationError("signature", "webhook: no matching signature");
}
