// The README's example, compiled with the tests so that it stays true to the
// API (not run: it needs a sidecar).
import { Client } from "../src/index.js";

export async function example(): Promise<void> {
  const c = await Client.create({ baseUrl: "http://reports.internal", secrets: [process.env.WEBHOOK_SECRET!] });
  const call = await c.do({ url: "/reports?month=2026-11", method: "POST", body: "{}" }, (r) => {
    if (r.status === "completed") console.log(r.id, r.response!.status, r.response!.json());
    else console.error(r.id, "failed:", r.error);
  });
  console.log("accepted", call.id); // the 202; the handler runs later, once
  const same = await c.wait(call); // or long-poll instead, with the call's access token
  console.log(same.status);
  await c.close(); // stops the receiver, waits for running handlers
}

// The handlers for a server of your own.
export function mount(c: Client, app: { post(path: string, h: typeof c.nodeHandler): void }, headers: Headers, rawBody: Uint8Array) {
  app.post("/callbacks", c.nodeHandler);
  const POST = (req: Request) => c.fetchHandler(req);
  const { status, error } = c.handleCallback(headers, rawBody);
  return { POST, status, error };
}
