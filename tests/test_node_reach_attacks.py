"""A peer's Order naming the node's own data as its inputs, run by a real node: none of it is read.

The code of a peer's Order is confined, but its inputs are read outside the sandbox: the node's
driver pins each URI when it seals the Order, and the workers read its bytes. A trusted peer
crafts the sealed Order block itself (a real attacker writes any `Info` it likes; no seal on its
side pins anything), pushes it with the Order's code, and asks the node to run it. Its Function
returns its input as it is, so whatever the node reads for it comes back in the output, which the
peer pulls.

Vectors: a file in CATS_HOME (the identity key) named directly, through a symlink and through a
hard link placed in a folder the operator shares; a file in the node's working folder; a forged
version (whose refusal must not tell the real one); a pinned view of a Parquet file in CATS_HOME;
http:// to a loopback service standing for the node's own API, Ray's dashboard or a metadata
service, by address, by name and as an IPv4-mapped IPv6 address, and to the link-local cloud
metadata address; ipfs:// of a DAG the node holds but did not pin; and an Order writing its results
to a URI of the node's (`output_uri`). Each is refused with one line naming the URI, the test's
loopback server sees no request, and no block of the node's store holds the secret afterwards.
Controls: a file under the operator's `--data-root`, a host the operator allows (`--allow-host`)
and a pinned DAG are read.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from servers import FileServer, serving
from test_mesh_node import NodeProc
from test_node_queue import Peer, one_line

from cats.cas import reader
from cats.cas.cid import CID, DAG_CBOR
from cats.cas.importer import Importer
from cats.cas.pins import Pins
from cats.cas.store.local import LocalStore
from cats.data import Info
from cats.data.views import View
from cats.errors import CatsError
from cats.identity import Identity
from cats.identity.trust import Trust
from cats.mesh.client import Node, push
from cats.order import Function, Order
from cats.order.seal import seal

ECHO = "def echo(data: bytes) -> bytes:\n    return data\n"


@dataclass
class Scene:
    """A node whose CATS_HOME and working folder hold the secret, a peer it trusts, a loopback server."""

    base: Path
    node: NodeProc
    peer: Peer
    secret: str
    canary: FileServer

    @property
    def shared(self) -> Path:
        """The folder the operator shares (`--data-root`), beside the node's CATS_HOME."""
        return self.base / "shared"

    def version(self, path: Path) -> str:
        """The file's version token as the file:// resolver makes it (an attacker may guess it, or learn it)."""
        st = path.stat()
        return f"{st.st_mtime_ns}-{st.st_size}"

    def file(self, path: Path, version: str | None = None) -> Info:
        return Info(path.as_uri(), path.stat().st_size, version or self.version(path))

    def submit(self, *inputs: CID | Info | View, output_uri: str | None = None) -> str:
        """Push a sealed Order of `echo` over `inputs` (put into its block as they are) and run it on the node:
        the output's CID, or CatsError with the node's answer (a refusal, or the run's error)."""
        store = LocalStore(self.peer.home / "blocks")
        identity = Identity.load(self.peer.home / "identity")
        module = f"echo_{secrets.token_hex(4)}"  # workers cache code by module name
        code = self.base / f"{module}.py"
        code.write_text(ECHO)
        placeholder = self.base / f"{module}.txt"
        placeholder.write_text("placeholder\n")
        sealed = seal(Order(function=Function(entry=f"{module}:echo", source=code), inputs=[placeholder],
                            name=module), store)
        forged = sealed.model_copy(update={"inputs": list(inputs), "output_uri": output_uri})
        block = forged.block()
        cid = CID.hash(block, DAG_CBOR)
        store.put(cid, block)
        push(store, cid, self.node.url, identity)
        with Node(self.node.url, identity) as node:
            job = str(node.order(cid)["id"])
            deadline = time.monotonic() + 120
            while (state := node.order_status(job))["status"] not in ("done", "failed", "cancelled"):
                assert time.monotonic() < deadline, state
                time.sleep(0.2)
        if state["status"] != "done":
            raise CatsError(str(state.get("error")))
        return str(state["output"])

    def refused(self, *inputs: CID | Info | View, says: tuple[str, ...], output_uri: str | None = None) -> str:
        """The one-line error the node gives for an Order over `inputs`, which must say each of `says`."""
        with pytest.raises(CatsError) as caught:
            self.submit(*inputs, output_uri=output_uri)
        return one_line(str(caught.value), *says)

    def output(self, cid: str) -> bytes:
        """Every file of an output folder (on the node), concatenated."""
        store = self.node.store
        return b"".join(b"".join(reader.read(store, child)) for _, child, _ in reader.entries(store, CID.parse(cid)))

    def blocks_with_secret(self) -> list[str]:
        store = self.node.store
        needle = self.secret.encode()
        return [str(cid) for cid in store if needle in store.get(cid)]


@pytest.fixture
def scene(tmp_path: Path, ray_session: str) -> Iterator[Scene]:
    secret = "cats-planted-" + secrets.token_hex(16)
    workdir = tmp_path / "workdir"
    workdir.mkdir()
    (workdir / "secret.txt").write_text(secret)
    node = NodeProc(tmp_path / "node", cwd=workdir, env={"RAY_ADDRESS": ray_session})
    node.home.mkdir(parents=True)
    (node.home / "aws-credentials").write_text(f"[default]\naws_secret_access_key = {secret}\n")
    peer = Peer(tmp_path / "peer")
    Trust(node.home / "trust.json").add(peer.did)
    (tmp_path / "shared").mkdir()
    with serving() as canary:
        canary.put("/latest/meta-data/iam/security-credentials/node", secret.encode())
        s = Scene(tmp_path, node, peer, secret, canary)
        yield s
        if node.proc is not None:
            node.stop()


