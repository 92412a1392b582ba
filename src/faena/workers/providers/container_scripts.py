"""The shell snippets the container providers (docker, kubernetes) run inside a worker.

They need only a POSIX ``sh`` with ``kill``, ``sleep``, ``tr``, ``grep``, ``cat`` and
``mkfifo`` (busybox has them), so any image a job names can run them.
"""

from __future__ import annotations

DEFAULT_SHELL = "__faena_default_shell__"

# PID 1 is Docker's init (it reaps orphans); this loop only keeps the container up.
KEEPALIVE = "trap 'exit 0' TERM INT; while :; do sleep 3600 & wait $!; done"

# The step's argv is "$@": the default shell becomes bash (with pipefail) where the image has
# it, else sh; a shell that is not on PATH fails the step with 127, saying so on its stderr.
SHELL_CHOICE = r"""
if [ "$1" = __faena_default_shell__ ]; then
  shift
  if command -v bash >/dev/null 2>&1; then set -- bash --noprofile --norc -eo pipefail "$@"
  else set -- sh -e "$@"; fi
fi
case "$1" in
  */*) ;;
  *) command -v "$1" >/dev/null 2>&1 || {
       echo "faena: shell '$1' not found on PATH" >&2; exit 127; } ;;
esac
"""

# Docker: $1 stdout FIFO, $2 stderr FIFO, $3 pid file; then the shell's argv. fd 3 keeps the
# exec's stream open until the wrapper itself exits; the step's processes never get it.
WRAPPER = (
    r"""
out=$1 err=$2 pidfile=$3; shift 3
echo $$ > "$pidfile"
exec 3>&1 >"$out" 2>"$err" </dev/null
"""
    + SHELL_CHOICE
    + r"""
"$@" 3>&-
"""
)

# $1 the wrapper's pid, $2 grace in ticks of 50 ms, $3 the step's mark: SIGTERM the members
# of its process group and session, and what left both (busybox's timeout does) but carries
# the mark; SIGKILL what is left after the grace; return once none is left.
KILL = r"""
L=$1; ticks=$2; mark="FAENA_STEP_MARK=$3"
members() {
  for s in /proc/[0-9]*/stat; do
    read -r l < "$s" 2>/dev/null || continue
    p=${s#/proc/}; p=${p%/stat}
    [ "$p" = $$ ] && continue
    set -- ${l##*') '}
    [ "$1" = Z ] && continue
    if [ "$3" = "$L" ] || [ "$4" = "$L" ]; then echo "$p"
    elif tr '\0' '\n' < "/proc/$p/environ" 2>/dev/null | grep -qxF "$mark"; then echo "$p"
    fi
  done
}
m=$(members); [ -z "$m" ] && exit 0
kill -TERM $m 2>/dev/null; kill -CONT $m 2>/dev/null
i=0
while [ $i -lt "$ticks" ]; do
  m=$(members); [ -z "$m" ] && exit 0
  sleep 0.05; i=$((i+1))
done
i=0
while m=$(members); [ -n "$m" ] && [ $i -lt 200 ]; do
  kill -KILL $m 2>/dev/null; sleep 0.05; i=$((i+1))
done
"""

# KILL for a step whose wrapper wrote its pid to the file $1 (a pod: no shared filesystem to
# read it from first); nothing to do while the file is empty (the wrapper has not started).
KILL_FROM_PIDFILE = (
    'set -- "$(cat "$1" 2>/dev/null)" "$2" "$3"\n[ "${1:-0}" -gt 1 ] 2>/dev/null || exit 0\n' + KILL
)

OOM_KILLS = (
    "cat /sys/fs/cgroup/memory.events 2>/dev/null"
    " || cat /sys/fs/cgroup/memory/memory.oom_control 2>/dev/null || true"
)  # exits 0 where it runs: anything else means the container itself is going
