"""Talking to other CAT Nodes: pull a lineage, push a DAG, submit an Order.

    report = pull(store, bom_cid, "http://node-a:8700")                 # everything the BOM reaches
    push(store, cid, "http://node-b:8700", Identity.load())            # a DAG, pinned there
    bom = submit(order, "http://node-a:8700", Identity.load()).bom     # run there, its BOM back here

An Order travels to its data: `submit` sends only what the node lacks and this side holds (the node
resolves the rest from its trusted peers), and brings back the BOM, not the output, unless asked.

Every block that arrives is hashed against its CID before it is stored (a mismatch stops the pull
and names the CID; the block is not kept), and each is written as it arrives, atomically, by the
store. So a pull that is interrupted leaves only whole, verified blocks behind, and pulling again
walks the DAG locally and asks only for the subtrees that are still missing.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import re
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import httpx

from cats.cas import car, dagcbor
from cats.cas.cid import CID, DAG_CBOR, RAW
from cats.cas.dag import complete, links
from cats.cas.store import BlockStore
from cats.errors import (
    BlockNotFound,
    Cancelled,
    CarError,
    CarTruncated,
    CatsError,
    EnvelopeError,
    MeshError,
    StreamCut,
)

if TYPE_CHECKING:
    from cats.bom.signatures import Envelope, Signatures
    from cats.identity import Identity
    from cats.identity.trust import Peer
    from cats.order import Order

__all__ = ["Node", "PullReport", "PushReport", "Submitted", "pull", "pull_bom", "push", "push_order", "submit",
           "read_car"]

CAR = "application/vnd.ipld.car"
PUSH_BATCH = 32 << 20  # bytes of blocks per POST /blocks: each batch is signed, so it sits in memory
PIECE = 2 << 20  # bytes of a CAR stream read at a time
WAIT_S = 15.0  # how long the node may hold an answer about an order that has not ended


_Response = http.client.HTTPResponse
_Connection = http.client.HTTPConnection


# -- the HTTP client ------------------------------------------------------------------------------------


class Node:
    """One node's HTTP API. Writes are signed with `identity`; reads are signed too once the node asks
    (a private node answers unsigned reads with 401 or 403).

    A signature names the node it is for (so that node cannot replay it elsewhere): `did` when given
    (a trusted peer's, say), else the DID the node gives itself: GET /id on a public node, the 401's
    challenge on a private one. A node that is not who `did` says refuses the signature (401).
    """

    def __init__(self, url: str, identity: Identity | None = None, *, did: str | None = None,
                 timeout: float = 60.0) -> None:
        if not url.startswith(("http://", "https://")):
            raise MeshError(f"node URL {url!r} must start with http:// or https://", url=url)
        self.url = url.rstrip("/")
        self.identity = identity
        self.timeout = timeout
        self._did = did
        self._sign_reads = False
        self._http = httpx.Client(base_url=self.url, timeout=httpx.Timeout(timeout, connect=10.0),
                                  follow_redirects=False, headers={"User-Agent": "cats-mesh"})

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Node:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # Requests are built first so the signature covers the path and query exactly as they are sent.
    def _build(self, method: str, path: str, body: bytes, headers: dict[str, str], sign: bool) -> httpx.Request:
        request = self._http.build_request(method, path, content=body or None, headers=headers)
        if sign:
            from cats.identity.requests import sign_request

            if self.identity is None:
                raise MeshError(f"{method} {self.url}{path} must be signed: no identity given", url=self.url)
            request.headers.update(sign_request(self.identity, self.did, method, request.url.raw_path.decode(), body))
        return request

    @property
    def did(self) -> str:
        """The DID of the node at this URL, which signed requests are made for."""
        if self._did is None:
            self._did = self._announced_did()
        return self._did

    def _announced_did(self) -> str:
        """The DID the node gives itself: in GET /id, or, where that must be signed, in the 401's challenge."""
        response = self._transport(self._http.build_request("GET", "/id"), stream=False)
        if response.status_code == 200:
            with contextlib.suppress(ValueError, AttributeError):
                if isinstance(did := response.json().get("did"), str):
                    return did
        elif response.status_code == 401:
            challenge = response.headers.get("www-authenticate", "")
            if found := re.search(r'\bnode="(did:key:[1-9A-HJ-NP-Za-km-z]+)"', challenge):
                return found.group(1)
        raise MeshError(f"node at {self.url} does not say which DID it is (GET /id answered {response.status_code}), "
                        "so no request can be signed for it", url=self.url)

    def _send(self, method: str, path: str, *, body: bytes = b"", headers: dict[str, str] | None = None,
              sign: bool | None = None, stream: bool = False) -> httpx.Response:
        """Send one request; MeshError for transport failures and for any status >= 400."""
        write = sign is True
        signed = write or (sign is None and self._sign_reads)
        response = self._transport(self._build(method, path, body, headers or {}, signed), stream)
        if (response.status_code in (401, 403) and not signed and sign is None and self.identity is not None):
            response.close()  # a private node: sign reads from now on
            self._sign_reads = True
            response = self._transport(self._build(method, path, body, headers or {}, True), stream)
        if response.status_code >= 400:
            if stream:
                response.read()
            response.close()
            raise self._refused(method, path, response.status_code, response.content, response.reason_phrase)
        return response

    def _transport(self, request: httpx.Request, stream: bool) -> httpx.Response:
        try:
            return self._http.send(request, stream=stream)
        except httpx.TimeoutException:
            raise MeshError(f"node at {self.url} did not answer {request.method} {request.url.path} in time",
                            url=self.url) from None
        except httpx.TransportError as e:
            raise MeshError(f"cannot reach node at {self.url}: {_reason(e)}", url=self.url) from None

    def _refused(self, method: str, path: str, status: int, body: bytes, reason: str) -> MeshError:
        try:
            detail = json.loads(body).get("detail")
        except (ValueError, AttributeError):
            detail = None
        if not isinstance(detail, str):
            detail = json.dumps(detail) if detail is not None else (body.decode(errors="replace").strip()[:200]
                                                                     or reason)
        return MeshError(f"node at {self.url} answered {status} to {method} {path.split('?')[0]}: {detail}",
                         status=status, url=self.url)

    def _json(self, method: str, path: str, **kw: Any) -> Any:
        response = self._send(method, path, **kw)
        try:
            return response.json()
        except ValueError:
            raise MeshError(f"node at {self.url} answered {method} {path} with something that is not JSON",
                            url=self.url) from None

    # -- read side
    def id(self) -> dict[str, Any]:
        info = self._json("GET", "/id")
        if not isinstance(info, dict) or not isinstance(info.get("did"), str):
            raise MeshError(f"{self.url}/id does not name a node (no did)", url=self.url)
        return info

    def block(self, cid: CID) -> bytes:
        """One block, checked against its CID."""
        data = self._send("GET", f"/ipfs/{cid}?format=raw").content
        if not cid.verify(data):
            raise MeshError(f"node at {self.url} sent a block that does not match {cid}; not stored", url=self.url)
        return data

    @contextmanager
    def car(self, cid: CID, *, scope: str | None = None,
            into: Callable[[], memoryview] | None = None) -> Iterator[Iterator[tuple[CID, memoryview]]]:
        """The DAG under cid as (CID, block) pairs as they stream in (not yet verified: the caller does).

        The blocks are views of the buffers the stream is read into: `into` gives the buffer for each
        next piece (a fresh one of PIECE bytes by default), so a caller can reuse a buffer once nothing
        it handed on still holds a view of it. Each piece fills its buffer (but the last), so a section
        spans at most 2 + car.MAX_SECTION // len(buffer) pieces."""
        query = "format=car" + (f"&dag-scope={scope}" if scope else "")
        response, conn = self._stream(f"/ipfs/{cid}?{query}", {"Accept": CAR})
        try:
            yield read_car(self._pieces(response, into or _fresh), f"{self.url}/ipfs/{cid}", root=cid)
        finally:
            response.close()
            conn.close()

    # CAR streams come through http.client, on a connection of their own: it reads the body (chunked
    # or not) straight into a buffer of ours, PIECE bytes at a time, where httpx reads 64 KiB at a time
    # through h11 and copies each.
    def _stream(self, path: str, headers: dict[str, str]) -> tuple[_Response, _Connection]:
        import ssl

        while True:
            signed = self._sign_reads
            request = self._build("GET", path, b"", headers, signed)
            url = request.url
            if url.scheme == "https":
                conn: _Connection = http.client.HTTPSConnection(
                    url.host, url.port, timeout=self.timeout, context=ssl.create_default_context())
            else:
                conn = http.client.HTTPConnection(url.host, url.port, timeout=self.timeout)
            sent = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "accept-encoding")}
            try:
                conn.request("GET", url.raw_path.decode(), headers=sent)
                response = conn.getresponse()
            except TimeoutError:
                conn.close()
                raise MeshError(f"node at {self.url} did not answer GET {path.split('?')[0]} in time",
                                url=self.url) from None
            except (OSError, http.client.HTTPException) as e:
                conn.close()
                raise MeshError(f"cannot reach node at {self.url}: {_reason(e)}", url=self.url) from None
            if response.status in (401, 403) and not signed and self.identity is not None:
                conn.close()  # a private node: sign reads from now on
                self._sign_reads = True
                continue
            if response.status >= 400:
                try:
                    body = response.read()
                except (OSError, http.client.HTTPException):
                    body = b""
                conn.close()
                raise self._refused("GET", path, response.status, body, response.reason)
            return response, conn

    def _pieces(self, response: _Response, into: Callable[[], memoryview]) -> Iterator[memoryview]:
        """The body in pieces, each read straight into the buffer `into` gives, until it is full or the
        body ends."""
        try:
            while True:
                buffer, got = into(), 0
                try:
                    while got < len(buffer) and (n := response.readinto(buffer[got:])):
                        got += n
                except http.client.IncompleteRead as e:  # what came before the cut is still whole sections
                    buffer[got:got + len(e.partial)] = e.partial
                    yield buffer[:got + len(e.partial)]
                    raise
                if not got:
                    return
                yield buffer[:got]
        except TimeoutError:
            raise MeshError(f"node at {self.url} stopped sending for {self.timeout:g} s", url=self.url) from None
        except (OSError, http.client.HTTPException) as e:
            raise StreamCut(f"connection to node at {self.url} lost mid-transfer: {_reason(e)}",
                            url=self.url) from None

    def bom(self, cid: CID) -> dict[str, Any]:
        return self._json("GET", f"/bom/{cid}")

    def signatures(self, cid: CID) -> Envelope | None:
        """The node's envelope over a BOM, or None when it has no signature for it."""
        from cats.bom.signatures import Envelope

        try:
            response = self._send("GET", f"/bom/{cid}/signatures")
        except MeshError as e:
            if e.status == 404:
                return None
            raise
        try:
            return Envelope.parse(response.content, f"node at {self.url} sent an envelope for {cid} that is not DSSE")
        except EnvelopeError as e:
            raise MeshError(str(e), url=self.url) from None

    def has(self, cids: list[CID]) -> set[CID]:
        """Which of these DAGs are wholly on the node (as v1), in one POST /has per HAS_MAX of them."""
        from cats.mesh.node.models import HAS_MAX

        present: set[CID] = set()
        for start in range(0, len(cids), HAS_MAX):
            asked = {c.to_v1() for c in cids[start:start + HAS_MAX]}
            body = json.dumps({"cids": [str(c) for c in cids[start:start + HAS_MAX]]}).encode()
            answer = self._json("POST", "/has", body=body, headers={"Content-Type": "application/json"})
            try:
                said = {CID.parse(text).to_v1() for text in answer["present"]}
            except (KeyError, TypeError, CatsError):
                raise MeshError(f"node at {self.url} answered POST /has without a list of CIDs present",
                                url=self.url) from None
            present |= said & asked
        return present

    # -- write side (signed)
    def put_blocks(self, car: bytes) -> dict[str, Any]:
        return self._json("POST", "/blocks", body=car, headers={"Content-Type": CAR}, sign=True)

    def pin(self, cid: CID) -> dict[str, Any]:
        return self._json("POST", f"/pins/{cid}", sign=True)

    def add_signatures(self, envelope: Envelope) -> Envelope:
        from cats.bom.signatures import Envelope

        body = envelope.model_dump_json().encode()
        answer = self._json("POST", f"/bom/{envelope.bom}/signatures", body=body,
                            headers={"Content-Type": "application/json"}, sign=True)
        return Envelope.model_validate(answer)

    def order(self, order: CID) -> dict[str, Any]:
        body = json.dumps({"order": str(order)}).encode()
        return self._json("POST", "/orders", body=body, headers={"Content-Type": "application/json"}, sign=True)

    def order_status(self, job: str, wait: float = 0.0) -> dict[str, Any]:
        """The order's status; with `wait`, once it has ended or after that many seconds (the node caps it)."""
        return self._json("GET", f"/orders/{job}" + (f"?wait={wait:g}" if wait > 0 else ""), sign=True)

    def cancel(self, job: str) -> dict[str, Any]:
        """Cancel an order (as its submitter or the node's operator); MeshError(409) if it has ended."""
        return self._json("POST", f"/orders/{job}/cancel", sign=True)

    def order_slices(self, job: str) -> list[dict[str, Any]]:
        """The order's slices that failed or printed anything, and those running now (its submitter or the operator)."""
        return self._json("GET", f"/orders/{job}/slices", sign=True)

    def order_log(self, job: str, index: int, stream: str, offset: int = 0, stage: int = 1) -> tuple[bytes, int]:
        """What slice `index` (of a pipeline's `stage`) of the order wrote to `stream` from `offset` (a few MiB
        at most; empty: no more yet), and the offset to ask from next."""
        path = f"/orders/{job}/logs/{index}/{stream}?offset={offset}&stage={stage}"
        response = self._send("GET", path, sign=True)
        data, after = response.content, response.headers.get("x-next-offset", "")
        if len(data) > _LOG_PIECE or not after.isdigit() or not offset <= int(after) <= offset + len(data) + (1 << 40):
            raise MeshError(f"node at {self.url} answered GET {path.split('?')[0]} with {len(data)} bytes and next "
                            f"offset {after[:40]!r}", url=self.url)
        return data, int(after)

    def orders(self, status: str | None = None) -> list[dict[str, Any]]:
        """The signer's orders on the node (every order, for its operator), oldest first."""
        return self._json("GET", "/orders" + (f"?status={status}" if status else ""), sign=True)


