"""Renders the hook reference of ``docs/plugins.md`` from the hook specs, so docs and hooks cannot drift.

``python -m orchestrator.pipeline.plugin_docs`` rewrites the reference in place; ``tests/test_docs.py`` fails when
it is out of date or when a hook has no documentation.
"""

from __future__ import annotations

import inspect
import sys
from pathlib import Path
from typing import Any

from orchestrator import hookspecs

START, END = "<!-- hooks:start -->", "<!-- hooks:end -->"
DOC = Path(__file__).resolve().parents[2] / "docs" / "plugins.md"


def hook_functions() -> list[Any]:
    return [fn for name, fn in vars(hookspecs).items() if inspect.isfunction(fn) and hasattr(fn, "orchestrator_spec")]


def render() -> str:
    parts = []
    for fn in hook_functions():
        opts = fn.orchestrator_spec
        flags = " (firstresult: stops at the first non-None result)" if opts.get("firstresult") else ""
        parts.append(f"### `{fn.__name__}{inspect.signature(fn)}`{flags}\n\n{inspect.cleandoc(fn.__doc__ or '')}\n")
    return "\n".join(parts)


def updated(text: str) -> str:
    head, _, rest = text.partition(START)
    _, _, tail = rest.partition(END)
    return f"{head}{START}\n{render()}{END}{tail}"


if __name__ == "__main__":
    DOC.write_text(updated(DOC.read_text()))
    sys.exit(0)
