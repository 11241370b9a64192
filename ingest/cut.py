"""What a final keeps of speech a stream was cut in (pure): no word that ran into the cut.

A drain (gateway/drain.py) ends an ingest stream wherever its audio is, often mid-word. A final the
engine's flush makes of that audio holds half a word, and the client, which re-sends the audio no
final covers (docs/protocol.md, graceful drain), sends the other half to its next stream: one word
heard as two wrong ones, on both sides of the restart. So a final reaching into the cut's last
`CUT_GUARD_MS` loses the words that end there and ends where its last kept word ends; the client
then re-sends those words whole. A final without word timings (the two-pass engine's) is kept
only if its speech ended before that margin.
"""

from __future__ import annotations

import dataclasses

from ingest.engines.base import EngineEvent

# Speech ending this close to the cut may have been cut (a word's last sounds, an engine's word
# timing off by a frame or two): it is left for the client to re-send.
CUT_GUARD_MS = 250


def before_cut(event: EngineEvent, cut_ms: int, guard_ms: int = CUT_GUARD_MS) -> EngineEvent:
    """`event` as kept when its stream was cut at `cut_ms` (audio time of the stream): a final
    loses the words ending within `guard_ms` of the cut (all of them: an empty final, which
    withdraws the viewers' partial); partials and finals clear of the cut are kept as they are."""
    if not event.is_final or not event.text:
        return event
    limit = cut_ms - guard_ms
    if not event.words:
        if event.end_ms <= limit:
            return event
        return dataclasses.replace(event, text="")
    kept = [word for word in event.words if word.end_ms <= limit]
    if len(kept) == len(event.words):
        return event
    if not kept:
        return dataclasses.replace(event, text="", words=())
    tokens = event.text.split()
    # The transcript's own tokens keep its punctuation and casing where they match the words.
    same = len(tokens) == len(event.words)
    text = " ".join(tokens[: len(kept)] if same else (word.text for word in kept))
    return dataclasses.replace(event, text=text, end_ms=kept[-1].end_ms, words=tuple(kept))
