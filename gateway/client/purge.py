"""`meeting-gateway meetings purge`: delete every meeting of a tenant, and its webhook endpoints,
through the REST API (a tenant leaving, an erasure request).

It lists the tenant's meetings (following every page) and deletes each as `DELETE
/api/v1/meetings/{id}` does: their sockets are closed 4404 on every replica, their finals,
streams, notes, tips, recordings and search entries go. Then the endpoints registered through
the API (those from WEBHOOKS_FILE are the operator's: listed, not deleted). Without `--yes` it
only says what it would delete. The token must cover the whole tenant (no `meetings` claim) with
the roles `ops` (to list) and `admin` (to delete).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import httpx

from gateway.client.rest_cli import add_arguments, error_message, reaching_the_gateway, token_for

PAGE = 200


def _pages(client: httpx.Client, path: str, key: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    response = client.get(path)
    while True:
        if response.status_code != 200:
            raise _Refused(response)
        body = response.json()
        items.extend(body[key])
        if not body.get("next"):
            return items
        response = client.get(body["next"])


class _Refused(Exception):
    def __init__(self, response: httpx.Response) -> None:
        super().__init__(
            f"{response.request.method} {response.request.url.path}: "
            f"{response.status_code} {error_message(response)}"
        )


def cmd_purge(args: argparse.Namespace) -> int:
    headers = {"Authorization": f"Bearer {token_for(args, ['ops', 'admin'])}"}
    with httpx.Client(base_url=args.url, headers=headers, timeout=60) as client:
        try:
            meetings = [
                m["id"] for m in _pages(client, f"/api/v1/meetings?limit={PAGE}", "meetings")
            ]
            endpoints = _pages(client, "/api/v1/webhooks", "webhooks")
        except _Refused as exc:
            print(f"meeting-gateway: {exc}", file=sys.stderr)
            return 1
        ours = [e for e in endpoints if e.get("source") != "file"]
        kept = len(endpoints) - len(ours)
        if not args.yes:
            print(
                f"would delete {len(meetings)} meetings and {len(ours)} webhook endpoints "
                "(run again with --yes)"
            )
            return 0
        for meeting in meetings:
            response = client.delete(f"/api/v1/meetings/{meeting}")
            if response.status_code != 204:
                print(f"meeting-gateway: {_Refused(response)}", file=sys.stderr)
                return 1
        for endpoint in ours:
            response = client.delete(f"/api/v1/webhooks/{endpoint['id']}")
            if response.status_code not in (204, 404):  # 404: deleted meanwhile
                print(f"meeting-gateway: {_Refused(response)}", file=sys.stderr)
                return 1
    left = f" ({kept} from WEBHOOKS_FILE left: the operator's)" if kept else ""
    print(f"deleted {len(meetings)} meetings and {len(ours)} webhook endpoints{left}")
    return 0


def add_parser(sub: Any) -> None:
    """`meetings purge` under the main command's subparsers."""
    meetings = sub.add_parser("meetings", help="the tenant's meetings as a whole")
    meetings_sub = meetings.add_subparsers(dest="meetings", required=True)
    purge = meetings_sub.add_parser(
        "purge", help="delete every meeting of the token's tenant and its webhook endpoints"
    )
    purge.add_argument("--yes", action="store_true", help="delete (without it: say what)")
    add_arguments(purge)
    purge.set_defaults(func=reaching_the_gateway(cmd_purge))
