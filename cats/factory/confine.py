"""Confinement: code that is not the operator's own runs in a sandbox made with bubblewrap.

Inside, the code sees its slice's input, its code read-only at `/code`, a private scratch folder
(`/scratch`, a size-capped tmpfs, emptied after every slice), the Python it runs on read-only, and an
environment holding only what its Plant declares. It has a PID namespace of its own (no other
process to read, signal or ptrace; everything it starts dies with the slice), no network unless
its Plant declares it and the policy allows it, no capabilities, and nothing of CATS_HOME: no
identity key, trust list, store or other runs. Results come back through the worker, over a pipe,
capped.

bubblewrap, not a hand-rolled `unshare`: one small audited setuid-free binary that builds the
mount namespace from an empty root (so what is visible is listed here, not what is hidden) and
drops every capability. Landlock and seccomp would add little once nothing is mounted.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from cats.errors import CatsError
from cats.factory import _confined
from cats.factory._confined import CODE, SCRATCH, Broken

if TYPE_CHECKING:
    from cats.order import Order

GiB = 1 << 30


@dataclass(frozen=True)
class Policy:
    """What a machine grants the code it confines: network (to an Order declaring it), the bytes of
    one slice's result, and the bytes of its scratch folder."""

    network: bool = True
    max_output: int = GiB
    scratch: int = GiB

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def bwrap() -> str | None:
    """The bubblewrap binary: CATS_BWRAP, else `bwrap` on PATH."""
    return os.environ.get("CATS_BWRAP") or shutil.which("bwrap")


@functools.cache
def _probe(binary: str) -> str | None:
    try:
        done = subprocess.run([binary, *_namespaces(network=False), "--ro-bind", "/", "/", "--", "true"],
                              stdin=subprocess.DEVNULL, capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"{binary} does not run: {e}"
    if done.returncode != 0:
        said = done.stderr.decode(errors="replace").strip().splitlines()
        return f"{binary} cannot make a sandbox here: {said[-1] if said else f'exit status {done.returncode}'}"
    return None


def unavailable() -> str | None:
    """Why this machine cannot confine code (None: it can)."""
    binary = bwrap()
    if binary is None:
        return "bubblewrap (bwrap) is not installed; on Debian or Ubuntu: apt install bubblewrap"
    return _probe(binary)


def require() -> None:
    """CatsError, saying why and what to do, unless this machine can confine code."""
    if (why := unavailable()) is not None:
        raise CatsError(f"cannot confine code on this machine: {why}")


def _namespaces(network: bool) -> list[str]:
    """Every namespace of its own (but the network, when granted), no capabilities, a session of its
    own (no typing into the worker's terminal), and death with the worker."""
    args = ["--unshare-user", "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
            "--uid", "65534", "--gid", "65534", "--cap-drop", "ALL", "--disable-userns",
            "--die-with-parent", "--new-session", "--clearenv"]
    if not network:
        args.append("--unshare-net")
    return args


def check_confinable(order: Order, policy: Policy) -> None:
    """CatsError, before anything runs, for an Order that cannot run confined under `policy` here."""
    from cats.order.function import Function

    if order.plant.network and not policy.network:
        raise CatsError("the Order asks for network access (plant.network), which this machine's policy does not "
                        "give confined code")
    if order.function.takes == "slice":
        raise CatsError(f"function {order.function.entry} takes its Slice, which only code reading the store itself "
                        "can use: confined code takes bytes, a path or a table")
    for role in ("split", "merge"):
        if isinstance(getattr(order.infra, role), Function):
            raise CatsError(f"the Order's {role} is code of its own, which would run with the store in hand: "
                            f"a confined Order uses a built-in {role}")
    require()


class Refused(CatsError):
    """A confined slice failed for a reason, not with a traceback (its result over the limit, a
    sandbox that died)."""


class Raised(CatsError):
    """A confined slice's code raised: the message is its traceback, from inside the sandbox."""


# What a confined process sees of the machine besides its Python: the system's programs and
# libraries, and the few files of /etc they read (no /etc/shadow, no host names beyond its own).
_SYSTEM = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
_ETC = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "alternatives", "localtime", "passwd", "group",
        "nsswitch.conf", "ssl", "ca-certificates", "mime.types", "protocols", "services")
_ETC_NETWORK = ("resolv.conf", "hosts", "gai.conf", "host.conf")
_PATH = "/usr/local/bin:/usr/bin:/bin"
_TAIL = 4000


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def _python_paths() -> list[str]:
    """The folders this worker's Python imports from, as real paths: its interpreter's prefixes,
    package folders on its path (site-packages, zip files) and the cats package. Other folders on the
    path (a driver's working folder or script folder, which Ray adds) are not shown, nor anything that
    would show a home folder, CATS_HOME or the temporary folder whole."""
    import tempfile

    import cats
    from cats.config import home

    guarded = [os.path.realpath(p) for p in (Path.home(), home(), tempfile.gettempdir())]
    found = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix) if p}
    found |= {os.path.realpath(p) for p in sys.path
              if p and os.path.exists(p) and (os.path.isfile(p) or Path(p).name in ("site-packages", "dist-packages"))}
    found.add(os.path.realpath(Path(cats.__file__).parent))
    kept: list[str] = []
    for path in sorted(found):
        if path == "/" or any(_inside(g, path) for g in guarded):
            continue
        if not any(_inside(path, k) for k in kept):
            kept.append(path)
    return kept


