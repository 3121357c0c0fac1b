"""What slices print: each stream captured on its own (Python's prints, writes to the descriptors,
subprocesses), kept as a block its slice record links, bounded, never on the driver's terminal,
and never in another slice's log, confined or not."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import jobs
import pytest

from cats import factory
from cats.bom import load as load_bom
from cats.bom import records
from cats.cas import dag, dagcbor, reader
from cats.cas.cid import CID
from cats.cas.importer import Importer
from cats.cas.store import BlockStore
from cats.cas.store.local import LocalStore
from cats.factory import confine, logs, shell, worker
from cats.factory._plan import Item
from cats.factory.confine import Policy
from cats.factory.outcome import SliceOutcome
from cats.order import Function, Order
from cats.order.infra import Slice
from cats.order.seal import seal
from cats.plant import Plant
from cats.verification.audit import verify

pytestmark = pytest.mark.usefixtures("ray_session")

JOB = """
import os, subprocess, sys, time

def chatty(data):
    name = data.decode().strip()
    print("py out", name, flush=True)
    print("py err", name, file=sys.stderr, flush=True)
    os.write(1, b"fd out\\n")
    os.write(2, b"fd err\\n")
    subprocess.run(["echo", "sub out"], check=True)
    subprocess.run(["sh", "-c", "echo sub err >&2"], check=True)
    print("py out end", name)  # left in Python's buffer: written out as the slice ends
    return data.upper()

def slow_chatty(data):
    made = chatty(data)
    time.sleep(1.5)  # time for Ray to forward what it printed to the driver, as it did before it was captured
    return made

def silent(data):
    return data.upper()

def act(data):
    what = data.decode().strip()
    if what == "fail":
        print("about to fail", flush=True)
        raise ValueError("boom")
    if what == "flood":
        os.write(1, b"a" * (512 << 10))
        os.write(1, b"b" * (1 << 20))
        time.sleep(1.0)  # long enough for its live files to be named
        return b"flooded"
    if what == "linger":  # something it started goes on writing after it ended
        subprocess.Popen(["sh", "-c", "for i in 1 2 3 4 5 6 7 8 9 10 11 12; do echo late; sleep 0.1; done"])
        print("lingered", flush=True)
        time.sleep(1.0)
        return b"lingered"
    if what == "die":
        print("last gasp", file=sys.stderr, flush=True)
        os._exit(3)
    if what == "spew":  # prints without end
        chunk = b"z" * (4 << 20)
        while True:
            os.write(1, chunk)
    if what == "reserve":  # takes disk space through its stdout without writing (its length stays 0)
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
        assert libc.fallocate(1, 1, 0, 400 << 20) == 0, ctypes.get_errno()  # FALLOC_FL_KEEP_SIZE
        time.sleep(5)
        return b"kept"
    if what == "after":
        time.sleep(1.0)
        print("after", flush=True)
        return b"after"
    return b""
