"""Property-based fuzzing of the HTTP API with schemathesis, against a real uvicorn.

Every operation that ``/openapi.json`` lists when the test runs is fuzzed (the schema is
loaded from the live server, so routes added later are covered without editing this file),
with the admin token on every request. The properties: no response is a 5xx
(``not_a_server_error``); every status a response has is declared for its operation
(``status_code_conformance``), with the declared media type (``content_type_conformance``:
errors are ``application/problem+json``) and a body matching the declared schema
(``response_schema_conformance``). ``test_openapi_declares_the_problem_responses`` checks
the document itself.

Safety: fuzzed ``POST /api/v1/pipelines`` and ``POST /api/v1/jobs`` bodies may, in
principle, be valid pipelines, and the server runs steps as local processes. So:
- the server's ``FAENA_HOME`` (SQLite file, job workspaces, where steps run) is a temp
  dir of this module;
- while the server is up, ``PATH`` is an empty temp dir and ``HOME`` a temp dir: the
  local provider resolves the step's shell on ``PATH`` at each exec, so a step finds no
  shell (exit 127) and starts no program. A generated job would need both an ``env.PATH``
  and a harmful ``run`` line to do anything, which random data does not produce.

``GET /api/v1/events`` is Server-Sent Events: the stream never ends while the client
stays, so it is excluded from the main fuzz test and fuzzed in its own test with a short
request timeout (schemathesis reads an event stream until the timeout, then stops) and
few examples. Long polls (``GET /api/v1/agent/work``, 25 s by default) get a short valid
``wait`` (``bound_long_poll``).
"""

from __future__ import annotations

import asyncio
import math
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
import uvicorn
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Err
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.specs.openapi.schemas import OpenApiSchema

from faena.app import build_server
from faena.settings import Settings

TOKEN = "fuzz-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
EVENTS = "/api/v1/events"
MAX_EXAMPLES = 15
LONG_POLL = 0.2  # seconds a fuzzed long poll may wait
SSE_READ = 0.3  # seconds a fuzzed event stream is read
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
FUZZ = settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,  # a real server on a busy 2-core machine: no per-example deadline
    database=None,  # no .hypothesis/ state: each run draws fresh examples
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
        HealthCheck.data_too_large,
    ],
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """faena's app on a real uvicorn on 127.0.0.1, in a thread with its own event loop
    (the schemathesis tests are synchronous and send with ``requests``)."""
    tmp = tmp_path_factory.mktemp("fuzz")
    empty_bin = tmp / "empty-bin"
    empty_bin.mkdir()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PATH", str(empty_bin))  # no shell, no program for any step: see above
        mp.setenv("HOME", str(tmp / "user-home"))
        api, _, created = build_server(Settings(home=tmp / "home", jobs=2), TOKEN)
        assert created is None
        port = free_port()
        config = uvicorn.Config(
            api, host="127.0.0.1", port=port, log_level="warning", lifespan="on"
        )
        server = uvicorn.Server(config)
        thread = threading.Thread(target=lambda: asyncio.run(server.serve()), daemon=True)
        thread.start()
        deadline = time.monotonic() + 20
        while not server.started:
            assert thread.is_alive(), "the server thread died at start-up"
            assert time.monotonic() < deadline, "the server did not start in 20 s"
            time.sleep(0.02)
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            server.should_exit = True
            thread.join(timeout=20)


@pytest.fixture(scope="module")
def api_schema(server_url: str) -> OpenApiSchema:
    """The live server's OpenAPI document, as schemathesis sees it."""
    config = schemathesis.Config.from_dict(
        {
            "base-url": server_url,
            # Config headers win over generated ones: the `authorization` header parameter
            # FastAPI publishes is always the admin token.
            "headers": AUTH,
            "request-timeout": 10,
        }
    )
    return schemathesis.openapi.from_url(f"{server_url}/openapi.json", config=config)


