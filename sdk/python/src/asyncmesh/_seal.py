"""Opening sealed callbacks, as the collector seals them (``internal/seal``).

A rule's (or caller's) ``encryption`` seals the callback payload with a
256-bit key written in standard base64, in one of two formats:

- ``aes-256-gcm``: a JSON object ``{"alg": "A256GCM", "iv", "ciphertext"}``
  (standard base64; the ciphertext ends with the 16-byte tag), content type
  ``application/vnd.asyncmesh.sealed+json``. The request id is the
  additional authenticated data: a body sealed for one request does not open
  as another's.
- ``jwe``: a JWE compact serialization, ``alg`` ``dir``, ``enc`` ``A256GCM``,
  the request id in the protected ``kid`` header (checked before
  decrypting), content type ``application/jose``.

The callback's signature covers the sealed bytes: verify first, then open.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM as _AESGCM

from ._errors import SealError

AES_GCM = "aes-256-gcm"
JWE = "jwe"
CONTENT_TYPE_AES_GCM = "application/vnd.asyncmesh.sealed+json"
CONTENT_TYPE_JWE = "application/jose"

#: The largest sealed body opened (as the Go code's seal.MaxSealed).
MAX_SEALED = 96 << 20


def parse_key(key: str | bytes) -> bytes:
    """Decode a 256-bit key written in standard base64 (``openssl rand -base64 32``);
    raw 32 bytes are taken as they are. Raises ``ValueError``."""
    if isinstance(key, bytes) and len(key) == 32:
        return key
    try:
        k = base64.b64decode(key.strip(), validate=True)
    except (binascii.Error, ValueError):
        k = b""
    if len(k) != 32:
        raise ValueError("want a 256-bit key in standard base64 (openssl rand -base64 32)")
    return k


def alg_for(content_type: str) -> str:
    """The algorithm of a sealed callback by its content type, as the Go SDK
    picks it: JWE for ``application/jose``, AES-256-GCM otherwise."""
    return JWE if content_type.strip().lower().startswith(CONTENT_TYPE_JWE) else AES_GCM


def _b64url(s: str) -> bytes:
    if "=" in s:
        raise SealError("open: JWE parts are unpadded base64url")
    try:
        return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))
    except (binascii.Error, ValueError):
        raise SealError("open: JWE part is not base64url") from None


def open_sealed(alg: str, key: bytes, request_id: str, body: bytes) -> bytes:
    """Decrypt ``body`` sealed with ``key`` (32 bytes, see :func:`parse_key`)
    for ``request_id``; raises :class:`SealError`."""
    if len(body) > MAX_SEALED:
        raise SealError("open: sealed body too large")
    if len(key) != 32:
        raise SealError("seal: key must be 32 bytes")
    if alg == AES_GCM:
        return _open_gcm(key, request_id, body)
    if alg == JWE:
        return _open_jwe(key, request_id, body)
    raise SealError(f"open: unknown algorithm {alg!r}")


def _open_gcm(key: bytes, request_id: str, body: bytes) -> bytes:
    bad = SealError('open: want {"alg":"A256GCM","iv","ciphertext"}')
    try:
        box: Any = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise bad from None
    if not isinstance(box, dict) or box.get("alg") != "A256GCM":
        raise bad
    iv_s, ct_s = box.get("iv"), box.get("ciphertext")
    if not isinstance(iv_s, str) or not isinstance(ct_s, str):
        raise bad
    try:
        iv = base64.b64decode(iv_s, validate=True)
        ct = base64.b64decode(ct_s, validate=True)
    except (binascii.Error, ValueError):
        raise bad from None
    if len(iv) != 12:
        raise SealError("open: bad iv")
    try:
        return _AESGCM(key).decrypt(iv, ct, request_id.encode())
    except InvalidTag:
        raise SealError("open: authentication failed (wrong key, or sealed for another request)") from None


def _open_jwe(key: bytes, request_id: str, body: bytes) -> bytes:
    try:
        text = body.decode("ascii").strip()
    except UnicodeDecodeError:
        raise SealError("open: not a JWE compact serialization") from None
    parts = text.split(".")
    if len(parts) != 5:
        raise SealError("open: not a JWE compact serialization")
    protected, encrypted_key, iv_s, ct_s, tag_s = parts
    try:
        header: Any = json.loads(_b64url(protected))
    except ValueError:
        raise SealError("open: JWE protected header is not JSON") from None
    if not isinstance(header, dict):
        raise SealError("open: JWE protected header is not an object")
    if header.get("alg") != "dir" or header.get("enc") != "A256GCM":
        raise SealError('open: want a JWE with alg "dir" and enc "A256GCM"')
    if "zip" in header or "crit" in header:
        raise SealError("open: JWE zip and crit are not supported")
    if header.get("kid") != request_id:
        raise SealError("open: JWE kid is not this request's id")
    if encrypted_key:
        raise SealError("open: a dir JWE has an empty encrypted key")
    iv, ct, tag = _b64url(iv_s), _b64url(ct_s), _b64url(tag_s)
    if len(iv) != 12 or len(tag) != 16:
        raise SealError("open: bad JWE iv or tag")
    try:
        return _AESGCM(key).decrypt(iv, ct + tag, protected.encode("ascii"))
    except InvalidTag:
        raise SealError("open: authentication failed (wrong key)") from None


def seal(alg: str, key: bytes, request_id: str, plaintext: bytes) -> tuple[bytes, str]:
    """Seal ``plaintext`` for ``request_id`` as the collector does, returning
    the body and its content type; for tests of receivers."""
    iv = os.urandom(12)
    if alg == AES_GCM:
        ct = _AESGCM(key).encrypt(iv, plaintext, request_id.encode())
        box = {"alg": "A256GCM", "iv": base64.b64encode(iv).decode(), "ciphertext": base64.b64encode(ct).decode()}
        return json.dumps(box, separators=(",", ":")).encode(), CONTENT_TYPE_AES_GCM
    if alg == JWE:

        def enc(b: bytes) -> str:
            return base64.urlsafe_b64encode(b).rstrip(b"=").decode()

        protected = enc(json.dumps({"alg": "dir", "enc": "A256GCM", "kid": request_id}, separators=(",", ":")).encode())
        sealed = _AESGCM(key).encrypt(iv, plaintext, protected.encode())
        ct, tag = sealed[:-16], sealed[-16:]
        return ".".join([protected, "", enc(iv), enc(ct), enc(tag)]).encode(), CONTENT_TYPE_JWE
    raise SealError(f"seal: unknown algorithm {alg!r}")
