"""Whether an `auto` stream on an English-only Whisper model sounds like another language.

An English-only model cannot detect a language: on other speech it writes invented English at a
low average token log-probability (espeak-ng German, Turkish, Spanish, French: -0.7 to -1.7,
mostly below -1.2; English, read or synthetic, cut mid-word or not: -0.08 to -0.31). One doubtful
utterance proves little, so the verdict comes once, when at least two utterances of a second or
more were below NOT_ENGLISH_LOGPROB and they are at least half of those heard. Pure: no I/O.
"""

from __future__ import annotations

NOT_ENGLISH_LOGPROB = -1.0
MIN_SPEECH_MS = 1000
MIN_SUSPECT = 2

# The notice an engine event carries when the verdict comes (published as a `status` event).
NOT_ENGLISH = "language.unsupported"


class EnglishCheck:
    def __init__(self) -> None:
        self.heard = 0
        self.suspect = 0
        self.reported = False

    def observe(self, avg_logprob: float, speech_ms: int) -> bool:
        """Count one decoded utterance; True exactly once, when the stream looks non-English."""
        if speech_ms < MIN_SPEECH_MS:
            return False
        self.heard += 1
        if avg_logprob < NOT_ENGLISH_LOGPROB:
            self.suspect += 1
        if self.reported or self.suspect < MIN_SUSPECT or 2 * self.suspect < self.heard:
            return False
        self.reported = True
        return True
