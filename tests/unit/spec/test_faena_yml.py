"""The faena.yml reader: every feature, and every error located by file, line, column, path."""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from faena.domain.errors import ErrorCode, SpecValidationError, ValidationIssue
from faena.domain.spec import MatrixSpec, PipelineSpec, Resources, RetryPolicy
from faena.spec import load_pipeline, parse_pipeline
from faena.spec.faena_yml import (
    JOB_FIELDS,
    PIPELINE_FIELDS,
    RETRY_FIELDS,
    STEP_FIELDS,
    STRATEGY_FIELDS,
)
from faena.spec.worker_fields import RESOURCES_FIELDS


def parse(text: str, filename: str = "faena.yml") -> PipelineSpec:
    return parse_pipeline(textwrap.dedent(text).lstrip("\n"), filename)


def issues(text: str, filename: str = "faena.yml") -> list[ValidationIssue]:
    with pytest.raises(SpecValidationError) as info:
        parse(text, filename)
    return info.value.issues


def errors(text: str) -> list[str]:
    """Each issue as printed: ``faena.yml:12:7 jobs.test.needs: message``."""
    return [str(i) for i in issues(text)]


# -- valid files -------------------------------------------------------------------------


def test_minimal_pipeline_defaults() -> None:
    spec = parse(
        """
        jobs:
          build:
            steps:
              - run: make
        """,
        "ci/release.yml",
    )
    assert spec.name == "release"
    assert spec.source == "ci/release.yml"
    assert list(spec.jobs) == ["build"]
    build = spec.jobs["build"]
    assert build.key == build.name == "build"
    assert build.needs == []
    assert build.strategy is None
    assert build.retry == RetryPolicy()
    assert build.timeout is None
    [step] = build.steps
    assert (step.name, step.run, step.id, step.shell) == ("make", "make", None, None)


def test_top_level_fields() -> None:
    spec = parse(
        """
        name: Release
        on:
          push:
            branches: [main]
        env:
          A: plain
          B: true
          C: 1
          D: 1.10
          E: yes
          F:
          G: "quoted"
        defaults:
          run:
            shell: bash
            working-directory: src
        jobs:
          build:
            steps: [{run: make}]
        """
    )
    assert spec.name == "Release"
    assert spec.env == {
        "A": "plain",
        "B": "true",
        "C": "1",
        "D": "1.10",
        "E": "yes",
        "F": "",
        "G": "quoted",
    }
    assert (spec.shell, spec.working_directory) == ("bash", "src")


def test_defaults_fields_directly_under_defaults() -> None:
    spec = parse(
        """
        defaults:
          shell: sh
          working-directory: /work
        jobs:
          build:
            defaults:
              shell: python
            steps: [{run: print(1)}]
        """
    )
    assert (spec.shell, spec.working_directory) == ("sh", "/work")
    assert spec.jobs["build"].shell == "python"


def test_every_job_field() -> None:
    spec = parse(
        """
        jobs:
          build:
            steps: [{run: make, id: make}]
            outputs: [version, digest]
          test:
            name: Tests on ${{ matrix.os }}
            needs: [build]
            env:
              VERSION: ${{ needs.build.outputs.version }}
            if: ${{ needs.build.result == 'success' }}
            strategy:
              fail-fast: false
              max-parallel: 2
              matrix:
                os: [linux, mac]
                py: ["3.12"]
                include:
                  - os: linux
                    extra: true
                exclude:
                  - os: mac
                    py: "3.11"
            retry:
              max_attempts: 3
              backoff: exponential
              delay: 10s
            timeout: 1h30m
            resources:
              cpu: 500m
              memory: 2Gi
              gpu: 1
            runs-on: [linux, "${{ matrix.os }}"]
            image: python:3.12
            outputs:
              report: ${{ steps.check.outputs.path }}
              fixed: constant
            continue-on-error: true
            shell: bash -e {0}
            working-directory: tests
            steps:
              - id: check
                run: pytest
        """
    )
    test = spec.jobs["test"]
    assert test.name == "Tests on ${{ matrix.os }}"
    assert test.needs == ["build"]
    assert test.env == {"VERSION": "${{ needs.build.outputs.version }}"}
    assert test.if_ == "needs.build.result == 'success'"
    assert test.strategy == MatrixSpec(
        axes={"os": ["linux", "mac"], "py": ["3.12"]},
        include=[{"os": "linux", "extra": True}],
        exclude=[{"os": "mac", "py": "3.11"}],
        fail_fast=False,
        max_parallel=2,
    )
    assert test.retry == RetryPolicy(max_attempts=3, backoff="exponential", delay=10.0)
    assert test.timeout == 5400.0
    assert test.resources == Resources(cpu=0.5, memory=2 * 1024**3, gpu=1)
    assert test.runs_on == ["linux", "${{ matrix.os }}"]
    assert test.image == "python:3.12"
    assert test.outputs == {"report": "${{ steps.check.outputs.path }}", "fixed": "constant"}
    assert test.continue_on_error is True
    assert (test.shell, test.working_directory) == ("bash -e {0}", "tests")
    assert spec.jobs["build"].outputs == {"version": "", "digest": ""}


