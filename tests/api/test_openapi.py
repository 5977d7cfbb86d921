"""The OpenAPI document, the JSON Schemas and docs/api.md against what the server really serves.

A new endpoint fails these tests until it is in ``ENDPOINTS`` (``orchestrator/api/openapi.py``) and in
``docs/api.md``, and the generated files are rewritten; each failure says what to add.
"""

from __future__ import annotations

import asyncio
import json
import re
from functools import cache
from typing import get_args

import httpx
import jsonschema
import orjson
import pytest
import websockets
from openapi_spec_validator import validate as validate_openapi

from orchestrator.api.openapi import DOCS, PATH, document, generated_files
from orchestrator.contract.responses import External, Level
from orchestrator.topology import EXTERNALS, LEVELS
from tests.support import make_settings, post_report, report, wait_for

REGENERATE = "run `python -m orchestrator.api.openapi`"
HEADING = re.compile(r"^### `(GET|POST|PUT|PATCH|DELETE) (/\S*)`", re.MULTILINE)


def operations() -> list[tuple[str, str, dict]]:
    return [(method.upper(), path, op) for path, item in document()["paths"].items() for method, op in item.items()]


def served_routes(app) -> set[tuple[str, str]]:
    """(method, path) of every route, with Sanic's ``<name:type>`` written as OpenAPI's ``{name}`` (a static
    directory's file parameter, ``__file_uri__`` inside Sanic, as ``{file}``)."""
    routes = set()
    for route in app.router.routes:
        path = "/" + re.sub(r"<([^:>]+)(?::[^>]*)?>", r"{\1}", route.path).lstrip("/")
        path = path.replace("{__file_uri__}", "{file}")
        routes |= {(method, path) for method in route.methods if method not in ("HEAD", "OPTIONS")}
    return routes


@cache
def validator(ref: str) -> jsonschema.Draft202012Validator:
    """A validator for a schema of the document (``#/components/schemas/X``), its references resolved in it."""
    return jsonschema.Draft202012Validator({"$ref": ref, "components": document()["components"]})


def check_body(method: str, path: str, operation: dict, response: httpx.Response) -> None:
    documented = operation["responses"].get(str(response.status_code))
    assert documented is not None, (
        f"{method} {path} answered {response.status_code} ({response.text[:200]}), which its OpenAPI entry does not "
        f"list: add it to the Endpoint's `also` (same body) or `errors` (error body) in orchestrator/api/openapi.py"
    )
    schema = documented.get("content", {}).get("application/json", {}).get("schema", {})
    if "$ref" in schema:
        errors = [
            f"{'.'.join(map(str, e.absolute_path)) or 'body'}: {e.message}"
            for e in validator(schema["$ref"]).iter_errors(response.json())
        ]
        assert not errors, f"{method} {path} {response.status_code} does not match {schema['$ref']}: {errors[:5]}"


def example_request(http: httpx.Client, method: str, path: str, operation: dict) -> tuple[str, httpx.Response]:
    """The operation called with the examples its document gives (path parameters without one get ``x``)."""
    params = operation.get("parameters", ())
    examples = {p["name"]: p["example"] for p in params if "example" in p}
    url = re.sub(r"\{([^}]+)\}", lambda m: examples.get(m.group(1), "x"), path)
    query = {p["name"]: p["example"] for p in params if p["in"] == "query" and "example" in p}
    body = operation.get("requestBody", {}).get("content", {}).get("application/json", {}).get("example")
    return url, http.request(method, url, params=query, json=body)


def test_every_served_route_is_in_the_openapi_document(app):
    documented = {(method, path) for method, path, _ in operations()}
    missing = sorted(served_routes(app) - documented)
    assert not missing, "\n".join(
        f"{method} {path} is served but not in the OpenAPI document. Add to ENDPOINTS in "
        f'orchestrator/api/openapi.py:\n    Endpoint("{method}", "{path}", "<summary>", "<tag>", '
        f"response=<its model in orchestrator/contract/responses.py>, params=(Param(...),)),\n"
        f'add a "### `{method} {path}`" section to docs/api.md, and {REGENERATE}.'
        for method, path in missing
    )


def test_every_documented_path_is_served_and_answers_as_documented(server, http):
    """A real request to each documented operation (path parameters and bodies from the document's examples):
    never the unknown-route 404 or a 405, and the body matches the schema the document gives for its status."""
    assert http.post("/api/v1/agents/register", json={"agent_id": "agent-1", "hostname": "host-1"}).status_code == 201
    assert post_report(http, report("agent-1")).status_code == 202
    wait_for(lambda: http.get("/api/v1/query/agents/agent-1/latest").status_code == 200)
    for method, path, operation in operations():
        url, response = example_request(http, method, path, operation)
        unknown_route = response.status_code == 404 and response.json().get("error", {}).get("message", "").startswith(
            "Requested URL"
        )
        assert not unknown_route, (
            f"{method} {path} is in the OpenAPI document but not served ({url}: 404 unknown route)"
        )
        assert response.status_code != 405, f"{method} {path} is documented with the wrong method: {response.text}"
        check_body(method, path, operation, response)
    assert served_routes(server.app) >= {(method, path) for method, path, _ in operations()}


