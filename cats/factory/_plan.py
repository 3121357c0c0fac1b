"""A plan: everything the executor needs to run an Order's slices on Ray, as plain data.

The driver decides once, here, what runs where and under which limits: the batches (slice index,
the Slice as JSON, seed), a group per store the batches read from (its URL, the Ray resources that
place a task next to it, how many tasks it runs at once, the names of the other stores it may fetch
from), and from the Order its Function, Plant (CPUs, GPUs, retries, time limit per slice,
replicas) and pip requirements (Ray's runtime_env). A run and a verification build their plan
with the same function, so a re-execution runs exactly as the run did, only with `write=False`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

from cats.errors import CatsError
from cats.factory.confine import Policy
from cats.order import Order
from cats.order.infra import Slice
from cats.plant import Plant, cluster, embedded
from cats.plant.cluster import Store

# Batches per CPU when the Plant does not fix the batch size: enough to balance uneven slices,
# few enough that per-task overhead stays small next to tiny slices.
BATCHES_PER_CPU = 32

# One slice to run: its index, its Slice as JSON, its seed.
Item = tuple[int, dict[str, Any], int]


@dataclass(frozen=True)
class Group:
    """Where tasks run: the URL workers open the store by, the resources that place them next to it,
    how many run at once, and the names of the other nodes' stores (for blocks this one lacks)."""

    url: str
    resources: dict[str, float]
    slots: int
    peers: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Batch:
    """Slices one task runs, in its group (with replicas, every group runs every batch)."""

    group: int
    items: list[Item]


@dataclass(frozen=True)
class Plan:
    """One invocation's work. With `replicas` > 1, group k is replica k's home and each batch runs
    in every group, a quorum of output CIDs deciding each slice. `write=False` computes outputs
    without storing them (verification), sub-Order submissions answered with `children`."""

    function: dict[str, Any]
    groups: list[Group]
    batches: list[Batch]
    num_cpus: float
    num_gpus: float
    retries: int
    timeout_s: float | None
    runtime_env: dict[str, Any] | None
    replicas: int = 1
    on_disagreement: Literal["fail", "mark"] = "fail"
    write: bool = True
    output_uri: str | None = None
    children: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    placed: dict[str, int] = field(default_factory=dict)  # slices per store, on a cluster of node stores
    confine: dict[str, Any] | None = None  # confined: the policy, the Plant's network and env, folders to hide

    @property
    def slices(self) -> int:
        return sum(len(b.items) for b in self.batches)


def runtime_env(order: Order) -> dict[str, Any] | None:
    """What Ray installs for the Order's workers: its pip requirements, in a virtualenv of their own."""
    return {"pip": list(order.structure.requirements)} if order.structure.requirements else None


def plan(ray: Any, order: Order, url: str, todo: list[tuple[int, Slice, int]], nodes: list[Store], *,
         write: bool = True, children: dict[int, list[dict[str, Any]]] | None = None,
         confine: Policy | None = None, hide: list[str] | None = None) -> Plan:
    """The plan for running `todo` (slice index, Slice, seed) of a sealed Order on `ray`, whose
    cluster keeps the stores `nodes` (none on a plain Ray: workers open the driver's store, `url`);
    with `confine`, every slice runs in a sandbox under that policy, which never shows the folders
    `hide` (the driver's CATS_HOME)."""
    plant = order.plant
    placed: dict[str, int] = {}
    homes = _place(ray, plant, url, todo, nodes, placed)
    items = [(i, piece.model_dump(mode="json", exclude_none=True), s) for i, piece, s in todo]
    at = {i: k for k, (i, _, _) in enumerate(todo)}
    if plant.replicas > 1:
        size = plant.batch or max(1, math.ceil(len(items) / BATCHES_PER_CPU))
        batches = [Batch(0, items[start:start + size]) for start in range(0, len(items), size)]
        groups = [group for group, _ in homes]
    else:
        batches, groups = [], []
        for group, mine in homes:
            size = plant.batch or max(1, math.ceil(len(mine) / (group.slots * BATCHES_PER_CPU)))
            batches += [Batch(len(groups), [items[at[i]] for i in mine[start:start + size]])
                        for start in range(0, len(mine), size)]
            groups.append(group)
    return Plan(function=order.function.model_dump(mode="json", exclude_none=True), groups=groups,
                batches=batches, num_cpus=plant.num_cpus, num_gpus=plant.num_gpus, retries=plant.retries,
                timeout_s=plant.timeout_s, runtime_env=runtime_env(order), replicas=plant.replicas,
                on_disagreement=plant.on_disagreement, write=write, output_uri=order.output_uri,
                children=children or {}, placed=placed,
                confine=None if confine is None else {"policy": confine.as_dict(), "network": plant.network,
                                                      "env": dict(plant.env), "hide": list(hide or [])})