def test_needs_as_a_string_and_timeout_minutes() -> None:
    spec = parse(
        """
        jobs:
          a:
            steps: [{run: x}]
          b:
            needs: a
            timeout-minutes: 2.5
            runs-on: gpu
            steps: [{run: x}]
        """
    )
    assert spec.jobs["b"].needs == ["a"]
    assert spec.jobs["b"].timeout == 150.0
    assert spec.jobs["b"].runs_on == ["gpu"]


def test_matrix_shorthand_and_dynamic_matrix() -> None:
    spec = parse(
        """
        jobs:
          plan:
            outputs: [targets]
            steps: [{run: ./plan}]
          unit:
            matrix:
              py: ["3.11", "3.12"]
            steps: [{run: "tox -e py${{ matrix.py }}"}]
          build:
            needs: plan
            strategy:
              matrix: ${{ fromJSON(needs.plan.outputs.targets) }}
            steps: [{run: "make ${{ matrix.target }}"}]
        """
    )
    assert spec.jobs["unit"].strategy == MatrixSpec(axes={"py": ["3.11", "3.12"]})
    dynamic = spec.jobs["build"].strategy
    assert dynamic is not None and dynamic.dynamic
    assert dynamic.expression == "fromJSON(needs.plan.outputs.targets)"


def test_every_step_field() -> None:
    spec = parse(
        """
        jobs:
          build:
            steps:
              - name: Compile
                id: compile
                run: |
                  make
                  make install
                shell: python
                env: {DEBUG: 1}
                working-directory: src
                if: failure()
                continue-on-error: true
                timeout: 90s
                retry: {max-attempts: 2, delay: 1m}
              - run: echo
                timeout-minutes: 1
        """
    )
    first, second = spec.jobs["build"].steps
    assert first.name == "Compile"
    assert first.id == "compile"
    assert first.run == "make\nmake install\n"
    assert first.shell == "python"
    assert first.env == {"DEBUG": "1"}
    assert first.working_directory == "src"
    assert first.if_ == "failure()"
    assert first.continue_on_error is True
    assert first.timeout == 90.0
    assert first.retry == RetryPolicy(max_attempts=2, delay=60.0)
    assert second.timeout == 60.0


def test_default_step_name_is_the_first_line_cut_to_60() -> None:
    long = "x" * 100
    spec = parse(
        f"""
        jobs:
          build:
            steps:
              - run: |

                  echo first
                  echo second
              - run: {long}
        """
    )
    first, second = spec.jobs["build"].steps
    assert first.name == "echo first"
    assert second.name == "x" * 57 + "..."
    assert len(second.name) == 60


def test_if_accepts_booleans_and_bare_expressions() -> None:
    spec = parse(
        """
        jobs:
          a:
            if: false
            steps:
              - run: x
                if: always()
        """
    )
    assert spec.jobs["a"].if_ == "false"
    assert spec.jobs["a"].steps[0].if_ == "always()"


