"""Evaluations taken from trusted peers: slices that no run in this home has computed are asked of the
CAT Nodes the Plant's `reuse_from` names (`GET /evaluations/{key}`, signed), and an answer is taken only
when it proves itself:

- its envelope is over the BOM it names, and a DID this home trusts signed it;
- that BOM's block, fetched from the peer, hashes to its CID, and its slice record at the answer's index
  holds the answer's output and was executed by that run (not taken from another run, no sub-Orders);
- the evaluation key computed from that BOM's Order and the record's input is the key asked for: the
  peer's run computed this very evaluation, not some other output it signed.

Then only the output's blocks are fetched (each checked against its CID); the peer's BOM block, its
envelope and the record blocks that were checked are kept, so `cats verify --integrity` can check them
again, and the slice's record names the BOM and its signer (`Vouched`). A peer that is down,
slow, refuses this home or answers what does not hold is skipped with a warning on stderr and the slice
runs here: taking a peer's work saves time, it never fails a run.
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cats.bom import BOM, RECORDS_PER_BLOCK, SliceRecord, Vouched, record_block
from cats.bom import load as load_bom
from cats.bom.home import Home
from cats.bom.signatures import Envelope
from cats.cas import car, dagcbor, dagpb, reader
from cats.cas.cid import CID, DAG_PB, RAW
from cats.cas.dag import complete, links
from cats.cas.store import BlockStore
from cats.cas.store.memory import MemoryStore
from cats.errors import CatsError
from cats.factory import evaluation
from cats.factory.outcome import SliceOutcome
from cats.identity import Identity
from cats.identity.requests import sign_request
from cats.identity.trust import Trust
from cats.order import Order

if TYPE_CHECKING:
    import httpx

TIMEOUT_S = 10.0  # to connect, and between two pieces of an answer
BUDGET_S = 60.0  # asking one peer for every missing slice, answers and outputs read: later ones run here
THREADS = 8  # requests in flight to one peer
ANSWER_MAX = 1 << 20  # an evaluation's answer: a record and an envelope
SLACK = 1 << 20  # what an output's CAR may hold beyond twice its blocks' bytes (headers, CIDs)


class Evaluation(BaseModel):
    """A node's answer to `GET /evaluations/{key}`: a slice's evaluation its run computed, with enough for
    a peer to check that the node's signed BOM records it, and then to fetch the output alone."""

    model_config = ConfigDict(extra="forbid")

    key: str = Field(description="the evaluation key asked for")
    bom: str = Field(description="CID of the BOM of the run that computed it")
    record: SliceOutcome = Field(description="the slice's outcome as the run index keeps it: its output CID, "
                                             "encoding, sizes and its index among that run's slices")
    envelope: Envelope = Field(description="the node's DSSE envelope over the BOM")


class _Refused(Exception):
    """An answer that does not hold: the slice runs here."""


class _Unreachable(Exception):
    """A peer that cannot be asked (down, too slow, refusing this home): none of its answers are waited for."""


def from_peers(order: Order, keys: list[CID], missing: list[int], home: Home, store: BlockStore) -> list[SliceOutcome]:
    """The outcomes of the `missing` slices (by index) that a peer of `order.plant.reuse_from` computed and
    proved, each marked with the BOM and signer vouching for it; the peers are asked in their order."""
    taken: dict[int, SliceOutcome] = {}
    trusted = {p.did for p in Trust(home.folder / "trust.json").peers()}
    for url in order.plant.reuse_from:
        wanted = [i for i in missing if i not in taken]
        if not wanted:
            break
        if not trusted:
            _warn(f"not asking {', '.join(order.plant.reuse_from)}: this home trusts no peer "
                  "(cats mesh trust add DID), so no answer could be taken")
            break
        with _Peer(url, home.identity) as peer:
            taken.update(_ask(peer, order, keys, wanted, trusted, home, store))
    return [taken[i] for i in sorted(taken)]


