"""An open connection keeps no token: it re-checks that the key which verified its token is still
the key ring's key for its `kid` (gateway.auth.TokenVerifier.check_key)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import jwt
import pytest

from gateway.auth import KNOWN_KEYS_MAX, KeyRing, TokenVerifier, Unauthorized
from tests.e2e.harness import KeyPair


def verifier_for(keys: Path) -> TokenVerifier:
    ring = KeyRing(keys, reload_interval_s=0)
    return TokenVerifier(ring, audience="meetings", issuer="our-app", leeway_s=0)


def touch_dir(keys: Path) -> None:
    """Make the directory's mtime differ, as any change of its files does."""
    stat = keys.stat()
    os.utime(keys, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))


def test_an_unchanged_key_survives_a_reload_and_a_replaced_or_removed_one_does_not(
    tmp_path: Path,
) -> None:
    one, two = KeyPair.generate(), KeyPair.generate()
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "one.pem").write_bytes(one.public_pem)
    (keys / "two.pem").write_bytes(two.public_pem)
    verifier = verifier_for(keys)
    kid_one, key_one = verifier.signing_key(one.token(kid="one"))
    kid_two, key_two = verifier.signing_key(two.token(kid="two"))
    assert verifier.verify(one.token(kid="one")).tenant_id

    # Another key arrives: the directory is re-read, the unchanged keys still check.
    (keys / "three.pem").write_bytes(KeyPair.generate().public_pem)
    touch_dir(keys)
    verifier.check_key(kid_one, key_one)
    verifier.check_key(kid_two, key_two)

    # `one.pem` now holds another key: tokens verified with the old one no longer check.
    (keys / "one.pem").write_bytes(KeyPair.generate().public_pem)
    touch_dir(keys)
    with pytest.raises(Unauthorized, match="signature invalid"):
        verifier.check_key(kid_one, key_one)
    # `two.pem` is removed: its tokens fail as `verify` would fail them.
    (keys / "two.pem").unlink()
    touch_dir(keys)
    with pytest.raises(Unauthorized, match="unknown key"):
        verifier.check_key(kid_two, key_two)
    with pytest.raises(Unauthorized, match="unknown key"):
        verifier.verify(two.token(kid="two"))


@pytest.mark.parametrize("layout", ["directory", "file"])
def test_a_key_that_comes_back_unchanged_after_a_gap_still_checks(
    tmp_path: Path, layout: str
) -> None:
    """A key file moved away and back, or rewritten slowly (a reload read it half-written):
    the key is unchanged, so the connections it verified stay open (they were closed 4401)."""
    pair = KeyPair.generate()
    keys = tmp_path / "keys"
    keys.mkdir()
    path = keys / "one.pem"
    path.write_bytes(pair.public_pem)
    verifier = verifier_for(keys if layout == "directory" else path)
    kid, key = verifier.signing_key(pair.token(kid="one"))
    path.rename(tmp_path / "away.pem")
    touch_dir(keys)
    with pytest.raises(Unauthorized):  # gone: as documented, it verifies nothing meanwhile
        verifier.verify(pair.token(kid="one"))
    (tmp_path / "away.pem").rename(path)
    touch_dir(keys)
    verifier.check_key(kid, key)
    path.write_bytes(pair.public_pem[:50])  # half-written
    touch_dir(keys)
    with pytest.raises(Unauthorized):
        verifier.check_key(kid, key)
    path.write_bytes(pair.public_pem)
    touch_dir(keys)
    verifier.check_key(kid, key)


def test_a_ring_of_more_keys_than_it_remembers_keeps_them_all(tmp_path: Path) -> None:
    """The keys remembered across reloads are bounded, but never below the ring's own: with 70
    keys, a reload made every key a new object and closed every connection 4401."""
    keys = tmp_path / "keys"
    keys.mkdir()
    pairs = [KeyPair.generate() for _ in range(KNOWN_KEYS_MAX + 6)]
    for n, pair in enumerate(pairs):
        (keys / f"k{n}.pem").write_bytes(pair.public_pem)
    verifier = verifier_for(keys)
    held = [verifier.signing_key(pair.token(kid=f"k{n}")) for n, pair in enumerate(pairs)]
    (keys / "extra.pem").write_bytes(KeyPair.generate().public_pem)
    touch_dir(keys)
    for kid, key in held:
        verifier.check_key(kid, key)
    # One of them caught half-written by a reload, then whole again: still the same key.
    (keys / "k0.pem").write_bytes(pairs[0].public_pem[:50])
    touch_dir(keys)
    with pytest.raises(Unauthorized):
        verifier.check_key(*held[0])
    (keys / "k0.pem").write_bytes(pairs[0].public_pem)
    touch_dir(keys)
    for kid, key in held:
        verifier.check_key(kid, key)


def test_an_entry_that_cannot_be_read_is_skipped_not_every_key(tmp_path: Path) -> None:
    """A link loop (or a link into an unreadable directory) in the key directory: that entry is
    skipped with a warning; it emptied the ring, and every connection was closed 4401."""
    pair = KeyPair.generate()
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "one.pem").write_bytes(pair.public_pem)
    verifier = verifier_for(keys)
    kid, key = verifier.signing_key(pair.token(kid="one"))
    (keys / "loop.pem").symlink_to("loop.pem")
    touch_dir(keys)
    verifier.check_key(kid, key)
    assert verifier.verify(pair.token(kid="one")).tenant_id


