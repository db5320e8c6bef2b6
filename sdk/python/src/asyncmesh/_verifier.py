"""Verifying, opening and decoding one callback."""

from __future__ import annotations

import hmac
import time
from collections.abc import Mapping, Sequence

from . import _seal, _webhook
from ._errors import CallbackRefused, PayloadError, SealError, WebhookVerificationError
from ._types import Result, decode_result


class CallbackVerifier:
    """Checks callbacks as the client's receiver does; use it directly to
    receive callbacks in a web framework of your own.

    ``secrets`` verify the Standard Webhooks signature (``whsec_...``;
    several during a rotation: any one may match). With ``key`` (the rule's
    ``callback.encryption`` key, base64), callbacks must be sealed with it
    and unsealed ones are refused. With ``authorization``, the callback's
    ``Authorization`` header must equal it (a caller's ``auth: bearer``
    sends ``"Bearer <token>"``).
    """

    def __init__(self, secrets: Sequence[str | bytes], key: str | bytes | None = None, authorization: str | None = None) -> None:
        if isinstance(secrets, (str, bytes)):
            raise TypeError("secrets: a list of secrets, not one string")
        self._secrets = [_webhook.parse_secret(s) for s in secrets]
        if not self._secrets:
            raise ValueError("secrets: at least one, to verify callbacks")
        self._key = _seal.parse_key(key) if key else None
        self._authorization = authorization

    def accept(self, headers: Mapping[str, str], body: bytes, now: float | None = None) -> Result:
        """Verify, open and decode a callback; ``headers`` with lower-case
        names (or any mapping matched without regard to case).

        Raises :class:`CallbackRefused` with the status to answer.
        """
        lower = {k.lower(): v for k, v in headers.items()}
        if self._authorization is not None and not hmac.compare_digest(
            lower.get("authorization", "").encode(), self._authorization.encode()
        ):
            raise CallbackRefused(401, "callback without the expected authorization")
        try:
            _webhook.verify(lower, body, self._secrets, time.time() if now is None else now)
        except WebhookVerificationError as e:
            raise CallbackRefused(401, str(e)) from e
        if self._key is not None:
            msg_id = lower.get(_webhook.HEADER_ID, "")
            try:
                body = _seal.open_sealed(_seal.alg_for(lower.get("content-type", "")), self._key, msg_id, body)
            except SealError as e:
                raise CallbackRefused(400, f"callback not sealed with our key: {e}") from e
        try:
            result = decode_result(body)
        except PayloadError as e:
            raise CallbackRefused(400, str(e)) from e
        # The collector signs with the request id as webhook-id; a payload
        # for another id is not what was signed for, whoever sent it.
        if result.id != lower.get(_webhook.HEADER_ID, ""):
            raise CallbackRefused(400, "callback payload: id is not the webhook-id")
        return result
