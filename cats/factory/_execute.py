"""The executor: runs a Plan on Ray and reports each slice's outcome as its batch finishes.

One loop serves both ways of running: plain tasks (a group runs as many batches at once as it has
slots, so a batch starts when it is submitted), and, with replicas, N actors (N distinct processes,
each running every batch, one at a time) whose outputs a quorum compares. Either way a batch's
clock runs only while it runs (never while it waits in Ray's queue, nor while an actor starts),
a batch over its time is killed and its slices fail naming the limit, and a task or actor lost
beyond its retries fails its slices with Ray's error.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from functools import reduce
from operator import add
from typing import Any

from cats.bom import ReplicaOutcome
from cats.factory import worker
from cats.factory._plan import Plan
from cats.factory.outcome import SliceOutcome

_STOP_GRACE_S = 3.0  # how long interrupted tasks may take to end what they started before they are killed
# Called with each finished batch's successful outcomes (after the quorum, with replicas).
Done = Callable[[list[SliceOutcome]], None]


@dataclass
class _Pending:
    lane: int  # the group (tasks) or the replica (actors) that runs the batch
    batch: int
    deadline: float
    waits_for: Any = None  # a ref that must be ready before the batch's clock starts (an actor's start)


def execute(ray: Any, plan: Plan, run_dir: str, done: Done) -> list[SliceOutcome]:
    """Run every batch of the plan; `done` gets the slices that succeeded, batch by batch; the
    failed ones are returned, in slice order. `run_dir` (a folder the workers can write) counts
    each batch's attempts."""
    execution = _Actors(ray, plan, run_dir, done) if plan.replicas > 1 else _Tasks(ray, plan, run_dir, done)
    return execution.run()


class _Execution:
    """The loop both ways share: submit, wait, collect, enforce deadlines."""

    def __init__(self, ray: Any, plan: Plan, run_dir: str, done: Done) -> None:
        self.ray, self.plan, self.run_dir, self.done = ray, plan, run_dir, done
        self.pending: dict[Any, _Pending] = {}
        self.failures: list[SliceOutcome] = []
        self.options: dict[str, Any] = {"runtime_env": plan.runtime_env}

    def run(self) -> list[SliceOutcome]:
        try:
            self.start()
            while self.pending:
                ready, _ = self.ray.wait(list(self.pending), num_returns=1, timeout=1.0)
                for ref in ready:
                    p = self.pending.pop(ref)
                    try:
                        outcomes = self.ray.get(ref)
                    except Exception as e:  # the task or actor call failed beyond its retries
                        outcomes = self.lost(p, e)
                    self.submit(p.lane)
                    self.arrive(p.lane, p.batch, outcomes)
                self._expire()
        finally:
            self.stop()
        return sorted(self.failures, key=lambda o: o.index)

    def _expire(self) -> None:
        if not self.plan.timeout_s:
            return
        now = time.time()
        for ref, p in list(self.pending.items()):
            if p.waits_for is not None:
                if not self.ray.wait([p.waits_for], timeout=0)[0]:
                    continue
                p.waits_for, p.deadline = None, now + self._limit(p.batch)
            if now > p.deadline:
                del self.pending[ref]
                who = self.kill(ref, p)
                self.submit(p.lane)
                error = f"timed out after {self.plan.timeout_s} s per slice"
                self.arrive(p.lane, p.batch, self._failed(p.batch, error, who))

    def _limit(self, b: int) -> float:
        return self.plan.timeout_s * len(self.plan.batches[b].items) if self.plan.timeout_s else math.inf

    def _failed(self, b: int, error: str, who: dict[str, Any]) -> list[SliceOutcome]:
        return [SliceOutcome(index=i, error=error, **who) for i, _, _ in self.plan.batches[b].items]

    def _call(self, b: int, lane: int) -> tuple[Any, ...]:
        """The worker's arguments for batch `b` run in group `lane`."""
        group, batch = self.plan.groups[lane], self.plan.batches[b]
        children = {i: self.plan.children[i] for i, _, _ in batch.items if i in self.plan.children}
        return (group.url, self.plan.function, self.run_dir, b, batch.items, self.plan.write, self.plan.output_uri,
                group.peers or None, children or None, self.plan.confine)

    def start(self) -> None:
        raise NotImplementedError

    def submit(self, lane: int) -> None:
        raise NotImplementedError

    def lost(self, p: _Pending, e: Exception) -> list[SliceOutcome]:
        raise NotImplementedError

    def kill(self, ref: Any, p: _Pending) -> dict[str, Any]:
        raise NotImplementedError

    def arrive(self, lane: int, b: int, outcomes: list[SliceOutcome]) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        pass


