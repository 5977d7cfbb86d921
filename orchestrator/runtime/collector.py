"""GC policy: the cyclic collector kept off long-lived state, and paused around bursts of small objects.

The server's heap is mostly long-lived (the topology, time series) and its hot paths allocate many small,
acyclic objects. A full collection over a fleet-sized heap stalls the loop for a second or more, and
collector passes during a publish or a restore would double their cost for nothing.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator
from contextlib import contextmanager

GC_YOUNG_THRESHOLD = 20_000
GC_FREEZE_SECONDS = 1.0


class Paused:
    """The state of a :func:`paused` block; :meth:`lifted` re-enables the collector around a yield."""

    __slots__ = ("collecting",)

    def __init__(self, collecting: bool) -> None:
        self.collecting = collecting

    @contextmanager
    def lifted(self) -> Iterator[None]:
        """The collector as it was outside the block, for the duration of the ``with`` (a generator's
        ``yield``: the requests served meanwhile allocate as usual, and left uncollected they became one
        150-400 ms young collection at the end of a 1,000-host publish)."""
        if self.collecting:
            gc.enable()
        try:
            yield
        finally:
            gc.disable()


@contextmanager
def paused() -> Iterator[Paused]:
    """No cyclic collection inside the block; the collector is left as it was found (off stays off)."""
    state = Paused(gc.isenabled())
    gc.disable()
    try:
        yield state
    finally:
        if state.collecting:
            gc.enable()


@contextmanager
def restoring(freeze: bool) -> Iterator[None]:
    """Around the restore at start-up: no cyclic collection meanwhile, and with ``freeze``
    (``server.tune_gc``) what it restored taken out of the collector's scans before the collector is back
    on. Left in the young generation, the millions of restored objects were scanned by the first young
    collection after the restore and again by the full one of :func:`tune_for_long_lived_heap`: ~3 s at
    1,000 hosts before the server answered. Garbage made before is collected first, while the heap is
    small, so it is not frozen with the state."""
    if freeze:
        gc.collect()
    with paused():
        yield
        if freeze:
            gc.freeze()


def tune_for_long_lived_heap() -> None:
    """At start-up, once everything loaded so far (modules, restored state) lives as long as the process:
    keep the collector off it, and collect the young generation less often — validating a report
    allocates thousands of short-lived objects, and each young collection is pure overhead for them."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, 20, 100)


async def freeze_long_lived() -> None:
    """Every second, take what has survived so far (the topology, time series: long-lived state) out of
    the cyclic collector's scans; otherwise a full collection over a fleet-sized heap stalls the loop for
    a second or more. Frozen objects are still freed by reference counting when dropped.

    Every second, not every ten: much of the heap lives one report interval (node bodies, contributions),
    and ten seconds of such survivors made each middle-generation collection a 150-400 ms stall at 1,000
    hosts (half-rate POST p99 250-420 ms; with 1 s, 23-25 ms). Only cyclic garbage that was alive at a
    freeze escapes collection; unfreezing and collecting after a 1,000-host run found none, after a 1.1 s
    stall, which is why there is no periodic full collection."""
    while True:
        await asyncio.sleep(GC_FREEZE_SECONDS)
        gc.freeze()
