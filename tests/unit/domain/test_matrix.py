"""Matrix expansion, following GitHub Actions' documented examples."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from faena.domain.matrix import (
    MAX_COMBINATIONS,
    combinations,
    expand_job,
    matrix_from_value,
    render_value,
)
from faena.domain.spec import JobSpec, MatrixSpec, StepSpec


def job(key: str = "test", name: str | None = None, **changes: Any) -> JobSpec:
    return replace(JobSpec(key=key, name=name or key, steps=[StepSpec("s", "echo")]), **changes)


def test_product_in_declaration_order_first_axis_slowest() -> None:
    matrix = MatrixSpec(axes={"os": ["linux", "mac"], "py": ["3.11", "3.12"]})
    assert combinations(matrix) == [
        {"os": "linux", "py": "3.11"},
        {"os": "linux", "py": "3.12"},
        {"os": "mac", "py": "3.11"},
        {"os": "mac", "py": "3.12"},
    ]


def test_github_exclude_example_partial_match() -> None:
    # docs.github.com: "Excluding matrix configurations"; 12 - 1 - 2 = 9 jobs.
    matrix = MatrixSpec(
        axes={
            "os": ["macos-latest", "windows-latest"],
            "version": [12, 14, 16],
            "environment": ["staging", "production"],
        },
        exclude=[
            {"os": "macos-latest", "version": 12, "environment": "production"},
            {"os": "windows-latest", "version": 16},
        ],
    )
    result = combinations(matrix)
    assert len(result) == 9
    assert {"os": "macos-latest", "version": 12, "environment": "production"} not in result
    assert not [c for c in result if c["os"] == "windows-latest" and c["version"] == 16]


def test_github_include_example_expanding_and_adding() -> None:
    # docs.github.com: "Example: Expanding configurations".
    matrix = MatrixSpec(
        axes={"fruit": ["apple", "pear"], "animal": ["cat", "dog"]},
        include=[
            {"color": "green"},
            {"color": "pink", "animal": "cat"},
            {"fruit": "apple", "shape": "circle"},
            {"fruit": "banana"},
            {"fruit": "banana", "animal": "cat"},
        ],
    )
    assert combinations(matrix) == [
        {"fruit": "apple", "animal": "cat", "color": "pink", "shape": "circle"},
        {"fruit": "apple", "animal": "dog", "color": "green", "shape": "circle"},
        {"fruit": "pear", "animal": "cat", "color": "pink"},
        {"fruit": "pear", "animal": "dog", "color": "green"},
        {"fruit": "banana"},
        {"fruit": "banana", "animal": "cat"},
    ]


def test_github_include_example_adding_to_one_combination() -> None:
    # docs.github.com: "Example: Adding configurations".
    matrix = MatrixSpec(
        axes={"os": ["windows-latest", "ubuntu-latest"], "node": [14, 16]},
        include=[{"os": "windows-latest", "node": 16, "npm": 6}],
    )
    result = combinations(matrix)
    assert len(result) == 4
    assert result[1] == {"os": "windows-latest", "node": 16, "npm": 6}
    assert all("npm" not in c for i, c in enumerate(result) if i != 1)


def test_include_only_matrix() -> None:
    # docs.github.com: a matrix of only include entries makes one job per entry.
    matrix = MatrixSpec(
        include=[
            {"site": "production", "datacenter": "site-a"},
            {"site": "staging", "datacenter": "site-b"},
        ]
    )
    assert combinations(matrix) == matrix.include


def test_include_runs_after_exclude() -> None:
    matrix = MatrixSpec(
        axes={"os": ["linux", "mac"]},
        exclude=[{"os": "mac"}],
        include=[{"os": "mac", "experimental": True}],
    )
    assert combinations(matrix) == [{"os": "linux"}, {"os": "mac", "experimental": True}]


def test_booleans_are_not_numbers_when_matching() -> None:
    matrix = MatrixSpec(axes={"flag": [True, 1]}, exclude=[{"flag": 1}])
    assert combinations(matrix) == [{"flag": True}]


def test_errors() -> None:
    with pytest.raises(ValueError, match="no combinations"):
        combinations(MatrixSpec(axes={"os": ["linux"]}, exclude=[{"os": "linux"}]))
    with pytest.raises(ValueError, match="no combinations"):
        combinations(MatrixSpec())
    with pytest.raises(ValueError, match="non-empty list"):
        combinations(MatrixSpec(axes={"os": []}))
    with pytest.raises(ValueError, match="'arch' is not an axis"):
        combinations(MatrixSpec(axes={"os": ["linux"]}, exclude=[{"arch": "arm"}]))
    with pytest.raises(ValueError, match="evaluated first"):
        combinations(MatrixSpec(expression="fromJSON(x)"))


def test_cap_at_256_combinations() -> None:
    ok = MatrixSpec(axes={"a": list(range(16)), "b": list(range(16))})
    assert len(combinations(ok)) == MAX_COMBINATIONS
    too_many = MatrixSpec(axes={"a": list(range(16)), "b": list(range(17))})
    with pytest.raises(ValueError, match="272 combinations; the limit is 256"):
        combinations(too_many)
    huge = MatrixSpec(axes={k: list(range(10)) for k in "abcdefgh"})
    with pytest.raises(ValueError, match="limit is 256"):
        combinations(huge)


def test_expand_job_keys_names_and_template() -> None:
    matrix = MatrixSpec(axes={"py": ["3.12", "3.13"], "os": ["linux"]})
    template = job(strategy=matrix)
    jobs = expand_job(template, matrix)
    assert [j.key for j in jobs] == ["test (py=3.12, os=linux)", "test (py=3.13, os=linux)"]
    assert [j.name for j in jobs] == [j.key for j in jobs]
    first = jobs[0]
    assert first.matrix == {"py": "3.12", "os": "linux"}
    assert first.template == "test"
    assert first.strategy is None
    assert first.steps == template.steps


def test_expand_job_interpolates_a_name_with_expressions() -> None:
    matrix = MatrixSpec(axes={"py": ["3.12"], "os": ["linux"]})
    [concrete] = expand_job(job(name="Python ${{ matrix.py }} on ${{ matrix.os }}"), matrix)
    assert concrete.name == "Python 3.12 on linux"
    assert concrete.key == "test (py=3.12, os=linux)"


def test_expand_job_appends_values_to_a_plain_name() -> None:
    [concrete] = expand_job(job(name="Unit tests"), MatrixSpec(axes={"py": ["3.12"]}))
    assert concrete.name == "Unit tests (py=3.12)"


def test_expand_job_interpolates_runs_on_and_image() -> None:
    matrix = MatrixSpec(axes={"os": ["linux", "mac"]})
    template = job(runs_on=["${{ matrix.os }}", "gpu"], image="python:${{ matrix.os }}")
    jobs = expand_job(template, matrix)
    assert [j.runs_on for j in jobs] == [["linux", "gpu"], ["mac", "gpu"]]
    assert [j.image for j in jobs] == ["python:linux", "python:mac"]


def test_expand_job_name_can_use_extra_context() -> None:
    [concrete] = expand_job(
        job(name="${{ env.KIND }}-${{ matrix.n }}"),
        MatrixSpec(axes={"n": [1]}),
        context={"env": {"KIND": "shard"}},
    )
    assert concrete.name == "shard-1"


def test_values_are_rendered_as_text() -> None:
    assert render_value("x") == "x"
    assert render_value(True) == "true"
    assert render_value(None) == "null"
    assert render_value(3) == "3"
    assert render_value(3.5) == "3.5"
    assert render_value({"a": [1, 2]}) == '{"a":[1,2]}'
    matrix = MatrixSpec(axes={"cfg": [{"os": "linux", "arch": "arm"}], "debug": [False]})
    [concrete] = expand_job(job(), matrix)
    assert concrete.key == 'test (cfg={"os":"linux","arch":"arm"}, debug=false)'


def test_keys_stay_unique_when_values_render_alike() -> None:
    jobs = expand_job(job(), MatrixSpec(axes={"v": [1, "1"]}))
    assert [j.key for j in jobs] == ["test (v=1)", "test (v=1) #2"]


def test_matrix_from_axes_object() -> None:
    base = MatrixSpec(expression="fromJSON(x)", fail_fast=False, max_parallel=2)
    matrix = matrix_from_value(
        {"os": ["linux", "mac"], "exclude": [{"os": "mac"}], "include": [{"os": "bsd"}]},
        base=base,
    )
    assert matrix.axes == {"os": ["linux", "mac"]}
    assert matrix.exclude == [{"os": "mac"}]
    assert matrix.include == [{"os": "bsd"}]
    assert (matrix.fail_fast, matrix.max_parallel, matrix.dynamic) == (False, 2, False)
    assert combinations(matrix) == [{"os": "linux"}, {"os": "bsd"}]


def test_matrix_from_list_of_objects() -> None:
    matrix = matrix_from_value([{"target": "a", "n": 1}, {"target": "b", "n": 2}])
    jobs = expand_job(job("build"), matrix)
    assert [j.key for j in jobs] == ["build (target=a, n=1)", "build (target=b, n=2)"]
    assert [j.matrix for j in jobs] == [{"target": "a", "n": 1}, {"target": "b", "n": 2}]


def test_matrix_from_json_text() -> None:
    assert matrix_from_value('[{"a": 1}]').include == [{"a": 1}]
    assert matrix_from_value('{"a": [1, 2]}').axes == {"a": [1, 2]}


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (42, "must be an object of axes"),
        (None, "must be an object of axes"),
        ("not json", "not JSON"),
        ([], "empty list"),
        ([{"a": 1}, "b"], "item 1 must be a non-empty object"),
        ([{}], "item 0 must be a non-empty object"),
        ({"a": "linux"}, "axis 'a' must be a non-empty list"),
        ({"a": [1], "include": {"a": 2}}, "include must be a list"),
        ({"a": [1], "exclude": [{"b": 1}]}, "'b' is not an axis"),
    ],
)
def test_matrix_from_value_rejects(value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        matrix_from_value(value)


def test_empty_dynamic_expansion_is_an_error() -> None:
    with pytest.raises(ValueError, match="no combinations"):
        expand_job(job(), matrix_from_value({}))
