"""RS256 JWT verification with `kid`-selected public keys, and the principal a token grants.

Order matters: the header's `alg` is checked before anything else so `alg: none` and HMAC tokens
signed with the public key are refused without touching claims.
"""

from __future__ import annotations

import functools
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from gateway.ids import ID_RULE, valid_id
from gateway.observability.logs import get_logger

log = get_logger("gateway.auth")

ROLE_INGEST = "ingest"
ROLE_VIEWER = "viewer"
ROLE_OPS = "ops"
ROLE_EDITOR = "editor"  # renames meetings and speakers, corrects finals (ingest may too)
ROLE_ADMIN = "admin"  # deletes meetings
ALGORITHM = "RS256"
# Token times (`exp`, `nbf`, `iat`) are seconds since the epoch up to the end of year 9999: later
# ones are absurd (10**400 overflowed a float) and the token is refused as malformed.
MAX_TOKEN_TIME = 253402300799
TIME_CLAIMS = ("exp", "nbf", "iat")
_KEY_SUFFIXES = (".pem", ".pub")
KNOWN_KEYS_MAX = 64  # keys remembered across reloads besides the ring's (KeyRing._known)


class Unauthorized(Exception):
    """Missing, malformed, expired or unverifiable token (HTTP 401, close 4401)."""


class Forbidden(Exception):
    """A valid token without the role or meeting it needs (HTTP 403, close 4403)."""


@dataclass(frozen=True, slots=True)
class Principal:
    subject: str
    tenant_id: str
    roles: frozenset[str]
    meetings: frozenset[str] | None  # None: any meeting of the tenant

    def require(self, role: str, meeting_id: str | None = None) -> None:
        if role not in self.roles:
            raise Forbidden(f"token lacks the '{role}' role")
        if meeting_id is not None and self.meetings is not None and meeting_id not in self.meetings:
            raise Forbidden("token is not valid for this meeting")


class KeyRing:
    """Public keys from a PEM file, or a directory of `<kid>.pem|.pub` files (rotation).

    The keys are re-read when the file, the directory or any key file in it changes (checked at
    most every `reload_interval_s`: each file's inode, size and modification time, so a file
    overwritten in place counts too), so a key added next to the old one is picked up, and a key
    removed or replaced stops verifying, without a restart. A file that is not a public key is
    skipped with a warning.
    """

    def __init__(self, path: Path, *, reload_interval_s: float = 5.0) -> None:
        self.path = path
        self._reload_interval_s = reload_interval_s
        self._keys: dict[str, object] = {}
        # Every key loaded, by kid and value: a key that comes back unchanged after a gap (a
        # file rewritten in place, or moved away and back) is the same object again.
        self._known: dict[tuple[str, object], object] = {}
        self._checked_at = 0.0
        self._fingerprint: tuple[object, ...] | None = None
        self._load()
        if not self._keys:
            raise FileNotFoundError(f"no usable public key found at {path}")

    def _load(self) -> None:
        had_keys, first = bool(self._keys), self._fingerprint is None and not self._known
        self._read()
        # Said once each way: every token is refused (401) while the ring is empty.
        if had_keys and not self._keys:
            log.warning("no usable public key now: every token is refused", path=str(self.path))
        elif self._keys and not had_keys and not first:
            log.info("public keys back", path=str(self.path), keys=len(self._keys))

    def _read(self) -> None:
        self._checked_at = time.monotonic()
        try:
            self._fingerprint = self._stat()
        except OSError:
            self._fingerprint, self._keys = None, {}
            return
        if self.path.is_dir():
            files = sorted(p for p in self.path.iterdir() if p.suffix in _KEY_SUFFIXES)
            keys = {p.stem: key for p in files if (key := _read_public_key(p)) is not None}
        else:
            key = _read_public_key(self.path)
            keys = {"": key} if key is not None else {}
        # An unchanged key stays the same object, so a connection can tell that the key its
        # token was verified with is still there (`TokenVerifier.check_key`).
        identities = {
            kid: (kid, key.public_numbers())  # type: ignore[attr-defined]
            for kid, key in keys.items()
        }
        self._keys = {
            kid: self._known.setdefault(identities[kid], key) for kid, key in keys.items()
        }
        # Keys gone from the ring are remembered a while (they may come back); the ring's own
        # never are forgotten, however many it holds.
        in_ring = set(identities.values())
        gone = [identity for identity in self._known if identity not in in_ring]
        for identity in gone[: max(0, len(self._known) - len(in_ring) - KNOWN_KEYS_MAX)]:
            del self._known[identity]  # the first loaded first

    def _refresh(self) -> None:
        if time.monotonic() - self._checked_at < self._reload_interval_s:
            return
        self._checked_at = time.monotonic()
        try:
            changed = self._stat() != self._fingerprint
        except OSError:
            changed = True
        if changed:
            self._load()

    def _stat(self) -> tuple[object, ...]:
        """What changes when a key file is added, removed, replaced or overwritten in place."""

        def of(path: Path) -> tuple[int, int, int]:
            st = path.stat()  # follows symlinks: a Kubernetes secret volume swaps its link
            return st.st_ino, st.st_size, st.st_mtime_ns

        top = of(self.path)
        if not self.path.is_dir():
            return (top,)
        files: list[tuple[object, ...]] = []
        for path in sorted(p for p in self.path.iterdir() if p.suffix in _KEY_SUFFIXES):
            try:
                files.append((path.name, *of(path)))
            except FileNotFoundError:  # removed meanwhile: the next look sees
                continue
            except OSError as exc:  # a link loop, an unreadable target: that file is skipped
                files.append((path.name, type(exc).__name__))  # (and said so), not every key
        return (top, *files)

    def key_for(self, kid: str | None) -> object:
        self._refresh()
        if not self.path.is_dir():
            if "" not in self._keys:
                raise Unauthorized("no verification key available")
            return self._keys[""]  # a single key file serves every kid
        if kid is None:
            if len(self._keys) == 1:
                return next(iter(self._keys.values()))
            raise Unauthorized("token has no 'kid' and several keys are configured")
        try:
            return self._keys[kid]
        except KeyError:
            raise Unauthorized("token signed with an unknown key") from None