_LOG_PIECE = 8 << 20  # the most of a log one answer may carry (a node sends at most 4 MiB)


def _fresh() -> memoryview:
    return memoryview(bytearray(PIECE))


def _reason(e: Exception) -> str:
    text = str(e) or type(e).__name__
    if "Connection refused" in text or "[Errno 111]" in text:
        return "connection refused"
    return text.splitlines()[0]


# -- CAR streams ----------------------------------------------------------------------------------------


def read_car(chunks: Iterable[bytes | memoryview], where: str,
             root: CID | None = None) -> Iterator[tuple[CID, memoryview]]:
    """A CARv1 stream's (CID, block) pairs as its sections complete, not yet verified (see car.Sections).

    The header must name `root`, when given. A stream that ends inside a section is a StreamCut; one
    that ends between sections simply ends (a node may stop early).
    """
    reader = car.Sections(verify=False, root=root)
    try:
        for chunk in chunks:
            yield from reader.feed(chunk)
        reader.end()
    except CarTruncated as e:
        raise StreamCut(f"{where}: {e}") from None
    except CarError as e:
        raise MeshError(f"{where}: {e}") from None


def car_bytes(roots: list[CID], blocks: Iterable[tuple[CID, bytes | memoryview]]) -> bytes:
    return b"".join([car.header(roots), *(car.section(cid, block) for cid, block in blocks)])