def test_yaml_1_1_oddities_stay_strings() -> None:
    spec = parse(
        """
        jobs:
          a:
            env:
              SEXAGESIMAL: 1:30
              OCTAL: 017
              NO: no
            matrix:
              flag: [on, off]
            steps: [{run: x}]
        """
    )
    assert spec.jobs["a"].env == {"SEXAGESIMAL": "1:30", "OCTAL": "017", "NO": "no"}
    assert spec.jobs["a"].strategy == MatrixSpec(axes={"flag": ["on", "off"]})


def test_anchors_and_merge_keys() -> None:
    spec = parse(
        """
        x-common: &common
          runs-on: linux
          timeout: 5m
        jobs:
          a:
            <<: *common
            steps: [{run: x}]
          b:
            <<: *common
            timeout: 1m
            steps: [{run: y}]
        """
    )
    assert spec.jobs["a"].runs_on == ["linux"]
    assert spec.jobs["a"].timeout == 300.0
    assert spec.jobs["b"].timeout == 60.0


def test_spec_round_trips_through_dict() -> None:
    spec = parse(
        """
        jobs:
          a:
            matrix: {os: [linux]}
            retry: {max_attempts: 2}
            resources: {cpu: 1}
            steps: [{run: x, retry: {max_attempts: 3, backoff: linear}}]
        """
    )
    assert PipelineSpec.from_dict(spec.to_dict()) == spec


def test_load_pipeline_reads_a_file(tmp_path: Path) -> None:
    path = tmp_path / "faena.yml"
    path.write_text("jobs:\n  a:\n    steps: [{run: x}]\n", encoding="utf-8")
    spec = load_pipeline(path)
    assert spec.source == str(path)
    assert spec.name == "faena"
    assert load_pipeline(str(path)) == spec


# -- errors ------------------------------------------------------------------------------


def test_issue_fields() -> None:
    [issue] = issues(
        """
        jobs:
          build:
            stpes: []
            steps: [{run: x}]
        """
    )
    assert issue == ValidationIssue(
        "unknown field 'stpes' (did you mean 'steps'?)",
        path="jobs.build.stpes",
        file="faena.yml",
        line=3,
        column=5,
        code=ErrorCode.ORC_VALID,
    )
    assert (
        str(issue)
        == "faena.yml:3:5 jobs.build.stpes: unknown field 'stpes' (did you mean 'steps'?)"
    )


def test_unknown_fields_everywhere() -> None:
    assert errors(
        """
        nmae: x
        jobs:
          a:
            strategy: {matrix: {os: [l]}, fail_fast: false}
            retry: {max_attempts: 2, dealy: 1s}
            resources: {cpus: 2}
            defaults: {run: {shel: bash}}
            steps:
              - run: x
                uses: actions/checkout@v4
                continue_on_error: true
        """
    ) == [
        "faena.yml:1:1 nmae: unknown field 'nmae' (did you mean 'name'?)",
        "faena.yml:4:35 jobs.a.strategy.fail_fast: unknown field 'fail_fast' "
        "(did you mean 'fail-fast'?)",
        "faena.yml:5:30 jobs.a.retry.dealy: unknown field 'dealy' (did you mean 'delay'?)",
        "faena.yml:6:17 jobs.a.resources.cpus: unknown field 'cpus' (did you mean 'cpu'?)",
        "faena.yml:7:22 jobs.a.defaults.run.shel: unknown field 'shel' (did you mean 'shell'?)",
        "faena.yml:10:9 jobs.a.steps[0].uses: actions ('uses') are not supported; "
        "write the commands in 'run'",
        "faena.yml:11:9 jobs.a.steps[0].continue_on_error: unknown field 'continue_on_error' "
        "(did you mean 'continue-on-error'?)",
    ]


