"""The ``faena.yml`` reader: a YAML node tree to a validated ``PipelineSpec``.

Validation never stops at the first problem: every issue is collected with its file, line,
column and dotted field path, and raised together in one ``SpecValidationError``.
The format is documented in ``docs/pipeline-format.md``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from faena.domain import dag, expressions
from faena.domain.durations import parse_duration
from faena.domain.errors import SpecValidationError
from faena.domain.matrix import combinations
from faena.domain.spec import (
    BACKOFFS,
    Backoff,
    JobSpec,
    MatrixSpec,
    PipelineSpec,
    Resources,
    RetryPolicy,
    ServiceSpec,
    StepSpec,
)
from faena.spec.node_reader import hint, join_path, sorted_issues
from faena.spec.worker_fields import WorkerFieldsReader
from faena.spec.yaml_positions import (
    MappingNode,
    Node,
    ScalarNode,
    SequenceNode,
    describe,
    load_yaml,
    to_python,
)

__all__ = ["parse_pipeline"]

T = TypeVar("T")

SHELLS = ("bash", "sh", "python", "pwsh")
STEP_NAME_MAX = 60
MAX_ATTEMPTS = 100

PIPELINE_FIELDS = ("name", "on", "env", "defaults", "debug", "jobs")
DEBUG_FIELDS = ("pause-on-failure",)
DEFAULT_PAUSE = 600.0
MAX_PAUSE = 24 * 3600.0
JOB_FIELDS = (
    "name",
    "debug",
    "needs",
    "steps",
    "env",
    "if",
    "strategy",
    "matrix",
    "retry",
    "timeout",
    "timeout-minutes",
    "resources",
    "runs-on",
    "image",
    "services",
    "keep-failed",
    "outputs",
    "continue-on-error",
    "defaults",
    "shell",
    "working-directory",
)
STEP_FIELDS = (
    "name",
    "id",
    "run",
    "shell",
    "env",
    "working-directory",
    "if",
    "continue-on-error",
    "timeout",
    "timeout-minutes",
    "retry",
)
DEFAULTS_FIELDS = ("run", "shell", "working-directory")
DEFAULTS_RUN_FIELDS = ("shell", "working-directory")
STRATEGY_FIELDS = ("matrix", "fail-fast", "max-parallel")
RETRY_FIELDS = ("max_attempts", "max-attempts", "backoff", "delay")
# Keys people bring from GitHub Actions that have no meaning here: explain instead of guessing.
_UNSUPPORTED = {
    "uses": "actions ('uses') are not supported; write the commands in 'run'",
    "with": "'with' belongs to actions, which are not supported; use 'env' to pass values",
    "ports": "services share the job's network: reach them at localhost:<port>, no 'ports'",
}


@dataclass(frozen=True)
class _Scope:
    """What an expression may reference where it appears."""

    job: str | None = None  # None: pipeline level, outside any job
    needs: frozenset[str] = frozenset()
    has_matrix: bool = False
    matrix_keys: frozenset[str] | None = None  # None: unknown (dynamic) or no matrix
    steps: frozenset[str] | None = None  # None: the steps context is not available here
    is_if: bool = False


@dataclass
class _Needs:
    """Where a job's needs were written, to locate graph issues."""

    node: Node
    items: dict[str, Node] = field(default_factory=dict)


def parse_pipeline(text: str, filename: str = "faena.yml") -> PipelineSpec:
    """Parse and validate ``faena.yml`` text; raises ``SpecValidationError`` with every issue."""
    root, issues = load_yaml(text, filename)
    if root is None and issues:
        raise SpecValidationError(issues=issues)
    reader = _Reader(filename)
    reader.issues.extend(issues)
    spec = reader.pipeline(root)
    if reader.issues or spec is None:
        raise SpecValidationError(issues=sorted_issues(reader.issues))
    return spec


