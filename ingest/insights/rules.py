"""`rules`: the offline insights backend. Deterministic phrase rules for English and Turkish.

It finds decisions ("we decided to ...", "karar verdik"), action items with an owner and a due
date where they are said ("Ahmet will send the numbers by Friday", "cuma gününe kadar"), and
questions put to the meeting ("should we ...?", "... yapalım mı?"). Precision over recall: a line
becomes an item only when it carries one of these phrases and enough words of its own, so small
talk ("how are you", "nice weather") gives nothing. Pure: no I/O, no model.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

from ingest.insights.base import ActionItem, FinalLine, Insight, InsightKind, MeetingNotes

# Near-duplicates: items sharing this much of their words with a recent one are dropped.
DUPLICATE_OVERLAP = 0.65
MIN_CONTENT_WORDS = 3  # an item needs this many words besides the trigger phrase
SUMMARY_SENTENCES = 3

_DAYS_EN = (
    r"(?:monday|tuesday|wednesday|thursday|friday|saturday|sunday|tomorrow|tonight|today"
    r"|next week|end of (?:the )?(?:day|week|month)|eod|eow)"
)
_DAYS_TR = (
    r"(?:pazartesi|salı|çarşamba|perşembe|cuma|cumartesi|pazar|yarın|bugün|akşam"
    r"|hafta sonu|haftaya|ay sonu)"
)

_DECISION = [
    re.compile(p, re.IGNORECASE)
    for p in (
        r"\bwe(?:'ve| have)? (?:decided|agreed)\b",
        r"\b(?:it's|it is|that's|that is) decided\b",
        r"\blet'?s go with\b",
        r"\bwe(?:'ll| will) go with\b",
        r"\b(?:the )?decision is\b",
        r"\bagreed[,:]? (?:we|then|so)\b",
        r"\bkarar (?:verdik|verildi|aldık|alındı)\b",
        r"\banlaştık\b",
        r"\bşuna karar\b",
    )
]

# "Ahmet will send ...", "I'll prepare ...", "we are going to ship ..." (case-sensitive owner).
_COMMITMENT = re.compile(
    r"\b(?P<owner>[Ii]|[Ww]e|[A-Za-zÇĞİÖŞÜçğıöşü][\wçğıöşü]*)"
    r"(?: will|'ll| is going to| are going to| am going to) "
    r"(?!be\b|have\b|see\b|talk\b|think\b|probably\b|maybe\b|need\b)[a-z]+"
)
_ASK = re.compile(r"\b(?:can|could) you (?:please )?[a-z]+\b", re.IGNORECASE)
_ACTION_WORDS = re.compile(r"\baction items?\b|\bto-?do\b", re.IGNORECASE)
# Turkish future tense: a commitment when a deadline is said with it.
_TR_FUTURE = re.compile(
    r"\b[\wçğıöşü]+(?:eceğim|acağım|eceğiz|acağız|ecek|acak)(?:sın|sin|ler|lar)?\b"
)
# Subjects of "will" that make a forecast, not a commitment.
_NOT_OWNERS = frozenset(
    "it that this there which what who he she they you weather price prices market it's".split()
)

_DUE_EN = re.compile(rf"\b(?:by|before|until|on) (?P<due>(?:next |this )?{_DAYS_EN})\b", re.I)
_DUE_TR = re.compile(rf"\b(?P<due>{_DAYS_TR})(?:[\wçğıöşü]*)? (?:gününe |günü )?kadar\b", re.I)

_QUESTION = [
    re.compile(p, re.IGNORECASE)
    for p in (
        r"^(?:so )?(?:should|shall|could|can|do|does|did|are|is|will|would)"
        r" (?:we|our|the|this|it)\b.*\?$",
        r"^(?:so )?(?:what|when|who|which|how|where|why)"
        r" (?:is|are|do|does|should|will|would|can)\b.*\?$",
        r"\b(?:mı|mi|mu|mü|mıyız|miyiz|muyuz|müyüz)\s*\?$",
        r"^(?:ne zaman|kim|hangi|neden|nasıl|ne)\b.*\?$",
    )
]
# Polite talk that looks like a question or a plan but is no meeting content.
_SMALL_TALK = re.compile(
    r"\b(?:how are you|how's it going|how was your|nice weather|good (?:morning|afternoon|evening)"
    r"|can you hear me|is my (?:audio|screen|mic)|you're on mute|nasılsın|nasılsınız|"
    r"iyi misin|sesim geliyor mu|beni duyabiliyor musunuz|see you|talk to you|görüşürüz)\b",
    re.IGNORECASE,
)
_STOPWORDS = frozenset(
    "a an the and or but so to of in on at by for with we i you it is are be will 'll this that "
    "ve ile bir bu şu o da de ki mi mı için çok ama".split()
)
_WORD = re.compile(r"[\wçğıöşüÇĞİÖŞÜ']+")


def _words(text: str) -> list[str]:
    return [w.casefold() for w in _WORD.findall(text)]


def _content_words(text: str) -> set[str]:
    return {w for w in _words(text) if w not in _STOPWORDS}


def overlap(a: str, b: str) -> float:
    """Share of the shorter item's content words found in the other (0..1)."""
    wa, wb = _content_words(a), _content_words(b)
    if not wa or not wb:
        return 0.0
    return len(wa & wb) / min(len(wa), len(wb))


