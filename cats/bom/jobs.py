"""The job table, an embedded SQLite file in CATS_HOME: every Order run here (by `cats run`, `submit`,
`exec`, `demo`, the Python API, or a node for its peers) and every Order this home submitted to a
node, with its status, progress, outcome, the process that drives it and, per slice, where what it
printed is kept.

A job is `queued` (a node's order waiting its turn), `running`, then `done` (its BOM and output),
`failed` (the error), `cancelled`, or `dead`: its driver ended without saying how (killed, the
machine rebooted), which whoever looks next finds out (`reap`). A job remembers its driver's pid with
the process's start time, so a pid the system has reused since is not taken for it.

Several processes write the table at once (a run's driver, `cats jobs cancel`, a node's worker
thread): every change is one statement, guarded by the status it expects.
"""

from __future__ import annotations

import os
import secrets
import socket
import threading
import time
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict

from cats._sqlite import connect, transaction

Status = Literal["queued", "running", "done", "failed", "cancelled", "dead"]
Kind = Literal["local", "node", "remote"]
STATUSES: tuple[str, ...] = get_args(Status)
FINISHED = ("done", "failed", "cancelled", "dead")
Was = str | tuple[str, ...] | None  # the status (or statuses) a change expects; None: any
_MAX_ERROR = 16_000  # characters of an error kept (a failed slice's message carries a traceback)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, kind TEXT NOT NULL, name TEXT, order_cid TEXT, status TEXT NOT NULL,
    submitter TEXT, command TEXT, created REAL NOT NULL, started REAL, finished REAL,
    done INTEGER NOT NULL DEFAULT 0, total INTEGER, bom TEXT, output TEXT, error TEXT,
    host TEXT, pid INTEGER, pid_start INTEGER, run_dir TEXT, node TEXT, remote TEXT, cancel TEXT,
    stage INTEGER NOT NULL DEFAULT 1, stages INTEGER NOT NULL DEFAULT 1);
CREATE INDEX IF NOT EXISTS jobs_created ON jobs (created);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status);
CREATE TABLE IF NOT EXISTS job_slices (
    job TEXT NOT NULL, stage INTEGER NOT NULL, idx INTEGER NOT NULL, name TEXT, status TEXT NOT NULL, stdout TEXT,
    stderr TEXT, error TEXT, PRIMARY KEY (job, stage, idx));
"""
_COLUMNS = ("id", "kind", "name", "order_cid", "status", "submitter", "command", "created", "started", "finished",
            "done", "total", "bom", "output", "error", "host", "pid", "pid_start", "run_dir", "node", "remote",
            "cancel", "stage", "stages")


class Job(BaseModel):
    """One job as the table holds it. `node`/`remote` name the node and its id there for an Order
    submitted to another node; `submitter` the DID a node ran it for; `cancel` why it was asked to stop."""

    model_config = ConfigDict(frozen=True)

    id: str
    kind: Kind
    name: str | None = None
    order: str | None = None
    status: Status
    submitter: str | None = None
    command: str | None = None
    created: float
    started: float | None = None
    finished: float | None = None
    done: int = 0
    total: int | None = None
    bom: str | None = None
    output: str | None = None
    error: str | None = None
    host: str | None = None
    pid: int | None = None
    pid_start: int | None = None
    run_dir: str | None = None
    node: str | None = None
    remote: str | None = None
    cancel: str | None = None
    stage: int = 1  # of a pipeline's `stages`, the one running (or the last that ran); `done`/`total` are its
    stages: int = 1

    @property
    def ended(self) -> bool:
        return self.status in FINISHED

    def summary(self) -> dict[str, Any]:
        """What `cats jobs --json` and a node's answers say of it."""
        shown = self.model_dump(exclude={"pid_start", "run_dir", "cancel"})
        return {k: v for k, v in shown.items() if v is not None or k in ("id", "status", "order", "bom")}


class SliceLog(BaseModel):
    """A slice of a job (of its pipeline's `stage`): how it ended and the CIDs of what it wrote to stdout
    and stderr (None: nothing)."""

    model_config = ConfigDict(frozen=True)

    stage: int = 1
    index: int
    name: str | None = None
    status: Literal["done", "failed", "resumed", "running"]
    stdout: str | None = None
    stderr: str | None = None
    error: str | None = None


def _row(values: tuple[Any, ...]) -> Job:
    fields = dict(zip(_COLUMNS, values, strict=True))
    fields["order"] = fields.pop("order_cid")
    return Job.model_validate({k: v for k, v in fields.items() if v is not None})


def process_start(pid: int) -> int | None:
    """When process `pid` started (clock ticks since boot), or None if there is no such process here."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])  # field 22; the name before it may hold spaces


def alive(job: Job) -> bool | None:
    """Whether the job's driver is still running: None when it runs on another machine (who can tell?)."""
    if job.host != socket.gethostname() or job.pid is None:
        return None
    return process_start(job.pid) == job.pid_start


