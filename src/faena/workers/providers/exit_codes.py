"""Step exit codes every provider reports, following the shells' conventions."""

from __future__ import annotations

EXIT_TIMED_OUT = 124  # as timeout(1)
EXIT_CANCELLED = 130  # as Ctrl-C
EXIT_NOT_EXECUTABLE = 126
EXIT_NOT_FOUND = 127
EXIT_KILLED = 137  # 128 + SIGKILL: what an out-of-memory kill looks like
