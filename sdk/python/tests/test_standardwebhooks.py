"""The official standardwebhooks library agrees with the SDK's verifier on
signatures the collector's Go code made (the shared vectors), and on the
SDK's own."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

import pytest
import standardwebhooks.webhooks as swh
from standardwebhooks import Webhook

import asyncmesh


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[float]]:
    """Sets the library's clock (it reads datetime.now) to now[0]."""
    now = [time.time()]

    class Frozen(datetime):
        @classmethod
        def now(cls, tz: Any = None) -> "Frozen":
            return cls.fromtimestamp(now[0], tz=tz or timezone.utc)

    monkeypatch.setattr(swh, "datetime", Frozen)
    yield now


def _official_accepts(secrets: list[str], headers: dict[str, str], body: bytes) -> bool:
    for s in secrets:
        try:
            Webhook(s).verify(body, headers, json_parse=False)
            return True
        except swh.WebhookVerificationError:
            pass
    return False


def test_vector_signatures(vectors: dict[str, Any], clock: list[float]) -> None:
    checked = 0
    for v in vectors["signatures"]:
        if v["name"] == "timestamp not a number":
            # The library reads timestamps as floats ("1765000000.5" passes);
            # the collector writes integers and the SDKs take only those.
            continue
        clock[0] = v["now"]
        assert _official_accepts(v["secrets"], v["headers"], v["body"].encode()) == v["valid"], v["name"]
        checked += 1
    assert checked >= 15


def test_collector_callbacks(vectors: dict[str, Any], clock: list[float]) -> None:
    """Callbacks posted by the real delivery.Sender (sealed ones included:
    the signature covers the sealed bytes) verify with the library, and the
    SDK accepts the same ones."""
    for v in vectors["callbacks"]:
        if v["status"] == 401:
            continue
        clock[0] = v["now"]
        assert _official_accepts(v["secrets"], v["headers"], v["body"].encode()), v["name"]
        asyncmesh.verify(v["headers"], v["body"].encode(), [asyncmesh.parse_secret(s) for s in v["secrets"]], now=v["now"])


def test_both_ways_now() -> None:
    body = b'{"id":"x","status":"completed"}'
    ours = asyncmesh.sign([asyncmesh.parse_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")], "msg_1", body)
    Webhook("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").verify(body, ours, json_parse=False)
    wh = Webhook("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    ts = datetime.now(tz=timezone.utc)
    theirs = {"webhook-id": "msg_2", "webhook-timestamp": str(int(ts.timestamp())), "webhook-signature": wh.sign("msg_2", ts, body)}
    asyncmesh.verify(theirs, body, [asyncmesh.parse_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")])
