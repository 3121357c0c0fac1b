"""What a confined process writes to stderr reaches the worker's without the worker holding more than
a bounded piece of it in memory, however it is cut into lines."""

from __future__ import annotations

import io
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

def shout(data):
    block = b"x" * (1 << 20)
    for _ in range(64):  # 64 MiB on stderr, not one newline
        os.write(2, block)
    return b"done"
"""


def test_a_long_line_on_stderr_is_not_held_whole_in_the_worker(tmp_path: Path, cats_home: Path,
                                                               local_store: LocalStore,
                                                               capfd: pytest.CaptureFixture[str]) -> None:
    order = Order(function=Function(entry="relay_noisy:shout", source=jobs.module(tmp_path, "relay_noisy", NOISY)),
                  inputs=[CID.hash(b"in", RAW)])
    fn = seal(order, local_store).function
    assert fn.code is not None
    box = confine.Sandbox(code_folder(local_store, fn.code), {"module": fn.module, "qualname": fn.qualname,
                                                              "params": fn.params}, confine.Policy(), False, {},
                          [str(cats_home)])
    sink = io.BytesIO()
    tracemalloc.start()
    try:
        box.call(0, "bytes", "in", 0, b"in", sink)
        box.close()  # its stderr ends: the relay reads the rest and stops
        for thread in threading.enumerate():
            if thread.name == "cats-sandbox-stderr":
                thread.join(30)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        box.close()
    assert sink.getvalue() == b"done"
    assert peak < 16 << 20, f"the worker held {peak} bytes of a sandbox's stderr at once"
    assert "more than" in capfd.readouterr().err  # past the relayed bytes, it says the rest is not shown
