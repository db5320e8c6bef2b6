// The shared test vectors (sdk/testdata/vectors.json, generated from the Go
// code; the Go, TypeScript and Python SDKs' tests all read it).

import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { Client, open, parseKey, parseSecret, verify, WebhookVerificationError, type Result } from "../src/index.js";
import { memoryLogger } from "./helpers.js";
import { loadVectors, type ResultVector } from "./vectors.js";

const v = loadVectors();

/** A Result as the vectors write it (the body in base64). */
function plain(r: Result): ResultVector {
  const o: ResultVector = { id: r.id, traceId: r.traceId, status: r.status };
  if (r.response) {
    o.response = { status: r.response.status, bodyBase64: r.response.body.toString("base64") };
    if (Object.keys(r.response.headers).length > 0) o.response.headers = { ...r.response.headers };
  }
  if (r.error !== undefined) o.error = r.error;
  return o;
}

describe("shared vectors", () => {
  it("is a version this SDK reads", () => {
    assert.equal(v.version, 1);
    assert.equal(v.tolerance, 300);
    assert.ok(v.signatures.length > 0 && v.sealed.length > 0 && v.callbacks.length > 0);
  });

  describe("signatures", () => {
    for (const s of v.signatures) {
      it(s.name, () => {
        const secrets = s.secrets.map(parseSecret);
        const run = () => verify(s.headers, Buffer.from(s.body, "utf8"), secrets, s.now * 1000);
        if (s.valid) {
          assert.equal(run(), s.headers["webhook-id"]);
        } else {
          assert.throws(run, (e: unknown) => e instanceof WebhookVerificationError && (s.error === undefined || e.code === s.error));
        }
      });
    }
  });

  describe("sealed payloads", () => {
    for (const s of v.sealed) {
      it(s.name, () => {
        const run = () => open(s.alg, parseKey(s.key), s.requestId, Buffer.from(s.sealed, "utf8"));
        if (s.valid) assert.equal(run().toString("utf8"), s.plaintext);
        else assert.throws(run);
      });
    }
  });

  describe("callbacks, through the client's receiver", () => {
    for (const cb of v.callbacks) {
      it(cb.name, async () => {
        const opts = {
          baseUrl: "http://sidecar.invalid",
          secrets: cb.secrets,
          receiver: false as const,
          callbackUrl: "http://receiver.invalid/callbacks",
          logger: memoryLogger(),
          now: () => cb.now * 1000,
          // The 202 of the request, after its callback (held until then).
          fetch: (async () =>
            new Response(JSON.stringify({ accessToken: "t" }), {
              status: 202,
              headers: { "x-async-request-id": cb.requestId, "content-type": "application/json" },
            })) as typeof fetch,
          ...(cb.key !== undefined ? { key: cb.key } : {}),
        };
        const c = new Client(opts);
        const out = c.handleCallback(cb.headers, Buffer.from(cb.body, "utf8"));
        assert.equal(out.status, cb.status, JSON.stringify(out.error));
        const got: Result[] = [];
        await c.do({ url: "/r", method: "POST" }, (r) => void got.push(r));
        await c.close();
        if (cb.valid) {
          assert.equal(got.length, 1);
          assert.deepEqual(plain(got[0]!), cb.result);
        } else {
          assert.equal(got.length, 0);
        }
      });
    }
  });
});
