"""The sync client against a stand-in sidecar (conftest.FakeSidecar):
once per request id, early callbacks, rotation, forged callbacks,
Prefer: wait, wait(), sealed callbacks, the caller's token."""

from __future__ import annotations

import json
import socket
import threading
from typing import Any

import httpx
import pytest

import asyncmesh
from asyncmesh import Client, Request, RequestError, Result
from conftest import KEY, OLD_SECRET, SECRET, TRACE


class Got:
    """Collects handler runs."""

    def __init__(self) -> None:
        self.results: list[Result] = []
        self.event = threading.Event()
        self.lock = threading.Lock()

    def __call__(self, r: Result) -> None:
        with self.lock:
            self.results.append(r)
        self.event.set()

    def one(self) -> Result:
        assert self.event.wait(10), "handler never ran"
        return self.results[0]


@pytest.mark.parametrize("early", [False, True], ids=["callback after the 202", "callback before the 202"])
def test_handler_runs_once(sidecar_factory: Any, early: bool) -> None:
    sc = sidecar_factory(deliveries=3, early=early)
    got = Got()
    with Client(sc.url, secrets=[SECRET]) as c:
        call = c.do(Request("POST", "/slow", body=b"{}"), got)
        assert call.id and call.sync is None and call.trace_id == TRACE and call.access_token
        assert call.status_url.startswith(sc.url + "/async/v1/requests/" + call.id + "?token=")
        r = got.one()
        assert r.id == call.id and r.status == "completed" and r.response is not None
        assert (r.response.status, r.response.body, r.response.headers) == (201, b"done", {"x": "y"})
        sc.join()  # every delivery answered
    assert len(got.results) == 1
    assert sc.callback_statuses == [204] * (4 if early else 3)
    sent = sc.requests[0]["headers"]
    assert sent["prefer"] == "respond-async" and sent["x-async-callback"] == c.callback_url


def test_rotation_old_secret_still_verifies(sidecar_factory: Any) -> None:
    sc = sidecar_factory(sign_with=[SECRET, OLD_SECRET])
    got = Got()
    with Client(sc.url, secrets=[OLD_SECRET]) as c:
        c.do(Request("POST", "/slow"), got)
        assert got.one().status == "completed"


def test_rotation_client_with_two_secrets(sidecar_factory: Any) -> None:
    sc = sidecar_factory(sign_with=[OLD_SECRET])
    got = Got()
    with Client(sc.url, secrets=[SECRET, OLD_SECRET]) as c:
        c.do(Request("POST", "/slow"), got)
        assert got.one().status == "completed"


def test_forged_callback_refused(sidecar_factory: Any) -> None:
    sc = sidecar_factory(sign_with=["whsec_" + "A" * 32])
    got = Got()
    with Client(sc.url, secrets=[SECRET]) as c:
        c.do(Request("POST", "/slow"), got)
        sc.join()
    assert sc.callback_statuses == [401] and got.results == []


def test_sync_answer_is_returned(sidecar_factory: Any) -> None:
    sc = sidecar_factory()
    sc.requests.clear()
    got = Got()
    with Client(sc.url, secrets=[SECRET]) as c:
        # The stand-in answers synchronously without Prefer: respond-async;
        # a real sidecar does so for routes no rule makes async.
        c._http.event_hooks["request"] = [lambda req: req.headers.pop("prefer")]
        call = c.do(Request("POST", "/fast"), got)
    assert call.sync is not None and call.sync.status == 200 and call.sync.body == b"sync answer" and not call.id
    assert got.results == []


def test_prefer_wait(sidecar_factory: Any) -> None:
    sc = sidecar_factory()
    got = Got()
    with Client(sc.url, secrets=[SECRET]) as c:
        call = c.do(Request("POST", "/slow"), got, wait=5)
        assert sc.requests[0]["headers"]["prefer"] == "respond-async, wait=5"
        assert call.sync is not None and call.sync.status == 201 and call.sync.json() == {"done": True}
        assert call.id and call.access_token and call.trace_id == TRACE
        sc.join()  # the callback is sent all the same: acknowledged, not run
        assert sc.callback_statuses == [204]
        assert c.pending() == 0
    assert got.results == []
    with Client(sc.url, secrets=[SECRET]) as c, pytest.raises(ValueError):
        c.do(Request("POST", "/slow"), got, wait=61)


def test_wait_long_polls(sidecar_factory: Any) -> None:
    sc = sidecar_factory(deliveries=0, polls_before_result=2)
    with Client(sc.url, secrets=[SECRET]) as c:
        call = c.do(Request("POST", "/slow"), lambda r: None)
        r = c.wait(call, timeout=30)
        assert r.id == call.id and r.status == "completed" and r.trace_id == TRACE
        assert r.response is not None and r.response.body == b"done"
        assert sc.polls[call.id] == 3
        # By id and token, as a caller that kept them (the trace id is then unknown).
        by_id = c.wait(call.id, token=call.access_token)
        assert by_id.id == call.id and by_id.trace_id == ""
        with pytest.raises(RequestError) as e:
            c.wait(call.id, token="not-the-token")
        assert e.value.status == 404 and "not-the-token" not in str(e.value)
        with pytest.raises(ValueError):
            c.wait(call.id)