class _Reader(WorkerFieldsReader):
    """One validation pass over a pipeline file; ``issues`` collects every problem."""

    def __init__(self, filename: str) -> None:
        super().__init__(filename, unsupported=_UNSUPPORTED)

    # -- expressions ---------------------------------------------------------------------

    def template(self, node: Node, path: str, text: str, scope: _Scope) -> None:
        """Every ``${{ }}`` in ``text`` must parse and reference only what ``scope`` offers."""
        if "${{" not in text:
            return
        try:
            found = expressions.find_expressions(text)
        except expressions.ExpressionError as exc:
            self.issue(
                node, path, f"invalid expression: {exc.detail} (at character {exc.position + 1})"
            )
            return
        for _offset, source in found:
            expr = self.parse_expression(node, path, source)
            if expr is not None:
                self.check_references(node, path, expr, scope)

    def condition(self, node: Node, path: str, scope: _Scope) -> str | None:
        """An ``if``: the expression source without ``${{ }}``, parsed and checked."""
        if isinstance(node, ScalarNode) and isinstance(node.value, bool):
            return "true" if node.value else "false"
        text = self.string(node, path)
        if text is None:
            return None
        source = self.unwrap(node, path, text)
        if source is None:
            return None
        if "${{" in source:
            # GitHub treats such a value as a non-empty string, which is always true.
            self.issue(
                node,
                path,
                "mixes text and ${{ }}; write the whole condition as one expression",
            )
            return None
        expr = self.parse_expression(node, path, source)
        if expr is not None:
            self.check_references(node, path, expr, replace(scope, is_if=True))
        return source

    def unwrap(self, node: Node, path: str, text: str) -> str | None:
        """``text`` without an enclosing ``${{ }}``; None (reported) if it does not lex."""
        try:
            return expressions.strip_wrapper(text).strip()
        except expressions.ExpressionError as exc:
            self.issue(
                node, path, f"invalid expression: {exc.detail} (at character {exc.position + 1})"
            )
            return None

    def parse_expression(self, node: Node, path: str, source: str) -> expressions.Expr | None:
        try:
            return expressions.parse(source)
        except expressions.ExpressionError as exc:
            shown = source.strip()
            shown = shown if len(shown) <= 60 else shown[:57] + "..."
            self.issue(
                node,
                path,
                f"invalid expression '{shown}': {exc.detail} (at character {exc.position + 1})",
            )
            return None

    def check_references(
        self, node: Node, path: str, expr: expressions.Expr, scope: _Scope
    ) -> None:
        if not scope.is_if and expressions.uses_status_function(expr):
            self.issue(
                node,
                path,
                "status functions (success(), failure(), always(), cancelled()) "
                "are only allowed in 'if'",
            )
        for ref in sorted(expressions.references(expr)):
            message = _reference_problem(ref, scope)
            if message:
                self.issue(node, path, message)

    # -- pipeline ------------------------------------------------------------------------

    def pipeline(self, root: Node | None) -> PipelineSpec | None:
        if root is None:
            self.issue(None, "", "the file is empty; expected a mapping with 'jobs'")
            return None
        if not isinstance(root, MappingNode):
            self.issue(
                root, "", f"expected a mapping with 'jobs' at the top level, got {describe(root)}"
            )
            return None
        self.mapping(root, "", PIPELINE_FIELDS, extensions=True)
        items = root.items
        # os.path, not pathlib: importing pathlib alone costs ~6 ms of `faena validate`.
        stem = os.path.splitext(os.path.basename(self.filename))[0]  # noqa: PTH119, PTH122
        name = stem or "pipeline"
        if "name" in items:
            name = self.string(items["name"], "name") or name
        scope = _Scope()
        env = self.env(items["env"], "env", scope) if "env" in items else {}
        shell, working_directory = None, None
        if "defaults" in items:
            shell, working_directory = self.defaults(items["defaults"], "defaults", scope)
        pause = self.debug(items["debug"], "debug") if "debug" in items else None
        jobs = self.jobs(root)
        return PipelineSpec(
            name=name,
            jobs=jobs,
            env=env,
            shell=shell,
            working_directory=working_directory,
            source=self.filename,
            pause_on_failure=pause,
        )

    def debug(self, node: Node, path: str) -> float | None:
        """``debug: pause-on-failure`` (10 minutes) or ``debug: {pause-on-failure: 30m}``."""
        if isinstance(node, ScalarNode) and node.value == "pause-on-failure":
            return DEFAULT_PAUSE
        if not isinstance(node, MappingNode):
            self.expected(node, path, "'pause-on-failure' or {pause-on-failure: DURATION}")
            return None
        debug = self.mapping(node, path, DEBUG_FIELDS)
        if debug is None or "pause-on-failure" not in debug.items:
            return None
        where = f"{path}.pause-on-failure"
        value = debug.items["pause-on-failure"]
        seconds = self.quantity(value, where, parse_duration)
        if seconds is not None and not 0 < seconds <= MAX_PAUSE:
            self.issue(value, where, "must be more than 0 and at most 24h")
            return None
        return seconds

    def env(self, node: Node, path: str, scope: _Scope) -> dict[str, str]:
        """A map of names to strings; scalar values become text (``true`` -> ``'true'``)."""
        if not isinstance(node, MappingNode):
            self.expected(node, path, "a mapping of names to strings")
            return {}
        env: dict[str, str] = {}
        for key, value in node.items.items():
            where = join_path(path, key)
            if not key or "=" in key or "\0" in key:
                self.issue(node.keys[key], where, f"invalid variable name '{key}'")
                continue
            if not isinstance(value, ScalarNode):
                self.expected(value, where, "a string")
                continue
            env[key] = _env_text(value)
            self.template(value, where, env[key], scope)
        return env

    def defaults(self, node: Node, path: str, scope: _Scope) -> tuple[str | None, str | None]:
        """``defaults``: ``run: {shell, working-directory}`` or the two fields directly."""
        mapping = self.mapping(node, path, DEFAULTS_FIELDS)
        if mapping is None:
            return None, None
        values: dict[str, str | None] = {"shell": None, "working-directory": None}
        sources: list[tuple[MappingNode, str]] = [(mapping, path)]
        if "run" in mapping.items:
            run = self.mapping(mapping.items["run"], f"{path}.run", DEFAULTS_RUN_FIELDS)
            if run is not None:
                sources.append((run, f"{path}.run"))
        for source, where in sources:
            for key in values:
                if key not in source.items:
                    continue
                if values[key] is not None:
                    self.issue(
                        source.keys[key], f"{where}.{key}", f"'{key}' is set twice in {path}"
                    )
                    continue
                values[key] = self.shell_or_directory(
                    source.items[key], f"{where}.{key}", key, scope
                )
        return values["shell"], values["working-directory"]

    def shell_or_directory(self, node: Node, path: str, key: str, scope: _Scope) -> str | None:
        if key == "shell":
            return self.shell(node, path)
        text = self.string(node, path)
        if text is not None:
            self.template(node, path, text, scope)
        return text

    def shell(self, node: Node, path: str) -> str | None:
        text = self.string(node, path)
        if text is None:
            return None
        if text not in SHELLS and "{0}" not in text:
            self.issue(
                node,
                path,
                f"unknown shell '{text}'{hint(text, SHELLS)}: use {', '.join(SHELLS)} "
                "or a command with {0} for the script file (e.g. 'bash -e {0}')",
            )
            return None
        return text

    # -- jobs ----------------------------------------------------------------------------

    def jobs(self, root: MappingNode) -> dict[str, JobSpec]:
        node = root.items.get("jobs")
        if node is None:
            self.issue(root, "", "missing required field 'jobs'")
            return {}
        if not isinstance(node, MappingNode) or not node.items:
            self.expected(node, "jobs", "a non-empty mapping of jobs")
            return {}
        # Needs first: expressions anywhere in a job are checked against them.
        needs: dict[str, list[str]] = {}
        where: dict[str, _Needs] = {}
        for key, job in node.items.items():
            if isinstance(job, MappingNode) and "needs" in job.items:
                located = self.needs(job.items["needs"], f"jobs.{key}.needs")
                needs[key] = list(located.items)
                where[key] = located
            else:
                needs[key] = []
        jobs: dict[str, JobSpec] = {}
        for key, job in node.items.items():
            path = f"jobs.{key}"
            valid_key = self.identifier(node.keys[key], path, "job id", key)
            spec = self.job(job, path, key, needs[key])
            if spec is not None and valid_key:
                jobs[key] = spec
        for problem in dag.needs_issues(needs):
            located = where[problem.job]
            self.issue(
                located.items.get(problem.need, located.node),
                f"jobs.{problem.job}.needs",
                problem.message,
            )
        return jobs

    def needs(self, node: Node, path: str) -> _Needs:
        """A job id or a list of them, each kept with its node to locate graph issues."""
        located = _Needs(node)
        if isinstance(node, SequenceNode):
            items = node.items
        elif isinstance(node, ScalarNode) and node.value is not None:
            items = [node]
        else:
            self.expected(node, path, "a job id or a list of job ids")
            return located
        for item in items:
            text = self.string(item, path)
            if text is not None:
                located.items.setdefault(text, item)
        return located

    def job(self, node: Node, path: str, key: str, needs: list[str]) -> JobSpec | None:
        job = self.mapping(node, path, JOB_FIELDS)
        if job is None:
            return None
        items = job.items
        need_set = frozenset(needs)
        strategy = self.strategy(job, path, _Scope(job=key, needs=need_set))
        # An invalid matrix is still a matrix: don't add "job has no matrix" noise.
        has_matrix = strategy is not None or "matrix" in items or "strategy" in items
        matrix_keys = None
        if strategy is not None and not strategy.dynamic:
            matrix_keys = frozenset(strategy.axes).union(*(e.keys() for e in strategy.include))
        scope = _Scope(job=key, needs=need_set, has_matrix=has_matrix, matrix_keys=matrix_keys)
        step_scope = _Scope(
            job=key,
            needs=need_set,
            has_matrix=has_matrix,
            matrix_keys=matrix_keys,
            steps=_step_ids(items.get("steps")),
        )

        name = key
        if "name" in items:
            name = self.string(items["name"], f"{path}.name") or key
            self.template(items["name"], f"{path}.name", name, scope)
        steps = self.steps(items.get("steps"), job, path, step_scope)
        env = self.env(items["env"], f"{path}.env", scope) if "env" in items else {}
        if_ = self.condition(items["if"], f"{path}.if", scope) if "if" in items else None
        retry = self.retry(items["retry"], f"{path}.retry") if "retry" in items else RetryPolicy()
        resources = Resources()
        if "resources" in items:
            resources = self.resources(items["resources"], f"{path}.resources")
        runs_on: list[str] = []
        if "runs-on" in items:
            runs_on = self.runs_on(items["runs-on"], f"{path}.runs-on", scope)
        image = None
        if "image" in items:
            image = self.string(items["image"], f"{path}.image")
            if image is not None:
                self.template(items["image"], f"{path}.image", image, scope)
        services: list[ServiceSpec] = []
        if "services" in items:
            services = self.services(
                items["services"], f"{path}.services", lambda n, w: self.env(n, w, scope)
            )
        keep_failed = None
        if "keep-failed" in items:
            keep_failed = self.keep_failed(items["keep-failed"], f"{path}.keep-failed")
        outputs: dict[str, str] = {}
        if "outputs" in items:
            outputs = self.outputs(items["outputs"], f"{path}.outputs", step_scope)
        continue_on_error = False
        if "continue-on-error" in items:
            where = f"{path}.continue-on-error"
            continue_on_error = bool(self.boolean(items["continue-on-error"], where))
        shell, working_directory = self.job_shell(job, path, scope)
        pause = self.debug(items["debug"], f"{path}.debug") if "debug" in items else None
        return JobSpec(
            key=key,
            name=name,
            steps=steps,
            needs=list(needs),
            env=env,
            if_=if_,
            strategy=strategy,
            retry=retry,
            timeout=self.timeout(job, path),
            resources=resources,
            runs_on=runs_on,
            image=image,
            services=services,
            keep_failed=keep_failed,
            outputs=outputs,
            shell=shell,
            working_directory=working_directory,
            continue_on_error=continue_on_error,
            pause_on_failure=pause,
        )

    def job_shell(
        self, job: MappingNode, path: str, scope: _Scope
    ) -> tuple[str | None, str | None]:
        """The job's shell and working directory, from the fields or its ``defaults``."""
        items = job.items
        shell, directory = None, None
        if "defaults" in items:
            shell, directory = self.defaults(items["defaults"], f"{path}.defaults", scope)
        for key in ("shell", "working-directory"):
            if key not in items:
                continue
            where = f"{path}.{key}"
            if (shell if key == "shell" else directory) is not None:
                self.issue(job.keys[key], where, f"'{key}' is also set in {path}.defaults")
                continue
            value = self.shell_or_directory(items[key], where, key, scope)
            if key == "shell":
                shell = value
            else:
                directory = value
        return shell, directory

    def timeout(self, owner: MappingNode, path: str) -> float | None:
        """``timeout`` (a duration) or ``timeout-minutes`` (a number, GitHub style)."""
        items = owner.items
        if "timeout" in items and "timeout-minutes" in items:
            self.issue(
                owner.keys["timeout-minutes"],
                f"{path}.timeout-minutes",
                "use either 'timeout' or 'timeout-minutes', not both",
            )
            return None
        if "timeout" in items:
            where = f"{path}.timeout"
            seconds = self.quantity(items["timeout"], where, parse_duration)
            if seconds is not None and seconds <= 0:
                self.issue(items["timeout"], where, "must be greater than zero")
                return None
            return seconds
        if "timeout-minutes" in items:
            node = items["timeout-minutes"]
            where = f"{path}.timeout-minutes"
            value = node.value if isinstance(node, ScalarNode) else None
            if not isinstance(value, int | float) or isinstance(value, bool):
                self.expected(node, where, "a number of minutes")
                return None
            if not math.isfinite(value):
                self.issue(node, where, "must be finite")
                return None
            if value <= 0:
                self.issue(node, where, "must be greater than zero")
                return None
            return float(value) * 60.0
        return None

    def retry(self, node: Node, path: str) -> RetryPolicy:
        retry = self.mapping(node, path, RETRY_FIELDS)
        if retry is None:
            return RetryPolicy()
        items = retry.items
        max_attempts = 1
        spelled = [k for k in ("max_attempts", "max-attempts") if k in items]
        if len(spelled) == 2:
            self.issue(retry.keys["max-attempts"], f"{path}.max-attempts", "set max_attempts once")
        elif not spelled:
            self.issue(retry, path, "missing required field 'max_attempts'")
        else:
            where = f"{path}.{spelled[0]}"
            max_attempts = self.integer(items[spelled[0]], where, 1, MAX_ATTEMPTS) or 1
        backoff: Backoff = "fixed"
        if "backoff" in items:
            text = self.string(items["backoff"], f"{path}.backoff")
            if text in _BACKOFFS:
                backoff = _BACKOFFS[text]
            elif text is not None:
                self.issue(
                    items["backoff"],
                    f"{path}.backoff",
                    f"unknown backoff '{text}'{hint(text, BACKOFFS)}: use {', '.join(BACKOFFS)}",
                )
        delay = 0.0
        if "delay" in items:
            delay = self.quantity(items["delay"], f"{path}.delay", parse_duration) or 0.0
        return RetryPolicy(max_attempts=max_attempts, backoff=backoff, delay=delay)

    def runs_on(self, node: Node, path: str, scope: _Scope) -> list[str]:
        """``runs-on``: one label or a list of labels, all of which a node must have."""
        if isinstance(node, SequenceNode):
            if not node.items:
                self.issue(node, path, "expected at least one label")
            nodes = [(item, f"{path}[{i}]") for i, item in enumerate(node.items)]
        elif isinstance(node, ScalarNode):
            nodes = [(node, path)]
        else:
            self.expected(node, path, "a label or a list of labels")
            return []
        labels: list[str] = []
        for item, where in nodes:
            text = self.string(item, where)
            if text is not None:
                self.template(item, where, text, scope)
                labels.append(text)
        return labels

    def outputs(self, node: Node, path: str, scope: _Scope) -> dict[str, str]:
        """A list of names (set by steps at run time) or a map of names to ``${{ }}`` values."""
        outputs: dict[str, str] = {}
        if isinstance(node, SequenceNode):
            for index, item in enumerate(node.items):
                where = f"{path}[{index}]"
                text = self.string(item, where)
                if text is None or not self.identifier(item, where, "output name", text):
                    continue
                if text in outputs:
                    self.issue(item, where, f"duplicate output '{text}'")
                outputs[text] = ""
            return outputs
        if not isinstance(node, MappingNode):
            self.expected(node, path, "a list of output names or a mapping of names to values")
            return outputs
        for key, value in node.items.items():
            where = f"{path}.{key}"
            if not self.identifier(node.keys[key], where, "output name", key):
                continue
            if isinstance(value, ScalarNode) and value.value is None:
                outputs[key] = ""
                continue
            text = self.string(value, where, empty=True)
            if text is not None:
                self.template(value, where, text, scope)
                outputs[key] = text
        return outputs

    # -- matrix --------------------------------------------------------------------------

    def strategy(self, job: MappingNode, path: str, scope: _Scope) -> MatrixSpec | None:
        """``strategy: {matrix, fail-fast, max-parallel}`` or the ``matrix:`` shorthand."""
        items = job.items
        if "matrix" in items and "strategy" in items:
            self.issue(
                job.keys["matrix"],
                f"{path}.matrix",
                "use either 'matrix' or 'strategy.matrix', not both",
            )
            return None
        if "matrix" in items:
            return self.matrix(items["matrix"], f"{path}.matrix", scope, True, None)
        if "strategy" not in items:
            return None
        where = f"{path}.strategy"
        strategy = self.mapping(items["strategy"], where, STRATEGY_FIELDS)
        if strategy is None:
            return None
        fail_fast = True
        if "fail-fast" in strategy.items:
            fail_fast = self.boolean(strategy.items["fail-fast"], f"{where}.fail-fast") is not False
        max_parallel = None
        if "max-parallel" in strategy.items:
            max_parallel = self.integer(strategy.items["max-parallel"], f"{where}.max-parallel", 1)
        if "matrix" not in strategy.items:
            self.issue(strategy, where, "missing required field 'matrix'")
            return None
        matrix = strategy.items["matrix"]
        return self.matrix(matrix, f"{where}.matrix", scope, fail_fast, max_parallel)

    def matrix(
        self, node: Node, path: str, scope: _Scope, fail_fast: bool, max_parallel: int | None
    ) -> MatrixSpec | None:
        if isinstance(node, ScalarNode) and isinstance(node.value, str) and "${{" in node.value:
            text = node.value.strip()
            source = self.unwrap(node, path, text)
            if source is None:
                return None
            if source == text or "${{" in source:
                self.issue(node, path, "a dynamic matrix must be exactly one ${{ expression }}")
                return None
            expr = self.parse_expression(node, path, source)
            if expr is not None:
                self.check_references(node, path, expr, scope)
            return MatrixSpec(expression=source, fail_fast=fail_fast, max_parallel=max_parallel)
        if not isinstance(node, MappingNode):
            self.expected(node, path, "a mapping of axes or one ${{ expression }}")
            return None
        before = len(self.issues)
        axes: dict[str, list[Any]] = {}
        for key, value in node.items.items():
            where = f"{path}.{key}"
            if key in ("include", "exclude"):
                continue
            if not self.identifier(node.keys[key], where, "matrix axis", key):
                continue
            if (
                isinstance(value, ScalarNode)
                and isinstance(value.value, str)
                and "${{" in value.value
            ):
                self.issue(
                    value,
                    where,
                    "an axis must be a list; to compute values at run time make the whole matrix "
                    "one expression: matrix: ${{ fromJSON(needs.plan.outputs.matrix) }}",
                )
                axes[key] = []
                continue
            if not isinstance(value, SequenceNode) or not value.items:
                self.expected(value, where, "a non-empty list of values")
                axes[key] = []  # keeps the axis known to expressions; the spec is discarded
                continue
            axes[key] = [to_python(item) for item in value.items]
        include = self.matrix_rules(node.items.get("include"), f"{path}.include", None)
        exclude = self.matrix_rules(node.items.get("exclude"), f"{path}.exclude", axes)
        spec = MatrixSpec(
            axes=axes,
            include=include,
            exclude=exclude,
            fail_fast=fail_fast,
            max_parallel=max_parallel,
        )
        if len(self.issues) == before:
            if not axes and not include:
                self.issue(node, path, "a matrix needs at least one axis or 'include' entry")
                return spec
            try:
                combinations(spec)
            except ValueError as exc:
                self.issue(node, path, str(exc))
        return spec

    def matrix_rules(
        self, node: Node | None, path: str, axes: Mapping[str, Any] | None
    ) -> list[dict[str, Any]]:
        """``include``/``exclude`` entries; exclude keys must be axes (``axes`` given)."""
        if node is None:
            return []
        if not isinstance(node, SequenceNode):
            self.expected(node, path, "a list of mappings")
            return []
        rules: list[dict[str, Any]] = []
        for index, item in enumerate(node.items):
            where = f"{path}[{index}]"
            if not isinstance(item, MappingNode) or not item.items:
                self.expected(item, where, "a non-empty mapping")
                continue
            if axes is not None:
                for key, key_node in item.keys.items():
                    if key not in axes:
                        self.issue(
                            key_node,
                            f"{where}.{key}",
                            f"'{key}' is not an axis of the matrix{hint(key, axes)}",
                        )
            rules.append({k: to_python(v) for k, v in item.items.items()})
        return rules

    # -- steps ---------------------------------------------------------------------------

    def steps(
        self, node: Node | None, job: MappingNode, job_path: str, scope: _Scope
    ) -> list[StepSpec]:
        path = f"{job_path}.steps"
        if node is None:
            self.issue(job, job_path, "missing required field 'steps'")
            return []
        if not isinstance(node, SequenceNode) or not node.items:
            self.expected(node, path, "a non-empty list of steps")
            return []
        steps: list[StepSpec] = []
        seen: dict[str, int] = {}
        for index, item in enumerate(node.items):
            step = self.step(item, f"{path}[{index}]", scope, seen, index)
            if step is not None:
                steps.append(step)
        return steps

    def step(
        self, node: Node, path: str, scope: _Scope, seen: dict[str, int], index: int
    ) -> StepSpec | None:
        step = self.mapping(node, path, STEP_FIELDS)
        if step is None:
            return None
        items = step.items
        run = None
        if "run" in items:
            run = self.string(items["run"], f"{path}.run")
            if run is not None:
                self.template(items["run"], f"{path}.run", run, scope)
        elif "uses" not in items:  # 'uses' already has its own message
            self.issue(step, path, "missing required field 'run'")
        step_id = None
        if "id" in items:
            where = f"{path}.id"
            text = self.string(items["id"], where)
            if text is not None and self.identifier(items["id"], where, "step id", text):
                if text in seen:
                    self.issue(
                        items["id"],
                        where,
                        f"duplicate step id '{text}' (also used by steps[{seen[text]}])",
                    )
                else:
                    seen[text] = index
                    step_id = text
        name = _default_step_name(run or "")
        if "name" in items:
            name = self.string(items["name"], f"{path}.name") or name
            self.template(items["name"], f"{path}.name", name, scope)
        shell = self.shell(items["shell"], f"{path}.shell") if "shell" in items else None
        directory = None
        if "working-directory" in items:
            key = "working-directory"
            directory = self.shell_or_directory(items[key], f"{path}.{key}", key, scope)
        env = self.env(items["env"], f"{path}.env", scope) if "env" in items else {}
        if_ = self.condition(items["if"], f"{path}.if", scope) if "if" in items else None
        continue_on_error = False
        if "continue-on-error" in items:
            where = f"{path}.continue-on-error"
            continue_on_error = bool(self.boolean(items["continue-on-error"], where))
        timeout = self.timeout(step, path)
        retry = self.retry(items["retry"], f"{path}.retry") if "retry" in items else RetryPolicy()
        if run is None:
            return None
        return StepSpec(
            name=name,
            run=run,
            id=step_id,
            shell=shell,
            env=env,
            working_directory=directory,
            if_=if_,
            continue_on_error=continue_on_error,
            timeout=timeout,
            retry=retry,
        )


