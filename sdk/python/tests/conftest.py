"""Shared fixtures: the SDK test vectors and a stand-in for Envoy + collector."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

import asyncmesh

VECTORS = Path(__file__).resolve().parents[2] / "testdata" / "vectors.json"

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
OLD_SECRET = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"
KEY = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


@pytest.fixture(scope="session")
def vectors() -> dict[str, Any]:
    with VECTORS.open(encoding="utf-8") as f:
        v: dict[str, Any] = json.load(f)
    assert v["version"] == 1
    return v


class FakeSidecar:
    """Stands in for Envoy + collector in unit tests (the e2e test runs the
    real ones): answers 202 to ``Prefer: respond-async`` and calls back
    ``x-async-callback``, signed, ``deliveries`` times (with ``early``, once
    before the 202); serves the result long-poll with an access token.

    ``prefer_wait``: a request with ``wait=N`` is answered 200 at once, as
    one that completed within it, and called back all the same.
    """

    def __init__(self, *, deliveries: int = 1, early: bool = False, sign_with: list[str] | None = None,
                 seal_alg: str = "", key: str = KEY, polls_before_result: int = 1) -> None:
        self.deliveries, self.early = deliveries, early
        self.sign_with = sign_with or [SECRET]
        self.seal_alg, self.key = seal_alg, asyncmesh.parse_key(key)
        self.polls_before_result = polls_before_result
        self.requests: list[dict[str, Any]] = []
        self.callback_statuses: list[int] = []
        self.tokens: dict[str, str] = {}
        self.polls: dict[str, int] = {}
        self._expected = 0
        self._lock = threading.Lock()
        self._answered = threading.Condition(self._lock)
        side = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a: Any) -> None:
                pass

            def _send(self, code: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
                self.send_response(code)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                u = urlsplit(self.path)
                parts = u.path.split("/")  # ['', 'async', 'v1', 'requests', id, 'result']
                if len(parts) != 6 or parts[1:4] != ["async", "v1", "requests"] or parts[5] != "result":
                    return self._send(404)
                rid, q = parts[4], parse_qs(u.query)
                if q.get("token", [""])[0] != side.tokens.get(rid) or q.get("wait") != ["30s"]:
                    return self._send(404, b'{"error":"not_found","message":"no request"}')
                with side._lock:
                    side.polls[rid] = side.polls.get(rid, 0) + 1
                    n = side.polls[rid]
                if n <= side.polls_before_result:
                    return self._send(202, json.dumps({"id": rid, "status": "queued"}).encode(), {"retry-after": "1"})
                # As the collector: no traceId in the body; the read's own trace in the header.
                result = {k: v for k, v in side.payload(rid).items() if k != "traceId"}
                return self._send(200, json.dumps(result).encode(), {"content-type": "application/json", "x-async-trace-id": "0" * 32})

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                hs = {k.lower(): v for k, v in self.headers.items()}
                side.requests.append({"method": "POST", "path": self.path, "headers": hs, "body": body})
                prefer = hs.get("prefer", "")
                if not prefer.startswith("respond-async"):
                    return self._send(200, b"sync answer", {"content-type": "text/plain"})
                rid = str(uuid.uuid4())
                token = uuid.uuid4().hex
                side.tokens[rid] = token
                cb = hs["x-async-callback"]
                if side.early:
                    side._expect(1)
                    side.callback(cb, rid)
                if "wait=" in prefer:
                    side._expect(1)
                    side._later(cb, rid, 1)
                    return self._send(201, b'{"done":true}', {"content-type": "application/json", "x-async-request-id": rid,
                                                              "x-async-trace-id": TRACE, "x-async-access-token": token})
                side._expect(side.deliveries)
                loc = f"/async/v1/requests/{rid}?token={token}"
                self._send(202, json.dumps({"id": rid, "traceId": TRACE, "status": "queued", "statusUrl": loc, "accessToken": token}).encode(),
                           {"content-type": "application/json", "location": loc, "x-async-request-id": rid, "x-async-trace-id": TRACE})
                side._later(cb, rid, side.deliveries)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True).start()
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def payload(self, rid: str) -> dict[str, Any]:
        return {"id": rid, "traceId": TRACE, "status": "completed",
                "response": {"status": 201, "headers": {"x": "y"}, "body": "done"}}

    def callback(self, url: str, rid: str, body: bytes | None = None, secrets: list[str] | None = None) -> int:
        """Post one callback for rid; returns the receiver's status."""
        body = body if body is not None else json.dumps(self.payload(rid)).encode()
        ct = "application/json"
        if self.seal_alg:
            body, ct = asyncmesh.seal(self.seal_alg, self.key, rid, body)
        headers = asyncmesh.sign(secrets or self.sign_with, rid, body)
        headers.update({"content-type": ct, "x-async-request-id": rid, "x-async-trace-id": TRACE})
        try:
            code = httpx.post(url, content=body, headers=headers).status_code
        except httpx.HTTPError:
            code = 0  # the receiver is gone (the client was closed)
        with self._lock:
            self.callback_statuses.append(code)
            self._answered.notify_all()
        return code

    def _later(self, url: str, rid: str, n: int) -> None:
        def run() -> None:
            for _ in range(n):
                self.callback(url, rid)

        threading.Thread(target=run, daemon=True).start()

    def _expect(self, n: int) -> None:
        with self._lock:
            self._expected += n

    def join(self) -> None:
        """Wait until every callback has been answered."""
        with self._answered:
            assert self._answered.wait_for(lambda: len(self.callback_statuses) >= self._expected, timeout=30)

    def close(self) -> None:
        self.join()
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def sidecar_factory() -> Iterator[Any]:
    made: list[FakeSidecar] = []

    def make(**kw: Any) -> FakeSidecar:
        s = FakeSidecar(**kw)
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()