def _ask(peer: _Peer, order: Order, keys: list[CID], wanted: list[int], trusted: set[str], home: Home,
         store: BlockStore) -> dict[int, SliceOutcome]:
    try:
        peer.did()
    except _Unreachable as e:
        _warn(f"not reusing from {peer.url}: {e}")
        return {}
    proofs = _Proofs(peer, trusted, store)
    peer.deadline = time.monotonic() + BUDGET_S  # every read checks it: a peer answering slowly is left
    refused: list[str] = []
    stopped: list[str] = []

    def one(i: int) -> SliceOutcome | None:
        if stopped:
            return None
        try:
            peer.in_time()
            return proofs.take(keys[i], i)
        except _Unreachable as e:
            stopped.append(str(e))
        except _Refused as e:
            refused.append(f"slice {i} (evaluation {keys[i]}): {e}")
        return None

    with ThreadPoolExecutor(THREADS, thread_name_prefix="cats-reuse") as pool:
        found = {o.index: o for o in pool.map(one, wanted) if o is not None}
    if stopped:
        _warn(f"stopped asking {peer.url}: {stopped[0]}")
    if refused:
        more = f" (and {len(refused) - 1} more)" if len(refused) > 1 else ""
        _warn(f"refused the answer of {peer.url} for {refused[0]}{more}")
    for blocks, envelope in proofs.vouching(found.values()):
        for cid, block in blocks:  # named by text, not linked: this BOM's DAG does not reach them
            store.put(cid, block)
        home.signatures.add(envelope)  # so whoever reads this BOM can see who vouched for what it took
    return found


