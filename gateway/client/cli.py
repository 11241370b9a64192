"""Command-line plumbing the scripts in scripts/ share: connection options, tokens, one-line
errors."""

from __future__ import annotations

import argparse
import asyncio
import sys
import textwrap
from collections.abc import Coroutine, Sequence
from typing import Any

from websockets.exceptions import WebSocketException

from gateway.client.connection import GatewayError
from gateway.client.tokens import claim_default, dev_token

MINTED_TTL_S = 3600  # a self-minted token's lifetime


def add_connection_args(parser: argparse.ArgumentParser, minted_roles: str = "") -> None:
    """Options every dev script shares: where the gateway is and how to get a token. The help
    says what a self-minted token holds (`minted_roles`: the roles the script mints)."""
    roles = f", roles {minted_roles}" if minted_roles else ""
    parser.epilog = textwrap.fill(
        "Without --token the script mints its own token with --key (`make run` creates "
        f"keys/jwt.key) for tenant --tenant (default 'dev'), user --user (default 'dev'){roles}, "
        f"valid for --meeting only, for {MINTED_TTL_S // 60} minutes. Watch or stream with the "
        "same tenant: another tenant's meeting of the same id is a different meeting.",
        width=78,
    )
    parser.add_argument("--meeting", required=True, help="meeting id")
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="gateway base URL")
    parser.add_argument("--token", help="JWT to use (default: mint a dev token with --key)")
    parser.add_argument("--tenant", default="dev", help="tenant_id of a self-minted token")
    parser.add_argument("--user", default="dev", help="sub of a self-minted token")
    parser.add_argument("--key", default="keys/jwt.key", help="private key to mint tokens with")
    parser.add_argument("--kid", help="kid header of a self-minted token")
    parser.add_argument(
        "--audience",
        default=claim_default("JWT_AUDIENCE", "meetings"),
        help="aud of a self-minted token (JWT_AUDIENCE when set)",
    )
    parser.add_argument(
        "--issuer",
        default=claim_default("JWT_ISSUER", "our-app"),
        help="iss of a self-minted token (JWT_ISSUER when set)",
    )
    parser.add_argument(
        "--token-in-query",
        action="store_true",
        help="send the token as ?token= (as browsers must) instead of an Authorization header",
    )


def token_from_args(args: argparse.Namespace, roles: Sequence[str]) -> str:
    """--token, or a dev token for just this meeting minted with --key."""
    if args.token:
        return str(args.token)
    return dev_token(
        args.key,
        tenant=args.tenant,
        user=args.user,
        roles=roles,
        meetings=[args.meeting],
        audience=args.audience,
        issuer=args.issuer,
        kid=args.kid,
        ttl_s=MINTED_TTL_S,
    )


def positive_float(text: str) -> float:
    """argparse type for speeds and intervals (`inf` allowed)."""
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def run_cli(main: Coroutine[Any, Any, int]) -> int:
    """Run a script's coroutine; report expected failures in one line instead of a traceback."""
    try:
        return asyncio.run(main)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except GatewayError as exc:
        print(f"gateway refused: code={exc.code} {exc.message}", file=sys.stderr)
        return 1
    except ConnectionRefusedError as exc:
        print(
            f"cannot reach the gateway ({exc.strerror or exc}): is it running, and is --url "
            "its address?",
            file=sys.stderr,
        )
        return 1
    except (OSError, TimeoutError, WebSocketException) as exc:
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