@pytest.mark.parametrize("layout", ["directory", "file"])
def test_a_key_file_overwritten_in_place_is_reread(tmp_path: Path, layout: str) -> None:
    # `cp new.pem keys/one.pem` rewrites the file: the directory's own mtime does not change.
    old, new = KeyPair.generate(), KeyPair.generate()
    keys = tmp_path / "keys"
    keys.mkdir()
    path = keys / "one.pem"
    path.write_bytes(old.public_pem)
    verifier = verifier_for(keys if layout == "directory" else path)
    kid, key = verifier.signing_key(old.token(kid="one"))
    directory_mtime = keys.stat().st_mtime_ns
    before = path.stat()
    with path.open("r+b") as file:  # in place: same inode, and same size (RSA-2048 PEMs)
        file.write(new.public_pem)
        file.truncate()
    # A coarse clock can leave the file's mtime where it was within one tick: move it as a
    # later write would.
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000_000))
    assert keys.stat().st_mtime_ns == directory_mtime
    with pytest.raises(Unauthorized, match="signature invalid"):
        verifier.check_key(kid, key)
    with pytest.raises(Unauthorized, match="signature invalid"):
        verifier.verify(old.token(kid="one"))
    assert verifier.verify(new.token(kid="one")).tenant_id


@pytest.mark.parametrize(
    ("claim", "value"),
    [
        ("exp", 10**400),
        ("exp", float("inf")),
        ("exp", 253402300800),  # one second past year 9999
        ("iat", -(10**400)),
        ("iat", 10**400),
        ("nbf", 10**400),
        ("exp", "9999999999"),  # a NumericDate is a JSON number
        ("exp", True),
    ],
)
def test_absurd_token_times_are_unauthorized_not_a_crash(
    tmp_path: Path, claim: str, value: object
) -> None:
    keypair = KeyPair.generate()
    (tmp_path / "jwt.pub").write_bytes(keypair.public_pem)
    verifier = verifier_for(tmp_path / "jwt.pub")
    with pytest.raises(Unauthorized):
        verifier.verify(keypair.token(**{claim: value}))


@pytest.mark.parametrize("meetings", [None, "m1", {"m1": True}, ["m2", 1]])
def test_a_meetings_claim_that_is_not_a_list_of_strings_is_unauthorized(
    tmp_path: Path, meetings: object
) -> None:
    # Present but null must not mean "every meeting", as an absent claim does.
    keypair = KeyPair.generate()
    (tmp_path / "jwt.pub").write_bytes(keypair.public_pem)
    verifier = verifier_for(tmp_path / "jwt.pub")
    claims = jwt.decode(keypair.token(), options={"verify_signature": False})
    token = jwt.encode({**claims, "meetings": meetings}, keypair.private_pem, algorithm="RS256")
    with pytest.raises(Unauthorized, match="'meetings' must be a list of strings"):
        verifier.verify(token)
    assert verifier.verify(keypair.token()).meetings is None  # absent: every meeting
    assert verifier.verify(keypair.token(meetings=[])).meetings == frozenset()


def test_token_times_are_clamped_so_nothing_overflows() -> None:
    from gateway.auth import MAX_TOKEN_TIME, token_time

    assert token_time(10**400) == float(MAX_TOKEN_TIME)
    assert token_time(-(10**400)) == 0.0
    assert token_time(float("nan")) == 0.0
    assert token_time(1_800_000_000) == 1_800_000_000.0


def test_a_pyjwt_that_trips_over_a_claims_type_is_still_a_401(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PyJWT 2.10 (within our pin) converts `nbf`/`iat` with int() and lets its TypeError out
    for `nbf: null` or `iat: [1]`; later releases refuse them. Either way: Unauthorized,
    naming the rule where a time claim broke it, never an exception a route turns into 500."""
    pair = KeyPair.generate()
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "one.pem").write_bytes(pair.public_pem)
    verifier = verifier_for(keys)

    real_decode = jwt.decode

    def older_pyjwt(token: str, *args: Any, options: Any = None, **kwargs: Any) -> Any:
        if options and options.get("verify_signature") is False:  # no claim checks then
            return real_decode(token, *args, options=options, **kwargs)
        raise TypeError("int() argument must be a string, a bytes-like object or a real number")

    monkeypatch.setattr(jwt, "decode", older_pyjwt)
    with pytest.raises(Unauthorized, match="a claim of the wrong type"):
        verifier.verify(pair.token(kid="one"))


def test_a_ring_left_without_keys_says_so_once_and_again_when_they_are_back(
    tmp_path: Path,
) -> None:
    """The only key file deleted while serving: every request got 401 and nothing was logged."""
    from structlog.testing import capture_logs

    pair = KeyPair.generate()
    path = tmp_path / "jwt.pub"
    path.write_bytes(pair.public_pem)
    with capture_logs() as logs:
        verifier = verifier_for(path)
        assert verifier.verify(pair.token()).tenant_id
        path.unlink()
        for _ in range(3):
            with pytest.raises(Unauthorized):
                verifier.verify(pair.token())
        path.write_bytes(pair.public_pem)
        assert verifier.verify(pair.token()).tenant_id
    said = [(e["log_level"], e["event"]) for e in logs]
    assert said == [
        ("warning", "no usable public key now: every token is refused"),
        ("info", "public keys back"),
    ]
