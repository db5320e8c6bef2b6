"""What the sync and the asyncio clients share: building a request, reading
the sidecar's answer, and the long-poll's URL."""

from __future__ import annotations

import email.utils
import json
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, quote, urlencode, urljoin, urlsplit

import httpx

from ._errors import RequestError
from ._types import Call, Request, Response, Result, decode_result

#: ``Prefer: wait`` is capped by the sidecar at 60 seconds.
MAX_PREFER_WAIT = 60
#: Each long-poll asks the collector to hold the read this long.
POLL_WAIT = "30s"
#: The most a 202 body is read.
MAX_ACCEPTED = 64 << 10

TokenSource = Callable[[], str]


def build(
    base_url: str, callback_url: str, request: Request, wait: int | None, bearer: str | TokenSource | None
) -> tuple[str, str, dict[str, str]]:
    """The method, absolute URL and headers to send for ``request``."""
    url = request.url if urlsplit(request.url).scheme else urljoin(base_url, request.url)
    headers = {k.lower(): v for k, v in request.headers.items()}
    prefer = "respond-async"
    if wait is not None:
        if not 1 <= wait <= MAX_PREFER_WAIT:
            raise ValueError(f"wait: 1..{MAX_PREFER_WAIT} seconds")
        prefer += f", wait={wait}"
    headers["prefer"] = prefer
    headers["x-async-callback"] = callback_url
    if bearer is not None and "authorization" not in headers:
        token = bearer() if callable(bearer) else bearer
        headers["authorization"] = "Bearer " + token
    return request.method.upper(), url, headers


def response_of(r: httpx.Response) -> Response:
    """An httpx response (read) as the SDK's :class:`Response`."""
    hs: dict[str, str] = {}
    for k, v in r.headers.multi_items():
        k = k.lower()
        hs[k] = hs[k] + ", " + v if k in hs else v
    return Response(status=r.status_code, headers=hs, body=r.content)


def call_of(r: httpx.Response, body: bytes) -> Call:
    """The :class:`Call` of the sidecar's answer (``body``: what was read of it)."""
    h = r.headers
    rid = h.get("x-async-request-id", "")
    if r.status_code != 202:
        sync = Response(status=r.status_code, headers={k: v for k, v in response_of(r).headers.items()}, body=body)
        return Call(id=rid, trace_id=h.get("x-async-trace-id", ""), access_token=h.get("x-async-access-token", ""), sync=sync)
    if not rid:
        raise RequestError(202, "asyncmesh: 202 without x-async-request-id", body[:1024])
    accepted: Any = {}
    try:
        accepted = json.loads(body)
    except ValueError:
        pass
    if not isinstance(accepted, dict):
        accepted = {}
    token = accepted.get("accessToken") if isinstance(accepted.get("accessToken"), str) else ""
    loc = h.get("location", "")
    status_url = urljoin(str(r.request.url), loc) if loc else ""
    if not token and loc:
        token = parse_qs(urlsplit(loc).query).get("token", [""])[0]
    trace = h.get("x-async-trace-id", "") or (accepted.get("traceId") if isinstance(accepted.get("traceId"), str) else "")
    return Call(id=rid, trace_id=trace, access_token=token, status_url=status_url)


def result_url(base_url: str, status_prefix: str, request_id: str, token: str) -> str:
    """The long-poll URL of a request's result (it holds the access token:
    never log it)."""
    if not token:
        raise ValueError("wait needs the call's access token (from do's 202)")
    return (
        base_url.rstrip("/")
        + status_prefix
        + "/v1/requests/"
        + quote(request_id, safe="")
        + "/result?"
        + urlencode({"token": token, "wait": POLL_WAIT})
    )


def poll_outcome(r: httpx.Response, request_id: str, trace_id: str) -> Result | float:
    """A long-poll answer: the :class:`Result`, or how long to wait before
    asking again. Raises :class:`RequestError` on an error answer.

    ``trace_id`` is the request's (its 202's): the answer's own
    ``x-async-trace-id`` is the trace of this read through Envoy, not the
    request's."""
    if r.status_code == 200:
        return decode_result(r.content, trace_id)
    if r.status_code == 202:
        return 0.0
    if r.status_code in (429, 503):
        # The collector sheds long-polls under load: honour Retry-After.
        return min(retry_after(r.headers.get("retry-after", "")) or 1.0, 30.0)
    # Not the URL: it holds the access token.
    raise RequestError(r.status_code, f"asyncmesh: reading the result of {request_id}: {r.status_code} {r.text[:512]}", r.content[:1024])


def retry_after(v: str) -> float | None:
    """Retry-After in seconds (delay-seconds or an HTTP date)."""
    v = v.strip()
    if not v:
        return None
    if v.isdigit():
        return float(v)
    try:
        t = email.utils.parsedate_to_datetime(v)
    except (TypeError, ValueError):
        return None
    return max(t.timestamp() - time.time(), 0.0)


def poll_timeout(deadline: float | None) -> httpx.Timeout:
    """The timeout of one long-poll: past the collector's hold, or until the
    caller's deadline."""
    read = 45.0 if deadline is None else max(min(deadline - time.monotonic(), 45.0), 0.001)
    return httpx.Timeout(10.0, read=read)
