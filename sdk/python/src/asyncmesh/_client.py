"""The synchronous client."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType

import httpx

from . import _http
from ._core import Registry
from ._receiver import Receiver
from ._types import Call, Request, Result
from ._verifier import CallbackVerifier

log = logging.getLogger("asyncmesh")

Handler = Callable[[Result], None]


def _split_listen(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"listen: want host:port, got {listen!r}")
    return host.strip("[]"), int(port)


def _callback_url(host: str, port: int, path: str) -> str:
    return f"http://{'[' + host + ']' if ':' in host else host}:{port}{path}"


class Client:
    """Sends async requests through an asyncmesh sidecar and runs a handler
    with each one's result when its callback comes: no polling.

    ``do`` sends the request with ``Prefer: respond-async`` and
    ``x-async-callback`` set to the client's embedded receiver, and records
    request id -> handler. The receiver verifies each callback's Standard
    Webhooks signature (any of ``secrets``: several during a rotation),
    opens it when sealed (``key``), and runs the handler once per request
    id, even when the callback is delivered twice (at-least-once delivery)
    or arrives before ``do`` has read the 202 (held in a bounded buffer).
    ``wait`` falls back to the long-poll API for callers that cannot
    receive callbacks.

    The route's rule must let the caller choose the callback
    (``callback.allowOverride``) and, for a receiver on a private or
    loopback address, list its host in ``callback.allowedHosts`` with a
    network allowance; otherwise the callback goes to the rule's URL (or is
    refused) and the handler never runs: use ``wait`` then.

    Args:
        base_url: where requests go (the service's host, through its Envoy).
        secrets: ``whsec_...`` secrets that verify callbacks; at least one.
        key: the ``callback.encryption`` key (base64): callbacks must be sealed with it.
        status_prefix: the sidecar's route to the collector API.
        listen: the receiver's ``host:port`` (port 0: a free one).
        callback_url: how the collector reaches the receiver (default
            ``http://<listen address>/callbacks``); its path is the one served.
        callback_authorization: the ``Authorization`` value callbacks must
            carry (a caller's ``auth: bearer`` sends ``"Bearer <token>"``).
        bearer_token: the caller's token (a JWT the mesh's ``jwt_authn``
            verifies, which makes it a declared caller), or a function
            returning a fresh one for each request; sent as
            ``Authorization: Bearer`` unless the request has one.
        http: an ``httpx.Client`` of your own (for mTLS callers: one with
            ``cert=`` and ``verify=``); default: one with a 60 s timeout.
        max_workers: threads that run handlers.
    """

    def __init__(
        self,
        base_url: str,
        *,
        secrets: Sequence[str | bytes],
        key: str | bytes | None = None,
        status_prefix: str = "/async",
        listen: str = "127.0.0.1:0",
        callback_url: str | None = None,
        callback_authorization: str | None = None,
        bearer_token: str | Callable[[], str] | None = None,
        http: httpx.Client | None = None,
        max_workers: int = 8,
    ) -> None:
        if not httpx.URL(base_url).host:
            raise ValueError(f"base_url {base_url!r} is not a URL")
        self.base_url = base_url
        self._status_prefix = status_prefix
        self._bearer = bearer_token
        verifier = CallbackVerifier(secrets, key, callback_authorization)
        self._registry: Registry[Handler] = Registry()
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="asyncmesh-handler")
        host, port = _split_listen(listen)
        path = httpx.URL(callback_url).path if callback_url else "/callbacks"
        self._receiver = Receiver(host, port, path or "/", verifier, self._registry, self._run)
        self._callback_url = callback_url or _callback_url(*self._receiver.address, path)
        self._own_http = http is None
        self._http = http or httpx.Client(timeout=60.0)
        self._closed = False

    @property
    def callback_url(self) -> str:
        """Where this client receives callbacks."""
        return self._callback_url

    def do(self, request: Request, handler: Handler, *, wait: int | None = None) -> Call:
        """Send ``request`` as an async request; ``handler`` runs (once, in a
        worker thread) with its :class:`Result` when the callback comes.

        With ``wait`` (1..60 s) it sends ``Prefer: respond-async, wait=N``: a
        request that completes within N seconds is answered with the
        service's own response, in ``Call.sync``, and its handler never runs
        (the callback, sent all the same, is acknowledged and dropped). A
        request no rule makes async is answered synchronously too.
        """
        method, url, headers = _http.build(self.base_url, self._callback_url, request, wait, self._bearer)
        r = self._http.request(method, url, headers=headers, content=request.body)
        call = _http.call_of(r, r.content)
        if call.sync is not None:
            if call.id:
                self._registry.forget(call.id)
            return call
        early = self._registry.register(call.id, handler)
        if early is not None:
            self._run(handler, early)
        return call

    def wait(self, call: Call | str, *, token: str | None = None, timeout: float | None = None) -> Result:
        """Long-poll the collector API (through the sidecar) until the
        request has a result, for callers that cannot receive callbacks.

        ``call`` is what ``do`` returned, or a request id with its ``token``
        (the result's ``trace_id`` is then empty: the read's own trace is
        not the request's).
        Raises ``TimeoutError`` after ``timeout`` seconds (default: no limit),
        :class:`RequestError` when the API answers an error (404: unknown
        id, or not this token).
        """
        rid, tok, trace = (call.id, token or call.access_token, call.trace_id) if isinstance(call, Call) else (call, token or "", "")
        url = _http.result_url(self.base_url, self._status_prefix, rid, tok)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self._closed:
                raise RuntimeError("asyncmesh: client closed")
            try:
                r = self._http.get(url, timeout=_http.poll_timeout(deadline))
            except httpx.TimeoutException:
                if deadline is not None and time.monotonic() >= deadline:
                    raise TimeoutError(f"asyncmesh: no result for {rid} within {timeout}s") from None
                raise
            out = _http.poll_outcome(r, rid, trace)
            if isinstance(out, Result):
                return out
            if deadline is not None and time.monotonic() + out >= deadline:
                raise TimeoutError(f"asyncmesh: no result for {rid} within {timeout}s")
            if out:
                time.sleep(out)

    def _run(self, handler: Handler, result: Result) -> None:
        def run() -> None:
            try:
                handler(result)
            except Exception:
                log.exception("asyncmesh: handler of %s raised", result.id)

        try:
            self._pool.submit(run)
        except RuntimeError:  # closed
            log.warning("asyncmesh: client closed; handler of %s not run", result.id)

    def pending(self) -> int:
        """How many requests wait for their callback."""
        return self._registry.pending()

    def close(self) -> None:
        """Stop the receiver and wait for running handlers."""
        if self._closed:
            return
        self._closed = True
        self._receiver.close()
        self._pool.shutdown(wait=True)
        if self._own_http:
            self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()
