"""Fan-out: bus, rooms, per-connection delivery, limits and heartbeats. Never imports `gateway`."""
