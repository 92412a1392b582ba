"""``faena --help``, ``faena --version`` and ``faena validate``."""

from __future__ import annotations

import json
import re

VALID = """
    name: demo
    jobs:
      build:
        steps:
          - run: echo build
      test:
        needs: build
        steps:
          - run: echo test
"""

# Four independent mistakes, one per line of interest:
#   line 7  col 13: an unknown need, close to an existing job
#   line 8  col 5 : an unknown job field, close to 'timeout'
#   line 11 col 18: a bad duration
#   line 13 col 12: x and y need each other
SEVERAL_ERRORS = """
    name: bad
    jobs:
      build:
        steps:
          - run: echo build
      test:
        needs: [buld]
        timout: 5m
        steps:
          - run: echo test
            timeout: 5 parsecs
      x:
        needs: y
        steps:
          - run: echo x
      y:
        needs: x
        steps:
          - run: echo y
"""

LOCATED = re.compile(r"^(?P<file>[^:\s]+):(?P<line>\d+):(?P<col>\d+) (?P<path>\S+): (?P<msg>.+)$")


def _located(stderr: str) -> list[re.Match[str]]:
    return [m for m in (LOCATED.match(line) for line in stderr.splitlines()) if m]


def test_help_lists_the_commands(faena):
    result = faena("--help")
    assert result.returncode == 0, result.stderr
    for command in ("run", "validate", "runs", "logs", "resume"):
        assert re.search(rf"^\s+{command}\b", result.stdout, re.MULTILINE), result.stdout


def test_no_arguments_shows_usage(faena):
    result = faena()
    assert result.returncode == 2
    assert "usage: faena" in result.stdout + result.stderr
    assert "validate" in result.stdout + result.stderr


def test_run_help_shows_its_options(faena):
    result = faena("run", "--help")
    assert result.returncode == 0, result.stderr
    for option in ("--jobs", "-j", "--json", "--keep-workspace"):
        assert option in result.stdout


def test_version(faena):
    result = faena("--version")
    assert result.returncode == 0, result.stderr
    assert re.fullmatch(r"faena \d+\.\d+\.\d+\S*\n", result.stdout), result.stdout


def test_validate_a_valid_file(faena, pipeline):
    pipeline(VALID)
    result = faena("validate")
    assert result.returncode == 0, result.stderr
    assert "valid" in result.stdout
    assert "demo" in result.stdout


def test_validate_a_valid_file_given_by_path_from_elsewhere(faena, pipeline):
    path = pipeline(VALID, name="ci.yml")
    result = faena("validate", str(path), cwd=faena.tmp)
    assert result.returncode == 0, result.stderr


