"""Shared by the browser tests: Debian chromium through Playwright, a fresh page with the
token saved, the options form, a generation, and screenshots in test-artifacts/."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from api_support import TOKEN

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(
    os.environ.get(
        "TEXT2IMG_TEST_ARTIFACTS", Path(__file__).resolve().parents[2] / "test-artifacts"
    )
)
LAUNCH_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip
QUICK = {"n": "1", "size": "64x64", "steps": "2"}


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One Chromium per test module (each test opens its own context: own storage)."""
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
        try:
            yield b
        finally:
            b.close()


@contextmanager
def opened(browser: Any, url: str, *, token: str | None = TOKEN, width: int = 1280,
           height: int = 800) -> Iterator[Any]:  # fmt: skip
    """A fresh page (own storage) with the token already saved; no page errors allowed."""
    context = browser.new_context(viewport={"width": width, "height": height}, locale="ja-JP",
                                  accept_downloads=True)  # fmt: skip
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(url)
    if token:
        page.evaluate("t => localStorage.setItem('text2img.token', t)", token)
        page.reload()
        page.wait_for_selector("#model-badge:not([hidden])")
    try:
        yield page
    finally:
        context.close()
    assert errors == []


def settings(page: Any, **values: str) -> None:
    if not page.locator("#options").evaluate("d => d.open"):
        page.click("#options summary")
    for key, value in values.items():
        if page.locator(f"#{key}").evaluate("e => e.tagName") == "SELECT":
            page.select_option(f"#{key}", value)
        else:
            page.fill(f"#{key}", value)


def generate(page: Any, timeout_s: float = 120) -> None:
    page.click("#generate-btn")
    page.wait_for_selector("#progress-text:text('完了')", timeout=timeout_s * 1000)


def shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path), full_page=True)
    print(f"screenshot: {path}")


SETTLED_TOP_JS = """async (selector) => {
  // wait until scrollY has not moved for 20 frames and 300 ms (a smooth scroll has ended)
  let last = NaN, still = 0, since = performance.now();
  const deadline = performance.now() + 15000;
  while ((still < 20 || performance.now() - since < 300) && performance.now() < deadline) {
    await new Promise((resolve) => requestAnimationFrame(resolve));
    if (scrollY === last) still++; else { last = scrollY; still = 0; since = performance.now(); }
  }
  return document.querySelector(selector).getBoundingClientRect().top;
}"""


def settled_top(page: Any, selector: str) -> float:
    """Where `selector`'s top sits in the viewport once the page has stopped scrolling.

    Checking the position while a smooth scroll runs only passes if a poll happens to land
    mid-animation; the place the scroll ends is what the user sees."""
    return float(page.evaluate(SETTLED_TOP_JS, selector))