def test_wrong_types_name_expected_and_got() -> None:
    assert errors(
        """
        name: [x]
        env: [A]
        jobs:
          a:
            needs: {b: 1}
            steps: {run: x}
          b:
            continue-on-error: "yes"
            retry: {max_attempts: two}
            timeout-minutes: soon
            env:
              A: {nested: 1}
            steps:
              - just a string
              - run: true
        """
    ) == [
        "faena.yml:1:7 name: expected a string, got a list",
        "faena.yml:2:6 env: expected a mapping of names to strings, got a list",
        "faena.yml:5:12 jobs.a.needs: expected a job id or a list of job ids, got a mapping",
        "faena.yml:6:12 jobs.a.steps: expected a non-empty list of steps, got a mapping",
        "faena.yml:8:24 jobs.b.continue-on-error: expected a boolean (true or false), "
        "got string 'yes'",
        "faena.yml:9:27 jobs.b.retry.max_attempts: expected an integer, got string 'two'",
        "faena.yml:10:22 jobs.b.timeout-minutes: expected a number of minutes, got string 'soon'",
        "faena.yml:12:10 jobs.b.env.A: expected a string, got a mapping",
        "faena.yml:14:9 jobs.b.steps[0]: expected a mapping, got string 'just a string'",
        "faena.yml:15:14 jobs.b.steps[1].run: expected a string, got boolean true",
    ]


def test_missing_and_empty_required_fields() -> None:
    assert errors(
        """
        jobs:
          a:
            steps: []
          b:
            name: B
          c:
            steps:
              - name: nothing to run
              - run: "   "
        """
    ) == [
        "faena.yml:3:12 jobs.a.steps: expected a non-empty list of steps, got an empty list",
        "faena.yml:5:5 jobs.b: missing required field 'steps'",
        "faena.yml:8:9 jobs.c.steps[0]: missing required field 'run'",
        "faena.yml:9:14 jobs.c.steps[1].run: must not be empty",
    ]
    assert errors("name: x\n") == ["faena.yml:1:1 missing required field 'jobs'"]
    assert errors("jobs: {}\n") == [
        "faena.yml:1:7 jobs: expected a non-empty mapping of jobs, got an empty mapping"
    ]


def test_file_that_is_not_a_mapping() -> None:
    assert errors("- a\n- b\n") == [
        "faena.yml:1:1 expected a mapping with 'jobs' at the top level, got a list"
    ]
    assert errors("") == ["faena.yml: the file is empty; expected a mapping with 'jobs'"]
    assert errors("# only a comment\n") == [
        "faena.yml: the file is empty; expected a mapping with 'jobs'"
    ]


def test_yaml_syntax_error_is_located() -> None:
    [issue] = issues(
        """
        jobs:
          a:
            steps: [{run: x}
          b: {}
        """
    )
    assert (issue.file, issue.line, issue.column) == ("faena.yml", 4, 3)
    assert issue.message.startswith("invalid YAML: did not find expected ',' or ']'")
    assert "line 3, column 12" in issue.message


def test_duplicate_keys_are_errors() -> None:
    assert errors(
        """
        jobs:
          a:
            steps: [{run: x}]
          a:
            steps: [{run: y}]
        """
    ) == ["faena.yml:4:3 jobs.a: duplicate key 'a' (first defined at line 2, column 3)"]


def test_unsupported_yaml_tags() -> None:
    assert errors(
        """
        jobs:
          a:
            steps: [{run: !python/name:os.system x}]
        """
    ) == ["faena.yml:3:19 jobs.a.steps[0].run: unsupported YAML tag '!python/name:os.system'"]


def test_needs_problems_are_located_at_the_need() -> None:
    assert errors(
        """
        jobs:
          build:
            steps: [{run: x}]
          test:
            needs: [build, biuld]
            steps: [{run: x}]
          lint:
            needs: lint
            steps: [{run: x}]
        """
    ) == [
        "faena.yml:5:20 jobs.test.needs: unknown job 'biuld' (did you mean 'build'?)",
        "faena.yml:8:12 jobs.lint.needs: job 'lint' needs itself",
    ]


def test_cycles_are_named() -> None:
    assert errors(
        """
        jobs:
          a:
            needs: c
            steps: [{run: x}]
          b:
            needs: a
            steps: [{run: x}]
          c:
            needs: [b]
            steps: [{run: x}]
        """
    ) == ["faena.yml:3:12 jobs.a.needs: dependency cycle: a -> c -> b -> a"]


