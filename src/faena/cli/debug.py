"""``faena exec``: run a command in the kept worker of a job paused on failure."""

from __future__ import annotations

import json
import shlex
import sys

import httpx

from faena.cli.client import Api, ClientError, describe


def exec_command(
    run: str,
    job: str,
    command_line: list[str],
    *,
    resume: bool,
    exec_id: str | None,
    server: str | None,
    token: str | None,
    profile: str | None = None,
) -> int:
    """Stream the command's output to stdout/stderr; exit with its exit code."""
    if resume == bool(command_line):
        print("error: give a command after '--', or --resume (not both)", file=sys.stderr)
        return 2
    api = Api(server, token, profile)
    body: dict[str, object] = {"run": run, "job": job}
    if resume:
        try:
            answer = api.call("POST", "/api/v1/exec", json={**body, "resume": True})
        except ClientError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return exc.exit_code
        print(f"job {answer['job_id']}: pause ends; it finishes as failed", file=sys.stderr)
        return 0
    command = command_line[0] if len(command_line) == 1 else shlex.join(command_line)
    body["command"] = command
    if exec_id:
        body["exec_id"] = exec_id
    try:
        with api.http.stream("POST", "/api/v1/exec", json=body, timeout=None) as r:
            if r.status_code >= 400:
                r.read()
                raise ClientError(describe(r), 2 if r.status_code < 500 else 1)
            for raw in r.iter_lines():
                if not raw:
                    continue
                item = json.loads(raw)
                if "exit_code" in item:
                    return int(item["exit_code"])
                out = sys.stderr if item.get("stream") == "stderr" else sys.stdout
                print(item.get("text", ""), file=out, flush=True)
    except ClientError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except httpx.HTTPError as exc:
        print(f"error: cannot reach {api.base}: {exc}", file=sys.stderr)
        return 1
    print("error: the server ended the stream without an exit code", file=sys.stderr)
    return 1