# -- pull -----------------------------------------------------------------------------------------------


@dataclass
class PullReport:
    """What a pull did. `fetched` blocks were received and stored; `present` ones were here already and
    not asked for; `duplicate` ones arrived but were here already (sent along with a missing subtree)."""

    root: str
    url: str
    blocks: int = 0
    fetched_blocks: int = 0
    fetched_bytes: int = 0
    present_blocks: int = 0
    present_bytes: int = 0
    duplicate_blocks: int = 0
    duplicate_bytes: int = 0
    requests: int = 0
    cut: int = 0  # streams that stopped early; the walk asked again for what they left out
    boms: list[str] = field(default_factory=list)
    signers: dict[str, list[str]] = field(default_factory=dict)
    duration_s: float = 0.0

    @property
    def skipped_blocks(self) -> int:
        return self.present_blocks + self.duplicate_blocks

    @property
    def skipped_bytes(self) -> int:
        return self.present_bytes + self.duplicate_bytes

    def summary(self) -> dict[str, Any]:
        return {**asdict(self), "skipped_blocks": self.skipped_blocks, "skipped_bytes": self.skipped_bytes}


def _is_bom(cid: CID, block: bytes) -> bool:
    if cid.codec != DAG_CBOR or b"cats.bom" not in block:
        return False
    try:
        value = dagcbor.decode(block)
    except CatsError:
        return False
    return isinstance(value, dict) and value.get("type") == "cats.bom"


