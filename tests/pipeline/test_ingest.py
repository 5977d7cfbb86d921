"""Decoding and validation of report bodies: limits, gzip, error codes, field paths, unknown fields."""

from __future__ import annotations

import gzip
import ipaddress
import re
import time
from types import SimpleNamespace

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from orchestrator.contract.errors import ApiError
from orchestrator.contract.models import IP_PATTERN, Report, error_details
from orchestrator.contract.times import parse_rfc3339
from orchestrator.pipeline.decode import STEPPED_BYTES, decode_body, parse_report, parse_report_sliced
from orchestrator.pipeline.ingest import superseded
from orchestrator.probe.fleet import Fleet
from tests.support import post_report, report, wait_for

LIMIT = 1024 * 1024
GOOD = {"agent_id": "agent-1", "hostname": "host-1", "timestamp": "2025-10-13T00:00:00Z"}
NOW = 1_760_313_600.0


def parse(body: dict, sections=None, depth=32):
    return parse_report(orjson.dumps(body), sections or {}, depth)


def status_of(fn, *args):
    with pytest.raises(ApiError) as err:
        fn(*args)
    return err.value


def test_plain_json_body_passes_through():
    assert decode_body(b"{}", "application/json; charset=utf-8", None, LIMIT) == b"{}"


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded"])
def test_wrong_content_type_is_415(content_type):
    assert status_of(decode_body, b"{}", content_type, None, LIMIT).status == 415


def test_unknown_content_encoding_is_415():
    assert status_of(decode_body, b"{}", "application/json", "br", LIMIT).status == 415


def test_gzip_body_is_inflated():
    assert decode_body(gzip.compress(b'{"a":1}'), "application/json", "gzip", LIMIT) == b'{"a":1}'


def test_gzip_bomb_is_refused_without_inflating_it():
    bomb = gzip.compress(b" " * (50 * LIMIT))  # 50 MiB of spaces in ~50 KB
    err = status_of(decode_body, bomb, "application/json", "gzip", LIMIT)
    assert err.status == 413 and "decompressed" in err.message


def test_corrupt_or_truncated_gzip_is_400():
    assert status_of(decode_body, b"not gzip", "application/json", "gzip", LIMIT).status == 400
    assert status_of(decode_body, gzip.compress(b'{"a": 1}')[:-10], "application/json", "gzip", LIMIT).status == 400


def test_plain_body_over_limit_is_413():
    assert status_of(decode_body, b" " * (LIMIT + 1), "application/json", None, LIMIT).status == 413


def test_malformed_json_is_400():
    err = status_of(parse_report, b'{"agent_id": ', {}, 32)
    assert err.status == 400 and err.code == "malformed_json"


def test_every_bad_field_is_named_by_its_json_path():
    body = {
        **GOOD,
        "agent_id": "bad id!",
        "timestamp": "yesterday",
        "processes_info": {"processes": [{"pid": 1}, {"pid": -4}]},
        "network_info": {"connections": [{"local_port": 70000, "remote_ip": "10.0.0.999"}]},
    }
    err = status_of(parse, body)
    assert err.status == 422
    fields = {d["field"] for d in err.details}
    assert fields == {
        "agent_id",
        "timestamp",
        "processes_info.processes.1.pid",
        "network_info.connections.0.local_port",
        "network_info.connections.0.remote_ip",
    }


@pytest.mark.parametrize("stamp", ["2025-10-13", "1760313600", "2025-13-45T00:00:00Z", "2025-10-13T00:00:00"])
def test_timestamps_that_are_not_rfc3339_are_rejected(stamp):
    assert status_of(parse, {**GOOD, "timestamp": stamp}).status == 422


def test_rfc3339_with_fraction_and_offset_is_accepted():
    report = parse({**GOOD, "timestamp": "2025-10-13T02:00:00.123456789+02:00"})
    assert report.epoch == pytest.approx(1760313600.123456)


@pytest.mark.parametrize("missing", ["agent_id", "hostname", "timestamp"])
def test_required_fields(missing):
    body = dict(GOOD)
    del body[missing]
    err = status_of(parse, body)
    assert err.status == 422 and err.details[0]["field"] == missing


def test_unknown_fields_are_kept():
    report = parse({**GOOD, "probe_version": "2.1", "processes_info": {"processes": [{"pid": 1, "nice": 5}]}})
    assert report.model_extra["probe_version"] == "2.1"
    assert report.processes_info.processes[0].model_extra == {"nice": 5}


def test_deeply_nested_unknown_fields_are_refused():
    deep = {}
    node = deep
    for _ in range(40):
        node["x"] = {}
        node = node["x"]
    err = status_of(parse, {**GOOD, "extra": deep}, None, 16)
    assert err.status == 422 and "nests deeper" in err.message