def _read_public_key(path: Path) -> object | None:
    try:
        key = load_pem_public_key(path.read_bytes())
    except (OSError, ValueError, TypeError) as exc:
        log.warning("skipping unreadable public key file", file=path.name, error=type(exc).__name__)
        return None
    if not isinstance(key, rsa.RSAPublicKey):
        log.warning("skipping non-RSA public key file", file=path.name)
        return None
    return key


class TokenVerifier:
    def __init__(self, keys: KeyRing, *, audience: str, issuer: str, leeway_s: float) -> None:
        self._keys, self._audience, self._issuer, self._leeway = keys, audience, issuer, leeway_s

    def signing_key(self, token: str | None) -> tuple[str | None, object]:
        """The `kid` of a token and the key that verifies it (its signature is not checked)."""
        if not token:
            raise Unauthorized("missing token")
        if not token.isascii():  # a JWT is base64url; a lone surrogate (JSON "\ud800") can't encode
            raise Unauthorized("malformed token")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise Unauthorized("malformed token") from None
        if header.get("alg") != ALGORITHM:
            raise Unauthorized(f"token algorithm must be {ALGORITHM}")
        kid = header.get("kid")
        kid = kid if isinstance(kid, str) else None
        return kid, self._keys.key_for(kid)

    def check_key(self, kid: str | None, key: object) -> None:
        """Raise Unauthorized, as `verify` would for its token now, unless the key that verified
        a token (`signing_key`) is still the key for its `kid`: not removed, not replaced. An
        open connection checks this instead of keeping its token."""
        if self._keys.key_for(kid) is not key:
            raise Unauthorized("token signature invalid")

    def verify(self, token: str | None) -> Principal:
        _, key = self.signing_key(token)
        assert token is not None
        try:
            claims = jwt.decode(
                token,
                key,  # type: ignore[arg-type]
                algorithms=[ALGORITHM],
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway,
                options={"require": ["exp", "aud", "iss"]},
            )
        except jwt.ExpiredSignatureError:
            _check_times(_claims_unverified(token))  # `exp: true` is 1 to PyJWT: not a time
            raise Unauthorized("token expired") from None
        except jwt.MissingRequiredClaimError as exc:
            raise Unauthorized(f"token lacks the '{exc.claim}' claim") from None
        except jwt.exceptions.InvalidSubjectError:  # (PyJWT 2.10+)
            raise Unauthorized("token 'sub' must be a string") from None
        except jwt.exceptions.InvalidJTIError:
            raise Unauthorized("token 'jti' must be a string") from None
        except (TypeError, OverflowError):  # PyJWT 2.10's int() of `nbf: null`, `iat: [1]`
            _check_times(_claims_unverified(token))
            raise Unauthorized("invalid token: a claim of the wrong type") from None
        except jwt.ImmatureSignatureError:
            _check_times(_claims_unverified(token))  # nbf: 10**400 is a broken rule, not early
            raise Unauthorized("token not yet valid") from None
        except jwt.InvalidAudienceError:
            raise Unauthorized("token audience mismatch") from None
        except jwt.InvalidIssuerError:
            raise Unauthorized("token issuer mismatch") from None
        except jwt.InvalidSignatureError:
            raise Unauthorized("token signature invalid") from None
        except jwt.PyJWTError as exc:
            _check_times(_claims_unverified(token))  # PyJWT's own refusal of NaN or Infinity
            raise Unauthorized(f"invalid token: {type(exc).__name__}") from None
        _check_times(claims)
        return _principal(claims)


