// The TypeScript SDK against the real stack: run by the Go e2e test
// TestTypeScriptSDK (e2e/sdk_typescript_test.go), which starts Envoy, the
// collector and the demo service, and checks what this prints: one JSON
// object a line. It imports the built package (dist/), as a user would.
//
//   ASYNCMESH_BASE_URL  the sidecar's Envoy
//   ASYNCMESH_SECRET    the rule's signing secret (whsec_...)
//   ASYNCMESH_KEY       the rule's sealing key, when it seals callbacks
//   ASYNCMESH_REQUESTS  how many async requests (default 3)

import { Client } from "../dist/index.js";

const baseUrl = process.env.ASYNCMESH_BASE_URL;
const secret = process.env.ASYNCMESH_SECRET;
const n = Number(process.env.ASYNCMESH_REQUESTS ?? "3");
if (!baseUrl || !secret) {
  console.error("run.mjs: ASYNCMESH_BASE_URL and ASYNCMESH_SECRET are required");
  process.exit(2);
}

// Each line carries ms, the time since the start: where a slow run spent it.
const start = Date.now();
const out = (o) => process.stdout.write(JSON.stringify({ ...o, ms: Date.now() - start }) + "\n");
const logger = {
  warn: (m, a) => console.error("warn", m, JSON.stringify(a ?? {})),
  error: (m, a) => console.error("error", m, JSON.stringify(a ?? {})),
};
// A guard, not a measurement: the Go test has its own deadline too. Its
// steps may take up to about 50 s on a loaded machine (Prefer: wait=10,
// then a long-poll of up to 30 s), after the callbacks.
const guard = setTimeout(() => {
  console.error(`run.mjs: not done within 150s (${step})`);
  process.exit(3);
}, 150_000);
let step = "starting";

const key = process.env.ASYNCMESH_KEY || undefined;
const c = await Client.create({ baseUrl, secrets: [secret], logger, ...(key ? { key } : {}) });
const runs = new Map();
let pending = n;
let allDone;
const done = new Promise((r) => (allDone = r));

// n async requests; each handler runs once, with the service's answer.
const calls = [];
for (let i = 0; i < n; i++) {
  const call = await c.do(
    { url: "/slow?ms=100", method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ sdk: "ts", i }) },
    (r) => {
      runs.set(r.id, (runs.get(r.id) ?? 0) + 1);
      out({ event: "callback", id: r.id, traceId: r.traceId, status: r.status, responseStatus: r.response?.status, body: r.response?.text() });
      if (--pending === 0) allDone();
    },
  );
  calls.push(call);
  out({ event: "call", id: call.id, traceId: call.traceId, token: call.accessToken !== "", statusUrl: call.statusUrl !== "", sync: call.sync !== undefined });
}
step = "the callbacks";
await done;

// wait(id): the long-poll, with the token do recorded for the id.
step = "wait(id)";
const w = await c.wait(calls[0].id);
out({ event: "wait", id: w.id, traceId: w.traceId, status: w.status, responseStatus: w.response?.status, body: w.response?.text() });

// Prefer: wait: the service's own answer, synchronously; the callback that
// still follows is acknowledged and dropped (its handler never runs). The
// record's long-poll returns once it is delivered, so by then the receiver
// has answered it.
let syncRuns = 0;
step = "do with Prefer: wait";
const s = await c.do({ url: "/slow?ms=50", method: "POST", body: JSON.stringify({ quick: 1 }), wait: 10 }, () => void syncRuns++);
const syncBody = s.sync ? await s.sync.text() : "";
let delivered = "";
step = "the sync request's record";
if (s.id && s.accessToken) {
  const u = new URL(`/async/v1/requests/${encodeURIComponent(s.id)}`, baseUrl);
  u.search = new URLSearchParams({ token: s.accessToken, wait: "30s" }).toString();
  const rec = await (await fetch(u)).json();
  delivered = rec.status;
}
step = "close";
await c.close();
out({ event: "sync", id: s.id, responseStatus: s.sync?.status, body: syncBody, token: s.accessToken !== "", record: delivered, handlerRuns: syncRuns });
out({ event: "done", handlerRuns: Object.fromEntries(runs) });
clearTimeout(guard);