async def test_sliced_parse_checks_every_unknown_value_and_names_the_first_bad_one():
    # Large unknown fields are checked a slice at a time (the loop is served between): still all of them,
    # in document order, with the path of the first bad value.
    many = [{"v": i, "list": [i, [i]]} for i in range(20_000)]
    bad = [*many, {"v": 1, "list": [2, ["INF", "BIG"]]}, {"v": "BIG"}]
    body = orjson.dumps({**GOOD, "extra": {"ok": many, "bad": bad}})
    body = body.replace(b'"INF"', b"1e999").replace(b'"BIG"', str(2**70).encode())  # not JSON orjson writes
    with pytest.raises(ApiError) as err:
        await parse_report_sliced(body, {}, 32)
    assert err.value.status == 422
    assert err.value.details == [
        {"field": "extra.bad.20000.list.1.0", "message": "must be a finite number within 64 bits"}
    ]
    report = await parse_report_sliced(orjson.dumps({**GOOD, "extra": many}), {}, 32)
    assert report.model_extra["extra"] == many
    deep: dict = {}
    node = deep
    for _ in range(40):
        node["x"] = {}
        node = node["x"]
    with pytest.raises(ApiError) as err:
        await parse_report_sliced(orjson.dumps({**GOOD, "extra": [many, deep]}), {}, 16)
    assert err.value.details[0]["field"] == "extra.1" + ".x" * 11  # the report's own level counts too


@pytest.fixture(scope="module")
def long_report() -> dict:
    # More processes and connections than one validation step takes: they are validated in steps.
    body = Fleet(2, seed=5, processes=2_500, connections=2_600).report(0, NOW)
    body["processes_info"]["processes"][1_700]["gpu"] = {"model": "x", "memory": [1, 2]}  # unknown fields kept
    body["network_info"]["connections"][2_500]["inode"] = 4_242
    return body


def test_long_lists_validated_in_steps_give_the_report_validated_in_one_call(long_report):
    raw = orjson.dumps(long_report)
    assert len(raw) >= STEPPED_BYTES
    whole = Report.model_validate_json(raw)
    stepped = parse_report(raw, {}, 32)
    assert stepped.model_dump() == whole.model_dump()
    assert stepped.processes_info.processes[1_700].model_extra == {"gpu": {"model": "x", "memory": [1, 2]}}
    assert stepped.network_info.connections[2_500].model_extra == {"inode": 4_242}


def test_a_large_body_gets_the_values_and_errors_of_a_validation_in_one_call(long_report):
    # Large bodies are parsed to Python values by orjson, the rest by pydantic-core's parser: JSON that
    # reads differently, or that only one of them accepts, must make the same report or the same error.
    tricky = (
        b'"dup": 1, "dup": {"again": [2, 3]}, "text": "caf\\u00e9 \\ud83d\\ude00 \\u0000 tab\\t", '
        b'"u64": 18446744073709551615, "neg": -9223372036854775808, "zero": -0.0, "tiny": 5e-324, '
        b'"long": 0.30000000000000004441, "exp": 1E+2, "empty": {}, "nothing": null, '
    )
    raw = orjson.dumps(long_report).replace(b'{"agent_id"', b"{" + tricky + b'"agent_id"', 1)
    assert len(raw) >= STEPPED_BYTES and raw.count(b'"dup"') == 2
    whole, stepped = Report.model_validate_json(raw), parse_report(raw, {}, 32)
    assert stepped.model_dump() == whole.model_dump() and stepped.model_extra == whole.model_extra
    assert stepped.model_extra["dup"] == {"again": [2, 3]} and stepped.model_extra["tiny"] == 5e-324
    for field, bad in (("memory_used", b"1180591620717411303424"), ("cpu_percent", b"Infinity")):
        body = orjson.loads(raw)
        body["host_info"][field] = "BAD"
        raw_bad = orjson.dumps(body).replace(b'"BAD"', bad)
        with pytest.raises(ValidationError) as one_call:
            Report.model_validate_json(raw_bad)
        err = status_of(parse_report, raw_bad, {}, 32)
        assert err.status == 422 and err.details == error_details(one_call.value)
    truncated = status_of(parse_report, raw[:-2], {}, 32)
    assert truncated.status == 400 and truncated.message.startswith("malformed JSON")


