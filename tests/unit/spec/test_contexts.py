"""Expressions may only read contexts the runtime provides."""

from __future__ import annotations

import pytest

from faena.domain.errors import SpecValidationError
from faena.spec import parse_pipeline


def test_unknown_context_is_reported_with_a_hint() -> None:
    text = "jobs:\n  a:\n    steps:\n      - run: echo ${{ github.ref }} ${{ evn.X }}\n"
    with pytest.raises(SpecValidationError) as err:
        parse_pipeline(text)
    messages = [i.message for i in err.value.issues]
    assert any("unknown context 'github'" in m for m in messages)
    assert any("unknown context 'evn'" in m and "did you mean 'env'" in m for m in messages)
    assert all(i.line == 4 for i in err.value.issues)


def test_known_contexts_pass() -> None:
    text = (
        "jobs:\n  a:\n    steps:\n"
        "      - run: echo ${{ env.X }} ${{ faena.run_id }} ${{ job.status }}\n"
    )
    assert parse_pipeline(text).jobs["a"].steps[0].run.startswith("echo")


@pytest.mark.parametrize(
    ("snippet", "message"),
    [
        ("if: job.status == 'success'\n    steps: [{run: 'true'}]",
         "the job context is only available in steps"),
        ("steps: [{run: 'echo ${{ faena.nope }}'}]", "the faena context has no 'nope'"),
        ("steps: [{run: 'echo ${{ job.nope }}'}]", "the job context has only 'status'"),
        ("steps: [{id: s, run: 'true'}, {run: 'echo ${{ steps.s.outptus.x }}'}]",
         "steps.s has no 'outptus' (did you mean 'outputs'?)"),
    ],
)  # fmt: skip
def test_fields_of_known_contexts_are_checked(snippet: str, message: str) -> None:
    with pytest.raises(SpecValidationError) as err:
        parse_pipeline(f"jobs:\n  a:\n    {snippet}\n")
    assert any(message in i.message for i in err.value.issues), err.value.issues
