"""Open slmlab's HTML pages in headless Chromium and report what a reader would meet.

Playwright's sync API drives Debian's Chromium (``apt-get install chromium``; Playwright's own
browser download is not used). For each page: console errors, uncaught page errors, every request
whose URL leaves file:/data:/about:/blob: or the loopback host (aborted and recorded), broken
images, and every plot (an ``svg``) with its size and its data marks. A full-page screenshot of
each page is kept in ``test-artifacts/screenshots/<name>.png`` at the repository root.

Without Chromium or the playwright package the tests skip with the reason; with ``CI=true`` they
fail instead, because CI must have both (``.ci/run`` installs Chromium).
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytest

REPO = Path(__file__).resolve().parents[1]
SCREENSHOTS = REPO / "test-artifacts" / "screenshots"
CHROMIUM = Path("/usr/bin/chromium")
# Headless on a closed network: without the networking flags Chromium keeps trying to reach Google.
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
LOCAL_SCHEMES = ("file", "data", "about", "blob")
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
VIEWPORT = {"width": 1100, "height": 800}
TIMEOUT_MS = 20_000

# Per svg: its label, rendered size, how many marks carry data (a line with points, a band, a dot,
# a path, a bar with a tooltip; axis lines, grid lines and legend swatches are not data), the x-axis
# labels (middle-anchored texts on the lowest baseline) and any text that sticks out of the svg.
PLOTS_JS = """
els => els.map(svg => {
  const box = svg.getBoundingClientRect();
  const drawn = m => { const b = m.getBBox(); return b.width > 0 || b.height > 0; };
  const lines = [...svg.querySelectorAll('polyline, polygon')].filter(m => m.points.numberOfItems > 0 && drawn(m));
  const dots = [...svg.querySelectorAll('circle')].filter(m => m.r.baseVal.value > 0);
  const paths = [...svg.querySelectorAll('path')].filter(m => (m.getAttribute('d') || '').trim() && drawn(m));
  const bars = [...svg.querySelectorAll('rect')].filter(m => m.querySelector('title') && drawn(m));
  const texts = [...svg.querySelectorAll(':scope > text')];
  const bottom = Math.max(...texts.map(t => t.getBBox().y));
  const xticks = texts.filter(t => t.getAttribute('text-anchor') === 'middle' && t.getBBox().y === bottom)
                      .map(t => [t.getBBox().x + t.getBBox().width / 2, t.textContent]);
  const clipped = [...svg.querySelectorAll('text')].filter(t => {
    const r = t.getBoundingClientRect();
    return r.left < box.left - 1 || r.right > box.right + 1 || r.top < box.top - 1 || r.bottom > box.bottom + 1;
  }).map(t => t.textContent);
  return {label: svg.getAttribute('aria-label') || '', width: box.width, height: box.height,
          lines: lines.length, dots: dots.length, paths: paths.length, bars: bars.length, xticks: xticks,
          clipped: clipped};
})
"""
BROKEN_IMAGES_JS = "els => els.filter(i => i.complete && i.naturalWidth === 0).map(i => i.src)"


def missing_reason() -> str | None:
    """Why the browser tests cannot run here, or None when they can."""
    if importlib.util.find_spec("playwright") is None:
        return "playwright not installed: pip install -e '.[test]'"
    if not CHROMIUM.is_file():
        return "chromium not installed: apt-get install chromium"
    return None


def require_browser() -> None:
    """Skip with the reason, or fail under CI=true (CI must have the browser)."""
    reason = missing_reason()
    if reason is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session", name="browser")
def chromium_browser():
    """One headless Chromium for the whole session."""
    require_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS, headless=True)
        yield chromium
        chromium.close()


def is_local(url: str) -> bool:
    """file:, data:, about:, blob:, or http(s) to the loopback host."""
    parts = urlsplit(url)
    if parts.scheme in LOCAL_SCHEMES:
        return True
    return parts.scheme in ("http", "https", "ws") and parts.hostname in LOOPBACK_HOSTS


@dataclass
class Plot:
    label: str
    width: float
    height: float
    lines: int
    dots: int
    paths: int
    bars: int
    xticks: list[tuple[float, str]]  # x-axis labels: (centre in px, text)
    clipped: list[str]  # texts drawn partly outside the svg (cut off on screen)

    @property
    def marks(self) -> int:
        return self.lines + self.dots + self.paths + self.bars

    def misplaced_ticks(self, tolerance_px: float = 1.5) -> list[str]:
        """x labels that do not sit where their value belongs on the scale set by the first and last label."""
        ticks = [(px, float(text)) for px, text in self.xticks if _is_number(text)]
        if len(ticks) < 3 or ticks[-1][1] == ticks[0][1]:
            return [] if len({v for _, v in ticks}) == len(ticks) else [text for _, text in self.xticks]
        (p0, v0), (p1, v1) = ticks[0], ticks[-1]
        return [f"{v:g} at {px:.0f}px (expected {p0 + (v - v0) / (v1 - v0) * (p1 - p0):.0f}px)"
                for px, v in ticks[1:-1] if abs(p0 + (v - v0) / (v1 - v0) * (p1 - p0) - px) > tolerance_px]


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


@dataclass
class PageReport:
    """What one page did in the browser."""

    url: str
    screenshot: Path | None = None
    status: int | None = None
    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    outside_requests: list[str] = field(default_factory=list)
    failed_requests: list[str] = field(default_factory=list)
    broken_images: list[str] = field(default_factory=list)
    plots: list[Plot] = field(default_factory=list)

    # Playwright callbacks (bound methods, so no closure carries the lists).
    def on_console(self, message) -> None:
        if message.type == "error":
            self.console_errors.append(message.text)

    def on_page_error(self, error) -> None:
        self.page_errors.append(str(error))

    def on_request(self, request) -> None:
        if not is_local(request.url) and request.url not in self.outside_requests:
            self.outside_requests.append(request.url)

    def on_request_failed(self, request) -> None:
        if is_local(request.url):
            self.failed_requests.append(f"{request.url}: {request.failure}")

    def on_route(self, route) -> None:
        if is_local(route.request.url):
            route.continue_()
        else:
            self.on_request(route.request)
            route.abort("blockedbyclient")

    @property
    def labels(self) -> list[str]:
        return [p.label for p in self.plots]

    def problems(self) -> list[str]:
        found = [f"console error: {e}" for e in self.console_errors]
        found += [f"page error: {e}" for e in self.page_errors]
        found += [f"outside request: {u}" for u in self.outside_requests]
        found += [f"failed request: {u}" for u in self.failed_requests]
        found += [f"broken image: {u}" for u in self.broken_images]
        found += [f"empty plot {p.label!r}: {p.width:.0f}x{p.height:.0f} px, {p.marks} data marks"
                  for p in self.plots if p.width <= 0 or p.height <= 0 or p.marks == 0]
        found += [f"plot {p.label!r}: x labels off the scale: {', '.join(bad)}" for p in self.plots
                  if (bad := p.misplaced_ticks())]
        found += [f"plot {p.label!r}: text cut off at its edge: {p.clipped}" for p in self.plots if p.clipped]
        return found


def open_page(browser, url: str, name: str) -> PageReport:
    """Load ``url``, measure it, screenshot it to ``test-artifacts/screenshots/<name>.png``."""
    report = PageReport(url)
    context = browser.new_context(viewport=VIEWPORT)
    context.set_default_timeout(TIMEOUT_MS)
    try:
        page = context.new_page()
        page.on("console", report.on_console)
        page.on("pageerror", report.on_page_error)
        page.on("request", report.on_request)
        page.on("requestfailed", report.on_request_failed)
        page.route("**/*", report.on_route)
        response = page.goto(url, wait_until="load")
        report.status = response.status if response is not None else None
        page.wait_for_load_state("networkidle")
        plots = page.eval_on_selector_all("svg", PLOTS_JS)
        report.plots = [Plot(**{**p, "xticks": [tuple(t) for t in p["xticks"]]}) for p in plots]
        report.broken_images = page.eval_on_selector_all("img", BROKEN_IMAGES_JS)
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        report.screenshot = SCREENSHOTS / f"{name}.png"
        # A bare SVG document has no body to scroll, and Chromium's full-page capture hangs on it.
        page.screenshot(path=str(report.screenshot), full_page=page.evaluate("document.body !== null"))
    finally:
        context.close()
    return report


def check_page(browser, path_or_url: str | Path, name: str, plots: list[str]) -> PageReport:
    """Open a page and assert it is clean and shows exactly ``plots`` (svg labels, in order), each drawn."""
    url = path_or_url.resolve().as_uri() if isinstance(path_or_url, Path) else path_or_url
    report = open_page(browser, url, name)
    problems = report.problems()
    assert not problems, f"{url}:\n  " + "\n  ".join(problems)
    assert report.labels == plots, f"{url}: plots {report.labels}, expected {plots}"
    return report
