"""The job graph: needs validation, topological order and reachability."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from faena.domain.dag import (
    CycleError,
    NeedsIssue,
    downstream,
    find_cycles,
    needs_issues,
    topological_order,
    upstream,
)

DIAMOND = {
    "build": [],
    "lint": [],
    "test": ["build"],
    "docs": ["build"],
    "deploy": ["test", "docs"],
}


def test_valid_graph_has_no_issues() -> None:
    assert needs_issues(DIAMOND) == []


def test_unknown_need_suggests_a_close_job() -> None:
    issues = needs_issues({"build": [], "test": ["biuld"]})
    assert issues == [
        NeedsIssue("test", "biuld", "unknown", "unknown job 'biuld' (did you mean 'build'?)")
    ]
    assert str(issues[0]) == "test: unknown job 'biuld' (did you mean 'build'?)"


def test_unknown_need_without_close_match() -> None:
    [issue] = needs_issues({"build": [], "test": ["zzz"]})
    assert issue.message == "unknown job 'zzz'"


def test_self_need() -> None:
    assert needs_issues({"a": ["a"]}) == [NeedsIssue("a", "a", "self", "job 'a' needs itself")]


def test_two_job_cycle_is_named_from_the_first_declared_job() -> None:
    [issue] = needs_issues({"a": ["b"], "b": ["a"]})
    assert issue.kind == "cycle"
    assert issue.job == "a"
    assert issue.need == "b"
    assert issue.cycle == ("a", "b", "a")
    assert issue.message == "dependency cycle: a -> b -> a"


def test_longer_cycle_and_independent_jobs() -> None:
    graph = {"x": [], "a": ["c"], "b": ["a"], "c": ["b", "x"], "y": ["x"]}
    assert find_cycles(graph) == [("a", "c", "b", "a")]


def test_two_separate_cycles_are_both_reported() -> None:
    graph = {"a": ["b"], "b": ["a"], "c": ["d"], "d": ["c"]}
    assert [i.cycle for i in needs_issues(graph)] == [("a", "b", "a"), ("c", "d", "c")]


def test_unknown_and_self_needs_do_not_count_as_cycles() -> None:
    issues = needs_issues({"a": ["a", "nope"], "b": ["a"]})
    assert [i.kind for i in issues] == ["self", "unknown"]


def test_topological_order_keeps_declaration_order_within_a_wave() -> None:
    assert topological_order(DIAMOND) == ["build", "lint", "test", "docs", "deploy"]


def test_topological_order_rejects_cycles_and_unknown_needs() -> None:
    with pytest.raises(CycleError) as info:
        topological_order({"a": ["b"], "b": ["a"]})
    assert info.value.cycle == ("a", "b", "a")
    assert "a -> b -> a" in str(info.value)
    with pytest.raises(CycleError):
        topological_order({"a": ["a"]})
    with pytest.raises(ValueError, match="unknown job 'z'"):
        topological_order({"a": ["z"]})


def test_downstream_and_upstream() -> None:
    assert downstream(DIAMOND, "build") == {"test", "docs", "deploy"}
    assert downstream(DIAMOND, ["test"]) == {"deploy"}
    assert downstream(DIAMOND, "deploy") == set()
    assert downstream(DIAMOND, ["build", "test"]) == {"docs", "deploy"}
    assert upstream(DIAMOND, "deploy") == {"test", "docs", "build"}
    assert upstream(DIAMOND, {"lint"}) == set()


def test_deep_chain_does_not_hit_the_recursion_limit() -> None:
    graph = {f"j{i}": [f"j{i - 1}"] if i else [] for i in range(5000)}
    assert needs_issues(graph) == []
    assert topological_order(graph)[-1] == "j4999"
    graph["j0"] = ["j4999"]
    [issue] = needs_issues(graph)
    assert issue.kind == "cycle"
    assert len(issue.cycle) == 5001


@st.composite
def dags(draw: st.DrawFn) -> dict[str, list[str]]:
    """A random DAG: each job may only need jobs generated before it, then shuffled."""
    size = draw(st.integers(min_value=1, max_value=25))
    keys = [f"job{i}" for i in range(size)]
    graph = {
        key: draw(st.lists(st.sampled_from(keys[:i]), unique=True)) if i else []
        for i, key in enumerate(keys)
    }
    order = draw(st.permutations(keys))
    return {key: graph[key] for key in order}


@given(dags())
def test_random_dag_has_an_order_respecting_every_edge(graph: dict[str, list[str]]) -> None:
    assert needs_issues(graph) == []
    order = topological_order(graph)
    assert sorted(order) == sorted(graph)
    position = {key: index for index, key in enumerate(order)}
    for job, needs in graph.items():
        for need in needs:
            assert position[need] < position[job]


@given(dags(), st.data())
def test_a_back_edge_yields_a_cycle_report(
    graph: dict[str, list[str]], data: st.DataObject
) -> None:
    edges = [(job, need) for job, needs in graph.items() for need in needs]
    if not edges:
        return
    job, need = data.draw(st.sampled_from(edges))
    # `need` already depends on nothing that reaches `job`; making it need `job` closes a loop.
    graph = {**graph, need: [*graph[need], job]}
    cycles = [i for i in needs_issues(graph) if i.kind == "cycle"]
    assert cycles
    for issue in cycles:
        assert issue.cycle[0] == issue.cycle[-1]
        for a, b in zip(issue.cycle, issue.cycle[1:], strict=False):
            assert b in graph[a]
    with pytest.raises(CycleError):
        topological_order(graph)


@given(dags(), st.data())
def test_downstream_is_the_inverse_of_upstream(
    graph: dict[str, list[str]], data: st.DataObject
) -> None:
    key = data.draw(st.sampled_from(list(graph)))
    for other in graph:
        assert (other in downstream(graph, key)) == (key in upstream(graph, other))
