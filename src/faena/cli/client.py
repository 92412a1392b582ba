"""``faena submit``, ``status`` and ``cancel``: the CLI as a client of ``faena server``."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import httpx

TERMINAL = ("SUCCEEDED", "FAILED", "CANCELLED")
DEFAULT_SERVER = "http://127.0.0.1:8080"


class ClientError(Exception):
    """The server said no, or could not be reached; ``exit_code`` is what the CLI returns."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class Api:
    def __init__(self, server: str | None, token: str | None) -> None:
        base = server or os.environ.get("FAENA_SERVER") or DEFAULT_SERVER
        secret = token or os.environ.get("FAENA_TOKEN")
        headers = {"Authorization": f"Bearer {secret}"} if secret else {}
        self.base = base.rstrip("/")
        self.http = httpx.Client(base_url=self.base, headers=headers, timeout=30)

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            r = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise ClientError(f"cannot reach {self.base}: {exc}", 1) from None
        if r.status_code >= 400:
            raise ClientError(_describe(r), 2 if r.status_code < 500 else 1)
        return r.json()


def _describe(r: httpx.Response) -> str:
    try:
        body = r.json()
    except ValueError:
        return f"HTTP {r.status_code}: {r.text[:200]}"
    lines = [f"{body.get('code', r.status_code)}: {body.get('detail', '')}"]
    for e in body.get("errors", []):
        where = e.get("file", "")
        if e.get("line"):
            where += f":{e['line']}:{e.get('column', 0)}"
        path = f" {e['path']}:" if e.get("path") else ""
        lines.append(f"  {where}{path} {e.get('message', '')}".rstrip())
    return "\n".join(lines)


def _exit_for(state: str) -> int:
    return 0 if state == "SUCCEEDED" else 130 if state == "CANCELLED" else 1


def submit_command(
    file: Path, *, follow: bool, json_out: bool, server: str | None, token: str | None
) -> int:
    try:
        text = file.read_bytes()
    except OSError as exc:
        print(f"error: {file}: {exc.strerror}", file=sys.stderr)
        return 2
    try:
        api = Api(server, token)
        created = api.call("POST", "/api/v1/pipelines", content=text,
                           headers={"X-Faena-Filename": str(file),
                                    "Content-Type": "application/yaml"})  # fmt: skip
        run_id = created["run_id"]
        if not follow:
            print(json.dumps(created) if json_out else f"run {run_id} submitted to {api.base}")
            return 0
        return _follow(api, run_id, json_out)
    except ClientError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code


def _follow(api: Api, run_id: str, json_out: bool) -> int:
    seen: dict[str, str] = {}
    if not json_out:
        print(f"run {run_id} (following; Ctrl-C stops following, not the run)")
    while True:
        run = api.call("GET", f"/api/v1/pipelines/{run_id}")
        for job in run["jobs"]:
            if seen.get(job["job_id"]) != job["state"]:
                seen[job["job_id"]] = job["state"]
                if json_out:
                    print(json.dumps({"job": job["name"], "state": job["state"]}), flush=True)
                else:
                    extra = f": {job['message']}" if job.get("message") else ""
                    print(f"{time.strftime('%H:%M:%S')} {job['name']} {job['state'].lower()}"
                          f"{extra}", flush=True)  # fmt: skip
        if run["state"] in TERMINAL:
            if json_out:
                print(json.dumps({"type": "result", "run_id": run_id, "state": run["state"]}))
            else:
                print(f"run {run_id} {run['state'].lower()}")
            return _exit_for(run["state"])
        time.sleep(0.5)


def status_command(ref: str, *, json_out: bool, server: str | None, token: str | None) -> int:
    try:
        run = Api(server, token).call("GET", f"/api/v1/pipelines/{ref}")
    except ClientError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    if json_out:
        print(json.dumps(run))
        return 0
    print(f"run {run['run_id']} · {run['pipeline']} · {run['state']}")
    for job in run["jobs"]:
        extra = f"  {job['message']}" if job.get("message") else ""
        print(f"  {job['state']:<10} {job['name']}{extra}")
    return 0


def cancel_command(ref: str, *, server: str | None, token: str | None) -> int:
    api = Api(server, token)
    # Job ids are "<run>.<n>"; anything else names a run.
    path = f"/api/v1/jobs/{ref}/cancel" if "." in ref else f"/api/v1/pipelines/{ref}/cancel"
    try:
        answer = api.call("POST", path)
    except ClientError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    print(f"{answer.get('run_id') or answer.get('job_id')}: {answer['status']}")
    return 0


def retry_command(ref: str, *, follow: bool, server: str | None, token: str | None) -> int:
    api = Api(server, token)
    is_job = "." in ref
    path = f"/api/v1/jobs/{ref}/retry" if is_job else f"/api/v1/pipelines/{ref}/retry"
    try:
        answer = api.call("POST", path)
        run_id = ref.rsplit(".", 1)[0] if is_job else answer["run_id"]
        print(f"run {run_id}: retrying {len(answer['jobs'])} job(s)")
        return _follow(api, run_id, False) if follow else 0
    except ClientError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code


def nodes_command(*, json_out: bool, server: str | None, token: str | None) -> int:
    try:
        items = Api(server, token).call("GET", "/api/v1/nodes")["items"]
    except ClientError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
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
) -> int:
    try:
        api = Api(server, token)
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
            api.call("DELETE", f"/api/v1/tokens/{name}")
            print(f"token {name} revoked")
            return 0
        items = api.call("GET", "/api/v1/tokens")["items"]
    except ClientError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    if json_out:
        print(json.dumps(items, indent=2))
        return 0
    print(f"{'ID':<16}{'NAME':<20}{'KIND':<8}{'STATE':<9}SCOPES")
    for t in items:
        state = "revoked" if t.get("revoked_at") else "active"
        print(f"{t['token_id']:<16}{t['name']:<20}{t['kind']:<8}{state:<9}{','.join(t['scopes'])}")
    return 0
