"""Orders submitted to this node: what is admitted, a table in SQLite that survives restarts, and the
worker thread that runs them one at a time, in the order they came.

An order is `queued` when accepted, `running` while the Factory runs it, then `done` (with its BOM and
output), `failed` (with the error) or `cancelled` (by its submitter or the operator, or because the
node stopped while it ran). Admission (`load_order`, `NodePolicy.admit`, then `fetch.locate`) refuses an
Order that is not a sealed Order block, names a Ray address, asks for what the node's policy does not
give, or names a DAG neither the node nor its trusted peers hold.

Each run is `cats.factory.run(order, confine=...)` in a child process (`python -m cats.mesh.node.runner`),
started and waited for by the worker thread: the Factory's Ray driver then lives in that process's main
thread, where Ray wants it, and stopping a run is stopping the child (SIGINT, which tears its embedded
Ray down; after a grace, SIGKILL to its process group and to every process carrying the run's marker in
its environment) instead of leaving Ray half torn down inside the node. The same stop ends a run that
outlives the node's wall-time cap, is cancelled, or is running when the node stops. The BOM is signed by
the node's identity all the same: the child has the node's CATS_HOME. On start, orders still queued are
queued again and one that was running when the node died is marked failed; its finished slices stay
indexed, so submitting it again resumes where it stopped.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from cats.bom.jobs import JobTable
from cats.cas import dagcbor
from cats.cas.cid import CID
from cats.cas.store import BlockStore
from cats.config import home
from cats.data.reach import Reach
from cats.errors import BlockNotFound, CatsError
from cats.factory.confine import GiB, Policy, check_confinable, unavailable

if TYPE_CHECKING:
    from cats.order import Order

log = logging.getLogger("cats.node")

INTERRUPTED = ("the node died while this order was running; submit it again (the slices that finished "
               "are kept, so it resumes)")
STOPPED = ("the node stopped while this order was running; submit it again (the slices that finished are kept, "
           "so it resumes)")
_INTERRUPT_GRACE_S = 10.0  # how long a run may take to stop after SIGINT before it is killed
_MARKER = "CATS_NODE_RUN"  # in the environment of a run's child, so of everything it starts


class OrderRejected(CatsError):
    """An Order this node will not run; `status` is the HTTP status that says why (400 or 422)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class NodePolicy:
    """What this node gives the Orders its peers submit: confinement (unless its operator opted out with
    `unconfined`), network to a confined Order declaring it, the bytes of one slice's result, the wall
    time of one order (a larger `Plant.timeout_s` does not extend it), and what a confined Order's input
    URIs may reach: the operator's `Reach.service(...)`, as the Data Service gives its callers (files
    only under the data roots and never in CATS_HOME, no loopback or private address unless allowed,
    ipfs:// only under pinned DAGs). Its inputs are read by the node, outside the sandbox."""

    unconfined: bool = False
    allow_network: bool = False
    max_output: int = GiB
    max_order_seconds: float = 3600.0
    reach: Reach = field(default_factory=Reach.service)

    def confine(self) -> Policy | None:
        """The sandbox policy its runs get (None: unconfined)."""
        if self.unconfined:
            return None
        return Policy(network=self.allow_network, max_output=self.max_output, reach=self.reach)

    def refusal(self) -> str | None:
        """Why this node refuses every Order (it cannot confine code and was not told to run it unconfined)."""
        if self.unconfined or (why := unavailable()) is None:
            return None
        return (f"this node runs peers' Orders only confined, and cannot confine code here: {why}; its operator "
                "can start it with --unconfined to run them without confinement")

    def admit(self, cid: CID, order: Order) -> None:
        """OrderRejected(422) for an Order that asks for what this node does not give."""
        if order.plant.network and not self.allow_network:
            raise OrderRejected(422, f"Order {cid} asks for network access (plant.network), which this node does "
                                     "not give (its operator can start it with --allow-network)")
        if (policy := self.confine()) is not None:
            if order.output_uri is not None:  # written by the node, with its rights and credentials
                raise OrderRejected(422, f"Order {cid} writes its results to {order.output_uri} (output_uri): this "
                                         "node writes a peer's results only into its store; submit it without "
                                         "output_uri")
            try:
                check_confinable(order, policy)
            except CatsError as e:
                raise OrderRejected(422, f"Order {cid} cannot run confined: {e}") from None

    def as_json(self) -> str:
        """The policy the runner child is given on its command line."""
        return json.dumps(None if (policy := self.confine()) is None else policy.as_dict())


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
    unsealed += [f"input {k} (an Order: send a pipeline's stages one by one)"
                 for k, i in enumerate(order.inputs) if isinstance(i, Order)]
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


# -- running --------------------------------------------------------------------------------------------
def _leftovers(job: str) -> list[int]:
    """Processes whose environment carries the marker of `job`'s run: its child and all it started."""
    marker = f"{_MARKER}={job}".encode()
    found = []
    with contextlib.suppress(OSError):
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    environ = (entry / "environ").read_bytes()
                except OSError:  # gone, or not ours to read
                    continue
                if marker in environ.split(b"\0"):
                    found.append(int(entry.name))
    return found


