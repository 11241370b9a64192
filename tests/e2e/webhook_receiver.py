"""A webhook receiver for the e2e tests: a real HTTP server that records what it is sent."""

from __future__ import annotations

import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks.webhooks import Webhook

from tests.e2e.harness import free_port


class Receiver:
    """An HTTP server that records what it is sent and answers `status`; start and stop it at
    will on one port (a receiver outage)."""

    def __init__(self, port: int | None = None, tls: tuple[str, str] | None = None) -> None:
        self.port = port or free_port()
        self.tls = tls  # (key file, certificate file): serve HTTPS
        self.status = 204
        self.received: list[tuple[dict[str, str], str]] = []
        # While clear, each answer waits for it (a slow receiver); set by default.
        self.answering = threading.Event()
        self.answering.set()
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self.port}/hooks/meetings?source=mg"

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"])).decode()
                receiver.received.append(({k.lower(): v for k, v in self.headers.items()}, body))
                receiver.answering.wait(60)
                self.send_response(receiver.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        if self.tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(certfile=self.tls[1], keyfile=self.tls[0])
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def events(self, secret: str) -> list[dict[str, Any]]:
        """Every body received, each verified with the reference verifier (raises if not)."""
        return [Webhook(secret).verify(body, headers) for headers, body in list(self.received)]
