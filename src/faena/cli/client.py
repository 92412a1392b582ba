"""``faena submit``, ``status``, ``cancel``, ``retry``, ``nodes`` and ``token``: the CLI as
a client of ``faena server``. The server and token come from the flags, the environment
or the config file (``faena.cli.config``)."""

from __future__ import annotations

import json
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from faena.cli.config import ClientConfig, resolve
from faena.cli.log_sections import step_name

TERMINAL = ("SUCCEEDED", "FAILED", "CANCELLED")
ENDED = (*TERMINAL, "SKIPPED")  # a job's ends
DEFAULT_SERVER = "http://127.0.0.1:8080"
POLL = 0.5  # seconds between two looks at a followed run
LOG_PAGE = 10_000


WAIT_FOR_LEADER = 30.0  # seconds a command waits for the replicas to elect a leader


class ClientError(Exception):
    """The server said no, or could not be reached; ``exit_code`` is what the CLI returns,
    ``status`` the HTTP status (0 when there was no answer)."""

    def __init__(self, message: str, exit_code: int, status: int = 0) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.status = status


class Api:
    def __init__(
        self, server: str | None = None, token: str | None = None, profile: str | None = None
    ) -> None:
        self._setup(resolve(server=server, token=token, profile=profile))

    @classmethod
    def from_config(cls, config: ClientConfig) -> Api:
        api = cls.__new__(cls)
        api._setup(config)
        return api

    def _setup(self, config: ClientConfig) -> None:
        self.config = config
        self.base = (config.server or DEFAULT_SERVER).rstrip("/")
        headers = {"Authorization": f"Bearer {config.token}"} if config.token else {}
        self.http = httpx.Client(base_url=self.base, headers=headers, timeout=30)

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        deadline = time.monotonic() + WAIT_FOR_LEADER
        told = False
        while True:
            try:
                r = self.http.request(method, path, **kwargs)
            except httpx.HTTPError as exc:
                origin = self.config.server_from
                where = f" (server from {origin})" if origin and origin != "--server" else ""
                raise ClientError(f"cannot reach {self.base}{where}: {exc}", 1) from None
            # A replica with no leader to forward to (an election in progress) asks for a
            # retry; it did nothing with the request, so sending it again is safe.
            after = r.headers.get("retry-after", "")
            if r.status_code != 503 or not after.isdigit() or time.monotonic() > deadline:
                break
            if not told:
                print(f"waiting: {describe(r)}", file=sys.stderr)
                told = True
            time.sleep(min(float(after), 5.0))
        if r.status_code >= 400:
            message = describe(r)
            if r.status_code == 401:
                message += self._token_hint()
            raise ClientError(message, 2 if r.status_code < 500 else 1, r.status_code)
        try:
            return r.json()
        except ValueError:
            raise ClientError(
                f"{self.base} did not answer as a faena server (HTTP {r.status_code}, "
                f"{r.headers.get('content-type', 'no content type')})",
                1,
                r.status_code,
            ) from None

    def _token_hint(self) -> str:
        if not self.config.token:
            return (
                '\n  no token: give --token T, set FAENA_TOKEN or put token = "..." in the'
                " config file (docs/cli.md)"
            )
        return f"\n  (the token came from {self.config.token_from})"


def describe(r: httpx.Response) -> str:
    """A problem answer as the CLI prints it: ``CODE: detail`` and located errors."""
    try:
        body = r.json()
    except ValueError:
        return f"HTTP {r.status_code}: {r.text[:200]}"
    if not isinstance(body, dict):
        return f"HTTP {r.status_code}: {r.text[:200]}"
    errors = body.get("errors") or []
    detail = body.get("detail", "")
    if errors:
        # The detail repeats the errors in one line; each is printed on its own below.
        detail = f"{len(errors)} error(s)"
    lines = [f"{body.get('code', r.status_code)}: {detail}"]
    for e in errors:
        where = e.get("file", "")
        if e.get("line"):
            where += f":{e['line']}:{e.get('column', 0)}"
        path = f" {e['path']}:" if e.get("path") else ""
        lines.append(f"  {where}{path} {e.get('message', '')}".rstrip())
    return "\n".join(lines)


def _exit_for(state: str) -> int:
    return 0 if state == "SUCCEEDED" else 130 if state == "CANCELLED" else 1


