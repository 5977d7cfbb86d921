"""The plugin guide's hook reference is generated from the hook specs: it must be current and complete."""

import inspect

from orchestrator.pipeline.plugin_docs import DOC, hook_functions, updated


def test_every_hook_has_a_docstring_documenting_each_parameter():
    for fn in hook_functions():
        doc = inspect.getdoc(fn) or ""
        assert doc, f"{fn.__name__} has no docstring"
        for param in inspect.signature(fn).parameters:
            assert f":param {param}:" in doc, f"{fn.__name__} does not document {param}"


def test_plugin_guide_reference_matches_the_hook_specs():
    text = DOC.read_text()
    assert text == updated(text), "docs/plugins.md is stale: run python -m orchestrator.pipeline.plugin_docs"
    for fn in hook_functions():
        assert f"### `{fn.__name__}(" in text
