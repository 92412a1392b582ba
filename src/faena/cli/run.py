"""``faena run`` and ``faena resume``: drive a run in this process until it ends."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from dataclasses import replace
from pathlib import Path

from faena.domain.errors import FaenaError, SpecValidationError
from faena.domain.spec import PipelineSpec, Resources
from faena.settings import Settings

EXIT_OK, EXIT_FAILED, EXIT_INVALID, EXIT_INTERRUPTED = 0, 1, 2, 130


def run_command(
    file: Path,
    *,
    jobs: int | None,
    json_out: bool,
    keep_workspace: bool,
    pause_on_failure: str | None = None,
    provider: str | None = None,
) -> int:
    from faena.cli.validate import print_issues
    from faena.domain.durations import parse_duration
    from faena.spec import load_pipeline

    pause = None
    if pause_on_failure is not None:
        try:
            pause = parse_duration(pause_on_failure)
        except ValueError as exc:
            print(f"error: --pause-on-failure: {exc}", file=sys.stderr)
            return EXIT_INVALID

    try:
        spec = load_pipeline(file)
    except SpecValidationError as exc:
        print_issues(exc, file)
        return EXIT_INVALID
    # Jobs find the pipeline's directory in FAENA_SOURCE_DIR, whatever the cwd.
    spec = replace(spec, source=str(file.resolve()))
    if pause is not None:
        spec = replace(spec, pause_on_failure=pause)
    settings = Settings.from_env(
        jobs=jobs,
        keep_workspace=keep_workspace or None,
        provider=provider,
        pools="" if provider else None,  # an explicit --provider wins over FAENA_POOLS
    )
    local = settings.provider == "local" and not settings.pools
    unenforced = sorted(
        {f for j in spec.jobs.values() for f, used in
         (("runs-on", j.runs_on), ("image", j.image and local),
          ("resources", j.resources != Resources() and local),
          ("services", j.services and local))
         if used}
    )  # fmt: skip
    if unenforced and not json_out:
        where = "every job runs as local processes on this machine" if local else (
            "jobs run on this machine")  # fmt: skip
        print(f"note: {', '.join(unenforced)} recorded but not enforced: {where} "
              "(--provider docker runs images, limits and services)", file=sys.stderr)  # fmt: skip
    return asyncio.run(_drive(settings, json_out, spec=spec))


def resume_command(
    ref: str, *, jobs: int | None, json_out: bool, keep_workspace: bool = False
) -> int:
    settings = Settings.from_env(jobs=jobs, keep_workspace=keep_workspace or None)
    return asyncio.run(_drive(settings, json_out, resume_ref=ref))


async def _drive(
    settings: Settings,
    json_out: bool,
    *,
    spec: PipelineSpec | None = None,
    resume_ref: str | None = None,
) -> int:
    from faena.app import App
    from faena.cli.locks import RunLock, RunLocked
    from faena.cli.progress import make_display
    from faena.domain.states import RunState
    from faena.store.port import AmbiguousRef

    # One process: its events stay in it. A bus shared with servers would hand them this
    # process's events and take theirs (durable consumers are shared by name).
    app = App(replace(settings, bus_url=None))
    try:
        await app.open()
        leader = await app.store.leader()
        if leader is None:
            await app.lead()
    except Exception as exc:
        print(f"error: cannot start: {exc}", file=sys.stderr)
        await app.close()
        return EXIT_FAILED
    if leader is not None:
        # Their leader would take this process's unfinished runs for its own.
        print(
            f"error: this database belongs to faena server replicas (leader {leader.holder} "
            f"at {leader.url}): run pipelines there with `faena submit`",
            file=sys.stderr,
        )
        await app.close()
        return EXIT_INVALID
    lock: RunLock | None = None
    interrupted = 0
    try:
        run_id: str | None = None
        if resume_ref is not None:
            try:
                run_id = await app.store.resolve_run_id(resume_ref)
            except AmbiguousRef as exc:
                print(f"error: {exc.message}", file=sys.stderr)
                return EXIT_INVALID
            if run_id is None:
                print(f"error: no run matches '{resume_ref}'", file=sys.stderr)
                return EXIT_INVALID
            lock = RunLock(settings.locks, run_id)
            try:
                lock.acquire()
            except RunLocked as exc:
                print(f"error: run {run_id} is still being run by {exc}", file=sys.stderr)
                lock = None
                return EXIT_INVALID
        display = make_display(json_out, lambda: app.orchestrator.snapshot(run_id or ""))
        await app.bus.subscribe("ci.>", display.on_event, durable="cli")
        if spec is not None:
            run_id = await app.orchestrator.submit(spec, options={"source": spec.source})
            lock = RunLock(settings.locks, run_id)
            lock.acquire()
            display.start(run_id)
            await display.replay()
        else:
            assert run_id is not None
            try:
                await app.resume(run_id)
            except FaenaError as exc:
                print(f"error: {exc.message}", file=sys.stderr)
                return EXIT_INVALID
            display.start(run_id)
            await display.replay()
            display.note(f"resuming run {run_id}")

        loop = asyncio.get_running_loop()
        tasks: set[asyncio.Task[None]] = set()

        def on_signal() -> None:
            nonlocal interrupted
            interrupted += 1
            if interrupted == 1:
                display.note("interrupted: cancelling the run (Ctrl-C again to stop at once)")
                assert run_id is not None
                tasks.add(loop.create_task(app.orchestrator.cancel(run_id, "interrupted")))
            else:
                # Second Ctrl-C: leave now; workers are killed at once by close(force).
                app.local.hurry()
                waiter.cancel()

        # SIGHUP too: a closed terminal or SSH session cancels the run cleanly.
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.add_signal_handler(sig, on_signal)
        waiter = asyncio.ensure_future(app.orchestrator.wait(run_id))
        try:
            run = await waiter
        except asyncio.CancelledError:
            return EXIT_INTERRUPTED
        drain = getattr(app.bus, "drain", None)  # the in-process bus: let the display catch up
        if drain is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(drain(), timeout=5)
        display.finish(run)
        if settings.keep_workspace:
            display.note(f"workspaces kept in {settings.workspaces.resolve()}/<worker>/workspace "
                         "(faena run --json shows each job's worker)")  # fmt: skip
        if interrupted:
            return EXIT_INTERRUPTED
        return EXIT_OK if run.state is RunState.SUCCEEDED else EXIT_FAILED
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_signal_handler(sig)
        await app.close()
        if lock is not None:
            lock.release()
        sys.stdout.flush()
