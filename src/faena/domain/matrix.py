"""Matrix expansion with GitHub Actions semantics: product, then ``exclude``, then ``include``.

``combinations`` gives the value sets; ``expand_job`` turns a template job into concrete
jobs; ``matrix_from_value`` builds a matrix from a value computed at run time.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import replace
from itertools import product
from typing import Any

from faena.domain.expressions import ExpressionError, interpolate
from faena.domain.spec import JobSpec, MatrixSpec, with_matrix

__all__ = [
    "MAX_COMBINATIONS",
    "combination_label",
    "combinations",
    "expand_job",
    "matrix_from_value",
    "render_value",
]

MAX_COMBINATIONS = 256  # GitHub's limit of jobs per matrix
# Guard before materialising the product, so a huge matrix fails fast instead of using memory.
_MAX_PRODUCT = 65536


def combinations(matrix: MatrixSpec) -> list[dict[str, Any]]:
    """The matrix's value sets in expansion order; ValueError if empty or above the cap."""
    if matrix.dynamic:
        raise ValueError("a dynamic matrix must be evaluated first (see matrix_from_value)")
    _check_structure(matrix.axes, matrix.include, matrix.exclude)
    axes = matrix.axes
    size = math.prod(len(v) for v in axes.values()) if axes else 0
    if size > _MAX_PRODUCT:
        raise ValueError(
            f"matrix has {size} combinations before exclude; the limit is {MAX_COMBINATIONS}"
        )
    originals: list[dict[str, Any]] = []
    if axes:
        for values in product(*axes.values()):
            combo = dict(zip(axes, values, strict=True))
            if not any(_matches(combo, rule) for rule in matrix.exclude):
                originals.append(combo)
    extras: list[dict[str, Any]] = []
    for entry in matrix.include:
        # GitHub: extend every original combination whose axis values the entry would not
        # overwrite (values added by earlier includes may be overwritten); else a new one.
        added = False
        for combo in originals:
            if all(k not in axes or _same(combo[k], v) for k, v in entry.items()):
                combo.update(entry)
                added = True
        if not added:
            extras.append(dict(entry))
    result = originals + extras
    if not result:
        raise ValueError("matrix expands to no combinations (every combination is excluded)")
    if len(result) > MAX_COMBINATIONS:
        raise ValueError(
            f"matrix expands to {len(result)} combinations; the limit is {MAX_COMBINATIONS}"
        )
    return result


def expand_job(
    job: JobSpec, matrix: MatrixSpec, *, context: Mapping[str, Any] | None = None
) -> list[JobSpec]:
    """Concrete jobs, one per combination: key ``test (py=3.12, os=linux)``, template = job.key.

    A name with ``${{ }}`` is interpolated with ``matrix`` (plus ``context``); any other name
    gets the values appended, like the key. ``runs_on`` and ``image`` are interpolated too,
    because placement needs them before the job starts.
    """
    jobs: list[JobSpec] = []
    used: set[str] = set()
    for values in combinations(matrix):
        label = combination_label(values)
        key = f"{job.key} ({label})"
        # Distinct values can render alike (1 and "1"); keys must stay unique.
        suffix = 2
        while key in used:
            key = f"{job.key} ({label}) #{suffix}"
            suffix += 1
        used.add(key)
        scope = {**(context or {}), "matrix": values}
        if "${{" in job.name:
            name = _interpolate(job, "name", job.name, scope)
        else:
            name = f"{job.name} ({label})"
        concrete = with_matrix(job, key, name, values)
        runs_on = [_interpolate(job, "runs-on", label_, scope) for label_ in job.runs_on]
        image = _interpolate(job, "image", job.image, scope) if job.image else job.image
        jobs.append(replace(concrete, runs_on=runs_on, image=image))
    return jobs


def matrix_from_value(value: object, *, base: MatrixSpec | None = None) -> MatrixSpec:
    """A static matrix from a run-time value: axes (+ include/exclude) or a list of objects.

    A JSON string is decoded first. ``base`` supplies ``fail_fast`` and ``max_parallel``.
    """
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise ValueError(
                f"dynamic matrix is a string that is not JSON: {_short(value)}; "
                "produce an object or a list, e.g. with fromJSON(...)"
            ) from None
    fail_fast = base.fail_fast if base else True
    max_parallel = base.max_parallel if base else None
    if isinstance(value, list):
        if not value:
            raise ValueError("dynamic matrix is an empty list; expected at least one object")
        for index, item in enumerate(value):
            if not isinstance(item, dict) or not item:
                raise ValueError(
                    f"dynamic matrix item {index} must be a non-empty object, got {_short(item)}"
                )
        include = [{str(k): v for k, v in item.items()} for item in value]
        return MatrixSpec(include=include, fail_fast=fail_fast, max_parallel=max_parallel)
    if isinstance(value, dict):
        axes = {str(k): v for k, v in value.items() if k not in ("include", "exclude")}
        include = value.get("include", [])
        exclude = value.get("exclude", [])
        _check_structure(axes, include, exclude)
        return MatrixSpec(
            axes=axes,
            include=list(include),
            exclude=list(exclude),
            fail_fast=fail_fast,
            max_parallel=max_parallel,
        )
    raise ValueError(
        "dynamic matrix must be an object of axes (with optional include/exclude) "
        f"or a list of objects, got {_short(value)}"
    )


def combination_label(values: Mapping[str, Any]) -> str:
    """``py=3.12, os=linux``: how a combination is shown in keys and names."""
    return ", ".join(f"{k}={render_value(v)}" for k, v in values.items())


def render_value(value: object) -> str:
    """A matrix value as text: strings as is, scalars like JSON, objects as compact JSON."""
    if isinstance(value, str):
        return value
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    if isinstance(value, int | float):
        return str(value)
    return json.dumps(value, separators=(",", ":"), default=str)


def _check_structure(axes: Mapping[str, Any], include: object, exclude: object) -> None:
    for name, values in axes.items():
        if not isinstance(values, list) or not values:
            raise ValueError(f"matrix axis '{name}' must be a non-empty list, got {_short(values)}")
    for field, rules in (("include", include), ("exclude", exclude)):
        if not isinstance(rules, list):
            raise ValueError(f"matrix {field} must be a list of objects, got {_short(rules)}")
        for index, rule in enumerate(rules):
            if not isinstance(rule, dict) or not rule:
                raise ValueError(
                    f"matrix {field}[{index}] must be a non-empty object, got {_short(rule)}"
                )
            unknown = [k for k in rule if k not in axes] if field == "exclude" else []
            if unknown:
                # GitHub rejects these too: such a rule could never match anything.
                raise ValueError(
                    f"matrix exclude[{index}] key '{unknown[0]}' is not an axis of the matrix"
                )


def _matches(combo: Mapping[str, Any], rule: Mapping[str, Any]) -> bool:
    """An exclude rule matches when all its pairs match: a partial match is enough."""
    return all(k in combo and _same(combo[k], v) for k, v in rule.items())


def _same(a: object, b: object) -> bool:
    # True == 1 in Python, but a matrix value `true` is not the value `1`.
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    return a == b


def _interpolate(job: JobSpec, field: str, text: str, scope: Mapping[str, Any]) -> str:
    if "${{" not in text:
        return text
    try:
        return interpolate(text, scope)
    except ExpressionError as exc:
        raise ValueError(f"job '{job.key}' {field} {text!r}: {exc.message}") from None


def _short(value: object) -> str:
    text = json.dumps(value, default=str) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
