"""Makes docs/page.png, the README's picture of the built-in page: a server, a simulated fleet of 6 hosts
(three report rounds, so the charts have points), the host view in Debian's Chromium with one host selected.

    python docs/make_screenshot.py
"""

from __future__ import annotations

import asyncio
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.bench_ingest import build_bodies  # noqa: E402 - the repo root is on the path from here on
from benchmarks.bench_page import ARGS, post_all  # noqa: E402
from benchmarks.common import Server  # noqa: E402


def main() -> None:
    from playwright.sync_api import sync_playwright

    hosts = 6
    with Server(persist=False) as server:
        asyncio.run(post_all(server.url, build_bodies(hosts, 3), connections=2))
        server.wait_drained()
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=shutil.which("chromium"), args=ARGS)
            page = browser.new_page(viewport={"width": 1440, "height": 860})
            page.goto(server.url + "/?level=container&external=group")
            page.locator("#nodes .node", has_text="sim-host-2").first.click()
            page.locator("#details .chart polyline").first.wait_for()
            page.screenshot(path=str(REPO / "docs" / "page.png"))
            browser.close()
    print("wrote docs/page.png")


if __name__ == "__main__":
    main()
