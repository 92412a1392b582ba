"""One fake API server per test process, on a loop of its own in a thread: tests' probes
are synchronous, and each harness works in a namespace of its own, so one server serves all.
It removes its containers when the process exits."""

from __future__ import annotations

import asyncio
import atexit
import functools
import tempfile
import threading
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

from kube_fake.server import FakeKube

T = TypeVar("T")

# The labels of the fake's one node: runs-on "disktype=ssd" schedules, "disktype=hdd" not.
NODE_LABELS = {"disktype": "ssd", "faena.run/pool": "default"}


class RunningFake:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="kube-fake", daemon=True)
        self._thread.start()
        self._root = Path(tempfile.mkdtemp(prefix="faena-kube-fake-"))
        self.kube = FakeKube(self._root, NODE_LABELS)
        self.url = self.call(self.kube.start())

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 120.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        try:
            self.call(self.kube.stop(), timeout=60)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)


@functools.cache
def running_fake() -> RunningFake:
    """The process's fake API server, started on first use."""
    fake = RunningFake()
    atexit.register(fake.stop)
    return fake