def test_invalid_ids() -> None:
    assert errors(
        """
        jobs:
          my job:
            steps:
              - id: 1st
                run: x
              - id: ok
                run: x
              - id: ok
                run: y
            outputs: [bad name]
        """
    ) == [
        "faena.yml:2:3 jobs.my job: invalid job id 'my job': use letters, digits, '-' and '_', "
        "starting with a letter or '_'",
        "faena.yml:4:13 jobs.my job.steps[0].id: invalid step id '1st': use letters, digits, "
        "'-' and '_', starting with a letter or '_'",
        "faena.yml:8:13 jobs.my job.steps[2].id: duplicate step id 'ok' (also used by steps[1])",
        "faena.yml:10:15 jobs.my job.outputs[0]: invalid output name 'bad name': use letters, "
        "digits, '-' and '_', starting with a letter or '_'",
    ]


def test_expression_syntax_errors_are_located_at_the_field() -> None:
    found = issues(
        """
        env:
          TOP: ${{ 1 + }}
        jobs:
          a:
            name: ${{ matrix. }}
            if: ${{ success( }}
            outputs:
              v: ${{ steps.x.outputs.v ]] }}
            steps:
              - id: x
                run: echo ${{ 'unterminated }}
                env:
                  E: ${{ == }}
        """
    )
    located = [(i.line, i.column, i.path) for i in found]
    assert located == [
        (2, 8, "env.TOP"),
        (5, 11, "jobs.a.name"),
        (6, 9, "jobs.a.if"),
        (8, 10, "jobs.a.outputs.v"),
        (11, 14, "jobs.a.steps[0].run"),
        (13, 14, "jobs.a.steps[0].env.E"),
    ]
    assert all("invalid expression" in i.message for i in found)
    assert "success(" in found[2].message


def test_if_that_mixes_text_and_expressions() -> None:
    assert errors(
        """
        jobs:
          a:
            if: ${{ github.ref }} == 'main'
            steps: [{run: x}]
        """
    ) == [
        "faena.yml:3:9 jobs.a.if: mixes text and ${{ }}; "
        "write the whole condition as one expression"
    ]


def test_needs_references_must_be_listed_in_needs() -> None:
    assert errors(
        """
        env:
          X: ${{ needs.a.outputs.v }}
        jobs:
          a:
            outputs: [v]
            steps: [{run: x}]
          b:
            steps: [{run: x}]
          c:
            needs: b
            if: needs.a.result == 'success'
            steps:
              - run: echo ${{ needs.b.outputs.v }} ${{ needs.a.outputs.v }}
        """
    ) == [
        "faena.yml:2:6 env.X: the needs context is only available inside a job",
        "faena.yml:11:9 jobs.c.if: references needs.a, but job 'c' does not list 'a' in needs",
        "faena.yml:13:14 jobs.c.steps[0].run: references needs.a, but job 'c' does not list 'a' "
        "in needs",
    ]


def test_matrix_and_step_references_are_checked() -> None:
    assert errors(
        """
        jobs:
          a:
            matrix: {python: ["3.12"]}
            runs-on: ${{ steps.x.outputs.os }}
            steps:
              - id: first
                run: echo ${{ matrix.pyhton }} ${{ steps.frist.outputs.v }}
          b:
            steps:
              - run: echo ${{ matrix.os }}
        """
    ) == [
        "faena.yml:4:14 jobs.a.runs-on: the steps context is only available in steps and job "
        "outputs",
        "faena.yml:7:14 jobs.a.steps[0].run: unknown matrix key 'pyhton' (did you mean 'python'?)",
        "faena.yml:7:14 jobs.a.steps[0].run: unknown step id 'frist' (did you mean 'first'?)",
        "faena.yml:10:14 jobs.b.steps[0].run: references the matrix, but job 'b' has no matrix",
    ]


def test_status_functions_only_in_if() -> None:
    assert errors(
        """
        jobs:
          a:
            steps:
              - run: echo ${{ success() }}
        """
    ) == [
        "faena.yml:4:14 jobs.a.steps[0].run: status functions (success(), failure(), always(), "
        "cancelled()) are only allowed in 'if'"
    ]


