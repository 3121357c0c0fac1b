"""Orders submitted to this node: what is admitted, a table in SQLite that survives restarts, and the
worker thread that runs them one at a time, in the order they came.

An order is `queued` when accepted, `running` while the Factory runs it, then `done` (with its BOM and
output) or `failed` (with the error). Admission (`load_order`, `check_present`) refuses an Order that is
not a sealed Order block, names a Ray address, or needs a block the node does not have.

Each run is `cats.factory.run(order)` in a child process (`python -m cats.mesh.node.runner`), started
and waited for by the worker thread: the Factory's Ray driver then lives in that process's main thread,
where Ray wants it, and stopping the node stops a run cleanly (SIGINT to the child, which tears its
embedded Ray down) instead of leaving Ray half torn down inside the node. The BOM is signed by the
node's identity all the same: the child has the node's CATS_HOME. On start, orders still queued are
queued again and one that was running when the node stopped is marked failed; its finished slices stay
indexed, so submitting it again resumes where it stopped.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cats._sqlite import connect
from cats.cas import dagcbor
from cats.cas.cid import CID
from cats.cas.dag import walk
from cats.cas.store import BlockStore
from cats.config import home
from cats.errors import BlockNotFound, CatsError

if TYPE_CHECKING:
    from cats.order import Order

log = logging.getLogger("cats.node")

INTERRUPTED = ("the node stopped while this order was running; submit it again (the slices that finished "
               "are kept, so it resumes)")
_MAX_ERROR = 16_000  # characters of an error kept (a failed slice's message carries a traceback)
_INTERRUPT_GRACE_S = 20.0  # how long a run may take to stop after SIGINT before it is killed


class OrderRejected(CatsError):
    """An Order this node will not run; `status` is the HTTP status that says why (400 or 422)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


# -- admission ------------------------------------------------------------------------------------------
def load_order(store: BlockStore, cid: CID) -> Order:
    """The sealed Order in block `cid`; OrderRejected naming what is missing or wrong."""
    from pydantic import ValidationError

    from cats.order import Order

    try:
        block = store.get(cid)
    except BlockNotFound:
        raise OrderRejected(400, f"Order block {cid} is not on this node: push it (and every block it names) "
                                 "first") from None
    try:
        order = Order.model_validate(dagcbor.decode(block))
    except (CatsError, ValidationError, ValueError) as e:
        raise OrderRejected(422, f"{cid} is not an Order: {str(e).splitlines()[0]}") from None
    unsealed = [f"function {f.entry}" for f in _functions(order) if f.code is None]
    unsealed += [f"input {i}" for i in order.inputs if isinstance(i, Path)]
    if unsealed:
        raise OrderRejected(422, f"Order {cid} is not sealed: {', '.join(unsealed)} have no CID (seal it with "
                                 "cats.order.seal.seal before pushing it)")
    if order.plant.address is not None:
        raise OrderRejected(422, f"Order {cid} names Ray at {order.plant.address}: a node runs Orders on its own "
                                 "Ray; submit it with plant.address unset")
    return order


def _functions(order: Order) -> list:
    from cats.order.function import Function

    return [order.function, *(f for f in (order.infra.split, order.infra.merge) if isinstance(f, Function))]


def named_cids(order: Order) -> list[tuple[str, CID]]:
    """Every CID a sealed Order names, with what it is, in the order they are checked."""
    named = [(f"code of {f.entry}", f.code) for f in _functions(order)]
    named += [("environment lock", order.structure.lock), ("IaC", order.structure.iac)]
    named += [(f"input {i}", c) for i, c in enumerate(order.inputs) if isinstance(c, CID)]
    return [(what, cid) for what, cid in named if cid is not None]


def check_present(store: BlockStore, order_cid: CID, order: Order) -> None:
    """OrderRejected(400) naming the first block missing from the DAGs the Order names."""
    seen: set[CID] = set()
    for what, cid in named_cids(order):
        try:
            for _ in walk(store, cid, seen=seen):
                pass
        except BlockNotFound as e:
            missing = e.cid if e.cid is not None else cid
            where = "" if missing == cid else f" (in the DAG of {cid})"
            raise OrderRejected(400, f"Order {order_cid} needs block {missing}{where}, its {what}, which is not "
                                     "on this node: push it first") from None
        except CatsError as e:
            raise OrderRejected(400, f"Order {order_cid}: its {what} {cid} cannot be read: {e}") from None


