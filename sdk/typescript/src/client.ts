// The async client: a handler map instead of polling, with the Go SDK's
// semantics (client/client.go).

import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { decodeResult, type Result } from "./payload.js";
import { algorithmOf, open, parseKey } from "./seal.js";
import { HEADER_ID, headerOf, parseSecret, verify, WebhookVerificationError, type HeaderSource, type Secret } from "./webhook.js";

/** Where the client reports what it refused or what failed; console by default. */
export interface Logger {
  warn(message: string, attrs?: Record<string, unknown>): void;
  error(message: string, attrs?: Record<string, unknown>): void;
}

/** The console, one line per event. */
export const consoleLogger: Logger = {
  warn: (m, a) => console.warn("asyncmesh:", m, a ?? ""),
  error: (m, a) => console.error("asyncmesh:", m, a ?? ""),
};

/** Bounds of what the client holds; the defaults are the Go SDK's. */
export interface Limits {
  /** Callbacks held for requests whose 202 has not been read yet (10000). */
  maxEarly: number;
  /** Bytes those callbacks may hold (64 MiB). */
  maxEarlyBytes: number;
  /** How long such a callback is held before it is dropped (2 minutes). */
  earlyTtlMs: number;
  /** Request ids remembered to drop repeated deliveries, and access tokens kept for {@link Client.wait} by id (100000). */
  maxSeen: number;
  /** The largest callback body read (80 MiB). */
  maxBodyBytes: number;
}

/** The Go SDK's bounds. */
export const DEFAULT_LIMITS: Readonly<Limits> = Object.freeze({
  maxEarly: 10000,
  maxEarlyBytes: 64 << 20,
  earlyTtlMs: 2 * 60 * 1000,
  maxSeen: 100000,
  maxBodyBytes: 80 << 20,
});

/** Options of {@link Client.create}. */
export interface ClientOptions {
  /** Where requests go: the service's host, through its Envoy sidecar. */
  baseUrl: string;
  /** Secrets that verify callbacks ("whsec_..."); several during a rotation. At least one. */
  secrets: readonly string[];
  /** The 256-bit key (standard base64) that opens callbacks sealed by the rule's or caller's `encryption`. With a key, unsealed callbacks are refused. */
  key?: string;
  /** The sidecar's route to the collector API (default "/async"). */
  statusPrefix?: string;
  /**
   * The embedded receiver's address (default 127.0.0.1, a free port), or
   * false to receive callbacks in a server of your own with
   * {@link Client.nodeHandler} or {@link Client.fetchHandler} (then
   * `callbackUrl` is required).
   */
  receiver?: { host?: string; port?: number } | false;
  /** How the collector reaches the receiver (default http://<receiver address>/callbacks). */
  callbackUrl?: string;
  /** Sends requests (default: the global fetch). */
  fetch?: typeof fetch;
  /** Timeout of each request the client sends, in milliseconds (default 60000). */
  requestTimeoutMs?: number;
  logger?: Logger;
  /** Bounds (default {@link DEFAULT_LIMITS}). */
  limits?: Partial<Limits>;
  /** The clock, in milliseconds since the epoch (default Date.now); tests set it. */
  now?: () => number;
}

/** An async request: a path (resolved against baseUrl) or an absolute URL, and what fetch takes. */
export interface AsyncRequest {
  url: string | URL;
  method?: string;
  headers?: RequestInit["headers"];
  body?: RequestInit["body"];
  /**
   * Prefer: wait=N (seconds): a request that completes within N seconds is
   * answered with the service's own response ({@link Call.sync}) and its
   * handler never runs.
   */
  wait?: number;
  signal?: AbortSignal;
}

/** Receives the result of one request; a thrown error or rejection is logged. */
export type Handler = (result: Result) => void | Promise<void>;

/** What {@link Client.do} got back. */
export interface Call {
  /** The request id ("" when the request was not made async). */
  id: string;
  /** The W3C trace id of the request. */
  traceId: string;
  /**
   * Reads this request's status and result ({@link Client.wait}, or GET
   * statusUrl): the sidecar hands it out once, in the 202 (or with a result
   * relayed within Prefer: wait), and answers 404 to reads without it.
   */
  accessToken: string;
  /** The 202's Location, resolved against the request's URL (it holds the access token: keep it secret). */
  statusUrl: string;
  /**
   * The response when the request was not made async: no rule matched, or it
   * completed within Prefer: wait. Its handler never runs; its body is yours
   * to read.
   */
  sync?: Response;
}

