"""Reading a step's output pipes into lines, and waiting for the step to end.

Shared by the providers whose steps write into pipes this process reads (local processes,
and containers writing into FIFOs in a bind-mounted directory).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import struct
import termios
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Literal

from faena.workers.port import Stream

Stop = Literal["timed_out", "cancelled"]

MAX_LINE_BYTES = 64 * 1024

_READ_CHUNK = 64 * 1024

_FALLBACK_DRAIN = 1024 * 1024

Emit = Callable[[Stream, bytes], Awaitable[None]]


class OutputPipe:
    """Reads one output pipe of a step into lines until EOF or until told the step exited."""

    def __init__(self, fd: int, stream: Stream, emit: Emit) -> None:
        self.fd = fd
        self._stream: Stream = stream
        self._emit = emit
        self._lines = LineSplitter()
        self._exited = False
        self._waiter: asyncio.Future[None] | None = None
        os.set_blocking(fd, False)

    def notify_exit(self) -> None:
        self._exited = True
        self._wake()

    async def pump(self) -> bool:
        """Forward lines; return True at EOF, False when background processes hold the pipe."""
        budget: int | None = None
        eof = False
        while True:
            if budget is None and self._exited:
                # Everything the step wrote before exiting is in the pipe now: forward that
                # much and no more, since background processes may write forever.
                budget = _pending_bytes(self.fd)
            if budget is not None and budget <= 0:
                break
            try:
                data = os.read(self.fd, _READ_CHUNK if budget is None else min(budget, _READ_CHUNK))
            except BlockingIOError:
                if budget is not None:
                    break
                await self._readable()
                continue
            if not data:
                eof = True
                break
            if budget is not None:
                budget -= len(data)
            for line in self._lines.feed(data):
                await self._emit(self._stream, line)
        tail = self._lines.flush()
        if tail is not None:
            await self._emit(self._stream, tail)
        return eof

    async def _readable(self) -> None:
        loop = asyncio.get_running_loop()
        self._waiter = loop.create_future()
        loop.add_reader(self.fd, self._wake)
        try:
            await self._waiter
        finally:
            loop.remove_reader(self.fd)
            self._waiter = None

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


class LineSplitter:
    """Bytes in, lines out: without their newline (or CRLF), at most MAX_LINE_BYTES each."""

    def __init__(self, limit: int = MAX_LINE_BYTES) -> None:
        self._limit = limit
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        buffer = self._buffer
        buffer += data
        lines: list[bytes] = []
        start = 0
        while True:
            newline = buffer.find(b"\n", start, start + self._limit + 1)
            if newline >= 0:
                lines.append(bytes(buffer[start:newline]).removesuffix(b"\r"))
                start = newline + 1
            elif len(buffer) - start > self._limit:
                cut = _utf8_boundary(buffer, start + self._limit)
                lines.append(bytes(buffer[start:cut]))
                start = cut
            else:
                break
        del buffer[:start]
        return lines

    def flush(self) -> bytes | None:
        if not self._buffer:
            return None
        tail = bytes(self._buffer).removesuffix(b"\r")
        self._buffer.clear()
        return tail


def _utf8_boundary(buffer: bytearray, cut: int) -> int:
    """Move ``cut`` back onto a character start so a split does not garble one."""
    for back in range(4):
        if buffer[cut - back] & 0xC0 != 0x80:  # not a continuation byte
            return cut - back
    return cut  # not UTF-8 anyway


def _pending_bytes(fd: int) -> int:
    try:
        raw = fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0")
    except OSError:
        return _FALLBACK_DRAIN  # reads stop at the first empty read anyway
    value: int = struct.unpack("i", raw)[0]
    return value


def close_fds(*fds: int) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


async def wait_for_exit(
    waiter: asyncio.Future[int],
    cancel: asyncio.Event,
    timeout: float | None,
    pumps: Sequence[asyncio.Future[bool]],
) -> Stop | None:
    """Wait for the main process to exit, a cancel or the timeout; re-raise a sink's error."""
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + timeout
    cancelled = asyncio.ensure_future(cancel.wait())
    pending: set[asyncio.Future[Any]] = {waiter, cancelled, *pumps}
    try:
        while True:
            remaining = None if deadline is None else max(0.0, deadline - loop.time())
            done, pending = await asyncio.wait(
                pending, timeout=remaining, return_when=asyncio.FIRST_COMPLETED
            )
            for pump in pumps:
                if pump in done:
                    pump.result()  # a pump ends early at EOF, or raising what the sink raised
            if waiter.done():
                return None
            if cancel.is_set():
                return "cancelled"
            if not done:
                return "timed_out"
    finally:
        cancelled.cancel()


class PipeDrainer:
    """Keeps reading pipes that background processes still hold, discarding what they write,
    so those processes never block on a full pipe nor die of SIGPIPE."""

    def __init__(self) -> None:
        self.drained: dict[int, asyncio.AbstractEventLoop] = {}
        self.closed = False

    def detach(self, fd: int) -> None:
        """Drain ``fd`` until EOF (or ``close``); closes it then."""
        if self.closed:
            close_fds(fd)
            return
        loop = asyncio.get_running_loop()
        self.drained[fd] = loop
        loop.add_reader(fd, self._discard, fd)

    def _discard(self, fd: int) -> None:
        try:
            data = os.read(fd, _READ_CHUNK)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._stop_draining(fd)

    def _stop_draining(self, fd: int) -> None:
        loop = self.drained.pop(fd, None)
        if loop is not None and not loop.is_closed():
            loop.remove_reader(fd)
        close_fds(fd)

    def close(self) -> None:
        """Stop draining everything, closing the pipes."""
        self.closed = True
        for fd in list(self.drained):
            self._stop_draining(fd)
