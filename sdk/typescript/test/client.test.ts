import assert from "node:assert/strict";
import { Agent, createServer, request } from "node:http";
import type { AddressInfo } from "node:net";
import { describe, it } from "node:test";
import { Client, parseKey, parseSecret, seal, sign, type Result } from "../src/index.js";
import { deferred, memoryLogger, OTHER_SECRET, payload, postCallback, SECRET, sidecar, tick, TRACE } from "./helpers.js";

const KEY = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

describe("do runs the handler once per request id", () => {
  for (const tc of [
    { name: "callbacks after the 202", early: false },
    { name: "a callback before the 202", early: true },
  ]) {
    it(tc.name, async () => {
      const sc = await sidecar({ deliveries: 3, early: tc.early });
      const c = await Client.create({ baseUrl: sc.url, secrets: [SECRET], logger: memoryLogger() });
      const results: Result[] = [];
      const ran = deferred<void>();
      const call = await c.do({ url: "/slow", method: "POST", body: "{}" }, (r) => {
        results.push(r);
        ran.resolve();
      });
      assert.equal(call.sync, undefined);
      assert.match(call.id, /^0190b3c2-/);
      assert.equal(call.traceId, TRACE);
      assert.equal(call.accessToken, "tok-" + call.id);
      assert.equal(call.statusUrl, `${sc.url}/async/v1/requests/${call.id}?token=tok-${call.id}`);
      await ran.promise;
      const statuses = await sc.settled(); // every delivery answered...
      assert.deepEqual(statuses, tc.early ? [204, 204, 204, 204] : [204, 204, 204]);
      await c.close(); // ...and every handler that was started has finished
      assert.equal(results.length, 1);
      const r = results[0]!;
      assert.equal(r.id, call.id);
      assert.equal(r.status, "completed");
      assert.equal(r.response?.status, 201);
      assert.equal(r.response?.text(), "done");
      assert.equal(r.response?.headers.x, "y");
      assert.deepEqual(c.stats(), { handlers: 0, early: 0, earlyBytes: 0, seen: 1 });
      const h = sc.seen[0]!;
      assert.equal(h["prefer"], "respond-async");
      assert.equal(h["x-async-callback"], c.callbackUrl);
      await sc.close();
    });
  }
});

describe("signatures", () => {
  it("a callback signed with another secret never runs the handler", async () => {
    const sc = await sidecar({ deliveries: 2, secret: OTHER_SECRET });
    const log = memoryLogger();
    const c = await Client.create({ baseUrl: sc.url, secrets: [SECRET], logger: log });
    let runs = 0;
    await c.do({ url: "/slow", method: "POST" }, () => void runs++);
    assert.deepEqual(await sc.settled(), [401, 401]);
    await c.close();
    assert.equal(runs, 0);
    assert.deepEqual(c.stats(), { handlers: 1, early: 0, earlyBytes: 0, seen: 0 });
    assert.ok(log.lines.some((l) => l.includes("refused callback")));
    await sc.close();
  });

  it("rotation: either of several secrets verifies", async () => {
    for (const signer of [SECRET, OTHER_SECRET]) {
      const sc = await sidecar({ deliveries: 1, secret: signer });
      const c = await Client.create({ baseUrl: sc.url, secrets: [OTHER_SECRET, SECRET], logger: memoryLogger() });
      const ran = deferred<Result>();
      await c.do({ url: "/slow", method: "POST" }, (r) => ran.resolve(r));
      assert.equal((await ran.promise).status, "completed");
      assert.deepEqual(await sc.settled(), [204]);
      await c.close();
      await sc.close();
    }
  });

  it("rotation: a callback signed with the new and the old secret verifies with the old alone", () => {
    const c = new Client({ baseUrl: "http://x", secrets: [SECRET], receiver: false, callbackUrl: "http://cb", logger: memoryLogger() });
    const id = "0190b3c2-7d6e-7a1b-8c3d-000000000009";
    const body = Buffer.from(payload(id));
    const h = sign([parseSecret(OTHER_SECRET), parseSecret(SECRET)], id, body);
    assert.match(h["webhook-signature"]!, /^v1,\S+ v1,\S+$/);
    assert.equal(c.handleCallback(h, body).status, 204);
  });

  it("stale, tampered and re-addressed callbacks are refused (attacker)", () => {
    const log = memoryLogger();
    const c = new Client({ baseUrl: "http://x", secrets: [SECRET], receiver: false, callbackUrl: "http://cb", logger: log });
    const id = "0190b3c2-7d6e-7a1b-8c3d-00000000000a";
    const body = Buffer.from(payload(id));
    const old = sign([parseSecret(SECRET)], id, body, Date.now() - 6 * 60_000);
    assert.equal(c.handleCallback(old, body).status, 401);
    const h = sign([parseSecret(SECRET)], id, body);
    assert.equal(c.handleCallback(h, Buffer.from(payload(id, "forged"))).status, 401);
    // A signed callback of another request cannot be passed off as this one.
    assert.equal(c.handleCallback({ ...h, "webhook-id": "0190b3c2-7d6e-7a1b-8c3d-00000000000b" }, body).status, 401);
    assert.equal(c.handleCallback({ ...h, "webhook-signature": "" }, body).status, 401);
    assert.deepEqual(c.stats(), { handlers: 0, early: 0, earlyBytes: 0, seen: 0 });
  });

  it("a signed body whose id is not the webhook-id is refused", () => {
    const c = new Client({ baseUrl: "http://x", secrets: [SECRET], receiver: false, callbackUrl: "http://cb", logger: memoryLogger() });
    const body = Buffer.from(payload("0190b3c2-7d6e-7a1b-8c3d-00000000000c"));
    const out = c.handleCallback(sign([parseSecret(SECRET)], "0190b3c2-7d6e-7a1b-8c3d-00000000000d", body), body);
    assert.equal(out.status, 400);
    assert.equal(out.error?.error, "bad_payload");
  });
});

