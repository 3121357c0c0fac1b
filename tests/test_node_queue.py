"""The node's queue, operated: cancel (by the submitter or the operator), the per-order wall-time cap,
SIGTERM with one order running and one queued, `cats node orders`, and the policy that decides which
Orders a node takes (confinement, network).

Real `cats node start` processes on loopback, joined to the session's Ray; Orders are submitted,
cancelled and listed with the `cats` CLI, as signed requests. Nodes that must run a peer's Order to
the end, or must run one long enough to stop it, are started `--unconfined` (the policy test shows a
node refusing Orders when it cannot confine them).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from nodes import run_cli
from test_mesh_node import NodeProc

from cats.bom.jobs import JobTable
from cats.identity import Identity
from cats.identity.requests import sign_request
from cats.identity.trust import Trust
from cats.mesh.node.orders import STOPPED

NAP_S = 60  # how long a napping Order would run if nothing stopped it


@dataclass
class Peer:
    """A trusted peer: its own CATS_HOME, from which it runs the CLI."""

    home: Path

    @property
    def did(self) -> str:
        return Identity.load(self.home / "identity").did

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        res = run_cli(self.home, *args)
        return subprocess.CompletedProcess(args, res.code, res.out, res.err)

    def submit(self, order: Path, node: NodeProc) -> subprocess.Popen[str]:
        """`cats mesh submit` in the background: it waits for the order's end, as a user's would."""
        return subprocess.Popen([sys.executable, "-m", "cats", "mesh", "submit", str(order), "--to", node.url,
                                 "--json", "--timeout", "120"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env={**os.environ, "CATS_HOME": str(self.home)})


@dataclass
class Setup:
    base: Path
    node: NodeProc
    peer: Peer  # submits
    other: Peer  # trusted too, but did not submit
    pids: Path  # napping slices write their pid here

    def order(self, name: str, nap: float = 0, **plant: object) -> Path:
        """ORDER.py for a one-slice Order (module `name`) that naps `nap` seconds, then tags its input."""
        data = self.base / f"{name}-input"
        data.mkdir()
        (data / "x.txt").write_text(f"{name}\n")
        path = self.base / f"{name}.py"
        path.write_text(f"""
import os
import time
from pathlib import Path

from cats.order import Function, Order
from cats.plant import Plant


def tag(data: bytes) -> bytes:
    Path({str(self.pids)!r}, str(os.getpid())).write_text("")
    time.sleep({nap!r})
    return b"[" + data.strip() + b"]"


order = Order(function=Function.of(tag), inputs=[Path({str(data)!r})], name={name!r}, plant=Plant(**{plant!r}))
""")
        return path

    def rows(self) -> dict[str, dict]:
        """The node's orders by id, read from its table as `cats node orders --json` prints them."""
        listed = run_cli(self.node.home, "node", "orders", "--json")
        assert listed.code == 0, listed.err
        return {row["id"]: row for row in json.loads(listed.out)}

    def job_of(self, name: str, status: str, timeout: float = 60) -> str:
        """The id of the order named `name` (its Order's module), once it has `status`."""
        deadline = time.monotonic() + timeout
        while True:
            table = JobTable(self.node.home / "jobs.sqlite")
            try:
                rows = table.rows(kind="node")
            finally:
                table.close()
            for row in rows:
                if row.status == status and _name_of(self.node, row.order) == name:
                    return row.id
            assert time.monotonic() < deadline, (name, status, rows)
            time.sleep(0.1)

    def napping(self) -> list[int]:
        """The pids of the slices that started napping, that are still alive."""
        return [int(p.name) for p in self.pids.iterdir() if _alive(int(p.name))]