def _kill(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


class Runner:
    """Runs one Order at a time in a child process under the node's policy; `stop` ends one."""

    def __init__(self, store_root: Path, folder: Path, policy: NodePolicy) -> None:
        self.store_root = store_root
        self.folder = folder  # logs and results of runs, CATS_HOME/node/runs
        self.policy = policy
        self._child: subprocess.Popen[bytes] | None = None
        self._job: str | None = None
        self._stopped: set[str] = set()  # orders stopped, maybe before their child started
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
        env = {**os.environ, "CATS_HOME": str(home().resolve()), _MARKER: job}
        with open(log_path, "wb") as out, self._lock:
            if job in self._stopped:
                self._stopped.discard(job)
                shutil.rmtree(cwd, ignore_errors=True)
                raise CatsError(f"order {job} was stopped before it started")
            # its own session: a Ctrl-C at the node's terminal reaches the node, which then stops the run itself
            child = self._child = subprocess.Popen(
                [sys.executable, "-P", "-m", "cats.mesh.node.runner", order, str(self.store_root.resolve()),
                 str(result.resolve()), self.policy.as_json(), job],
                stdin=subprocess.DEVNULL, stdout=out, stderr=out, cwd=cwd, env=env, start_new_session=True)
            self._job = job
        cap = self.policy.max_order_seconds
        try:
            code = child.wait(cap)
        except subprocess.TimeoutExpired:
            log.warning("order %s ran past the limit of %g s per order: stopping it", job, cap)
            self._end(child)
            raise CatsError(f"order {job} exceeded this node's limit of {cap:g} s per order "
                            "(--max-order-seconds)") from None
        finally:
            with self._lock:
                self._child = self._job = None
                self._stopped.discard(job)
            _kill(_leftovers(job))  # nothing the run started outlives it
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

    def stop(self, job: str) -> None:
        """Stop `job`'s run, or keep it from starting; returns once its child has ended."""
        with self._lock:
            self._stopped.add(job)
            child = self._child if self._job == job else None
        if child is not None:
            self._end(child)

    @staticmethod
    def _end(child: subprocess.Popen[bytes]) -> None:
        """SIGINT the child (Ray shuts down in it), then SIGKILL its process group if it does not end in time."""
        if child.poll() is None:  # never a signal to a pid that may have been reused
            child.send_signal(signal.SIGINT)
            try:
                child.wait(_INTERRUPT_GRACE_S)
            except subprocess.TimeoutExpired:
                log.warning("the run in process %d did not stop on SIGINT; killing it", child.pid)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(child.pid, signal.SIGKILL)  # the session it leads: the child, if still there, and its own
        child.wait()


def recover(table: JobTable) -> list[str]:
    """After a restart: fail the orders that were running (and end what their runs left behind), and return
    those still queued, oldest first."""
    for job in table.rows(status="running", kind="node"):
        table.failed(job.id, INTERRUPTED, was="running")
        _kill(_leftovers(job.id))
    return [job.id for job in table.rows(status="queued", kind="node")]


class Worker:
    """One thread that runs queued orders in turn with `runner(job, order CID)`, recording each outcome.

    `cancel` ends a queued or running order; `stop` starts nothing more and cancels the running one."""

    def __init__(self, table: JobTable, runner: Runner) -> None:
        self.table, self.runner = table, runner
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="cats-node-orders", daemon=True)
        self._lock = threading.Lock()  # whether an order starts, and who records its outcome
        self.current: str | None = None
        self._settled: set[str] = set()  # running orders whose outcome `cancel` recorded
        self.stopping = False

    def start(self) -> None:
        for job in recover(self.table):
            self._queue.put(job)
        self._thread.start()

    def submit(self, job: str) -> None:
        self._queue.put(job)

    def cancel(self, job: str, reason: str) -> bool:
        """Record a queued or running order cancelled (a running one is stopped before this returns);
        False if it was neither."""
        with self._lock:
            if self.current != job:
                return self.table.cancelled(job, reason, was="queued")
            if not self.table.cancelled(job, reason, was="running"):
                return False  # it ended meanwhile (its run recorded how)
            self._settled.add(job)
        log.warning("order %s is cancelled: %s", job, reason)
        self.runner.stop(job)
        return True

    def stop(self, timeout: float) -> bool:
        """Start nothing more (queued orders stay queued for the next start), cancel the order running and
        end the thread. True if the thread ended."""
        with self._lock:
            self.stopping = True
            job = self.current
        if job is not None:
            self.cancel(job, STOPPED)
        self._queue.put(None)
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _loop(self) -> None:
        while (job := self._queue.get()) is not None:
            with self._lock:
                if self.stopping:
                    return
                if not self.table.start(job):
                    continue  # cancelled while queued
                self.current = job
            row = self.table.get(job)
            assert row is not None
            log.info("order %s (%s from %s) running", job, row.order, row.submitter)
            bom, output, error = "", "", None
            try:
                assert row.order is not None  # every order a peer submits names its Order
                bom, output = self.runner(job, row.order)
            except Exception as e:  # any failure of the run is the order's outcome, recorded for its submitter
                text = str(e).strip() or type(e).__name__
                error = text if isinstance(e, CatsError) else f"{type(e).__name__}: {text}"
            with self._lock:
                self.current = None
                if job in self._settled:  # cancelled while it ran: that is its outcome
                    self._settled.discard(job)
                    continue
                # The run records its own outcome, and this one is the same, or says why the runner stopped it
                # (past the wall-time cap: the run took that for a cancel). Only a cancel asked of the run
                # itself (`cats jobs cancel` on this machine signals it directly) stands as the run said.
                now = self.table.get(job)
                if error is None:
                    self.table.done(job, bom, output, was=("running", "dead"))
                elif now is None or now.cancel is None:
                    self.table.failed(job, error, was=("running", "dead"))
            if error is None:
                log.info("order %s done: BOM %s", job, bom)
            else:
                log.warning("order %s failed: %s", job, error.splitlines()[0])