Progress = Callable[[PullReport], None]


def pull(store: BlockStore, cid: CID, url: str, identity: Identity | None = None, *,
         signatures: Signatures | None = None, progress: Progress | None = None,
         node: Node | None = None) -> PullReport:
    """Fetch the DAG under cid from the node at url into store, with the signature envelopes of its BOMs.

    The DAG is walked here, from the root: a block already stored is read (or, for a raw leaf,
    just seen) and not asked for; for a missing one the node streams the CAR of its subtree, every
    block of which is hashed against its CID and stored as it arrives (those already here are
    skipped). A stream that stops early just leaves the walk more to ask for. Signatures go to
    `signatures` (default CATS_HOME/signatures, opened at the first BOM: a DAG without one does not
    load what signatures need); only valid ones are kept.
    """
    report = PullReport(root=str(cid), url=url.rstrip("/"))
    started = time.perf_counter()
    own = node is None
    node = node or Node(url, identity)
    try:
        with store.writing() as put:  # what arrived is stored, whatever stops the pull
            _walk(store, cid, node, _Writer(put, report), signatures, report, progress)
    finally:
        if own:
            node.close()
    _learn_lineage(store, report.boms)
    report.duration_s = time.perf_counter() - started
    return report


def _walk(store: BlockStore, cid: CID, node: Node, writer: _Writer, signatures: Signatures | None, report: PullReport,
          progress: Progress | None) -> None:
    """pull's walk from the root, asking the node for each missing subtree."""
    try:
        arrived: set[CID] = set()  # every block that arrived in this pull (as v1)
        received: dict[CID, list[CID]] = {}  # the links of those that link anything
        boms: set[CID] = set()
        seen: set[CID] = set()
        stack = [cid]
        while stack:
            here = stack.pop()
            key = here.to_v1()
            if key in seen:
                continue
            seen.add(key)
            report.blocks += 1
            if key in arrived:
                children = received.pop(key, [])
            else:
                try:
                    size: int | None = store.size(here)
                except BlockNotFound:
                    size = None
                if size is None:
                    cut = _fetch_subtree(node, here, report, writer, arrived, received, boms, progress)
                    if key not in arrived:
                        raise MeshError(cut or f"node at {node.url} did not send {here}", url=node.url)
                    children = received.pop(key, [])
                else:
                    report.present_blocks += 1
                    report.present_bytes += size
                    children = []
                    if here.codec != RAW:
                        block = store.get(here)
                        children = links(here, block)
                        if _is_bom(here, block):
                            boms.add(key)
                    if progress is not None:
                        progress(report)
            if key in boms:
                report.boms.append(str(here))
                _fetch_signatures(node, here, signatures, report)
            stack.extend(reversed(children))
    finally:
        writer.close()


def from_peers(store: BlockStore, peers: Iterable[Peer], identity: Identity) -> Callable[[CID], str | None]:
    """A `fetch` for verification: pull a missing ancestor's DAG from the first of the trusted peers'
    nodes that has it (signed, where a private node asks for it); None, or why none could."""

    def fetch(ancestor: CID) -> str | None:
        errors = []
        for peer in peers:
            if not (url := peer.url):
                continue
            try:
                with Node(url, identity, did=peer.did) as node:  # signed, if at all, for the peer trusted
                    pull(store, ancestor, url, identity, node=node)
                return None
            except CatsError as e:  # a peer that lacks it or is down: try the next
                errors.append(f"{url}: {e}")
        return "; ".join(errors) or "no trusted peer has a node URL (cats mesh trust add DID --url URL)"

    return fetch


