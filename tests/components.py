"""What a test does when an external component (a server binary, a tool) is missing."""

from __future__ import annotations

import os

import pytest


def missing(what: str) -> None:
    """Skip on a developer's machine; in CI (CI=true) a missing component is a failure."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI must provide this: {what}")
    pytest.skip(what)
