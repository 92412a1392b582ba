"""WorkerPool over the real LocalProvider, in temp dirs."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from faena.domain.events import new_id
from faena.workers.pool import PoolFull, UnknownPool, WorkerInUse, WorkerPool
from faena.workers.port import (
    ExecRequest,
    OutputLine,
    ProviderError,
    Worker,
    WorkerProvider,
    WorkerRequest,
)
from faena.workers.providers.local import LocalProvider

ENV = {"PATH": os.environ.get("PATH", os.defpath)}


@pytest.fixture
async def local(tmp_path: Path) -> AsyncIterator[LocalProvider]:
    provider = LocalProvider(tmp_path / "workers", base_env=ENV, kill_grace=1.0)
    yield provider
    await provider.close()


@pytest.fixture
async def pool(local: LocalProvider) -> AsyncIterator[WorkerPool]:
    p = WorkerPool(local, max_warm=3)
    yield p
    await p.close()


def unique(prefix: str) -> str:
    """Worker ids the local provider sees must not repeat across tests running at once:
    its destroy kills every process of the host carrying the id."""
    return f"{prefix}-{new_id()[-8:]}"


def request(worker_id: str, job_id: str = "r1.1", image: str | None = None) -> WorkerRequest:
    return WorkerRequest(worker_id, job_id.rsplit(".", 1)[0], job_id, image)


async def run(provider: WorkerProvider, worker: Worker, script: str) -> list[str]:
    lines: list[OutputLine] = []

    async def sink(line: OutputLine) -> None:
        lines.append(line)

    result = await provider.exec(worker, ExecRequest("e1", script, shell="sh"), sink)
    assert result.exit_code == 0, lines
    return [line.text for line in lines if line.stream == "stdout"]


def test_the_pool_is_a_worker_provider(pool: WorkerPool) -> None:
    provider: WorkerProvider = pool
    assert provider.name == "local"
    assert pool.pools == ("local",)


async def test_prewarm_is_idempotent_by_worker_id(pool: WorkerPool, tmp_path: Path) -> None:
    first, created = await pool.prewarm("warm-1", "local")
    again, created_again = await pool.prewarm("warm-1", "local")
    assert created and not created_again
    assert again is first and first.state == "idle"
    inner = first.to_dict()["provider_worker_id"]
    assert inner.startswith("warm-1-")  # unique behind the caller's id
    assert (tmp_path / "workers" / inner / "workspace").is_dir()
    assert [w["worker_id"] for w in pool.listing()] == ["warm-1"]
    generated, _ = await pool.prewarm(None, None)
    assert generated.worker_id.startswith("w-") and generated.pool == "local"


async def test_concurrent_prewarms_of_one_id_create_one(pool: WorkerPool) -> None:
    results = await asyncio.gather(*(pool.prewarm("same", "local") for _ in range(5)))
    assert sum(created for _, created in results) == 1
    assert len({id(w) for w, _ in results}) == 1
    assert pool.idle == 1


async def test_a_job_runs_in_a_warm_worker(
    pool: WorkerPool, local: LocalProvider, tmp_path: Path
) -> None:
    warm, _ = await pool.prewarm("warm-1", "local")
    worker = await pool.create(request("job-worker-1"))
    # The job keeps the id it asked for (the agent reports it); the warm one stands behind.
    assert worker.worker_id == "job-worker-1" and worker.provider == "local"
    assert worker.info["pool_worker_id"] == "warm-1"
    inner = worker.info["provider_worker_id"]
    assert warm.worker is not None and warm.worker.worker_id == inner
    root = tmp_path / "workers" / inner
    assert Path(worker.workspace) == root / "workspace"
    assert warm.state == "busy" and warm.job_id == "r1.1" and warm.run_id == "r1"
    assert warm.job_worker_id == "job-worker-1"
    assert pool.get("job-worker-1") is warm
    assert await pool.create(request("job-worker-1")) == worker  # idempotent by worker id

    out = await run(pool, worker, 'pwd; echo "$FAENA_WORKER_ID"')
    assert out == [str((root / "workspace").resolve()), inner]
    assert not (tmp_path / "workers" / "job-worker-1").exists()

    await pool.destroy(worker)
    await pool.destroy(worker)  # idempotent
    assert warm.to_dict()["state"] == "finished" and warm.finished_at is not None
    assert not root.exists()
    assert pool.idle == 0


async def test_without_an_idle_worker_create_delegates(pool: WorkerPool, tmp_path: Path) -> None:
    direct = unique("direct")
    worker = await pool.create(request(direct))
    assert worker.worker_id == direct and "pool_worker_id" not in worker.info
    assert (tmp_path / "workers" / direct / "workspace").is_dir()
    assert await run(pool, worker, "echo hi") == ["hi"]
    # A warm worker may not take the id of a job's live worker.
    with pytest.raises(WorkerInUse):
        await pool.prewarm(direct, "local")
    await pool.destroy(worker)
    assert not (tmp_path / "workers" / direct).exists()
    assert pool.listing() == []


async def test_a_job_with_an_image_does_not_take_a_warm_worker(pool: WorkerPool) -> None:
    warm, _ = await pool.prewarm("warm-1", "local")
    worker = await pool.create(request(unique("job"), image="alpine"))
    assert "pool_worker_id" not in worker.info and warm.state == "idle"
    await pool.destroy(worker)


async def test_cancel_reaches_the_warm_worker(pool: WorkerPool) -> None:
    await pool.prewarm("warm-1", "local")
    worker = await pool.create(request("job-1"))
    started = asyncio.Event()

    async def sink(_: OutputLine) -> None:
        started.set()

    slow = ExecRequest("slow", "echo started; sleep 30", shell="sh")
    step = asyncio.ensure_future(pool.exec(worker, slow, sink))
    await asyncio.wait_for(started.wait(), 10)
    await pool.cancel(worker, "slow")
    result = await asyncio.wait_for(step, 10)
    assert result.cancelled
    await pool.destroy(worker)


async def test_end(pool: WorkerPool, tmp_path: Path) -> None:
    idle, _ = await pool.prewarm("idle-1", "local")
    assert idle.worker is not None
    assert await pool.end("idle-1") is True
    assert not (tmp_path / "workers" / idle.worker.worker_id).exists()
    assert pool.get("idle-1") is not None and pool.require("idle-1").state == "ended"
    assert await pool.end("idle-1") is False  # idempotent
    assert await pool.end("nobody") is False
    again, created = await pool.prewarm("idle-1", "local")
    assert not created and again.state == "ended"  # same id: the same (ended) worker

    await pool.prewarm("busy-1", "local")
    worker = await pool.create(request("job-1"))
    with pytest.raises(WorkerInUse):
        await pool.end("busy-1")
    await pool.destroy(worker)
    assert await pool.end("busy-1") is True  # finished: retired
    assert await pool.end("job-1") is False  # by the job's id: ended already


async def test_the_pool_is_bounded(local: LocalProvider) -> None:
    pool = WorkerPool(local, max_warm=2)
    await pool.prewarm("a", "local")
    await pool.prewarm("b", "local")
    with pytest.raises(PoolFull):
        await pool.prewarm("c", "local")
    assert (await pool.prewarm("a", "local"))[1] is False  # an existing id is no new worker
    await pool.end("a")
    await pool.prewarm("c", "local")
    with pytest.raises(UnknownPool):
        await pool.prewarm("d", "docker")
    await pool.close()
    assert pool.idle == 0


async def test_history_is_bounded(local: LocalProvider) -> None:
    pool = WorkerPool(local, max_warm=2, history=3)
    for n in range(6):
        await pool.prewarm(f"w{n}", "local")
        await pool.end(f"w{n}")
    assert [w["worker_id"] for w in pool.listing()] == ["w3", "w4", "w5"]


async def test_close_destroys_idle_workers(pool: WorkerPool, tmp_path: Path) -> None:
    warm, _ = await pool.prewarm("warm-1", "local")
    assert warm.worker is not None
    await pool.close()
    assert not (tmp_path / "workers" / warm.worker.worker_id).exists()
    assert pool.require("warm-1").state == "ended"


async def test_a_failed_prewarm_leaves_nothing(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    pool = WorkerPool(LocalProvider(blocker, base_env=ENV))
    with pytest.raises(ProviderError):
        await pool.prewarm("warm-1", "local")
    assert pool.listing() == [] and pool.get("warm-1") is None
