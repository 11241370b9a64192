"""The meeting-gateway ASGI application, configuration, auth, routes and CLI."""
