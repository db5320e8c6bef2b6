// Test helpers: a stand-in for Envoy + collector (unit tests only; the real
// stack is the Go e2e test TestTypeScriptSDK), and small waits.

import { createServer, type IncomingMessage, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { parseSecret, sign, type Logger } from "../src/index.js";

export const SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
export const OTHER_SECRET = "whsec_" + "A".repeat(32);
export const TRACE = "4bf92f3577b34da6a3ce929d0e0e4736";

/** A logger that keeps what it is told. */
export function memoryLogger(): Logger & { lines: string[] } {
  const lines: string[] = [];
  return {
    lines,
    warn: (m, a) => void lines.push("warn " + m + " " + JSON.stringify(a ?? {})),
    error: (m, a) => void lines.push("error " + m + " " + JSON.stringify(a ?? {})),
  };
}

export function payload(id: string, body = "done", status = 201): string {
  return JSON.stringify({ id, traceId: TRACE, status: "completed", response: { status, headers: { x: "y" }, body } });
}

/** POSTs a signed callback to url; returns the status. */
export async function postCallback(url: string, id: string, body: string | Uint8Array, secret = SECRET, extra: Record<string, string> = {}, now = Date.now()): Promise<number> {
  const b = typeof body === "string" ? Buffer.from(body) : body;
  const h = { "content-type": "application/json", ...sign([parseSecret(secret)], id, b, now), ...extra };
  const r = await fetch(url, { method: "POST", headers: h, body: b });
  await r.arrayBuffer();
  return r.status;
}

export interface SidecarOptions {
  /** Callbacks sent after the 202 (at-least-once: several). */
  deliveries?: number;
  /** One callback sent before the 202 is answered. */
  early?: boolean;
  /** The secret the callbacks are signed with. */
  secret?: string;
  /** Answers every request itself (sync) instead. */
  sync?: (req: IncomingMessage) => { status: number; headers?: Record<string, string>; body: string } | undefined;
}

export interface Sidecar {
  url: string;
  /** Requests seen: their headers. */
  seen: IncomingMessage["headers"][];
  /** Resolves when every callback it sent has been answered; their statuses. */
  settled(): Promise<number[]>;
  close(): Promise<void>;
}

/**
 * sidecar answers 202 with a fresh id and then calls back the URL in
 * x-async-callback, signed, `deliveries` times; with early, the first callback
 * is sent (and answered) before the 202.
 */
export async function sidecar(opts: SidecarOptions = {}): Promise<Sidecar> {
  let n = 0;
  const seen: IncomingMessage["headers"][] = [];
  const sends: Promise<number>[] = [];
  const srv: Server = createServer(async (req, res) => {
    for await (const _ of req) {
      // drain the body
    }
    seen.push(req.headers);
    const s = opts.sync?.(req);
    if (s !== undefined) {
      res.writeHead(s.status, s.headers ?? {});
      res.end(s.body);
      return;
    }
    if (!String(req.headers["prefer"] ?? "").startsWith("respond-async")) {
      res.writeHead(200);
      res.end("sync");
      return;
    }
    n++;
    const id = `0190b3c2-7d6e-7a1b-8c3d-${String(n).padStart(12, "0")}`;
    const cb = String(req.headers["x-async-callback"]);
    const send = () => postCallback(cb, id, payload(id), opts.secret ?? SECRET).catch(() => 0);
    if (opts.early) {
      const p = send();
      sends.push(p);
      await p;
    }
    const token = "tok-" + id;
    res.writeHead(202, {
      "content-type": "application/json",
      "x-async-request-id": id,
      "x-async-trace-id": TRACE,
      location: `/async/v1/requests/${id}?token=${token}`,
    });
    res.end(JSON.stringify({ id, status: "queued", statusUrl: `/async/v1/requests/${id}?token=${token}`, accessToken: token }));
    for (let i = 0; i < (opts.deliveries ?? 1); i++) sends.push(send());
  });
  await new Promise<void>((r) => srv.listen(0, "127.0.0.1", r));
  const a = srv.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${a.port}`,
    seen,
    settled: async () => {
      // More sends may be pushed while waiting.
      let k = 0;
      while (k !== sends.length) {
        k = sends.length;
        await Promise.all(sends);
      }
      return Promise.all(sends);
    },
    close: () =>
      new Promise<void>((r) => {
        srv.close(() => r());
        srv.closeAllConnections();
      }),
  };
}

/** A promise and its resolver. */
export function deferred<T>(): { promise: Promise<T>; resolve: (v: T) => void } {
  let resolve!: (v: T) => void;
  const promise = new Promise<T>((r) => (resolve = r));
  return { promise, resolve };
}

/** Lets scheduled handlers (setImmediate) run. */
export function tick(): Promise<void> {
  return new Promise((r) => setImmediate(r));
}
