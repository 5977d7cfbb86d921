"""Loop watch: which code holds the server's event loop, and whether it was running or waiting for a core.

Put this directory first on the server's ``PYTHONPATH`` and name an output file; Python imports this module
at start-up (``sitecustomize``), and it starts a thread with the server's loop-lag sampler. The thread puts a
callback on the loop every 20 ms; when one waits longer than ``LOOPWATCH_MS`` (default 150) it writes a JSON
line: the lag, the main thread's CPU time over it (``/proc``: a lag far above its CPU time is the machine's,
the server was waiting for a core), and the main thread's stacks sampled every 10 ms meanwhile (a long call
in C shows as one sample, taken once it let go of the interpreter lock)::

    PYTHONPATH=benchmarks/loopwatch LOOPWATCH_OUT=/tmp/lags.jsonl \\
        python -m benchmarks.bench_fleet --sizes 1000 --reads-only
    python -m benchmarks.loopwatch.summary /tmp/lags.jsonl

Benchmarks start their servers with this process's environment, so the variables reach them. Without
``LOOPWATCH_OUT`` this module does nothing.
"""

from __future__ import annotations

import os

if os.environ.get("LOOPWATCH_OUT"):
    import asyncio
    import collections
    import json
    import sys
    import threading
    import time
    import traceback

    import orchestrator.runtime.metrics as _metrics

    _sampler = _metrics.watch_loop_lag

    def _cpu_seconds(native_id: int) -> float:
        with open(f"/proc/self/task/{native_id}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def _watch(loop: asyncio.AbstractEventLoop, main: threading.Thread) -> None:
        limit = float(os.environ.get("LOOPWATCH_MS", "150")) / 1000
        with open(os.environ["LOOPWATCH_OUT"], "a") as out:
            while True:
                answered, started, cpu = threading.Event(), time.perf_counter(), _cpu_seconds(main.native_id)
                loop.call_soon_threadsafe(answered.set)
                stacks: collections.Counter = collections.Counter()
                while not answered.wait(0.01):
                    frame = sys._current_frames().get(main.ident)
                    if frame is not None:
                        stack = traceback.extract_stack(frame)[-14:]
                        stacks[";".join(f"{os.path.basename(f.filename)}:{f.name}:{f.lineno}" for f in stack)] += 1
                lag = time.perf_counter() - started
                if lag > limit:
                    record = {
                        "at": time.time(),
                        "lag_ms": round(lag * 1000),
                        "main_cpu_ms": round((_cpu_seconds(main.native_id) - cpu) * 1000),
                        "stacks": stacks.most_common(6),
                    }
                    out.write(json.dumps(record) + "\n")
                    out.flush()
                time.sleep(0.02)

    async def _watched_sampler(metrics, interval: float = 0.1) -> None:
        loop, main = asyncio.get_running_loop(), threading.main_thread()
        threading.Thread(target=_watch, args=(loop, main), name="loopwatch", daemon=True).start()
        await _sampler(metrics, interval)

    _metrics.watch_loop_lag = _watched_sampler
