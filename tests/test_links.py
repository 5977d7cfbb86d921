"""The README, the docs and the code point only at files inside the repository, and those files exist."""

from __future__ import annotations

import re

from tests.support import REPO

MARKDOWN_LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def repo_files(*patterns: str):
    for pattern in patterns:
        yield from (p for p in REPO.glob(pattern) if ".venv" not in p.parts and "egg-info" not in str(p))


def test_nothing_points_outside_the_repository():
    outside = [
        f"{path.relative_to(REPO)}:{number}"
        for path in repo_files("*.md", "docs/**/*.md", "orchestrator/**/*.py", "plugins/*.py", "pyproject.toml")
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if "../shared" in line or "/work/" in line
    ]
    assert not outside, f"paths outside the repository: {outside}"


def test_relative_links_in_the_readme_and_docs_exist():
    broken = [
        f"{path.relative_to(REPO)}: {target}"
        for path in repo_files("*.md", "docs/**/*.md", "deploy/**/*.md")
        for target in MARKDOWN_LINK.findall(path.read_text())
        if "://" not in target and not target.startswith("mailto:") and not (path.parent / target).exists()
    ]
    assert not broken, f"links to missing files: {broken}"
