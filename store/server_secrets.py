"""Secrets every replica shares, kept in the database (`server_secrets`, migration 0012).

Made once with the schema, so replicas agree without an operator handing them a key. One is
made here instead when it is missing (a database whose row was removed by hand): inserted if
still absent, then read, so replicas doing it at once agree too.
"""

from __future__ import annotations

import secrets

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from store.sql import write_engine
from store.tables import server_secrets


async def server_secret(engine: AsyncEngine, name: str) -> bytes:
    """The secret `name` (32 bytes)."""
    t = server_secrets
    query = select(t.c.value).where(t.c.name == name)
    async with engine.connect() as conn:
        value = (await conn.execute(query)).scalar()
    if value is None:
        try:
            async with write_engine(engine).begin() as conn:
                await conn.execute(t.insert().values(name=name, value=secrets.token_hex(32)))
        except IntegrityError:
            pass  # another replica made it meanwhile: read theirs
        async with engine.connect() as conn:
            value = (await conn.execute(query)).scalar_one()
    return bytes.fromhex(value)
