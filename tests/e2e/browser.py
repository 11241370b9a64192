"""Debian's headless Chromium driven by Playwright (never `playwright install`: no network)."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from playwright.async_api import Browser, Page, async_playwright

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield browser
        finally:
            await browser.close()


async def connection_state(page: Page) -> str:
    return await page.locator("#connection").get_attribute("data-state") or ""


async def wait_for_state(page: Page, state: str, timeout_s: float = 60) -> None:
    await page.locator(f'#connection[data-state="{state}"]').wait_for(timeout=timeout_s * 1000)


async def final_numbers(page: Page) -> list[int]:
    """The segment numbers of the finals on the page, in page order."""
    return await page.eval_on_selector_all(
        "#finals li.final", "lines => lines.map(l => Number(l.dataset.segmentNo))"
    )


async def wait_for_finals(page: Page, count: int, timeout_s: float = 90) -> None:
    await page.wait_for_function(
        "n => document.querySelectorAll('#finals li.final').length >= n",
        arg=count,
        timeout=timeout_s * 1000,
    )


# Records, from inside the page, how partial lines come and go: each key (source:segment_no)
# should be added once and then edited in place.
WATCH_PARTIALS_JS = """() => {
  const box = document.getElementById("partials");
  const log = { added: {}, edits: {}, texts: {}, maxPerSource: 0 };
  window.partialLog = log;
  new MutationObserver((records) => {
    for (const record of records) {
      for (const node of record.addedNodes) {
        if (node.nodeType === 1 && node.dataset.key) {
          log.added[node.dataset.key] = (log.added[node.dataset.key] || 0) + 1;
        }
      }
      const target = record.target.nodeType === 1 ? record.target : record.target.parentElement;
      const line = target && target !== box ? target.closest(".partial") : null;
      if (line && line.isConnected) {
        const key = line.dataset.key;
        log.edits[key] = (log.edits[key] || 0) + 1;
        const text = line.querySelector(".text").textContent;
        (log.texts[key] = log.texts[key] || []).push(text);
      }
    }
    const perSource = {};
    for (const line of box.querySelectorAll(".partial")) {
      const source = line.dataset.key.split(":")[0];
      perSource[source] = (perSource[source] || 0) + 1;
    }
    log.maxPerSource = Math.max(log.maxPerSource, ...Object.values(perSource), 0);
  }).observe(box, { childList: true, subtree: true, characterData: true });
}"""