# -- the table ------------------------------------------------------------------------------------------
_SCHEMA = """
CREATE TABLE IF NOT EXISTS orders (
    id TEXT PRIMARY KEY,
    order_cid TEXT NOT NULL,
    submitter TEXT NOT NULL,
    status TEXT NOT NULL,
    bom TEXT,
    output TEXT,
    error TEXT,
    created REAL NOT NULL,
    started REAL,
    finished REAL
)
"""


@dataclass(frozen=True)
class OrderRow:
    id: str
    order: str
    submitter: str
    status: str
    bom: str | None
    output: str | None
    error: str | None
    created: float
    started: float | None
    finished: float | None


class OrderTable:
    def __init__(self, path: Path) -> None:
        self._db = connect(path, _SCHEMA, pragmas=(), check_same_thread=False)
        self._lock = threading.Lock()

    def create(self, order: str, submitter: str) -> OrderRow:
        with self._lock:
            while True:
                job = secrets.token_hex(8)
                cursor = self._db.execute(
                    "INSERT OR IGNORE INTO orders (id, order_cid, submitter, status, created) VALUES (?, ?, ?, ?, ?)",
                    (job, order, submitter, "queued", time.time()))
                if cursor.rowcount:
                    break
        row = self.get(job)
        assert row is not None
        return row

    def get(self, job: str) -> OrderRow | None:
        with self._lock:
            found = self._db.execute("SELECT id, order_cid, submitter, status, bom, output, error, created, started, "
                                     "finished FROM orders WHERE id = ?", (job,)).fetchone()
        return None if found is None else OrderRow(*found)

    def running(self, job: str) -> None:
        self._set(job, status="running", started=time.time())

    def done(self, job: str, bom: str, output: str) -> None:
        self._set(job, status="done", bom=bom, output=output, error=None, finished=time.time())

    def failed(self, job: str, error: str) -> None:
        self._set(job, status="failed", error=error[:_MAX_ERROR], finished=time.time())

    def _set(self, job: str, **fields: object) -> None:
        columns = ", ".join(f"{name} = ?" for name in fields)
        with self._lock:
            self._db.execute(f"UPDATE orders SET {columns} WHERE id = ?", (*fields.values(), job))

    def recover(self) -> list[str]:
        """After a restart: fail what was running, and return what is still queued, oldest first."""
        with self._lock:
            self._db.execute("UPDATE orders SET status = 'failed', error = ?, finished = ? WHERE status = 'running'",
                             (INTERRUPTED, time.time()))
            rows = self._db.execute("SELECT id FROM orders WHERE status = 'queued' ORDER BY created, rowid").fetchall()
        return [r[0] for r in rows]

    def close(self) -> None:
        with self._lock:
            self._db.close()


