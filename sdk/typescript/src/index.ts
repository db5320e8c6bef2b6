/**
 * The TypeScript SDK for callers of asyncmesh-made async APIs: a handler map
 * instead of polling, with the Go SDK's semantics (client/ in the
 * repository).
 *
 * @example
 * ```ts
 * import { Client } from "@asyncmesh/client";
 * const c = await Client.create({ baseUrl: "http://api.local", secrets: ["whsec_..."] });
 * const call = await c.do({ url: "/reports", method: "POST", body: "{}" }, (r) => {
 *   console.log(r.id, r.status, r.response?.text());
 * });
 * ```
 * @packageDocumentation
 */
export { Client, consoleLogger, DEFAULT_LIMITS } from "./client.js";
export type { AsyncRequest, Call, CallbackOutcome, ClientOptions, Handler, Limits, Logger, WaitOptions } from "./client.js";
export { decodeResult, PayloadError, ServiceResponse } from "./payload.js";
export type { Result } from "./payload.js";
export { algorithmOf, CONTENT_TYPE_AESGCM, CONTENT_TYPE_JWE, MAX_SEALED, open, parseKey, seal, SealError } from "./seal.js";
export type { SealAlgorithm } from "./seal.js";
export {
  HEADER_ID,
  HEADER_SIGNATURE,
  HEADER_TIMESTAMP,
  newSecret,
  parseSecret,
  Secret,
  sign,
  TOLERANCE_SECONDS,
  verify,
  WebhookVerificationError,
} from "./webhook.js";
export type { HeaderSource } from "./webhook.js";
