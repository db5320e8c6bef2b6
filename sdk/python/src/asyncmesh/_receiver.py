"""The embedded callback receiver: a small HTTP server in a thread of its
own (the standard library's, for the sync and the asyncio client alike)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Generic, TypeVar
from urllib.parse import urlsplit

from ._core import Registry
from ._errors import CallbackRefused
from ._types import Result
from ._verifier import CallbackVerifier

log = logging.getLogger("asyncmesh")

H = TypeVar("H")

#: The largest callback body read (as the Go SDK: 80 MiB).
MAX_BODY = 80 << 20


class Receiver(Generic[H]):
    """Serves ``POST <path>`` on ``host:port`` (port 0: any free one)."""

    def __init__(
        self,
        host: str,
        port: int,
        path: str,
        verifier: CallbackVerifier,
        registry: Registry[H],
        dispatch: Callable[[H, Result], None],
    ) -> None:
        self.path = path
        receiver = self

        class _Handler(BaseHTTPRequestHandler):
            # A slow or silent client holds one thread for at most this long.
            timeout = 10
            protocol_version = "HTTP/1.1"
            server_version = "asyncmesh-python"
            sys_version = ""

            def do_POST(self) -> None:
                receiver._post(self)

            def do_GET(self) -> None:
                self._plain(404 if urlsplit(self.path).path != receiver.path else 405, "POST callbacks here")

            def _plain(self, code: int, msg: str) -> None:
                body = (msg + "\n").encode()
                self.send_response(code)
                self.send_header("content-type", "text/plain; charset=utf-8")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                log.debug("asyncmesh receiver: " + format, *args)

        self._verifier, self._registry, self._dispatch = verifier, registry, dispatch
        self._server = ThreadingHTTPServer((host, port), _Handler)
        self._server.daemon_threads = True
        # poll_interval bounds how long close() waits for the serving loop.
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.1,), name="asyncmesh-receiver", daemon=True)
        self._thread.start()

    @property
    def address(self) -> tuple[str, int]:
        """The host and port it listens on."""
        a = self._server.server_address
        return str(a[0]), int(a[1])

    def close(self) -> None:
        """Stop serving (a request being answered finishes)."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def _post(self, req: Any) -> None:
        if urlsplit(req.path).path != self.path:
            req._plain(404, "not found")
            return
        if req.headers.get("transfer-encoding"):
            req.close_connection = True
            req._plain(411, "send a content-length")
            return
        cl = req.headers.get("content-length", "")
        if not cl.isdigit() or not cl.isascii():
            req.close_connection = True
            req._plain(411, "send a content-length")
            return
        n = int(cl)
        if n > MAX_BODY:
            req.close_connection = True
            req._plain(413, "callback body too large")
            return
        try:
            body = req.rfile.read(n)
        except OSError:  # the sender stalled past the timeout, or went away
            body = b""
        if len(body) != n:
            req.close_connection = True
            return
        headers = {k.lower(): v for k, v in req.headers.items()}
        try:
            result = self._verifier.accept(headers, body)
        except CallbackRefused as e:
            log.warning("asyncmesh: refused callback webhook_id=%s: %s", headers.get("webhook-id", ""), e)
            req._plain(e.status, str(e))
            return
        what, handler = self._registry.deliver(result, len(body))
        if what == "full":
            req._plain(503, "too many callbacks without a caller")
            return
        # Acknowledged before the handler runs: a slow handler does not make
        # the collector retry.
        req.send_response(204)
        req.send_header("content-length", "0")
        req.end_headers()
        if handler is not None:
            self._dispatch(handler, result)
