"""Standard Webhooks v1 signatures, as the collector signs callbacks.

Headers ``webhook-id``, ``webhook-timestamp`` (Unix seconds) and
``webhook-signature``: ``v1,<base64 HMAC-SHA256 of "id.timestamp.body">``,
several separated by spaces while a rotation has more than one secret
active. Secrets are written ``whsec_<base64 key>`` (the prefix is optional),
16 to 64 bytes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import time
from collections.abc import Iterable, Mapping, Sequence

from ._errors import WebhookVerificationError

HEADER_ID = "webhook-id"
HEADER_TIMESTAMP = "webhook-timestamp"
HEADER_SIGNATURE = "webhook-signature"

#: How far (seconds) a timestamp may be from now, either way.
TOLERANCE = 300

_PREFIX = "whsec_"
# What Go's strconv.ParseInt takes: no spaces, underscores or fractions.
_INT = re.compile(r"[+-]?[0-9]{1,19}")


def parse_secret(secret: str | bytes) -> bytes:
    """Decode ``whsec_<base64>`` (or the base64 alone, or the raw key bytes).

    Raises ``ValueError`` unless it is standard base64 of 16 to 64 bytes.
    """
    if isinstance(secret, bytes):
        key = secret
    else:
        s = secret.strip()
        if s.startswith(_PREFIX):
            s = s[len(_PREFIX) :].strip()
        try:
            key = base64.b64decode(s, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("webhook secret: not base64 after whsec_") from None
    if not 16 <= len(key) <= 64:
        raise ValueError(f"webhook secret: key is {len(key)} bytes, want 16..64")
    return key


def _sign(key: bytes, msg_id: str, timestamp: str, body: bytes) -> str:
    mac = hmac.new(key, msg_id.encode() + b"." + timestamp.encode() + b"." + body, hashlib.sha256)
    return "v1," + base64.b64encode(mac.digest()).decode()


def sign(secrets: Iterable[str | bytes], msg_id: str, body: bytes, timestamp: int | None = None) -> dict[str, str]:
    """Return the three signature headers for ``body``, signed with every secret.

    What the collector does; useful to test a receiver.
    """
    ts = str(int(time.time()) if timestamp is None else timestamp)
    sigs = [_sign(parse_secret(s), msg_id, ts, body) for s in secrets]
    return {HEADER_ID: msg_id, HEADER_TIMESTAMP: ts, HEADER_SIGNATURE: " ".join(sigs)}


def _header(headers: Mapping[str, str], name: str) -> str:
    v = headers.get(name)
    if v is None:
        for k, val in headers.items():
            if k.lower() == name:
                return val
        return ""
    return v


def verify(headers: Mapping[str, str], body: bytes, secrets: Sequence[bytes], now: float | None = None) -> None:
    """Check a callback's signature headers against any of ``secrets``
    (decoded keys, see :func:`parse_secret`), and its timestamp against
    :data:`TOLERANCE` around ``now`` (default: the clock).

    ``body`` is the exact bytes received. Header names are matched without
    regard to case. Raises :class:`WebhookVerificationError`.
    """
    msg_id = _header(headers, HEADER_ID)
    ts = _header(headers, HEADER_TIMESTAMP)
    sigs = _header(headers, HEADER_SIGNATURE)
    if not msg_id or not ts or not sigs:
        raise WebhookVerificationError("missing_headers", "webhook: missing webhook-id, webhook-timestamp or webhook-signature")
    if not _INT.fullmatch(ts):
        raise WebhookVerificationError("timestamp", "webhook: timestamp outside tolerance")
    if now is None:
        now = time.time()
    if abs(now - int(ts)) > TOLERANCE:
        raise WebhookVerificationError("timestamp", "webhook: timestamp outside tolerance")
    got = [s.encode() for s in sigs.split()]
    for key in secrets:
        want = _sign(key, msg_id, ts, body).encode()
        # compare_digest on every candidate: no early exit on a match
        # position an attacker could time.
        if any([hmac.compare_digest(g, want) for g in got]):
            return
    raise WebhookVerificationError("signature", "webhook: no matching signature")