def _fail(exc: ClientError) -> int:
    sys.stdout.flush()
    print(f"error: {exc}", file=sys.stderr)
    return exc.exit_code


def _run_path(ref: str) -> str:
    return f"/api/v1/pipelines/{quote(ref, safe='')}"


def _job_path(ref: str) -> str:
    return f"/api/v1/jobs/{quote(ref, safe='')}"


def _action_path(ref: str, action: str) -> str:
    """``cancel``/``retry`` of a job (ids are ``<run>.<n>``) or else of a run."""
    return f"{_job_path(ref) if '.' in ref else _run_path(ref)}/{action}"


def submit_command(
    file: Path,
    *,
    follow: bool,
    json_out: bool,
    server: str | None,
    token: str | None,
    profile: str | None = None,
    pause_on_failure: str | None = None,
) -> int:
    try:
        text = file.read_bytes()
    except OSError as exc:
        print(f"error: {file}: {exc.strerror}", file=sys.stderr)
        return 2
    api = Api(server, token, profile)
    params = {"pause_on_failure": pause_on_failure} if pause_on_failure else {}
    try:
        created = api.call("POST", "/api/v1/pipelines", content=text, params=params,
                           headers={"X-Faena-Filename": str(file),
                                    "Content-Type": "application/yaml",
                                    # Sent again after a 503, it cannot start a second run.
                                    "Idempotency-Key": uuid.uuid4().hex})  # fmt: skip
    except ClientError as exc:
        return _fail(exc)
    run_id = created["run_id"]
    if not follow:
        if json_out:
            print(json.dumps(created))
        else:
            # The id alone on stdout, so RUN=$(faena submit faena.yml) works.
            print(run_id)
            print(f"run {run_id} submitted to {api.base}", file=sys.stderr)
        return 0
    return follow_run(api, run_id, json_out=json_out)


# -- following a run -------------------------------------------------------------------


def follow_run(
    api: Api,
    run_id: str,
    *,
    json_out: bool,
    after: int = 0,
    before: dict[str, Any] | None = None,
    title: bool = True,
) -> int:
    """Print the run's job state changes and its jobs' output as they happen, until it
    ends; the exit code is the run's (0 succeeded, 1 failed, 130 cancelled). ``after``
    skips the log lines up to that id and ``before`` (the run as it was) the state
    changes already seen, for a retry. Ctrl-C stops following; the run goes on."""
    view = FollowView(json_out=json_out, before=before)
    logs = True
    try:
        while True:
            run = api.call("GET", _run_path(run_id))
            if title:
                view.title(run)
                title = False
            lines: list[dict[str, Any]] = []
            full = False
            if logs:
                try:
                    for page in _log_pages(api, run_id, after):
                        lines += page["lines"]
                        after = page["next"]
                        full = len(page["lines"]) >= LOG_PAGE
                        if full and len(lines) >= 5 * LOG_PAGE:
                            break  # print what we have; the rest comes next turn
                except ClientError as exc:
                    if exc.status != 404:
                        raise
                    logs = False  # a server without the logs endpoint: states only
                    view.note("note: this server does not serve logs; showing job states only")
            view.update(run, lines)
            if run["state"] in TERMINAL and not full:
                view.finish(run)
                return _exit_for(run["state"])
            if not full:
                time.sleep(POLL)
    except ClientError as exc:
        return _fail(exc)
    except KeyboardInterrupt:
        sys.stdout.flush()
        print(f"\nstopped following; run {run_id} goes on (faena status {run_id}, "
              f"faena logs -f {run_id})", file=sys.stderr)  # fmt: skip
        return 130


def _log_pages(api: Api, run_id: str, after: int) -> Iterator[dict[str, Any]]:
    """Pages of the run's log lines after ``after``, until one comes back short."""
    while True:
        page: dict[str, Any] = api.call(
            "GET", f"{_run_path(run_id)}/logs", params={"after": after, "limit": LOG_PAGE}
        )
        yield page
        if len(page["lines"]) < LOG_PAGE:
            return
        after = page["next"]


def _log_end(api: Api, run_id: str) -> int:
    """The id of the run's last log line (0 if none, or if the server has no logs)."""
    after = 0
    try:
        for page in _log_pages(api, run_id, 0):
            after = page["next"]
    except ClientError as exc:
        if exc.status != 404:
            raise
    return after


