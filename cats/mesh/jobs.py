"""A job this home submitted to another node, served through the same interface as this home's own
(`cats.factory.jobs.Jobs`): its status, cancel, slices and logs come from the node over signed
requests; what the node says of its status is copied into this home's job table."""

from __future__ import annotations

from typing import Any, NoReturn

from pydantic import ValidationError

from cats.bom.home import Home
from cats.bom.jobs import Job, SliceLog
from cats.cas.cid import CID
from cats.errors import CatsError, MeshError
from cats.factory.jobs import Stream
from cats.mesh.client import Node

_ANSWER_S = 10.0  # how long a node may take to answer about a job
_LATEST = 1 << 35  # seconds since the epoch past any time a node may claim (the year 3058)


class NodeJobs:
    """The node that runs `job` (a job of kind `remote` in `home`'s table), asked with the home's identity."""

    def __init__(self, job: Job, home: Home) -> None:
        if job.node is None or job.remote is None:
            raise CatsError(f"job {job.id} names no node to ask about it")
        self.job, self.home = job, home
        self.node = Node(job.node, home.identity, timeout=_ANSWER_S)

    def get(self, ref: str) -> Job:
        """The job as the node tells it now (`ref` is this home's id of it, or the node's)."""
        assert self.job.remote is not None
        return self._merged(self.node.order_status(self.job.remote))

    def cancel(self, job: Job, reason: str) -> Job:
        """The node stops it (a running one before it answers) and records it cancelled by its submitter."""
        if job.ended:
            raise CatsError(f"job {job.id} has ended already: it is {job.status}")
        assert self.job.remote is not None
        return self._merged(self.node.cancel(self.job.remote))

    def slices(self, job: Job) -> list[SliceLog]:
        assert self.job.remote is not None
        said = self.node.order_slices(self.job.remote)
        try:
            return [SliceLog.model_validate(s) for s in said] if isinstance(said, list) else self._odd(said)
        except ValidationError as e:
            return self._odd(e)

    def read(self, job: Job, log: SliceLog, stream: Stream, offset: int) -> tuple[bytes, int]:
        assert self.job.remote is not None
        return self.node.order_log(self.job.remote, log.index, stream, offset, log.stage)

    def _merged(self, state: Any) -> Job:
        """This home's job with the node's word on it (checked: a node's answer is input like any other),
        which the table keeps as the last known state."""
        if not isinstance(state, dict):
            self._odd(state)
        known = {k: state[k] for k in ("status", "bom", "output", "error", "done", "total", "started", "finished",
                                       "stage", "stages") if state.get(k) is not None}
        try:
            merged = Job.model_validate({**self.job.model_dump(), **known})
            for cid in (merged.bom, merged.output):
                if cid is not None:
                    CID.parse(cid)
        except (ValidationError, CatsError) as e:
            self._odd(e)
        if any(not 0 <= t < _LATEST for t in (merged.started, merged.finished) if t is not None) or \
                not 0 <= merged.done <= (merged.total if merged.total is not None else merged.done) < 1 << 40:
            self._odd(state)
        if known:
            self.home.jobs.set(self.job.id, None, **{k: getattr(merged, k) for k in known})
        return merged

    def _odd(self, what: object) -> NoReturn:
        raise MeshError(f"node at {self.node.url} answered about job {self.job.id} with what no job is: "
                        f"{str(what)[:200]}", url=self.node.url)
