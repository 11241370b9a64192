"""A viewer in real headless Chromium watches a recording's progress bar and transcript fill in."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from tests.e2e.browser import chromium, collect_errors, final_numbers, wait_for_state
from tests.e2e.harness import Gateway, KeyPair
from tests.e2e.test_recordings import DEADLINE_S, upload
from tests.files.media import encode, speech

# Every value the job's progress bar takes, recorded in the page as it changes.
WATCH_PROGRESS_JS = """
() => {
  window.__progress = [];
  const seen = () => {
    const bar = document.querySelector('#recordings .recording progress');
    if (bar && window.__progress.at(-1) !== bar.value) window.__progress.push(bar.value);
  };
  new MutationObserver(seen).observe(document.body, {subtree: true, childList: true,
    attributes: true, characterData: true});
  setInterval(seen, 50);
}
"""


@pytest.mark.timeout(DEADLINE_S * 2)
async def test_viewer_shows_a_progress_bar_and_the_finals_of_a_recording(
    start_gateway: Callable[..., Gateway], keypair: KeyPair, meeting: str, tmp_path: Path
) -> None:
    gw = start_gateway(RECORDINGS_DIR=str(tmp_path / "rec"))
    viewer = keypair.token(roles=["viewer"])
    path = encode(np.concatenate([speech()] * 2), tmp_path / "two.flac", "flac")  # 3+ chunks
    async with chromium() as browser:
        page = await browser.new_page(viewport={"width": 960, "height": 600})
        errors = collect_errors(page)
        await page.goto(f"{gw.http}/viewer?meeting={meeting}#token={viewer}")
        await wait_for_state(page, "live")
        await page.evaluate(WATCH_PROGRESS_JS)
        response = await asyncio.to_thread(
            upload, gw, keypair.token(roles=["ingest"]), meeting, path
        )
        assert response.status_code == 202, response.text
        await page.locator('#recordings .recording[data-status="succeeded"]').wait_for(
            timeout=DEADLINE_S * 1000
        )
        progress = await page.evaluate("window.__progress")
        job = await asyncio.to_thread(gw.get, f"/api/v1/recordings/{response.json()['id']}", viewer)
        finals = job.json()["finals"]
        await page.wait_for_function(
            "n => document.querySelectorAll('#finals li.final').length >= n",
            arg=finals,
            timeout=60_000,
        )
        text = await page.locator("#recordings .recording-text").text_content()
        assert progress == sorted(progress) and progress[-1] == 1, progress
        assert any(0 < v < 1 for v in progress), progress  # watched it fill, not just the end
        numbers = await final_numbers(page)
        assert finals > 0 and numbers == list(range(1, finals + 1))
        assert text is not None and "succeeded" in text and "100%" in text
        assert errors == []