describe("synchronous answers", () => {
  it("a request no rule made async: the response, no handler", async () => {
    const sc = await sidecar({ sync: () => ({ status: 200, body: "now" }) });
    const c = await Client.create({ baseUrl: sc.url, secrets: [SECRET], logger: memoryLogger() });
    let runs = 0;
    const call = await c.do({ url: "/fast" }, () => void runs++);
    assert.equal(call.sync?.status, 200);
    assert.equal(await call.sync?.text(), "now");
    assert.equal(call.id, "");
    await c.close();
    assert.equal(runs, 0);
    assert.equal(c.stats().handlers, 0);
    await sc.close();
  });

  it("Prefer: wait: the relayed result is returned, its later callback is acknowledged and dropped", async () => {
    const id = "0190b3c2-7d6e-7a1b-8c3d-0000000000aa";
    let prefer = "";
    const sc = await sidecar({
      sync: (req) => {
        prefer = String(req.headers["prefer"]);
        return { status: 200, headers: { "x-async-request-id": id, "x-async-trace-id": TRACE, "x-async-access-token": "tok" }, body: "quick" };
      },
    });
    const c = await Client.create({ baseUrl: sc.url, secrets: [SECRET], logger: memoryLogger() });
    let runs = 0;
    const call = await c.do({ url: "/slow", method: "POST", body: "{}", wait: 5 }, () => void runs++);
    assert.equal(prefer, "respond-async, wait=5");
    assert.equal(call.id, id);
    assert.equal(call.accessToken, "tok");
    assert.equal(await call.sync?.text(), "quick");
    assert.equal(await postCallback(c.callbackUrl, id, payload(id)), 204);
    await c.close();
    assert.equal(runs, 0);
    assert.deepEqual(c.stats(), { handlers: 0, early: 0, earlyBytes: 0, seen: 1 });
    await sc.close();
  });

  it("Prefer: wait after the callback came: the held callback is dropped", async () => {
    const id = "0190b3c2-7d6e-7a1b-8c3d-0000000000ab";
    let c!: Client;
    const sc = await sidecar({
      sync: () => ({ status: 200, headers: { "x-async-request-id": id }, body: "quick" }),
    });
    c = await Client.create({ baseUrl: sc.url, secrets: [SECRET], logger: memoryLogger() });
    assert.equal(await postCallback(c.callbackUrl, id, payload(id)), 204);
    assert.equal(c.stats().early, 1);
    let runs = 0;
    await c.do({ url: "/slow", wait: 2 }, () => void runs++);
    await c.close();
    assert.equal(runs, 0);
    assert.equal(c.stats().early, 0);
    await sc.close();
  });

  it("a wait that is not whole seconds is refused", async () => {
    const c = new Client({ baseUrl: "http://127.0.0.1:9", secrets: [SECRET], receiver: false, callbackUrl: "http://cb" });
    await assert.rejects(c.do({ url: "/x", wait: 0.5 }, () => {}), /whole seconds/);
  });
});

