"""Issue 16's hostile clients and faults, replayed against a real server: each attack's figure next to the one
the issue measured before the fixes (at commit 992cc38).

    python -m benchmarks.bench_hostile                       # every attack against this checkout
    python -m benchmarks.bench_hostile --only methods --only sighup
    python -m benchmarks.bench_hostile --repo /path/to/checkout-of-992cc38   # the same attacks, the old server

Each attack starts its own ``orchestrator serve`` child on 127.0.0.1 (``benchmarks.common.Server``), is bounded
in size and time and stops by itself. ``--repo`` serves from another checkout (with its ``.venv`` when it has
one). ``--scale`` shrinks (or grows) the request counts for a quick run. The ``fulldisk`` attack mounts a small
tmpfs when run as root, else it uses ``storage.max_file_size`` (said in its output). Prints one markdown table
row per figure: attack, the issue's figure before the fix, the figure measured now, the bound that holds it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
from pathlib import Path

from benchmarks.common import REPO, machine
from benchmarks.hostile import ATTACKS, Options, Row, bounds, faults, memory, names, websocket

REGISTERED = (bounds, faults, memory, names, websocket)  # importing each module registers its attacks


def head_commit(repo: Path) -> str:
    done = subprocess.run(["git", "-C", str(repo), "log", "-1", "--format=%h %cI"], capture_output=True, text=True)
    return done.stdout.strip() or "?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", choices=sorted(ATTACKS), help="run this attack (repeatable)")
    parser.add_argument("--repo", type=Path, default=REPO, help="serve from this checkout (its .venv if it has one)")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply the request counts (0.1: a quick run)")
    parser.add_argument("--json", type=Path, help="also append the rows to this file, one JSON object a line")
    args = parser.parse_args()
    opts = Options(repo=args.repo.resolve(), scale=args.scale)
    print(f"# serving from {opts.repo} at {head_commit(opts.repo)}; {machine()}")
    print(f"# load average {os.getloadavg()[0]:.1f} at the start; logs in {opts.logs}\n")
    print("| attack | before (issue 16, at 992cc38) | measured | bound |\n|---|---|---|---|")
    in_order = sorted(ATTACKS, key=lambda name: int(f) if (f := ATTACKS[name][0]).isdigit() else 99)
    for name in args.only or in_order:
        finding, run = ATTACKS[name]
        started = time.monotonic()
        try:
            rows = run(opts)
        except Exception as exc:  # one attack that breaks is reported; the others still run
            rows = [Row(f"{name}: the attack failed", "", f"{type(exc).__name__}: {exc}"[:300])]
        for row in rows:
            print(f"| **{finding}** {row.attack} | {row.before} | {row.after} | {row.bound} |", flush=True)
            if args.json:
                with args.json.open("a") as out:
                    record = {"finding": finding, "attack": name, "commit": head_commit(opts.repo), **row.__dict__}
                    out.write(
                        json.dumps({**record, "load": os.getloadavg()[0], "seconds": time.monotonic() - started}) + "\n"
                    )


if __name__ == "__main__":
    main()
