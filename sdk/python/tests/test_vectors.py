"""The shared SDK test vectors (sdk/testdata/vectors.json), made by the
collector's Go code: the Python SDK must accept and refuse what the Go SDK
does."""

from __future__ import annotations

import base64
from typing import Any

import pytest

import asyncmesh
from asyncmesh import CallbackRefused, CallbackVerifier, SealError, WebhookVerificationError


def test_tolerance_matches(vectors: dict[str, Any]) -> None:
    assert vectors["tolerance"] == asyncmesh.TOLERANCE


def test_signatures(vectors: dict[str, Any]) -> None:
    for v in vectors["signatures"]:
        secrets = [asyncmesh.parse_secret(s) for s in v["secrets"]]
        body = v["body"].encode()
        if v["valid"]:
            asyncmesh.verify(v["headers"], body, secrets, now=v["now"])
        else:
            with pytest.raises(WebhookVerificationError) as e:
                asyncmesh.verify(v["headers"], body, secrets, now=v["now"])
            assert e.value.reason == v["error"], v["name"]


def test_signature_headers_any_case(vectors: dict[str, Any]) -> None:
    v = vectors["signatures"][0]
    upper = {k.upper(): val for k, val in v["headers"].items()}
    asyncmesh.verify(upper, v["body"].encode(), [asyncmesh.parse_secret(v["secrets"][0])], now=v["now"])


def test_sealed(vectors: dict[str, Any]) -> None:
    for v in vectors["sealed"]:
        key = asyncmesh.parse_key(v["key"])
        if v["valid"]:
            assert asyncmesh.open_sealed(v["alg"], key, v["requestId"], v["sealed"].encode()) == v["plaintext"].encode(), v["name"]
        else:
            with pytest.raises(SealError):
                asyncmesh.open_sealed(v["alg"], key, v["requestId"], v["sealed"].encode())


def _result_json(r: asyncmesh.Result) -> dict[str, Any]:
    out: dict[str, Any] = {"id": r.id, "traceId": r.trace_id, "status": r.status}
    if r.error:
        out["error"] = r.error
    if r.response is not None:
        resp: dict[str, Any] = {"status": r.response.status, "bodyBase64": base64.b64encode(r.response.body).decode()}
        if r.response.headers:
            resp["headers"] = r.response.headers
        out["response"] = resp
    return out


def test_callbacks(vectors: dict[str, Any]) -> None:
    for v in vectors["callbacks"]:
        verifier = CallbackVerifier(v["secrets"], v.get("key") or None)
        body = v["body"].encode()
        if v["valid"]:
            r = verifier.accept(v["headers"], body, now=v["now"])
            assert r.id == v["requestId"], v["name"]
            assert _result_json(r) == v["result"], v["name"]
        else:
            with pytest.raises(CallbackRefused) as e:
                verifier.accept(v["headers"], body, now=v["now"])
            assert e.value.status == v["status"], v["name"]


def test_callbacks_refused_once_stale(vectors: dict[str, Any]) -> None:
    v = vectors["callbacks"][0]
    with pytest.raises(CallbackRefused) as e:
        CallbackVerifier(v["secrets"]).accept(v["headers"], v["body"].encode(), now=v["now"] + asyncmesh.TOLERANCE + 1)
    assert e.value.status == 401


@pytest.mark.parametrize("alg", [asyncmesh.AES_GCM, asyncmesh.JWE])
def test_seal_round_trip(alg: str, vectors: dict[str, Any]) -> None:
    """The SDK's own seal (for testing receivers) writes what open_sealed,
    and the vectors' format, expect."""
    v = next(s for s in vectors["sealed"] if s["alg"] == alg and s["valid"])
    key = asyncmesh.parse_key(v["key"])
    body, ct = asyncmesh.seal(alg, key, v["requestId"], v["plaintext"].encode())
    assert ct == v["contentType"]
    assert asyncmesh.open_sealed(alg, key, v["requestId"], body) == v["plaintext"].encode()
    with pytest.raises(SealError):
        asyncmesh.open_sealed(alg, key, "another", body)