class _Proofs:
    """Checks a peer's answers, fetching each BOM, record block and Order once for all of them."""

    def __init__(self, peer: _Peer, trusted: set[str], store: BlockStore) -> None:
        self.peer, self.trusted, self.store = peer, trusted, store
        self.blocks = MemoryStore()  # the peer's blocks fetched so far, each checked as it came
        self.envelopes: dict[CID, Envelope] = {}
        self.checked: dict[int, CID] = {}  # slice index -> the peer's record block that proved its answer
        self.trees: dict[CID, reader.FileTree] = {}

    def take(self, key: CID, index: int) -> SliceOutcome | None:
        """Slice `index`'s outcome from the peer's evaluation `key`, proved; None if the peer has none."""
        response = self.peer.get(f"/evaluations/{key}", ANSWER_MAX, missing_ok=True)
        if response is None:
            return None
        try:
            answer = Evaluation.model_validate_json(response)
            bom = CID.parse(answer.bom)
        except (ValidationError, CatsError, ValueError) as e:
            raise _Refused(f"not an evaluation: {str(e).splitlines()[0][:200]}") from None
        if answer.key != str(key):
            raise _Refused(f"it answered for evaluation {answer.key[:80]}")
        signer = self._signer(answer.envelope, bom)
        record, held = self._record(bom, answer.record.index)
        if record.output != answer.record.output:
            raise _Refused(f"BOM {bom} records output {record.output} for slice {record.index}, not "
                           f"{answer.record.output}")
        if not record.executed or record.encoding == "ref":
            raise _Refused(f"slice {record.index} of BOM {bom} was not computed by that run alone")
        theirs = self._order(self._bom(bom).order)
        if not evaluation.reusable(theirs):
            raise _Refused(f"the Order of BOM {bom} offers no evaluations (replicated, or writing to URIs)")
        try:
            computed = evaluation.key(theirs, record.input, self.trees, self.store)
        except (CatsError, ValueError) as e:  # its input is not here: its key cannot be checked
            raise _Refused(f"its input cannot be read here to check the evaluation: {str(e)[:200]}") from None
        if computed != key:
            raise _Refused(f"slice {record.index} of BOM {bom} is evaluation {computed}, not this one")
        self._pull(record.output, record.tsize)
        if _sizes(self.store, record.output) != (record.size, record.tsize):
            raise _Refused(f"output {record.output} is not the size BOM {bom} records")
        self.envelopes[bom] = answer.envelope
        self.checked[index] = held
        return SliceOutcome(index=index, output=record.output, encoding=record.encoding, size=record.size,
                            tsize=record.tsize, node=record.node, attempts=record.attempts,
                            duration_s=record.duration_s, bytes_in=record.bytes_in,
                            vouched=Vouched(bom=str(bom), signer=signer))

    def vouching(self, taken: Iterable[SliceOutcome]) -> list[tuple[list[tuple[CID, bytes]], Envelope]]:
        """For each BOM the answers taken came from: its block and the record blocks that proved them (CID,
        bytes), and its envelope."""
        kept: dict[CID, set[CID]] = {}
        for o in taken:
            if o.vouched is not None:
                kept.setdefault(CID.parse(o.vouched.bom), set()).add(self.checked[o.index])
        return [([(cid, self.blocks.get(cid, verify=False)) for cid in (bom, *sorted(held))], self.envelopes[bom])
                for bom, held in kept.items()]

    def _signer(self, envelope: Envelope, bom: CID) -> str:
        valid, bad = envelope.check(bom)
        if not valid and bad:
            raise _Refused(f"its envelope does not hold over BOM {bom}: {bad[0].reason}")
        vouching = [did for did in valid if did in self.trusted]
        if not vouching:
            raise _Refused(f"BOM {bom} is signed by {', '.join(valid) or 'nobody'}, no peer this home trusts")
        return vouching[0]

    def _block(self, cid: CID) -> bytes:
        if self.blocks.has(cid):
            return self.blocks.get(cid, verify=False)
        block = self.peer.get(f"/ipfs/{cid}?format=raw", car.MAX_BLOCK)
        assert block is not None
        if not cid.verify(block):
            raise _Refused(f"the block it sent for {cid} does not match that CID")
        self.blocks.put(cid, block)
        return block

    def _bom(self, cid: CID) -> BOM:
        self._block(cid)
        try:
            return load_bom(self.blocks, cid)
        except CatsError as e:
            raise _Refused(str(e)) from None

    def _record(self, bom: CID, index: int) -> tuple[SliceRecord, CID]:
        """The BOM's record of slice `index`, and the record block holding it."""
        found = self._bom(bom)
        if not 0 <= index < found.invoice.slices:
            raise _Refused(f"BOM {bom} has no slice {index}")
        k = index // RECORDS_PER_BLOCK
        if k >= len(found.slices):
            raise _Refused(f"BOM {bom} has no record block for slice {index}")
        try:
            self._block(found.slices[k])
            held = record_block(self.blocks, found.slices[k])
        except (CatsError, ValueError, TypeError) as e:
            raise _Refused(f"record block {found.slices[k]} of BOM {bom} is not one: {str(e)[:200]}") from None
        record = next((r for r in held if r.index == index), None)
        if record is None:
            raise _Refused(f"BOM {bom} has no record of slice {index}")
        return record, found.slices[k]

    def _order(self, cid: CID) -> Order:
        try:
            order = Order.model_validate(dagcbor.decode(self._block(cid)))
        except (CatsError, ValueError) as e:
            raise _Refused(f"{cid} is not an Order: {str(e).splitlines()[0][:200]}") from None
        if order.function.code is None:
            raise _Refused(f"Order {cid} is not sealed")
        return order

    def _pull(self, output: CID, tsize: int) -> None:
        """The output's DAG into the store: from the peer's CAR, keeping only blocks the DAG links, each
        checked against its CID; then walked, so a DAG the peer sent in part is not taken. A CAR past
        twice the DAG's recorded bytes (and some slack) holds what was not asked for: it is cut off."""
        if output.codec not in (RAW, DAG_PB):
            raise _Refused(f"output {output} is not a UnixFS file")
        if complete(self.store, output):
            return  # here already
        wanted = {output.to_v1()}
        limit, read = 2 * tsize + SLACK, 0
        with self.peer.stream(f"/ipfs/{output}?format=car") as response:
            assert response is not None
            sections = car.Sections(verify=True, root=output)
            try:
                for chunk in self.peer.chunks(response):
                    read += len(chunk)
                    if read > limit:
                        raise _Refused(f"its CAR of output {output} is larger than {limit} bytes, for a DAG of "
                                       f"{tsize}")
                    for cid, block in sections.feed(chunk):
                        if cid.to_v1() not in wanted:
                            continue
                        data = bytes(block)
                        wanted.update(k.to_v1() for k in links(cid, data))
                        self.store.put(cid, data)
                sections.end()
            except CatsError as e:
                raise _Refused(f"its CAR of output {output}: {e}") from None
        if not complete(self.store, output):
            raise _Refused(f"output {output} did not arrive whole")


def _sizes(store: BlockStore, output: CID) -> tuple[int, int]:
    """A UnixFS file's size and its DAG's total size, as the importer records them for a slice's result."""
    block = store.get(output)
    if output.codec == RAW:
        return len(block), len(block)
    try:
        size = reader.FileTree(store, output).size
    except CatsError as e:
        raise _Refused(f"output {output} is not a file: {e}") from None
    return size, len(block) + sum(link.tsize or 0 for link in dagpb.decode(block).links)


