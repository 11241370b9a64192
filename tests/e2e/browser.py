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
# should be added once and then edited in place (`texts`: its text after each edit).
WATCH_PARTIALS_JS = """() => {
  const box = document.getElementById("partials");
  const log = { added: {}, texts: {}, maxPerSource: 0, maxSources: 0 };
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
    log.maxSources = Math.max(log.maxSources, Object.keys(perSource).length);
  }).observe(box, { childList: true, subtree: true, characterData: true });
}"""


def collect_errors(page: Page) -> list[str]:
    """Console errors and uncaught exceptions (a CSP violation is a console error)."""
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    return errors


# WCAG 2 contrast of every visible text against the first opaque background behind it; the
# texts below 4.5:1.
LOW_CONTRAST_JS = """() => {
  const rgb = (c) => c.match(/[\\d.]+/g).map(Number);
  const lum = ([r, g, b]) => {
    const f = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; };
    return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b);
  };
  const background = (node) => {
    for (let n = node; n; n = n.parentElement) {
      const c = rgb(getComputedStyle(n).backgroundColor);
      if (c.length < 4 || c[3] > 0) return c;
    }
    return [255, 255, 255];
  };
  const low = [];
  for (const node of document.querySelectorAll("body *")) {
    const own = [...node.childNodes].some((c) => c.nodeType === 3 && c.textContent.trim());
    if (!own || !node.checkVisibility() || node.closest(".visually-hidden")) continue;
    const a = lum(rgb(getComputedStyle(node).color)), b = lum(background(node));
    const ratio = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
    if (ratio < 4.5) low.push(`${node.textContent.trim().slice(0, 40)}: ${ratio.toFixed(2)}`);
  }
  return low;
}"""

# Once a partial shows below a final: how the partial looks, read in the same instant.
PARTIAL_BELOW_FINAL_JS = (
    """() => {
  const partial = document.querySelector("#partials .partial");
  if (!partial || !document.querySelector("#finals li.final")) return false;
  return {
    fontStyle: getComputedStyle(partial.querySelector(".text")).fontStyle,
    text: partial.querySelector(".body").innerText,
    inLiveRegion: Boolean(partial.closest('[aria-live="polite"]')),
    lowContrast: ("""
    + LOW_CONTRAST_JS
    + """)(),
  };
}"""
)
