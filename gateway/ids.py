"""Identifier rules. Topic and key names are built from tenant and meeting ids joined by ':', so
ids must not contain ':' (tenant "a:b" + meeting "c" would otherwise collide with "a" + "b:c")."""

from __future__ import annotations

import re

_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,127}")


def valid_id(value: str) -> bool:
    return bool(_ID.fullmatch(value))


ID_RULE = "1-128 characters of letters, digits, '_', '.', '@', '-', starting with a letter or digit"