class FollowView:
    """What ``--follow`` prints: one line per job state change, each job's output lines
    prefixed with its name (``name | text``), and a summary; or NDJSON objects of type
    ``job``, ``log`` and, last, ``result``."""

    def __init__(self, *, json_out: bool, before: dict[str, Any] | None = None) -> None:
        self.json_out = json_out
        self.seen: dict[str, tuple[str, int]] = {}
        self.started: dict[str, int] = {}  # job id -> attempt whose start was printed
        self.step: dict[str, tuple[int, int]] = {}
        self.jobs: dict[str, dict[str, Any]] = {}
        self.width = 0
        for job in (before or {}).get("jobs", []):
            self.seen[job["job_id"]] = (job["state"], job.get("attempt", 1))
            if job.get("started_at"):
                self.started[job["job_id"]] = job.get("attempt", 1)

    def _emit(self, text: str) -> None:
        sys.stdout.write(text + "\n")

    def note(self, message: str) -> None:
        if self.json_out:
            self._emit(json.dumps({"type": "note", "message": message}))
        else:
            print(message, file=sys.stderr)

    def title(self, run: dict[str, Any]) -> None:
        if not self.json_out:
            self._emit(f"run {run['run_id']} · {run.get('pipeline', '')} "
                       "(following; Ctrl-C stops following, not the run)")  # fmt: skip
        sys.stdout.flush()

    def update(self, run: dict[str, Any], lines: list[dict[str, Any]]) -> None:
        """Print what happened since the last poll in the order it happened: starts,
        output lines and ends merged by their times (at equal times a start comes
        before its lines, and its lines before its end)."""
        for job in run["jobs"]:
            self.jobs[job["job_id"]] = job
        self.width = min(30, max((len(j["name"]) for j in self.jobs.values()), default=0))
        now_ts = time.time()
        items: list[tuple[float, int, int, Callable[[], None]]] = []

        def add(at: float | None, rank: int, show: Callable[[], None]) -> None:
            items.append((at if at is not None else now_ts, rank, len(items), show))

        for job in run["jobs"]:
            now = (job["state"], job.get("attempt", 1))
            before = self.seen.get(job["job_id"])
            if now == before:
                continue
            self.seen[job["job_id"]] = now
            if now[0] in ENDED:
                if self.json_out:
                    add(job.get("finished_at"), 2, partial(self._job_event, job))
                else:
                    add(job.get("finished_at"), 2, partial(self._ended, job))
            elif self.json_out:
                add(job.get("started_at") or job.get("queued_at"), 0,
                    partial(self._job_event, job))  # fmt: skip
            elif now[0] == "RUNNING":
                add(job.get("started_at"), 0, partial(self._started, job, now[1]))
            elif before is not None and before[0] == "RUNNING" and now[1] > before[1]:
                # Back to the queue with a new attempt: the job's own retry.
                reason = job.get("message") or job.get("error_code") or "failed"
                text = f"failed: {reason} — retrying"
                add(job.get("queued_at"), 2, partial(self._state_line, job, "✗", text, None))
        for ln in lines:
            add(ln.get("ts"), 1, partial(self._line, ln))
        for *_, show in sorted(items, key=lambda i: i[:3]):
            show()
        sys.stdout.flush()

    def _job_event(self, job: dict[str, Any]) -> None:
        self._emit(json.dumps({
            "type": "job", "job": job["name"], "job_id": job["job_id"], "state": job["state"],
            "attempt": job.get("attempt", 1), "message": job.get("message"),
        }))  # fmt: skip

    def _state_line(self, job: dict[str, Any], icon: str, text: str, at: float | None) -> None:
        stamp = time.strftime("%H:%M:%S", time.localtime(at or time.time()))
        self._emit(f"{stamp} {icon} {job['name']} {text}")

    def _started(self, job: dict[str, Any], attempt: int) -> None:
        if self.started.get(job["job_id"]) == attempt:
            return
        self.started[job["job_id"]] = attempt
        again = f" (attempt {attempt})" if attempt > 1 else ""
        self._state_line(job, "▶", f"started{again}", job.get("started_at"))

    def _ended(self, job: dict[str, Any]) -> None:
        state, message = job["state"], job.get("message")
        at = job.get("finished_at")
        if state == "SUCCEEDED":
            took = ""
            if job.get("started_at") and job.get("finished_at"):
                from faena.cli.progress import fmt_duration

                took = f" in {fmt_duration(job['finished_at'] - job['started_at'])}"
            self._state_line(job, "✓", f"succeeded{took}", at)
        elif state == "FAILED":
            self._state_line(job, "✗", f"failed: {message or job.get('error_code')}", at)
        elif state == "CANCELLED":
            self._state_line(job, "⊘", "cancelled" + (f": {message}" if message else ""), at)
        else:
            self._state_line(job, "–", "skipped" + (f": {message}" if message else ""), at)

    def _line(self, ln: dict[str, Any]) -> None:
        job = self.jobs.get(ln["job_id"], {"job_id": ln["job_id"], "name": ln["job_id"]})
        if self.json_out:
            self._emit(json.dumps({
                "type": "log", "job": job["name"], "job_id": ln["job_id"],
                "attempt": ln["attempt"], "step": ln["step_index"], "stream": ln["stream"],
                "ts": ln["ts"], "text": ln["text"],
            }))  # fmt: skip
            return
        if self.started.get(ln["job_id"]) != ln["attempt"]:
            self._started({**job, "started_at": ln["ts"]}, ln["attempt"])
        prefix = f"{job['name']:<{self.width}} | "
        step = (ln["attempt"], ln["step_index"])
        if self.step.get(ln["job_id"]) != step:
            self.step[ln["job_id"]] = step
            self._emit(f"{prefix}--- {step_name(job, ln['step_index'])}")
        self._emit(prefix + ln["text"])

    def finish(self, run: dict[str, Any]) -> None:
        state = run["state"]
        if self.json_out:
            jobs = [{"job_id": j["job_id"], "name": j["name"], "state": j["state"],
                     "result": j.get("result"), "attempt": j.get("attempt", 1),
                     "error_code": j.get("error_code"), "message": j.get("message")}
                    for j in run["jobs"]]  # fmt: skip
            self._emit(json.dumps({
                "type": "result", "run_id": run["run_id"], "pipeline": run.get("pipeline"),
                "state": state, "result": run.get("result"), "message": run.get("message"),
                "jobs": jobs,
            }))  # fmt: skip
            sys.stdout.flush()
            return
        from faena.cli.progress import fmt_duration

        counts: dict[str, int] = {}
        for j in run["jobs"]:
            counts[j["state"].lower()] = counts.get(j["state"].lower(), 0) + 1
        summary = ", ".join(f"{n} {s}" for s, n in counts.items())
        start = run.get("started_at") or run.get("created_at")
        end = run.get("finished_at")
        took = f" in {fmt_duration(end - start)}" if end and start else ""
        if state == "SUCCEEDED":
            self._emit(f"✓ run {run['run_id']} succeeded{took} ({summary})")
        else:
            verb = "was cancelled" if state == "CANCELLED" else "failed"
            self._emit(f"✗ run {run['run_id']} {verb}{took} ({summary})")
            if run.get("message"):
                self._emit(f"  {run['message']}")
            self._emit(f"  logs: faena logs {run['run_id']} JOB")
        sys.stdout.flush()


