// A short seeded fuzz of the parsers of outside input (callback headers and
// bodies, sealed bodies, payloads): mutated input is refused with the
// parser's own error, never a crash, and a handler never runs for a
// callback that is not exactly what the sender signed. (Node has no native
// fuzzer; the Go SDK's FuzzXxx targets cover the Go side.)

import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { Client, decodeResult, open, parseKey, parseSecret, PayloadError, seal, SealError, sign, verify, WebhookVerificationError } from "../src/index.js";
import { memoryLogger, payload, SECRET } from "./helpers.js";

const KEY = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
const ID = "0190b3c2-7d6e-7a1b-8c3d-4e5f60718293";
const ITERATIONS = Number(process.env.ASYNCMESH_FUZZ_ITERATIONS ?? "3000");

// mulberry32: a small seeded generator, so a failure replays.
function rng(seed: number): () => number {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function mutate(r: () => number, b: Buffer): Buffer {
  const out = Buffer.from(b);
  const n = 1 + Math.floor(r() * 4);
  let cur = out;
  for (let i = 0; i < n; i++) {
    const pos = Math.floor(r() * (cur.length + 1));
    switch (Math.floor(r() * 4)) {
      case 0: // flip a byte
        if (cur.length > 0) {
          const at = Math.min(pos, cur.length - 1);
          cur[at] = cur[at]! ^ (1 + Math.floor(r() * 255));
        }
        break;
      case 1: // delete a run
        cur = Buffer.concat([cur.subarray(0, pos), cur.subarray(pos + 1 + Math.floor(r() * 8))]);
        break;
      case 2: // insert interesting bytes
        cur = Buffer.concat([cur.subarray(0, pos), Buffer.from(['"', "{", "}", ".", "=", "\\u0000", "null", "1e999", "\u00ff"][Math.floor(r() * 9)]!), cur.subarray(pos)]);
        break;
      default: // duplicate a run
        cur = Buffer.concat([cur.subarray(0, pos), cur.subarray(pos, pos + 16), cur.subarray(pos)]);
    }
  }
  return cur;
}

describe("fuzz (seeded)", () => {
  it("sealed bodies and payloads: only the parsers' own errors", () => {
    const r = rng(1);
    const key = parseKey(KEY);
    const seeds = [seal("aes-256-gcm", key, ID, payload(ID)).body, seal("jwe", key, ID, payload(ID)).body, Buffer.from(payload(ID))];
    for (let i = 0; i < ITERATIONS; i++) {
      const b = mutate(r, seeds[i % seeds.length]!);
      for (const alg of ["aes-256-gcm", "jwe"] as const) {
        try {
          open(alg, key, ID, b);
        } catch (e) {
          assert.ok(e instanceof SealError, `open ${alg} ${b.toString("base64")}: ${e}`);
        }
      }
      try {
        decodeResult(b);
      } catch (e) {
        assert.ok(e instanceof PayloadError, `decodeResult ${b.toString("base64")}: ${e}`);
      }
    }
  });

  it("callbacks: a mutated callback never runs a handler", async () => {
    const r = rng(2);
    const secrets = [parseSecret(SECRET)];
    for (const sealed of [false, true]) {
      const c = new Client({ baseUrl: "http://x", secrets: [SECRET], receiver: false, callbackUrl: "http://cb", logger: memoryLogger(), ...(sealed ? { key: KEY } : {}) });
      const plain = Buffer.from(payload(ID));
      const body = sealed ? seal("jwe", parseKey(KEY), ID, plain).body : plain;
      const headers: Record<string, string> = { ...sign(secrets, ID, body), "content-type": sealed ? "application/jose" : "application/json" };
      for (let i = 0; i < ITERATIONS; i++) {
        const b = mutate(r, body);
        const h: Record<string, string> = { ...headers };
        if (i % 3 === 0) {
          const name = (["webhook-id", "webhook-timestamp", "webhook-signature", "content-type"] as const)[i % 4]!;
          h[name] = mutate(r, Buffer.from(h[name]!)).toString("latin1");
        }
        // What the signature covers (content-type is not signed).
        const same = b.equals(body) && (["webhook-id", "webhook-timestamp", "webhook-signature"] as const).every((k) => h[k] === headers[k]);
        try {
          verify(h, b, secrets);
        } catch (e) {
          assert.ok(e instanceof WebhookVerificationError, String(e));
        }
        const out = c.handleCallback(h, b);
        if (!same) assert.notEqual(out.status, 204, `accepted a mutated callback: ${b.toString("latin1")} ${JSON.stringify(h)}`);
      }
      assert.ok(c.stats().early <= 1); // the unmutated one, when a mutation left it whole
      await c.close();
    }
  });
});
