"""Close codes as metric labels (pure)."""

from __future__ import annotations

from gateway.close_codes import close_label


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
