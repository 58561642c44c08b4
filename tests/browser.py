"""Open a report in headless Chromium (Debian's ``chromium``) and collect what a person would see."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@dataclass
class RenderedPage:
    """What the browser saw: console errors, figures and their drawn sizes, headings, text."""

    console_errors: list[str]
    figure_sizes: list[tuple[float, float]]
    broken_images: int
    headings: list[str]
    text: str


def chromium_path() -> str:
    """The Chromium binary, or skip the test with the reason."""
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.skip("Chromium is not installed (Debian: apt-get install chromium); .ci/run installs it")
    return path


def render(html_file: Path, screenshot: Path | None = None) -> RenderedPage:
    """Load ``html_file`` offline in headless Chromium and inspect it."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is in the test extra")
    executable = chromium_path()
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        errors: list[str] = []
        page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.route("http*://**", lambda route: route.abort())  # a report must need no network
        page.goto(html_file.resolve().as_uri(), wait_until="load")
        sizes = page.eval_on_selector_all(
            "figure svg, figure img",
            "els => els.map(e => { const r = e.getBoundingClientRect(); return [r.width, r.height]; })",
        )
        broken = page.eval_on_selector_all(
            "img", "els => els.filter(e => !e.complete || e.naturalWidth === 0).length"
        )
        headings = page.eval_on_selector_all("h1, h2, h3", "els => els.map(e => e.textContent.trim())")
        text = page.inner_text("body")
        if screenshot is not None:
            page.screenshot(path=str(screenshot), full_page=True)
        browser.close()
    return RenderedPage(errors, [tuple(s) for s in sizes], broken, headings, text)
