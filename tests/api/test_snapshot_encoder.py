"""The encoder of whole views: at every seq the bytes of ``Topology.snapshot_json``, whatever came or went,
whether it followed each publication's changes, lost track of a view nobody read, or had many changes to
encode again; and a body taken at one seq stays that seq's while later ones are published."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

import orjson
import pytest

from orchestrator.api import snapshots
from orchestrator.api.snapshots import SnapshotEncoder
from orchestrator.contract.models import Report
from orchestrator.probe.fleet import Fleet
from orchestrator.topology import Topology
from tests.topology.support import merge_parsed

VIEWS = [(level, external) for level in ("process", "container", "host") for external in ("each", "group")]
HOSTS = 6
T0 = time.time()


@pytest.fixture(scope="module")
def fleet() -> Fleet:
    return Fleet(HOSTS, seed=11, processes=30, connections=60)


def _state() -> SimpleNamespace:
    return SimpleNamespace(topology=Topology(), topology_lock=asyncio.Lock())


def _report(fleet: Fleet, host: int, seconds: float) -> Report:
    return Report.model_validate_json(fleet.report_bytes(host, T0 + seconds))


def _expected(topology: Topology, level: str, external: str) -> bytes:
    return b'{"topology":' + topology.snapshot_json(level, None, external) + b"}"


async def _read(encoder: SnapshotEncoder, state, level: str, external: str) -> bytes:
    return (await encoder.encoded(state, level, external)).body()


def _versions(fleet: Fleet, state, order: list[int]):
    """Publish the fleet, then a few hosts re-reporting (new figures, processes and connections churned),
    then one host gone: each step yields once published."""
    topology = state.topology
    for host in range(HOSTS):
        merge_parsed(topology, _report(fleet, host, 0), order[0])
        order[0] += 1
    topology.publish(T0)
    yield "loaded"
    for round_ in range(1, 4):
        merge_parsed(topology, _report(fleet, round_ % HOSTS, 15 * round_), order[0])
        order[0] += 1
        topology.publish(T0 + 15 * round_)
        yield f"host {round_ % HOSTS} re-reported"
    topology.remove_agent(topology.agents()[0])
    topology.publish(T0 + 60)
    yield "an agent removed"


@pytest.mark.parametrize("in_one_go", [snapshots.IN_ONE_GO, 0], ids=["few-in-one-go", "all-in-slices"])
async def test_every_view_at_every_seq_is_the_bytes_of_snapshot_json(fleet, monkeypatch, in_one_go):
    monkeypatch.setattr(snapshots, "IN_ONE_GO", in_one_go)
    state, encoder, order = _state(), SnapshotEncoder(), [1]
    for step in _versions(fleet, state, order):
        for level, external in VIEWS:
            assert await _read(encoder, state, level, external) == _expected(state.topology, level, external), (
                step,
                level,
                external,
            )
        # A second reader of the same seq: the same bytes (shared).
        assert await _read(encoder, state, "host", "group") == _expected(state.topology, "host", "group")


async def test_tiny_blocks_split_and_emptied_give_the_same_bytes(fleet, monkeypatch):
    monkeypatch.setattr(snapshots, "BLOCK_ITEMS", 2)  # every few inserts split a block, removals empty some
    monkeypatch.setattr(snapshots, "CHUNK_BLOCKS", 3)
    monkeypatch.setattr(snapshots, "SORT_RUN", 7)  # the first encoding's sort in many runs
    state, encoder, order = _state(), SnapshotEncoder(), [1]
    for step in _versions(fleet, state, order):
        assert await _read(encoder, state, "process", "each") == _expected(state.topology, "process", "each"), step


async def test_a_view_not_read_for_a_while_is_still_exact_when_read_again(fleet):
    # Nobody reads the grouped container view for two publications: the engine stops maintaining it, its
    # changes are not followed, and its next read is encoded from the view built again.
    state, encoder, order = _state(), SnapshotEncoder(), [1]
    versions = _versions(fleet, state, order)
    next(versions)
    assert await _read(encoder, state, "container", "group") == _expected(state.topology, "container", "group")
    next(versions), next(versions)
    assert not state.topology.view_in_use("container", "group")
    assert await _read(encoder, state, "container", "group") == _expected(state.topology, "container", "group")
    next(versions)
    assert await _read(encoder, state, "container", "group") == _expected(state.topology, "container", "group")


async def test_a_body_taken_at_one_seq_stays_that_seqs_after_later_publications(fleet):
    state, encoder, order = _state(), SnapshotEncoder(), [1]
    versions = _versions(fleet, state, order)
    next(versions)
    taken = await encoder.encoded(state, "process")
    at_taking = _expected(state.topology, "process", "each")
    for _ in versions:
        assert (await _read(encoder, state, "process", "each")) == _expected(state.topology, "process", "each")
    assert taken.body() == at_taking  # a response still being sent sends the version it took
    assert orjson.loads(taken.body())["topology"]["seq"] == taken.seq < state.topology.seq


async def test_a_read_while_a_stepped_publish_is_applying_waits_for_it_and_gets_the_new_version(fleet):
    state, encoder, order = _state(), SnapshotEncoder(), [1]
    versions = _versions(fleet, state, order)
    next(versions)
    await _read(encoder, state, "host", "group")
    topology = state.topology
    for host in range(HOSTS):  # every host changed: a publish of several steps
        merge_parsed(topology, _report(fleet, host, 300), 1000 + host)

    async def publish() -> None:
        async with state.topology_lock:  # as the hub's tick does
            steps = topology.publish_steps(T0 + 300, slice_seconds=0.0)
            while True:
                try:
                    next(steps)
                except StopIteration:
                    return
                await asyncio.sleep(0)

    publishing = asyncio.get_running_loop().create_task(publish())
    while not topology.publishing:
        await asyncio.sleep(0)
    seq = topology.seq
    read = await _read(encoder, state, "host", "group")
    await publishing
    assert orjson.loads(read)["topology"]["seq"] == seq + 1
    assert read == _expected(topology, "host", "group")


async def test_an_encoder_given_another_topology_encodes_that_one(fleet):
    encoder, order = SnapshotEncoder(), [1]
    first = _state()
    for _ in _versions(fleet, first, order):
        pass
    assert await _read(encoder, first, "process", "each") == _expected(first.topology, "process", "each")
    second = _state()  # a replica restored from a snapshot: a new engine, numbered on its own
    versions = _versions(fleet, second, [1])
    next(versions)
    assert await _read(encoder, second, "process", "each") == _expected(second.topology, "process", "each")
