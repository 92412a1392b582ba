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
