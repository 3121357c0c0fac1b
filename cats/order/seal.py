"""Sealing: turn an Order's local references (code file, IaC folder, this environment) into CIDs.

Constructing an Order does no I/O, so importing an Order script (as workers do, to load the
function defined in it) stays cheap; the Factory seals once, on the driver.
"""

from __future__ import annotations

from pathlib import Path

from cats import data
from cats.cas import reader
from cats.cas.cid import CID
from cats.cas.importer import Importer
from cats.cas.store import BlockStore
from cats.data import Info, Reach
from cats.data.views import View
from cats.errors import CatsError, DataIntegrityError, UnsafePath
from cats.order import Order
from cats.order.entry import check_entry
from cats.order.environment import environment_lock
from cats.order.function import Function
from cats.order.infra import InfraFunction


def _seal_function(fn: Function, importer: Importer) -> Function:
    if fn.code is not None:
        return fn
    assert fn.source is not None
    if not fn.source.exists():
        raise CatsError(f"function source {fn.source} does not exist")
    code = importer.add_wrapped(fn.source)
    return fn.model_copy(update={"code": code.cid, "source": None})


def seal(order: Order, store: BlockStore, reach: Reach | None = None) -> Order:
    """Add code, IaC and the environment lock to the store; return the Order with their CIDs. Each
    Function's entry is checked against its code first, so a mistyped name writes nothing. URIs are
    pinned within `reach` (default: this user's own, `Reach.local()`)."""
    for fn in (order.function, order.infra.split, order.infra.merge):
        if isinstance(fn, Function):
            check_entry(fn, store)
    with Importer(store, cid_version=1) as importer:
        function = _seal_function(order.function, importer)
        infra = order.infra
        updates = {}
        for side in ("split", "merge"):
            part = getattr(infra, side)
            if isinstance(part, Function):
                updates[side] = _seal_function(part, importer)
        if updates:
            infra = InfraFunction.model_validate({**infra.model_dump(), **updates})
        structure = order.structure
        if structure.lock is None:
            structure = structure.model_copy(update={"lock": environment_lock(store)})
        if structure.iac_path is not None:
            structure = structure.model_copy(update={"iac": _add_iac(store, structure.iac_path), "iac_path": None})
        inputs = [_add_input(importer, i, reach) for i in order.inputs]
    for fn in (function, infra.split, infra.merge):
        if isinstance(fn, Function) and fn.code is not None:
            try:
                reader.check_tree(store, fn.code)
            except UnsafePath as e:
                raise UnsafePath(f"function {fn.entry}'s code cannot be laid out for workers: {e}") from None
    return order.model_copy(update={"function": function, "infra": infra, "structure": structure,
                                    "inputs": inputs})


def _not_iac(name: str) -> bool:
    """What a deployment folder holds but its definition is not: provider downloads, state (which holds
    secrets) and plans. Hidden files stay: `.terraform.lock.hcl` pins the providers' versions and hashes."""
    return name in (".terraform", ".git") or ".tfstate" in name or name.endswith(".tfplan")


def _add_iac(store: BlockStore, folder: Path) -> CID:
    if not folder.is_dir():
        raise CatsError(f"IaC folder {folder} does not exist")
    with Importer(store, cid_version=1, hidden=True, ignore=_not_iac) as importer:
        *_, top = importer.add_path(folder)
    return top.cid


def _add_input(importer: Importer, item: CID | Info | View | str | Path | Order,
               reach: Reach | None) -> CID | Info | View:
    """A CID as it is; a URI pinned now, at job start (a pinned Info or view must still be that version)."""
    if isinstance(item, CID):
        return item
    if isinstance(item, Order):
        raise CatsError(f"input {item.name or item.function.entry} is an Order: a pipeline's stages are sealed one "
                        "at a time, each once the stages it reads have run (cats.factory.run does both)")
    if isinstance(item, View) and item.version is None:
        raise DataIntegrityError(f"the view of {item.uri} is not pinned: make it with cats.data.views.view(uri)",
                                 item.uri)
    if isinstance(item, (Info, View, str)):
        uri = item if isinstance(item, str) else item.uri
        pinned = data.pin(uri, reach)
        if not isinstance(item, str) and item.version != pinned.version:
            raise DataIntegrityError(f"input {uri} changed since it was pinned: version {item.version} then, "
                                     f"{pinned.version} now", uri)
        return item if isinstance(item, View) else pinned
    if not item.exists():
        raise CatsError(f"input {item} does not exist")
    *_, top = importer.add_path(item)
    return top.cid
