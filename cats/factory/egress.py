"""Egress: merge result slices into the Order's output. Runs as a Ray task, next to the results."""

from __future__ import annotations

import io
from itertools import groupby
from typing import Any, BinaryIO, cast

from cats.cas import dagcbor, dagpb, names, reader
from cats.cas.cid import CID, DAG_CBOR
from cats.cas.dag import put_cbor
from cats.cas.importer import Entry, Importer
from cats.cas.store import BlockStore, open_store
from cats.errors import CatsError
from cats.factory import results
from cats.factory.code import load
from cats.order.function import Function
from cats.order.infra import Merge


def merge(store_url: str, how: str | dict[str, Any], parts: list[dict[str, Any]],
          write: bool = True) -> dict[str, Any]:
    """parts: per slice, in slice order: output CID, encoding, name, assembly, size, tsize.

    `write=False` computes the merged output's CID without storing anything (verification).
    """
    store = open_store(store_url)
    with Importer(store if write else None, cid_version=1) as importer:
        if how == "directory":
            entry = _directory(store, importer, parts)
            return {"output": str(entry.cid), "encoding": "unixfs-directory", "size": entry.size}
        if how == "list":
            links = [CID.parse(p["output"]) for p in parts]
            cid = put_cbor(store, links) if write else CID.hash(dagcbor.encode(links), DAG_CBOR)
            return {"output": str(cid), "encoding": "dag-cbor-list", "size": len(parts)}
        if how == "concat":
            entry = importer.add_file(cast(BinaryIO, _Concat(store, parts)))  # a raw binary stream
            return {"output": str(entry.cid), "encoding": _common(parts, ("bytes", "text")), "size": entry.size}
        if how == "table":
            import pyarrow as pa

            _common(parts, ("arrow",))
            tables = [_value(store, p) for p in parts]
            value = pa.concat_tables(tables) if tables else pa.table({})
        else:
            fn = Function.model_validate(how)
            user_merge: Merge = load(store, fn, "to merge the slices")
            value = user_merge([(_value(store, p), p["assembly"]) for p in parts], **fn.params)
        data, encoding = results.encode(value)
        entry = importer.add_bytes(data)
        return {"output": str(entry.cid), "encoding": encoding, "size": entry.size}


def entry_name(name: str | None, index: int) -> str:
    """Where a slice's result goes, in an output folder or under `output_uri`: its input's name, else its index."""
    return name or str(index)


def _value(store: BlockStore, part: dict[str, Any]) -> Any:
    data = b"".join(reader.read(store, CID.parse(part["output"])))
    return results.decode(data, part["encoding"])


def _common(parts: list[dict[str, Any]], allowed: tuple[str, ...]) -> str:
    kinds = {p["encoding"] for p in parts}
    if not kinds <= set(allowed):
        bad = next(p for p in parts if p["encoding"] not in allowed)
        raise CatsError(f"cannot merge: slice {bad['name'] or bad['index']} returned {bad['encoding']}, "
                        f"this merge takes {' or '.join(allowed)}")
    return kinds.pop() if len(kinds) == 1 else "bytes"


def _directory(store: BlockStore, importer: Importer, parts: list[dict[str, Any]]) -> Entry:
    """Nested folders from slash-separated slice names, each output under its input's name. Slices
    of one name in a row that `lines` cut from one file of one input (over a folder) have their
    results joined, in slice order, into that file's entry; any other two slices of one name are an
    error, as before."""

    def cut_from(p: dict[str, Any]) -> tuple[str, Any]:
        a = p["assembly"]
        return entry_name(p["name"], p["index"]), (a["input"], "lines") if "offset" in a and "input" in a \
            else p["index"]

    tree: dict[str, Any] = {}  # name -> sub-tree (dict) or output (Entry)
    for (path, _), run in groupby(parts, key=cut_from):
        cut = list(run)
        *dirs, leaf = path.split("/")
        node = tree
        for d in dirs:
            node = node.setdefault(d, {})
            if not isinstance(node, dict):
                raise CatsError(f"slice name {path!r} runs through a file")
        if leaf in node:
            raise CatsError(f"two slices are named {path!r}; the directory merge needs unique names")
        if len(cut) == 1:
            node[leaf] = Entry(CID.parse(cut[0]["output"]), cut[0]["size"], cut[0]["tsize"])
        else:
            _common(cut, ("bytes", "text"))
            node[leaf] = importer.add_file(cast(BinaryIO, _Concat(store, cut)))

    def build(node: dict[str, Any]) -> Entry:
        links, size = [], 0
        for name in sorted(node, key=names.encode):
            entry = build(node[name]) if isinstance(node[name], dict) else node[name]
            links.append(dagpb.Link(entry.cid, name, entry.tsize))
            size += entry.size
        return importer.directory(links, size)

    return build(tree)


def union(store: BlockStore, folders: list[CID], write: bool = True) -> CID:
    """The `directory` merge of several runs' slices, from the folders each run's merge made: their
    entries joined, folders of one name joined in turn. It reads folder blocks only, never a file's,
    and gives the folder one run over all their slices would have merged (entries are the same links,
    sorted and sharded alike). `write=False` computes the CID without storing anything."""

    def tree(cids: list[CID], where: str) -> dict[str, Any]:
        found: dict[str, list[tuple[CID, int]]] = {}
        for folder in cids:
            for name, child, tsize in reader.entries(store, folder):
                found.setdefault(name, []).append((child, tsize))
        node: dict[str, Any] = {}  # name -> sub-tree (dict), or the link to a file or to a folder found once
        for name, seen in found.items():
            if len(seen) == 1:
                node[name] = dagpb.Link(seen[0][0], name, seen[0][1])
            elif all(reader.is_folder(store, child) for child, _ in seen):
                node[name] = tree([child for child, _ in seen], f"{where}{name}/")
            else:
                raise CatsError(f"{where}{name} is in more than one of the merged folders "
                                f"({', '.join(str(c) for c, _ in seen)}); the directory merge needs unique names")
        return node

    def build(node: dict[str, Any], importer: Importer) -> Entry:
        links = []
        for name in sorted(node, key=names.encode):
            if isinstance(node[name], dict):
                sub = build(node[name], importer)
                links.append(dagpb.Link(sub.cid, name, sub.tsize))
            else:
                links.append(node[name])
        return importer.directory(links)

    with Importer(store if write else None, cid_version=1) as importer:
        return build(tree(folders, ""), importer).cid


class _Concat(io.RawIOBase):
    """The result slices read one after another, as one stream, for the importer to re-chunk."""

    def __init__(self, store: BlockStore, parts: list[dict[str, Any]]) -> None:
        self._chunks = (chunk for p in parts for chunk in reader.read(store, CID.parse(p["output"])))
        self._rest = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        while not self._rest:
            try:
                self._rest = next(self._chunks)
            except StopIteration:
                return 0
        n = min(len(buffer), len(self._rest))
        buffer[:n] = self._rest[:n]
        self._rest = self._rest[n:]
        return n
