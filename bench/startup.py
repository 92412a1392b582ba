"""Whole-process start-up of the CLI against `python -c pass`, with hyperfine.

    .venv/bin/python bench/startup.py [--runs 20]

Needs Debian's `hyperfine`. Measures `faena --help`, `faena validate` and `faena run` of a
one-job pipeline (state in a temp FAENA_HOME, warm SQLite file) in the same run as the
baseline, prints one JSON line per command (mean, stddev, ratio to the baseline) and a table.
Budgets (issue 2): --help and validate under 150 ms, run under 1 s.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

BUDGET_MS = {"faena --help": 150, "faena validate": 150, "faena run (1 job)": 1000}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    hyperfine = shutil.which("hyperfine")
    if hyperfine is None:
        print("hyperfine not found: apt-get install hyperfine", file=sys.stderr)
        return 2
    # As an installed package would be: bytecode compiled (this environment may set
    # PYTHONDONTWRITEBYTECODE, which would make every start recompile edited modules).
    import faena

    subprocess.run([sys.executable, "-m", "compileall", "-q", str(Path(faena.__file__).parent)],
                   check=True, stdout=subprocess.DEVNULL)  # fmt: skip
    bin_dir = Path(sys.executable).parent
    faena = str(bin_dir / "faena")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "faena.yml").write_text("jobs:\n  one:\n    steps: [{run: 'true'}]\n")
        env = {**os.environ, "FAENA_HOME": str(work / "home")}
        subprocess.run([faena, "run"], cwd=work, env=env, check=True, capture_output=True)
        commands = {
            "python -c pass": f"{sys.executable} -c pass",
            "faena --help": f"{faena} --help",
            "faena validate": f"{faena} validate",
            "faena run (1 job)": f"{faena} run",
        }
        out = work / "hyperfine.json"
        cmd = [hyperfine, "-N", "--warmup", "3", "--runs", str(args.runs),
               "--export-json", str(out)]  # fmt: skip
        for name, command in commands.items():
            cmd += ["-n", name, command]
        subprocess.run(cmd, cwd=work, env=env, check=True, stdout=subprocess.DEVNULL)
        results = json.loads(out.read_text())["results"]
    base = next(r for r in results if r["command"] == "python -c pass")["mean"]
    rows = []
    for r in results:
        row = {
            "bench": "startup",
            "command": r["command"],
            "mean_ms": round(r["mean"] * 1000, 1),
            "stddev_ms": round(r["stddev"] * 1000, 1),
            "ratio_to_python": round(r["mean"] / base, 2),
            "budget_ms": BUDGET_MS.get(r["command"]),
        }
        rows.append(row)
        print(json.dumps(row))
    print(file=sys.stderr)
    for row in rows:
        budget = f"(budget {row['budget_ms']} ms)" if row["budget_ms"] else ""
        print(f"{row['command']:<20}{row['mean_ms']:>9} ms ± {row['stddev_ms']:<6}"
              f"x{row['ratio_to_python']:<6} {budget}", file=sys.stderr)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