def _learn_lineage(store: BlockStore, boms: list[str]) -> None:
    """Index the pulled BOMs as producers of their outputs: an Order here that reads one of them
    then names the other organization's BOM as its parent, and `cats verify --recursive` follows it;
    and their slice results' encodings, so `cats.read` decodes those too. (Lineage is imported only
    when there is a BOM: it costs a pull of plain data a tenth of a second.)"""
    if not boms:
        return
    from cats.bom.index import Index
    from cats.bom.lineage import learn
    from cats.config import home

    index = Index(home() / "index.sqlite")
    try:
        for bom in boms:
            with contextlib.suppress(CatsError, ValueError):  # a block that only looks like a BOM teaches nothing
                learn(store, index, CID.parse(bom))
    finally:
        index.close()


class _Writer:
    """Hashes and stores the blocks of a CAR stream on a few threads (hashlib and file writes release
    the GIL) while the next pieces come off the network.

    The stream is read into a ring of `buffers` buffers of PIECE bytes (`buffer` gives the next), so
    no memory is allocated, nor zeroed, per piece. The blocks handed over are gathered by the buffer
    they are views of, and each buffer's blocks go to a thread as one task; a buffer is given out again
    only once its task has ended. While a piece is read, the stream's reader holds views of the pieces
    of one unfinished section (car.MAX_SECTION spans at most four pieces of PIECE bytes), so five
    buffers would do; the rest let tasks queue while pieces come in.
    """

    def __init__(self, put: Callable[[CID, bytes | memoryview], bool], report: PullReport,
                 threads: int = 2, buffers: int = 8) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.put_block, self.report = put, report
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="cats-pull")
        self.ring = [bytearray(PIECE) for _ in range(buffers)]
        self.turn = 0
        self.group: list[tuple[CID, bytes | memoryview, bool]] = []  # blocks of one buffer, not handed on yet
        self.holder: object = None  # what the group's blocks are views of
        self.pending: deque[tuple[Future[list[bool]], list[int], object]] = deque()

    def buffer(self) -> memoryview:
        """The next buffer of the ring, once no task holds a view of it."""
        buffer = self.ring[self.turn % len(self.ring)]
        self.turn += 1
        if self.holder is buffer:
            self._hand_on()
        while self.pending and (self.pending[0][0].done() or any(held is buffer for _, _, held in self.pending)):
            self._collect()  # the tasks that ended count at once, so progress shows what is stored
        return memoryview(buffer)

    def put(self, cid: CID, block: bytes | memoryview, verified: bool) -> None:
        holder = block.obj if isinstance(block, memoryview) else block
        if holder is not self.holder:
            self._hand_on()
            self.holder = holder
        self.group.append((cid, block, verified))

    def _hand_on(self) -> None:
        if self.group:
            sizes = [len(block) for _, block, _ in self.group]
            self.pending.append((self.pool.submit(self._store, self.group), sizes, self.holder))
        self.group, self.holder = [], None

    def _store(self, group: list[tuple[CID, bytes | memoryview, bool]]) -> list[bool]:
        new = []
        for cid, block, verified in group:
            if not verified and not cid.verify(block):
                raise _Mismatch(cid)
            new.append(self.put_block(cid, block))  # here already: kept only if it matches, and refreshed for gc
        return new

    def _collect(self) -> None:
        future, sizes, _ = self.pending.popleft()
        for stored, size in zip(future.result(), sizes, strict=True):
            if stored:
                self.report.fetched_blocks += 1
                self.report.fetched_bytes += size
            else:
                self.report.duplicate_blocks += 1
                self.report.duplicate_bytes += size

    def drain(self) -> None:
        """Wait for every block handed over; the first failure is raised after all have finished."""
        self._hand_on()
        error: BaseException | None = None
        while self.pending:
            try:
                self._collect()
            except BaseException as e:  # re-raised below, once the rest are written
                error = error or e
        if error is not None:
            raise error

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=False)


class _Mismatch(Exception):
    def __init__(self, cid: CID) -> None:
        self.cid = cid


def _fetch_subtree(node: Node, root: CID, report: PullReport, writer: _Writer, arrived: set[CID],
                   received: dict[CID, list[CID]], boms: set[CID], progress: Progress | None) -> str | None:
    """Stream the CAR of root's subtree; store each verified block that is not here yet.

    A stream cut short keeps what arrived whole and returns why it stopped: the walk goes on and
    asks for what is still missing, so a node that lacks a block answers 404 naming it, and a node
    that went away is met as unreachable.
    """
    report.requests += 1
    cut = None
    wanted = {root.to_v1()}  # a block is taken only if the root or a block before it links it
    block: bytes | memoryview  # a view into the stream, or a copy of one to check
    try:
        with node.car(root, into=writer.buffer) as sections:
            for cid, block in sections:
                key = cid.to_v1()
                if key not in wanted or key in arrived:
                    continue  # not part of this DAG (never stored), or sent twice
                arrived.add(key)
                if cid.codec != RAW:  # checked here: its links decide what else is taken
                    block = bytes(block)
                    if not cid.verify(block):
                        raise _Mismatch(cid)
                    kids = links(cid, block)
                    wanted.update(k.to_v1() for k in kids)
                    received[key] = kids
                    if _is_bom(cid, block):
                        boms.add(key)
                writer.put(cid, block, verified=cid.codec != RAW)
                if progress is not None:
                    progress(report)
    except StreamCut as e:
        report.cut += 1
        cut = str(e)
    except BaseException as e:
        _quietly(writer.drain)
        if isinstance(e, _Mismatch):
            raise _mismatch(node, report, e.cid) from None
        raise
    try:
        writer.drain()
    except _Mismatch as e:
        raise _mismatch(node, report, e.cid) from None
    return cut


