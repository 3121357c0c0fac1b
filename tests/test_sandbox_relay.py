"""What a confined process writes to stderr as it starts reaches the worker's without the worker
holding more than a bounded piece of it in memory, however it is cut into lines; what a slice
writes goes to the slice's own streams, not there."""

from __future__ import annotations

import io
import os
import threading
import tracemalloc
from pathlib import Path

import jobs
import pytest

from cats.cas.cid import CID, RAW
from cats.cas.store.local import LocalStore
from cats.factory import confine
from cats.factory.code import code_folder
from cats.order import Function, Order
from cats.order.seal import seal

pytestmark = pytest.mark.skipif(confine.unavailable() is not None, reason="no bubblewrap sandbox on this machine")

NOISY = """
import os

block = b"x" * (1 << 20)
for _ in range(64):  # 64 MiB on stderr as the code loads, not one newline
    os.write(2, block)

def shout(data):
    os.write(2, b"the slice's own")
    return b"done"
"""


def test_a_long_line_on_stderr_is_not_held_whole_in_the_worker(tmp_path: Path, cats_home: Path,
                                                               local_store: LocalStore,
                                                               capfd: pytest.CaptureFixture[str]) -> None:
    order = Order(function=Function(entry="relay_noisy:shout", source=jobs.module(tmp_path, "relay_noisy", NOISY)),
                  inputs=[CID.hash(b"in", RAW)])
    fn = seal(order, local_store).function
    assert fn.code is not None
    sink = io.BytesIO()
    streams = tuple(os.open(tmp_path / name, os.O_RDWR | os.O_CREAT) for name in ("stdout", "stderr"))
    tracemalloc.start()
    try:
        box = confine.Sandbox(code_folder(local_store, fn.code), {"module": fn.module, "qualname": fn.qualname,
                                                                  "params": fn.params}, confine.Policy(), False, {},
                              [str(cats_home)])
        try:
            box.call(0, "bytes", "in", 0, b"in", sink, streams)
        finally:
            box.close()  # its stderr ends: the relay reads the rest and stops
        for thread in threading.enumerate():
            if thread.name == "cats-sandbox-stderr":
                thread.join(30)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        for fd in streams:
            os.close(fd)
    assert sink.getvalue() == b"done"
    assert peak < 16 << 20, f"the worker held {peak} bytes of a sandbox's stderr at once"
    relayed = capfd.readouterr().err
    assert "more than" in relayed  # past the relayed bytes, it says the rest is not shown
    assert "the slice's own" not in relayed and (tmp_path / "stderr").read_bytes() == b"the slice's own"
