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

import functools
import os
import shutil
import subprocess
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from cats.errors import CatsError

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
