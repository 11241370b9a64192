"""Outbound webhooks: Standard Webhooks signing, the address policy, and the delivery worker
that drains the durable outbox in `store.webhooks`."""
