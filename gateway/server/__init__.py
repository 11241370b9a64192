"""The server glue: everything that knows uvicorn's or Starlette's internals, one concept per
module (as uvicorn keeps one file per protocol backend). Nothing outside this package may use a
private name of either (tests/test_server_seam.py checks); the versions are pinned in
pyproject.toml and checked by tests/gateway/test_server_pins.py.

- `websocket`: `DirectFramesProtocol`, uvicorn's sans-I/O WebSocket protocol with direct frame
  writes for viewers (plain TCP only) and a lean idle connection.
- `parking`: parked connections, which wait for their next event with no task (the interface;
  `websocket` implements it).
- `heartbeat`: `HeartbeatWebSocketProtocol`, the one the CLI serves with: counts keepalive drops.
- `edge`: `EdgeH11Protocol`, uvicorn's h11 protocol with request-head limits and a head timeout.
- `forwarded`: `ForwardedHeaders`, uvicorn's proxy-header logic applied by the app.
- `server`: `GatewayServer`, whose `handle_exit` drains the apps before stopping.
- `workers`: `serve --workers N`, each worker a `GatewayServer`.
- `starlette_internals`: the Starlette private names the viewer fast path uses.

Private names relied on, and why:

uvicorn (`>=0.35,<0.55`)
- `uvicorn.protocols.websockets.websockets_sansio_impl.WebSocketsSansIOProtocol` (websocket):
  subclassed. Attributes `transport`, `writable` (cleared by `pause_writing`), `close_sent`,
  `handshake_complete`, `conn`, `request`, `response`, `scope`, `queue`, `read_paused` (with
  `send_receive_event_to_app` overridden: reading pauses at `READ_HIGH_WATER` queued messages,
  not after each, saving two epoll_ctl calls per ingest frame); the attributes in
  `websocket.UVICORN_ATTRIBUTES` re-declared as slots (1.5 KiB less per idle viewer); methods
  `connection_made`, `connection_lost`, `pause_writing`, `resume_writing`, `handle_connect`,
  `send`, `data_received` and `keepalive_timeout` overridden; `run_asgi` replaced by the same
  steps (`logger`, `send_500_response`, `close_timer`, `handshake_complete`) except that an
  application that parked its connection leaves it open; a resumed handler's task is added to
  `tasks` with `on_task_complete`, as uvicorn adds its own, so shutdown waits for it. Every
  `queue.put_nowait` of uvicorn (messages, disconnects) resumes a parked connection. Direct
  writes need the transport and to know when it buffers; slots and replacing `queue`/`writable`
  with lean primitives keep an idle viewer small; that uvicorn writes its own frames whole from
  the loop's thread makes direct frames interleave safely.
- `uvicorn.protocols.utils.ClientDisconnected` (websocket): what a write to a gone peer raises,
  as uvicorn's own `send` does.
- `uvicorn.protocols.http.h11_impl.H11Protocol` (edge): subclassed; `conn` (replaced with a
  larger `max_incomplete_event_size`), `cycle.response_complete`, `loop`, `transport`,
  `flow.read_paused`, `data_received`, `on_response_complete`, `connection_made`,
  `connection_lost`, `pause_writing`, `resume_writing`, `_unset_keepalive_if_required`,
  `timeout_keep_alive`, `timeout_keep_alive_task` and `timeout_keep_alive_handler` (an idle
  kept-alive connection waits HTTP_KEEPALIVE_S, a started head HTTP_HEAD_TIMEOUT_S), and
  `RequestResponseCycle.transport` (replaced per request: its close waits for a body still
  coming), so request heads are checked before h11 parses them, stalled bodies and responses
  are timed, and an answer that closes the connection reaches a client still sending.
- `uvicorn.middleware.proxy_headers.ProxyHeadersMiddleware` (forwarded): driven one coroutine
  step with an app that returns at once, so its trust logic applies without a middleware frame
  per connection.
- `uvicorn.Server.handle_exit` (server): overridden; uvicorn installs it for SIGINT/SIGTERM in
  `capture_signals`. `should_exit`, `force_exit`, `started`.
- `uvicorn.Config.bind_socket`, `Config.configure_logging`, `uvicorn.config.STARTUP_FAILURE`
  (workers): what uvicorn's own supervisor does, with our server in each worker.

websockets (under uvicorn's protocol; websocket)
- `ServerProtocol.available_extensions` (emptied on viewer paths: no permessage-deflate),
  `parser`, `reader.buffer`, `reader.eof`, `Protocol.parse` and the parser generators'
  `gi_yieldfrom`/`gi_code`: the frame parser is parked between frames (about 450 bytes per idle
  viewer) and restarted on the next data.

Starlette (`>=0.47,<1.11`; starlette_internals)
- `starlette._exception_handler.wrap_app_handling_exceptions` and the scope key
  `starlette.exception_handlers`: an error escaping a viewer endpoint called outside Starlette's
  middleware reaches the app's exception handlers as it would through them.
- `WebSocket._receive`, `WebSocket._send`: the ASGI callables under the WebSocket (the viewer's
  receive loop skips Starlette's per-message frame; the exception wrapper needs them).
- `HTTPConnection._query_params`, `HTTPConnection._url`, `HTTPConnection._headers`: lazy caches
  of the query string (which carries the token) and headers, dropped once a viewer is
  authorized.
"""
