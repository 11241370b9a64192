"""Compatibility facade: the client now lives in `gateway.client` (one module per concern).

Kept so code written against `gateway.devclient` keeps working; new code imports the modules.
"""

from __future__ import annotations

from gateway.client.audio import DEFAULT_TEST_TEXT, conform_pcm, create_test_wav, load_wav_pcm
from gateway.client.cli import add_connection_args, positive_float, run_cli, token_from_args
from gateway.client.connection import GatewayError, Message, MessageHandler, decode_message, open_ws
from gateway.client.ingest import StreamSummary, stream_pcm
from gateway.client.pacing import (
    DEFAULT_FRAME_MS,
    DEFAULT_MAX_FPS,
    MAX_FRAME_BYTES,
    FramePlan,
    iter_frames,
    plan_frames,
    send_paced,
)
from gateway.client.subscribe import CloseInfo, subscribe
from gateway.client.terminal import TranscriptView, describe, format_ms, format_segment
from gateway.client.tokens import dev_token
from gateway.client.urls import ingest_url, subscribe_url, with_query

__all__ = [
    "DEFAULT_FRAME_MS",
    "DEFAULT_MAX_FPS",
    "DEFAULT_TEST_TEXT",
    "MAX_FRAME_BYTES",
    "CloseInfo",
    "FramePlan",
    "GatewayError",
    "Message",
    "MessageHandler",
    "StreamSummary",
    "TranscriptView",
    "add_connection_args",
    "conform_pcm",
    "create_test_wav",
    "decode_message",
    "describe",
    "dev_token",
    "format_ms",
    "format_segment",
    "ingest_url",
    "iter_frames",
    "load_wav_pcm",
    "open_ws",
    "plan_frames",
    "positive_float",
    "run_cli",
    "send_paced",
    "stream_pcm",
    "subscribe",
    "subscribe_url",
    "token_from_args",
    "with_query",
]
