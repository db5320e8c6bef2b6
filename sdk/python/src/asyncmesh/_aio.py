"""The asyncio client."""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from types import TracebackType

import httpx

from . import _http
from ._client import _callback_url, _split_listen
from ._core import Registry
from ._receiver import Receiver
from ._types import Call, Request, Result
from ._verifier import CallbackVerifier

log = logging.getLogger("asyncmesh")

AsyncHandler = Callable[[Result], Awaitable[None] | None]


class AsyncClient:
    """The asyncio twin of :class:`Client`: the same semantics, with
    ``await client.do(...)`` and ``await client.wait(...)``; handlers may be
    coroutine functions or plain functions, and run on the event loop the
    client was started on (``async with AsyncClient(...)`` or ``await
    client.start()``).

    The receiver is the same small HTTP server, in a thread of its own; it
    hands each verified callback to the loop. Arguments as :class:`Client`,
    with ``http`` an ``httpx.AsyncClient``.
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
        http: httpx.AsyncClient | None = None,
    ) -> None:
        if not httpx.URL(base_url).host:
            raise ValueError(f"base_url {base_url!r} is not a URL")
        self.base_url = base_url
        self._status_prefix = status_prefix
        self._bearer = bearer_token
        self._verifier = CallbackVerifier(secrets, key, callback_authorization)
        self._registry: Registry[AsyncHandler] = Registry()
        self._listen = _split_listen(listen)
        self._path = (httpx.URL(callback_url).path if callback_url else "/callbacks") or "/"
        self._callback_url = callback_url or ""
        self._own_http = http is None
        self._http = http or httpx.AsyncClient(timeout=60.0)
        self._receiver: Receiver[AsyncHandler] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        self._starting: asyncio.Lock | None = None

    async def start(self) -> AsyncClient:
        """Start the receiver on the running loop (``async with`` does it)."""
        if self._receiver is not None:
            return self
        if self._closed:
            raise RuntimeError("asyncmesh: client closed")
        if self._starting is None:
            self._starting = asyncio.Lock()
        async with self._starting:  # two first do()s at once start one receiver
            if self._receiver is None:
                self._loop = asyncio.get_running_loop()
                # Binding is quick, but not a coroutine: off the loop all the same.
                self._receiver = await asyncio.to_thread(
                    Receiver, self._listen[0], self._listen[1], self._path, self._verifier, self._registry, self._dispatch
                )
                if not self._callback_url:
                    self._callback_url = _callback_url(*self._receiver.address, self._path)
        return self

    @property
    def callback_url(self) -> str:
        """Where this client receives callbacks (known once started)."""
        return self._callback_url

    async def do(self, request: Request, handler: AsyncHandler, *, wait: int | None = None) -> Call:
        """Send ``request`` as an async request; ``handler`` runs once on the
        loop with its :class:`Result` when the callback comes (awaited when
        it is a coroutine function). ``wait`` as :meth:`Client.do`."""
        await self.start()
        method, url, headers = _http.build(self.base_url, self._callback_url, request, wait, self._bearer)
        r = await self._http.request(method, url, headers=headers, content=request.body)
        call = _http.call_of(r, r.content)
        if call.sync is not None:
            if call.id:
                self._registry.forget(call.id)
            return call
        early = self._registry.register(call.id, handler)
        if early is not None:
            self._spawn(handler, early)
        return call

    async def wait(self, call: Call | str, *, token: str | None = None, timeout: float | None = None) -> Result:
        """Long-poll until the request has a result; as :meth:`Client.wait`.
        ``asyncio.timeout`` around it works too."""
        rid, tok, trace = (call.id, token or call.access_token, call.trace_id) if isinstance(call, Call) else (call, token or "", "")
        url = _http.result_url(self.base_url, self._status_prefix, rid, tok)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self._closed:
                raise RuntimeError("asyncmesh: client closed")
            try:
                r = await self._http.get(url, timeout=_http.poll_timeout(deadline))
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
                await asyncio.sleep(out)

    def pending(self) -> int:
        """How many requests wait for their callback."""
        return self._registry.pending()

    def _dispatch(self, handler: AsyncHandler, result: Result) -> None:
        # From the receiver's thread.
        loop = self._loop
        if loop is None or loop.is_closed():
            log.warning("asyncmesh: loop closed; handler of %s not run", result.id)
            return
        try:
            loop.call_soon_threadsafe(self._spawn, handler, result)
        except RuntimeError:
            log.warning("asyncmesh: loop closed; handler of %s not run", result.id)

    def _spawn(self, handler: AsyncHandler, result: Result) -> None:
        async def run() -> None:
            try:
                out = handler(result)
                if inspect.isawaitable(out):
                    await out
            except Exception:
                log.exception("asyncmesh: handler of %s raised", result.id)

        task = asyncio.get_running_loop().create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        """Stop the receiver and wait for running handlers."""
        if self._closed:
            return
        self._closed = True
        if self._receiver is not None:
            await asyncio.to_thread(self._receiver.close)
        # Handlers handed over just before the receiver stopped are queued
        # with call_soon_threadsafe: let them start, then wait for all.
        await asyncio.sleep(0)
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        if self._own_http:
            await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return await self.start()

    async def __aexit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()