def test_matrix_errors() -> None:
    assert errors(
        """
        jobs:
          a:
            matrix: {os: [linux]}
            strategy: {matrix: {os: [linux]}}
            steps: [{run: x}]
          b:
            strategy: {fail-fast: false}
            steps: [{run: x}]
          c:
            matrix:
              os: linux
              py: ${{ fromJSON(needs.a.outputs.py) }}
              exclude:
                - arch: arm
            steps: [{run: x}]
          d:
            matrix: prefix-${{ needs.a.outputs.m }}
            steps: [{run: x}]
          e:
            matrix:
              os: [linux]
              exclude: [{os: linux}]
            steps: [{run: x}]
          f:
            strategy:
              max-parallel: 0
              matrix:
                a: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17]
                b: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16]
            steps: [{run: x}]
        """
    ) == [
        "faena.yml:3:5 jobs.a.matrix: use either 'matrix' or 'strategy.matrix', not both",
        "faena.yml:7:15 jobs.b.strategy: missing required field 'matrix'",
        "faena.yml:11:11 jobs.c.matrix.os: expected a non-empty list of values, got string 'linux'",
        "faena.yml:12:11 jobs.c.matrix.py: an axis must be a list; to compute values at run time "
        "make the whole matrix one expression: matrix: ${{ fromJSON(needs.plan.outputs.matrix) }}",
        "faena.yml:14:11 jobs.c.matrix.exclude[0].arch: 'arch' is not an axis of the matrix",
        "faena.yml:17:13 jobs.d.matrix: a dynamic matrix must be exactly one ${{ expression }}",
        "faena.yml:21:7 jobs.e.matrix: matrix expands to no combinations "
        "(every combination is excluded)",
        "faena.yml:26:21 jobs.f.strategy.max-parallel: must be >= 1, got 0",
        "faena.yml:28:9 jobs.f.strategy.matrix: matrix expands to 272 combinations; "
        "the limit is 256",
    ]


def test_both_timeouts_and_bad_quantities() -> None:
    assert errors(
        """
        jobs:
          a:
            timeout: 5m
            timeout-minutes: 5
            resources: {cpu: lots, memory: 2GG, gpu: -1}
            retry: {max_attempts: 0, backoff: sometimes, delay: soon}
            steps:
              - run: x
                timeout: 0s
                shell: zsh
        """
    ) == [
        "faena.yml:4:5 jobs.a.timeout-minutes: use either 'timeout' or 'timeout-minutes', not both",
        "faena.yml:5:22 jobs.a.resources.cpu: invalid cpu 'lots': use a number of cores "
        "('2', '0.5') or millicores ('500m')",
        "faena.yml:5:36 jobs.a.resources.memory: invalid size '2GG': use bytes or a unit: Ki, Mi, "
        "Gi, Ti (1024) or k, M, G, T (1000), e.g. '512Mi', '2Gi', '1G'",
        "faena.yml:5:46 jobs.a.resources.gpu: must be >= 0, got -1",
        "faena.yml:6:27 jobs.a.retry.max_attempts: must be between 1 and 100, got 0",
        "faena.yml:6:39 jobs.a.retry.backoff: unknown backoff 'sometimes': use fixed, linear, "
        "exponential",
        "faena.yml:6:57 jobs.a.retry.delay: invalid duration 'soon': use a number of seconds or "
        "units ms, s, m, h, d (e.g. '500ms', '30s', '5m', '1h30m')",
        "faena.yml:9:18 jobs.a.steps[0].timeout: must be greater than zero",
        "faena.yml:10:16 jobs.a.steps[0].shell: unknown shell 'zsh' (did you mean 'sh'?): use "
        "bash, sh, python, pwsh or a command with {0} for the script file (e.g. 'bash -e {0}')",
    ]


def test_shell_and_directory_set_twice() -> None:
    assert errors(
        """
        defaults:
          shell: bash
          run: {shell: sh}
        jobs:
          a:
            defaults: {working-directory: x}
            working-directory: y
            steps: [{run: x}]
        """
    ) == [
        "faena.yml:3:9 defaults.run.shell: 'shell' is set twice in defaults",
        "faena.yml:7:5 jobs.a.working-directory: 'working-directory' is also set in "
        "jobs.a.defaults",
    ]