# -- running --------------------------------------------------------------------------------------------
class Runner:
    """Runs one Order at a time in a child process; `interrupt` stops the current one."""

    def __init__(self, store_root: Path, folder: Path) -> None:
        self.store_root = store_root
        self.folder = folder  # logs and results of runs, CATS_HOME/node/runs
        self._child: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()

    def __call__(self, job: str, order: str) -> tuple[str, str]:
        """(BOM CID, output CID); CatsError with the run's error otherwise."""
        self.folder.mkdir(parents=True, exist_ok=True)
        result, log_path = self.folder / f"{job}.json", self.folder / f"{job}.log"
        result.unlink(missing_ok=True)
        # The run starts in an empty folder of its own and with -P, so neither the child nor the Ray
        # workers it drives (Ray puts its driver's working folder on their path) import anything from
        # the folder the node was started in; paths it is given are absolute for the same reason.
        cwd = self.folder / f"{job}.cwd"
        cwd.mkdir(exist_ok=True)
        env = {**os.environ, "CATS_HOME": str(home().resolve())}
        with open(log_path, "wb") as out, self._lock:
            # its own session: a Ctrl-C at the node's terminal reaches the node, which then stops the run itself
            self._child = subprocess.Popen([sys.executable, "-P", "-m", "cats.mesh.node.runner", order,
                                            str(self.store_root.resolve()), str(result.resolve())],
                                           stdin=subprocess.DEVNULL, stdout=out, stderr=out, cwd=cwd, env=env,
                                           start_new_session=True)
        code = self._child.wait()
        with self._lock:
            self._child = None
        shutil.rmtree(cwd, ignore_errors=True)
        try:
            answer = json.loads(result.read_text())
        except (OSError, ValueError):
            tail = log_path.read_bytes()[-2000:].decode(errors="replace").strip()
            raise CatsError(f"the run of {order} ended (exit status {code}) without a result"
                            + (f"; its last output:\n{tail}" if tail else "")) from None
        finally:
            result.unlink(missing_ok=True)
        if "error" in answer:
            raise CatsError(str(answer["error"]))
        log_path.unlink(missing_ok=True)  # kept only for runs that failed
        return answer["bom"], answer["output"]

    def interrupt(self) -> None:
        """SIGINT the running child (Ray shuts down in it), SIGKILL it if it does not end in time."""
        with self._lock:
            child = self._child
        if child is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(child.pid, signal.SIGINT)
        try:
            child.wait(_INTERRUPT_GRACE_S)
        except subprocess.TimeoutExpired:
            log.warning("the run in process %d did not stop on SIGINT; killing it", child.pid)
            with contextlib.suppress(ProcessLookupError):
                child.kill()
            child.wait()


class Worker:
    """One thread that runs queued orders in turn with `runner(job, order CID)`, recording each outcome."""

    def __init__(self, table: OrderTable, runner: Callable[[str, str], tuple[str, str]]) -> None:
        self.table, self.runner = table, runner
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="cats-node-orders", daemon=True)
        self.current: str | None = None
        self.interrupted = False
        self._recording = threading.Lock()  # an outcome is recorded, or the order marked interrupted: not both

    def start(self) -> None:
        for job in self.table.recover():
            self._queue.put(job)
        self._thread.start()

    def submit(self, job: str) -> None:
        self._queue.put(job)

    def stop(self, timeout: float) -> bool:
        """End the thread after the current order. An order still running after timeout is recorded as
        interrupted and stopped (`runner.interrupt()`). True if the thread ended."""
        self._queue.put(None)
        self._thread.join(timeout)
        if self._thread.is_alive():
            with self._recording:
                self.interrupted = True
                if self.current is not None:
                    self.table.failed(self.current, INTERRUPTED)
                    log.warning("order %s interrupted: the node is stopping", self.current)
            interrupt = getattr(self.runner, "interrupt", None)
            if interrupt is not None:
                interrupt()
            self._thread.join(timeout)
        return not self._thread.is_alive()

    def _loop(self) -> None:
        while (job := self._queue.get()) is not None:
            row = self.table.get(job)
            if row is None or row.status != "queued":
                continue
            self.current = job
            self.table.running(job)
            log.info("order %s (%s from %s) running", job, row.order, row.submitter)
            try:
                bom, output = self.runner(job, row.order)
            except Exception as e:  # any failure of the run is the order's outcome, recorded for its submitter
                text = str(e).strip() or type(e).__name__
                error = text if isinstance(e, CatsError) else f"{type(e).__name__}: {text}"
                if self._record(self.table.failed, job, error):
                    log.warning("order %s failed: %s", job, text.splitlines()[0])
            else:
                if self._record(self.table.done, job, bom, output):
                    log.info("order %s done: BOM %s", job, bom)

    def _record(self, write: Callable[..., None], job: str, *outcome: str) -> bool:
        """Record the outcome unless the order was marked interrupted meanwhile; whether it was recorded."""
        with self._recording:
            self.current = None
            if self.interrupted:
                return False
            write(job, *outcome)
            return True