# -- one-shot commands -----------------------------------------------------------------


def status_command(
    ref: str, *, json_out: bool, server: str | None, token: str | None, profile: str | None = None
) -> int:
    try:
        run = Api(server, token, profile).call("GET", _run_path(ref))
    except ClientError as exc:
        return _fail(exc)
    if json_out:
        print(json.dumps(run))
        return 0
    attempt = f" · attempt {run['attempt']}" if run.get("attempt", 1) > 1 else ""
    print(f"run {run['run_id']} · {run['pipeline']} · {run['state']}{attempt}")
    for job in run["jobs"]:
        notes = []
        if job.get("attempt", 0) > 1:
            notes.append(f"attempt {job['attempt']}")
        if job.get("node_id") and job["state"] in ("SCHEDULED", "RUNNING"):
            notes.append(f"on {job['node_id']}")
        if job.get("paused_until"):
            until = time.strftime("%H:%M:%S", time.localtime(job["paused_until"]))
            notes.append(f"PAUSED for debugging until {until}: faena exec "
                         f"{run['run_id']} {job['name']} -- CMD")  # fmt: skip
        if job.get("waiting"):
            notes.append(f"waiting: {job['waiting']}")
        if job.get("message"):
            notes.append(job["message"])
        extra = f"  {'; '.join(notes)}" if notes else ""
        print(f"  {job['state']:<10} {job['name']}{extra}")
    return 0


