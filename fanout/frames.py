"""Server-to-client WebSocket frames, encoded once per publish (RFC 6455, section 5.2).

Server frames are never masked, so one message's frame is the same bytes for every viewer: a 2 to
10 byte header and the payload. Only single-frame, uncompressed text messages are built here.
"""

from __future__ import annotations

_FIN_TEXT = 0x81  # FIN bit + opcode 1 (text); RSV1 clear: not compressed


def text_frame(payload: bytes) -> bytes:
    """One complete, unmasked, uncompressed text frame carrying `payload` (UTF-8)."""
    length = len(payload)
    if length < 126:
        header = bytes((_FIN_TEXT, length))
    elif length < 1 << 16:
        header = bytes((_FIN_TEXT, 126)) + length.to_bytes(2, "big")
    else:
        header = bytes((_FIN_TEXT, 127)) + length.to_bytes(8, "big")
    return header + payload
