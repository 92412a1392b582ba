"""The shell a pod's step runs in: the wrapper started by each exec, and its stdin payload.

A pod shares no filesystem with the agent, and an exec's stream stays open while any
process holds its stdout. So the wrapper (``STEP``) reads the step's environment and
script from stdin (secrets never travel in the exec's command line), runs the step with
its stdout and stderr in two FIFOs, and relays them to the exec's own streams. When the
step's main process exits, it writes the step's token into both FIFOs (everything the step
wrote comes before it), waits for the agent's ack on stdin (the agent has read up to both
tokens), hands the FIFOs to two drainers that discard what background processes write
later (so they never block nor die of SIGPIPE), stops the relays, and prints the token
again followed by ``$FAENA_OUTPUT``. Exit 125 before any token: the working directory
resolves outside the workspace (a symlink; ``..`` is refused before the exec).
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping

from faena.workers.providers.container_scripts import SHELL_CHOICE

EXIT_ESCAPE = 125

# $1 temp dir, $2 the step's stem, $3 its token, $4 workspace, $5 working directory; then the
# shell's argv. fds: 5/6 write/read ends of the stdout FIFO, 7/8 of the stderr FIFO.
STEP = (
    r"""
t=$1 s=$2 k=$3 ws=$4 wd=$5; shift 5
echo $$ > "$t/$s.pid"
exec 9>"$t/$s.env"
while IFS= read -r line; do [ "$line" = "$k" ] && break; printf '%s\n' "$line" >&9; done
exec 9>&-
ws=$(cd "$ws" && pwd -P) || exit 1
inside() { case "$1/" in "$ws"/*) return 0;; esac; return 1; }
p=$wd
while [ ! -e "$p" ] && [ ! -L "$p" ]; do p=${p%/*}; [ -n "$p" ] || p=/; done
r=$(cd "$p" 2>/dev/null && pwd -P) && inside "$r" || exit 125
mkdir -p "$wd" 2>/dev/null || { echo "faena: cannot create working directory $wd" >&2; exit 1; }
r=$(cd "$wd" && pwd -P) && inside "$r" || exit 125
cd "$wd" || exit 1
o=$t/$s.o e=$t/$s.e
mkfifo "$o" "$e" || exit 1
exec 4<>"$o" 6<"$o" 5>"$o" 4>&-
exec 4<>"$e" 8<"$e" 7>"$e" 4>&-
rm -f "$o" "$e"
FAENA_STEP_MARK=$s cat <&6 5>&- 7>&- 8>&- & r1=$!
FAENA_STEP_MARK=$s cat <&8 >&2 5>&- 6>&- 7>&- & r2=$!
(
  . "$t/$s.env"; rm -f "$t/$s.env"
"""
    + SHELL_CHOICE
    + r"""
  exec "$@"
) >&5 2>&7 </dev/null 5>&- 6>&- 7>&- 8>&- &
wait $!; code=$?
printf %s "$k" >&5; printf %s "$k" >&7
read -r ack || :
cat <&6 >/dev/null 2>&1 5>&- 7>&- 8>&- &
cat <&8 >/dev/null 2>&1 5>&- 6>&- 7>&- &
exec 5>&- 6<&- 7>&- 8<&-
kill $r1 $r2 2>/dev/null; wait $r1 $r2 2>/dev/null
printf %s "$k"; cat "$t/$s.out" 2>/dev/null
rm -f "$t/$s".*
exit $code
"""
)

# A killed step's $FAENA_OUTPUT, and the end of its files: $1 temp dir, $2 stem.
COLLECT = 'cat "$1/$2.out" 2>/dev/null; rm -f "$1/$2".*'

# Every process of the container but PID 1 (the keepalive) and this shell, SIGKILLed until
# none is left: what a kept pod must not go on running.
KILL_ALL = r"""
i=0
while [ $i -lt 200 ]; do
  m=
  for s in /proc/[0-9]*/stat; do
    read -r l < "$s" 2>/dev/null || continue
    p=${s#/proc/}; p=${p%/stat}
    { [ "$p" = 1 ] || [ "$p" = $$ ]; } && continue
    set -- ${l##*') '}
    [ "$1" = Z ] || m="$m $p"
  done
  [ -z "$m" ] && exit 0
  kill -KILL $m 2>/dev/null; sleep 0.05; i=$((i+1))
done
exit 1
"""

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def payload(token: str, env: Mapping[str, str], script: str, script_path: str) -> bytes:
    """What ``STEP`` reads from stdin: exports, the script file written, the end line."""
    lines = [f"export {name}={shlex.quote(value)}" for name, value in env.items()]
    lines.append(': > "$FAENA_OUTPUT"')
    quoted = shlex.quote(script_path)
    lines.append(f"printf %s {shlex.quote(script)} > {quoted} && chmod 700 {quoted}")
    lines.append(token)
    return ("\n".join(lines) + "\n").encode()


def bad_env_names(env: Mapping[str, str]) -> list[str]:
    """Names a POSIX shell cannot export (the wrapper passes env as ``export``)."""
    return [name for name in env if not _NAME.fullmatch(name)]
