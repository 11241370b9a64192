"""How many of something each tenant has under way in this process, held to a limit.

Whole transcript exports take one each (an export of a long meeting is seconds of the event
loop's CPU: one tenant exporting many at once would slow every live meeting on the replica), and
so do viewer connections (one tenant must not hold every socket the process may open)."""

from __future__ import annotations


class TenantSlots:
    """Places per tenant: `take` one against a limit, `give_back` it once done."""

    def __init__(self) -> None:
        self._held: dict[str, int] = {}

    def held(self, tenant_id: str) -> int:
        return self._held.get(tenant_id, 0)

    def take(self, tenant_id: str, limit: int) -> bool:
        """One more for `tenant_id` if it holds fewer than `limit`; False: none taken."""
        held = self.held(tenant_id)
        if held >= limit:
            return False
        self._held[tenant_id] = held + 1
        return True

    def give_back(self, tenant_id: str) -> None:
        left = self.held(tenant_id) - 1
        if left > 0:
            self._held[tenant_id] = left
        else:
            self._held.pop(tenant_id, None)