def test_every_issue_is_reported_at_once_in_file_order() -> None:
    found = issues(
        """
        jobs:
          build:
            stpes: []
          test:
            needs: biuld
            timeout: forever
            steps:
              - run: ${{ ) }}
        """
    )
    assert [(i.line, i.path) for i in found] == [
        (3, "jobs.build.stpes"),
        (3, "jobs.build"),
        (5, "jobs.test.needs"),
        (6, "jobs.test.timeout"),
        (8, "jobs.test.steps[0].run"),
    ]
    assert all(i.code is ErrorCode.ORC_VALID and i.file == "faena.yml" for i in found)


def test_error_summary_counts_every_issue() -> None:
    with pytest.raises(SpecValidationError) as info:
        parse_pipeline("jobs:\n  a: 1\n  b: 2\n  c: 3\n  d: 4\n")
    assert len(info.value.issues) == 4
    assert info.value.message.startswith("4 error(s): faena.yml:2:6 jobs.a: expected a mapping")
    assert info.value.message.endswith("(+1 more)")


def test_load_pipeline_on_a_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yml"
    with pytest.raises(SpecValidationError) as info:
        load_pipeline(missing)
    assert [str(i) for i in info.value.issues] == [f"{missing}: file not found"]


def test_load_pipeline_on_a_directory_or_binary(tmp_path: Path) -> None:
    with pytest.raises(SpecValidationError, match="is a directory"):
        load_pipeline(tmp_path)
    binary = tmp_path / "faena.yml"
    binary.write_bytes(b"jobs:\n  \xff\xfe")
    with pytest.raises(SpecValidationError) as info:
        load_pipeline(binary)
    assert info.value.issues[0].message == "not UTF-8 text (byte 8)"


def test_load_pipeline_reports_the_path_as_given(tmp_path: Path) -> None:
    path = tmp_path / "faena.yml"
    path.write_text("jobs:\n  a:\n    steps: [{run: x}]\n    nmae: 1\n", encoding="utf-8")
    with pytest.raises(SpecValidationError) as info:
        load_pipeline(path)
    assert str(info.value) == f"{path}:4:5 jobs.a.nmae: unknown field 'nmae' (did you mean 'name'?)"


# -- YAML details ------------------------------------------------------------------------


def test_merge_key_lists_and_errors() -> None:
    spec = parse(
        """
        x-env: &env {A: "1", B: "2"}
        x-more: &more {C: "3"}
        jobs:
          a:
            env:
              <<: [*env, *more]
              B: "20"
            steps: [{run: x}]
        """
    )
    assert spec.jobs["a"].env == {"A": "1", "C": "3", "B": "20"}
    assert errors(
        """
        jobs:
          a:
            env:
              <<: 3
            steps: [{run: x}]
        """
    ) == ["faena.yml:4:11 jobs.a.env: a merge key '<<' needs a mapping or a list of mappings"]


def test_recursive_alias_is_an_error() -> None:
    assert errors(
        """
        jobs:
          a: &a
            steps: [{run: x}]
            env: *a
        """
    ) == [
        "faena.yml:2:6 jobs.a.env: a recursive alias is not supported",
        "faena.yml:2:6 jobs.a.env: expected a mapping of names to strings, got null",
    ]


def test_alias_bomb_is_rejected_quickly() -> None:
    lines = ['x-a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for n in range(1, 9):
        refs = ", ".join([f"*{chr(96 + n)}"] * 9)
        lines.append(f"x-{chr(97 + n)}: &{chr(97 + n)} [{refs}]")
    lines.append("jobs: {a: {matrix: {v: *i}, steps: [{run: x}]}}")
    with pytest.raises(SpecValidationError, match="more than 1000000 nodes"):
        parse_pipeline("\n".join(lines))


_KEYS = st.sampled_from(
    sorted(
        {*PIPELINE_FIELDS, *JOB_FIELDS, *STEP_FIELDS, *STRATEGY_FIELDS, *RETRY_FIELDS}
        | {*RESOURCES_FIELDS, "include", "exclude", "a", "b"}
    )
)
_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 3),
    st.sampled_from(
        ["a", "b", "1m", "512Mi", "${{ a }}", "${{", "${{ needs.a.outputs.x }}", "${{ matrix.a }}"]
    ),
)
_DATA = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_KEYS, inner, max_size=5),
    max_leaves=15,
)
_JOBS = st.dictionaries(
    st.sampled_from(["a", "b", "c"]), st.dictionaries(_KEYS, _DATA, max_size=6), max_size=3
)