def _mismatch(node: Node, report: PullReport, cid: CID) -> MeshError:
    return MeshError(f"node at {node.url} sent a block that does not match {cid}; not stored "
                     f"(pulling {report.root})", url=node.url)


def _quietly(action: Callable[[], None]) -> None:
    with contextlib.suppress(Exception):  # an error is already on its way up
        action()


def _fetch_signatures(node: Node, bom: CID, signatures: Signatures | None, report: PullReport) -> None:
    """Keep the node's envelope over a BOM, if it holds a valid signature, in `signatures` (default
    CATS_HOME/signatures)."""
    from cats.bom.signatures import Signatures

    envelope = node.signatures(bom)
    if envelope is None:
        return
    try:
        if envelope.bom.to_v1() != bom.to_v1():
            raise MeshError(f"node at {node.url} sent an envelope over {envelope.bom} for {bom}", url=node.url)
    except MeshError:
        raise
    except CatsError as e:
        raise MeshError(f"node at {node.url} sent a bad envelope for {bom}: {e}", url=node.url) from None
    if not envelope.signers():
        return  # nothing valid to keep
    kept = (signatures or Signatures()).add(envelope)
    report.signers[str(bom)] = kept.signers()


# -- push -----------------------------------------------------------------------------------------------


@dataclass
class PushReport:
    """What a push did: blocks and bytes sent in `requests` signed POST /blocks (none when the node
    already held the whole DAG), and the BOMs whose local envelope was sent."""

    root: str
    url: str
    blocks: int = 0
    bytes: int = 0
    requests: int = 0
    complete_there: bool = False
    signed: list[str] = field(default_factory=list)
    present_there: list[str] = field(default_factory=list)  # DAGs the node held whole already: not sent
    not_held: list[str] = field(default_factory=list)  # DAGs on neither side: the node looks for them
    duration_s: float = 0.0

    def summary(self) -> dict[str, Any]:
        return asdict(self)


def children_first(store: BlockStore, root: CID, seen: set[CID] | None = None) -> Iterator[tuple[CID, bytes]]:
    """Every block of the DAG once, each after all the blocks it links (so whatever part of a DAG a
    node has received is closed under links). Every block is read, and so verified. Blocks in `seen`
    (as v1) are left out, so several DAGs can be sent as one stream."""
    seen = set() if seen is None else seen
    stack: list[tuple[CID, bytes | None]] = [(root, None)]
    while stack:
        cid, block = stack.pop()
        if block is not None:  # its children are out
            yield cid, block
            continue
        key = cid.to_v1()
        if key in seen:
            continue
        seen.add(key)
        try:
            data = store.get(cid)
        except CatsError as e:
            raise MeshError(f"cannot push {root}: {e}") from None
        kids = links(cid, data) if cid.codec != RAW else []
        if not kids:
            yield cid, data
            continue
        stack.append((cid, data))
        stack.extend((k, None) for k in reversed(kids))


def push(store: BlockStore, cid: CID, url: str, identity: Identity, *, signatures: Signatures | None = None,
         batch_bytes: int = PUSH_BATCH, node: Node | None = None) -> PushReport:
    """Send the DAG under cid to the node at url, pin it there, and send the local envelope of every BOM in it.

    Blocks go children first in signed CARs of at most about `batch_bytes` each (each one is
    imported all or nothing), so what the node holds between two batches is always a set of whole
    subtrees. A node that can already pin the whole DAG is sent no blocks.
    """
    from cats.bom.signatures import Signatures

    signatures = signatures or Signatures()
    report = PushReport(root=str(cid), url=url.rstrip("/"))
    started = time.perf_counter()
    own = node is None
    node = node or Node(url, identity)
    try:
        boms: list[CID] = []
        try:
            node.pin(cid)
            report.complete_there = True
        except MeshError as e:
            if e.status in (None, 401, 403):
                raise
        if report.complete_there:
            boms = [c for c, block in children_first(store, cid) if _is_bom(c, block)]
        else:
            boms = _send_dags(node, store, [cid], report, batch_bytes)
            node.pin(cid)
        for bom in boms:
            envelope = signatures.get(bom)
            if envelope is not None and envelope.signers():
                node.add_signatures(envelope)
                report.signed.append(str(bom))
    finally:
        if own:
            node.close()
    report.duration_s = time.perf_counter() - started
    return report


