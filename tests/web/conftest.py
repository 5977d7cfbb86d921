"""The page in a real browser: Debian's Chromium driven by Playwright, against a real running server.

Chromium is installed here when it is missing and this is a machine that can (root with apt-get, as CI is);
elsewhere these tests are skipped with the reason shown.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    # The machine's network is closed: Chromium's own background connections would only be refused.
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _install_chromium() -> str:
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return "Chromium is not installed and this user cannot install it (apt-get install chromium as root)"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "chromium"]):
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            return f"installing Chromium failed: {' '.join(argv)}: {done.stderr.strip()[-300:]}"
    return ""


# Per module, not per session: Playwright's sync API runs an event loop in this thread while it is started,
# and an asyncio test after it in the same run could not start its own.
@pytest.fixture(scope="module")
def browser():
    path = _chromium()
    if path is None:
        problem = _install_chromium()
        path = _chromium()
        if path is None:
            pytest.skip(problem or "Chromium could not be found after installing it")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=path, args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()


class PageWatch:
    """What a page did that a user would call broken: console errors, script errors, requests elsewhere."""

    def __init__(self, origin: str, allow: tuple[str, ...]) -> None:
        self.origin = origin
        self.allow = allow
        self.problems: list[str] = []

    def attach(self, page) -> None:
        page.on("console", self._console)
        page.on("pageerror", lambda e: self.problems.append(f"script error: {e}"))
        page.on("request", self._request)

    def _console(self, message) -> None:
        if message.type == "error" and not any(allowed in message.text for allowed in self.allow):
            self.problems.append(f"console error: {message.text}")

    def _request(self, request) -> None:
        url = request.url
        ws_origin = self.origin.replace("http://", "ws://", 1)
        if not (url.startswith(self.origin) or url.startswith(ws_origin) or url.startswith("data:")):
            self.problems.append(f"request outside the server: {url}")


@pytest.fixture
def open_page(browser):
    """``open_page(server, path="/", allow=())`` → a Playwright page on the server. At the end of the test the
    page must have logged no console or script error (but those containing a string in ``allow``: what the
    browser itself logs for a server the test took down on purpose) and requested nothing outside the server."""
    contexts, watches = [], []

    def open_(server, path: str = "/", allow: tuple[str, ...] = ()):
        context = browser.new_context(viewport={"width": 1400, "height": 900})
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(30_000)
        watch = PageWatch(server.url, allow)
        watch.attach(page)
        watches.append(watch)
        page.goto(server.url + path)
        return page

    yield open_
    for context in contexts:
        context.close()
    problems = [p for w in watches for p in w.problems]
    assert not problems, problems
