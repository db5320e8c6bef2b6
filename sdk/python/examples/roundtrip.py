"""Round trip through a real asyncmesh sidecar, with both clients.

Sends --requests async requests with the sync Client and as many with the
AsyncClient, receives their callbacks, reads one result with wait(), sends
one request with Prefer: wait, and prints a JSON summary on stdout. The
end-to-end test (e2e/sdk_python_test.go) runs it against Envoy and the
collector; run it by hand against `build/asyncmesh sidecar` the same way:

    python roundtrip.py --base-url http://127.0.0.1:10000 --secret whsec_...
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import threading
from typing import Any

from asyncmesh import AsyncClient, Client, Request, Result


def view(r: Result, runs: int) -> dict[str, Any]:
    return {
        "id": r.id,
        "traceId": r.trace_id,
        "status": r.status,
        "responseStatus": r.response.status if r.response else 0,
        "body": r.response.text() if r.response else "",
        "error": r.error,
        "runs": runs,
    }


def sync_part(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, list[Result]] = {}
    lock = threading.Lock()
    all_in = threading.Event()

    def handler(r: Result) -> None:
        with lock:
            results.setdefault(r.id, []).append(r)
            if len(results) == args.requests:
                all_in.set()

    with Client(args.base_url, secrets=args.secret, key=args.key) as c:
        calls = [c.do(Request("POST", f"{args.path}?ms=50", body=f"sdk=python-sync n={i}".encode()), handler)
                 for i in range(args.requests)]
        if not all_in.wait(args.timeout):
            raise SystemExit(f"only {len(results)} of {args.requests} callbacks came")
        waited = c.wait(calls[0], timeout=args.timeout)
        out: dict[str, Any] = {
            "calls": [{"id": k.id, "traceId": k.trace_id, "hasToken": bool(k.access_token), "statusUrl": k.status_url} for k in calls],
            "results": [view(rs[0], len(rs)) for rs in results.values()],
            "waited": view(waited, 1),
        }
        if args.prefer_wait:
            call = c.do(Request("POST", f"{args.path}?ms=10", body=b"sdk=prefer-wait"), handler, wait=10)
            assert call.sync is not None
            out["preferWait"] = {"id": call.id, "status": call.sync.status, "body": call.sync.text(), "hasToken": bool(call.access_token)}
        out["pending"] = c.pending()
    return out


async def async_part(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, list[Result]] = {}
    done = asyncio.Event()

    async def handler(r: Result) -> None:
        results.setdefault(r.id, []).append(r)
        if len(results) == args.requests:
            done.set()

    async with AsyncClient(args.base_url, secrets=args.secret, key=args.key) as c:
        calls = await asyncio.gather(*[
            c.do(Request("POST", f"{args.path}?ms=50", body=f"sdk=python-asyncio n={i}".encode()), handler)
            for i in range(args.requests)
        ])
        await asyncio.wait_for(done.wait(), args.timeout)
        return {
            "calls": [{"id": k.id, "traceId": k.trace_id, "hasToken": bool(k.access_token), "statusUrl": k.status_url} for k in calls],
            "results": [view(rs[0], len(rs)) for rs in results.values()],
        }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base-url", required=True)
    p.add_argument("--secret", action="append", required=True, help="whsec_... (repeat during a rotation)")
    p.add_argument("--key", help="the callback.encryption key (base64), for sealed callbacks")
    p.add_argument("--path", default="/slow")
    p.add_argument("--requests", type=int, default=3)
    p.add_argument("--timeout", type=float, default=30)
    p.add_argument("--prefer-wait", action="store_true", help="also send one request with Prefer: wait")
    args = p.parse_args()
    out = {"sync": sync_part(args), "asyncio": asyncio.run(async_part(args))}
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