def _send_dags(node: Node, store: BlockStore, roots: list[CID], report: PushReport,
               batch_bytes: int = PUSH_BATCH, seen: set[CID] | None = None) -> list[CID]:
    """Send the DAGs under roots, children first, each block once and none of those under `seen` (as v1),
    in signed CARs of about `batch_bytes`; the BOMs among them."""
    boms: list[CID] = []
    seen = set() if seen is None else seen
    batch: list[tuple[CID, bytes]] = []
    size = 0
    for root in roots:
        for c, block in children_first(store, root, seen):
            if _is_bom(c, block):
                boms.append(c)
            batch.append((c, block))
            size += len(block)
            if size >= batch_bytes:
                _send_batch(node, batch, report)
                batch, size = [], 0
    if batch:
        _send_batch(node, batch, report)
    return boms


def _send_batch(node: Node, batch: list[tuple[CID, bytes]], report: PushReport) -> None:
    node.put_blocks(car_bytes([batch[-1][0]], batch))  # its last block heads a subtree complete by now
    report.requests += 1
    report.blocks += len(batch)
    report.bytes += sum(len(b) for _, b in batch)


# -- submit ---------------------------------------------------------------------------------------------


@dataclass
class Submitted:
    """An Order run on another node: its CID, the node's job and DID, the BOM (pulled here) and its output
    (pulled here only when asked: `output_pulled`)."""

    order: str
    url: str
    node: str
    job: str
    status: str
    bom: str
    output: str
    pushed: PushReport
    pulled: PullReport
    output_pulled: PullReport | None
    duration_s: float

    def summary(self) -> dict[str, Any]:
        return {"order": self.order, "url": self.url, "node": self.node, "job": self.job, "status": self.status,
                "bom": self.bom, "output": self.output, "pushed": self.pushed.summary(),
                "pulled": self.pulled.summary(),
                "output_pulled": self.output_pulled.summary() if self.output_pulled is not None else None,
                "duration_s": self.duration_s}


def submit(order: Order, url: str, identity: Identity, *, store: BlockStore | None = None,
           timeout: float = 600.0, signatures: Signatures | None = None,
           progress: Callable[[str], None] | None = None, fetch_output: bool = False) -> Submitted:
    """Seal the Order here, send the node at url what it needs and cannot have (`push_order`), have it run
    the Order, wait for the result and pull its BOM and envelope back (`pull_bom`), and the output DAG
    too with `fetch_output`. The run joins this node's log, marked with the node that ran it. CatsError
    if the node refuses it (naming the DAGs neither side holds) or the run fails."""
    from cats.cas.store import open_store
    from cats.factory import guard
    from cats.order.seal import seal

    guard.check("cats.submit")
    started = time.perf_counter()
    store = store if store is not None else open_store()  # an empty store is falsy (len 0), not absent
    sealed = seal(order, store)
    block = sealed.block()
    order_cid = CID.hash(block, DAG_CBOR)
    store.put(order_cid, block)
    with Node(url, identity) as node:
        pushed = push_order(store, order_cid, node)
        job = place_order(node, order_cid)
        with job_here(node, job, str(order_cid), sealed.name) as record:
            bom, output, pulled = collect(store, node, job, order_cid, timeout, progress, signatures)
            record(str(bom), str(output))
        output_pulled = pull(store, output, url, identity, signatures=signatures, node=node) if fetch_output else None
        did = node.did
    remember(store, str(order_cid), bom, str(output), sealed.name, did, node.url)
    return Submitted(order=str(order_cid), url=node.url, node=did, job=job, status="done", bom=str(bom),
                     output=str(output), pushed=pushed, pulled=pulled, output_pulled=output_pulled,
                     duration_s=time.perf_counter() - started)


@contextmanager
def job_here(node: Node, job: str, order: str, name: str | None) -> Iterator[Callable[[str, str], None]]:
    """The order placed on the node as a job of this home (kind `remote`, `cats jobs` follows it there),
    recorded done through the callable given, failed with the error that ends the block, or cancelled
    there and here on Ctrl-C."""
    from cats.bom.jobs import JobTable
    from cats.config import home

    table = JobTable(home() / "jobs.sqlite")
    mine = table.create("remote", name=name, order=order, command=" ".join(["cats", *sys.argv[1:]]) or None,
                        node=node.url, remote=job)
    def done(bom: str, output: str) -> None:
        table.done(mine.id, bom, output, was="running")

    try:
        yield done
    except KeyboardInterrupt:
        with contextlib.suppress(CatsError):
            node.cancel(job)
        reason = f"interrupted; order {job} on {node.url} was asked to stop"
        table.cancelled(mine.id, reason, was="running")
        raise Cancelled(f"job {mine.id} was cancelled: {reason}") from None
    except BaseException as e:
        table.failed(mine.id, str(e).strip() or type(e).__name__, was="running")
        raise
    finally:
        table.close()


def place_order(node: Node, order_cid: CID) -> str:
    """Ask the node to run an Order whose blocks it has (`push_order`); its job id there."""
    accepted = node.order(order_cid)
    job = accepted.get("id")
    if not isinstance(job, str) and not isinstance(job, int):
        raise MeshError(f"node at {node.url} accepted order {order_cid} without a job id: {accepted}", url=node.url)
    return str(job)


