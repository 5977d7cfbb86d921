"""The built-in page at fleet scale, in Debian's Chromium: how long the host view of N hosts takes to appear,
and the longest main-thread task while diffs arrive (re-reports at a paced rate).

    python -m benchmarks.bench_page --hosts 1000 --seconds 30

Targets (issue 14): the host view of 1,000 hosts renders in under 2 s; no main-thread task over 200 ms while
applying diffs. The browser's Long Tasks API reports every task over 50 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from benchmarks.bench_ingest import build_bodies
from benchmarks.common import Server, machine

LONG_TASKS = """
window.__longTasks = [];
new PerformanceObserver((list) => {
  for (const entry of list.getEntries()) window.__longTasks.push({start: entry.startTime, ms: entry.duration});
}).observe({type: "longtask", buffered: true});
"""
HEADERS = {"Content-Type": "application/json", "Content-Encoding": "gzip"}  # build_bodies gives gzip bodies
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]  # fmt: skip


async def post_all(url: str, bodies: list[bytes], rate: float | None = None, connections: int = 8) -> int:
    """Post every body (paced at ``rate`` per second when given); retried on 429/503. Returns how many."""
    queue: asyncio.Queue = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)
    start = time.monotonic()
    sent = 0

    async def sender(client: httpx.AsyncClient) -> None:
        nonlocal sent
        while not queue.empty():
            body = queue.get_nowait()
            if rate:
                await asyncio.sleep(max(0.0, start + sent / rate - time.monotonic()))
            while True:
                response = await client.post("/api/v1/reports", content=body, headers=HEADERS)
                if response.status_code == 202:
                    break
                if response.status_code not in (429, 503):
                    raise RuntimeError(f"report refused: {response.status_code} {response.text[:200]}")
                await asyncio.sleep(float(response.headers.get("retry-after", "0.2")))
            sent += 1

    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        await asyncio.gather(*(sender(client) for _ in range(connections)))
    return sent


def measure(hosts: int, seconds: float, rate: float) -> dict:
    from playwright.sync_api import sync_playwright

    rounds = 1 + max(1, round(seconds * rate / hosts))
    bodies = build_bodies(hosts, rounds)
    with Server(persist=False) as server:
        asyncio.run(post_all(server.url, bodies[:hosts]))
        server.wait_drained(600)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=shutil.which("chromium"), args=ARGS)
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            page.add_init_script(LONG_TASKS)
            page.goto(server.url + "/?level=host&external=group")
            page.wait_for_function("() => window.orchestratorPage && window.orchestratorPage.firstRenderAt !== null",
                                   timeout=120_000)  # fmt: skip
            first = page.evaluate("window.orchestratorPage")
            loaded_tasks = page.evaluate("window.__longTasks.length")
            t0 = time.monotonic()
            # Playwright's sync API owns this thread's event loop: the load comes from a thread of its own.
            with ThreadPoolExecutor(1) as pool:
                pool.submit(asyncio.run, post_all(server.url, bodies[hosts:], rate=rate, connections=4)).result()
            page.wait_for_timeout(2000)
            elapsed = time.monotonic() - t0
            stats = page.evaluate("window.orchestratorPage")
            tasks = page.evaluate(f"window.__longTasks.slice({loaded_tasks})")
            browser.close()
    return {
        "hosts": hosts,
        "nodes": first["nodes"],
        "first_render_s": first["firstRenderAt"] / 1000,
        "render_ms": first["lastRenderMs"],
        "diff_seconds": elapsed,
        "max_update_ms": stats["maxUpdateMs"],
        "long_tasks": len(tasks),
        "max_task_ms": max((t["ms"] for t in tasks), default=0.0),
    }


def table(results: list[dict]) -> str:
    lines = [
        "| hosts | nodes drawn (host view, grouped) | page load to first drawing | drawing | diffs applied for | "
        "slowest diff applied | main-thread tasks > 50 ms while diffs arrive | longest |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['hosts']} | {r['nodes']} | {r['first_render_s']:.2f} s | {r['render_ms']:.0f} ms | "
            f"{r['diff_seconds']:.0f} s | {r['max_update_ms']:.0f} ms | {r['long_tasks']} | {r['max_task_ms']:.0f} ms |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--seconds", type=float, default=30.0, help="how long re-reports (diffs) keep arriving")
    parser.add_argument("--rate", type=float, default=40.0, help="re-reports per second while measuring diffs")
    args = parser.parse_args()
    results = [measure(hosts, args.seconds, args.rate) for hosts in args.hosts]
    print(f"Machine: {machine()}\n")
    print(table(results))


if __name__ == "__main__":
    main()
