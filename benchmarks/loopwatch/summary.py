"""Summarise a loop-watch file (see ``sitecustomize.py`` here): each lag, how much of it the server's main
thread spent on a core, and where it was.

    python -m benchmarks.loopwatch.summary /tmp/lags.jsonl
"""

from __future__ import annotations

import json
import sys

SKIP = ("runners.py", "startup.py", "serve.py", "cli.py", "__main__", "<frozen")


def main(path: str) -> None:
    with open(path) as lines:
        records = [json.loads(line) for line in lines]
    busy = [r for r in records if r["main_cpu_ms"] >= 0.5 * r["lag_ms"]]
    print(f"{len(records)} lags; {len(busy)} with the main thread on a core for at least half of it")
    for record in records:
        print(f"--- {record['lag_ms']} ms lag, main thread CPU {record['main_cpu_ms']} ms")
        for stack, count in record["stacks"][:2]:
            frames = ";".join(part for part in stack.split(";") if not part.startswith(SKIP))
            print(f"   {count} {frames[-300:]}")


if __name__ == "__main__":
    main(sys.argv[1])
