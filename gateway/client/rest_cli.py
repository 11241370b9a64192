"""What the REST commands of `meeting-gateway` share (recordings, meetings): where the gateway
is and which token to send, its error messages, and a gateway out of reach in one line."""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable

import httpx

from gateway.client.tokens import claim_default, dev_token


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="gateway base URL")
    parser.add_argument("--token", help="JWT to use (default: mint a dev token with --key)")
    parser.add_argument("--tenant", default="dev", help="tenant_id of a minted token")
    parser.add_argument("--user", default="dev", help="sub of a minted token")
    parser.add_argument("--key", default="keys/jwt.key", help="private key to mint tokens with")
    parser.add_argument("--audience", default=claim_default("JWT_AUDIENCE", "meetings"))
    parser.add_argument("--issuer", default=claim_default("JWT_ISSUER", "our-app"))


def token_for(args: argparse.Namespace, roles: list[str]) -> str:
    if args.token:
        return str(args.token)
    meeting = getattr(args, "meeting", None)
    return dev_token(
        args.key,
        tenant=args.tenant,
        user=args.user,
        roles=roles,
        meetings=[meeting] if meeting else None,
        audience=args.audience,
        issuer=args.issuer,
    )


def error_message(response: httpx.Response) -> str:
    try:
        return str(response.json()["error"]["message"])
    except Exception:
        return response.text[:200]


def reaching_the_gateway(command: Callable[[argparse.Namespace], int]) -> Callable[..., int]:
    """A command that reports a gateway it cannot reach, a bad --url or a missing --key in one
    line (exit 1), not with a traceback."""

    @functools.wraps(command)
    def run(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except (OSError, ValueError) as exc:  # the key for a minted token
            print(f"meeting-gateway: {exc}", file=sys.stderr)
        except httpx.InvalidURL as exc:
            print(f"meeting-gateway: --url {args.url!r}: {exc}", file=sys.stderr)
        except httpx.HTTPError as exc:
            reason = str(exc) or type(exc).__name__
            print(f"meeting-gateway: cannot reach {args.url}: {reason}", file=sys.stderr)
        return 1

    return run
