"""What a slice prints: each stream captured on its own while the slice runs, then the last KEPT
bytes of each kept in the store as a UnixFS file its slice record links (`stdout`, `stderr`).

The capture is a file per stream, not a pipe: the slice's descriptors 1 and 2 (and those of what
it starts) point at it, so C code and subprocesses are caught as Python's prints are, no thread
copies anything, and a process the slice left behind can only ever write to that slice's files.

The files start unnamed (O_TMPFILE: no directory entry to make, nor to remove when the run ends,
which for a run of many tiny slices is most of what capturing costs). A slice still running a
little after LINK_AFTER_S (at most half as long again) gets its live files named, on the machine of
the worker running it, so a follower there can tail them as the slice writes:

    {run_dir}/logs/{index}.stdout
    {run_dir}/logs/{index}.stderr

where `run_dir` is the run folder the worker is given; a replicated run gives replica k the folder
`{run_dir}/replica-{k}`, so its files are `{run_dir}/replica-{k}/logs/{index}.stdout` and so on.
Once named they stay until the run folder is removed (a retried attempt starts them afresh). On a
file system without unnamed files they are named from the start. A confined slice (code not the
operator's own) that prints more than LIVE_MAX bytes to one stream is stopped, so a peer's Order
cannot fill the node's disk with them.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the sandbox imports this module for `point` alone: it stays light
    from cats.cas.importer import Importer

KEPT = 1 << 20  # the bytes of each stream a slice record keeps: the last ones
LIVE_MAX = 256 << 20  # the most a confined slice may print to one stream: its live file is on the worker's disk
STREAMS = ("stdout", "stderr")
_DROPPED = re.compile(rb"\[(\d+) bytes dropped before this\]\n")
LINK_AFTER_S = 0.5  # a slice running this long gets its live files named, for followers


def folder(run_dir: str) -> Path:
    """The live files' folder of a run folder, made if missing."""
    path = Path(run_dir) / "logs"
    path.mkdir(parents=True, exist_ok=True)
    return path


class Live:
    """One slice's live files, open while it runs: `fds` go to the slice as its descriptors 1 and 2."""

    def __init__(self, logs: Path, index: int) -> None:
        self.logs, self.index, self.started = logs, index, time.monotonic()
        self.named = False
        try:  # read-write, so a sandbox that broke off can be quoted from its stderr
            self.fds = tuple(os.open(logs, os.O_RDWR | os.O_TMPFILE | os.O_APPEND | os.O_CLOEXEC, 0o600)
                             for _ in STREAMS)
        except OSError:  # no unnamed files here
            self.fds = tuple(os.open(self._path(stream), os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND |
                                     os.O_CLOEXEC, 0o600) for stream in STREAMS)
            self.named = True
        _namer.watch(self)

    def _path(self, stream: str) -> Path:
        return self.logs / f"{self.index}.{stream}"

    def name(self) -> None:
        """Give the live files their names (under the namer's lock: the descriptors are still this slice's)."""
        proc = os.open("/proc/self/fd", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for stream, fd in zip(STREAMS, self.fds, strict=True):
                with contextlib.suppress(FileNotFoundError):
                    self._path(stream).unlink()  # a retried attempt's
                with contextlib.suppress(OSError):  # a full disk or a gone folder: the stored log still comes
                    # linkat(AT_SYMLINK_FOLLOW) through /proc names an unnamed file; a dir fd makes Python use it
                    os.link(str(fd), self._path(stream), src_dir_fd=proc, follow_symlinks=True)
        finally:
            os.close(proc)
        self.named = True

    def __enter__(self) -> Live:
        return self

    def __exit__(self, *exc: object) -> None:
        _namer.forget(self)  # before the descriptors close: their numbers could name other files then
        for fd in self.fds:
            os.close(fd)

    def kept(self, importer: Importer | None) -> dict[str, Any]:
        """The CIDs of the streams the slice wrote to, imported through `importer` (none: nothing is
        stored, as when verification re-executes), for its outcome's `stdout`/`stderr`."""
        if importer is None:
            return {}
        found = {}
        for stream, fd in zip(STREAMS, self.fds, strict=True):
            dropped, text = tail(fd)
            if text:  # a stream the slice did not write to is no block
                found[stream] = importer.add_bytes(dropped_line(dropped) + text if dropped else text).cid
        return found


class _Namer:
    """One thread per worker process, started with its first slice, that names the live files of a
    slice still running after LINK_AFTER_S."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: Live | None = None
        self._thread: threading.Thread | None = None

    def watch(self, live: Live) -> None:
        with self._lock:
            self._running = None if live.named else live
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="cats-slice-logs", daemon=True)
                self._thread.start()

    def forget(self, live: Live) -> None:
        with self._lock:
            if self._running is live:
                self._running = None

    def _loop(self) -> None:
        while True:
            time.sleep(LINK_AFTER_S / 2)
            with self._lock:
                live = self._running
                if live is not None and time.monotonic() - live.started >= LINK_AFTER_S:
                    live.name()
                    self._running = None


_namer = _Namer()


def dropped_line(dropped: int) -> bytes:
    """The line a stored log starts with when its first `dropped` bytes were not kept."""
    return f"[{dropped} bytes dropped before this]\n".encode()


def dropped(head: bytes) -> tuple[int, int]:
    """How many bytes a stored log dropped, and the length of its line saying so (0, 0: none), from its start."""
    found = _DROPPED.match(head)
    return (int(found[1]), found.end()) if found else (0, 0)


def tail(fd: int, limit: int = KEPT) -> tuple[int, bytes]:
    """The last `limit` bytes written to the file at `fd`, and how many came before them."""
    size = os.fstat(fd).st_size
    start = max(size - limit, 0)
    return start, os.pread(fd, size - start, start)


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # a stream closed or replaced by the slice's code
            stream.flush()


def point(fds: tuple[int, ...]) -> None:
    """This process's descriptors 1 and 2 on `fds`; what Python's buffers hold goes out first, where it
    was written."""
    _flush()
    os.dup2(fds[0], 1)
    os.dup2(fds[1], 2)


@contextlib.contextmanager
def redirected(fds: tuple[int, ...]) -> Iterator[None]:
    """This process's descriptors 1 and 2 on `fds` for the block, the worker's own (which Ray forwards
    to the driver's terminal) back after it."""
    saved = (os.dup(1), os.dup(2))
    point(fds)
    try:
        yield
    finally:
        point(saved)
        for fd in saved:
            os.close(fd)