def collect(store: BlockStore, node: Node, job: str, order_cid: CID, timeout: float,
            progress: Callable[[str], None] | None = None, signatures: Signatures | None = None
            ) -> tuple[CID, CID, PullReport]:
    """Wait for the job to end; once done, pull its BOM (`pull_bom`): the BOM's and the output's CIDs,
    and what pulling took. MeshError if it failed or was cancelled."""
    state = _wait(node, job, order_cid, timeout, progress, None)
    if state.get("status") in ("failed", "cancelled"):
        raise MeshError(f"order {order_cid} {state['status']} on {node.url}: "
                        f"{state.get('error') or 'no error given'}", url=node.url)
    try:
        bom = CID.parse(state["bom"])
        output = CID.parse(state["output"])
    except (KeyError, TypeError, CatsError):
        raise MeshError(f"node at {node.url} finished order {order_cid} without a BOM and output CID: {state}",
                        url=node.url) from None
    return bom, output, pull_bom(store, bom, node, signatures)


def push_order(store: BlockStore, order_cid: CID, node: Node) -> PushReport:
    """Send the node what a sealed Order needs and it cannot have: the Order block, and each DAG it names
    (code, lock, IaC, inputs) that the node lacks and this store holds whole. The node says which it holds
    whole in one POST /has; a DAG on neither side is left for the node to find on its trusted peers
    (`not_held`), or to refuse naming it. Nothing is pinned here: the node pins an Order it admits."""
    report = PushReport(root=str(order_cid), url=node.url)
    started = time.perf_counter()
    named = list(dict.fromkeys(links(order_cid, store.get(order_cid))))
    there = node.has([order_cid, *named])
    report.complete_there = order_cid.to_v1() in there
    if not report.complete_there:
        proven: set[CID] = set()
        send = [c for c in named if c.to_v1() not in there and complete(store, c, proven)]
        report.present_there = [str(c) for c in named if c.to_v1() in there]
        report.not_held = [str(c) for c in named if c.to_v1() not in there and c not in send]
        sent_or_not = {c.to_v1() for c in named if c not in send}  # the Order block goes without them
        _send_dags(node, store, [*send, order_cid], report, seen=sent_or_not)
    report.duration_s = time.perf_counter() - started
    return report


def pull_bom(store: BlockStore, bom: CID, node: Node, signatures: Signatures | None = None) -> PullReport:
    """The BOM block and its slice-record blocks, each checked against its CID, and the node's envelope
    over it: what this node's lineage, log and `cats.read` need of a run made elsewhere, without its data
    (the Order, code, lock and IaC are here already, its inputs and output stay where they are)."""
    from cats.bom import load

    report = PullReport(root=str(bom), url=node.url)
    started = time.perf_counter()
    _pull_block(store, bom, node, report)
    try:
        found = load(store, bom)
    except CatsError as e:
        raise MeshError(f"node at {node.url} answered with {bom} as the BOM, which is not one: {e}",
                        url=node.url) from None
    for block in found.slices:
        _pull_block(store, block, node, report)
    report.boms.append(str(bom))
    _fetch_signatures(node, bom, signatures, report)
    report.duration_s = time.perf_counter() - started
    return report


def _pull_block(store: BlockStore, cid: CID, node: Node, report: PullReport) -> None:
    report.blocks += 1
    try:
        size = store.size(cid)
    except BlockNotFound:
        pass
    else:
        report.present_blocks += 1
        report.present_bytes += size
        return
    report.requests += 1
    data = node.block(cid)  # checked against its CID
    store.put(cid, data)
    report.fetched_blocks += 1
    report.fetched_bytes += len(data)


def remember(store: BlockStore, order: str, bom: CID, output: str, name: str | None, did: str, url: str) -> None:
    """The run joins this node's index: its log, marked with the node that ran it, and its lineage (the
    BOM as another node's, the producer of its output). Never this node's memoized run of the Order."""
    from cats.bom.index import Index
    from cats.bom.lineage import learn
    from cats.config import home

    index = Index(home() / "index.sqlite")
    try:
        learn(store, index, bom)
        index.record_remote_run(order, str(bom), output, name, did, url)
    finally:
        index.close()


def _wait(node: Node, job: str, order: CID, timeout: float, progress: Callable[[str], None] | None,
          status: object) -> dict[str, Any]:
    """Ask for the job's status until it has ended, each answer held by the node until the status changes
    (or WAIT_S): the outcome is known as soon as it is, for a request every WAIT_S. A node briefly
    unreachable, or answering early with nothing new (it is stopping), is asked again with backoff."""
    deadline = time.monotonic() + timeout
    delay = 0.1
    state: dict[str, Any] = {"status": status}
    while True:
        wait = max(0.0, min(WAIT_S, deadline - time.monotonic()))
        asked, was = time.monotonic(), state.get("status")
        try:
            state = node.order_status(job, wait=wait)
        except MeshError as e:
            if e.status is not None and e.status != 503:
                raise
        if progress is not None and state.get("status"):
            progress(str(state["status"]))
        if state.get("status") in ("done", "failed", "cancelled"):
            return state
        if state.get("status") == was and time.monotonic() - asked < wait:  # not held: do not ask again at once
            time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 1.5, 2.0)
        if time.monotonic() >= deadline:
            raise MeshError(f"order {order} (job {job}) on {node.url} did not finish within {timeout:g} s "
                            f"(last status: {state.get('status')})", url=node.url)
