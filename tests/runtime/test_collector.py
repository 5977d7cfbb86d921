"""GC policy around the restore at start-up: the collector paused, what was restored frozen out of its scans."""

from __future__ import annotations

import gc

import pytest

from orchestrator.runtime.collector import restoring


@pytest.fixture
def collecting():
    was = gc.isenabled()
    gc.enable()
    yield
    if not was:
        gc.disable()


def test_what_a_restore_builds_is_frozen_and_the_collector_is_back_on(collecting):
    frozen = gc.get_freeze_count()
    with restoring(freeze=True):
        assert not gc.isenabled()
        restored = [[index] for index in range(1000)]
    assert gc.isenabled()
    assert gc.get_freeze_count() >= frozen + len(restored)


def test_without_tuning_nothing_is_frozen(collecting):
    frozen = gc.get_freeze_count()
    with restoring(freeze=False):
        assert not gc.isenabled()
        restored = [[index] for index in range(1000)]
    assert gc.isenabled() and restored
    assert gc.get_freeze_count() == frozen


def test_a_failed_restore_still_turns_the_collector_back_on(collecting):
    with pytest.raises(RuntimeError), restoring(freeze=True):
        raise RuntimeError("unreadable")
    assert gc.isenabled()
