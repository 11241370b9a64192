"""Close codes as metric labels (pure)."""

from __future__ import annotations

from gateway.close_codes import close_label, peer_code


def test_close_labels_keep_known_codes_and_fold_the_peers_own() -> None:
    assert [close_label(c) for c in (1000, 1006, 1007, 4401, 4408, 4503)] == [
        "1000",
        "1006",
        "1007",
        "4401",
        "4408",
        "4503",
    ]
    assert {close_label(c) for c in (3000, 3999, 4321, 4998, 1016, 2000)} == {"other"}


def test_a_peers_own_close_is_counted_by_its_code_only_when_it_says_how_it_left() -> None:
    """A viewer closing with 4503 was counted as the gateway refusing it for a dependency (any
    viewer token could set off that alert, or hide one)."""
    assert [close_label(peer_code(c)) for c in (1000, 1001, 1005, 1006)] == [
        *("1000", "1001", "1005", "1006")
    ]
    # The WebSocket layer's own closes reach the application as the peer's: a frame too large
    # was counted "other" while the viewer saw 1009.
    assert [close_label(peer_code(c)) for c in (1002, 1007, 1009, 1012)] == [
        *("1002", "1007", "1009", "1012")
    ]
    assert {close_label(peer_code(c)) for c in (4503, 4401, 1011, 1008, 4000)} == {"other"}
    assert close_label(peer_code(None)) == "1000"  # a disconnect without a code