def _place(ray: Any, plant: Plant, url: str, todo: list[tuple[int, Slice, int]], nodes: list[Store],
           placed: dict[str, int]) -> list[tuple[Group, list[int]]]:
    """Groups and the slices each runs. One group on a plain Ray; on a cluster of node stores, one
    per store, each slice next to a store holding its input (`placed` counts them per store). A
    replicated run gets one group per replica, all slices each: on such a cluster, replica k runs
    next to store k (round robin), so replicas land on distinct nodes and read their own stores."""
    need = per_task(plant)
    indices = [i for i, _, _ in todo]
    alive = {n["NodeID"]: n["Resources"] for n in ray.nodes() if n.get("Alive")}
    # on the embedded Ray, a task that fits no node would wait in Ray's queue forever; a cluster may grow to fit it
    for name, amount in need.items() if embedded(plant) else ():
        most = max((r.get(name, 0) for r in alive.values()), default=0)
        if amount > most:
            each = "slice" if plant.replicas == 1 else "replica of a slice"
            plural = "s" if name in ("CPU", "GPU") and amount != 1 else ""
            raise CatsError(f"the Order asks for {amount:g} {name}{plural} per {each}; this Ray has {most:g}"
                            + (" on any one node" if len(alive) > 1 else "") + "; nothing was run")
    if not nodes:
        slots = max(1, _fits(ray.cluster_resources(), need))
        return [(Group(url, dict(plant.resources), slots), indices)] * plant.replicas
    if url not in {s.url for s in nodes}:
        raise CatsError(f"this driver's store ({url}) is none of the cluster's node stores "
                        f"({', '.join(s.resource for s in nodes)}), so their workers could not read the code: "
                        "run the driver on a node that advertises its store, with that store")
    per_node = {s.name: max(1, _fits(alive.get(s.node, {}), need)) for s in nodes}

    def group(s: Store) -> Group:
        return Group(s.url, {**plant.resources, s.resource: cluster.TOKEN}, per_node[s.name],
                     [o.name for o in nodes if o.url != s.url])

    if plant.replicas > 1:
        homes = [nodes[k % len(nodes)] for k in range(plant.replicas)]
        placed.update({s.name: len(todo) * homes.count(s) for s in nodes})
        return [(group(s), indices) for s in homes]
    roots = [piece.cid for _, piece, _ in todo]
    held = iter(cluster.holders(ray, nodes, [r for r in roots if r is not None]))
    wanted = [[] if r is None else next(held) for r in roots]
    if lost := [str(r) for r, w in zip(roots, wanted, strict=True) if r is not None and not w]:
        raise CatsError(f"no store of the cluster ({', '.join(s.resource for s in nodes)}) holds input "
                        f"{lost[0]}" + (f" (nor {len(lost) - 1} more)" if len(lost) > 1 else "") + "; nothing was run")
    chosen = cluster.assign(wanted, [s.name for s in nodes], per_node, plant.locality)
    groups = []
    for s in nodes:
        mine = [i for i, name in zip(indices, chosen, strict=True) if name == s.name]
        placed[s.name] = len(mine)
        if mine:
            groups.append((group(s), mine))
    return groups


def per_task(plant: Plant) -> dict[str, float]:
    """What one task of a slice asks of a node: the Plant's CPUs, GPUs and custom resources; a replica
    a 1/N share of the GPUs and custom resources, and no CPUs here, since it asks at most what the Ray
    has (see the executor's actors)."""
    n = plant.replicas
    need = {"CPU": plant.num_cpus if n == 1 else 0.0, "GPU": plant.num_gpus / n,
            **{name: amount / n for name, amount in plant.resources.items()}}
    return {name: amount for name, amount in need.items() if amount > 0}


def _fits(have: dict[str, float], need: dict[str, float]) -> int:
    """How many tasks asking `need` a node (or a whole Ray) holding `have` runs at once."""
    return min((int(have.get(name, 0) // amount) for name, amount in need.items()), default=1)
