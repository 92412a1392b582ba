"""with_retries: a store briefly away is ridden out; one that stays away fails."""

from __future__ import annotations

import pytest

from faena.retries import with_retries


async def test_retries_until_success_then_gives_up() -> None:
    calls = 0

    async def flaky() -> str:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise ConnectionError("away")
        return "done"

    assert await with_retries(flaky, "write", delay=0.001) == "done"
    assert calls == 3

    async def down() -> None:
        raise ConnectionError("still away")

    with pytest.raises(ConnectionError, match="still away"):
        await with_retries(down, "write", delay=0.001, attempts=4)