@pytest.mark.parametrize(
    ("section", "items", "index", "bad"),
    [
        ("processes_info", "processes", 1_999, {"pid": -1}),
        ("network_info", "connections", 2_001, {"local_port": 70_000, "protocol": "sctp"}),
        ("network_info", "connections", 5, {"remote_ip": "300.1.1.1"}),
    ],
)
def test_a_bad_item_in_a_long_list_gets_the_error_of_a_validation_in_one_call(long_report, section, items, index, bad):
    body = orjson.loads(orjson.dumps(long_report))
    body[section][items][index].update(bad)
    body["host_info"]["load_avg"] = {"not": "a list"}  # and an error elsewhere: all of them, in their order
    raw = orjson.dumps(body)
    with pytest.raises(ValidationError) as whole:
        Report.model_validate_json(raw)
    err = status_of(parse_report, raw, {}, 32)
    assert err.status == 422 and err.details == error_details(whole.value)
    assert any(detail["field"].startswith(f"{section}.{items}.{index}.") for detail in err.details)


def test_json_array_instead_of_object_is_422():
    assert status_of(parse_report, b"[]", {}, 32).status == 422


class GpuInfo(BaseModel):
    gpus: list[int]


def test_plugin_sections_are_validated_with_their_model():
    report = parse({**GOOD, "gpu_info": {"gpus": [1, 2]}}, sections={"gpu_info": GpuInfo})
    assert report.sections["gpu_info"].gpus == [1, 2]
    err = status_of(parse, {**GOOD, "gpu_info": {"gpus": ["x"]}}, {"gpu_info": GpuInfo})
    assert err.details[0]["field"] == "gpu_info.gpus.0"


# -- the IP address pattern agrees with the standard library ---------------------------------------------


IP = re.compile(IP_PATTERN)


@given(st.ip_addresses())
def test_every_real_address_matches_the_pattern(address):
    assert IP.match(str(address)) and IP.match(address.exploded)


@settings(max_examples=2000)
@given(st.text(alphabet="0123456789abcdefABCDEFg.:", max_size=45))
def test_the_pattern_accepts_exactly_what_ipaddress_accepts(text):
    try:
        ipaddress.ip_address(text)  # takes IPv6 zone ids (fe80::1%eth0) as the pattern does
        valid = True
    except ValueError:
        valid = text == ""
    assert bool(IP.match(text)) == valid, text


# -- coalescing: merges a later report makes moot are skipped ------------------------------------------------


def queued(order, agent, epoch_offset, **sections):
    body = {**GOOD, "agent_id": agent, "timestamp": f"2025-10-13T00:00:{epoch_offset:02d}Z", **sections}
    return SimpleNamespace(order=order, report=parse(body))


def test_a_report_replaced_in_every_section_by_a_later_one_is_not_merged():
    batch = [queued(1, "a", 0, host_info={}, processes_info={}), queued(2, "a", 5, host_info={}, processes_info={})]
    assert superseded(batch) == {1}


def test_a_report_with_a_section_the_later_one_lacks_is_still_merged():
    batch = [queued(1, "a", 0, host_info={}, docker_info={}), queued(2, "a", 5, host_info={})]
    assert superseded(batch) == set()


def test_an_older_later_arrival_does_not_supersede():
    batch = [queued(1, "a", 9, host_info={}), queued(2, "a", 5, host_info={})]
    assert superseded(batch) == set()


def test_other_agents_and_the_last_report_are_never_superseded():
    batch = [queued(1, "a", 0, host_info={}), queued(2, "b", 5, host_info={}), queued(3, "a", 5, host_info={})]
    assert superseded(batch) == {1}


def test_sections_covered_by_two_later_reports_together_supersede():
    batch = [
        queued(1, "a", 0, host_info={}, docker_info={}),
        queued(2, "a", 1, host_info={}),
        queued(3, "a", 2, docker_info={}),
    ]
    assert superseded(batch) == {1}


# -- clocks: the topology's liveness is the server's receipt time ------------------------------------------------


def test_a_probe_a_year_behind_is_last_seen_now(http):
    before = time.time()
    body = report(
        ts=before - 365 * 86400,
        processes_info={"processes": [{"pid": 7, "name": "app"}]},
        network_info={
            "connections": [
                {
                    "pid": 7,
                    "protocol": "tcp",
                    "local_ip": "10.0.0.1",
                    "local_port": 40000,
                    "remote_ip": "8.8.8.8",
                    "remote_port": 443,
                    "state": "ESTABLISHED",
                }
            ]
        },
    )
    assert post_report(http, body).status_code == 202
    topology = wait_for(lambda: (t := http.get("/api/v1/query/topology").json()["topology"])["edges"] and t)
    after = time.time()
    seen = [
        topology["nodes"]["process:host-1:7"]["first_seen"],
        topology["nodes"]["process:host-1:7"]["last_seen"],
        topology["nodes"]["external:8.8.8.8"]["last_seen"],
        topology["edges"]["process:host-1:7->external:8.8.8.8"]["last_seen"],
        topology["timestamp"],
    ]
    assert all(before - 0.001 <= parse_rfc3339(stamp) <= after for stamp in seen), seen