@pytest.mark.parametrize("alg", [asyncmesh.AES_GCM, asyncmesh.JWE])
def test_sealed_callbacks(sidecar_factory: Any, alg: str) -> None:
    sc = sidecar_factory(seal_alg=alg)
    got = Got()
    with Client(sc.url, secrets=[SECRET], key=KEY) as c:
        c.do(Request("POST", "/slow"), got)
        assert got.one().response is not None
        # Unsealed, to a client with a key: refused.
        sc.seal_alg = ""
        assert sc.callback(c.callback_url, "0190b3c2-7d6e-7a1b-8c3d-4e5f60718293") == 400


def test_callback_authorization(sidecar_factory: Any) -> None:
    sc = sidecar_factory(deliveries=0)
    with Client(sc.url, secrets=[SECRET], callback_authorization="Bearer s3cret") as c:
        body = json.dumps(sc.payload("x")).encode()
        h = asyncmesh.sign([SECRET], "x", body)
        assert httpx.post(c.callback_url, content=body, headers=h).status_code == 401
        assert httpx.post(c.callback_url, content=body, headers={**h, "authorization": "Bearer s3cret"}).status_code == 204


def test_bearer_token(sidecar_factory: Any) -> None:
    sc = sidecar_factory(deliveries=0)
    tokens = iter(["t1", "t2"])
    with Client(sc.url, secrets=[SECRET], bearer_token=lambda: next(tokens)) as c:
        c.do(Request("POST", "/slow"), lambda r: None)
        c.do(Request("POST", "/slow"), lambda r: None)
        c.do(Request("POST", "/slow", headers={"Authorization": "Bearer own"}), lambda r: None)
    assert [r["headers"]["authorization"] for r in sc.requests] == ["Bearer t1", "Bearer t2", "Bearer own"]


def test_handler_exception_does_not_stop_others(sidecar_factory: Any) -> None:
    sc = sidecar_factory()
    got = Got()

    def bad(r: Result) -> None:
        raise RuntimeError("boom")

    with Client(sc.url, secrets=[SECRET]) as c:
        c.do(Request("POST", "/slow"), bad)
        c.do(Request("POST", "/slow"), got)
        assert got.one().status == "completed"


def _raw(addr: tuple[str, int], data: bytes) -> bytes:
    with socket.create_connection(addr, timeout=5) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        out = b""
        while chunk := s.recv(4096):
            out += chunk
        return out


def test_receiver_bounds_its_input(sidecar_factory: Any) -> None:
    sc = sidecar_factory(deliveries=0)
    with Client(sc.url, secrets=[SECRET]) as c:
        addr = c._receiver.address
        assert _raw(addr, b"POST /callbacks HTTP/1.1\r\nhost: x\r\ncontent-length: 999999999999\r\n\r\n").startswith(b"HTTP/1.1 413")
        assert _raw(addr, b"POST /callbacks HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n").startswith(b"HTTP/1.1 411")
        assert _raw(addr, b"POST /other HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n").startswith(b"HTTP/1.1 404")
        assert _raw(addr, b"POST /callbacks HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\n{}").startswith(b"HTTP/1.1 401")


def test_bad_config() -> None:
    for kw in [dict(secrets=[]), dict(secrets=["nope"]), dict(secrets=SECRET), dict(secrets=[SECRET], key="short")]:
        with pytest.raises((ValueError, TypeError)):
            Client("http://127.0.0.1:1", **kw)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Client("not a url", secrets=[SECRET])


def test_receiver_drops_a_stalled_sender(sidecar_factory: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A sender that promises a body and stalls holds one thread until the
    read timeout, then is cut off; the receiver keeps serving."""
    sc = sidecar_factory(deliveries=0)
    with Client(sc.url, secrets=[SECRET]) as c:
        handler_cls = c._receiver._server.RequestHandlerClass
        monkeypatch.setattr(handler_cls, "timeout", 0.2)
        with socket.create_connection(c._receiver.address, timeout=5) as s:
            s.sendall(b"POST /callbacks HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n{")
            assert s.recv(4096) == b""  # closed without an answer
        assert _raw(c._receiver.address, b"POST /callbacks HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\n{}").startswith(b"HTTP/1.1 401")


def test_payload_for_another_request_refused(sidecar_factory: Any) -> None:
    """A validly signed callback whose payload names another request than its
    webhook-id never reaches that request's handler."""
    sc = sidecar_factory(deliveries=0)
    got = Got()
    with Client(sc.url, secrets=[SECRET]) as c:
        call = c.do(Request("POST", "/slow"), got)
        body = json.dumps(sc.payload(call.id)).encode()
        h = asyncmesh.sign([SECRET], "another-id", body)
        assert httpx.post(c.callback_url, content=body, headers=h).status_code == 400
        assert c.pending() == 1
    assert got.results == []
