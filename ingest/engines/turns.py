"""Split a final into one final per speaker turn (diarizing engines label each word)."""

from __future__ import annotations

from ingest.engines.base import EngineEvent, Word


def speaker_turns(words: tuple[Word, ...]) -> list[tuple[Word, ...]]:
    """Consecutive runs of words by the same speaker."""
    turns: list[list[Word]] = []
    for word in words:
        if turns and turns[-1][-1].speaker == word.speaker:
            turns[-1].append(word)
        else:
            turns.append([word])
    return [tuple(turn) for turn in turns]


def split_by_speaker(event: EngineEvent) -> list[EngineEvent]:
    """A final whose words change speaker becomes one final per turn (the first turn starts, and
    the last ends, where the whole result did); anything else stays as it is, with the speaker
    set when all its words share one."""
    turns = speaker_turns(event.words)
    if len(turns) == 1 and event.speaker is None:
        return [
            EngineEvent(
                event.is_final, event.text, event.start_ms, event.end_ms, event.words,
                turns[0][0].speaker, event.confidence,
            )
        ]  # fmt: skip
    if not event.is_final or len(turns) <= 1:
        return [event]
    events = []
    for index, turn in enumerate(turns):
        confidences = [w.confidence for w in turn if w.confidence is not None]
        events.append(
            EngineEvent(
                is_final=True,
                text=" ".join(w.text for w in turn),
                start_ms=event.start_ms if index == 0 else turn[0].start_ms,
                end_ms=event.end_ms if index == len(turns) - 1 else turn[-1].end_ms,
                words=turn,
                speaker=turn[0].speaker,
                confidence=sum(confidences) / len(confidences) if confidences else None,
            )
        )
    return events