def test_files_of_cats_home_are_never_read_even_inside_a_shared_folder(scene: Scene) -> None:
    """The operator shares a folder that holds CATS_HOME (as CATS_DATA_ROOTS=$HOME would): the key, a
    symlink and a hard link to CATS_HOME's files, and a view of a table there are all refused."""
    scene.node.env["CATS_DATA_ROOTS"] = str(scene.base)
    scene.node.start()
    home = scene.node.home
    key = home / "identity" / "ed25519.pem"
    (scene.shared / "innocent.txt").symlink_to(home / "aws-credentials")
    os.link(home / "aws-credentials", scene.shared / "hard.txt")
    pq.write_table(pa.table({"secret": [scene.secret]}), home / "private.parquet")
    table = home / "private.parquet"

    said = scene.refused(scene.file(key), says=(key.as_uri(), "CATS_HOME"))
    assert "BEGIN" not in said
    scene.refused(scene.file(scene.shared / "innocent.txt"), says=((scene.shared / "innocent.txt").as_uri(),
                                                                   "CATS_HOME"))
    scene.refused(scene.file(scene.shared / "hard.txt"), says=((scene.shared / "hard.txt").as_uri(), "hard link"))
    view = View(uri=table.as_uri(), format="parquet", version=scene.version(table), size=table.stat().st_size)
    scene.refused(view, says=(table.as_uri(), "CATS_HOME"))
    assert scene.blocks_with_secret() == []


def test_a_file_of_the_nodes_working_folder_is_refused_and_a_forged_version_tells_nothing(scene: Scene) -> None:
    scene.node.start()
    secret = scene.base / "workdir" / "secret.txt"
    said = scene.refused(scene.file(secret), says=(secret.as_uri(),))
    said += scene.refused(scene.file(secret, version="1-1"), says=(secret.as_uri(),))
    assert scene.version(secret) not in said  # no oracle of the file's time and size
    assert scene.blocks_with_secret() == []


def test_loopback_private_and_metadata_addresses_are_never_fetched(scene: Scene) -> None:
    scene.node.start()
    port = scene.canary.url.rsplit(":", 1)[1]
    path = "/latest/meta-data/iam/security-credentials/node"
    etag = scene.canary.etags[path]
    size = len(scene.secret)
    for host, why in (("127.0.0.1", "loopback"), ("localhost", "loopback"), ("[::ffff:127.0.0.1]", "loopback"),
                      ("169.254.169.254", "link-local")):
        uri = f"http://{host}:{port}{path}" if why == "loopback" else f"http://{host}{path}"
        scene.refused(Info(uri, size, etag), says=(host.strip("[]"), why))
    assert scene.canary.log == []
    assert scene.blocks_with_secret() == []


def test_an_order_writing_to_a_uri_of_the_node_is_refused(scene: Scene) -> None:
    scene.node.args = ("--data-root", str(scene.shared))
    scene.node.start()
    allowed = scene.shared / "data.txt"
    allowed.write_text("shared\n")
    target = scene.shared / "written"
    scene.refused(scene.file(allowed), output_uri=target.as_uri(), says=("422", "output_uri", target.as_uri()))
    assert not target.exists()


def test_what_the_operator_shares_is_read(scene: Scene) -> None:
    """The controls: a file under --data-root, and a loopback host the operator allows."""
    scene.node.args = ("--data-root", str(scene.shared), "--allow-host", "127.0.0.1")
    scene.node.start()
    shared = scene.shared / "data.txt"
    shared.write_text("what the operator shares\n")
    assert scene.output(scene.submit(scene.file(shared))) == b"what the operator shares\n"
    path = "/latest/meta-data/iam/security-credentials/node"
    uri = scene.canary.url + path
    got = scene.output(scene.submit(Info(uri, len(scene.secret), scene.canary.etags[path])))
    assert got == scene.secret.encode()  # allowed by the operator, so read
    # still never CATS_HOME, though a root holds it
    scene.refused(scene.file(scene.node.home / "aws-credentials"), says=("aws-credentials",))


def test_ipfs_reads_only_dags_the_node_pinned(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ipfs:// is read from the node's own store, so its runs start a Ray of their own (as a node does)."""
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    secret = "cats-planted-" + secrets.token_hex(16)
    node = NodeProc(tmp_path / "node")
    node.home.mkdir(parents=True)
    peer = Peer(tmp_path / "peer")
    Trust(node.home / "trust.json").add(peer.did)
    with serving() as canary:
        scene = Scene(tmp_path, node, peer, secret, canary)
        node.start()
        try:
            with Importer(node.store, cid_version=1) as importer:
                hidden = importer.add_bytes(secret.encode())
                shown = importer.add_bytes(b"pinned by the operator\n")
            Pins(node.home / "pins").add(node.store, shown.cid)
            uri = f"ipfs://{hidden.cid}"
            scene.refused(Info(uri, hidden.size, str(hidden.cid)), says=(uri, "not pinned"))
            out = scene.submit(Info(f"ipfs://{shown.cid}", shown.size, str(shown.cid)))
            assert scene.output(out) == b"pinned by the operator\n"
            assert scene.blocks_with_secret() == [str(hidden.cid)]  # the block itself, and no copy of it
        finally:
            node.stop()
