"""The process inside the sandbox: imports one Function from `/code` and runs it on the slices the
worker sends, one at a time, answering each with its encoded result.

The worker and this process talk over this process's stdin and stdout, moved at start to private
descriptors. With each slice the worker hands over, on a socket of their own, two descriptors
(files of its own): the slice's stdout and stderr, which this process puts at 1 and 2 while the
slice runs, so what the user's code prints, or the programs it starts write, lands in that slice's
files alone. Until the code is loaded 1 and 2 are this process's stderr (the worker relays it, and
quotes it when loading fails); from then on, outside a slice, /dev/null: no copy of the stderr is
left here for a slice to print to the worker's terminal through.
Messages are framed: a header (4-byte length, JSON), then for a slice's argument or result a body
of chunks (4-byte length each, an empty chunk ends it). After each slice every other process in the
sandbox is killed and the scratch folder and /dev/shm emptied before the answer goes back, so nothing a slice
started outlives it.

It imports only what it runs (the protocol, `guard`, `logs`, `results`), not the Factory's driver and the
models it loads, so a sandbox is ready in tens of milliseconds.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import struct
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from cats.factory import guard, logs
from cats.factory.results import encode

SCRATCH = "/scratch"
SHM = "/dev/shm"
CODE = "/code"
CHUNK = 1 << 20
_LENGTH = struct.Struct(">I")
MAX_HEADER = 1 << 20


class Broken(Exception):
    """The other side broke the protocol or went away."""


def _exactly(f: IO[bytes], n: int) -> bytes:
    data = f.read(n)
    if data is None or len(data) != n:
        raise Broken("the stream ended early")
    return data


def send_header(f: IO[bytes], header: dict[str, Any]) -> None:
    data = json.dumps(header).encode()
    f.write(_LENGTH.pack(len(data)) + data)


def read_header(f: IO[bytes]) -> dict[str, Any]:
    (n,) = _LENGTH.unpack(_exactly(f, _LENGTH.size))
    if n > MAX_HEADER:
        raise Broken(f"a header of {n} bytes")
    try:
        header = json.loads(_exactly(f, n))
    except ValueError as e:
        raise Broken(f"a header that is not JSON: {e}") from None
    if not isinstance(header, dict):
        raise Broken("a header that is not an object")
    return header


def send_body(f: IO[bytes], data: bytes | memoryview) -> None:
    view = memoryview(data)
    for start in range(0, len(view), CHUNK):
        piece = view[start:start + CHUNK]
        f.write(_LENGTH.pack(len(piece)))
        f.write(piece)
    f.write(_LENGTH.pack(0))


def read_body(f: IO[bytes]) -> Iterator[bytes]:
    """The chunks of a body, as they arrive (the caller decides how much it takes)."""
    while True:
        (n,) = _LENGTH.unpack(_exactly(f, _LENGTH.size))
        if n == 0:
            return
        if n > CHUNK:
            raise Broken(f"a chunk of {n} bytes")
        yield _exactly(f, n)


def _sweep() -> None:
    """Kill every process of the sandbox but this one and its init, until none is left."""
    me = os.getpid()
    for _ in range(100):
        others = [int(p) for p in os.listdir("/proc") if p.isdigit() and int(p) not in (1, me)]
        if not others:
            return
        for pid in others:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        try:
            while os.waitpid(-1, os.WNOHANG)[0]:  # reap our own children; init reaps the rest
                pass
        except ChildProcessError:
            pass


def _empty(folder: str) -> None:
    for entry in os.scandir(folder):
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                os.unlink(entry.path)


def accepts_seed(func: Any) -> bool:
    """Whether a function takes the slice's seed (a `seed` parameter, or **kwargs)."""
    import inspect

    try:
        params = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == "seed" or p.kind is p.VAR_KEYWORD for p in params)


def _argument(kind: str, name: str, body: Iterator[bytes]) -> Any:
    if kind == "path":
        path = Path(SCRATCH) / (Path(name).name or "slice")
        with open(path, "wb") as f:
            for chunk in body:
                f.write(chunk)
        return path
    data = b"".join(body)
    if kind == "table":
        import pyarrow as pa

        return pa.ipc.open_stream(data).read_all()
    if kind == "npy":
        import io

        import numpy as np

        return np.load(io.BytesIO(data), allow_pickle=False)
    return data


def _load(setup: dict[str, Any]) -> Any:
    sys.path.insert(0, CODE)
    with guard.importing(f"importing {setup['module']} to run slices in a sandbox"):
        import importlib

        obj: Any = importlib.import_module(setup["module"])
    for part in setup["qualname"].split("."):
        obj = getattr(obj, part)
    return obj


def _streams(sock: socket.socket) -> tuple[int, ...]:
    """The slice's stdout and stderr, as the worker handed them over."""
    _, fds, _, _ = socket.recv_fds(sock, 1, 2)
    if len(fds) != 2:
        raise Broken(f"{len(fds)} descriptors for a slice's streams")
    return tuple(fds)


def main() -> int:
    # the channel moves to descriptors of its own; stdout becomes stderr, stdin nothing
    requests = os.fdopen(os.dup(0), "rb", buffering=CHUNK)
    answers = os.fdopen(os.dup(1), "wb", buffering=CHUNK)
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(2, 1)
    setup = read_header(requests)
    streams = socket.socket(fileno=setup["streams"])
    try:
        func = _load(setup)
    except BaseException:
        send_header(answers, {"error": traceback.format_exc()})
        answers.flush()
        return 1
    send_header(answers, {"ready": True})
    answers.flush()
    logs.point((null, null))
    params, cap, seed_kw = setup["params"], setup["max_output"], accepts_seed(func)
    while True:
        try:
            request = read_header(requests)
        except Broken:
            return 0  # the worker is done with this sandbox
        given = _streams(streams)
        body = read_body(requests)
        try:
            arg = _argument(request["kind"], request.get("name") or "", body)
            for _ in body:  # what the argument did not read
                pass
            kwargs = dict(params)
            if seed_kw:
                kwargs["seed"] = request["seed"]
            logs.point(given)
            try:
                with guard.running(f"running slice {request['index']} of {setup['module']}:{setup['qualname']}"):
                    data, encoding = encode(func(arg, **kwargs))
            finally:
                logs.point((null, null))
            del arg
            answer: dict[str, Any] = {"encoding": encoding, "size": len(data)}
            if len(data) > cap:
                answer = {"error": f"the result is {len(data)} bytes, over this machine's limit of {cap} bytes "
                                   "per slice", "reason": True}
        except BaseException:
            answer = {"error": traceback.format_exc()}
        finally:
            for fd in given:
                os.close(fd)
        _sweep()
        for folder in (SCRATCH, "/tmp", SHM):
            _empty(folder)
        send_header(answers, answer)
        if "encoding" in answer:
            send_body(answers, data)
            del data
        answers.flush()


if __name__ == "__main__":
    sys.exit(main())
