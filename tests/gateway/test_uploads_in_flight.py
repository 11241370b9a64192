"""`UploadsInFlight`: uploads being received, per tenant, and the bytes they hold."""

from __future__ import annotations

from gateway.http.uploads_in_flight import UploadsInFlight


def test_an_upload_holds_its_place_and_bytes_until_its_end() -> None:
    uploads = UploadsInFlight()
    first, second = uploads.begin("acme"), uploads.begin("acme")
    other = uploads.begin("globex")
    assert (uploads.count("acme"), uploads.count("globex")) == (2, 1)
    first.add(1000)
    second.add(500)
    other.add(7)
    assert uploads.bytes == 1507
    first.end()
    first.end()  # idempotent
    assert uploads.count("acme") == 1 and uploads.bytes == 507
    second.end()
    other.end()
    assert uploads.bytes == 0 and uploads.count("acme") == uploads.count("globex") == 0


def test_bytes_refused_as_they_came_are_taken_back_too() -> None:
    # A chunk over RECORDING_MAX_BYTES is counted, then refused 413: its end takes back all of
    # it (counted after the check, and taken back whole, the total drifted below zero).
    uploads = UploadsInFlight()
    upload = uploads.begin("acme")
    upload.add(65536)
    upload.end()
    assert uploads.bytes == 0
