"""The job graph: validation of ``needs``, topological order and reachability.

A graph is a mapping from a job key to the keys it needs (its direct dependencies), in
declaration order; edges point from a job to what it needs.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "CycleError",
    "NeedsIssue",
    "downstream",
    "find_cycles",
    "needs_issues",
    "topological_order",
    "upstream",
]

Graph = Mapping[str, Sequence[str]]
NeedsIssueKind = Literal["unknown", "self", "cycle"]


@dataclass(frozen=True)
class NeedsIssue:
    """A problem in one job's ``needs``: ``need`` is the offending entry of ``job``'s list.

    For a cycle, ``cycle`` is the path ``(job, need, ..., job)``.
    """

    job: str
    need: str
    kind: NeedsIssueKind
    message: str
    cycle: tuple[str, ...] = ()

    def __str__(self) -> str:
        return f"{self.job}: {self.message}"


class CycleError(ValueError):
    """The graph has a cycle; ``cycle`` is one of them as ``(a, b, ..., a)``."""

    def __init__(self, cycle: Sequence[str]) -> None:
        self.cycle = tuple(cycle)
        super().__init__(f"dependency cycle: {' -> '.join(self.cycle)}")


def needs_issues(jobs: Graph) -> list[NeedsIssue]:
    """Every unknown need (with a did-you-mean), self need and cycle, in declaration order."""
    issues: list[NeedsIssue] = []
    keys = list(jobs)
    for job, needs in jobs.items():
        for need in needs:
            if need == job:
                issues.append(NeedsIssue(job, need, "self", f"job '{job}' needs itself"))
            elif need not in jobs:
                candidates = [k for k in keys if k != job]
                hint = difflib.get_close_matches(need, candidates, n=1)
                suggestion = f" (did you mean '{hint[0]}'?)" if hint else ""
                issues.append(NeedsIssue(job, need, "unknown", f"unknown job '{need}'{suggestion}"))
    for cycle in find_cycles(jobs):
        path = " -> ".join(cycle)
        issues.append(
            NeedsIssue(cycle[0], cycle[1], "cycle", f"dependency cycle: {path}", cycle=cycle)
        )
    return issues


def find_cycles(jobs: Graph) -> list[tuple[str, ...]]:
    """Cycles (at least one per strongly connected knot) as ``(a, b, ..., a)`` paths.

    Each path starts at its earliest-declared job; self needs and unknown needs are ignored.
    """
    order = {key: index for index, key in enumerate(jobs)}
    state: dict[str, int] = {}  # 1 = on the current DFS path, 2 = finished
    found: dict[tuple[str, ...], None] = {}

    for root in jobs:
        if root in state:
            continue
        # Iterative DFS: deep pipelines must not hit the recursion limit.
        path: list[str] = [root]
        iterators = [iter(_edges(jobs, root))]
        state[root] = 1
        while iterators:
            need = next(iterators[-1], None)
            if need is None:
                state[path.pop()] = 2
                iterators.pop()
                continue
            if state.get(need) == 1:
                loop = path[path.index(need) :]
                first = min(range(len(loop)), key=lambda i: order[loop[i]])
                rotated = (*loop[first:], *loop[:first], loop[first])
                found.setdefault(rotated, None)
            elif need not in state:
                state[need] = 1
                path.append(need)
                iterators.append(iter(_edges(jobs, need)))
    return sorted(found, key=lambda c: (order[c[0]], [order[k] for k in c]))


def topological_order(jobs: Graph) -> list[str]:
    """Keys with every job after all it needs, in waves; each wave keeps declaration order.

    Raises ``CycleError`` on a cycle and ``ValueError`` on a need that is not a key.
    """
    for job, needs in jobs.items():
        for need in needs:
            if need not in jobs:
                raise ValueError(f"job '{job}' needs unknown job '{need}'")
            if need == job:
                raise CycleError((job, job))
    cycles = find_cycles(jobs)
    if cycles:
        raise CycleError(cycles[0])
    index = {key: i for i, key in enumerate(jobs)}
    waiting = {key: len(set(needs)) for key, needs in jobs.items()}
    dependents: dict[str, list[str]] = {}
    for job, needs in jobs.items():
        for need in set(needs):
            dependents.setdefault(need, []).append(job)
    order: list[str] = []
    wave = [key for key in jobs if not waiting[key]]
    while wave:
        order.extend(wave)
        unlocked: list[str] = []
        for key in wave:
            for job in dependents.get(key, ()):
                waiting[job] -= 1
                if not waiting[job]:
                    unlocked.append(job)
        wave = sorted(unlocked, key=index.__getitem__)
    return order


def downstream(jobs: Graph, keys: str | Iterable[str]) -> set[str]:
    """Every job that needs any of ``keys``, directly or transitively (``keys`` excluded)."""
    dependents: dict[str, list[str]] = {}
    for job, needs in jobs.items():
        for need in needs:
            dependents.setdefault(need, []).append(job)
    return _reach(dependents, keys)


def upstream(jobs: Graph, keys: str | Iterable[str]) -> set[str]:
    """Every job that any of ``keys`` needs, directly or transitively (``keys`` excluded)."""
    return _reach(jobs, keys)


def _edges(jobs: Graph, key: str) -> list[str]:
    return [n for n in jobs.get(key, ()) if n != key and n in jobs]


def _reach(edges: Mapping[str, Sequence[str]], keys: str | Iterable[str]) -> set[str]:
    start = {keys} if isinstance(keys, str) else set(keys)
    seen: set[str] = set()
    stack = list(start)
    while stack:
        for nxt in edges.get(stack.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                stack.append(nxt)
    return seen - start
