"""Shell commands as Functions: `cats exec -e 'grep -i error' -c CID` runs a command once per file.

This module is sealed as the code of such Orders (workers import it on its own, as `shell`, so
it needs only the standard library), so a BOM names the exact runner by CID and the command by
the Order's params. The command reads the file on stdin (its path is `$CATS_INPUT`); its stdout
is the slice's result, read as it comes and refused past `CATS_MAX_OUTPUT` bytes (what the
sandbox's policy allows; 1 GiB otherwise); its stderr goes on, as it comes, to the slice's (the log
the Factory keeps), its tail also kept for the message when it fails. Exit status 0 is success
unless the Order's `ok_exit` names others (grep's 1, "nothing matched"); any other fails the slice.
It runs in a scratch directory that is removed afterwards, with only PATH, a locale, HOME and
TMPDIR in its environment (no credentials of the worker), under a timeout that kills its whole
process group and an address-space limit set by `ulimit -v` (in the child shell, since
`preexec_fn` is unsafe in a threaded Ray worker). The Order runs confined (`Plant(confined=True)`) unless its maker says
otherwise: then the command also sees no other process, no network and nothing of the machine's
files but its programs.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import select
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

# Words that start a simple command but are no program of their own: their versions mean nothing.
_BUILTINS = frozenset({
    "!", "{", "}", "(", ")", "[", "[[", "]]", ".", ":", "alias", "bg", "break", "case", "cd", "command",
    "continue", "do", "done", "echo", "elif", "else", "esac", "eval", "exec", "exit", "export", "false", "fc",
    "fg", "fi", "for", "function", "getopts", "hash", "if", "in", "jobs", "kill", "let", "local", "printf",
    "pwd", "read", "readonly", "return", "select", "set", "shift", "source", "test", "then", "time", "times",
    "trap", "true", "type", "ulimit", "umask", "unalias", "unset", "until", "wait", "while"
})
# Keywords after which the next word starts a command again.
_LEADING = frozenset({"!", "{", "(", "if", "then", "else", "elif", "do", "while", "until", "time"})
_ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=")
_STDERR_LINES = 10
_STDERR_KEPT = 64 << 10  # the tail of stderr kept for the error message


class CommandFailed(RuntimeError):
    """The command exited non-zero, ran out of time or memory; the message names the file."""


def _environment(scratch: str, path: Path) -> dict[str, str]:
    """Only what a filter needs: the worker's secrets (cloud keys, tokens) stay out."""
    return {"PATH": os.environ.get("PATH", os.defpath), "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
            "HOME": scratch, "TMPDIR": scratch, "CATS_INPUT": str(path)}