def _name_of(node: NodeProc, order: str) -> str | None:
    from cats.cas import dagcbor
    from cats.cas.cid import CID

    return dagcbor.decode(node.store.get(CID.parse(order))).get("name")


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def left_behind(node: NodeProc) -> list[str]:
    """Processes other than the node itself with its CATS_HOME in their environment or command line."""
    mark = str(node.home).encode()
    own = node.proc.pid if node.proc is not None else None
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in (own, os.getpid()) or not _alive(int(entry.name)):
            continue
        try:
            environ, cmdline = (entry / "environ").read_bytes(), (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if mark in environ or mark in cmdline:
            command = cmdline.replace(b"\0", b" ").decode(errors="replace")
            found.append(f"{entry.name}: {command[:200]}")
    return found


def wait_for(check: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def ended(proc: subprocess.Popen[str], timeout: float = 120) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def one_line(err: str, *culprits: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for text in culprits:
        assert text in lines[0], (text, lines[0])
    return lines[0]


@pytest.fixture
def setup(tmp_path: Path, ray_session: str) -> Iterator[Setup]:
    peer, other = Peer(tmp_path / "peer"), Peer(tmp_path / "other")
    pids = tmp_path / "pids"
    pids.mkdir()
    node = NodeProc(tmp_path / "node", env={"RAY_ADDRESS": ray_session})
    (tmp_path / "node").mkdir()
    for p in (peer, other):
        Trust(node.home / "trust.json").add(p.did)
    s = Setup(tmp_path, node, peer, other, pids)
    yield s
    if node.proc is not None:
        node.stop()


# -- cancel ------------------------------------------------------------------------------------------
def test_cancel_by_the_submitter_and_the_operator_and_not_by_another_peer(setup: Setup) -> None:
    node, peer, other = setup.node, setup.peer, setup.other
    node.args = ("--unconfined",)
    node.start()
    nap, quick = setup.order("queue_nap", nap=NAP_S), setup.order("queue_quick")
    napping = peer.submit(nap, node)
    running = setup.job_of("queue_nap", "running")
    queued_cli = peer.submit(quick, node)
    queued = setup.job_of("queue_quick", "queued")
    wait_for(lambda: setup.napping(), 60, "the napping slice did not start")

    # another trusted peer may neither cancel nor follow it; an unknown id is 404
    refused = other.cli("mesh", "cancel", running, "--to", node.url)
    assert refused.returncode == 1
    one_line(refused.stderr, "403", running, peer.did)
    absent = peer.cli("mesh", "cancel", "0123456789abcdef", "--to", node.url)
    assert absent.returncode == 1
    one_line(absent.stderr, "404", "0123456789abcdef")

    # the queued order, cancelled, never runs
    res = peer.cli("mesh", "cancel", queued, "--to", node.url, "--json")
    assert res.returncode == 0, res.stderr
    answer = json.loads(res.stdout)
    assert answer == {"id": queued, "status": "cancelled", "order": answer["order"], "name": "queue_quick",
                      "error": f"cancelled by its submitter {peer.did}", "finished": answer["finished"]}
    assert abs(answer["finished"] - time.time()) < 60  # never started, so no `started`
    # the running one stops within seconds, and every process of its run with it
    started = time.monotonic()
    res = peer.cli("mesh", "cancel", running, "--to", node.url)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == f"order {running} on {node.url}: cancelled"
    assert time.monotonic() - started < 15
    wait_for(lambda: not setup.napping(), 15, f"the cancelled slice still runs: {setup.napping()}")
    assert left_behind(node) == []
    rows = setup.rows()
    assert rows[running]["status"] == rows[queued]["status"] == "cancelled"
    assert rows[queued]["started"] is None and rows[running]["started"] is not None
    assert rows[running]["finished"] >= rows[running]["started"]
    assert len(list(setup.pids.iterdir())) == 1  # the queued order's slice never ran
    for proc in (napping, queued_cli):
        code, _, err = ended(proc)
        assert code == 1
        one_line(err, "cancelled", node.url, "cancelled by its submitter")
    again = peer.cli("mesh", "cancel", running, "--to", node.url)
    assert again.returncode == 1
    one_line(again.stderr, "409", running, "cancelled")

    # the queue goes on; the operator (the node's own identity) cancels a peer's running order
    rerun = peer.submit(nap, node)
    job = setup.job_of("queue_nap", "running")
    operator = run_cli(node.home, "mesh", "cancel", job, "--to", node.url, "--json")
    assert operator.code == 0, operator.err
    assert json.loads(operator.out)["status"] == "cancelled"
    assert setup.rows()[job]["error"] == "cancelled by this node's operator"
    assert ended(rerun)[0] == 1
    wait_for(lambda: not setup.napping(), 15, "the operator's cancel left the slice running")

    # GET /orders: a peer sees its own orders, the operator all of them; `cats node orders` lists them
    me = Identity.load(peer.home / "identity")
    mine = httpx.get(node.url + "/orders", headers=sign_request(me, node.did, "GET", "/orders", b"")).json()
    assert [o["id"] for o in mine] == [running, queued, job]
    assert all(o["submitter"] == peer.did for o in mine)
    theirs = Identity.load(other.home / "identity")
    assert httpx.get(node.url + "/orders", headers=sign_request(theirs, node.did, "GET", "/orders", b"")).json() == []
    path = "/orders?status=cancelled"
    owner = Identity.load(node.home / "identity")
    assert [o["id"] for o in httpx.get(node.url + path, headers=sign_request(owner, node.did, "GET", path, b"")).json()
            ] == [running, queued, job]
    table = run_cli(node.home, "node", "orders")
    assert table.code == 0, table.err
    for j in (running, queued, job):
        assert j in table.out
    assert "cancelled by its submitter" in table.out and "cancelled by this node's operator" in table.out
    listed = run_cli(node.home, "node", "orders", "--status", "done", "--json")
    assert listed.code == 0 and json.loads(listed.out) == []
    bad = run_cli(node.home, "node", "orders", "--status", "finished")
    bad.error_line("--status", "finished", "cancelled")


def test_node_orders_on_a_home_that_never_ran_a_node(tmp_path: Path) -> None:
    listed = run_cli(tmp_path / "home", "node", "orders", "--json")
    assert (listed.code, json.loads(listed.out)) == (0, [])
    said = run_cli(tmp_path / "home", "node", "orders")
    assert said.code == 0 and "no orders" in said.err
    assert not (tmp_path / "home" / "jobs.sqlite").exists()


# -- the wall-time cap -------------------------------------------------------------------------------
def test_an_order_past_the_wall_time_cap_is_stopped_and_the_next_one_runs(setup: Setup) -> None:
    node, peer = setup.node, setup.peer
    node.args = ("--unconfined", "--max-order-seconds", "6")  # long enough for the quick order on a busy machine
    node.start()
    nap = setup.order("capped_nap", nap=NAP_S, timeout_s=1e9)  # its own limit does not extend the node's
    napping = peer.submit(nap, node)
    job = setup.job_of("capped_nap", "running")
    after = peer.submit(setup.order("capped_after"), node)
    code, _, err = ended(napping)
    assert code == 1
    one_line(err, "failed", "exceeded this node's limit of 6 s per order (--max-order-seconds)")
    row = setup.rows()[job]
    assert row["status"] == "failed" and "limit of 6 s per order" in row["error"]
    assert row["finished"] - row["started"] < 6 + 12  # the cap, and the run's grace to stop
    wait_for(lambda: not setup.napping(), 15, "the capped slice still runs")
    code, out, err = ended(after)
    assert code == 0, err
    assert json.loads(out)["status"] == "done"


# -- SIGTERM -----------------------------------------------------------------------------------------
def test_sigterm_cancels_the_running_order_keeps_the_queued_one_and_leaves_no_process(setup: Setup) -> None:
    node, peer = setup.node, setup.peer
    node.args = ("--unconfined",)
    node.start()
    napping = peer.submit(setup.order("term_nap", nap=NAP_S), node)
    running = setup.job_of("term_nap", "running")
    waiting = peer.submit(setup.order("term_quick"), node)
    queued = setup.job_of("term_quick", "queued")
    wait_for(lambda: setup.napping(), 60, "the napping slice did not start")
    runner = left_behind(node)
    assert runner, "the run's child should carry the node's CATS_HOME"

    started = time.monotonic()
    node.stop()  # exit 0, no traceback
    assert time.monotonic() - started < 20
    assert left_behind(node) == []
    wait_for(lambda: not setup.napping(), 15, "the slice of the order running at SIGTERM still runs")
    rows = setup.rows()
    assert (rows[running]["status"], rows[running]["error"]) == ("cancelled", STOPPED)
    assert rows[queued]["status"] == "queued" and rows[queued]["started"] is None
    assert len(list(setup.pids.iterdir())) == 1  # nothing new started

    node.args = ("--unconfined", "--port", node.url.rsplit(":", 1)[1])  # where its submitters wait
    node.start()  # the queued order runs now; its submitter, still waiting, gets its BOM
    code, out, err = ended(waiting)
    assert code == 0, err
    assert json.loads(out)["status"] == "done" and setup.rows()[queued]["status"] == "done"
    code, _, err = ended(napping)
    assert code == 1
    one_line(err, "cancelled", "the node stopped")


# -- the node's policy -------------------------------------------------------------------------------
def test_a_node_that_cannot_confine_refuses_orders_unless_unconfined(setup: Setup) -> None:
    node, peer = setup.node, setup.peer
    node.env["CATS_BWRAP"] = "/nonexistent"
    node.start()
    said = node.base / "node.err"  # written just after the ready line
    wait_for(lambda: "every Order will be refused" in said.read_text(), 10, said.read_text())
    assert "/nonexistent" in said.read_text() and "--unconfined" in said.read_text()
    quick = setup.order("policy_quick")
    res = peer.cli("mesh", "submit", str(quick), "--to", node.url, "--json")
    assert res.returncode == 1
    one_line(res.stderr, "503", "/nonexistent", "--unconfined")
    assert httpx.get(node.url + "/id").status_code == 200  # it still serves
    assert setup.rows() == {}
    node.stop()

    node.args = ("--unconfined",)
    node.start()
    wait_for(lambda: "--unconfined: peers' Orders run with this node's full rights" in said.read_text(), 10,
             said.read_text())
    res = peer.cli("mesh", "submit", str(quick), "--to", node.url, "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["status"] == "done"
    # network is given only with --allow-network, confined or not
    online = setup.order("policy_online", network=True)
    res = peer.cli("mesh", "submit", str(online), "--to", node.url)
    assert res.returncode == 1
    one_line(res.stderr, "422", "plant.network", "--allow-network")


@pytest.mark.slow
def test_a_cancelled_run_takes_its_embedded_ray_with_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without RAY_ADDRESS the run starts a Ray of its own (GCS, raylet, workers): none outlives the cancel."""
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    peer = Peer(tmp_path / "peer")
    node = NodeProc(tmp_path / "node", args=("--unconfined",))
    (tmp_path / "node").mkdir()
    Trust(node.home / "trust.json").add(peer.did)
    pids = tmp_path / "pids"
    pids.mkdir()
    setup = Setup(tmp_path, node, peer, peer, pids)
    node.start()
    try:
        napping = peer.submit(setup.order("embedded_nap", nap=NAP_S), node)
        job = setup.job_of("embedded_nap", "running")
        wait_for(lambda: setup.napping(), 120, "the napping slice did not start")
        assert len(left_behind(node)) > 2  # the run's child, its Ray's servers and the napping worker
        res = peer.cli("mesh", "cancel", job, "--to", node.url)
        assert res.returncode == 0, res.stderr
        assert left_behind(node) == []
        assert not setup.napping()
        assert ended(napping)[0] == 1
    finally:
        node.stop()


# -- the submitter's jobs ---------------------------------------------------------------------------
TALKING = """
import os
import sys
import time
from pathlib import Path

from cats.order import Function, Order


def talk(data: bytes) -> bytes:
    text = data.decode().strip()
    Path({pids!r}, str(os.getpid())).write_text(text)
    print(f"out of {{text}}", flush=True)
    print(f"err of {{text}}", file=sys.stderr, flush=True)
    while text == "held" and Path({hold!r}).exists():
        time.sleep(0.2)
    return text.upper().encode()


order = Order(function=Function.of(talk), inputs=[Path({data!r})], name="talking")
"""


def test_a_node_job_is_followed_read_and_cancelled_from_the_submitters_cats_jobs(setup: Setup) -> None:
    from cats.bom import load as load_bom
    from cats.cas.cid import CID
    from cats.cas.store.local import LocalStore

    node, peer = setup.node, setup.peer
    node.args = ("--unconfined",)  # the slices tell the test their pids through its folder
    node.start()
    data, hold = setup.base / "talking-input", setup.base / "hold"
    data.mkdir()
    for name, text in (("a.txt", "a"), ("b.txt", "b"), ("c.txt", "held")):
        (data / name).write_text(text + "\n")
    hold.touch()
    path = setup.base / "talking.py"
    path.write_text(TALKING.format(pids=str(setup.pids), hold=str(hold), data=str(data)))

    submitting = peer.submit(path, node)
    try:
        wait_for(lambda: any(p.read_text() == "held" for p in setup.pids.iterdir() if p.is_file()), 90,
                 "the held slice did not start")

        def mine() -> dict:
            listed = peer.cli("jobs", "--json")
            assert listed.returncode == 0, listed.stderr
            jobs = json.loads(listed.stdout)
            assert len(jobs) == 1, jobs
            return jobs[0]

        wait_for(lambda: mine()["done"] == 2, 60, "the two quick slices did not finish")
        job = mine()
        assert job["kind"] == "remote" and job["node"] == node.url and job["status"] == "running"
        assert job["total"] == 3 and job["name"] == "talking"

        # what the finished slices printed, read on the node through the submitter's own job id
        out = peer.cli("jobs", "logs", job["id"], "--slice", "0")
        assert out.returncode == 0, out.stderr
        assert out.stdout == "out of a\n" and out.stderr == "err of a\n"
        every = peer.cli("jobs", "logs", job["id"])
        assert every.returncode == 0, every.stderr
        assert "[slice 0] out of a\n" in every.stdout and "[slice 1] out of b\n" in every.stdout
        assert "[slice 1] err of b\n" in every.stderr and "[slice 2] out of held\n" in every.stdout  # live

        # another trusted peer reads neither the slices nor the logs; bad offsets and stages are refused
        remote = str(job["remote"])
        theirs = Identity.load(setup.other.home / "identity")
        for route in (f"/orders/{remote}/slices", f"/orders/{remote}/logs/0/stdout?offset=0"):
            refused = httpx.get(node.url + route, headers=sign_request(theirs, node.did, "GET", route, b""))
            assert refused.status_code == 403 and peer.did in refused.text, (route, refused.text)
        mine_id = Identity.load(peer.home / "identity")
        for route in (f"/orders/{remote}/logs/0/stdout?offset=-1", f"/orders/{remote}/logs/0/stdout?stage=0",
                     f"/orders/{remote}/logs/0/secrets", f"/orders/{remote}/logs/-1/stdout"):
            bad = httpx.get(node.url + route, headers=sign_request(mine_id, node.did, "GET", route, b""))
            assert bad.status_code == 422, (route, bad.status_code)
        shown = peer.cli("jobs", "show", job["id"][:5])
        assert shown.returncode == 0 and "running" in shown.stdout and node.url in shown.stdout

        cancelled = peer.cli("jobs", "cancel", job["id"], "--json")
        assert cancelled.returncode == 0, cancelled.stderr
        assert json.loads(cancelled.stdout)["status"] == "cancelled"
        code, _, err = ended(submitting)
        assert code == 1
        one_line(err, "cancelled", "cancelled by its submitter")
        wait_for(lambda: not setup.napping(), 20, "the cancel left a slice running")
        assert mine()["status"] == "cancelled"
        assert [r["status"] for r in setup.rows().values()] == ["cancelled"]
    finally:
        if submitting.poll() is None:
            submitting.kill()
            submitting.wait()

    hold.unlink()
    again = peer.cli("mesh", "submit", str(path), "--to", node.url, "--json")
    assert again.returncode == 0, again.stderr
    bom = load_bom(LocalStore(peer.home / "blocks"), CID.parse(json.loads(again.stdout)["bom"]))
    assert bom.invoice.resumed == 2 and bom.invoice.executed == 1  # the cancelled run's finished slices were kept

    node.stop()  # the logs of a finished job outlive the node's run, and come back with it (at its address)
    node.args = (*node.args, "--port", node.url.rsplit(":", 1)[1])
    node.start()
    jobs = json.loads(peer.cli("jobs", "--json").stdout)
    assert [j["status"] for j in jobs] == ["cancelled", "done"]
    later = peer.cli("jobs", "logs", jobs[1]["id"], "--slice", "2")
    assert later.returncode == 0 and later.stdout == "out of held\n" and later.stderr == "err of held\n"