def command(code: Path, policy: Policy, network: bool, env: dict[str, str], hidden: list[str]) -> list[str]:
    """The bubblewrap command running the confined process: an empty root holding only what is listed
    here, read-only but for the scratch tmpfs; `hidden` (CATS_HOME, the store) covered where a folder
    shown would hold them."""
    binary = bwrap()
    assert binary is not None
    args = [binary, *_namespaces(network)]
    for path in _SYSTEM:
        if os.path.islink(path):
            args += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            args += ["--ro-bind", path, path]
    for name in _ETC + (_ETC_NETWORK if network else ()):
        args += ["--ro-bind-try", f"/etc/{name}", f"/etc/{name}"]
    shown = _python_paths()
    for path in shown:
        args += ["--ro-bind", path, path]
    for path in hidden:
        real = os.path.realpath(path)
        if any(_inside(real, s) for s in shown) and os.path.isdir(real):
            args += ["--tmpfs", real]
    args += ["--proc", "/proc", "--dev", "/dev", "--size", str(policy.scratch), "--tmpfs", SCRATCH,
             "--symlink", SCRATCH, "/tmp", "--ro-bind", str(code), CODE, "--remount-ro", "/", "--chdir", SCRATCH]
    environment = {"PATH": _PATH, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "HOME": SCRATCH, "TMPDIR": SCRATCH,
                   **env, "CATS_MAX_OUTPUT": str(policy.max_output)}
    for name, value in environment.items():
        args += ["--setenv", name, value]
    boot = (f"import sys; sys.path[:] = {[p for p in sys.path if p]!r}; "
            "from cats.factory._confined import main; sys.exit(main())")
    return [*args, "--", sys.executable, "-I", "-c", boot]


class Sandbox:
    """One confined process running one Function, slice after slice, for one run in one worker."""

    def __init__(self, code: Path, function: dict[str, Any], policy: Policy, network: bool, env: dict[str, str],
                 hidden: list[str]) -> None:
        self.policy = policy
        # bubblewrap starts with an empty environment, not the worker's: its process that stays in the
        # sandbox as PID 1 keeps the environment it was started with in its memory, which the confined
        # code can read (/proc/1/environ, /proc/1/mem); --clearenv cleans only what it runs.
        self.proc = subprocess.Popen(command(code, policy, network, env, hidden), stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True, env={})
        assert self.proc.stdin is not None and self.proc.stdout is not None and self.proc.stderr is not None
        self._in: IO[bytes] = self.proc.stdin
        self._out: IO[bytes] = self.proc.stdout
        self._tail = bytearray()  # the last of what it wrote to stderr, for the message when it fails
        threading.Thread(target=self._relay, args=(self.proc.stderr,), daemon=True).start()
        try:
            _confined.send_header(self._in, {"module": function["module"], "qualname": function["qualname"],
                                             "params": function["params"], "max_output": policy.max_output})
            self._in.flush()
            answer = _confined.read_header(self._out)
        except (Broken, OSError) as e:
            self.close()
            raise Refused(f"the sandbox did not start ({e}); exit status {self.proc.returncode}{self._said()}") \
                from None
        if "error" in answer:
            self.close()
            raise Refused(f"loading {function['module']}:{function['qualname']} in the sandbox failed:\n"
                          f"{answer['error']}")

    def _relay(self, stream: IO[bytes]) -> None:
        """What the confined code prints goes on to the worker's stderr, as an unconfined slice's would."""
        for line in iter(stream.readline, b""):
            self._tail = (self._tail + line)[-_TAIL:]
            with contextlib.suppress(OSError, ValueError):
                sys.stderr.write(line.decode(errors="replace"))

    def _said(self) -> str:
        text = self._tail.decode(errors="replace").strip()
        return f"; its last words:\n{text}" if text else ""

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def call(self, index: int, kind: str, name: str | None, seed: int, argument: bytes | memoryview,
             sink: IO[bytes]) -> str:
        """Run one slice; its result goes into `sink` as it arrives, at most the policy's bytes.
        Returns the result's encoding; Refused for a failure with a reason, CatsError with the
        slice's traceback otherwise. A sandbox that broke the protocol is closed."""
        try:
            _confined.send_header(self._in, {"index": index, "kind": kind, "name": name, "seed": seed})
            _confined.send_body(self._in, argument)
            self._in.flush()
            answer = _confined.read_header(self._out)
            if "error" in answer:
                raise (Refused if answer.get("reason") else Raised)(str(answer["error"]))
            size, got = answer.get("size"), 0
            if not isinstance(size, int) or size > self.policy.max_output:
                raise Broken(f"a result of {size} bytes announced")
            for chunk in _confined.read_body(self._out):
                got += len(chunk)
                if got > size:
                    raise Broken("more bytes than announced")
                sink.write(chunk)
            if got != size:
                raise Broken("fewer bytes than announced")
            return str(answer["encoding"])
        except (Broken, OSError, ValueError) as e:
            self.close()
            status = self.proc.returncode
            how = f"was killed by signal {-status}" if status and status < 0 else f"exited ({status})"
            raise Refused(f"the sandbox running slice {index} broke off: {e}; it {how}{self._said()}") from None

    def close(self) -> None:
        """Kill the sandbox, and with it (its PID namespace) every process it started."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        for f in (self._in, self._out):
            with contextlib.suppress(OSError):
                f.close()


_current: tuple[str, Sandbox] | None = None


def sandbox(key: str, code: Path, function: dict[str, Any], policy: Policy, network: bool, env: dict[str, str],
            hidden: list[str]) -> Sandbox:
    """This worker's sandbox for `key` (one run's Function under one policy), started if it has none
    alive; another run's is closed first: a sandbox never serves two runs."""
    global _current
    if _current is not None:
        if _current[0] == key and _current[1].alive:
            return _current[1]
        _current[1].close()
        _current = None
    box = Sandbox(code, function, policy, network, env, hidden)
    _current = (key, box)
    return box


def key(*parts: Any) -> str:
    return json.dumps(parts, sort_keys=True, default=str)
