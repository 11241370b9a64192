"""Audio ingest: wire protocol core, audio conversion, speech engines and segment assembly.

Never imports `gateway`; the pure pieces (protocol, audio, segments) do no I/O.
"""
