"""The values the SDK hands out: requests, results, calls."""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from typing import Any

from ._errors import PayloadError


@dataclass(frozen=True)
class Request:
    """An HTTP request to send through the sidecar.

    ``url`` is absolute, or relative to the client's ``base_url``
    (``"/orders?x=1"``). ``body`` is sent as it is.
    """

    method: str
    url: str
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


@dataclass(frozen=True)
class Response:
    """The service's answer: in a callback, from ``wait``, or the synchronous
    answer of :class:`Call`. ``headers`` has lower-case names; a repeated
    header's values are joined with ``", "``."""

    status: int
    headers: dict[str, str]
    body: bytes

    def text(self) -> str:
        """The body as UTF-8 text."""
        return self.body.decode()

    def json(self) -> Any:
        """The body parsed as JSON."""
        return json.loads(self.body)


@dataclass(frozen=True)
class Result:
    """The outcome of an async request, as its callback carries it.

    ``status`` is ``"completed"`` (``response`` is the service's answer) or
    ``"failed"`` (the service never answered; ``error`` says why).
    """

    id: str
    trace_id: str
    status: str
    response: Response | None = None
    error: str = ""


@dataclass(frozen=True)
class Call:
    """What :meth:`Client.do` got back.

    For an async request: ``id``, ``trace_id``, ``access_token`` (reads this
    request's status and result, as :meth:`Client.wait` does; the sidecar
    hands it out once, in the 202, and answers 404 without it) and
    ``status_url`` (the 202's ``Location``, with the token).

    ``sync`` is set when the request was not made async: no rule matched it,
    or it completed within ``Prefer: wait`` (then ``id`` and
    ``access_token`` are set too). The handler never runs for such a call.
    """

    id: str = ""
    trace_id: str = ""
    access_token: str = ""
    status_url: str = ""
    sync: Response | None = None


def _str(obj: dict[str, Any], key: str, required: bool = False) -> str:
    v = obj.get(key)
    if v is None:
        if required:
            raise PayloadError(f"callback payload: {key}: required")
        return ""
    if not isinstance(v, str):
        raise PayloadError(f"callback payload: {key}: want a string")
    return v


def decode_result(body: bytes | str, trace_id: str = "") -> Result:
    """Decode a callback payload (or a ``/result`` answer):
    ``{"id", "traceId", "status", "response": {"status", "headers", "body",
    "bodyEncoding"}, "error"}``. A body with ``bodyEncoding: "base64"`` is
    decoded to its bytes. Raises :class:`PayloadError`."""
    try:
        obj: Any = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise PayloadError(f"callback payload: {e}") from None
    if not isinstance(obj, dict):
        raise PayloadError("callback payload: want a JSON object")
    rid = _str(obj, "id")
    if not rid:
        raise PayloadError("callback payload: id: required")
    resp: Response | None = None
    r = obj.get("response")
    if r is not None:
        if not isinstance(r, dict):
            raise PayloadError("callback payload: response: want an object")
        status = r.get("status", 0)
        if not isinstance(status, int) or isinstance(status, bool):
            raise PayloadError("callback payload: response.status: want an integer")
        headers = r.get("headers") or {}
        if not isinstance(headers, dict) or not all(isinstance(v, str) for v in headers.values()):
            raise PayloadError("callback payload: response.headers: want an object of strings")
        text = _str(r, "body")
        if _str(r, "bodyEncoding") == "base64":
            try:
                data = base64.b64decode(text, validate=True)
            except (binascii.Error, ValueError):
                raise PayloadError("callback payload: response.body: not base64") from None
        else:
            data = text.encode()
        resp = Response(status=status, headers=dict(headers), body=data)
    return Result(id=rid, trace_id=_str(obj, "traceId") or trace_id, status=_str(obj, "status"), response=resp, error=_str(obj, "error"))