/** Options of {@link Client.wait}. */
export interface WaitOptions {
  signal?: AbortSignal;
}

/** What {@link Client.handleCallback} decided: the HTTP answer to give the sender. */
export interface CallbackOutcome {
  /** 204 accepted (also a repeated delivery), 400 unreadable, 401 bad signature, 413 too large, 503 no room to hold it (or the client is closed). */
  status: 204 | 400 | 401 | 413 | 503;
  /** The JSON error body, for status >= 400. */
  error?: { error: string; message: string };
}

interface Early {
  res: Result;
  at: number;
  size: number;
}

/**
 * Sends async requests and receives their callbacks.
 *
 * `do` sends the request with `Prefer: respond-async` and `x-async-callback`
 * set to the client's receiver, and records request id → handler. The
 * receiver verifies each callback's Standard Webhooks signature (opens it
 * when sealed) and runs the handler once per request id, even when the
 * callback is delivered twice (at-least-once delivery) or arrives before
 * `do` has read the 202 (such callbacks are held, bounded by count, bytes
 * and age). `wait` falls back to the long-poll API for callers that cannot
 * receive callbacks.
 *
 * The route's rule must let the caller choose the callback
 * (`callback.allowOverride`) and, for a receiver on a private or loopback
 * address, list its host in `callback.allowedHosts` with a network allowance;
 * otherwise the callback goes to the rule's URL (or the request is refused)
 * and the handler never runs: use `wait` then.
 */
export class Client {
  readonly #baseUrl: string;
  readonly #statusPrefix: string;
  readonly #secrets: Secret[];
  readonly #key: Uint8Array | null;
  readonly #fetch: typeof fetch;
  readonly #timeoutMs: number;
  readonly #log: Logger;
  readonly #limits: Limits;
  readonly #now: () => number;
  readonly #receiverOpt: { host?: string; port?: number } | false;
  #callbackUrl: string;
  #server: Server | null = null;
  #closed = false;
  readonly #closing = new AbortController();

  readonly #handlers = new Map<string, Handler>();
  readonly #early = new Map<string, Early>(); // insertion order is arrival order
  #earlyBytes = 0;
  readonly #seen = new Set<string>(); // request ids whose handler ran (or will): insertion order is eviction order
  readonly #tokens = new Map<string, { token: string; traceId: string }>(); // request id → its access token and trace id, for wait(id)
  readonly #running = new Set<Promise<void>>();

