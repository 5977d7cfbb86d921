"""The state side stands alone: it runs without the request side or the plugin host loaded."""

from __future__ import annotations

import subprocess
import sys


def test_the_state_package_imports_neither_sanic_nor_pluggy():
    modules = ", ".join(
        f"orchestrator.state.{name}" for name in ("agents", "archive", "cleanup", "latest", "persistence", "timeseries")
    )
    code = f"import sys, orchestrator.state, {modules}; print(sorted({{m.split('.')[0] for m in sys.modules}}))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "'sanic'" not in loaded and "'pluggy'" not in loaded