def test_bodies_with_nodes_edges_and_points_match_their_schemas(server, http):
    """The populated answers (nodes, edges, time-series points, agents) against their schemas."""
    body = report(
        "agent-1",
        host_info={"cpu_percent": 3.0, "memory_used": 5, "ip_addresses": ["10.0.0.5"]},
        docker_info={"containers": [{"id": "a" * 64, "name": "web", "state": "running"}]},
        processes_info={"processes": [{"pid": 42, "name": "nginx", "container_id": "a" * 64}, {"pid": 43}]},
        network_info={
            "connections": [
                {"pid": 42, "local_ip": "0.0.0.0", "local_port": 80, "state": "LISTEN"},
                {"pid": 43, "local_ip": "10.0.0.5", "local_port": 5555, "remote_ip": "10.0.0.5", "remote_port": 80},
                {"pid": 43, "local_ip": "10.0.0.5", "local_port": 5556, "remote_ip": "8.8.8.8", "remote_port": 443},
            ]
        },
    )
    assert post_report(http, body).status_code == 202
    wait_for(lambda: len(http.get("/api/v1/query/topology").json()["topology"]["edges"]) == 2)
    ops = {(method, path): op for method, path, op in operations()}
    for path, query in (
        ("/api/v1/query/topology", {}),
        ("/api/v1/query/topology", {"level": "host"}),
        ("/api/v1/query/agents/{agent_id}/timeseries", {}),
        ("/api/v1/query/agents/{agent_id}/latest", {}),
        ("/api/v1/agents/list", {}),
        ("/api/v1/query/stats", {}),
    ):
        response = http.get(path.replace("{agent_id}", "agent-1"), params=query)
        assert response.status_code == 200
        check_body("GET", path, ops["GET", path], response)
    assert http.get("/api/v1/query/agents/agent-1/timeseries").json()["points"]


async def test_websocket_messages_match_their_schemas(server):
    schemas = {name: json.loads((DOCS / "schemas" / f"{name}.json").read_text()) for name in ("ws_server_message",)}
    seen = {}
    async with websockets.connect(f"ws://127.0.0.1:{server.port}/api/v1/ws") as ws:

        async def next_of(kind: str) -> dict:
            while True:
                message = orjson.loads(await asyncio.wait_for(ws.recv(), 10))
                jsonschema.validate(message, schemas["ws_server_message"])
                if (
                    message["type"] != "topology_diff"
                    or message["payload"]["nodes"]["added"]
                    or "topology_diff" not in seen
                ):
                    seen[message["type"]] = message
                if message["type"] == kind or not kind:
                    return message

        await next_of("topology_update")
        async with httpx.AsyncClient(base_url=server.url) as http:
            body = report("agent-1", processes_info={"processes": [{"pid": 1, "name": "init"}]})
            assert (await http.post("/api/v1/reports", json=body)).status_code == 202
        # The diff that adds the process and the report's summary, in whichever order the tick sends them.
        while (
            "report_update" not in seen or "process:host-1:1" not in seen["topology_diff"]["payload"]["nodes"]["added"]
        ):
            await next_of("")
        await ws.send(orjson.dumps({"type": "ping"}).decode())
        await next_of("pong")
        await ws.send(orjson.dumps({"type": "subscribe", "level": "sideways"}).decode())
        await next_of("error")
    for kind, message in seen.items():
        jsonschema.validate(message, json.loads((DOCS / "schemas" / f"ws_{kind}.json").read_text()))
    assert set(seen) == {"topology_update", "topology_diff", "report_update", "pong", "error"}


@pytest.mark.parametrize("kind", ["ping", "resync", "subscribe"])
def test_client_message_schemas_accept_what_the_server_understands(kind):
    messages = {
        "ping": {"type": "ping"},
        "resync": {"type": "resync"},
        "subscribe": {"type": "subscribe", "level": "host"},
    }
    jsonschema.validate(messages[kind], json.loads((DOCS / "schemas" / "ws_client_message.json").read_text()))
    jsonschema.validate(messages[kind], json.loads((DOCS / "schemas" / f"ws_client_{kind}.json").read_text()))


def test_report_schema_accepts_the_contract_example_and_refuses_what_the_server_refuses():
    schema = json.loads((DOCS / "schemas" / "report.json").read_text())
    example = document()["paths"]["/api/v1/reports"]["post"]["requestBody"]["content"]["application/json"]["example"]
    jsonschema.validate(example, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**example, "agent_id": "no spaces"}, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"agent_id": "agent-1", "hostname": "host-1"}, schema)  # no timestamp


def test_the_document_is_valid_openapi_3_1():
    validate_openapi(document())


def test_the_document_is_served_without_a_token_when_tokens_are_configured(start_server):
    server = start_server(make_settings(auth={"agent_tokens": ["a"], "read_tokens": ["r"]}))
    response = httpx.get(server.url + PATH)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == json.loads((DOCS / "openapi.json").read_text())
    assert httpx.get(server.url + "/api/v1/query/stats").status_code == 401


def test_generated_files_are_current():
    files = generated_files()
    for path, text in files.items():
        assert path.exists() and path.read_text() == text, f"{path.relative_to(DOCS.parent)} is stale: {REGENERATE}"
    extra = set((DOCS / "schemas").glob("*.json")) - set(files)
    assert not extra, f"{sorted(p.name for p in extra)} are no longer generated: delete them and {REGENERATE}"


def test_docs_api_md_has_a_section_for_every_operation_and_no_other():
    sections = set(HEADING.findall((DOCS / "api.md").read_text()))
    documented = {(method, path) for method, path, _ in operations()}
    missing = sorted(documented - sections)
    assert not missing, "docs/api.md has no section for: " + ", ".join(
        f'"### `{method} {path}`"' for method, path in missing
    )
    assert not sections - documented, (
        f"docs/api.md documents what the OpenAPI document does not: {sections - documented}"
    )


def test_the_documented_views_are_the_ones_the_server_has():
    assert get_args(Level) == LEVELS
    assert get_args(External) == EXTERNALS
