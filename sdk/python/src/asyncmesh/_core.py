"""The handler map: request id -> handler, once per id, with a bounded
buffer for callbacks that arrive before the 202 was read."""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from ._types import Result

log = logging.getLogger("asyncmesh")

H = TypeVar("H")

#: Callbacks held for handlers not registered yet: by count, bytes and age
#: (a callback whose 202 is never read is dropped after EARLY_TTL seconds).
MAX_EARLY = 10_000
MAX_EARLY_BYTES = 64 << 20
EARLY_TTL = 120.0
#: Request ids remembered to drop duplicate deliveries.
MAX_SEEN = 100_000


@dataclass
class _Early:
    result: Result
    at: float
    size: int


class Registry(Generic[H]):
    """Thread-safe; the receiver thread and the callers of ``do`` share it.

    Semantics of the Go SDK (``client.Client``): a handler runs exactly once
    per request id, whether the callback comes after the 202 or before it
    (held in a bounded buffer), and however many times it is delivered.
    """

    def __init__(
        self,
        *,
        max_early: int = MAX_EARLY,
        max_early_bytes: int = MAX_EARLY_BYTES,
        early_ttl: float = EARLY_TTL,
        max_seen: int = MAX_SEEN,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._lock = threading.Lock()
        self._handlers: dict[str, H] = {}
        self._early: OrderedDict[str, _Early] = OrderedDict()
        self._early_bytes = 0
        self._seen: set[str] = set()
        self._seen_fifo: deque[str] = deque()
        self._max_early, self._max_early_bytes, self._early_ttl, self._max_seen = max_early, max_early_bytes, early_ttl, max_seen
        self._clock = clock

    def register(self, request_id: str, handler: H) -> Result | None:
        """Record ``handler`` for ``request_id``. When its callback already
        came, return it instead: the caller runs the handler now."""
        with self._lock:
            e = self._early.pop(request_id, None)
            if e is not None:
                self._early_bytes -= e.size
                return e.result
            self._handlers[request_id] = handler
            return None

    def deliver(self, result: Result, size: int) -> tuple[str, H | None]:
        """Take a verified callback. Returns ``("run", handler)``: run it;
        ``("duplicate", None)``: delivered again, acknowledge only;
        ``("held", None)``: kept until its handler is registered;
        ``("full", None)``: the buffer is full, answer 503 (the collector
        retries)."""
        with self._lock:
            rid = result.id
            if rid in self._seen:
                return "duplicate", None
            h = self._handlers.pop(rid, None)
            if h is not None:
                self._mark_seen(rid)
                return "run", h
            if self._keep_early(result, size):
                self._mark_seen(rid)
                return "held", None
            return "full", None

    def forget(self, request_id: str) -> None:
        """The request was answered synchronously (``Prefer: wait``): its
        callback, sent all the same, is acknowledged and dropped."""
        with self._lock:
            self._handlers.pop(request_id, None)
            e = self._early.pop(request_id, None)
            if e is not None:
                self._early_bytes -= e.size
            if request_id not in self._seen:
                self._mark_seen(request_id)

    def pending(self) -> int:
        """Handlers waiting for their callback."""
        with self._lock:
            return len(self._handlers)

    def held(self) -> tuple[int, int]:
        """Callbacks held for handlers not registered yet: count, bytes."""
        with self._lock:
            return len(self._early), self._early_bytes

    def _mark_seen(self, rid: str) -> None:
        self._seen.add(rid)
        self._seen_fifo.append(rid)
        while len(self._seen_fifo) > self._max_seen:
            self._seen.discard(self._seen_fifo.popleft())

    def _keep_early(self, result: Result, size: int) -> bool:
        now = self._clock()
        while self._early:
            rid, e = next(iter(self._early.items()))
            if now - e.at < self._early_ttl:
                break
            log.warning("asyncmesh: dropped a callback whose request was never seen: id=%s held=%.0fs", rid, now - e.at)
            self._early.popitem(last=False)
            self._early_bytes -= e.size
        if len(self._early) >= self._max_early or self._early_bytes + size > self._max_early_bytes:
            return False
        self._early[result.id] = _Early(result, now, size)
        self._early_bytes += size
        return True
