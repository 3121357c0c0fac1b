"""A peer's hostile Order, run by a real node: confined, it never gets the node's key or its secrets.

A real `cats node start` process (confined by default) holds a planted secret in its environment
(AWS_SECRET_ACCESS_KEY) and in files of its CATS_HOME and of its store folder; its Ed25519 key is in
CATS_HOME/identity. A trusted peer submits, with `cats mesh submit`, an Order whose Function
(tests/attack_probe.py) looks every way it can: every file and symlink it can see, /proc/*/environ,
cmdline, maps, fds, mem and root, PTRACE_ATTACH on the node's process and every one it sees, signal 0
on every process number, TCP to the node's port, to Ray's and to a loopback server of the test, Unix
sockets under /tmp/ray and /dev/shm (Ray's session and object store), `ray.init`, and writes into
CATS_HOME, the store and /code. Its report comes back as the run's output; the key (in every
encoding) and the secret must not be in it.

The node that runs the hostile Order confined starts its own Ray for each run (no RAY_ADDRESS), as a
node on its own machine does: the secret is then also in the environment of Ray's workers, which
start the sandboxes. The control runs the same probe on a node started `--unconfined` and gets both:
that is what `--unconfined` gives away. Network: an Order declaring it is refused by a default node,
and on an `--allow-network` node reaches a loopback server while one not declaring it does not.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from servers import FileServer, serving
from test_mesh_node import NodeProc
from test_node_queue import Peer, one_line

from cats.cas import reader
from cats.cas.cid import CID
from cats.cas.store.local import LocalStore
from cats.identity.trust import Trust

PROBE = Path(__file__).with_name("attack_probe.py")
WRITTEN = "ATTACK-was-here"


@dataclass
class Target:
    """A node with planted secrets, a peer it trusts, and a loopback server nobody confined should reach."""

    base: Path
    node: NodeProc
    peer: Peer
    secret: str
    canary: FileServer

    @property
    def store_root(self) -> Path:
        return self.node.home / "blocks"

    def order(self, name: str, function: str = "probe", params: dict | None = None, extra: str = "",
              **plant: object) -> Path:
        """ORDER.py: the probe's module (named `name`, which workers cache by), `extra` functions, and a
        one-slice Order of `function`."""
        data = self.base / f"{name}-input"
        data.mkdir()
        (data / "x.txt").write_text("a slice\n")
        path = self.base / f"{name}.py"
        path.write_text(PROBE.read_text() + extra + f"""

from pathlib import Path as _Path

from cats.order import Function as _Function, Order as _Order
from cats.plant import Plant as _Plant

order = _Order(function=_Function.of({function}, **{params or {}!r}), inputs=[_Path({str(data)!r})], name={name!r},
               plant=_Plant(**{plant!r}))
""")
        return path

    def submit(self, order: Path) -> dict:
        res = self.peer.cli("mesh", "submit", str(order), "--to", self.node.url, "--json", "--timeout", "150",
                            "--fetch-output")
        assert res.returncode == 0, res.stderr
        result = json.loads(res.stdout)
        assert result["status"] == "done"
        assert result["pulled"]["signers"] == {result["bom"]: [self.node.did]}  # signed by the node, as ever
        return result

    def output(self, result: dict) -> bytes:
        """The run's one output file, from the peer's store (the submit pulled the output)."""
        store = LocalStore(self.peer.home / "blocks")
        (name, cid, _), = reader.entries(store, CID.parse(result["output"]))
        return b"".join(reader.read(store, cid))

    def probe_params(self, ray_address: str = "") -> dict:
        assert self.node.proc is not None
        return {"home": str(self.node.home), "store": str(self.store_root), "ray_address": ray_address,
                "pids": [self.node.proc.pid, os.getpid()],
                "ports": [int(self.node.url.rsplit(":", 1)[1]), int(self.canary.url.rsplit(":", 1)[1]),
                          *([int(ray_address.rsplit(":", 1)[1])] if ray_address else [])]}

    def needles(self) -> dict[str, bytes]:
        """The node's key and the planted secret in every encoding a report could carry them in."""
        pem = (self.node.home / "identity" / "ed25519.pem").read_bytes()
        key = serialization.load_pem_private_key(pem, password=None)
        raw = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                serialization.NoEncryption())
        der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        found = {"secret": self.secret.encode(), "secret hex": self.secret.encode().hex().encode(),
                 "key file": pem, "key file base64": base64.b64encode(pem), "key file hex": pem.hex().encode()}
        for name, value in (("raw key", raw), ("DER key", der)):
            found |= {name: value, f"{name} hex": value.hex().encode(), f"{name} HEX": value.hex().upper().encode(),
                      f"{name} base64": base64.b64encode(value).rstrip(b"="),
                      f"{name} base64url": base64.urlsafe_b64encode(value).rstrip(b"=")}
        return found


def plant_secrets(home: Path, secret: str) -> None:
    """The secret in files the node owns: one in CATS_HOME, one in its store's folder."""
    (home / "blocks").mkdir(parents=True)
    (home / "aws-credentials").write_text(f"[default]\naws_secret_access_key = {secret}\n")
    (home / "blocks" / "planted-secret").write_text(secret)


def haystack(output: bytes) -> dict[str, bytes]:
    """The output, and every string of the report (decoded too where it is base64: file contents,
    memory), by where it is in the report."""
    found = {"the output": output}

    def visit(where: str, value: object) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                found[f"{where} key {k}"] = str(k).encode()
                visit(f"{where}/{k}", v)
        elif isinstance(value, list):
            for i, v in enumerate(value):
                visit(f"{where}/{i}", v)
        elif isinstance(value, str):
            found[where] = value.encode()
            with contextlib.suppress(binascii.Error, ValueError):
                found[f"{where} (base64)"] = base64.b64decode(value, validate=True)

    visit("", json.loads(output))
    return found


