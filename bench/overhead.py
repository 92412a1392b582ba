"""Orchestration overhead per job, against bare process spawns in the same run.

    .venv/bin/python bench/overhead.py [--jobs 500] [--dag 1000] [--repeat 3]

Prints one JSON object per measurement, then a table. The bare baseline spawns the same
`sh -c true` processes from a plain asyncio loop, 2 at a time; faena runs N independent
one-step jobs with -j 2 through the embedded system (SQLite store, in-process bus, local
workers). Overhead per job = (faena wall time - bare wall time) / N.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from faena.app import App
from faena.domain.states import RunState
from faena.settings import Settings
from faena.spec import parse_pipeline


async def bare(n: int, parallel: int) -> float:
    sem = asyncio.Semaphore(parallel)

    async def one() -> None:
        async with sem:
            proc = await asyncio.create_subprocess_exec("sh", "-c", "true")
            await proc.wait()

    start = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(n)))
    return time.perf_counter() - start


def independent(n: int) -> str:
    jobs = "".join(f"  j{i}:\n    steps: [{{run: 'true', shell: sh}}]\n" for i in range(n))
    return f"name: independent\njobs:\n{jobs}"


def chain(n: int) -> str:
    jobs = "  j0:\n    steps: [{run: 'true', shell: sh}]\n"
    jobs += "".join(
        f"  j{i}:\n    needs: j{i - 1}\n    steps: [{{run: 'true', shell: sh}}]\n"
        for i in range(1, n)
    )
    return f"name: chain\njobs:\n{jobs}"


def fan(n: int) -> str:
    middle = [f"m{i}" for i in range(n - 2)]
    jobs = "  first:\n    steps: [{run: 'true', shell: sh}]\n"
    jobs += "".join(
        f"  {m}:\n    needs: first\n    steps: [{{run: 'true', shell: sh}}]\n" for m in middle
    )
    jobs += f"  last:\n    needs: [{', '.join(middle)}]\n    steps: [{{run: 'true', shell: sh}}]\n"
    return f"name: fan\njobs:\n{jobs}"


async def faena(text: str, parallel: int) -> tuple[float, float]:
    """Wall seconds from submit to run end, and the whole run including start-up."""
    spec = parse_pipeline(text, "bench.yml")
    with tempfile.TemporaryDirectory() as home:
        t0 = time.perf_counter()
        app = App(Settings(home=Path(home), jobs=parallel))
        await app.start()
        try:
            start = time.perf_counter()
            run_id = await app.orchestrator.submit(spec)
            run = await app.orchestrator.wait(run_id)
            elapsed = time.perf_counter() - start
            assert run.state is RunState.SUCCEEDED, run.message
        finally:
            await app.close()
        return elapsed, time.perf_counter() - t0


def emit(record: dict[str, object]) -> None:
    print(json.dumps(record), flush=True)


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--dag", type=int, default=1000)
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    n, p = args.jobs, args.parallel

    rows = []
    bare_t, faena_t = [], []
    for _ in range(args.repeat):
        # Interleaved so machine noise hits both sides alike.
        bare_t.append(await bare(n, p))
        faena_t.append((await faena(independent(n), p))[0])
    b, f = statistics.median(bare_t), statistics.median(faena_t)
    overhead_ms = (f - b) / n * 1000
    record = {
        "bench": "independent",
        "jobs": n,
        "parallel": p,
        "bare_s": round(b, 3),
        "faena_s": round(f, 3),
        "overhead_ms_per_job": round(overhead_ms, 2),
        "ratio": round(f / b, 2),
    }
    emit(record)
    rows.append(record)

    for name, text in (("chain", chain(args.dag)), ("fan-out/fan-in", fan(args.dag))):
        runs = [(await faena(text, p))[0] for _ in range(max(1, args.repeat - 1))]
        bare_dag = await bare(args.dag, 1 if name == "chain" else p)
        t = statistics.median(runs)
        record = {
            "bench": name,
            "jobs": args.dag,
            "parallel": p,
            "bare_s": round(bare_dag, 3),
            "faena_s": round(t, 3),
            "overhead_ms_per_job": round((t - bare_dag) / args.dag * 1000, 2),
            "ratio": round(t / bare_dag, 2),
        }
        emit(record)
        rows.append(record)

    print(file=sys.stderr)
    print(
        f"{'bench':<16}{'jobs':>6}{'bare s':>9}{'faena s':>9}{'ms/job':>9}{'ratio':>7}",
        file=sys.stderr,
    )
    for r in rows:
        print(
            f"{r['bench']:<16}{r['jobs']:>6}{r['bare_s']:>9}{r['faena_s']:>9}"
            f"{r['overhead_ms_per_job']:>9}{r['ratio']:>7}",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
