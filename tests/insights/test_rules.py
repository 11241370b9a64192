"""The offline `rules` insights backend on meeting text as ASR writes it, English and Turkish."""

from __future__ import annotations

import pytest

from ingest.insights.base import FinalLine, Insight
from ingest.insights.rules import RulesInsights, classify, find_items, notes_of, overlap


def lines(*texts: str, speaker: str | None = "Speaker 1") -> list[FinalLine]:
    return [FinalLine(n, t, speaker=speaker) for n, t in enumerate(texts, 1)]


def kinds(*texts: str) -> list[tuple[str, str | None, str | None]]:
    return [(i.kind, i.owner, i.due) for i in find_items(lines(*texts))]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Ahmet will send the numbers by Friday.", ("action_item", "Ahmet", "friday")),
        ("ahmet will send the updated numbers by friday", ("action_item", "Ahmet", "friday")),
        ("I'll prepare the slides for the board meeting.", ("action_item", "Speaker 1", None)),
        ("We are going to ship the beta next month to ten customers.", ("action_item", None, None)),
        ("Can you review the contract draft by Monday?", ("action_item", None, "monday")),
        ("We decided to move the budget review to Thursday.", ("decision", None, None)),
        ("okay so we agreed that marketing gets the extra headcount", ("decision", None, None)),
        ("Let's go with the second vendor for the cloud contract.", ("decision", None, None)),
        (
            "Should we postpone the launch until the security audit is done?",
            ("question", None, None),
        ),
        ("What is our plan for the European customers?", ("question", None, None)),
        ("Bütçe toplantısını perşembeye almaya karar verdik.", ("decision", None, None)),
        ("tamam o zaman ikinci tedarikçiyle devam etmekte anlaştık", ("decision", None, None)),
        ("Ayşe raporu cuma gününe kadar gönderecek.", ("action_item", "Ayşe", "cuma")),
        ("sunumu yarına kadar hazırlayacağım ekibe de ileteceğim", ("action_item", None, "yarın")),
        ("Lansmanı güvenlik denetiminden sonraya ertelesek mi?", ("question", None, None)),
    ],
)
def test_items_are_found_with_owner_and_due(text: str, expected: tuple) -> None:
    assert kinds(text) == [expected]


@pytest.mark.parametrize(
    "text",
    [
        "Good morning everyone, how are you?",
        "How are you doing today?",
        "Nice weather today, isn't it?",
        "Can you hear me?",
        "It will rain tomorrow afternoon I think.",
        "The price will probably go up next quarter.",
        "yeah yeah okay",
        "Thank you everyone for joining the meeting today.",
        "Günaydın, nasılsınız?",
        "Sesim geliyor mu?",
        "hava bugün çok güzel",
        "yarın yağmur yağacak gibi",
        "I think so.",
    ],
)
def test_small_talk_and_forecasts_give_nothing(text: str) -> None:
    assert find_items(lines(text)) == []


def test_the_real_speech_fixture_reading_gives_no_item() -> None:
    """A novel read aloud (the LibriVox fixture's transcript) holds no meeting items."""
    import json
    from pathlib import Path

    manifest = json.loads((Path(__file__).parents[1] / "fixtures" / "fixtures.json").read_text())
    entry = next(f for f in manifest["files"] if f["file"].startswith("librivox"))
    sentences = [s["text"] for s in entry["sentences"]]
    assert find_items(lines(*sentences)) == []


def test_near_duplicates_of_recent_items_are_dropped() -> None:
    recent = [Insight("action_item", "Ahmet will send the numbers by Friday", (3,), "Ahmet")]
    window = lines(
        "ahmet will send the numbers by friday okay",
        "Zeynep will book the venue for the offsite by Monday.",
        "so Zeynep will book the venue for the offsite by monday right",
    )
    found = find_items(window, recent)
    assert [(i.text, i.segment_nos) for i in found] == [
        ("Zeynep will book the venue for the offsite by Monday.", (2,))
    ]
    assert overlap("a b c d", "x y z") == 0.0


def test_notes_have_the_shape_every_backend_gives() -> None:
    finals = lines(
        "Good morning everyone.",
        "The quarterly numbers came in below the forecast for the second time.",
        "We decided to cut the travel budget by twenty percent.",
        "Ahmet will send the revised forecast by Friday.",
        "Should we tell the board before the next meeting?",
    )
    notes = notes_of(finals)
    assert notes.backend == "rules"
    assert notes.summary.startswith("The quarterly numbers came in below the forecast")
    assert notes.decisions == ("We decided to cut the travel budget by twenty percent.",)
    assert [(a.owner, a.due) for a in notes.action_items] == [("Ahmet", "friday")]
    assert notes.questions == ("Should we tell the board before the next meeting?",)


async def test_the_backend_interface() -> None:
    backend = RulesInsights()
    tips = await backend.tips(
        lines("We decided to hire two more engineers this quarter."), [], "en"
    )
    assert [t.kind for t in tips] == ["decision"]
    assert (await backend.notes([], "en")).summary == ""
    await backend.aclose()
    assert classify(FinalLine(1, "")) is None


def test_each_sentence_of_a_final_is_judged_on_its_own() -> None:
    """Whisper gives several sentences per final: small talk in one must not hide the others."""
    line = FinalLine(
        7,
        "Good morning. We decided to hire two engineers. Mary will draft the plan by Monday.",
        speaker="Ayşe",
    )
    notes = notes_of([line])
    assert notes.decisions == ("We decided to hire two engineers.",)
    assert [(i.text, i.owner, i.due) for i in notes.action_items] == [
        ("Mary will draft the plan by Monday.", "Mary", "monday")
    ]
    assert "Good morning" not in notes.summary
    assert [item.segment_nos for item in find_items([line])] == [(7,), (7,)]
