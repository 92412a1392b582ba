"""faena.yml's worker fields: services, keep-failed, resources.pids; errors name file,
line and field."""

from __future__ import annotations

import textwrap

import pytest

from faena.domain.errors import SpecValidationError
from faena.domain.spec import HealthCheck, PipelineSpec, ServiceSpec
from faena.spec import parse_pipeline


def parse(text: str) -> PipelineSpec:
    return parse_pipeline(textwrap.dedent(text).lstrip("\n"), "faena.yml")


def errors(text: str) -> list[str]:
    with pytest.raises(SpecValidationError) as info:
        parse(text)
    return [str(i) for i in info.value.issues]


def test_services_keep_failed_and_pids_are_read() -> None:
    spec = parse("""
        jobs:
          test:
            image: app:ci
            resources: {memory: 64Mi, pids: 32}
            keep-failed: 30m
            services:
              db:
                image: postgres:16
                env: {POSTGRES_PASSWORD: ci}
                command: postgres -c fsync=off
                health: {cmd: pg_isready, interval: 500ms, timeout: 2s, retries: 10}
              cache:
                image: redis
                command: [redis-server, --save, ""]
            steps: [{run: 'true'}]
    """)
    job = spec.jobs["test"]
    assert job.resources.pids == 32
    assert job.keep_failed == 1800.0
    assert job.services == [
        ServiceSpec(
            "db", "postgres:16", {"POSTGRES_PASSWORD": "ci"}, ["postgres", "-c", "fsync=off"],
            HealthCheck("pg_isready", interval=0.5, timeout=2.0, retries=10),
        ),
        ServiceSpec("cache", "redis", {}, ["redis-server", "--save", ""], None),
    ]  # fmt: skip
    # Services travel to remote agents inside the spec: the round trip keeps them.
    assert PipelineSpec.from_dict(spec.to_dict()).jobs["test"].services == job.services


def test_service_errors_name_line_and_field() -> None:
    found = errors("""
        jobs:
          test:
            keep-failed: 30d
            resources: {pids: 0}
            services:
              db:
                env: {A: b}
                ports: ["5432:5432"]
              bad name!:
                image: x
              web:
                image: nginx
                health: {interval: 0s}
            steps: [{run: 'true'}]
    """)
    assert found == [
        "faena.yml:3:18 jobs.test.keep-failed: must be greater than zero and at most 7d",
        "faena.yml:4:23 jobs.test.resources.pids: must be >= 1, got 0",
        "faena.yml:7:9 jobs.test.services.db: missing required field 'image'",
        "faena.yml:8:9 jobs.test.services.db.ports: services share the job's network: reach "
        "them at localhost:<port>, no 'ports'",
        "faena.yml:9:7 jobs.test.services.bad name!: invalid service name 'bad name!': use "
        "letters, digits, '-' and '_', starting with a letter or '_'",
        "faena.yml:13:17 jobs.test.services.web.health: missing required field 'cmd' (a shell "
        "command that exits 0 when ready)",
        "faena.yml:13:28 jobs.test.services.web.health.interval: must be greater than zero",
    ]
