from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway.tokens import KNOWN_ROLES, generate_keypair, mint_token


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_keypair_is_pkcs8_and_spki_pem_and_private_key_is_0600_whatever_the_umask(
    tmp_path: Path,
) -> None:
    old = os.umask(0)
    try:
        key_path, pub_path = generate_keypair(tmp_path / "keys")
    finally:
        os.umask(old)
    assert (key_path.name, pub_path.name) == ("jwt.key", "jwt.pub")
    private = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    public = serialization.load_pem_public_key(pub_path.read_bytes())
    assert isinstance(private, rsa.RSAPrivateKey) and isinstance(public, rsa.RSAPublicKey)
    assert private.public_key().public_numbers() == public.public_numbers()
    # Written as PKCS#8 and SubjectPublicKeyInfo PEM: re-encoding so gives the same bytes.
    pem = serialization.Encoding.PEM
    pkcs8, spki = serialization.PrivateFormat.PKCS8, serialization.PublicFormat.SubjectPublicKeyInfo
    no_password = serialization.NoEncryption()
    assert private.private_bytes(pem, pkcs8, no_password) == key_path.read_bytes()
    assert public.public_bytes(pem, spki) == pub_path.read_bytes()
    assert _mode(key_path) == 0o600
    assert sorted(p.name for p in key_path.parent.iterdir()) == ["jwt.key", "jwt.pub"]


def test_private_key_file_is_created_0600_not_narrowed_afterwards(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened: list[tuple[str, int, int]] = []
    real_open = os.open

    def spy(path: str | os.PathLike[str], flags: int, mode: int = 0o777, **kw: object) -> int:
        opened.append((os.fspath(path), flags, mode))
        return real_open(path, flags, mode, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", spy)
    generate_keypair(tmp_path, name="k")
    creates = [(p, fl, m) for p, fl, m in opened if fl & os.O_CREAT]
    key_creates = [(fl, m) for p, fl, m in creates if ".k.key." in p or p.endswith("k.key")]
    assert key_creates, creates
    for flags, mode in key_creates:
        assert mode == 0o600
        assert flags & os.O_EXCL  # never reuses an existing file, whose mode would stay


def test_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    key_path, pub_path = generate_keypair(tmp_path)
    before = key_path.read_bytes(), pub_path.read_bytes()
    with pytest.raises(FileExistsError):
        generate_keypair(tmp_path)
    assert (key_path.read_bytes(), pub_path.read_bytes()) == before


def test_refuses_when_only_the_public_half_exists(tmp_path: Path) -> None:
    (tmp_path / "jwt.pub").write_text("old")
    with pytest.raises(FileExistsError):
        generate_keypair(tmp_path)
    assert not (tmp_path / "jwt.key").exists()


def test_force_replaces_the_pair_and_resets_a_loosened_mode(tmp_path: Path) -> None:
    key_path, _ = generate_keypair(tmp_path)
    old_key = key_path.read_bytes()
    key_path.chmod(0o644)
    key_path2, pub_path2 = generate_keypair(tmp_path, force=True)
    assert key_path2 == key_path
    assert key_path.read_bytes() != old_key
    assert _mode(key_path) == 0o600
    token = mint_token(key_path.read_bytes(), tenant="t", user="u", roles=["ops"])
    jwt.decode(token, pub_path2.read_bytes(), algorithms=["RS256"], audience="meetings")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["jwt.key", "jwt.pub"]


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, bytes]:
    key_path, pub_path = generate_keypair(tmp_path_factory.mktemp("k"))
    return key_path.read_bytes(), pub_path.read_bytes()


def test_minted_token_verifies_with_rs256_audience_and_issuer(pair: tuple[bytes, bytes]) -> None:
    private, public = pair
    now = time.time()
    token = mint_token(
        private,
        tenant="acme",
        user="alice",
        roles=["ingest", "viewer"],
        meetings=["m1", "m2"],
        ttl_s=600,
        kid="k2025",
        now=now,
    )
    claims = jwt.decode(token, public, algorithms=["RS256"], audience="meetings", issuer="our-app")
    assert claims["sub"] == "alice"
    assert claims["tenant_id"] == "acme"
    assert claims["roles"] == ["ingest", "viewer"]
    assert claims["meetings"] == ["m1", "m2"]
    assert claims["iat"] == claims["nbf"] == int(now)
    assert claims["exp"] == int(now) + 600
    header = jwt.get_unverified_header(token)
    assert header["alg"] == "RS256"
    assert header["kid"] == "k2025"


def test_defaults_omit_meetings_and_kid(pair: tuple[bytes, bytes]) -> None:
    private, public = pair
    token = mint_token(private, tenant="t", user="u", roles=["viewer"])
    claims = jwt.decode(token, public, algorithms=["RS256"], audience="meetings")
    assert "meetings" not in claims
    assert "kid" not in jwt.get_unverified_header(token)


def test_custom_audience_and_issuer_are_enforced(pair: tuple[bytes, bytes]) -> None:
    private, public = pair
    token = mint_token(private, tenant="t", user="u", roles=["ops"], audience="x", issuer="y")
    jwt.decode(token, public, algorithms=["RS256"], audience="x", issuer="y")
    with pytest.raises(jwt.InvalidAudienceError):
        jwt.decode(token, public, algorithms=["RS256"], audience="meetings")
    with pytest.raises(jwt.InvalidIssuerError):
        jwt.decode(token, public, algorithms=["RS256"], audience="x", issuer="our-app")


def test_now_in_the_past_gives_an_expired_token(pair: tuple[bytes, bytes]) -> None:
    private, public = pair
    token = mint_token(
        private, tenant="t", user="u", roles=["viewer"], ttl_s=60, now=time.time() - 3600
    )
    with pytest.raises(jwt.ExpiredSignatureError):
        jwt.decode(token, public, algorithms=["RS256"], audience="meetings")


def test_token_from_another_key_does_not_verify(pair: tuple[bytes, bytes], tmp_path: Path) -> None:
    other_key, _ = generate_keypair(tmp_path)
    token = mint_token(other_key.read_bytes(), tenant="t", user="u", roles=["viewer"])
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(token, pair[1], algorithms=["RS256"], audience="meetings")


@pytest.mark.parametrize("kwargs", [{"roles": ["owner"]}, {"roles": ["viewer"], "ttl_s": 0}])
def test_rejects_unknown_roles_and_non_positive_ttl(
    pair: tuple[bytes, bytes], kwargs: dict[str, object]
) -> None:
    with pytest.raises(ValueError):
        mint_token(pair[0], tenant="t", user="u", **kwargs)  # type: ignore[arg-type]


def test_every_role_the_gateway_checks_can_be_minted() -> None:
    from gateway import auth

    checked = {value for name, value in vars(auth).items() if name.startswith("ROLE_")}
    assert checked == KNOWN_ROLES


def test_self_minted_claims_read_the_gateways_settings_as_it_does(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A value from a file ends in a newline: the gateway strips it, the client commands minted
    tokens for "meetings\\n" and got "token audience mismatch"."""
    from gateway.client.tokens import claim_default

    monkeypatch.setenv("JWT_AUDIENCE", "meetings\n")
    assert claim_default("JWT_AUDIENCE", "x") == "meetings"
    monkeypatch.setenv("JWT_AUDIENCE", " ")
    assert claim_default("JWT_AUDIENCE", "x") == "x"
