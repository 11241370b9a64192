"""The WebSocket endpoints: thin sessions that do I/O and hand everything else on."""
