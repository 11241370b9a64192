"""Sessions end with their tokens: an open connection lives only as long as its token.

Each connection arms one timer at its token's `exp` (plus `JWT_LEEWAY_S`, the skew already
allowed at connect); when it fires the connection is ended with 4401 "token expired". A client
keeps the connection by sending `{"type": "refresh", "token": "..."}` before then: a token for the
same tenant and subject whose roles and meetings still cover the connection re-arms the timer and
is answered `{"type": "refreshed", "exp": ...}`; anything else is answered with an error message
and changes nothing (the connection still ends at the current token's expiry).

A second, jittered per-connection timer re-verifies the current token every KEY_RECHECK_S, so a
key removed from the key directory (or a replaced key file) ends the connections it signed within
a minute: the key ring notices the change within 5 s, the re-check follows within KEY_RECHECK_S.
No work is done per message.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from typing import TYPE_CHECKING

import jwt

from fanout.messages import ErrorMessage, utc_now_iso
from gateway.auth import Forbidden, Principal, Unauthorized
from gateway.close_codes import CloseCode
from gateway.observability.logs import get_logger

if TYPE_CHECKING:
    from gateway.services import Services
    from gateway.ws.live import LiveConnection

log = get_logger("gateway.ws.session_token")

KEY_RECHECK_S = 30.0
TOKEN_EXPIRED = "token expired"


def token_exp(token: str) -> float:
    """The `exp` claim of a token that was already verified (verification required it)."""
    claims = jwt.decode(token, options={"verify_signature": False})
    return float(claims["exp"])


class SessionToken:
    """The token a connection runs on: its expiry timer, its key re-check, and refresh."""

    __slots__ = (
        "_connection",
        "_expiry",
        "_leeway_s",
        "_loop",
        "_principal",
        "_recheck",
        "_token",
        "_verifier",
        "exp",
    )

    def __init__(
        self, services: Services, connection: LiveConnection, token: str, principal: Principal
    ) -> None:
        self._verifier = services.verifier
        self._leeway_s = services.settings.jwt_leeway_s
        self._connection = connection
        self._token = token
        self._principal = principal
        self._loop = asyncio.get_running_loop()
        self.exp = token_exp(token)
        self._expiry: asyncio.TimerHandle | None = None
        self._recheck: asyncio.TimerHandle | None = None
        self._arm_expiry()
        self._arm_recheck()

    def cancel(self) -> None:
        for handle in (self._expiry, self._recheck):
            if handle is not None:
                handle.cancel()

    def _arm_expiry(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
        # Wall-clock expiry translated to the loop's monotonic clock once, when armed.
        delay = max(0.0, self.exp + self._leeway_s - time.time())
        self._expiry = self._loop.call_later(delay, self._expired)

    def _expired(self) -> None:
        self._connection.end(CloseCode.UNAUTHORIZED, TOKEN_EXPIRED)

    def _arm_recheck(self) -> None:
        # Jitter spreads the re-checks of connections opened together.
        delay = KEY_RECHECK_S * random.uniform(0.8, 1.0)
        self._recheck = self._loop.call_later(delay, self._recheck_key)

    def _recheck_key(self) -> None:
        try:
            self._verifier.verify(self._token)
        except Unauthorized as exc:
            reason = str(exc)
            if reason != TOKEN_EXPIRED:
                log.info("ending connection: token no longer verifies", reason=reason)
            self._connection.end(CloseCode.UNAUTHORIZED, reason)
            return
        except Exception as exc:  # a broken key file must not kill the loop's callback
            log.warning("token re-check failed", error=type(exc).__name__)
        self._arm_recheck()

    def answer_refresh(self, token: object) -> bytes:
        """Handle `{"type": "refresh", "token": ...}`; the encoded answer to send back."""
        meeting_id = self._connection.meeting_id
        if not isinstance(token, str) or not token:
            return _error(meeting_id, CloseCode.PROTOCOL_ERROR, 'refresh needs a "token" string')
        try:
            principal = self._verifier.verify(token)
            self._check_covers(principal)
        except Unauthorized as exc:
            return _error(meeting_id, CloseCode.UNAUTHORIZED, f"refresh refused: {exc}")
        except Forbidden as exc:
            return _error(meeting_id, CloseCode.FORBIDDEN, f"refresh refused: {exc}")
        self._token, self._principal = token, principal
        self.exp = token_exp(token)
        self._arm_expiry()
        answer = {"type": "refreshed", "meeting_id": meeting_id, "exp": int(self.exp)}
        return json.dumps({**answer, "ts": utc_now_iso()}, separators=(",", ":")).encode()

    def _check_covers(self, principal: Principal) -> None:
        current = self._principal
        if principal.tenant_id != current.tenant_id:
            raise Forbidden("token is for another tenant")
        if principal.subject != current.subject:
            raise Forbidden("token is for another subject")
        principal.require(self._connection.role, self._connection.meeting_id)


def _error(meeting_id: str, code: int, message: str) -> bytes:
    return ErrorMessage(meeting_id=meeting_id, code=code, message=message).encode()