def _clean(text: str) -> str:
    return " ".join(text.split()).strip()


def _due(text: str) -> str | None:
    for pattern in (_DUE_EN, _DUE_TR):
        match = pattern.search(text)
        if match:
            return match.group("due").casefold()
    return None


@dataclass(frozen=True, slots=True)
class _Found:
    kind: InsightKind
    owner: str | None = None
    due: str | None = None


def classify(line: FinalLine) -> _Found | None:
    """What one final says, if it is an item."""
    text = _clean(line.text)
    if not text or _SMALL_TALK.search(text) or len(_content_words(text)) < MIN_CONTENT_WORDS:
        return None
    if any(p.search(text) for p in _DECISION):
        return _Found("decision", due=_due(text))
    due = _due(text)
    match = _COMMITMENT.search(text)
    if match is not None:
        owner: str | None = match.group("owner")
        assert owner is not None
        if owner.casefold() == "i":
            return _Found("action_item", owner=line.speaker, due=due)
        if owner.casefold() == "we":
            return _Found("action_item", due=due)
        if owner.casefold() not in _NOT_OWNERS and (owner[0].isupper() or due is not None):
            return _Found("action_item", owner=owner[0].upper() + owner[1:], due=due)
    if (_ASK.search(text) and due is not None) or _ACTION_WORDS.search(text):
        return _Found("action_item", due=due)
    if _TR_FUTURE.search(text) and due is not None:
        owner = text.split()[0] if text[0].isupper() else None
        return _Found("action_item", owner=owner, due=due)
    if text.endswith("?") and any(p.search(text) for p in _QUESTION):
        return _Found("question")
    return None


class RulesInsights:
    """The `InsightsBackend` of phrase rules (see the module docstring)."""

    name = "rules"

    async def tips(
        self, window: Sequence[FinalLine], recent: Sequence[Insight], language: str
    ) -> list[Insight]:
        return find_items(window, recent)

    async def notes(self, finals: Sequence[FinalLine], language: str) -> MeetingNotes:
        # In a thread: a long meeting's notes are seconds of CPU, which would stall the loop.
        return await asyncio.to_thread(notes_of, list(finals))

    async def aclose(self) -> None:
        return None


# A sentence ends at . ! ? or an ellipsis followed by a space: one final often holds several
# ("Good morning. We decided to hire two engineers."), each judged on its own.
_SENTENCE_END = re.compile(r"(?<=[.!?\u2026])\s+")


def sentences(lines: Sequence[FinalLine]) -> Iterator[FinalLine]:
    """Each final's sentences, as finals of their own (same number, speaker and time)."""
    for line in lines:
        parts = [part for part in _SENTENCE_END.split(line.text.strip()) if part]
        if len(parts) == 1:
            yield line
        else:
            yield from (replace(line, text=part) for part in parts)


def find_items(window: Sequence[FinalLine], recent: Sequence[Insight] = ()) -> list[Insight]:
    """Items in `window`, in order, none a near-duplicate of `recent` or of each other."""
    items: list[Insight] = []
    for line in sentences(window):
        found = classify(line)
        if found is None:
            continue
        text = _clean(line.text)
        if any(overlap(text, seen.text) >= DUPLICATE_OVERLAP for seen in (*recent, *items)):
            continue
        items.append(Insight(found.kind, text, (line.segment_no,), found.owner, found.due))
    return items


def notes_of(finals: Sequence[FinalLine]) -> MeetingNotes:
    """Notes over a whole transcript: an extractive summary and the items."""
    items = find_items(finals)
    informative = [
        _clean(line.text)
        for line in sentences(finals)
        if not _SMALL_TALK.search(line.text) and len(_content_words(line.text)) >= 5
    ]
    summary = " ".join(informative[:SUMMARY_SENTENCES])
    return MeetingNotes(
        summary=summary,
        decisions=tuple(i.text for i in items if i.kind == "decision"),
        action_items=tuple(
            ActionItem(i.text, i.owner, i.due) for i in items if i.kind == "action_item"
        ),
        questions=tuple(i.text for i in items if i.kind == "question"),
        backend=RulesInsights.name,
    )