def test_validate_json_on_a_valid_file(faena, pipeline):
    pipeline(VALID)
    result = faena("validate", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["valid"] is True
    assert sorted(data["jobs"]) == ["build", "test"]


def test_validate_reports_every_error_with_its_location(faena, pipeline):
    pipeline(SEVERAL_ERRORS, name="bad.yml")
    result = faena("validate", "bad.yml")
    assert result.returncode == 2
    assert result.stdout == ""
    errors = _located(result.stderr)
    by_line = {int(m["line"]): m for m in errors}
    assert all(m["file"] == "bad.yml" for m in errors), result.stderr

    need = by_line[7]
    assert (need["col"], need["path"]) == ("13", "jobs.test.needs")
    assert "buld" in need["msg"] and "did you mean 'build'" in need["msg"]

    field = by_line[8]
    assert (field["col"], field["path"]) == ("5", "jobs.test.timout")
    assert "unknown field 'timout'" in field["msg"] and "did you mean 'timeout'" in field["msg"]

    duration = by_line[11]
    assert duration["path"] == "jobs.test.steps[0].timeout"
    assert "5 parsecs" in duration["msg"]

    cycle = [m for m in errors if "cycle" in m["msg"]]
    assert cycle, result.stderr
    assert cycle[0]["path"] in ("jobs.x.needs", "jobs.y.needs")
    assert int(cycle[0]["line"]) in (13, 17)
    assert "x" in cycle[0]["msg"] and "y" in cycle[0]["msg"]

    assert len(errors) == 4, result.stderr


def test_validate_json_on_several_errors(faena, pipeline):
    pipeline(SEVERAL_ERRORS, name="bad.yml")
    result = faena("validate", "bad.yml", "--json")
    assert result.returncode == 2
    data = json.loads(result.stdout)
    assert data["valid"] is False
    assert len(data["errors"]) == 4
    first = data["errors"][0]
    assert (first["file"], first["line"], first["column"], first["path"]) == (
        "bad.yml",
        7,
        13,
        "jobs.test.needs",
    )


def test_validate_a_missing_file(faena):
    result = faena("validate", "nope.yml")
    assert result.returncode == 2
    assert "nope.yml" in result.stderr
    assert "not found" in result.stderr.lower()
    assert "Traceback" not in result.stderr


def test_validate_without_a_file_in_the_directory(faena):
    result = faena("validate")
    assert result.returncode == 2
    assert "faena.yml" in result.stderr
    assert "not found" in result.stderr.lower()


def test_validate_invalid_yaml_gives_the_line(faena, pipeline):
    pipeline(
        """
        name: x
        jobs:
          a:
            steps:
              - run: echo a: b: c
        """,
        name="broken.yml",
    )
    result = faena("validate", "broken.yml")
    assert result.returncode == 2
    assert result.stdout == ""
    match = re.search(r"^broken\.yml:(\d+):(\d+) (.*)$", result.stderr, re.MULTILINE)
    assert match, result.stderr
    assert match[1] == "5"
    assert "yaml" in match[3].lower()
    assert "Traceback" not in result.stderr


def test_run_of_invalid_yaml_is_rejected_with_the_line(faena, pipeline):
    pipeline("jobs:\n  a: {steps: [run: 1}\n")
    result = faena("run")
    assert result.returncode == 2
    assert re.search(r"^faena\.yml:2:\d+ ", result.stderr, re.MULTILINE), result.stderr
    assert faena.runs() == []


def test_validate_tab_indented_yaml(faena, pipeline):
    pipeline("jobs:\n  a:\n\tsteps:\n      - run: echo\n", name="tabs.yml")
    result = faena("validate", "tabs.yml")
    assert result.returncode == 2
    assert re.search(r"^tabs\.yml:3:\d+ ", result.stderr, re.MULTILINE), result.stderr


def test_validate_an_empty_file(faena, pipeline):
    pipeline("", name="empty.yml")
    result = faena("validate", "empty.yml")
    assert result.returncode == 2
    assert "empty" in result.stderr.lower()


def test_usage_errors_exit_2(faena, pipeline):
    pipeline(VALID)
    unknown = faena("bogus")
    assert unknown.returncode == 2
    assert "bogus" in unknown.stderr
    bad_jobs = faena("run", "-j", "0")
    assert bad_jobs.returncode == 2
    assert "-j" in bad_jobs.stderr or "--jobs" in bad_jobs.stderr
    assert faena.runs() == []


def test_flags_may_follow_positionals_and_errors_name_the_command(faena):
    bad = faena("run", "--foo")
    assert bad.returncode == 2
    assert "usage: faena run" in bad.stderr and "--foo" in bad.stderr


def test_bad_settings_in_the_environment_are_clear_errors(faena):
    for env, needle in (
        ({"FAENA_JOBS": "abc"}, "FAENA_JOBS"),
        ({"FAENA_KEEP_WORKSPACE": "maybe"}, "FAENA_KEEP_WORKSPACE"),
        ({"FAENA_DATABASE_URL": "mysql://x@h/db"}, "postgresql://user@host"),
    ):
        result = faena("runs", env=env)
        assert result.returncode == 2, (env, result.stderr)
        assert needle in result.stderr and "Traceback" not in result.stderr
