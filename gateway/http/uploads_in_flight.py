"""Uploads this process is receiving: how many per tenant, and the bytes they hold on disk.

The recordings' disk budget counts the files of unended jobs (in the store) and these, which
have no job yet: counted only once their job existed, many uploads at once each passed the
budget alone and together filled the volume."""

from __future__ import annotations


class UploadsInFlight:
    def __init__(self) -> None:
        self._per_tenant: dict[str, int] = {}
        self.bytes = 0  # received so far by every upload in progress

    def count(self, tenant_id: str) -> int:
        return self._per_tenant.get(tenant_id, 0)

    def begin(self, tenant_id: str) -> None:
        self._per_tenant[tenant_id] = self.count(tenant_id) + 1

    def end(self, tenant_id: str, received: int) -> None:
        """The upload is over (its job holds the file now, or the file is gone)."""
        self.bytes -= received
        left = self.count(tenant_id) - 1
        if left > 0:
            self._per_tenant[tenant_id] = left
        else:
            self._per_tenant.pop(tenant_id, None)