def _kill(proc: subprocess.Popen[bytes]) -> None:
    """End the command's whole process group (its pipes' other programs, anything it started)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def run(path: Path, command: str, timeout: float = 60.0, memory: int | None = None,
        ok_exit: list[int] | None = None) -> bytes:
    """Run `command` with the file at `path` on stdin; its stdout is the result (MB for `memory`) if
    it exits with a status of `ok_exit` (default: 0 alone)."""
    limit = f"ulimit -v {int(memory) * 1024} || exit 125; " if memory else ""
    cap = int(os.environ.get("CATS_MAX_OUTPUT") or 1 << 30)
    scratch = tempfile.mkdtemp(prefix="cats-exec-")
    try:
        with open(path, "rb") as stdin:
            proc = subprocess.Popen(["/bin/sh", "-c", limit + 'exec /bin/sh -c "$0"', command], stdin=stdin,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=scratch,
                                    env=_environment(scratch, Path(path)), start_new_session=True)
            try:
                out, err = _collect(proc, Path(path).name, timeout, cap)
            finally:
                _kill(proc)  # what it left running in the background
                proc.wait()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    accepted = ok_exit or [0]
    if proc.returncode not in accepted:
        raise CommandFailed(_failure(Path(path).name, proc.returncode, err, memory, accepted))
    return out


def _collect(proc: subprocess.Popen[bytes], name: str, timeout: float, cap: int) -> tuple[bytes, bytes]:
    """The command's stdout (at most `cap` bytes) and the tail of its stderr, read as they come,
    until it ends or its time is up."""
    assert proc.stdout is not None and proc.stderr is not None
    deadline = time.monotonic() + timeout
    out, err = bytearray(), bytearray()
    streams = {proc.stdout.fileno(): out, proc.stderr.fileno(): err}
    while streams:
        left = deadline - time.monotonic()
        ready = select.select(list(streams), [], [], max(left, 0))[0] if left > 0 else []
        if not ready:
            raise CommandFailed(f"{name}: command timed out after the limit of {timeout:g} s (--timeout); its "
                                "process group was killed")
        for fd in ready:
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                del streams[fd]
                continue
            kept = streams[fd]
            kept += chunk
            if kept is err:
                _pass_on(chunk)
                if len(err) > _STDERR_KEPT:
                    del err[:-_STDERR_KEPT]
            elif kept is out and len(out) > cap:
                raise CommandFailed(f"{name}: the command wrote more than the limit of {cap} bytes to stdout; "
                                    "it was killed")
    try:
        proc.wait(max(deadline - time.monotonic(), 0))
    except subprocess.TimeoutExpired:
        raise CommandFailed(f"{name}: command timed out after the limit of {timeout:g} s (--timeout); its "
                            "process group was killed") from None
    return bytes(out), bytes(err)


def _pass_on(chunk: bytes) -> None:
    """Write the command's stderr to this process's."""
    view = memoryview(chunk)
    while view:
        view = view[os.write(2, view):]


def _failure(name: str, status: int, stderr: bytes, memory: int | None, accepted: list[int]) -> str:
    """Exit status, the likely cause, and the last lines of stderr."""
    tail = "\n".join(stderr.decode(errors="replace").rstrip().splitlines()[-_STDERR_LINES:])
    how = f"was killed by signal {-status}" if status < 0 else f"exited with status {status}"
    if accepted != [0]:
        how += f" (accepted: {', '.join(map(str, accepted))}, --ok-exit)"
    if memory and (status < 0 or "memory" in tail.lower()):
        how += f" (likely the memory limit of {memory} MB, --memory)"
    return f"{name}: command {how}" + (f"; stderr:\n{tail}" if tail else "; no stderr")


def programs(command: str) -> list[str]:
    """The programs a command calls: the first word of each simple command, builtins left out.
    Words inside `$(...)` or arguments of programs like `xargs` are not seen."""
    lexer = shlex.shlex(command.replace("\n", ";"), posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    found: list[str] = []
    first = True
    for word in lexer:
        if set(word) <= set("|&;()"):  # a pipe, list or subshell separator
            first = True
        elif first and _ASSIGNMENT.match(word):  # VAR=value before a command
            continue
        elif first:
            first = word in _LEADING
            if word not in _BUILTINS and not word.startswith(("<", ">")) and word not in found:
                found.append(word)
    return found


def version(program: str) -> str:
    """The first line of `program --version`, else its path and the SHA-256 of its file."""
    path = shutil.which(program)
    if path is None:
        return "not found"
    try:
        done = subprocess.run([program, "--version"], executable=path, stdin=subprocess.DEVNULL,
                              capture_output=True, timeout=5,
                              env={"PATH": os.environ.get("PATH", os.defpath), "LC_ALL": "C.UTF-8"})
        lines = (done.stdout or done.stderr).decode(errors="replace").strip().splitlines()
        if done.returncode == 0 and lines:
            return lines[0].strip()
    except (OSError, subprocess.TimeoutExpired):
        pass
    with open(path, "rb") as f:
        return f"{path} sha256:{hashlib.file_digest(f, 'sha256').hexdigest()}"


def tools(command: str) -> dict[str, str]:
    """name -> version of every program the command calls, as found on this machine."""
    return {name: version(name) for name in programs(command)}


def order(command: str, inputs: list[Any], timeout: float = 60.0, memory: int | None = None,
          name: str | None = None, confined: bool = True, ok_exit: Iterable[int] = (0,),
          merge: Literal["directory", "concat"] = "directory", replicas: int = 1,
          output_uri: str | None = None) -> Any:
    """An Order running `command` once per file of the inputs, confined unless `confined=False`; its
    Structure records the command and the versions of the tools it calls here, on the submitting
    machine. The exit statuses `ok_exit` that count as success decide the result, so the Order
    names them, sorted, unless they are the default 0 alone (Orders of the default keep their CIDs).
    `merge` joins the per-file results (`directory`: one entry each; `concat`: one file, in slice
    order); `replicas` and `output_uri` are the Plant's and the Order's."""
    from cats.errors import CatsError
    from cats.order import Function, InfraFunction, Order, Structure
    from cats.plant import Plant

    accepted = sorted(set(ok_exit))
    if not accepted or any(not 0 <= code <= 255 for code in accepted):
        raise CatsError(f"exit statuses {','.join(map(str, accepted))} (--ok-exit): give statuses from 0 to 255, "
                        "comma-separated (e.g. 0,1)")
    try:
        called = tools(command)
    except ValueError as e:  # shlex: an unclosed quote
        raise CatsError(f"command {command!r} does not parse: {e}") from None
    params: dict[str, Any] = {"command": command, "timeout": timeout}
    if memory:
        params["memory"] = memory
    if accepted != [0]:
        params["ok_exit"] = accepted
    return Order(function=Function.of(run, takes="path", **params), inputs=inputs,
                 infra=InfraFunction(merge=merge), structure=Structure(command=command, tools=called),
                 plant=Plant(confined=confined, replicas=replicas), output_uri=output_uri,
                 name=name or f"exec {command}")