  /**
   * Checks the options; receives nothing until {@link Client.listen}.
   * {@link Client.create} does both.
   * @throws Error on a bad baseUrl, secret or key.
   */
  constructor(opts: ClientOptions) {
    try {
      const u = new URL(opts.baseUrl);
      if (u.protocol !== "http:" && u.protocol !== "https:") throw new Error();
    } catch {
      throw new Error(`asyncmesh client: baseUrl ${JSON.stringify(opts.baseUrl)} is not an http(s) URL`);
    }
    this.#baseUrl = opts.baseUrl;
    this.#statusPrefix = opts.statusPrefix ?? "/async";
    if (!opts.secrets || opts.secrets.length === 0) {
      throw new Error("asyncmesh client: secrets: at least one, to verify callbacks");
    }
    this.#secrets = opts.secrets.map((s, i) => {
      try {
        return parseSecret(s);
      } catch (e) {
        throw new Error(`asyncmesh client: secrets[${i}]: ${(e as Error).message}`);
      }
    });
    this.#key = null;
    if (opts.key !== undefined && opts.key !== "") {
      try {
        this.#key = parseKey(opts.key);
      } catch (e) {
        throw new Error(`asyncmesh client: key: ${(e as Error).message}`);
      }
    }
    this.#receiverOpt = opts.receiver ?? {};
    this.#callbackUrl = opts.callbackUrl ?? "";
    if (this.#receiverOpt === false && this.#callbackUrl === "") {
      throw new Error("asyncmesh client: callbackUrl is required without the embedded receiver");
    }
    if (this.#receiverOpt !== false && ["0.0.0.0", "::", ""].includes(this.#receiverOpt.host ?? "127.0.0.1") && this.#callbackUrl === "") {
      // The listening address says nothing of how the collector reaches it.
      throw new Error("asyncmesh client: callbackUrl is required with a receiver on every address");
    }
    this.#fetch = opts.fetch ?? globalThis.fetch;
    this.#timeoutMs = opts.requestTimeoutMs ?? 60_000;
    this.#log = opts.logger ?? consoleLogger;
    this.#limits = { ...DEFAULT_LIMITS, ...opts.limits };
    this.#now = opts.now ?? Date.now;
  }

  /**
   * A client with its embedded receiver listening (unless `receiver: false`).
   * @example
   * const c = await Client.create({ baseUrl: "http://api.local", secrets: ["whsec_..."] });
   */
  static async create(opts: ClientOptions): Promise<Client> {
    const c = new Client(opts);
    await c.listen();
    return c;
  }

  /** Starts the embedded receiver (POST /callbacks); nothing with `receiver: false`. */
  async listen(): Promise<void> {
    if (this.#receiverOpt === false || this.#server !== null) return;
    const srv = createServer((req, res) => {
      const path = (req.url ?? "").split("?")[0];
      if (path !== "/callbacks") {
        reply(res, 404, { error: "not_found", message: "callbacks are received at /callbacks" });
        return;
      }
      this.nodeHandler(req, res);
    });
    srv.headersTimeout = 10_000;
    srv.requestTimeout = 120_000;
    const { host = "127.0.0.1", port = 0 } = this.#receiverOpt;
    await new Promise<void>((resolve, reject) => {
      srv.once("error", reject);
      srv.listen(port, host, () => {
        srv.off("error", reject);
        resolve();
      });
    });
    this.#server = srv;
    if (this.#callbackUrl === "") {
      const a = srv.address() as AddressInfo;
      const h = a.family === "IPv6" ? `[${a.address}]` : a.address;
      this.#callbackUrl = `http://${h}:${a.port}/callbacks`;
    }
  }

  /** Where this client receives callbacks (what `do` sends as x-async-callback). */
  get callbackUrl(): string {
    if (this.#callbackUrl === "") throw new Error("asyncmesh client: not listening yet (use Client.create, or listen())");
    return this.#callbackUrl;
  }

  /** Stops the receiver, ends waits in progress and waits for running handlers. */
  async close(): Promise<void> {
    if (!this.#closed) {
      this.#closed = true;
      this.#closing.abort(new Error("asyncmesh client: closed"));
      const srv = this.#server;
      if (srv !== null) {
        await new Promise<void>((resolve) => {
          // A keep-alive connection busy at this moment goes idle after it,
          // and would then hold close() until its peer drops it (the
          // collector's Go client: 90 s): close each as it goes idle.
          const sweep = setInterval(() => srv.closeIdleConnections(), 50);
          srv.close(() => {
            clearInterval(sweep);
            resolve();
          });
          srv.closeIdleConnections();
        });
      }
    }
    while (this.#running.size > 0) await Promise.allSettled([...this.#running]);
  }

  /**
   * Sends request as an async request and runs handler with its result when
   * the callback comes, once.
   * @returns the request's id, trace id and access token; or, when it was
   * answered synchronously, that response in `sync`.
   * @throws on a network error, or a 202 without x-async-request-id.
   */
  async do(request: AsyncRequest | Request, handler: Handler): Promise<Call> {
    if (this.#closed) throw new Error("asyncmesh client: closed");
    const { url, init } = this.#prepare(request);
    const headers = new Headers(init.headers);
    headers.set("prefer", waitPreference(request));
    headers.set("x-async-callback", this.callbackUrl);
    init.headers = headers;
    const resp = await this.#fetch(url, init);

    if (resp.status !== 202) {
      const call: Call = { id: "", traceId: "", accessToken: "", statusUrl: "", sync: resp };
      const id = resp.headers.get("x-async-request-id");
      if (id) {
        // A result relayed within Prefer: wait: the caller has it now, so the
        // callback that still follows is acknowledged and dropped.
        call.id = id;
        call.traceId = resp.headers.get("x-async-trace-id") ?? "";
        call.accessToken = resp.headers.get("x-async-access-token") ?? "";
        this.#keepToken(id, call.accessToken, call.traceId);
        this.#takeEarly(id);
        if (!this.#seen.has(id)) this.#markSeen(id);
      }
      return call;
    }

    const id = resp.headers.get("x-async-request-id") ?? "";
    const raw = await readLimited(resp.body, 64 << 10).catch(() => Buffer.alloc(0));
    if (id === "") throw new Error("asyncmesh client: 202 without x-async-request-id");
    const call: Call = { id, traceId: resp.headers.get("x-async-trace-id") ?? "", accessToken: "", statusUrl: "" };
    const location = resp.headers.get("location");
    if (location) {
      try {
        call.statusUrl = new URL(location, resp.url || url).toString();
      } catch {
        // an unparsable Location: no statusUrl
      }
    }
    try {
      const accepted = JSON.parse(raw.toString("utf8")) as { accessToken?: unknown };
      if (typeof accepted?.accessToken === "string") call.accessToken = accepted.accessToken;
    } catch {
      // not JSON: the token may still be in the Location
    }
    if (call.accessToken === "" && call.statusUrl !== "") {
      call.accessToken = new URL(call.statusUrl).searchParams.get("token") ?? "";
    }
    this.#keepToken(id, call.accessToken, call.traceId);

    // No await from here on: the callback cannot slip in between.
    const early = this.#takeEarly(id);
    if (early !== undefined) this.#run(handler, early);
    else this.#handlers.set(id, handler);
    return call;
  }

  /**
   * Long-polls the collector API (through the sidecar, `statusPrefix`) until
   * the request has a result, for callers that cannot receive callbacks. It
   * reads with the call's access token; given an id, with the token `do`
   * recorded for it.
   * @throws when there is no access token, on a read answered other than
   * 200/202 (429 and 503 with Retry-After are retried), on abort or close.
   */
  async wait(call: Call | string, opts: WaitOptions = {}): Promise<Result> {
    const id = typeof call === "string" ? call : call.id;
    const kept = this.#tokens.get(id);
    const token = (typeof call === "string" ? "" : call.accessToken) || kept?.token || "";
    const traceId = (typeof call === "string" ? "" : call.traceId) || kept?.traceId || "";
    if (id === "" || token === "") {
      throw new Error("asyncmesh client: wait needs the call's access token (from do's 202)");
    }
    const u = new URL(this.#baseUrl);
    u.pathname = u.pathname.replace(/\/$/, "") + this.#statusPrefix + "/v1/requests/" + encodeURIComponent(id) + "/result";
    u.search = new URLSearchParams({ token, wait: "30s" }).toString();
    for (;;) {
      const signals = [this.#closing.signal, AbortSignal.timeout(this.#timeoutMs)];
      if (opts.signal) signals.push(opts.signal);
      const signal = AbortSignal.any(signals);
      const resp = await this.#fetch(u, { signal });
      const body = await readLimited(resp.body, this.#limits.maxBodyBytes, signal);
      switch (resp.status) {
        case 200: {
          const r = decodeResult(body);
          // The result has no trace id, and this read's x-async-trace-id is
          // the read's own trace (Envoy tags every request): the request's
          // is the one its 202 gave.
          if (r.traceId === "") r.traceId = traceId;
          return r;
        }
        case 202: // not done yet: the long-poll has waited; ask again
          break;
        case 429: // too many long-polls, or the store is down: as told
        case 503: {
          const after = Number(resp.headers.get("retry-after"));
          if (Number.isFinite(after) && after > 0) {
            await sleep(Math.min(after, 30) * 1000, signal);
            break;
          }
          throw readError(id, resp.status, body);
        }
        default:
          // Not u: it holds the access token.
          throw readError(id, resp.status, body);
      }
      signal.throwIfAborted();
    }
  }

  /**
   * Verifies and takes one received callback, for servers other than the
   * embedded receiver and the two handlers below: give it the request's
   * headers and raw body, answer the sender the outcome's status (and JSON
   * error). The request's handler runs after this returns, once per id.
   */
  handleCallback(headers: HeaderSource, body: Uint8Array): CallbackOutcome {
    if (this.#closed) {
      // No handler may start once close has returned; the collector retries.
      return { status: 503, error: { error: "closed", message: "this client is closed" } };
    }
    const webhookId = headerOf(headers, HEADER_ID);
    try {
      verify(headers, body, this.#secrets, this.#now());
    } catch (e) {
      this.#log.warn("refused callback", { webhookId, err: (e as Error).message });
      const code = e instanceof WebhookVerificationError ? e.code : "signature";
      return { status: 401, error: { error: "webhook_" + code, message: (e as Error).message } };
    }
    let plain: Uint8Array = body;
    if (this.#key !== null) {
      try {
        plain = open(algorithmOf(headerOf(headers, "content-type")), this.#key, webhookId, body);
      } catch (e) {
        this.#log.warn("callback not sealed with our key", { webhookId, err: (e as Error).message });
        return { status: 400, error: { error: "not_sealed", message: (e as Error).message } };
      }
    }
    let res: Result;
    try {
      res = decodeResult(plain);
    } catch (e) {
      this.#log.warn("undecodable callback", { webhookId, err: (e as Error).message });
      return { status: 400, error: { error: "bad_payload", message: (e as Error).message } };
    }
    if (res.id !== webhookId) {
      // The collector signs (and seals) with the request id as webhook-id.
      this.#log.warn("callback for another request than its webhook-id", { webhookId, id: res.id });
      return { status: 400, error: { error: "bad_payload", message: "callback payload: id is not the webhook-id" } };
    }
    if (this.#seen.has(res.id)) return { status: 204 }; // delivered again: acknowledged, not run again
    const h = this.#handlers.get(res.id);
    if (h !== undefined) {
      this.#handlers.delete(res.id);
      this.#markSeen(res.id);
      this.#run(h, res);
      return { status: 204 };
    }
    if (!this.#keepEarly(res, plain.length)) {
      return { status: 503, error: { error: "too_many_early_callbacks", message: "too many callbacks without a caller" } };
    }
    this.#markSeen(res.id);
    return { status: 204 };
  }

  /**
   * The receiver as a node:http / Express handler: `app.post("/callbacks",
   * client.nodeHandler)`. It reads the raw body itself; mount it before body
   * parsers, or behind one that leaves a Buffer in req.body (express.raw()).
   */
  readonly nodeHandler = (req: IncomingMessage, res: ServerResponse): void => {
    if (req.method !== "POST") {
      res.setHeader("allow", "POST");
      reply(res, 405, { error: "method_not_allowed", message: "callbacks are POSTed" });
      return;
    }
    const parsed = (req as IncomingMessage & { body?: unknown }).body;
    const bodyP = Buffer.isBuffer(parsed) ? Promise.resolve(parsed) : readLimited(req, this.#limits.maxBodyBytes);
    bodyP.then(
      (body) => {
        const out = this.handleCallback(req.headers, body);
        reply(res, out.status, out.error);
      },
      (e: unknown) => {
        if (e instanceof TooLarge) reply(res, 413, { error: "too_large", message: e.message });
        else reply(res, 400, { error: "unreadable_body", message: String((e as Error)?.message ?? e) });
      },
    );
  };

  /**
   * The receiver as a fetch-style function, Request → Response (Hono, Next.js
   * route handlers, Deno-style servers): `POST` it the callback.
   */
  readonly fetchHandler = async (request: Request): Promise<Response> => {
    if (request.method !== "POST") {
      return jsonResponse(405, { error: "method_not_allowed", message: "callbacks are POSTed" }, { allow: "POST" });
    }
    let body: Buffer;
    try {
      body = await readLimited(request.body, this.#limits.maxBodyBytes);
    } catch (e) {
      if (e instanceof TooLarge) return jsonResponse(413, { error: "too_large", message: e.message });
      return jsonResponse(400, { error: "unreadable_body", message: String((e as Error)?.message ?? e) });
    }
    const out = this.handleCallback(request.headers, body);
    return out.error ? jsonResponse(out.status, out.error) : new Response(null, { status: out.status });
  };

  #prepare(request: AsyncRequest | Request): { url: URL; init: RequestInit & { duplex?: "half" } } {
    const signals = [AbortSignal.timeout(this.#timeoutMs)];
    if (request instanceof Request) {
      signals.push(request.signal);
      return {
        url: new URL(request.url),
        init: { method: request.method, headers: request.headers, body: request.body, duplex: "half", signal: AbortSignal.any(signals) },
      };
    }
    if (request.signal) signals.push(request.signal);
    const init: RequestInit & { duplex?: "half" } = { method: request.method ?? "GET", signal: AbortSignal.any(signals) };
    if (request.headers !== undefined) init.headers = request.headers;
    if (request.body !== undefined && request.body !== null) {
      init.body = request.body;
      init.duplex = "half"; // needed by fetch for a stream body; harmless otherwise
    }
    return { url: new URL(request.url, this.#baseUrl), init };
  }

  #run(h: Handler, r: Result): void {
    // After the sender is answered (the callback is acknowledged before its
    // handler runs, as in the Go SDK), on its own turn of the event loop.
    const p: Promise<void> = new Promise<void>((resolve) => setImmediate(resolve))
      .then(() => h(r))
      .catch((e: unknown) => this.#log.error("handler failed", { id: r.id, err: e instanceof Error ? e.message : String(e) }))
      .finally(() => this.#running.delete(p));
    this.#running.add(p);
  }

  #takeEarly(id: string): Result | undefined {
    const e = this.#early.get(id);
    if (e === undefined) return undefined;
    this.#early.delete(id);
    this.#earlyBytes -= e.size;
    return e.res;
  }

  #keepEarly(res: Result, size: number): boolean {
    const now = this.#now();
    for (const [id, e] of this.#early) {
      if (now - e.at < this.#limits.earlyTtlMs) break;
      this.#log.warn("dropped a callback whose request was never seen", { id, heldMs: now - e.at });
      this.#takeEarly(id);
    }
    if (this.#early.size >= this.#limits.maxEarly || this.#earlyBytes + size > this.#limits.maxEarlyBytes) return false;
    this.#early.set(res.id, { res, at: now, size });
    this.#earlyBytes += size;
    return true;
  }

  #markSeen(id: string): void {
    this.#seen.add(id);
    if (this.#seen.size > this.#limits.maxSeen) {
      const oldest = this.#seen.values().next().value as string;
      this.#seen.delete(oldest);
    }
  }

  #keepToken(id: string, token: string, traceId: string): void {
    if (token === "") return;
    this.#tokens.delete(id);
    this.#tokens.set(id, { token, traceId });
    if (this.#tokens.size > this.#limits.maxSeen) {
      this.#tokens.delete(this.#tokens.keys().next().value as string);
    }
  }

  /** What the client holds (for tests and metrics): handlers waiting, callbacks held early and their bytes, ids remembered. */
  stats(): { handlers: number; early: number; earlyBytes: number; seen: number } {
    return { handlers: this.#handlers.size, early: this.#early.size, earlyBytes: this.#earlyBytes, seen: this.#seen.size };
  }
}

function waitPreference(request: AsyncRequest | Request): string {
  const w = request instanceof Request ? undefined : request.wait;
  if (w === undefined) return "respond-async";
  if (!Number.isInteger(w) || w < 1) throw new Error("asyncmesh client: wait: whole seconds, at least 1");
  return `respond-async, wait=${w}`;
}

function readError(id: string, status: number, body: Buffer): Error {
  return new Error(`asyncmesh client: reading the result of ${id}: ${status}: ${body.subarray(0, 1024).toString("utf8")}`);
}

class TooLarge extends Error {
  constructor(limit: number) {
    super(`body larger than ${limit} bytes`);
    this.name = "TooLarge";
  }
}

/** Reads a body up to limit bytes; more is an error (TooLarge). */
async function readLimited(body: AsyncIterable<Uint8Array> | ReadableStream<Uint8Array> | null, limit: number, signal?: AbortSignal): Promise<Buffer> {
  if (body === null) return Buffer.alloc(0);
  const chunks: Buffer[] = [];
  let n = 0;
  for await (const chunk of body as AsyncIterable<Uint8Array>) {
    signal?.throwIfAborted();
    n += chunk.length;
    if (n > limit) {
      if ("cancel" in body && typeof body.cancel === "function") await body.cancel().catch(() => {});
      throw new TooLarge(limit);
    }
    chunks.push(Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength));
  }
  return Buffer.concat(chunks, n);
}

function reply(res: ServerResponse, status: number, err?: { error: string; message: string }): void {
  if (err) {
    const b = JSON.stringify(err);
    res.writeHead(status, { "content-type": "application/json", "content-length": Buffer.byteLength(b) });
    res.end(b);
  } else {
    res.writeHead(status);
    res.end();
  }
}

function jsonResponse(status: number, body: unknown, headers: Record<string, string> = {}): Response {
  return new Response(JSON.stringify(body), { status, headers: { "content-type": "application/json", ...headers } });
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => {
      signal.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    const onAbort = () => {
      clearTimeout(t);
      reject(signal.reason);
    };
    if (signal.aborted) onAbort();
    else signal.addEventListener("abort", onAbort, { once: true });
  });
}
