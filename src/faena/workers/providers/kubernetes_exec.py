"""The agent's side of a pod step (see ``kubernetes_scripts.STEP``): the exec's stdout and
stderr frames become the step's lines up to the step's token on each stream; then the ack
goes back on stdin, and what follows the token's second appearance on stdout is the
step's ``$FAENA_OUTPUT``."""

from __future__ import annotations

from faena.workers.port import Stream
from faena.workers.providers.kubernetes_api import STDERR, STDOUT, ExecChannels
from faena.workers.providers.output_pipe import Emit, LineSplitter


class TokenScan:
    """Bytes in; the part before ``token`` out, holding back only a possible token prefix
    (which never holds a newline, so complete lines are never delayed)."""

    def __init__(self, token: bytes) -> None:
        self._token = token
        self._held = b""
        self.found = False

    def feed(self, data: bytes) -> tuple[bytes, bytes]:
        """(before the token, after it); ``after`` is only non-empty once found."""
        buffer = self._held + data
        at = buffer.find(self._token)
        if at >= 0:
            self.found, self._held = True, b""
            return buffer[:at], buffer[at + len(self._token) :]
        keep = 0
        for size in range(min(len(self._token) - 1, len(buffer)), 0, -1):
            if buffer.endswith(self._token[:size]):
                keep = size
                break
        self._held = buffer[len(buffer) - keep :] if keep else b""
        return buffer[: len(buffer) - keep], b""

    def rest(self) -> bytes:
        """What was held back when the stream ended without the token."""
        held, self._held = self._held, b""
        return held


class StepRelay:
    """Relays one step's exec to ``emit``; ``run`` returns the exec's exit code."""

    def __init__(self, token: str, emit: Emit) -> None:
        raw = token.encode()
        self._emit = emit
        self._scans = {STDOUT: TokenScan(raw), STDERR: TokenScan(raw)}
        self._lines = {STDOUT: LineSplitter(), STDERR: LineSplitter()}
        self._second = TokenScan(raw)
        self._output = bytearray()
        self._acked = False

    @property
    def step_ended(self) -> bool:
        """Both tokens came: the step's main process exited and all it wrote arrived."""
        return all(scan.found for scan in self._scans.values())

    @property
    def output(self) -> str | None:
        """``$FAENA_OUTPUT`` as the wrapper sent it back, or None if it never did."""
        if not self._second.found:
            return None
        return self._output.decode("utf-8", errors="replace")

    async def run(self, channels: ExecChannels) -> int:
        async for channel, data in channels:
            scan = self._scans.get(channel)
            if scan is None:
                continue
            if not scan.found:
                before, after = scan.feed(data)
                await self._lines_of(channel, before)
                if not scan.found:
                    continue
                await self._flush(channel)
                data = after
                if self.step_ended and not self._acked:
                    self._acked = True
                    await channels.send(b"\n")
            if channel == STDOUT and data:
                if self._second.found:
                    self._output += data
                else:
                    self._output += self._second.feed(data)[1]
        for channel, scan in self._scans.items():
            if not scan.found:
                await self._lines_of(channel, scan.rest())
                await self._flush(channel)
        return channels.exit_code()

    async def _lines_of(self, channel: int, data: bytes) -> None:
        for line in self._lines[channel].feed(data):
            await self._emit(_stream(channel), line)

    async def _flush(self, channel: int) -> None:
        tail = self._lines[channel].flush()
        if tail is not None:
            await self._emit(_stream(channel), tail)


def _stream(channel: int) -> Stream:
    return "stdout" if channel == STDOUT else "stderr"