class _Peer:
    """A peer's node, every request signed for it (it answers evaluations to the peers it trusts)."""

    def __init__(self, url: str, identity: Identity) -> None:
        import httpx

        self.url, self.identity = url, identity
        self.deadline = time.monotonic() + BUDGET_S
        self._did: str | None = None
        self.http = httpx.Client(base_url=url, timeout=httpx.Timeout(TIMEOUT_S), follow_redirects=False,
                                 headers={"User-Agent": "cats-factory"})

    def __enter__(self) -> _Peer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.http.close()

    def did(self) -> str:
        """The DID the node gives itself: in GET /id, or, on a private node, in the 401's challenge."""
        if self._did is None:
            response = self._send(self.http.build_request("GET", "/id"), stream=True)
            found = None
            try:
                body = self._body(response, ANSWER_MAX, "/id")
            except _Refused as e:
                raise _Unreachable(str(e)) from None
            finally:
                response.close()
            if response.status_code == 200:
                with suppress(ValueError, AttributeError):
                    found = json.loads(body).get("did")
            elif response.status_code == 401 and (match := re.search(
                    r'\bnode="(did:key:[1-9A-HJ-NP-Za-km-z]+)"', response.headers.get("www-authenticate", ""))):
                found = match.group(1)
            if not isinstance(found, str):
                raise _Unreachable(f"it does not say which node it is (GET /id answered {response.status_code})")
            self._did = found
        return self._did

    def in_time(self) -> None:
        """_Unreachable once the time to ask this peer is spent."""
        if time.monotonic() > self.deadline:
            raise _Unreachable(f"no answer within {BUDGET_S:g} s")

    def get(self, path: str, limit: int, missing_ok: bool = False) -> bytes | None:
        """The body of the answer to a signed GET, refused past `limit` bytes; None for a 404 when `missing_ok`."""
        with self.stream(path, missing_ok) as response:
            return None if response is None else self._body(response, limit, path)

    @contextmanager
    def stream(self, path: str, missing_ok: bool = False) -> Iterator[httpx.Response | None]:
        """The answer to a signed GET, its body still to read (`chunks`); None for a 404 when `missing_ok`."""
        response = self._send(self._signed(path), stream=True)
        try:
            if missing_ok and response.status_code == 404:
                yield None
                return
            if response.status_code != 200:
                detail = _detail(self._body(response, ANSWER_MAX, path), response.reason_phrase)
                if response.status_code in (401, 403):
                    raise _Unreachable(f"it refuses this home ({response.status_code}: {detail})")
                raise _Refused(f"GET {path.split('?')[0]} answered {response.status_code}: {detail}")
            yield response
        finally:
            response.close()

    def _body(self, response: httpx.Response, limit: int, path: str) -> bytes:
        """A whole body, read in time and refused past `limit` bytes, so no peer sets what it costs."""
        body = bytearray()
        for chunk in self.chunks(response):
            body += chunk
            if len(body) > limit:
                raise _Refused(f"GET {path.split('?')[0]} answered more than {limit} bytes")
        return bytes(body)

    def chunks(self, response: httpx.Response) -> Iterator[bytes]:
        """A body's pieces as they come; _Unreachable once the time to ask this peer is spent, since each
        piece may come just in time for the read timeout and the whole never."""
        import httpx

        try:
            for chunk in response.iter_bytes():
                self.in_time()
                yield chunk
        except httpx.HTTPError as e:
            raise _Unreachable(f"the transfer broke off: {_reason(e)}") from None

    def _signed(self, path: str) -> httpx.Request:
        request = self.http.build_request("GET", path)
        request.headers.update(sign_request(self.identity, self.did(), "GET", request.url.raw_path.decode()))
        return request

    def _send(self, request: httpx.Request, stream: bool = False) -> httpx.Response:
        import httpx

        try:
            return self.http.send(request, stream=stream)
        except httpx.HTTPError as e:
            raise _Unreachable(f"cannot reach it: {_reason(e)}") from None


def _detail(body: bytes, reason: str) -> str:
    try:
        detail = json.loads(body).get("detail")
    except (ValueError, AttributeError):
        detail = None
    return str(detail)[:200] if detail else reason


def _reason(e: Exception) -> str:
    return (str(e) or type(e).__name__).splitlines()[0][:200]


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)
