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

    def begin(self, tenant_id: str) -> InFlightUpload:
        """Count an upload from now on: end the one returned whatever happens to it."""
        self._per_tenant[tenant_id] = self.count(tenant_id) + 1
        return InFlightUpload(self, tenant_id)

    def _ended(self, tenant_id: str, received: int) -> None:
        self.bytes -= received
        left = self.count(tenant_id) - 1
        if left > 0:
            self._per_tenant[tenant_id] = left
        else:
            self._per_tenant.pop(tenant_id, None)


class InFlightUpload:
    """One upload's place among them, and the bytes it added (taken back at its end)."""

    __slots__ = ("_ended", "received", "tenant_id", "uploads")

    def __init__(self, uploads: UploadsInFlight, tenant_id: str) -> None:
        self.uploads, self.tenant_id = uploads, tenant_id
        self.received = 0
        self._ended = False

    def add(self, received: int) -> None:
        self.received += received
        self.uploads.bytes += received

    def end(self) -> None:
        """Its job holds the file now, or the file is gone. Idempotent."""
        if not self._ended:
            self._ended = True
            self.uploads._ended(self.tenant_id, self.received)
