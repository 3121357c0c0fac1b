"""Scenario 4: two organizations, two CAT nodes, one lineage across their border.

Org A (a weather agency) publishes three days of hourly sensor logs and a cleaned version of
them (an Order dropping faulty readings, signed by A). Org B (a city) pulls A's cleaned data with
its lineage from A's node, builds on it (the rows within 10 km of Lisbon: its BOM names A's as its
parent) and verifies the whole lineage back into A: B re-executes A's cleaning from A's raw logs
as well as its own Order. A then pulls B's BOM from B's node and sees what was built on its data.

Each organization has its own CATS_HOME (store, run index, Ed25519 identity, trust list) and
its own `cats node start` process; the steps each takes run in this process with that home.
Both use this machine's one Ray: on one machine there is nothing else to run on.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cats.errors import CatsError

if TYPE_CHECKING:
    import networkx as nx

    from cats.cas.cid import CID
    from cats.factory import Run
    from cats.mesh.client import PullReport
    from cats.verification.report import Report

HOURS = 72  # three days of A's logs
STORE_VARIABLES = ("CATS_STORE", "CATS_IPFS_API")  # an organization uses the store in its own home


@dataclass
class Org:
    """One organization: its home, and its node once started."""

    name: str
    home: Path
    url: str = ""
    did: str = ""
    node: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @contextlib.contextmanager
    def acting(self) -> Iterator[None]:
        """Make CATs in this process act as this organization (its store, index, identity, trust)."""
        saved = {k: os.environ.get(k) for k in ("CATS_HOME", *STORE_VARIABLES)}
        os.environ["CATS_HOME"] = str(self.home)
        for k in STORE_VARIABLES:
            os.environ.pop(k, None)
        try:
            yield
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    def start(self) -> None:
        """`cats node start --port 0` with this home; wait for its `listening on URL` line."""
        self.home.mkdir(parents=True, exist_ok=True)
        log = self.home.parent / f"{self.name}-node.log"
        env = {k: v for k, v in os.environ.items() if k not in STORE_VARIABLES} | {"CATS_HOME": str(self.home)}
        with open(log, "wb") as err:
            self.node = subprocess.Popen([sys.executable, "-m", "cats", "node", "start", "--port", "0"],
                                         stdout=subprocess.PIPE, stderr=err, env=env, start_new_session=True)
        assert self.node.stdout is not None
        watchdog = threading.Timer(60, self.node.kill)  # a node that never gets ready must not hang the demo
        watchdog.start()
        try:
            line = self.node.stdout.readline().decode().split()  # "cats node DID listening on URL"
        finally:
            watchdog.cancel()
        if len(line) != 6 or line[3:5] != ["listening", "on"]:
            self.stop()
            raise CatsError(f"the node of {self.name} did not start: {log.read_text(errors='replace')[-2000:]}")
        self.did, self.url = line[2], line[5]

    def stop(self) -> None:
        if self.node is None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.node.send_signal(signal.SIGTERM)
        try:
            self.node.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.node.kill()
            self.node.wait()
        if self.node.stdout is not None:
            self.node.stdout.close()
        self.node = None


def _both(a: Org, b: Org, step: Callable[[Org], None]) -> None:
    """Start (or stop) both nodes at once: each takes a couple of seconds to import and listen."""
    errors: list[BaseException] = []

    def go(org: Org) -> None:
        try:
            step(org)
        except BaseException as e:  # reported below, after both finished
            errors.append(e)

    threads = [threading.Thread(target=go, args=(org,)) for org in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


@dataclass
class Story:
    """What happened: both organizations, every CID, B's pull, B's verification report, and the
    lineage as each side sees it (B: its BOM and A's parent; A: its BOM and what B built on it)."""

    a: Org
    b: Org
    logs: CID
    clean: Run
    built: Run
    pulled: PullReport
    report: Report
    summary: dict[str, Any]
    seen_by_b: nx.DiGraph
    seen_by_a: nx.DiGraph


def run(base: Path, hours: int = HOURS, force: bool = False, say: Callable[[str], None] = lambda _: None,
        progress: Callable[[int, int], None] | None = None) -> Story:
    """The whole story in `base` (made afresh: new identities, stores and nodes); the nodes are stopped after."""
    from cats import factory
    from cats.api import verify
    from cats.bom import lineage, load
    from cats.bom.index import Index
    from cats.cas.importer import Importer
    from cats.cas.pins import Pins
    from cats.cas.store import open_store
    from cats.config import home
    from cats.demo import sensor_logs
    from cats.identity import Identity
    from cats.identity.trust import Trust
    from cats.mesh.client import pull

    def graph(cid: CID) -> nx.DiGraph:
        index = Index(home() / "index.sqlite")
        try:
            return lineage.graph(open_store(), cid, index)
        finally:
            index.close()

    shutil.rmtree(base, ignore_errors=True)
    a, b = Org("org-a", base / "org-a"), Org("org-b", base / "org-b")
    try:
        say("starting a CAT node for each organization")
        _both(a, b, Org.start)
        for me, peer in ((a, b), (b, a)):
            with me.acting():
                Trust().add(peer.did, name=peer.name, url=peer.url)

        with a.acting():
            say(f"{a.name}: publishing {hours} hourly sensor logs and a cleaned version")
            raw = base / "org-a-logs"
            sensor_logs.make(raw, hours=hours)
            store = open_store()
            with Importer(store, cid_version=1) as importer:
                *_, top = importer.add_path(raw)
            Pins(home() / "pins").add(store, top.cid)
            clean = factory.run(sensor_logs.clean_order(top.cid), force=force, quiet=True, progress=progress)

        with b.acting():
            say(f"{b.name}: pulling {a.name}'s cleaned logs and their lineage from its node, {a.url}")
            store = open_store()
            pulled = pull(store, clean.bom, a.url, Identity.load())
            say(f"{b.name}: the rows within 10 km of Lisbon, built on {a.name}'s cleaned logs")
            built = factory.run(sensor_logs.order(clean.output, name="org-b: rows within 10 km of Lisbon"),
                                force=force, quiet=True, progress=progress)
            say(f"{b.name}: verifying the whole lineage, back into {a.name}")
            report = verify(built.bom, recursive=True, store=store)
            summary = sensor_logs.summary(store, load(store, built.bom))
            seen_by_b = graph(built.bom)

        with a.acting():
            say(f"{a.name}: pulling {b.name}'s BOM from its node, {b.url}, to see what was built on its data")
            pull(open_store(), built.bom, b.url, Identity.load())
            seen_by_a = graph(clean.bom)
    finally:
        _both(a, b, Org.stop)
    return Story(a, b, top.cid, clean, built, pulled, report, summary, seen_by_b, seen_by_a)
