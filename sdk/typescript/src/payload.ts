// The callback payload (collector/delivery.Payload) and the result of
// GET /v1/requests/{id}/result, decoded as the Go SDK decodes them.

import { decodeStdBase64 } from "./webhook.js";

/** The service's answer to an async request. */
export class ServiceResponse {
  /** The service's HTTP status. */
  readonly status: number;
  /** The service's response headers (lower-case names). */
  readonly headers: Readonly<Record<string, string>>;
  /** The response body, decoded from base64 when the collector had to encode it. */
  readonly body: Buffer;
  constructor(status: number, headers: Record<string, string>, body: Buffer) {
    this.status = status;
    this.headers = headers;
    this.body = body;
  }
  /** The body as UTF-8 text. */
  text(): string {
    return this.body.toString("utf8");
  }
  /** The body parsed as JSON. @throws SyntaxError when it is not JSON. */
  json<T = unknown>(): T {
    return JSON.parse(this.text()) as T;
  }
}

/** The outcome of an async request, as its callback (or {@link Client.wait}) carries it. */
export interface Result {
  /** The request id (x-async-request-id of the 202). */
  id: string;
  /** The W3C trace id of the request. */
  traceId: string;
  /** "completed" (the service answered: see response) or "failed" (see error). */
  status: "completed" | "failed" | (string & {});
  /** The service's answer, when it answered. */
  response?: ServiceResponse;
  /** Why the request failed. */
  error?: string;
}

/** A payload that is not a callback payload. */
export class PayloadError extends Error {
  constructor(message: string) {
    super("callback payload: " + message);
    this.name = "PayloadError";
  }
}

function str(v: unknown, field: string): string {
  // Go's encoding/json leaves a field at its zero value for null.
  if (v === undefined || v === null) return "";
  if (typeof v !== "string") throw new PayloadError(`${field}: want a string`);
  return v;
}

/**
 * Decodes a callback payload (JSON bytes): `{"id","traceId","status",
 * "response":{"status","headers","body","bodyEncoding"},"error"}`.
 * @throws PayloadError when it is not JSON, has no id, or a field has the wrong type.
 */
export function decodeResult(body: Uint8Array | string): Result {
  let v: unknown;
  try {
    v = JSON.parse(typeof body === "string" ? body : Buffer.from(body).toString("utf8"));
  } catch (e) {
    throw new PayloadError((e as Error).message);
  }
  if (v === null) v = {};
  if (typeof v !== "object" || Array.isArray(v)) throw new PayloadError("want a JSON object");
  const w = v as Record<string, unknown>;
  const id = str(w.id, "id");
  if (id === "") throw new PayloadError("id: required");
  const r: Result = { id, traceId: str(w.traceId, "traceId"), status: str(w.status, "status") };
  const error = str(w.error, "error");
  if (error !== "") r.error = error;
  const resp = w.response;
  if (resp !== undefined && resp !== null) {
    if (typeof resp !== "object" || Array.isArray(resp)) throw new PayloadError("response: want an object");
    const o = resp as Record<string, unknown>;
    let status = 0;
    if (o.status !== undefined && o.status !== null) {
      if (typeof o.status !== "number" || !Number.isSafeInteger(o.status)) throw new PayloadError("response.status: want an integer");
      status = o.status;
    }
    const headers: Record<string, string> = {};
    if (o.headers !== undefined && o.headers !== null) {
      if (typeof o.headers !== "object" || Array.isArray(o.headers)) throw new PayloadError("response.headers: want an object");
      for (const [k, hv] of Object.entries(o.headers as Record<string, unknown>)) {
        headers[k] = str(hv, "response.headers." + k);
      }
    }
    const text = str(o.body, "response.body");
    let b: Buffer;
    if (str(o.bodyEncoding, "response.bodyEncoding") === "base64") {
      try {
        b = decodeStdBase64(text);
      } catch {
        throw new PayloadError("response.body: illegal base64 data");
      }
    } else {
      b = Buffer.from(text, "utf8");
    }
    r.response = new ServiceResponse(status, headers, b);
  }
  return r;
}