def cancel_command(
    ref: str,
    *,
    server: str | None,
    token: str | None,
    json_out: bool = False,
    profile: str | None = None,
) -> int:
    api = Api(server, token, profile)
    path = _action_path(ref, "cancel")
    try:
        answer = api.call("POST", path)
    except ClientError as exc:
        return _fail(exc)
    if json_out:
        print(json.dumps(answer))
    else:
        print(f"{answer.get('run_id') or answer.get('job_id')}: {answer['status']}")
    return 0


def retry_command(
    ref: str,
    *,
    follow: bool,
    server: str | None,
    token: str | None,
    json_out: bool = False,
    profile: str | None = None,
) -> int:
    api = Api(server, token, profile)
    is_job = "." in ref
    path = _action_path(ref, "retry")
    try:
        before: dict[str, Any] | None = None
        after = 0
        if follow:
            # What was already there is not shown again: only what the retry changes.
            before = api.call("GET", _run_path(ref.rsplit(".", 1)[0] if is_job else ref))
            after = _log_end(api, before["run_id"])
        answer = api.call("POST", path)
    except ClientError as exc:
        return _fail(exc)
    run_id = before["run_id"] if before else answer.get("run_id") or ref.rsplit(".", 1)[0]
    if json_out:
        print(json.dumps({"type": "retry", **answer} if follow else answer), flush=True)
    else:
        print(f"run {run_id}: retrying {len(answer['jobs'])} job(s)", flush=True)
    if not follow:
        return 0
    return follow_run(api, run_id, json_out=json_out, after=after, before=before, title=False)


def nodes_command(
    *, json_out: bool, server: str | None, token: str | None, profile: str | None = None
) -> int:
    try:
        items = Api(server, token, profile).call("GET", "/api/v1/nodes")["items"]
    except ClientError as exc:
        return _fail(exc)
    if json_out:
        print(json.dumps(items, indent=2))
        return 0
    if not items:
        print("no nodes (start one: faena agent --server URL --token T)")
        return 0
    print(f"{'NODE':<16}{'NAME':<20}{'STATE':<12}{'RUNNING':<9}{'SLOTS':<7}LABELS")
    for n in items:
        slots = n.get("capacity", {}).get("slots", "")
        print(f"{n['node_id']:<16}{n.get('name', ''):<20}{n['state']:<12}"
              f"{n.get('running', 0):<9}{slots!s:<7}{','.join(n.get('labels', []))}")  # fmt: skip
    return 0


def token_command(
    action: str,
    name: str | None,
    *,
    agent: bool,
    scopes: list[str],
    ttl_days: float | None,
    json_out: bool,
    server: str | None,
    token: str | None,
    profile: str | None = None,
) -> int:
    try:
        api = Api(server, token, profile)
        if action == "create":
            if not name:
                raise ClientError("faena token create NAME: the token needs a name", 2)
            body: dict[str, Any] = {"name": name, "kind": "agent" if agent else "user",
                                    "scopes": scopes}  # fmt: skip
            if ttl_days is not None:
                body["ttl_days"] = ttl_days
            made = api.call("POST", "/api/v1/tokens", json=body)
            if json_out:
                print(json.dumps(made))
            else:
                print(f"token {made['token_id']} ({made['kind']}; {', '.join(made['scopes'])}), "
                      "shown once:", file=sys.stderr)  # fmt: skip
                print(made["token"])
            return 0
        if action == "revoke":
            if not name:
                raise ClientError("faena token revoke ID: which token?", 2)
            answer = api.call("DELETE", f"/api/v1/tokens/{quote(name, safe='')}")
            print(json.dumps(answer) if json_out else f"token {name} revoked")
            return 0
        items = api.call("GET", "/api/v1/tokens")["items"]
    except ClientError as exc:
        return _fail(exc)
    if json_out:
        print(json.dumps(items, indent=2))
        return 0
    print(f"{'ID':<16}{'NAME':<20}{'KIND':<8}{'STATE':<9}SCOPES")
    for t in items:
        state = "revoked" if t.get("revoked_at") else "active"
        print(f"{t['token_id']:<16}{t['name']:<20}{t['kind']:<8}{state:<9}{','.join(t['scopes'])}")
    return 0