def leaks(output: bytes, needles: dict[str, bytes]) -> dict[str, list[str]]:
    """Which needles are in the report, and where (besides the output as a whole)."""
    hay = haystack(output)
    return {name: [where for where, h in hay.items() if needle in h and where != "the output"] or ["the output"]
            for name, needle in needles.items() if any(needle in h for h in hay.values())}


def planted_files(target: Target) -> list[Path]:
    return list(target.node.home.rglob(WRITTEN))


@pytest.fixture
def target(tmp_path: Path) -> Iterator[Target]:
    secret = "cats-planted-" + secrets.token_hex(16)
    node = NodeProc(tmp_path / "node", env={"AWS_SECRET_ACCESS_KEY": secret})
    plant_secrets(node.home, secret)
    peer = Peer(tmp_path / "peer")
    Trust(node.home / "trust.json").add(peer.did)
    with serving() as canary:
        t = Target(tmp_path, node, peer, secret, canary)
        yield t
        if node.proc is not None:
            node.stop()


def test_a_hostile_order_on_a_confined_node_gets_neither_the_key_nor_the_secret(
        target: Target, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)  # the node's runs start a Ray of their own: it has the secret
    node = target.node
    node.start()
    result = target.submit(target.order("attack_confined", params=target.probe_params("127.0.0.1:6379")))
    output = target.output(result)
    report = json.loads(output)

    assert leaks(output, target.needles()) == {}
    # it did look: its own environment, files of the system, its /proc; with nothing of the node's in them
    assert set(report["env"]) <= {"PATH", "LANG", "LC_ALL", "HOME", "TMPDIR", "PWD", "CATS_MAX_OUTPUT"}, report["env"]
    assert report["listed"] > 1000 and report["files"] and report["proc"]
    assert report["proc"]["1"]["environ"] == ""  # bubblewrap's PID 1 was read: it holds no environment
    assert not any(str(node.home) in path or path.startswith("/tmp/ray") for path in report["files"])
    # writes: refused inside, and nothing landed on the node's disk
    assert report["writes"] and all(said.startswith("! ") for said in report["writes"].values()), report["writes"]
    assert planted_files(target) == []
    # processes: only its own sandbox's are there to signal or trace, never the node or the test
    inside = {int(pid) for pid in report["proc"]}
    assert len(inside) <= 4, inside
    assert {pid for pid, _ in report["alive"]} <= inside, report["alive"]
    assert node.proc is not None and report["ptrace"][str(node.proc.pid)] != "attached"
    assert node.proc.pid not in inside and os.getpid() not in inside
    for pid, said in report["ptrace"].items():  # bubblewrap's PID 1 in the sandbox, with nothing of the node's
        assert said != "attached" or (int(pid) in inside and not report["proc"][pid]["environ"]), (pid, said)
    # network: nothing reached the node, the test's server or Ray; no Unix socket of Ray's answered
    assert not [k for k, v in report["tcp"].items() if v.startswith("connected")], report["tcp"]
    assert target.canary.log == []
    assert not [k for k, v in report["unix"].items() if v == "connected"], report["unix"]
    assert all(not said.startswith("exit 0") for said in report["ray"].values()), report["ray"]


def test_the_same_order_on_an_unconfined_node_gets_both(target: Target, ray_session: str) -> None:
    """What `--unconfined` gives away: a peer's Order reads the node's key and secrets and writes on its disk."""
    node = target.node
    node.env["RAY_ADDRESS"] = ray_session
    node.args = ("--unconfined",)
    node.start()
    result = target.submit(target.order("attack_unconfined", params=target.probe_params(ray_session)))
    output = target.output(result)
    report = json.loads(output)
    found = leaks(output, target.needles())
    assert {"secret", "key file", "DER key base64"} <= set(found), found  # the PEM file, whole
    assert planted_files(target), report["writes"]
    assert report["ray"]["inside"]  # it runs in one of the node's Ray workers
    assert "/from-the-probe" in [s.path for s in target.canary.log]  # on the machine's network


# -- network ------------------------------------------------------------------------------------------
FETCH = '''
def fetch(data: bytes, url: str = "") -> bytes:
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return b"got " + answer.read()
    except OSError as e:
        return f"! {e}".encode()
'''


def fetch_order(target: Target, name: str, path: str, network: bool) -> Path:
    return target.order(name, function="fetch", params={"url": target.canary.url + path}, extra=FETCH,
                        network=network)


def test_network_is_refused_by_default_and_given_only_to_an_order_declaring_it(target: Target,
                                                                             ray_session: str) -> None:
    node = target.node
    target.canary.put("/hello", b"hello from the loopback\n")
    node.env["RAY_ADDRESS"] = ray_session
    node.start()
    online = fetch_order(target, "net_online", "/hello", network=True)
    res = target.peer.cli("mesh", "submit", str(online), "--to", node.url, "--json")
    assert res.returncode == 1
    one_line(res.stderr, "422", "plant.network", "--allow-network")
    assert target.canary.log == []
    node.stop()

    node.args = ("--allow-network",)
    node.start()
    got = target.output(target.submit(online))
    assert got == b"got hello from the loopback\n"
    assert [s.path for s in target.canary.log] == ["/hello"]
    offline = fetch_order(target, "net_offline", "/offline", network=False)
    got = target.output(target.submit(offline))
    assert got.startswith(b"! "), got
    assert [s.path for s in target.canary.log] == ["/hello"]  # nothing came from the Order without network

