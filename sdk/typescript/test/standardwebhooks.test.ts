// The official `standardwebhooks` npm package and this SDK agree: each
// verifies what the other signs, and they judge the shared vectors alike.

import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { describe, it, mock } from "node:test";
import { Webhook } from "standardwebhooks";
import { newSecret, parseSecret, sign, verify } from "../src/index.js";
import { loadVectors } from "./vectors.js";

function theirs(secret: string, body: Uint8Array, headers: Record<string, string>): boolean {
  try {
    new Webhook(secret).verify(body, headers, { jsonParse: false });
    return true;
  } catch {
    return false;
  }
}

function ours(secrets: string[], body: Uint8Array, headers: Record<string, string>, now = Date.now()): boolean {
  try {
    verify(headers, body, secrets.map(parseSecret), now);
    return true;
  } catch {
    return false;
  }
}

// Bodies of every kind: JSON, non-ASCII, binary, empty.
function bodies(): Uint8Array[] {
  const out: Uint8Array[] = [Buffer.from('{"id":"x","status":"completed"}'), Buffer.from("café ☕ 日本"), Buffer.alloc(0)];
  for (let i = 0; i < 40; i++) out.push(randomBytes(1 + ((i * 37) % 700)));
  return out;
}

describe("standardwebhooks (npm) interoperability", () => {
  it("it verifies what this SDK signs", () => {
    for (const body of bodies()) {
      const secret = newSecret();
      const id = "msg_" + randomBytes(8).toString("hex");
      const h = sign([parseSecret(secret)], id, body);
      assert.ok(theirs(secret, body, h));
      // and refuses it tampered
      const t = Buffer.concat([body, Buffer.from("x")]);
      assert.ok(!theirs(secret, t, h));
      assert.ok(!ours([secret], t, h));
    }
  });

  it("this SDK verifies what it signs", () => {
    for (const body of bodies()) {
      const secret = newSecret();
      const id = "msg_" + randomBytes(8).toString("hex");
      const wh = new Webhook(secret);
      const now = new Date();
      const h = { "webhook-id": id, "webhook-timestamp": String(Math.floor(now.getTime() / 1000)), "webhook-signature": wh.sign(id, now, body) };
      assert.ok(ours([secret], body, h));
      assert.ok(!ours([newSecret()], body, h));
    }
  });

  it("rotation: a header with two signatures verifies with either secret in both", () => {
    const [a, b] = [newSecret(), newSecret()];
    const body = Buffer.from('{"id":"r"}');
    const h = sign([parseSecret(a), parseSecret(b)], "r", body);
    for (const s of [a, b]) {
      assert.ok(theirs(s, body, h));
      assert.ok(ours([s], body, h));
    }
    assert.ok(!theirs(newSecret(), body, h));
  });

  it("both judge the shared signature vectors alike", (t) => {
    const v = loadVectors();
    const lenient: string[] = [];
    for (const s of v.signatures) {
      const body = Buffer.from(s.body, "utf8");
      mock.timers.enable({ apis: ["Date"], now: s.now * 1000 });
      let their: boolean;
      try {
        // the official library takes one secret: valid if any verifies
        their = s.secrets.some((sec) => theirs(sec, body, s.headers));
      } finally {
        mock.timers.reset();
      }
      assert.equal(ours(s.secrets, body, s.headers, s.now * 1000), s.valid, s.name);
      if (their !== s.valid) {
        // Where they differ, this SDK (as the Go one) is the stricter: the
        // official library reads the timestamp with parseInt and checks the
        // signature over the integer, so a header "1765000000.5" passes
        // there with the signature of 1765000000; Go's strconv.ParseInt
        // (and this SDK) refuse it.
        assert.ok(their && !s.valid, `${s.name}: the official library refuses what this SDK accepts`);
        lenient.push(s.name);
      }
    }
    assert.deepEqual(lenient, v.signatures.filter((s) => !s.valid && /^[0-9]+\./.test(s.headers["webhook-timestamp"] ?? "")).map((s) => s.name));
    t.diagnostic(`${v.signatures.length} vectors`);
  });
});
