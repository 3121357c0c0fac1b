"""Starting a sandbox: in a process that already ran code unconfined or imports from /tmp, and without the
Factory's API."""

from __future__ import annotations

import io
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import jobs
import pytest

from cats.cas.cid import CID, RAW
from cats.cas.store.local import LocalStore
from cats.factory import confine
from cats.factory.code import code_folder, load
from cats.order import Function, Order
from cats.order.seal import seal

pytestmark = pytest.mark.skipif(confine.unavailable() is not None, reason="no bubblewrap sandbox on this machine")

TRUSTED = """
import os

def where(data):
    return os.path.dirname(__file__).encode()
"""

CONFINED = """
import json
import os
import sys

def look(data, seen):
    loaded = {name: name in sys.modules for name in ("cats.factory.driver", "pydantic", "ray")}
    from cats.errors import ReentrantRun
    from cats.factory import run
    try:
        run(None)
        nested = "ran"
    except ReentrantRun:
        nested = "refused"
    return json.dumps({"loaded": loaded, "nested": nested, "seen": [p for p in seen if os.path.exists(p)],
                       "path": [p for p in sys.path if "cats-code-" in p]}).encode()
"""


def _sealed(store: LocalStore, src: Path, entry: str, **params: Any) -> Function:
    order = Order(function=Function(entry=entry, source=src, params=params), inputs=[CID.hash(b"in", RAW)])
    return seal(order, store).function


def _call(store: LocalStore, fn: Function, home: Path) -> dict[str, Any]:
    assert fn.code is not None
    box = confine.Sandbox(code_folder(store, fn.code), {"module": fn.module, "qualname": fn.qualname,
                                                        "params": fn.params}, confine.Policy(), False, {}, [str(home)])
    try:
        sink = io.BytesIO()
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            box.call(0, "bytes", "in", 0, b"in", sink, (out.fileno(), err.fileno()))
    finally:
        box.close()
    return json.loads(sink.getvalue())


def test_a_process_that_ran_code_unconfined_starts_a_sandbox_that_sees_none_of_it(
        tmp_path: Path, cats_home: Path, local_store: LocalStore) -> None:
    trusted = _sealed(local_store, jobs.module(tmp_path, "sb_trusted", TRUSTED), "sb_trusted:where")
    folder = load(local_store, trusted, "to run it here")(b"").decode()  # its code folder is now on sys.path
    assert Path(folder).is_dir()
    confined = _sealed(local_store, jobs.module(tmp_path, "sb_confined", CONFINED), "sb_confined:look", seen=[folder])
    seen = _call(local_store, confined, cats_home)
    assert seen["seen"] == [] and seen["path"] == []


def test_the_sandbox_starts_without_the_factory_api_and_still_refuses_a_nested_run(
        tmp_path: Path, cats_home: Path, local_store: LocalStore) -> None:
    confined = _sealed(local_store, jobs.module(tmp_path, "sb_light", CONFINED), "sb_light:look", seen=[])
    seen = _call(local_store, confined, cats_home)
    assert seen["loaded"] == {"cats.factory.driver": False, "pydantic": False, "ray": False}
    assert seen["nested"] == "refused"


def test_a_process_importing_from_tmp_starts_a_sandbox(tmp_path: Path, cats_home: Path, local_store: LocalStore,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    folder = Path(tempfile.mkdtemp(prefix="cats-test-", dir="/tmp"))  # where the sandbox has its own /tmp
    try:
        monkeypatch.syspath_prepend(str(folder))  # as Ray does with the folder of a driver script in /tmp
        confined = _sealed(local_store, jobs.module(folder, "sb_tmp", CONFINED), "sb_tmp:look", seen=[str(folder)])
        seen = _call(local_store, confined, cats_home)
    finally:
        shutil.rmtree(folder)
    assert seen["seen"] == []
