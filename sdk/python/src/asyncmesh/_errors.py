"""Errors of the asyncmesh SDK."""

from __future__ import annotations


class AsyncMeshError(Exception):
    """Base class of every error the SDK raises."""


class WebhookVerificationError(AsyncMeshError):
    """A callback's Standard Webhooks signature did not verify.

    ``reason`` says why, as the shared test vectors name it:
    ``"missing_headers"`` (``webhook-id``, ``webhook-timestamp`` or
    ``webhook-signature`` absent or empty), ``"timestamp"`` (not an integer,
    or further than the tolerance from now) or ``"signature"`` (no ``v1,``
    signature matches any of the secrets).
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class SealError(AsyncMeshError):
    """A sealed payload did not open: another key, another request, tampered,
    or not in the format the collector writes."""


class PayloadError(AsyncMeshError):
    """A body is not an asyncmesh callback payload (or result)."""


class CallbackRefused(AsyncMeshError):
    """A callback the receiver refuses; ``status`` is what it answers
    (401: not signed with our secrets, or without the receiver's expected
    authorization; 400: not sealed with our key, or not a payload)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class RequestError(AsyncMeshError):
    """The sidecar or the collector API answered an error.

    ``status`` is the HTTP status, ``body`` the first bytes of the answer
    (asyncmesh errors are JSON ``{"error", "message"}``).
    """

    def __init__(self, status: int, message: str, body: bytes = b"") -> None:
        super().__init__(message)
        self.status = status
        self.body = body