class _Tasks(_Execution):
    """One Ray task per batch; no more batches of a group in flight than its slots."""

    def start(self) -> None:
        self.task = self.ray.remote(worker.run_batch)
        self.options |= {"num_cpus": self.plan.num_cpus, "num_gpus": self.plan.num_gpus,
                         "max_retries": self.plan.retries}
        self.queues: list[list[int]] = [[] for _ in self.plan.groups]  # per group, its batches in order
        for b, batch in enumerate(self.plan.batches):
            self.queues[batch.group].append(b)
        self.queues = [q[::-1] for q in self.queues]  # popped from the end
        for g, group in enumerate(self.plan.groups):
            for _ in range(group.slots):
                self.submit(g)

    def submit(self, lane: int) -> None:
        if not self.queues[lane]:
            return
        b = self.queues[lane].pop()
        resources = self.plan.groups[lane].resources or None
        ref = self.task.options(**self.options, resources=resources).remote(*self._call(b, lane))
        self.pending[ref] = _Pending(lane, b, time.time() + self._limit(b))

    def lost(self, p: _Pending, e: Exception) -> list[SliceOutcome]:
        return self._failed(p.batch, str(e), {})

    def kill(self, ref: Any, p: _Pending) -> dict[str, Any]:
        self.ray.cancel(ref, force=True)
        return {}

    def arrive(self, lane: int, b: int, outcomes: list[SliceOutcome]) -> None:
        self.failures += [o for o in outcomes if o.failed]
        self.done([o for o in outcomes if not o.failed])

    def stop(self) -> None:
        """Interrupted (Ctrl-C, `cats jobs cancel`): no batch keeps running, nor waits to. A running task is
        interrupted first, so what it started ends with it (a command's process group, a sandbox); one that
        has not stopped within a grace is killed with its worker."""
        refs = list(self.pending)
        if not refs:
            return
        with contextlib.suppress(Exception):  # Ray may be going down with the driver
            for ref in refs:
                self.ray.cancel(ref, force=False)
            # only those still running are killed: Ray's driver can trip over a kill of a task that just ended
            _, running = self.ray.wait(refs, num_returns=len(refs), timeout=_STOP_GRACE_S)
            for ref in running:
                self.ray.cancel(ref, force=True)


