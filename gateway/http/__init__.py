"""REST endpoints, the viewer page and the HTTP edge limits."""
