"""Recursive verification across what this node can and cannot read: an ancestor is
re-executed where its code and data are here, fetched when its BOM is not, and otherwise accepted
on a trusted signature — and the report says which."""

from __future__ import annotations

import shutil
from pathlib import Path

import jobs
import pytest

from cats import factory
from cats.bom import load as load_bom
from cats.cas.cid import CID
from cats.cas.store.local import LocalStore
from cats.factory import Run
from cats.identity import Identity
from cats.order import Function, Order
from cats.verification.audit import verify


@pytest.fixture
def chain(ray_session: str, cats_home: Path, tmp_path: Path) -> tuple[LocalStore, Run, Run]:
    parent_src = jobs.module(tmp_path, "fvl_parent", "def upper(data):\n    return data.upper()\n")
    child_src = jobs.module(tmp_path, "fvl_child", "def flip(data):\n    return data[::-1]\n")
    store = jobs.home_store(cats_home)
    inputs = jobs.add(store, jobs.folder(tmp_path, {"x.txt": b"one\n", "y.txt": b"two\n"}))
    first = factory.run(Order(function=Function(entry="fvl_parent:upper", source=parent_src), inputs=[inputs]))
    second = factory.run(Order(function=Function(entry="fvl_child:flip", source=child_src), inputs=[first.output]))
    return store, first, second


def test_ancestors_are_reexecuted_when_readable(chain: tuple[LocalStore, Run, Run]) -> None:
    store, first, second = chain
    report = verify(store, second.bom, recursive=True)
    assert report.verified and report.mode == "reexecute"
    assert report.signers == [Identity.load().did]  # this node signed both runs
    (ancestor,) = report.ancestors
    assert ancestor.bom == str(first.bom) and ancestor.mode == "reexecute" and ancestor.verified
    assert ancestor.slices and all(s.ok for s in ancestor.slices)


def test_unreadable_ancestor_stands_on_a_trusted_signature(chain: tuple[LocalStore, Run, Run]) -> None:
    store, first, second = chain
    store.delete(load_bom(store, first.bom).code)  # the parent's code is not readable here

    untrusted = verify(store, second.bom, recursive=True)
    assert not untrusted.verified
    assert [p.reason for p in untrusted.ancestors[0].problems] == ["block-missing"]

    report = verify(store, second.bom, recursive=True, trusted={Identity.load().did})
    assert report.verified
    (ancestor,) = report.ancestors
    assert ancestor.mode == "signature" and ancestor.verified
    assert ancestor.signers == [Identity.load().did]
    assert [p.reason for p in ancestor.unchecked] == ["block-missing"] and ancestor.problems == []


def test_a_tampered_ancestor_is_not_saved_by_its_signature(chain: tuple[LocalStore, Run, Run]) -> None:
    store, first, second = chain
    code = load_bom(store, first.bom).code
    store.path(code).write_bytes(b"altered")  # present but wrong: tampering, not absence
    report = verify(store, second.bom, recursive=True, trusted={Identity.load().did})
    assert not report.verified
    (ancestor,) = report.ancestors
    assert ancestor.mode == "reexecute" and "code-altered" in {p.reason for p in ancestor.problems}


def test_a_missing_ancestor_is_fetched(chain: tuple[LocalStore, Run, Run], tmp_path: Path) -> None:
    store, first, second = chain
    elsewhere = LocalStore(tmp_path / "elsewhere")
    for cid in list(store):
        elsewhere.put(cid, store.get(cid))
    store.delete(first.bom)
    asked: list[CID] = []

    def fetch(cid: CID) -> str | None:
        asked.append(cid)
        store.put(cid, elsewhere.get(cid))
        return None

    report = verify(store, second.bom, recursive=True, fetch=fetch)
    assert asked == [first.bom]
    assert report.verified and report.ancestors[0].mode == "reexecute"

    store.delete(first.bom)
    failed = verify(store, second.bom, recursive=True, fetch=lambda cid: "no peer has it")
    assert not failed.verified
    assert "no peer has it" in failed.ancestors[0].problems[0].detail
    shutil.rmtree(tmp_path / "elsewhere")
