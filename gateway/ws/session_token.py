"""Sessions end with their tokens: an open connection lives only as long as its token.

A connection ends with 4401 "token expired" at its token's `exp` (plus `JWT_LEEWAY_S`, the skew
already allowed at connect). A client keeps the connection by sending
`{"type": "refresh", "token": "..."}` before then: a token for the same tenant and subject whose
roles and meetings still cover the connection moves the expiry and is answered
`{"type": "refreshed", "exp": ...}`; anything else is answered with an error message and changes
nothing (the connection still ends at the current token's expiry).

Every `KEY_RECHECK_S` (a setting, default 30 s; jittered) the connection checks that the key
which verified its current token is still the key ring's key for its `kid`, so a key removed from
the key directory (or a replaced key file) ends the connections it signed within a minute: the key
ring notices the change within 5 s, the re-check follows within KEY_RECHECK_S. One timer per
connection serves both, and the token itself is not kept (a viewer may idle for hours; a token is
about 600 bytes). No work is done per message.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import TYPE_CHECKING

import jwt

from fanout.messages import ErrorMessage, RefreshedMessage
from gateway.auth import Forbidden, Principal, Unauthorized, token_time
from gateway.close_codes import CloseCode
from gateway.observability.logs import get_logger

if TYPE_CHECKING:
    from gateway.auth import TokenVerifier
    from gateway.ws.live import LiveConnection

log = get_logger("gateway.ws.session_token")

_CLOCK_SLACK_S = 0.001  # asyncio may run a timer this much before its time
TOKEN_EXPIRED = "token expired"


def token_exp(token: str) -> float:
    """The `exp` claim of a token that was already verified (verification required it and
    bounded it), clamped so that no value can overflow."""
    claims = jwt.decode(token, options={"verify_signature": False})
    return token_time(claims.get("exp"))


class SessionToken:
    """The token a connection runs on: its expiry timer, its key re-check, and refresh."""

    __slots__ = (
        "_connection",
        "_expires_at",
        "_key",
        "_kid",
        "_leeway_s",
        "_loop",
        "_principal",
        "_recheck_s",
        "_timer",
        "_verifier",
        "exp",
    )

    def __init__(
        self,
        verifier: TokenVerifier,
        connection: LiveConnection,
        token: str,
        principal: Principal,
        *,
        leeway_s: float,
        recheck_s: float,
    ) -> None:
        self._verifier = verifier
        self._leeway_s = leeway_s
        self._recheck_s = recheck_s
        self._connection = connection
        self._kid, self._key = self._verifier.signing_key(token)
        self._principal = principal
        self._loop = asyncio.get_running_loop()
        self.exp = 0.0
        self._expires_at = 0.0  # the loop's clock
        self._timer: asyncio.TimerHandle | None = None
        self._set_exp(token_exp(token))
        self._arm()

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()

    def expired(self) -> bool:
        return self._loop.time() + _CLOCK_SLACK_S >= self._expires_at

    def _set_exp(self, exp: float) -> None:
        self.exp = exp
        # Wall-clock expiry translated to the loop's monotonic clock once, when set.
        self._expires_at = self._loop.time() + max(0.0, exp + self._leeway_s - time.time())

    def _arm(self) -> None:
        """One timer per connection: the next key re-check (jittered, so connections opened
        together spread out), or the expiry if that comes first."""
        if self._timer is not None:
            self._timer.cancel()
        recheck_at = self._loop.time() + self._recheck_s * random.uniform(0.8, 1.0)
        self._timer = self._loop.call_at(min(self._expires_at, recheck_at), self._due)

    def _due(self) -> None:
        self._timer = None
        if self.expired():
            self._connection.end(CloseCode.UNAUTHORIZED, TOKEN_EXPIRED)
            return
        try:
            self._verifier.check_key(self._kid, self._key)
        except Unauthorized as exc:
            log.info("ending connection: token no longer verifies", reason=str(exc))
            self._connection.end(CloseCode.UNAUTHORIZED, str(exc))
            return
        except Exception as exc:  # a broken key file must not kill the loop's callback
            log.warning("token re-check failed", error=type(exc).__name__)
        self._arm()

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
        self._kid, self._key = self._verifier.signing_key(token)
        self._principal = principal
        self._set_exp(token_exp(token))
        self._arm()
        return RefreshedMessage(meeting_id=meeting_id, exp=int(self.exp)).encode()

    def _check_covers(self, principal: Principal) -> None:
        current = self._principal
        if principal.tenant_id != current.tenant_id:
            raise Forbidden("token is for another tenant")
        if principal.subject != current.subject:
            raise Forbidden("token is for another subject")
        principal.require(self._connection.role, self._connection.meeting_id)


def _error(meeting_id: str, code: int, message: str) -> bytes:
    return ErrorMessage(meeting_id=meeting_id, code=code, message=message).encode()