describe("early callbacks are bounded (a flood of callbacks for requests never made)", () => {
  function client(now: { t: number }) {
    return new Client({
      baseUrl: "http://x",
      secrets: [SECRET],
      receiver: false,
      callbackUrl: "http://cb",
      logger: memoryLogger(),
      limits: { maxEarly: 2, maxEarlyBytes: 1000, earlyTtlMs: 60_000, maxSeen: 3 },
      now: () => now.t,
    });
  }
  const post = (c: Client, id: string, body = payload(id), at = Date.now()) => {
    const b = Buffer.from(body);
    return c.handleCallback(sign([parseSecret(SECRET)], id, b, at), b).status;
  };

  it("by count, then room again once they expire", () => {
    const now = { t: Date.now() };
    const c = client(now);
    assert.equal(post(c, "a"), 204);
    assert.equal(post(c, "b"), 204);
    assert.equal(post(c, "c"), 503);
    assert.equal(post(c, "a"), 204, "a repeated delivery of a held callback is acknowledged");
    assert.equal(c.stats().early, 2);
    now.t += 60_000;
    assert.equal(post(c, "d", payload("d"), now.t), 204);
    assert.deepEqual(c.stats(), { handlers: 0, early: 1, earlyBytes: payload("d").length, seen: 3 });
  });

  it("by bytes", () => {
    const c = client({ t: Date.now() });
    assert.equal(post(c, "big", payload("big", "x".repeat(1000))), 503);
    assert.equal(post(c, "a", payload("a", "x".repeat(600))), 204);
    assert.equal(post(c, "b", payload("b", "x".repeat(600))), 503);
    assert.equal(c.stats().early, 1);
  });

  it("remembered ids are bounded", () => {
    const now = { t: Date.now() };
    const c = client(now);
    for (const id of ["a", "b"]) assert.equal(post(c, id), 204);
    now.t += 60_000;
    for (const id of ["c", "d"]) assert.equal(post(c, id, payload(id), now.t), 204);
    assert.equal(c.stats().seen, 3);
  });
});

describe("wait long-polls the result with the access token", () => {
  async function collector(answers: { status: number; body: unknown; headers?: Record<string, string> }[]) {
    const urls: string[] = [];
    const srv = createServer((req, res) => {
      urls.push(req.url ?? "");
      const a = answers.shift() ?? { status: 500, body: {} };
      res.writeHead(a.status, { "content-type": "application/json", ...a.headers });
      res.end(JSON.stringify(a.body));
    });
    await new Promise<void>((r) => srv.listen(0, "127.0.0.1", r));
    const url = `http://127.0.0.1:${(srv.address() as AddressInfo).port}`;
    return { url, urls, close: () => new Promise<void>((r) => srv.close(() => r())) };
  }
  const id = "0190b3c2-7d6e-7a1b-8c3d-0000000000ff";

  it("202 then 200", async () => {
    const col = await collector([
      { status: 202, body: { id, status: "queued" }, headers: { "retry-after": "1" } },
      { status: 200, body: { id, status: "completed", response: { status: 200, body: "AP8=", bodyEncoding: "base64" } }, headers: { "x-async-trace-id": "0".repeat(31) + "1" } },
    ]);
    const c = new Client({ baseUrl: col.url, secrets: [SECRET], receiver: false, callbackUrl: "http://cb" });
    const r = await c.wait({ id, traceId: TRACE, accessToken: "t/k+n", statusUrl: "" });
    assert.equal(r.status, "completed");
    assert.equal(r.traceId, TRACE, "the request's trace id, not the read's");
    assert.deepEqual([...r.response!.body], [0, 255]);
    assert.deepEqual(col.urls, Array(2).fill(`/async/v1/requests/${id}/result?token=t%2Fk%2Bn&wait=30s`));
    await col.close();
  });

  it("by id, with the token do recorded; errors never show the token", async () => {
    const col = await collector([{ status: 404, body: { error: "not_found", message: "no request with id " + id } }]);
    const c = new Client({ baseUrl: col.url + "/base/", secrets: [SECRET], receiver: false, callbackUrl: "http://cb", statusPrefix: "/st" });
    await assert.rejects(c.wait(id), /access token/);
    const sc = await sidecar({ sync: () => ({ status: 200, headers: { "x-async-request-id": id, "x-async-access-token": "secret-token" }, body: "" }) });
    const c2 = new Client({ baseUrl: col.url + "/base/", secrets: [SECRET], receiver: false, callbackUrl: "http://cb", statusPrefix: "/st" });
    await c2.do({ url: sc.url + "/slow", wait: 1 }, () => {});
    await assert.rejects(c2.wait(id), (e: Error) => e.message.includes("404") && !e.message.includes("secret-token"));
    assert.deepEqual(col.urls, [`/base/st/v1/requests/${id}/result?token=secret-token&wait=30s`]);
    await sc.close();
    await col.close();
  });

  it("close ends a wait in progress", async () => {
    const srv = createServer(() => {}); // never answers
    await new Promise<void>((r) => srv.listen(0, "127.0.0.1", r));
    const c = new Client({ baseUrl: `http://127.0.0.1:${(srv.address() as AddressInfo).port}`, secrets: [SECRET], receiver: false, callbackUrl: "http://cb" });
    const w = c.wait({ id, traceId: "", accessToken: "t", statusUrl: "" });
    await tick();
    await c.close();
    await assert.rejects(w, /closed/);
    srv.closeAllConnections();
    await new Promise<void>((r) => srv.close(() => r()));
  });
});

