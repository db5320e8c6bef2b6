// Sealed payloads and callback payloads beyond the shared vectors: what a
// forger could alter in a JWE header, and the payload's types.

import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { decodeResult, open, parseKey, seal, SealError, MAX_SEALED, algorithmOf } from "../src/index.js";

const KEY = parseKey("MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=");
const ID = "0190b3c2-7d6e-7a1b-8c3d-4e5f60718293";

const b64url = (s: string) => Buffer.from(s).toString("base64url");

describe("seal and open", () => {
  for (const alg of ["aes-256-gcm", "jwe"] as const) {
    it(`${alg}: round trip, and bound to the request id`, () => {
      const { body, contentType } = seal(alg, KEY, ID, "héllo");
      assert.equal(algorithmOf(contentType), alg);
      assert.equal(open(alg, KEY, ID, body).toString(), "héllo");
      assert.throws(() => open(alg, KEY, ID + "x", body), SealError);
      assert.throws(() => open(alg, parseKey(Buffer.alloc(32, 7).toString("base64")), ID, body), SealError);
    });
  }

  it("jwe: a header this reader does not fully understand is refused", () => {
    const good = seal("jwe", KEY, ID, "x").body.toString().split(".");
    const withHeader = (h: object, rest = good.slice(1)) => Buffer.from([b64url(JSON.stringify(h)), ...rest].join("."));
    for (const [name, body] of [
      ["alg A256KW", withHeader({ alg: "A256KW", enc: "A256GCM", kid: ID })],
      ["enc A128GCM", withHeader({ alg: "dir", enc: "A128GCM", kid: ID })],
      ["zip", withHeader({ alg: "dir", enc: "A256GCM", kid: ID, zip: "DEF" })],
      ["crit", withHeader({ alg: "dir", enc: "A256GCM", kid: ID, crit: ["exp"], exp: 1 })],
      ["an encrypted key", Buffer.from([good[0], b64url("k"), ...good.slice(2)].join("."))],
      ["four parts", Buffer.from(good.slice(0, 4).join("."))],
      ["not base64url", Buffer.from([good[0], "", "!!", good[3], good[4]].join("."))],
      ["a header that is not JSON", Buffer.from([b64url("{"), ...good.slice(1)].join("."))],
      ["a JSON array header", withHeader([])],
    ] as const) {
      assert.throws(() => open("jwe", KEY, ID, body), SealError, name);
    }
    // The same header re-encoded (another JSON spelling) fails the tag: the
    // encoded header is the AAD.
    assert.throws(() => open("jwe", KEY, ID, withHeader({ enc: "A256GCM", alg: "dir", kid: ID })), /authentication failed/);
  });

  it("aes-256-gcm: malformed boxes are refused", () => {
    for (const body of ["", "[]", "null", '{"alg":"A128GCM"}', '{"alg":"A256GCM","iv":"AAAA","ciphertext":"AAAA"}', '{"alg":"A256GCM","iv":1}', '{"alg":"A256GCM","iv":"AAAAAAAAAAAAAAAA","ciphertext":"AA"}']) {
      assert.throws(() => open("aes-256-gcm", KEY, ID, Buffer.from(body)), SealError, body);
    }
  });

  it("refuses a body over MAX_SEALED without reading it", () => {
    assert.throws(() => open("jwe", KEY, ID, new Uint8Array(MAX_SEALED + 1)), /too large/);
  });
});

describe("decodeResult", () => {
  it("decodes base64 bodies strictly, and text bodies as UTF-8", () => {
    const r = decodeResult(JSON.stringify({ id: "a", traceId: "t", status: "completed", response: { status: 200, body: "AP8=", bodyEncoding: "base64" } }));
    assert.deepEqual([...r.response!.body], [0, 255]);
    assert.equal(decodeResult('{"id":"a","response":{"status":200,"body":"é"}}').response?.text(), "é");
    assert.throws(() => decodeResult('{"id":"a","response":{"body":"AP8","bodyEncoding":"base64"}}'), /base64/);
  });

  for (const [name, body] of [
    ["not JSON", "{"],
    ["no id", '{"status":"completed"}'],
    ["null", "null"],
    ["an array", "[]"],
    ["an id of another type", '{"id":1}'],
    ["a response status that is not an integer", '{"id":"a","response":{"status":"200"}}'],
    ["a fractional response status", '{"id":"a","response":{"status":200.5}}'],
    ["headers of another type", '{"id":"a","response":{"status":200,"headers":{"x":1}}}'],
    ["a response of another type", '{"id":"a","response":"ok"}'],
  ] as const) {
    it(`refuses ${name}`, () => assert.throws(() => decodeResult(body)));
  }
});
