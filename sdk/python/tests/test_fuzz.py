"""Fuzz targets of the parsers of outside input (callback headers, sealed
bodies, payloads): mutations of the shared vectors must only ever be
accepted as valid results or refused with the SDK's own errors, never
crash. Seeded, so a failure reproduces; ASYNCMESH_FUZZ_ROUNDS runs longer."""

from __future__ import annotations

import os
import random
from typing import Any

import asyncmesh
from asyncmesh import CallbackRefused, CallbackVerifier, PayloadError, SealError

ROUNDS = int(os.environ.get("ASYNCMESH_FUZZ_ROUNDS", "3000"))


def mutate(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(4)
        if op == 0 and b:
            b[rng.randrange(len(b))] = rng.randrange(256)
        elif op == 1 and b:
            del b[rng.randrange(len(b)) :]
        elif op == 2:
            i = rng.randrange(len(b) + 1)
            b[i:i] = rng.choice([b"\x00", b"\xff", b'"', b"{", b"}", b".", b"=", b"A" * 64, b"\\u0000", b"[]", b"null", b"1e999"])
        elif b:
            i = rng.randrange(len(b))
            b[i:i] = b[i : i + rng.randint(1, 16)]
    return bytes(b)


def test_fuzz_callbacks(vectors: dict[str, Any]) -> None:
    rng = random.Random(20261206)
    cases = vectors["callbacks"]
    verifiers = {id(v): CallbackVerifier(v["secrets"], v.get("key") or None) for v in cases}
    for _ in range(ROUNDS):
        v = rng.choice(cases)
        headers = dict(v["headers"])
        body = v["body"].encode()
        what = rng.randrange(3)
        if what == 0:
            body = mutate(rng, body)
        elif what == 1:
            k = rng.choice(list(headers))
            headers[k] = mutate(rng, headers[k].encode()).decode("latin-1")
        try:
            verifiers[id(v)].accept(headers, body, now=v["now"])
        except CallbackRefused:
            pass


def test_fuzz_open_and_decode(vectors: dict[str, Any]) -> None:
    rng = random.Random(7)
    sealed = vectors["sealed"]
    for _ in range(ROUNDS):
        v = rng.choice(sealed)
        body = mutate(rng, v["sealed"].encode())
        try:
            pt = asyncmesh.open_sealed(v["alg"], asyncmesh.parse_key(v["key"]), v["requestId"], body)
        except SealError:
            continue
        # What opens must be what was sealed: GCM authenticates it.
        assert pt == v["plaintext"].encode()
    payloads = [c["body"].encode() for c in vectors["callbacks"] if not c.get("key")]
    for _ in range(ROUNDS):
        try:
            asyncmesh.decode_result(mutate(rng, rng.choice(payloads)))
        except PayloadError:
            pass