describe("receiving in a server of your own", () => {
  const id = "0190b3c2-7d6e-7a1b-8c3d-0000000000c1";
  const newClient = (log = memoryLogger()) =>
    new Client({ baseUrl: "http://x", secrets: [SECRET], receiver: false, callbackUrl: "http://cb", logger: log, limits: { maxBodyBytes: 4096 } });

  it("nodeHandler, with or without a raw body parser before it", async () => {
    const c = newClient();
    const srv = createServer((req, res) => {
      if (req.url === "/raw") {
        // express.raw() leaves the body in req.body as a Buffer
        const chunks: Buffer[] = [];
        req.on("data", (d: Buffer) => chunks.push(d));
        req.on("end", () => {
          (req as typeof req & { body: Buffer }).body = Buffer.concat(chunks);
          c.nodeHandler(req, res);
        });
        return;
      }
      c.nodeHandler(req, res);
    });
    await new Promise<void>((r) => srv.listen(0, "127.0.0.1", r));
    const base = `http://127.0.0.1:${(srv.address() as AddressInfo).port}`;
    assert.equal(await postCallback(base + "/hooks", id, payload(id)), 204);
    assert.equal(await postCallback(base + "/raw", "0190b3c2-7d6e-7a1b-8c3d-0000000000c2", payload("0190b3c2-7d6e-7a1b-8c3d-0000000000c2")), 204);
    assert.equal(await postCallback(base + "/hooks", id, payload(id, "x".repeat(5000))), 413);
    assert.equal((await fetch(base + "/hooks")).status, 405);
    assert.equal(c.stats().early, 2);
    srv.closeAllConnections();
    await new Promise<void>((r) => srv.close(() => r()));
  });

  it("fetchHandler", async () => {
    const c = newClient();
    const body = Buffer.from(payload(id));
    const req = (b: Uint8Array, h: Record<string, string>) => new Request("http://cb/callbacks", { method: "POST", headers: h, body: b });
    const good = await c.fetchHandler(req(body, sign([parseSecret(SECRET)], id, body)));
    assert.equal(good.status, 204);
    const bad = await c.fetchHandler(req(body, sign([parseSecret(OTHER_SECRET)], id, body)));
    assert.equal(bad.status, 401);
    assert.equal(((await bad.json()) as { error: string }).error, "webhook_signature");
    const big = Buffer.alloc(5000, 1);
    assert.equal((await c.fetchHandler(req(big, sign([parseSecret(SECRET)], id, big)))).status, 413);
    assert.equal((await c.fetchHandler(new Request("http://cb/callbacks"))).status, 405);
  });
});

describe("close", () => {
  // The collector's Go client keeps its connection to the receiver open
  // between callbacks (90 s). One busy when close() begins goes idle after:
  // close() must not wait for the collector to drop it. (The test's timeout
  // is the hang detector: without the sweep, close() waits for the
  // server's keep-alive timeout or the peer.)
  it("does not wait for a keep-alive connection that goes idle after it", { timeout: 4000 }, async () => {
    const sc = await sidecar({ deliveries: 0 });
    const c = await Client.create({ baseUrl: sc.url, secrets: [SECRET], logger: memoryLogger() });
    const id = "0190b3c2-7d6e-7a1b-8c3d-0000000000e1";
    const body = Buffer.from(payload(id));
    const agent = new Agent({ keepAlive: true, maxSockets: 1 });
    const u = new URL(c.callbackUrl);
    const post = () => {
      const answered = deferred<number>();
      const req = request({ host: u.hostname, port: u.port, path: u.pathname, method: "POST", agent,
        headers: { "content-type": "application/json", "content-length": String(body.length), ...sign([parseSecret(SECRET)], id, body) } },
        (res) => { res.resume(); res.on("end", () => answered.resolve(res.statusCode ?? 0)); });
      return { req, answered: answered.promise };
    };
    const first = post(); // the connection, kept alive
    first.req.end(body);
    assert.ok((await first.answered) < 500);
    const second = post();
    second.req.write(body.subarray(0, 10)); // busy: its body is still coming
    await new Promise((r) => setTimeout(r, 100)); // the receiver has its headers
    const closed = c.close();
    second.req.end(body.subarray(10));
    assert.equal(await second.answered, 503); // closed: the collector retries it elsewhere
    await closed; // while the agent still keeps the connection
    agent.destroy();
    await sc.close();
  });
});

