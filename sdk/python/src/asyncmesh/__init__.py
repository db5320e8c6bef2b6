"""asyncmesh: the Python client for asyncmesh-made async APIs.

Send a request with a handler; the sidecar answers 202 at once, and the
handler runs with the service's response when the collector's signed
callback comes: no polling. The semantics are the Go SDK's
(``client/`` in the asyncmesh repository)::

    from asyncmesh import Client, Request

    with Client("http://127.0.0.1:10000", secrets=["whsec_..."]) as c:
        call = c.do(Request("POST", "/slow", body=b"{}"), lambda r: print(r.status, r.response))

:class:`Client` is synchronous (handlers run in worker threads),
:class:`AsyncClient` its asyncio twin. :class:`CallbackVerifier`,
:func:`verify` and :func:`open_sealed` are the pieces, for receiving
callbacks in a web framework of your own.
"""

from ._aio import AsyncClient, AsyncHandler
from ._client import Client, Handler
from ._core import Registry
from ._errors import AsyncMeshError, CallbackRefused, PayloadError, RequestError, SealError, WebhookVerificationError
from ._seal import AES_GCM, JWE, open_sealed, parse_key, seal
from ._types import Call, Request, Response, Result, decode_result
from ._verifier import CallbackVerifier
from ._webhook import TOLERANCE, parse_secret, sign, verify

__all__ = [
    "AES_GCM",
    "JWE",
    "TOLERANCE",
    "AsyncClient",
    "AsyncHandler",
    "AsyncMeshError",
    "Call",
    "CallbackRefused",
    "CallbackVerifier",
    "Client",
    "Handler",
    "PayloadError",
    "Registry",
    "Request",
    "RequestError",
    "Response",
    "Result",
    "SealError",
    "WebhookVerificationError",
    "decode_result",
    "open_sealed",
    "parse_key",
    "parse_secret",
    "seal",
    "sign",
    "verify",
]
__version__ = "0.1.0"