@pytest.fixture(autouse=True)
def _schemathesis_node_id(request: pytest.FixtureRequest) -> None:
    # schemathesis 4.32's lazy loader reads and rewrites `Node._nodeid` (to name each
    # operation in reports); pytest 9 keeps the id in `_id`, so lend it the old attribute.
    if not hasattr(request.node, "_nodeid"):
        request.node._nodeid = request.node.nodeid


schema = schemathesis.pytest.from_fixture("api_schema")


def bound_long_poll(case: schemathesis.Case) -> None:
    """A long poll (an operation with a ``wait`` query parameter: GET /api/v1/agent/work)
    with nothing to hand out answers after ``wait`` seconds (25 by default): make a valid
    ``wait`` short. Invalid ones (not a number, out of range) are sent as generated."""
    param = case.operation.query.get("wait")
    if param is None:
        return
    query = case.query if case.query is not None else {}
    value = query.get("wait")
    try:
        seconds = LONG_POLL if value is None else float(value)
    except (TypeError, ValueError):
        return
    schema = getattr(param, "definition", {}).get("schema", {})
    if schema.get("minimum", 0) <= seconds <= schema.get("maximum", math.inf):
        query["wait"] = min(seconds, LONG_POLL)
        case.query = query


@schema.exclude(path=EVENTS).parametrize()
@FUZZ
def test_no_operation_answers_5xx(case: schemathesis.Case) -> None:
    bound_long_poll(case)
    case.call_and_validate(checks=CHECKS)


@schema.include(path=EVENTS).parametrize()
@settings(FUZZ, max_examples=8)
def test_event_stream_answers_no_5xx(case: schemathesis.Case) -> None:
    # An SSE stream ends only when the client leaves: stop reading after SSE_READ seconds.
    case.call_and_validate(checks=CHECKS, timeout=SSE_READ)


def test_every_listed_operation_is_fuzzed(server_url: str, api_schema: OpenApiSchema) -> None:
    """schemathesis reads every operation of the live document (none is skipped as invalid),
    so the two tests above fuzz all of them."""
    spec: dict[str, Any] = httpx.get(f"{server_url}/openapi.json").json()
    listed = {(m.upper(), p) for p, ops in spec["paths"].items() for m in ops}
    results = list(api_schema.get_all_operations())
    assert not [r.err() for r in results if isinstance(r, Err)]
    assert {(r.ok().method.upper(), r.ok().path) for r in results} == listed
    assert ("POST", "/api/v1/pipelines") in listed


def test_no_step_can_start_a_program(server_url: str) -> None:
    """The safety net above holds: a valid job submitted to this server does not succeed
    (its shell is not on PATH), or is not run at all (no agent)."""
    with httpx.Client(base_url=server_url, headers=AUTH) as client:
        r = client.post("/api/v1/jobs", json={"steps": [{"run": "true"}]})
        assert r.status_code == 201, r.text
        deadline = time.monotonic() + 15
        while True:
            run = client.get(f"/api/v1/pipelines/{r.json()['run_id']}").json()
            if run["state"] in ("SUCCEEDED", "FAILED", "CANCELLED") or time.monotonic() > deadline:
                break
            time.sleep(0.1)
    assert run["state"] in ("FAILED", "PENDING"), run


def test_openapi_declares_the_problem_responses(server_url: str) -> None:
    spec: dict[str, Any] = httpx.get(f"{server_url}/openapi.json").json()
    wrong = []
    for path, ops in spec["paths"].items():
        if not path.startswith("/api/"):
            continue
        for method, op in ops.items():
            responses = op.get("responses", {})
            if "401" not in responses:
                wrong.append(f"{method.upper()} {path}: 401 not declared")
            for status, response in responses.items():
                media = response.get("content", {})
                if status[0] in "45" and "application/problem+json" not in media:
                    wrong.append(f"{method.upper()} {path}: {status} is not a problem+json")
    assert not wrong, "\n".join(wrong)
