"""Worker start latency: create-to-first-step on the docker and local providers, each
against its bare baseline in the same run (aim: docker <= 1.2x bare ``docker run``, and
below 1.0x with a warm pool), plus the create/terminate success rate (seed: > 99.5 %).

    .venv/bin/python bench/providers.py [--jobs 200] [--image faena/busybox:local]

For each of ``--jobs`` one-step jobs, the clock runs from asking for a worker to the
step's first output line (``echo started``); then the worker is destroyed.

- docker: ``DockerProvider.create`` + ``exec``; baseline: ``docker run --rm IMAGE echo
  started`` through the CLI, to its first stdout line;
- docker, warm: the same behind a ``WorkerPool`` that holds one prewarmed worker, refilled
  off the clock after each job (the time is that of a handed-over worker);
- local: ``LocalProvider.create`` + ``exec``; baseline: spawning ``sh -c 'echo started'``.

Runs interleave (bare, provider, warm, ...) so drift on a noisy machine hits all alike.
Prints one JSON line per variant with p50/p95 in ms and the ratio to its baseline.
Needs dockerd (``scripts/start-dockerd``) and the image (``scripts/build-images``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from faena.workers.pool import WorkerPool
from faena.workers.port import ExecRequest, OutputLine, WorkerProvider, WorkerRequest
from faena.workers.providers.docker import DockerProvider
from faena.workers.providers.local import LocalProvider

STEP = "echo started"


async def first_line_of_process(*argv: str) -> float:
    """Seconds from spawning ``argv`` to its first stdout line; waits for it to exit."""
    started = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL
    )
    assert proc.stdout is not None
    line = await proc.stdout.readline()
    took = time.perf_counter() - started
    await proc.wait()
    if line.strip() != b"started" or proc.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed: {line!r}, exit {proc.returncode}")
    return took


async def first_line_of_worker(provider: WorkerProvider, tag: str) -> float:
    """Seconds from ``create`` to the step's first line; the worker is destroyed after."""
    first: asyncio.Future[float] = asyncio.get_running_loop().create_future()
    started = time.perf_counter()

    async def sink(line: OutputLine) -> None:
        if not first.done():
            first.set_result(time.perf_counter() - started)

    request = WorkerRequest(f"{tag}-{uuid.uuid4().hex[:10]}", "bench", "bench")
    worker = await provider.create(request)
    try:
        result = await provider.exec(worker, ExecRequest("step", STEP), sink)
        if result.exit_code != 0:
            raise RuntimeError(f"step failed with {result.exit_code}")
        return first.result()
    finally:
        await provider.destroy(worker)


def summary(name: str, times: list[float], errors: int, baseline: list[float] | None) -> dict:
    ms = sorted(t * 1000 for t in times)
    p50 = statistics.median(ms) if ms else float("nan")
    p95 = ms[max(0, round(0.95 * len(ms)) - 1)] if ms else float("nan")
    out: dict[str, object] = {
        "variant": name,
        "jobs": len(times) + errors,
        "p50_ms": round(p50, 1),
        "p95_ms": round(p95, 1),
        "success_rate": round(len(times) / max(len(times) + errors, 1), 4),
    }
    if baseline:
        out["ratio_p50"] = round(p50 / statistics.median(t * 1000 for t in baseline), 2)
    return out


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--image", default="faena/busybox:local")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        docker = DockerProvider(root / "docker", image=args.image, network="none",
                                owner=f"bench-{uuid.uuid4().hex[:6]}")  # fmt: skip
        warm_inner = DockerProvider(root / "warm", image=args.image, network="none",
                                    owner=f"bench-{uuid.uuid4().hex[:6]}")  # fmt: skip
        warm = WorkerPool(warm_inner, max_warm=2)
        local = LocalProvider(root / "local")
        times: dict[str, list[float]] = {
            k: [] for k in ("bare", "docker", "warm", "spawn", "local")
        }
        errors = dict.fromkeys(times, 0)

        async def measure(name: str, run: object) -> None:
            try:
                times[name].append(await run)  # type: ignore[misc]
            except Exception as exc:
                errors[name] += 1
                print(json.dumps({"variant": name, "error": str(exc)[:200]}))

        try:
            await warm.prewarm()
            for _ in range(args.jobs):
                bare = ("docker", "run", "--rm", "--network", "none", args.image, *STEP.split())
                await measure("bare", first_line_of_process(*bare))
                await measure("docker", first_line_of_worker(docker, "d"))
                await measure("warm", first_line_of_worker(warm, "w"))
                await warm.prewarm()  # refill, off the clock
                await measure("spawn", first_line_of_process("sh", "-c", STEP))
                await measure("local", first_line_of_worker(local, "l"))
        finally:
            await warm.close()
            await docker.close()
            await warm_inner.close()
            await local.close()
        rows = [
            summary("docker run --rm (bare)", times["bare"], errors["bare"], None),
            summary("docker provider", times["docker"], errors["docker"], times["bare"]),
            summary("docker provider, warm pool", times["warm"], errors["warm"], times["bare"]),
            summary("process spawn (bare)", times["spawn"], errors["spawn"], None),
            summary("local provider", times["local"], errors["local"], times["spawn"]),
        ]
        for row in rows:
            print(json.dumps(row))


if __name__ == "__main__":
    asyncio.run(main())