"""


def _fn(tmp_path: Path, entry: str) -> Function:
    return Function(entry=f"slicelogs_job:{entry}", source=jobs.module(tmp_path, "slicelogs_job", JOB))


def _text(store: BlockStore, cid: CID | None) -> bytes | None:
    return None if cid is None else b"".join(reader.read(store, cid))


def test_each_stream_lands_in_its_own_block_in_order_and_the_bom_keeps_them(cats_home: Path, tmp_path: Path,
                                                                            cli) -> None:
    folder = jobs.folder(tmp_path, {"a.txt": b"alpha\n", "b.txt": b"beta\n"})
    run = factory.run(Order(function=_fn(tmp_path, "chatty"), inputs=[folder]), force=True)
    store = jobs.home_store(cats_home)
    got = {r.input.name: r for r in records(store, load_bom(store, run.bom))}
    for name, word in (("a.txt", "alpha"), ("b.txt", "beta")):
        assert _text(store, got[name].stdout) == f"py out {word}\nfd out\nsub out\npy out end {word}\n".encode()
        assert _text(store, got[name].stderr) == f"py err {word}\nfd err\nsub err\n".encode()
    kept = {cid for r in got.values() for cid in (r.stdout, r.stderr)}
    assert len(kept) == 4
    assert kept <= set(dag.walk(store, run.bom))  # links of the BOM's DAG: pinned, exported, pushed with it
    assert cli("gc").code == 0
    assert all(store.has(cid) for cid in kept)
    shown = cli("cat", str(got["a.txt"].stderr))
    assert shown.code == 0 and shown.out == "py err alpha\nfd err\nsub err\n"
    assert verify(store, run.bom).verified  # re-executed, storing nothing, it still agrees


def test_a_silent_slice_records_no_log_fields(cats_home: Path, tmp_path: Path) -> None:
    folder = jobs.folder(tmp_path, {"a.txt": b"alpha\n"})
    run = factory.run(Order(function=_fn(tmp_path, "silent"), inputs=[folder]), force=True)
    store = jobs.home_store(cats_home)
    [block] = load_bom(store, run.bom).slices
    [raw] = dagcbor.decode(store.get(block))
    assert "stdout" not in raw and "stderr" not in raw  # the record encodes as it did before logs were kept


def test_a_result_taken_from_another_run_links_no_logs(cats_home: Path, tmp_path: Path) -> None:
    """What a slice printed stays with the run that executed it, which the run taking its result names."""
    first = factory.run(Order(function=_fn(tmp_path, "chatty"),
                              inputs=[jobs.folder(tmp_path, {"a.txt": b"alpha\n"}, "one")]), force=True)
    again = factory.run(Order(function=_fn(tmp_path, "chatty"),
                              inputs=[jobs.folder(tmp_path, {"a.txt": b"alpha\n", "b.txt": b"beta\n"}, "two")]))
    store = jobs.home_store(cats_home)
    got = {r.input.name: r for r in records(store, load_bom(store, again.bom))}
    assert got["a.txt"].reused_from == first.bom and got["a.txt"].stdout is None and got["a.txt"].stderr is None
    assert got["b.txt"].reused_from is None and _text(store, got["b.txt"].stdout) is not None


def test_cats_run_shows_nothing_a_slice_printed(ray_session: str, cli, cats_home: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAY_ADDRESS", ray_session)
    folder = jobs.folder(tmp_path, {"a.txt": b"alpha\n", "b.txt": b"beta\n"})
    source = jobs.module(tmp_path, "slicelogs_cli", JOB)
    order = tmp_path / "order.py"
    order.write_text("from pathlib import Path\nfrom cats.order import Function, Order\n"
                     "order = Order(function=Function(entry='slicelogs_cli:slow_chatty', "
                     f"source=Path({str(source)!r})), inputs=[Path({str(folder)!r})])\n")
    res = cli("run", order, cwd=tmp_path)  # not --json: the driver takes its workers' output from Ray
    assert res.code == 0, res.err
    [line] = res.out.splitlines()
    assert line.startswith("bom    ")
    for text in ("py out", "py err", "fd out", "fd err", "sub out", "sub err"):
        assert text not in res.out and text not in res.err, (text, res.err)
    store = jobs.home_store(cats_home)
    bom = load_bom(store, CID.parse(line.split()[1]))
    assert all(r.stdout is not None and r.stderr is not None for r in records(store, bom))


def _batch(store: LocalStore, fn: Function, words: list[bytes]) -> tuple[dict[str, Any], list[Item]]:
    """A sealed Function and one slice per word, stored, for `_run`."""
    sealed = seal(Order(function=fn, inputs=[CID.hash(b"x")]), store).function
    with Importer(store, cid_version=1) as importer:
        items = [(i, Slice(cid=importer.add_bytes(w).cid, name=f"{i}.txt").model_dump(mode="json", exclude_none=True),
                  0) for i, w in enumerate(words)]
    return sealed.model_dump(mode="json", exclude_none=True), items


def _run(store: LocalStore, batch: tuple[dict[str, Any], list[Item]], run_dir: Path, confined: bool = False,
         write: bool = True) -> list[SliceOutcome]:
    """The batch's outcomes, run as the Factory's worker runs it, on Ray."""
    import ray

    confine: dict[str, Any] | None = {"policy": Policy().as_dict(), "network": False, "env": {}, "hide": []} \
        if confined else None
    function, items = batch
    return ray.get(ray.remote(worker.run_batch).remote(store.url, function, str(run_dir), 0, items, write=write,
                                                      confine=confine))


@pytest.mark.parametrize("confined", [False, True], ids=["direct", "confined"])
def test_failed_flooding_and_consecutive_slices_keep_their_own_logs(cats_home: Path, tmp_path: Path,
                                                                    confined: bool) -> None:
    if confined and (why := confine.unavailable()):
        pytest.skip(why)
    store = jobs.home_store(cats_home)
    run_dir = tmp_path / "run"
    batch = _batch(store, _fn(tmp_path, "act"), [b"fail", b"flood", b"linger", b"after", b"quiet"])
    fail, flood, linger, after, quiet = _run(store, batch, run_dir, confined)
    assert fail.failed and "boom" in (fail.error or "")
    assert _text(store, fail.stdout) == b"about to fail\n" and fail.stderr is None  # a failure's logs are kept
    assert _text(store, flood.stdout) == f"[{512 << 10} bytes dropped before this]\n".encode() + b"b" * logs.KEPT
    live = run_dir / "logs"
    assert (live / "1.stdout").stat().st_size == (512 << 10) + (1 << 20)  # the live file has it all
    said = (_text(store, linger.stdout) or b"").splitlines()
    assert b"lingered" in said and set(said) <= {b"lingered", b"late"}
    assert _text(store, after.stdout) == b"after\n"  # what the one before started is not in it
    assert quiet.stdout is None and quiet.stderr is None and not quiet.failed
    # named are the live files of the slices that ran past LINK_AFTER_S: flood, linger and after
    assert sorted(os.listdir(live)) == sorted(f"{i}.{s}" for i in (1, 2, 3) for s in logs.STREAMS)
    # unconfined, what a slice started goes on writing, to that slice's file alone; confined, it is killed
    assert (live / "2.stdout").read_bytes().count(b"late") >= (0 if confined else 2)
    assert not any(b"late" in p.read_bytes() for p in live.iterdir() if p.name != "2.stdout")


def test_a_sandbox_that_dies_is_quoted_from_its_slices_stderr(cats_home: Path, tmp_path: Path) -> None:
    if why := confine.unavailable():
        pytest.skip(why)
    store = jobs.home_store(cats_home)
    [died] = _run(store, _batch(store, _fn(tmp_path, "act"), [b"die"]), tmp_path / "run", confined=True)
    assert died.failed and "broke off" in (died.error or "") and "its last words:\nlast gasp" in (died.error or "")
    assert _text(store, died.stderr) == b"last gasp\n"


@pytest.mark.parametrize("how", ["spew", "reserve"])
def test_a_confined_slice_printing_without_end_is_stopped(cats_home: Path, tmp_path: Path, how: str) -> None:
    """Its live file is on the worker's disk: past LIVE_MAX (written, or reserved without writing) the
    slice is stopped and its file emptied, and the next one runs."""
    if why := confine.unavailable():
        pytest.skip(why)
    store = jobs.home_store(cats_home)
    spew, after = _run(store, _batch(store, _fn(tmp_path, "act"), [how.encode(), b"after"]), tmp_path / "run",
                       confined=True)
    assert spew.failed and f"slice 0 printed more than {logs.LIVE_MAX} bytes to stdout" in (spew.error or "")
    live = tmp_path / "run" / "logs" / "0.stdout"
    assert not live.exists() or live.stat().st_blocks == 0  # nothing of it is left on the disk
    assert not after.failed and _text(store, after.stdout) == b"after\n"


def test_verification_stores_no_logs(cats_home: Path, tmp_path: Path) -> None:
    store = jobs.home_store(cats_home)
    batch = _batch(store, _fn(tmp_path, "act"), [b"flood"])
    before = set(store)
    [outcome] = _run(store, batch, tmp_path / "run", write=False)
    assert outcome.output is not None and outcome.stdout is None and set(store) == before
    assert (tmp_path / "run" / "logs" / "0.stdout").stat().st_size > logs.KEPT  # captured (live), not stored


def test_cats_exec_keeps_the_commands_stderr(cats_home: Path, tmp_path: Path) -> None:
    folder = jobs.folder(tmp_path, {"a.txt": b"alpha\n"})
    run = factory.run(shell.order("echo warned >&2; tr a-z A-Z", [folder], confined=confine.unavailable() is None))
    store = jobs.home_store(cats_home)
    [record] = records(store, load_bom(store, run.bom))
    assert _text(store, record.stderr) == b"warned\n"
    assert record.stdout is None  # its stdout is the result
    assert jobs.outputs(cats_home, run.output) == {"a.txt": b"ALPHA\n"}


def test_replicas_keep_the_kept_outcomes_logs(cats_home: Path, tmp_path: Path) -> None:
    folder = jobs.folder(tmp_path, {"a.txt": b"alpha\n"})
    run = factory.run(Order(function=_fn(tmp_path, "chatty"), inputs=[folder], plant=Plant(replicas=2)), force=True)
    store = jobs.home_store(cats_home)
    [record] = records(store, load_bom(store, run.bom))
    assert record.replicas is not None and record.agreed
    assert _text(store, record.stdout) == b"py out alpha\nfd out\nsub out\npy out end alpha\n"

