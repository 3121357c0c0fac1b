"""A run's hand on its job: the driver records in the home's job table that it runs, how far it got,
where its workers keep what slices print while they run, how each slice ended (with the CIDs of its
logs), and the outcome. A job started elsewhere (a node's order, queued by its worker thread) is
taken over by the process that drives it, so `cats jobs cancel` signals the right one.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from cats.bom.jobs import JobTable, SliceLog
from cats.errors import Cancelled
from cats.factory.outcome import Progress, SliceOutcome


class Tracker:
    """Records one run's progress and outcome in `table` under `job`; `progress` (the caller's) too."""

    def __init__(self, table: JobTable, job: str, progress: Progress | None = None, owned: bool = True) -> None:
        self.table, self.job, self._progress = table, job, progress
        self.owned = owned  # made by this process (not queued by a node's worker, which records its own stops)
        self.signalled = False
        self.stage = 0  # of the pipeline, counted from 1 as each starts

    @classmethod
    def start(cls, table: JobTable, name: str | None, job: str | None, progress: Progress | None) -> Tracker:
        """A new running job of this process, or `job` (made by a node's worker) now driven by it."""
        if job is None:
            command = " ".join(["cats", *sys.argv[1:]]) if sys.argv and sys.argv[0].endswith(("cats", "__main__.py")) \
                else None
            # a SIGINT reaches a process's main thread: a run driven from another one must not be signalled
            signalled = threading.current_thread() is threading.main_thread()
            job = table.create("local", name=name, command=command, signalled=signalled).id
            return cls(table, job, progress)
        table.drive(job)
        return cls(table, job, progress, owned=False)

    @contextmanager
    def interruptible(self) -> Iterator[None]:
        """Notes a SIGINT while the run is driven here (in the main thread), so the run is taken as
        cancelled however the interrupt surfaces: Ray may wrap the KeyboardInterrupt it raises."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def interrupt(signum: int, frame: object) -> None:
            self.signalled = True
            raise KeyboardInterrupt

        before = signal.signal(signal.SIGINT, interrupt)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, before)

    def stage_starts(self, stages: int) -> None:
        """The next stage of a pipeline of `stages` (one for a plain Order) starts: its progress is the job's."""
        self.stage += 1
        self.table.set(self.job, None, stage=self.stage, stages=stages, done=0, total=None)

    def order(self, cid: str) -> None:
        self.table.set(self.job, None, order=cid)

    def progress(self, done: int, total: int) -> None:
        """Called once per finished batch (not per slice), so the job's count is written as often."""
        if self._progress is not None:
            self._progress(done, total)
        self.table.set(self.job, None, done=done, total=total)

    def folder(self, run_dir: str) -> None:
        """Where the workers on this machine write what slices print while they run (`logs/` in it)."""
        self.table.set(self.job, None, run_dir=run_dir)

    def slices(self, outcomes: Iterable[SliceOutcome], names: list[str | None], status: str) -> None:
        """How these slices ended (`status`, unless they failed), for those that failed or printed anything:
        the rest need no row (the job's count says they are done)."""
        kept = [SliceLog.model_validate({
            "stage": self.stage, "index": o.index, "name": names[o.index], "status": "failed" if o.failed else status,
            "stdout": _text(o.stdout), "stderr": _text(o.stderr), "error": o.error})
            for o in outcomes if o.failed or o.stdout is not None or o.stderr is not None]
        if kept:
            self.table.slices(self.job, kept)

    def done(self, bom: str, output: str) -> None:
        self.table.done(self.job, bom, output, was="running")

    def failed(self, error: str) -> None:
        self.table.failed(self.job, error, was="running")

    def interrupted(self) -> Cancelled:
        """The run stopped on SIGINT: Ctrl-C, `cats jobs cancel` (which said why in the job first), or a
        node's runner (past its wall-time cap, the node stopping: the node records that)."""
        job = self.table.get(self.job)
        reason = job.cancel if job is not None and job.cancel else "interrupted"
        if self.owned or reason != "interrupted":  # else whoever queued it stopped it, and says why
            self.table.cancelled(self.job, reason, was="running")
        return Cancelled(f"job {self.job} was {reason if reason.startswith('cancelled') else 'cancelled: ' + reason}; "
                         "its finished slices are kept, so running it again resumes")


def _text(value: object) -> str | None:
    return None if value is None else str(value)