class _Actors(_Execution):
    """Every batch on each of N Ray actors, replica k placed as group k says; a quorum of output
    CIDs decides each slice, so one faulty or dishonest worker cannot decide a result. An actor
    task cannot be force-cancelled: a batch over its time has its actor killed and replaced."""

    def start(self) -> None:
        n, plan = self.plan.replicas, self.plan
        self.replica = self.ray.remote(worker.Replica)
        # a share of the CPUs one task would get, so N replicas fit wherever one task fits
        cpus = _fraction(min(plan.num_cpus, self.ray.cluster_resources().get("CPU", plan.num_cpus)) / n)
        self.options |= {"num_cpus": cpus, "num_gpus": _fraction(plan.num_gpus / n), "scheduling_strategy": "SPREAD",
                         "max_restarts": plan.retries, "max_task_retries": plan.retries}
        self.actors: list[tuple[Any, Any]] = [self._start(k) for k in range(n)]  # (actor, ref of its (node, pid))
        self.upto = [0] * n  # the next batch of each replica
        self.arrived: dict[int, dict[int, list[SliceOutcome]]] = {}  # batch -> replica -> outcomes
        for k in range(n):
            self.submit(k)

    def _start(self, k: int) -> tuple[Any, Any]:
        n = self.plan.replicas
        resources = {r: _fraction(v / n) for r, v in self.plan.groups[k].resources.items()} or None
        actor = self.replica.options(**self.options, resources=resources).remote()
        return actor, actor.where.remote()

    def _whereabouts(self, k: int) -> dict[str, Any]:
        try:
            node, pid = self.ray.get(self.actors[k][1], timeout=5)
        except Exception:  # died or never started
            return {"node": "unknown"}
        return {"node": node, "worker": pid}

    def _replace(self, k: int) -> None:
        self.ray.kill(self.actors[k][0], no_restart=True)
        self.actors[k] = self._start(k)

    def submit(self, lane: int) -> None:
        b = self.upto[lane]
        if b == len(self.plan.batches):
            return
        self.upto[lane] += 1
        actor, up = self.actors[lane]
        # per replica, so each counts its own attempts
        call = self._call(b, lane)
        ref = actor.run.remote(call[0], call[1], f"{self.run_dir}/replica-{lane}", *call[3:])
        self.pending[ref] = _Pending(lane, b, math.inf, waits_for=up)

    def lost(self, p: _Pending, e: Exception) -> list[SliceOutcome]:
        failed = self._failed(p.batch, str(e), self._whereabouts(p.lane))
        if isinstance(e, self.ray.exceptions.RayActorError):  # dead beyond its restarts
            self._replace(p.lane)
        return failed

    def kill(self, ref: Any, p: _Pending) -> dict[str, Any]:
        who = self._whereabouts(p.lane)
        self._replace(p.lane)
        return who

    def arrive(self, lane: int, b: int, outcomes: list[SliceOutcome]) -> None:
        got = self.arrived.setdefault(b, {})
        got[lane] = outcomes
        n = self.plan.replicas
        if len(got) < n:
            return
        del self.arrived[b]
        said = [{o.index: o for o in got[k]} for k in range(n)]
        ok = []
        for i, _, _ in self.plan.batches[b].items:
            kept, failure = quorum([said[k][i] for k in range(n)], self.plan.on_disagreement)
            if failure is not None:
                self.failures.append(failure)
            elif kept is not None:
                ok.append(kept.model_copy(update={"data": None, "moved": None}))
        if ok:  # every replica's counters, not only those of the outcomes the quorum kept
            every = [o for k in range(n) for o in got[k]]
            data = [o.data for o in every if o.data is not None]
            moved = [o.moved for o in every if o.moved is not None]
            ok[-1] = ok[-1].model_copy(update={"data": reduce(add, data) if data else None,
                                               "moved": reduce(add, moved) if moved else None})
        self.done(ok)

    def stop(self) -> None:
        for actor, _ in getattr(self, "actors", ()):
            self.ray.kill(actor, no_restart=True)


def quorum(said: list[SliceOutcome], on_disagreement: str) -> tuple[SliceOutcome | None, SliceOutcome | None]:
    """Decide a slice from its replicas' outcomes (one each, in replica order): the kept outcome, or
    the failure. A strict majority of identical outputs wins; dissent fails it unless marked. The
    logs kept (`stdout`, `stderr`) are those of the kept outcome: the first replica, in replica order,
    of the majority; when every replica failed, replica 0's, as its error is the one told."""
    n = len(said)
    index = said[0].index
    outcomes = [ReplicaOutcome(node=o.node or "unknown", worker=o.worker, output=o.output,
                               error=_last_line(o.error) if o.error is not None else None) for o in said]
    votes = Counter((o.output, o.encoding) for o in said if not o.failed)
    if not votes:  # every replica failed: the same error as one worker would give
        return None, SliceOutcome(index=index, error=f"all {n} replicas failed; replica 0 ({_who(outcomes[0])}):\n"
                                                     f"{said[0].error}", stdout=said[0].stdout, stderr=said[0].stderr)
    (output, encoding), count = votes.most_common(1)[0]
    told = "; ".join(f"replica {k} ({_who(o)}) -> {o.output or f'failed: {o.error}'}" for k, o in enumerate(outcomes))
    if 2 * count <= n:
        return None, SliceOutcome(index=index, disagreement=True,
                                  error=f"no majority among {n} replicas (at most {count} agree): {told}")
    agreed = count == n
    if not agreed and on_disagreement == "fail":
        return None, SliceOutcome(index=index, disagreement=True,
                                  error=f"{count} of {n} replicas agree on {output}, the others do not: {told}")
    chosen = next(o for o in said if not o.failed and (o.output, o.encoding) == (output, encoding))
    return chosen.model_copy(update={"replicas": outcomes, "agreed": agreed}), None


def _who(outcome: ReplicaOutcome) -> str:
    return f"{outcome.node}, pid {outcome.worker if outcome.worker is not None else '?'}"


def _last_line(error: str) -> str:
    lines = error.strip().splitlines()
    return (lines[-1] if lines else "error")[:300]


def _fraction(x: float) -> float:
    """Ray keeps 4 decimals of a resource; round down so N shares never add up to more than the whole."""
    return max(math.floor(x * 10_000) / 10_000, 0.0001) if x > 0 else 0.0