def _claims_unverified(token: str) -> dict[str, object]:
    """The claims of a token PyJWT refused, to name the rule it broke (never to accept it)."""
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except (jwt.PyJWTError, TypeError, ValueError):
        return {}
    return claims if isinstance(claims, dict) else {}


def _check_times(claims: dict[str, object]) -> None:
    """Each time claim present is a number of seconds from 0 to MAX_TOKEN_TIME (PyJWT compared
    them with the clock already, but takes any size of integer)."""
    for name in TIME_CLAIMS:
        if name not in claims:
            continue
        value = claims[name]
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not 0 <= value <= MAX_TOKEN_TIME  # NaN fails this too
        ):
            raise Unauthorized(
                f"token '{name}' must be a number of seconds since the epoch, "
                f"from 0 to {MAX_TOKEN_TIME} (year 9999)"
            )


def token_time(value: object) -> float:
    """A time claim of a verified token as a float, clamped to [0, MAX_TOKEN_TIME] (never raises
    for a number of any size)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        if value != value:  # NaN
            return 0.0
        return float(min(max(value, 0), MAX_TOKEN_TIME))
    return 0.0


@functools.lru_cache(maxsize=64)
def _role_set(roles: tuple[str, ...]) -> frozenset[str]:
    # Shared by every connection with the same roles (a frozenset is about 200 bytes).
    return frozenset(roles)


def _principal(claims: dict[str, object]) -> Principal:
    subject = claims.get("sub") or claims.get("user_id")
    tenant = claims.get("tenant_id")
    if not isinstance(subject, str) or not subject:
        raise Unauthorized("token has no 'sub' or 'user_id'")
    if tenant is None or tenant == "":
        raise Unauthorized("token has no 'tenant_id'")
    if not isinstance(tenant, str):
        raise Unauthorized("token 'tenant_id' must be a string")
    if not valid_id(tenant):
        raise Unauthorized(f"token tenant_id must be {ID_RULE}")
    roles = claims.get("roles", [])
    if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
        raise Unauthorized("token 'roles' must be a list of strings")
    meetings = claims.get("meetings")  # absent: every meeting; present (null too): a list
    if "meetings" in claims and (
        not isinstance(meetings, list) or not all(isinstance(m, str) for m in meetings)
    ):
        raise Unauthorized("token 'meetings' must be a list of strings")
    # Interned: every connection of a tenant (or of a user's tabs) shares one string.
    return Principal(
        subject=sys.intern(subject),
        tenant_id=sys.intern(tenant),
        roles=_role_set(tuple(roles)),
        meetings=None if meetings is None else frozenset(meetings),
    )


def bearer_token(headers: dict[str, str] | object, query: dict[str, str] | object) -> str | None:
    """The token from `Authorization: Bearer ...`, else from the `token` query parameter.
    Unauthorized for more than one Authorization header: a proxy in front may have checked
    another one than this would take."""
    getlist = getattr(headers, "getlist", None)
    if getlist is not None and len(getlist("authorization")) > 1:
        raise Unauthorized("more than one Authorization header")
    authorization = headers.get("authorization", "")  # type: ignore[attr-defined]
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    if scheme.lower() == "bearer":
        # A bearer header without its token: not a `?token=` instead (a proxy in front may have
        # checked this header, not that). Another scheme (`Basic`: a browser's cached
        # credentials for a proxy's own login, sent on the viewer page's WebSocket too) is not
        # ours to read, and leaves the query's token.
        raise Unauthorized("send the token as `Authorization: Bearer <JWT>`")
    token = query.get("token")  # type: ignore[attr-defined]
    return token or None
