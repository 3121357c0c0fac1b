"""Pipelines: an Order whose inputs include other Orders runs them first and reads their outputs.

The stages are the Orders reachable through inputs, each once, upstream before downstream. A
stage becomes an ordinary Order once its upstream stages have run: each Order input is replaced by
that stage's output CID. Nothing else changes, so every stage is memoized, reuses evaluations and
names its upstream BOM as parent (the producer of its input) like any Order.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from cats.cas.cid import CID
from cats.errors import CatsError
from cats.order import Order


def stages(order: Order) -> list[Order]:
    """The Orders `order` depends on and itself, each once (the same object feeding two stages runs
    once), every stage after the stages it reads. A walk with a stack of its own, so a chain of any
    length is ordered; CatsError names the stages of a loop (code can make one: an Order's input list
    is a list)."""
    ordered: list[Order] = []
    placed: set[int] = set()
    path: list[Order] = []  # the stages being visited, each reading the next
    stack: list[tuple[Order, bool]] = [(order, False)]
    while stack:
        stage, upstream_done = stack.pop()
        if upstream_done:
            path.pop()
            placed.add(id(stage))
            ordered.append(stage)
            continue
        if id(stage) in placed:
            continue
        if any(s is stage for s in path):
            loop = [name(s) for s in path[next(k for k, s in enumerate(path) if s is stage):]]
            raise CatsError(f"the pipeline's stages read each other in a loop: {' reads '.join([*loop, loop[0]])}")
        path.append(stage)
        stack.append((stage, True))
        stack.extend((u, False) for u in reversed(upstream_of(stage)) if id(u) not in placed)
    return ordered


def upstream_of(order: Order) -> list[Order]:
    """The Orders among an Order's inputs."""
    return [i for i in order.inputs if isinstance(i, Order)]


def resolved(order: Order, outputs: Mapping[int, CID]) -> Order:
    """The stage with each Order input replaced by that Order's output (`outputs` by `id(order)`)."""
    if not upstream_of(order):
        return order
    return order.model_copy(update={"inputs": [outputs[id(i)] if isinstance(i, Order) else i
                                               for i in order.inputs]})


def each(order: Order, change: Callable[[Order], Order]) -> Order:
    """The pipeline with `change` made to every stage (a stage feeding two others stays one)."""
    made: dict[int, Order] = {}
    for stage in stages(order):
        inputs = [made[id(i)] if isinstance(i, Order) else i for i in stage.inputs]
        made[id(stage)] = change(stage.model_copy(update={"inputs": inputs}) if upstream_of(stage) else stage)
    return made[id(order)]


def name(order: Order) -> str:
    """How listings call a stage: its name, else its function's entry."""
    return order.name or order.function.entry
