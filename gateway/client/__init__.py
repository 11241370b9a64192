"""Client side of the gateway's wire contract, shared by the dev scripts and end-to-end tests.

- `urls`, `tokens`: where the endpoints are and a dev token to reach them.
- `audio`: WAV files to PCM, fitted to the handshake's limits; flite test speech.
- `pacing`: frames under the server's frame-rate limit.
- `connection`: connect with a token, decode messages, read until close.
- `ingest`: one ingest stream; `reconnect`: an ingest that survives the gateway going away.
- `subscribe`: follow a meeting; `resume`: the same, resuming with `since=` across reconnects.
- `terminal`: render a meeting; `cli`: what scripts/ share.

The token goes in an `Authorization: Bearer` header unless `token_in_query=True`, so it does not
end up in access logs.
"""
