"""An agent's newest report as submitted, kept compressed."""

from __future__ import annotations

import zlib
from dataclasses import dataclass


@dataclass(slots=True)
class LatestReport:
    """An agent's newest report as submitted, kept compressed (1,000 agents × 50 KB would be 50 MB raw).

    ``compressed`` is a gzip or zlib stream: the probe's own gzip body when it sent one (no work), else
    the JSON compressed here.
    """

    received_at: float
    compressed: bytes

    @classmethod
    def from_raw(cls, received_at: float, raw: bytes, gzipped: bytes | None = None) -> LatestReport:
        return cls(received_at, gzipped if gzipped is not None else zlib.compress(raw, 1))

    def raw(self) -> bytes:
        return zlib.decompress(self.compressed, wbits=47)  # 32 + 15: gzip or zlib header, detected
