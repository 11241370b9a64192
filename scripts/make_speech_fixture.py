"""Build tests/fixtures/librivox_austen_16k_mono.wav: real human read speech with a transcript.

Source: five consecutive LibriVox utterances of "Sense and Sensibility" (chapter 1), public
domain, as shipped in the pocketsphinx source distribution (test/data/librivox, BSD-2-Clause
package). Get them with the ordinary client and point this script at the unpacked sdist:

    pip download --no-deps --no-binary :all: --no-build-isolation pocketsphinx==5.1.1
    tar xzf pocketsphinx-5.1.1.tar.gz
    python scripts/make_speech_fixture.py pocketsphinx-5.1.1

The utterances are joined with `GAP_S` of quiet room tone (seeded dither at about -56 dBFS),
so a stream has real pauses between sentences; fixtures.json records where each one lies.
"""

from __future__ import annotations

import json
import sys
import wave
from pathlib import Path

import numpy as np

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures"
NAME = "librivox_austen_16k_mono.wav"
UTTERANCES = ["0870", "0880", "0890", "0920", "0930"]
RATE = 16000
GAP_S = 1.0
LEAD_S = 0.5


def main(sdist: Path) -> None:
    data = sdist / "test" / "data" / "librivox"
    rng = np.random.default_rng(7)
    pieces: list[np.ndarray] = []
    sentences = []
    position = 0

    def room_tone(seconds: float) -> np.ndarray:
        return np.round(rng.normal(0, 50, int(seconds * RATE))).astype("<i2")

    pieces.append(room_tone(LEAD_S))
    position += len(pieces[-1])
    for index, utterance in enumerate(UTTERANCES):
        stem = data / f"sense_and_sensibility_01_austen_64kb-{utterance}"
        with wave.open(str(stem.with_suffix(".wav"))) as reader:
            assert (reader.getframerate(), reader.getnchannels()) == (RATE, 1)
            audio = np.frombuffer(reader.readframes(reader.getnframes()), dtype="<i2")
        text = " ".join(stem.with_suffix(".txt").read_text().split())
        sentences.append(
            {
                "text": text,
                "start_ms": position * 1000 // RATE,
                "end_ms": (position + len(audio)) * 1000 // RATE,
            }
        )
        pieces.append(audio)
        position += len(audio)
        gap = room_tone(GAP_S if index < len(UTTERANCES) - 1 else LEAD_S)
        pieces.append(gap)
        position += len(gap)
    pcm = np.concatenate(pieces).astype("<i2").tobytes()
    with wave.open(str(FIXTURES / NAME), "wb") as writer:
        writer.setnchannels(1)
        writer.setsampwidth(2)
        writer.setframerate(RATE)
        writer.writeframes(pcm)
    entry = {
        "file": NAME,
        "sample_rate": RATE,
        "channels": 1,
        "duration_ms": position * 1000 // RATE,
        "voice": "LibriVox reader (human), public domain; see LICENSES.md",
        "sentences": sentences,
    }
    print(json.dumps(entry, indent=2))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
