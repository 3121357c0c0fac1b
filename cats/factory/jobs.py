"""Jobs as an operator meets them: find one by a prefix of its id, list them (a job whose driver died
shows as `dead`), cancel one from another terminal, and read what its slices printed, live from the
files workers write while a slice runs and afterwards from the blocks its slice records link.

`Jobs` is the one interface the CLI uses; `LocalJobs` serves this home's jobs, and a node's jobs are
served through the same interface over signed requests (`cats.mesh.jobs.NodeJobs`).
"""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path
from typing import Literal, Protocol

from cats.bom.home import Home
from cats.bom.jobs import Job, SliceLog, alive
from cats.cas import reader
from cats.cas.cid import CID
from cats.errors import CatsError
from cats.factory import logs

Stream = Literal["stdout", "stderr"]
_LIVE = re.compile(r"(\d+)\.(stdout|stderr)")  # a live log in a run folder's logs/: `<slice>.<stream>`
_PIECE = 4 << 20  # the most of a log one read returns: a reader asks again from the new offset
_RECENT = 20  # jobs `cats jobs` lists besides the queued and running ones (all of them with --all)


class Jobs(Protocol):
    """What `cats jobs show/cancel/logs` need of wherever a job runs."""

    def get(self, ref: str) -> Job: ...

    def cancel(self, job: Job, reason: str) -> Job: ...

    def slices(self, job: Job) -> list[SliceLog]: ...

    def read(self, job: Job, log: SliceLog, stream: Stream, offset: int) -> tuple[bytes, int]: ...


class LocalJobs:
    """The jobs of a home: its runs, the Orders its node runs for peers, and those it submitted to nodes."""

    def __init__(self, home: Home) -> None:
        self.home = home
        self.table = home.jobs

    def listing(self, everything: bool = False) -> list[Job]:
        """Queued and running jobs and the latest finished ones (every job with `everything`), oldest first."""
        if everything:
            return self.table.reap(self.table.rows())
        recent = {j.id: j for j in self.table.rows(limit=_RECENT)}
        recent |= {j.id: j for j in self.table.active()}
        return self.table.reap(sorted(recent.values(), key=lambda j: j.created))

    def get(self, ref: str) -> Job:
        found = self.table.find(ref)
        if not found:
            raise CatsError(f"no job {ref[:40]} in {self.home.folder} (cats jobs --all lists them)")
        if len(found) > 1:
            raise CatsError(f"job {ref} is ambiguous: {', '.join(j.id for j in found)}")
        return self.table.reap(found)[0]

    def cancel(self, job: Job, reason: str, wait_s: float = 60.0) -> Job:
        """Stop a queued or running job: its driver gets SIGINT (as at Ctrl-C), cancels its Ray tasks,
        records `cancelled` and exits; finished slices stay indexed, so a re-run resumes."""
        if job.ended:
            raise CatsError(f"job {job.id} has ended already: it is {job.status}")
        if job.status == "queued":
            if self.table.cancelled(job.id, reason, was="queued"):
                return self._now(job)
            job = self._now(job)
        live = alive(job)
        if job.pid is None:
            raise CatsError(f"job {job.id} has no process to signal: it is starting (try again in a moment), or it "
                            "runs in a thread of a program that is not the Factory's (stop it there)")
        if live is None:
            raise CatsError(f"job {job.id} is driven on {job.host or 'another machine'}: cancel it there")
        if not live:
            return self.table.reap([job])[0]
        if not self.table.cancel(job.id, reason):  # it ended meanwhile: its driver gets no stray signal
            return self._now(job)
        assert job.pid is not None
        os.kill(job.pid, signal.SIGINT)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            now = self.table.reap([self._now(job)])[0]
            if now.ended:
                return now
            time.sleep(0.1)
        raise CatsError(f"job {job.id} did not stop within {wait_s:g} s of SIGINT (pid {job.pid}); "
                        f"`kill -9 {job.pid}` ends it (cats jobs then reports it dead)")

    def slices(self, job: Job) -> list[SliceLog]:
        """Slices that failed or printed anything, and those of the running stage with a live log here, by
        stage and index."""
        found = {(s.stage, s.index): s for s in self.table.slice_logs(job.id)}
        for index in self._live(job):
            found.setdefault((job.stage, index), SliceLog(stage=job.stage, index=index, status="running"))
        return [found[k] for k in sorted(found)]

    def read(self, job: Job, log: SliceLog, stream: Stream, offset: int) -> tuple[bytes, int]:
        """What slice `log` wrote to `stream` from byte `offset` of all it wrote (at most a few MiB: read
        again from the offset returned until nothing comes), and the offset after it: from its live file
        while the run writes it, else from its stored log, whose first bytes may be dropped (a line says
        so, standing for them)."""
        live = self._live(job).get(log.index, {}).get(stream) if log.stage == job.stage else None
        if live is not None:
            try:
                with open(live, "rb") as f:
                    f.seek(offset)
                    data = f.read(_PIECE)
                return data, offset + len(data)
            except OSError:  # the run ended and took its folder: the block has it
                pass
        entry = self._slice(job, log) if log.status == "running" else log  # it may have ended since
        text = None if entry is None else getattr(entry, stream)
        if text is None:
            return b"", offset
        cid = CID.parse(text)
        size = reader.stat(self.home.store, cid).size
        gone, said = logs.dropped(b"".join(reader.read(self.home.store, cid, 0, min(size, 64))))
        start = said + max(offset - gone, 0)  # where `offset` is in the stored log
        if start >= size:
            return b"", offset
        data = b"".join(reader.read(self.home.store, cid, start, min(_PIECE, size - start)))
        if offset < gone:  # what is gone, in a line
            return logs.dropped_line(gone - offset) + data, gone + len(data)
        return data, offset + len(data)

    def _slice(self, job: Job, log: SliceLog) -> SliceLog | None:
        return next((s for s in self.table.slice_logs(job.id) if (s.stage, s.index) == (log.stage, log.index)), None)

    def _now(self, job: Job) -> Job:
        return self.table.get(job.id) or job

    @staticmethod
    def _live(job: Job) -> dict[int, dict[str, Path]]:
        """The live logs of a running job's slices on this machine, by slice and stream."""
        if job.run_dir is None or job.ended:
            return {}
        found: dict[int, dict[str, Path]] = {}
        try:
            names = os.listdir(Path(job.run_dir) / "logs")
        except OSError:
            return {}
        for name in names:
            if (m := _LIVE.fullmatch(name)) is not None:
                found.setdefault(int(m[1]), {})[m[2]] = Path(job.run_dir) / "logs" / name
        return found