@settings(max_examples=100, deadline=None)
@given(
    st.one_of(st.dictionaries(_KEYS, _DATA, max_size=4), st.builds(lambda j: {"jobs": j}, _JOBS))
)
def test_arbitrary_documents_never_crash(document: dict[str, object]) -> None:
    text = json.dumps(document)  # JSON is YAML
    try:
        parse_pipeline(text)
    except SpecValidationError as exc:
        assert exc.issues
        assert all(i.file == "faena.yml" for i in exc.issues)


def test_the_examples_in_the_user_guide_are_valid() -> None:
    guide = Path(__file__).parents[3] / "docs" / "pipeline-format.md"
    blocks = re.findall(r"```yaml\n(.*?)```", guide.read_text(encoding="utf-8"), re.S)
    pipelines = [b for b in map(textwrap.dedent, blocks) if re.search(r"^jobs:", b, re.M)]
    assert len(pipelines) >= 5
    for text in pipelines:
        parse_pipeline(text, "pipeline-format.md")


def test_tabs_and_control_characters() -> None:
    assert errors("jobs:\n\ta: 1\n") == [
        "faena.yml:2:1 invalid YAML: found character that cannot start any token "
        "(a tab: YAML indentation must use spaces)"
    ]
    assert errors("jobs:\n  a: \x07\n") == [
        "faena.yml:2:6 invalid YAML: unacceptable character #x0007: "
        "control characters are not allowed"
    ]
    assert errors("a: 1\n---\nb: 2\n") == [
        "faena.yml:2:1 invalid YAML: but found another document "
        "(expected a single document in the stream at line 1, column 1)"
    ]


def test_unterminated_expressions() -> None:
    assert errors(
        """
        jobs:
          a:
            if: ${{ success()
            matrix: ${{ fromJSON('[1]')
            steps: [{run: "echo ${{ x"}]
        """
    ) == [
        "faena.yml:3:9 jobs.a.if: invalid expression: unterminated '${{' (missing '}}') "
        "(at character 1)",
        "faena.yml:4:13 jobs.a.matrix: invalid expression: unterminated '${{' (missing '}}') "
        "(at character 1)",
        "faena.yml:5:19 jobs.a.steps[0].run: invalid expression: unterminated '${{' "
        "(missing '}}') (at character 6)",
    ]


def test_debug_pause_on_failure_at_pipeline_and_job_level() -> None:
    spec = parse(
        """
debug: pause-on-failure
jobs:
  a:
    steps: [{run: "true"}]
  b:
    debug: {pause-on-failure: 30m}
    steps: [{run: "true"}]
"""
    )
    assert spec.pause_on_failure == 600.0
    assert spec.jobs["a"].pause_on_failure is None
    assert spec.jobs["b"].pause_on_failure == 1800.0


@pytest.mark.parametrize(
    ("debug", "message"),
    [
        ("pause", "expected 'pause-on-failure' or {pause-on-failure: DURATION}"),
        ("{pause-on-failure: 0s}", "must be more than 0 and at most 24h"),
        ("{pause-on-failure: 2d}", "must be more than 0 and at most 24h"),
        ("{pause-on-failure: soon}", "invalid duration"),
        ("{pause-on-fail: 1m}", "unknown field 'pause-on-fail'"),
    ],
)
def test_debug_errors_name_the_place(debug: str, message: str) -> None:
    found = issues(f"jobs:\n  a:\n    debug: {debug}\n    steps: [{{run: 'true'}}]\n")
    assert found and message in found[0].message, found
    assert found[0].path.startswith("jobs.a.debug") and found[0].line == 3