class JobTable:
    def __init__(self, path: str | Path) -> None:
        self._db = connect(path, _SCHEMA, check_same_thread=False)
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def create(self, kind: Kind, *, name: str | None = None, order: str | None = None, status: Status = "running",
               submitter: str | None = None, command: str | None = None, node: str | None = None,
               remote: str | None = None, signalled: bool = True) -> Job:
        """A new job; a `running` local one is driven by this process (its host is recorded, and its pid,
        to signal and to watch, if `signalled`)."""
        now = time.time()
        me: tuple[Any, ...] = (None, None, None)
        if status == "running" and kind == "local":
            me = (socket.gethostname(), *((os.getpid(), process_start(os.getpid())) if signalled else (None, None)))
        with self._lock:
            while True:
                job = secrets.token_hex(6)
                cursor = self._db.execute(
                    "INSERT OR IGNORE INTO jobs (id, kind, name, order_cid, status, submitter, command, created, "
                    "started, host, pid, pid_start, node, remote) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (job, kind, name, order, status, submitter, command, now, now if status == "running" else None,
                     *me, node, remote))
                if cursor.rowcount:
                    break
        found = self.get(job)
        assert found is not None
        return found

    def get(self, job: str) -> Job | None:
        with self._lock:
            found = self._db.execute(f"SELECT {', '.join(_COLUMNS)} FROM jobs WHERE id = ?", (job,)).fetchone()
        return None if found is None else _row(found)

    def find(self, prefix: str) -> list[Job]:
        """Jobs whose id starts with `prefix` (ids are hex: a few characters usually name one)."""
        if not prefix or any(c not in "0123456789abcdef" for c in prefix.lower()):
            return []
        with self._lock:
            rows = self._db.execute(f"SELECT {', '.join(_COLUMNS)} FROM jobs WHERE id >= ? AND id < ? LIMIT 10",
                                    (prefix.lower(), prefix.lower() + "g")).fetchall()
        return [_row(r) for r in rows]

    def rows(self, status: str | None = None, submitter: str | None = None, kind: str | None = None,
             limit: int | None = None) -> list[Job]:
        """Jobs, oldest first (the newest `limit` of them), only those with `status`, `submitter`, `kind` when given."""
        where = [(f"{column} = ?", value) for column, value in
                 (("status", status), ("submitter", submitter), ("kind", kind)) if value is not None]
        clause = f" WHERE {' AND '.join(w for w, _ in where)}" if where else ""
        tail = f" LIMIT {int(limit)}" if limit is not None else ""
        with self._lock:
            rows = self._db.execute(f"SELECT * FROM (SELECT {', '.join(_COLUMNS)}, rowid AS r FROM jobs{clause} "
                                    f"ORDER BY created DESC, rowid DESC{tail}) ORDER BY created, r",
                                    [v for _, v in where]).fetchall()
        return [_row(r[:-1]) for r in rows]

    def active(self) -> list[Job]:
        """Jobs queued or running (as the table says), oldest first."""
        with self._lock:
            rows = self._db.execute(f"SELECT {', '.join(_COLUMNS)} FROM jobs WHERE status IN ('queued', 'running') "
                                    "ORDER BY created, rowid").fetchall()
        return [_row(r) for r in rows]

    # -- changes, each guarded by the status it expects -----------------------------------------------------
    def start(self, job: str) -> bool:
        """Mark a queued job running; False if it is not queued (cancelled meanwhile, say)."""
        return self.set(job, "queued", status="running", started=time.time())

    def drive(self, job: str) -> bool:
        """This process now drives the (running) job: its pid is the one to signal and to watch."""
        me = os.getpid()
        return self.set(job, "running", host=socket.gethostname(), pid=me, pid_start=process_start(me))

    def done(self, job: str, bom: str, output: str, was: Was = None) -> bool:
        return self.set(job, was, status="done", bom=bom, output=output, error=None, finished=time.time())

    def failed(self, job: str, error: str, was: Was = None) -> bool:
        return self.set(job, was, status="failed", error=error[:_MAX_ERROR], finished=time.time())

    def cancelled(self, job: str, reason: str, was: Was = None) -> bool:
        """Record the job cancelled if its status is `was` (any, with None); whether it was."""
        return self.set(job, was, status="cancelled", error=reason, finished=time.time())

    def cancel(self, job: str, reason: str) -> bool:
        """Say why a running job is asked to stop (its driver records it as it stops); False if it is not running."""
        return self.set(job, "running", cancel=reason)

    def set(self, job: str, was: Was, **fields: object) -> bool:
        """Change fields of `job` if its status is `was` (one of them, for a tuple; any, with None)."""
        columns = ", ".join(f"{'order_cid' if name == 'order' else name} = ?" for name in fields)
        expected = () if was is None else (was,) if isinstance(was, str) else was
        condition = f" AND status IN ({', '.join('?' * len(expected))})" if expected else ""
        with self._lock:
            cursor = self._db.execute(f"UPDATE jobs SET {columns} WHERE id = ?{condition}",
                                      (*fields.values(), job, *expected))
        return bool(cursor.rowcount)

    def reap(self, jobs: list[Job]) -> list[Job]:
        """`jobs` with those whose driver died here marked `dead` (and so recorded)."""
        seen = []
        for job in jobs:
            if job.status == "running" and job.pid is not None and alive(job) is False:
                why = f"its driver (pid {job.pid} on {job.host}) ended without recording an outcome"
                if self.set(job.id, "running", status="dead", error=why, finished=time.time()):
                    job = job.model_copy(update={"status": "dead", "error": why})
            seen.append(job)
        return seen

    def slices(self, job: str, entries: list[SliceLog]) -> None:
        """Record how these slices of `job` ended (and where their logs are)."""
        with self._lock, transaction(self._db):
            self._db.executemany(
                "INSERT OR REPLACE INTO job_slices (job, stage, idx, name, status, stdout, stderr, error) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [(job, e.stage, e.index, e.name, e.status, e.stdout, e.stderr, (e.error or "")[:_MAX_ERROR] or None)
                 for e in entries])

    def slice_logs(self, job: str) -> list[SliceLog]:
        with self._lock:
            rows = self._db.execute("SELECT stage, idx, name, status, stdout, stderr, error FROM job_slices "
                                    "WHERE job = ? ORDER BY stage, idx", (job,)).fetchall()
        keys = ("stage", "index", "name", "status", "stdout", "stderr", "error")
        return [SliceLog.model_validate({k: v for k, v in zip(keys, r, strict=True) if v is not None}) for r in rows]
