"""``faena validate``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from faena.domain.errors import SpecValidationError
from faena.spec import load_pipeline


def validate_command(file: Path, json_out: bool) -> int:
    try:
        spec = load_pipeline(file)
    except SpecValidationError as exc:
        if json_out:
            print(json.dumps({"valid": False, "errors": [_issue(i) for i in exc.issues]}))
        else:
            print_issues(exc, file)
        return 2
    if json_out:
        print(json.dumps({"valid": True, "pipeline": spec.name, "jobs": list(spec.jobs)}))
    else:
        print(f"{file}: pipeline '{spec.name}' is valid ({len(spec.jobs)} job(s))")
    return 0


def print_issues(exc: SpecValidationError, file: Path) -> None:
    """Every issue as `file:line:col path: message [CODE]` on stderr, then a count."""
    for issue in exc.issues:
        print(f"{issue} [{issue.code}]", file=sys.stderr)
    print(f"{len(exc.issues)} error(s) in {file}", file=sys.stderr)


def _issue(issue: object) -> dict[str, object]:
    from dataclasses import asdict

    data = asdict(issue)  # type: ignore[call-overload]
    data["code"] = str(data["code"])
    return data  # type: ignore[no-any-return]