describe("handlers", () => {
  it("after close, callbacks are refused with 503 (the collector retries)", async () => {
    const c = new Client({ baseUrl: "http://x", secrets: [SECRET], receiver: false, callbackUrl: "http://cb", logger: memoryLogger() });
    await c.close();
    const id = "0190b3c2-7d6e-7a1b-8c3d-0000000000d1";
    const body = Buffer.from(payload(id));
    assert.equal(c.handleCallback(sign([parseSecret(SECRET)], id, body), body).status, 503);
    await assert.rejects(c.do({ url: "/x" }, () => {}), /closed/);
  });

  it("a handler that throws is logged; close waits for running handlers", async () => {
    const sc = await sidecar({ deliveries: 1 });
    const log = memoryLogger();
    const c = await Client.create({ baseUrl: sc.url, secrets: [SECRET], logger: log });
    const started = deferred<void>();
    const release = deferred<void>();
    let finished = false;
    await c.do({ url: "/slow", method: "POST" }, async () => {
      started.resolve();
      await release.promise;
      finished = true;
    });
    await c.do({ url: "/slow", method: "POST" }, () => {
      throw new Error("boom");
    });
    await started.promise;
    await sc.settled();
    const closed = c.close();
    await tick();
    assert.equal(finished, false);
    release.resolve();
    await closed;
    assert.equal(finished, true);
    assert.ok(log.lines.some((l) => l.startsWith("error handler failed") && l.includes("boom")));
    await sc.close();
  });
});

describe("sealed callbacks", () => {
  it("with a key: sealed ones (both algorithms) open, unsealed ones are refused", async () => {
    const sc = await sidecar({ deliveries: 0 });
    const c = await Client.create({ baseUrl: sc.url, secrets: [SECRET], key: KEY, logger: memoryLogger() });
    const got: Result[] = [];
    const ids: string[] = [];
    for (let i = 0; i < 2; i++) ids.push((await c.do({ url: "/slow", method: "POST" }, (r) => void got.push(r))).id);
    const [a, b] = ids as [string, string];
    assert.equal(await postCallback(c.callbackUrl, a, payload(a)), 400);
    const k = parseKey(KEY);
    const sa = seal("aes-256-gcm", k, a, payload(a, "sealed-a"));
    // Sealed for b, but sent as a's: the AAD / kid binds it to b.
    const sb = seal("jwe", k, b, payload(b, "sealed-b"));
    assert.equal(await postCallback(c.callbackUrl, a, sb.body, SECRET, { "content-type": sb.contentType }), 400);
    assert.equal(await postCallback(c.callbackUrl, a, sa.body, SECRET, { "content-type": sa.contentType }), 204);
    assert.equal(await postCallback(c.callbackUrl, b, sb.body, SECRET, { "content-type": sb.contentType }), 204);
    await c.close();
    assert.deepEqual(got.map((r) => r.response?.text()).sort(), ["sealed-a", "sealed-b"]);
    await sc.close();
  });
});

describe("configuration", () => {
  for (const [name, opts] of [
    ["no secrets", { baseUrl: "http://x", secrets: [] }],
    ["a bad secret", { baseUrl: "http://x", secrets: ["nope"] }],
    ["a short secret", { baseUrl: "http://x", secrets: ["whsec_" + Buffer.alloc(8).toString("base64")] }],
    ["no baseUrl", { baseUrl: "", secrets: [SECRET] }],
    ["a baseUrl of another scheme", { baseUrl: "ftp://x", secrets: [SECRET] }],
    ["a bad key", { baseUrl: "http://x", secrets: [SECRET], key: "c2hvcnQ=" }],
    ["no receiver and no callbackUrl", { baseUrl: "http://x", secrets: [SECRET], receiver: false }],
    ["a receiver on every address and no callbackUrl", { baseUrl: "http://x", secrets: [SECRET], receiver: { host: "0.0.0.0" } }],
  ] as const) {
    it(`refuses ${name}`, () => {
      assert.throws(() => new Client(opts as never));
    });
  }

  it("never prints a secret", () => {
    const s = parseSecret(SECRET);
    assert.equal(String(s), "whsec_[redacted]");
    assert.equal(JSON.stringify({ s }), '{"s":"whsec_[redacted]"}');
  });
});
