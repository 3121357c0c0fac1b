"""Pipelines: an Order whose inputs include other Orders runs them first and reads their outputs.

The stages are the Orders reachable through inputs, each once, upstream before downstream. A
stage becomes an ordinary Order once its upstream stages have run: each Order input is replaced by
that stage's output CID. Nothing else changes, so every stage is memoized, reuses evaluations and
names its upstream BOM as parent (the producer of its input) like any Order.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from cats.cas.cid import CID
from cats.order import Order


def stages(order: Order) -> list[Order]:
    """The Orders `order` depends on and itself, each once (the same object feeding two stages runs
    once), every stage after the stages it reads."""
    ordered: list[Order] = []
    placed: set[int] = set()

    def visit(stage: Order) -> None:
        if id(stage) in placed:
            return
        for upstream in upstream_of(stage):
            visit(upstream)
        placed.add(id(stage))
        ordered.append(stage)

    visit(order)
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