_BACKOFFS: dict[str | None, Backoff] = {
    "fixed": "fixed",
    "linear": "linear",
    "exponential": "exponential",
}


def _step_ids(node: Node | None) -> frozenset[str]:
    """The step ids a job declares, so expressions can be checked against all of them."""
    if not isinstance(node, SequenceNode):
        return frozenset()
    ids = set()
    for item in node.items:
        if isinstance(item, MappingNode):
            value = item.items.get("id")
            if isinstance(value, ScalarNode) and isinstance(value.value, str):
                ids.add(value.value)
    return frozenset(ids)


def _default_step_name(run: str) -> str:
    """The first non-blank line of ``run``, cut to 60 characters."""
    line = next((ln.strip() for ln in run.splitlines() if ln.strip()), "")
    return line if len(line) <= STEP_NAME_MAX else line[: STEP_NAME_MAX - 3] + "..."


def _env_text(node: ScalarNode) -> str:
    value = node.value
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    return node.raw  # numbers as written: 1.10 stays "1.10", not "1.1"


def _reference_problem(ref: tuple[str, ...], scope: _Scope) -> str | None:
    """Why an expression may not use the property path ``ref`` here, or None if it may.

    Property names compare case-insensitively, as the expression evaluator reads them.
    """
    if not ref:
        return None
    head, name = ref[0].lower(), ref[1] if len(ref) > 1 and ref[1] != "*" else None
    if head == "needs":
        if scope.job is None:
            return "the needs context is only available inside a job"
        if name is not None and not _contains(scope.needs, name):
            return f"references needs.{name}, but job '{scope.job}' does not list '{name}' in needs"
    elif head == "matrix":
        if scope.job is None:
            return "the matrix context is only available inside a job"
        if not scope.has_matrix:
            return f"references the matrix, but job '{scope.job}' has no matrix"
        keys = scope.matrix_keys
        if name is not None and keys is not None and not _contains(keys, name):
            return f"unknown matrix key '{name}'{hint(name, keys)}"
    elif head == "steps":
        if scope.steps is None:
            return "the steps context is only available in steps and job outputs"
        if name is not None and not _contains(scope.steps, name):
            return f"unknown step id '{name}'{hint(name, scope.steps)}"
        field = ref[2].lower() if len(ref) > 2 and ref[2] != "*" else None
        if field is not None and field not in _STEP_FIELDS:
            return f"steps.{name} has no '{ref[2]}'{hint(ref[2], _STEP_FIELDS)}"
    elif head == "job":
        if scope.steps is None:
            return "the job context is only available in steps (job.status)"
        if name is not None and name.lower() != "status":
            return f"the job context has only 'status', not '{name}'"
    elif head == "faena":
        if name is not None and name.lower() not in _FAENA_FIELDS:
            return f"the faena context has no '{name}'{hint(name, _FAENA_FIELDS)}"
    elif head not in CONTEXTS:
        return f"unknown context '{ref[0]}'{hint(ref[0], CONTEXTS)}; known: {', '.join(CONTEXTS)}"
    return None


# What expressions can read (the evaluator's context); anything else is a typo.
CONTEXTS = ("env", "matrix", "needs", "steps", "job", "faena")
_STEP_FIELDS = ("outputs", "outcome", "conclusion")
_FAENA_FIELDS = ("run_id", "pipeline", "job", "source_dir")


def _contains(names: Collection[str], name: str) -> bool:
    folded = name.lower()
    return any(n.lower() == folded for n in names)
