"""The CAT Node's HTTP API (FastAPI), and `serve`, which runs it on uvicorn in the foreground.

Reads are open by default, as on an IPFS gateway (with `private=True` every request, the API's own
description included, needs a signed request from a trusted peer: unsigned 401, untrusted 403).
Writes always do. The signature is checked before any route runs and before a byte of the body is
read (`_Gate`): `cats.identity.requests.verify_request` checks it against the method, the path with
its query and this node's DID (a request signed for another node is refused); its nonce is recorded
in SQLite until its window closes, so a replay is refused, restarts included. The body is then read
up to the route's limit and checked against the signed digest as it arrives.

    GET  /id                          {did, version, private}
    GET  /ipfs/{cid}?format=raw       one block (application/vnd.ipld.raw); HEAD too
    GET  /ipfs/{cid}?format=car       the DAG under cid as a CARv1 (application/vnd.ipld.car), streamed;
                                      dag-scope=all|entity|block, entity-bytes=from:to (`gateway`)
    GET  /bom/{cid}                   the BOM as JSON
    GET  /bom/{cid}/signatures        its DSSE envelope
    GET  /evaluations/{key}           a slice's evaluation this node computed, with its BOM and signature (signed)
    GET  /routing/v1/providers/{cid}  who holds it: this node, and trusted peers known to (IPFS routing v1)
    GET  /lineage/{cid}               the lineage graph as JSON
    GET  /ui/lineage/{cid}            the lineage as a self-contained HTML page
    POST /has                         {"cids": [CID, …]}: which of those DAGs are wholly here (a read)
    POST /blocks                      a CARv1 body: every block checked, all or nothing
    POST /pins/{cid}                  pin a DAG that is fully present (the BOMs in it join the lineage here)
    POST /bom/{cid}/signatures        merge an envelope's valid signatures
    POST /orders                      {"order": CID}: run a pushed, sealed Order here (202); the DAGs it
                                      names that are not here come from the trusted peers holding them
    GET  /orders                      the signer's orders (every order, for the operator)
    GET  /orders/{id}[?wait=S]        its status, for its submitter (and the operator); with wait, once it
                                      changes (the order starts or ends) or after S seconds
    POST /orders/{id}/cancel          cancel it, queued or running: by its submitter or the operator
    GET  /orders/{id}/slices          its slices that failed or printed, with their logs' CIDs (same readers)
    GET  /orders/{id}/logs/{i}/{out}  what slice i wrote to stdout/stderr, from ?offset= (live while it runs)

The operator is whoever signs with the node's own identity (it holds the key in CATS_HOME). Orders
run under the node's `NodePolicy` (confined unless it was started `--unconfined`); a node that cannot
confine code refuses them all (503) and says why.

A CAR streams parents before children, each block once (`gateway`): the blocks that link are read
through the store, which checks them against their CIDs; leaves go from their files into the buffer
sent to the socket and nowhere else (they were checked when they came in). The root is checked
before the answer starts (404 if absent); a block missing or corrupted deeper in the DAG can only
cut the stream short: the connection is closed without the final chunk, so a client sees an
incomplete transfer and never a CAR that merely looks complete. Clients check every block anyway.

Bodies larger than their route takes (`CATS_NODE_MAX_BODY` bytes, 256 MiB by default, for a CAR; 1 MiB
for JSON; none for a pin) are refused with 413 as soon as Content-Length (or the bytes received so far)
says so. A body is held in memory until its digest is checked, which is what the limits bound.

An identity CID carries its block inline (as IPFS reads it): GET /ipfs serves those bytes, a CAR may
carry such a block (it is checked, not stored), and the routes that look a BOM, a pin or an Order up
refuse one with 400. No answer names a file of this machine: an unexpected failure is logged and
answered 500 with nothing of its message.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import quote

from fastapi import Depends, FastAPI, HTTPException, Query, Request, Response, Security
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from fastapi.security import APIKeyHeader
from pydantic import BaseModel, ValidationError
from starlette.types import ASGIApp, Receive, Scope, Send

from cats import __version__
from cats.bom import BOM
from cats.bom import load as load_bom
from cats.bom.home import Home
from cats.bom.index import Index
from cats.bom.jobs import FINISHED, STATUSES, Job, JobTable, SliceLog
from cats.bom.signatures import Envelope, Signatures
from cats.cas import car, multihash
from cats.cas.cid import CID
from cats.cas.dag import complete, links
from cats.cas.pins import Pins
from cats.cas.store import BlockStore, open_store
from cats.cas.store.local import LocalStore
from cats.config import home
from cats.data.resolvers import env_number
from cats.errors import BlockNotFound, CarError, CatsError, EnvelopeError, IntegrityError
from cats.factory.jobs import LocalJobs
from cats.factory.outcome import SliceOutcome
from cats.factory.peers import Evaluation
from cats.identity import Identity
from cats.identity.requests import HEADERS, RequestRejected, Signed, verify_request
from cats.identity.trust import Trust
from cats.mesh import routing
from cats.mesh.node import gateway
from cats.mesh.node import models as m
from cats.mesh.node.fetch import lacking, locate, sources
from cats.mesh.node.nonces import Nonces
from cats.mesh.node.orders import NodePolicy, OrderRejected, Runner, Worker, load_order
from cats.web import json_errors

log = logging.getLogger("cats.node")

RAW = gateway.RAW_TYPE
CAR = gateway.CAR_TYPE
DEFAULT_MAX_BODY = 256 << 20
_IMMUTABLE = {"Cache-Control": "public, max-age=29030400, immutable", "X-Content-Type-Options": "nosniff"}
JSON_MAX_BODY = 1 << 20  # an envelope or an order request is a few KiB
MAX_WAIT_S = 20.0  # the longest GET /orders/{id}?wait= holds its answer
_WAIT_STEP_S = 0.05
_Model = TypeVar("_Model", bound=BaseModel)
_NO_BODY = ("GET", "HEAD")  # methods whose body is never read
_READING_POSTS = ("/has",)  # POSTs that only read (a question too long for a URL): open like the other reads

_WHY = {
    400: "Malformed CID, CAR or envelope; a block that does not match its CID; an Order needs a DAG neither this "
         "node nor its trusted peers hold",
    401: "Unsigned, stale, altered or replayed request",
    403: "A valid signature from a DID this node does not trust (or neither the order's submitter nor the operator)",
    404: "Not on this node",
    406: "Neither format=raw nor format=car (nor the Accept header) asked for",
    409: "The signatures this node keeps for the BOM cannot be read (its operator must look at them); the order "
         "has ended already (done, failed or cancelled)",
    413: "The body is larger than the route takes (CATS_NODE_MAX_BODY for a CAR, 1 MiB for JSON, none for a pin)",
    422: "Malformed request, a block that is not what the route serves (a BOM, an Order), or an Order asking for "
         "what this node's policy does not give (network, say)",
    503: "The node is stopping, or cannot confine code and was not started --unconfined: it takes no Order",
}
_BINARY = {"schema": {"type": "string", "format": "binary"}}
_SIGNATURE = APIKeyHeader(
    name="X-Cats-Signature", scheme_name="CatsSignature", auto_error=False,
    description="A signed request (`cats.identity.requests.sign_request`): X-Cats-Key (the signer's did:key), "
                "X-Cats-Node (this node's did:key, as GET /id or a 401's WWW-Authenticate names it), X-Cats-Date, "
                "X-Cats-Nonce, X-Cats-Digest (sha-256 of the body) and X-Cats-Signature (Ed25519 over method, path "
                "with query, node, date, nonce, digest and signer), from a DID on the node's trust list.")


def _errors(*codes: int, page: bool = False) -> dict[int | str, dict[str, Any]]:
    """The documented error answers (JSON). A route answering with a page (`page`) names their media
    type itself: FastAPI would file them under the route's own, text/html."""
    if page:
        body = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
        return {code: {"description": _WHY[code], "content": body} for code in codes}
    return {code: {"model": m.ErrorBody, "description": _WHY[code]} for code in codes}


def _json_body(model: type[Any], description: str) -> dict[str, Any]:
    """An OpenAPI request body for a route that reads and checks its JSON body itself (after the signature)."""
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    schema.pop("$defs", None)  # the models it refers to are in the components through the routes' answers
    return {"requestBody": {"required": True, "description": description,
                            "content": {"application/json": {"schema": schema}}}}


def max_body() -> int:
    """The largest request body this node reads: `CATS_NODE_MAX_BODY`, 256 MiB by default."""
    value = int(env_number("CATS_NODE_MAX_BODY", DEFAULT_MAX_BODY))
    if value < 1:
        raise CatsError(f"CATS_NODE_MAX_BODY={value} must be at least 1")
    return value


def _cid(text: str) -> CID:
    """The CID in a path or body; 400 if malformed, or an identity CID holding more than IPFS allows inline."""
    try:
        cid = CID.parse(text)
        inline = cid.hashfn == multihash.IDENTITY and len(cid.digest)
    except (CatsError, ValueError) as e:
        raise HTTPException(400, f"{text[:200]!r} is not a CID: {e}") from None
    if inline > car.MAX_IDENTITY:
        raise HTTPException(400, f"identity CID {text[:80]}… holds {inline} bytes inline, more than the "
                                 f"{car.MAX_IDENTITY} an identity CID may")
    return cid


def _stored_cid(text: str) -> CID:
    """The CID of something this node looks up (a BOM, a pin, an Order): 400 for an identity CID, which
    names bytes it carries itself, never a stored block."""
    cid = _cid(text)
    if cid.hashfn == multihash.IDENTITY:
        raise HTTPException(400, f"{cid} is an identity CID (its bytes are in the CID): there is nothing to look "
                                 "up here")
    return cid


@dataclass(frozen=True)
class Received:
    """A signed request's body, once it matched the signed digest."""

    did: str
    body: bytes


@dataclass
class NodeState:
    """What the routes share: the node's store, identity and the state files in CATS_HOME."""

    store: BlockStore
    identity: Identity
    trust: Trust
    signatures: Signatures
    pins: Pins
    nonces: Nonces
    orders: JobTable  # this home's jobs; a peer's order is one of kind `node`
    worker: Worker
    private: bool
    max_body: int
    policy: NodePolicy
    refusal: str | None  # why every Order is refused here (None: they are run)

    def __contains__(self, did: object) -> bool:
        """Whether `did` may sign requests here: a trusted peer, or the operator (the node's own identity)."""
        return did == self.identity.did or did in self.trust

    def may_follow(self, row: Job, did: str) -> bool:
        """Whether `did` may see and cancel the order: its submitter, or the operator."""
        return did in (row.submitter, self.identity.did)


def _runner(store: BlockStore, folder: Path, policy: NodePolicy) -> Runner:
    if not isinstance(store, LocalStore):
        raise CatsError(f"a node runs Orders over an on-disk store its Ray workers can open; {type(store).__name__} "
                        "lives in this process only")
    return Runner(store.root, folder / "runs", policy)



class _CutShort(Exception):
    """A block deeper in a CAR's DAG cannot be sent; the stream ends without its final chunk."""


class _CarResponse(StreamingResponse):
    async def stream_response(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        try:
            async for chunk in self.body_iterator:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except _CutShort:
            return  # the server closes the connection: the client sees an incomplete transfer
        await send({"type": "http.response.body", "body": b"", "more_body": False})


def _car(store: BlockStore, root: CID, blocks: Iterator[gateway.Section]) -> Iterator[memoryview]:
    """The CAR's pieces (each sent before the next is made: they share one buffer); a block that cannot
    be sent cuts the stream short. Leaves are not re-hashed here: every block was checked when it came
    in, and clients check each one."""
    writer = gateway.CarWriter(store, root, blocks)
    try:
        yield from writer.pieces()
    except CatsError as e:
        log.warning("CAR of %s cut short after %d bytes: %s", root, writer.sent, e)
        raise _CutShort(str(e)) from None


def _challenge(node: NodeState) -> dict[str, str]:
    """The 401's WWW-Authenticate: how to sign, and for which node (its DID is public: it signs its BOMs)."""
    return {"WWW-Authenticate": f'CatsSignature node="{node.identity.did}", headers="{" ".join(HEADERS)}"'}


def _authenticate(request: Request, node: NodeState) -> Signed:
    """Who signed this request, from its headers alone; 401 if the signature does not hold, 403 if the
    signer is not trusted."""
    path = request.scope.get("raw_path", request.url.path.encode()).decode("latin-1")
    if query := request.scope.get("query_string", b""):
        path += "?" + query.decode("latin-1")
    try:
        signed = verify_request(request.headers, request.method, path, node=node.identity.did,
                                seen=node.nonces.seen, trusted=node)
        if request.method in _NO_BODY:
            signed.body().done()  # such a body is never read: only an empty one may be signed
    except RequestRejected as e:
        raise HTTPException(e.status, str(e), headers=_challenge(node) if e.status == 401 else None) from None
    return signed


def _declared(request: Request, limit: int, why: str) -> None:
    """413 if Content-Length says the body exceeds limit (before any of it is read)."""
    length = request.headers.get("content-length", "").strip()
    if length.isdigit() and int(length) > limit:
        raise HTTPException(413, f"the body of {int(length)} bytes is larger than {why}; send it in smaller parts")


class _Gate:
    """Decides who sends a request before any route runs or any of its body is read: a body larger than
    the node takes is refused (413), then a signature is required of every write, of every request to a
    private node, and checked wherever one is given (401, 403). The signer is left in the request's state."""

    def __init__(self, app: ASGIApp, node: NodeState) -> None:
        self.app, self.node = app, node

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        try:
            _declared(request, self.node.max_body, f"this node takes (CATS_NODE_MAX_BODY={self.node.max_body})")
            writes = request.method not in _NO_BODY and request.url.path not in _READING_POSTS
            needed = self.node.private or writes or any(h in request.headers for h in HEADERS)
            signed = await run_in_threadpool(_authenticate, request, self.node) if needed else None
        except HTTPException as e:
            await JSONResponse({"detail": e.detail}, e.status_code, headers=e.headers)(scope, receive, send)
            return
        scope.setdefault("state", {})["signed"] = signed
        await self.app(scope, receive, send)


def _signer(request: Request) -> Signed:
    """The request's signer (`_Gate` checked it); 401 where a route needs one and none was given."""
    signed: Signed | None = request.state.signed
    if signed is None:
        raise HTTPException(401, f"unsigned request: missing {', '.join(HEADERS)}",
                            headers=_challenge(request.app.state.node))
    return signed


async def _read_body(request: Request, signed: Signed | None, limit: int | None) -> bytes:
    """The body, read up to `limit` bytes (None: the node's CATS_NODE_MAX_BODY) and, when the request is
    signed, refused (401) unless it is the body that was signed."""
    node: NodeState = request.app.state.node
    cap = node.max_body if limit is None else min(limit, node.max_body)
    why = (f"this node takes (CATS_NODE_MAX_BODY={cap})" if limit is None
           else f"{request.method} {request.url.path} takes ({cap} bytes)")
    _declared(request, cap, why)
    check, chunks, size = signed.body() if signed is not None else None, [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > cap:
            raise HTTPException(413, f"the body is larger than {why}; send it in smaller parts")
        if check is not None:
            check.update(chunk)
        chunks.append(chunk)
    if check is not None:
        try:
            check.done()
        except RequestRejected as e:
            raise HTTPException(e.status, str(e), headers=_challenge(node)) from None
    return b"".join(chunks)


def _body(limit: int | None) -> Callable[[Request], Any]:
    """A dependency: the signer and the body, read up to `limit` bytes (see `_read_body`)."""

    async def received(request: Request) -> Received:
        signed = _signer(request)
        return Received(signed.did, await _read_body(request, signed, limit))

    return received


async def _question(request: Request) -> bytes:
    """The JSON body of a POST that only reads (`_READING_POSTS`): signed where the gate asked for it."""
    return await _read_body(request, request.state.signed, JSON_MAX_BODY)


Car = Annotated[Received, Depends(_body(None))]
Json = Annotated[Received, Depends(_body(JSON_MAX_BODY))]
Bodiless = Annotated[Received, Depends(_body(0))]
Question = Annotated[bytes, Depends(_question)]
Signer = Annotated[Signed, Depends(_signer)]
JobId = Annotated[str, PathParam(description="the id POST /orders answered")]
CidPath = Annotated[str, PathParam(description="a CID: CIDv0 (Qm…) or CIDv1 in any multibase",
                                   examples=["bafkreifzjut3te2nhyekklss27nh3k72ysco7y32koao5eei66wof36n5e"])]


def create_app(folder: Path, *, private: bool = False, store: BlockStore | None = None,
               policy: NodePolicy | None = None) -> FastAPI:
    """The application over CATS_HOME's store, identity, trust list, signatures and pins, with its own
    state (nonces, runs) in `folder` (normally `cats.web.state_dir("node")`), running Orders under
    `policy` (the default NodePolicy: confined, no network) as jobs of kind `node` in the home's job table."""
    store = store if store is not None else open_store()  # an empty store is falsy (len 0), not absent
    policy = policy if policy is not None else NodePolicy()
    jobs = LocalJobs(Home(home(), store))
    orders = jobs.table
    node = NodeState(store=store, identity=Identity.load(), trust=Trust(), signatures=Signatures(),
                     pins=Pins(home() / "pins"), nonces=Nonces(folder / "nonces.sqlite"), orders=orders,
                     worker=Worker(orders, _runner(store, folder, policy)), private=private, max_body=max_body(),
                     policy=policy, refusal=policy.refusal())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> Any:
        node.worker.start()
        yield
        if node.worker.stop(timeout=2.0):
            node.orders.close()
        node.nonces.close()

    app = FastAPI(title="CAT Node", version=__version__, lifespan=lifespan,
                  description="Serves this node's blocks (as an IPFS trustless gateway: raw blocks and CARs), BOMs, "
                              "their signatures and lineage, and accepts blocks, pins, countersignatures and Orders "
                              "from the peers it trusts, as signed requests. "
                              + ("Private: every read needs a signed request from a trusted peer."
                                 if private else "Reads are open to anyone."))
    app.state.node = node
    app.state.stopping = False  # set once the server stops (`cats.web.run`): held answers are given then

    json_errors(app)

    app.add_middleware(_Gate, node=node)

    @app.exception_handler(Exception)
    async def _failed(request: Request, error: Exception) -> JSONResponse:
        # the message may name files of this machine: it goes to the node's log, not to the client
        log.error("%s %s failed", request.method, request.url.path, exc_info=error)
        return JSONResponse({"detail": "internal error; the node's log has the details"}, status_code=500)

    signed = [Security(_SIGNATURE)]
    reads = signed if private else []  # the gate checks them; this documents it
    read_errors = (401, 403) if private else ()

    @app.get("/id", response_model=m.NodeId, dependencies=reads, responses=_errors(*read_errors),
             summary="Who this node is")
    async def ident() -> m.NodeId:
        return m.NodeId(did=node.identity.did, version=__version__, private=node.private)

    # `/ipfs/{cid}/{path}` for a CAR: the path is read from the request (not a parameter), so both routes
    # share the one function
    @app.api_route("/ipfs/{cid}/{path:path}", methods=["GET", "HEAD"], response_class=Response,
                   dependencies=reads, include_in_schema=False)
    @app.api_route("/ipfs/{cid}", methods=["GET", "HEAD"], response_class=Response, dependencies=reads,
                   responses={200: {"description": "The block (format=raw), or the DAG as a CARv1 (format=car)",
                                    "content": {RAW: _BINARY, CAR: _BINARY}},
                              **_errors(400, *read_errors, 404, 406, 422)},
                   summary="A block, or its DAG as a CAR (IPFS trustless gateway)",
                   description="Ask for `format=raw` (or `Accept: application/vnd.ipld.raw`) for the block's bytes, "
                               "`format=car` (or `Accept: application/vnd.ipld.car`, with `version=1`, `order=dfs` "
                               "and `dups=y|n` as parameters or as `car-version`, `car-order`, `car-dups` in the "
                               "query) for a CARv1 whose one root is the CID: with `dag-scope=all` (the default) the "
                               "whole DAG, parents before children, each once unless `dups=y`; `block`, the block "
                               "alone; `entity`, a UnixFS file's blocks or a directory's own; `entity-bytes=from:to`, "
                               "the file's blocks holding that range. `/ipfs/{cid}/{path}` asks for a CAR of what the "
                               "path (through UnixFS folders and DAG-CBOR) names, after the blocks that prove it. "
                               "`filename` names the download. HEAD answers the same without a body. A CAR "
                               "whose root is here is answered 200 and streamed; if a block deeper in the DAG is "
                               "missing, the stream ends without its final chunk.")
    def ipfs(request: Request, cid: CidPath,
             # plain strings, checked here: another format is answered 406 and another scope 400, not 422
             format: Annotated[str, Query(description="raw or car (takes precedence over Accept)",
                                          json_schema_extra={"enum": ["raw", "car"]})] = None,  # type: ignore[assignment]
             dag_scope: Annotated[str, Query(alias="dag-scope", description="all (default), entity or block",
                                             json_schema_extra={"enum": list(gateway.SCOPES)})] = None,  # type: ignore[assignment]
             entity_bytes: Annotated[str, Query(alias="entity-bytes", description="from:to, a file's byte range "
                                                "(inclusive; negative from the end; to may be *)")] = None,  # type: ignore[assignment]
             ) -> Response:
        parsed = _cid(cid)
        path = request.path_params.get("path", "").strip("/")
        try:
            want = gateway.negotiate(format, request.headers.get("accept", ""), dict(request.query_params))
            scope = gateway.parse_scope(dag_scope, entity_bytes) if want.kind == "car" else gateway.Scope()
        except gateway.Refused as e:
            raise HTTPException(e.status, str(e)) from None
        if path and want.kind == "raw":
            raise HTTPException(400, f"/ipfs/{parsed}/{path[:200]} asks for a block by a path, which the block "
                                     "alone cannot prove: ask for format=car, or for the block by its own CID")
        try:
            block = node.store.get(parsed)
        except BlockNotFound:
            raise HTTPException(404, f"block {parsed} is not on this node") from None
        except IntegrityError as e:
            raise HTTPException(500, f"{e}; it is not served") from None
        try:
            end = gateway.resolve(node.store, parsed, block, path) if path else gateway.Resolved(parsed, block)
        except gateway.Refused as e:
            raise HTTPException(e.status, str(e)) from None
        except CatsError as e:
            raise HTTPException(422, f"/ipfs/{parsed}/{path[:200]} cannot be followed: {e}") from None
        download = request.query_params.get("filename") or f"{parsed}.{'bin' if want.kind == 'raw' else 'car'}"
        headers = {"Content-Disposition": gateway.disposition(download), "Vary": "Accept",
                   "X-Ipfs-Path": quote(f"/ipfs/{parsed}/{path}".rstrip("/")),
                   "X-Ipfs-Roots": ",".join(map(str, end.roots or (parsed,))), **_IMMUTABLE}
        if format is None:
            headers["Content-Location"] = f"/ipfs/{parsed}?" + "&".join(
                filter(None, [f"format={want.kind}", request.url.query]))
        if want.kind == "raw":
            headers["ETag"] = f'"{parsed}.raw"'
            if request.method == "HEAD":
                return Response(media_type=RAW, headers={**headers, "Content-Length": str(len(block))})
            return Response(block, media_type=RAW, headers=headers)
        plain = scope == gateway.Scope() and not want.dups
        # a path's CAR differs from its end's own (the proof comes first): the ETag names the path by its digest
        named = f"{parsed}.{hashlib.sha256(path.encode()).hexdigest()[:16]}" if path else str(parsed)
        headers["ETag"] = f'"{named}.car"' if plain else f'"{named}.{scope.etag}{".dups" if want.dups else ""}.car"'
        headers["Accept-Ranges"] = "none"  # a streamed CAR has no byte ranges; entity-bytes asks for parts
        try:
            if scope.name == "all":
                links(end.cid, end.block)  # a root that does not decode is a 4xx, not a cut stream
            blocks = gateway.sections(node.store, end.cid, end.block, scope, want.dups, end.proof)
        except gateway.Refused as e:
            raise HTTPException(e.status, str(e)) from None
        except CatsError as e:
            raise HTTPException(422, f"block {end.cid} does not decode, so its DAG cannot be walked ({e}); ask for "
                                     "dag-scope=block") from None
        if request.method == "HEAD":
            return Response(media_type=want.media_type, headers=headers)
        return _CarResponse(_car(node.store, parsed, blocks), media_type=want.media_type, headers=headers)

    @app.get("/routing/v1/providers/{cid}", response_class=Response, dependencies=reads,
             responses={200: {"description": "The provider records (the spec's peer schema): this node, if it holds "
                                             "the block, and the trusted peers known to hold the DAG",
                              "content": {routing.JSON: {"schema": {"type": "object"}},
                                          routing.NDJSON: {"schema": {"type": "string"}}}},
                        **_errors(400, *read_errors, 404)},
             summary="Who holds a CID (IPFS HTTP routing v1)",
             description="This node, when the block is here (with the bytes its DAG declares and whether it is "
                         "pinned, so whole, in the `cats` field), and the trusted peers known to hold the DAG "
                         "without asking anyone: those that pinned it here and those it was pulled from. JSON, or "
                         "NDJSON for `Accept: application/x-ndjson`; 404 when nobody is known to hold it.")
    def providers(request: Request, cid: CidPath) -> Response:
        parsed = _cid(cid)
        found = []
        if node.store.has(parsed):
            block = node.store.get(parsed, verify=False)
            found.append(routing.record(node.identity.did, str(request.base_url).rstrip("/"),
                                        bytes=routing.dag_bytes(parsed, block), pinned=parsed in node.pins))
        for did, url in routing.Sources(home() / "sources.sqlite").holders(parsed):
            peer = node.trust.get(did)
            if peer is not None and did != node.identity.did and (peer.url or url):
                found.append(routing.record(did, peer.url or url or ""))
        headers = {"Vary": "Accept", "Access-Control-Allow-Origin": "*", "Cache-Control": "public, max-age=15"}
        if not found:
            return JSONResponse({"detail": f"no provider of {parsed} is known here"}, 404, headers=headers)
        ndjson = routing.NDJSON in request.headers.get("accept", "")[:1024]
        return Response(routing.encode(found, ndjson), media_type=routing.NDJSON if ndjson else routing.JSON,
                        headers=headers)

    @app.get("/bom/{cid}", dependencies=reads,
             responses={200: {"description": "The BOM (its DAG-CBOR block as JSON)",
                              "content": {"application/json": {"schema": {"$ref": "#/components/schemas/BOM"}}}},
                        **_errors(400, *read_errors, 404, 422)},
             summary="A BOM as JSON")
    def bom(cid: CidPath) -> JSONResponse:
        parsed = _bom_here(node.store, cid)
        with _reading_bom(parsed):
            found = load_bom(node.store, parsed)
        return JSONResponse(found.model_dump(mode="json"))

    @app.get("/bom/{cid}/signatures", dependencies=reads,
             responses={200: {"model": Envelope, "description": "The DSSE envelope of every signature kept"},
                        **_errors(400, *read_errors, 404, 409, 422)},
             summary="The signatures over a BOM")
    def signatures(cid: CidPath) -> JSONResponse:
        parsed = _stored_cid(cid)
        try:
            envelope = node.signatures.get(parsed)
        except EnvelopeError as e:  # its message names the node's file: the log has it, the caller need not
            log.warning("%s", e)
            raise HTTPException(409, f"the signatures kept for BOM {parsed} on this node cannot be read") from None
        if envelope is None:
            raise HTTPException(404, f"no signatures over BOM {parsed} on this node")
        return JSONResponse(envelope.model_dump())

    @app.get("/evaluations/{key}", dependencies=signed,
             responses={200: {"description": "The evaluation, the BOM that computed it and this node's envelope "
                                             "over that BOM",
                              "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Evaluation"}}}},
                        **_errors(400, 401, 403, 404, 409, 422)},
             summary="A slice's evaluation this node computed: its outcome, and the BOM and signature vouching for it",
             description="For a trusted peer whose Factory would take the result instead of running the slice. "
                         "Only evaluations of runs whose BOM this node signed itself are answered.")
    def evaluation(key: CidPath, signer: Signer) -> JSONResponse:
        parsed = _stored_cid(key)
        with _run_index() as index:
            found = index.evaluations([str(parsed)]).get(str(parsed)) if index is not None else None
        if found is None:
            raise HTTPException(404, f"no evaluation {parsed} on this node")
        bom, record = found
        try:
            envelope = node.signatures.get(CID.parse(bom))
        except EnvelopeError as e:
            log.warning("%s", e)
            raise HTTPException(409, f"the signatures kept for BOM {bom} on this node cannot be read") from None
        if envelope is None or node.identity.did not in envelope.signers():
            raise HTTPException(404, f"no evaluation {parsed} on this node: BOM {bom} that computed it is not "
                                     "signed by this node")
        log.info("%s asked for evaluation %s (BOM %s)", signer.did, parsed, bom)
        answer = Evaluation(key=str(parsed), bom=bom, record=SliceOutcome.model_validate(record), envelope=envelope)
        return JSONResponse(answer.model_dump(mode="json", exclude_none=True))

    @app.get("/lineage/{cid}", response_model=m.Lineage, dependencies=reads,
             responses=_errors(400, *read_errors, 404, 422),
             summary="A BOM's lineage: its ancestors and, from this node's run index, its descendants")
    def lineage(cid: CidPath) -> JSONResponse:
        from cats.bom import lineage as lin

        parsed = _bom_here(node.store, cid)
        with _run_index() as index, _reading_bom(parsed):
            g = lin.graph(node.store, parsed, index)
        return JSONResponse(json.loads(lin.to_json(g)))

    @app.get("/ui/lineage/{cid}", response_class=HTMLResponse, dependencies=reads,
             responses=_errors(400, *read_errors, 404, 422, page=True),
             summary="A BOM's lineage as a page: the DAG, each BOM's signers and integrity")
    def lineage_page(cid: CidPath) -> HTMLResponse:
        from cats.verification.page import lineage_page as page

        parsed = _bom_here(node.store, cid)
        with _run_index() as index, _reading_bom(parsed):
            return HTMLResponse(page(node.store, parsed, index))

    @app.post("/has", response_model=m.Has, dependencies=reads, responses=_errors(400, *read_errors, 413, 422),
              openapi_extra=_json_body(m.HasRequest, f"The DAG roots to look for (at most {m.HAS_MAX})"),
              summary="Which of these DAGs are wholly on this node",
              description="A read (open unless the node is private), asked in one request before pushing: a "
                          "DAG is present when every block of it is here, linking blocks read and checked, raw "
                          "leaves looked up; a root without the rest of its DAG is missing.")
    def has(body: Question) -> m.Has:
        asked = [_cid(text) for text in _parsed(m.HasRequest, body).cids]
        proven: set[CID] = set()  # subtrees found whole, not walked twice
        whole = {cid.to_v1() for cid in dict.fromkeys(asked) if complete(node.store, cid, proven)}
        return m.Has(present=[str(c) for c in asked if c.to_v1() in whole],
                     missing=[str(c) for c in asked if c.to_v1() not in whole])

    @app.post("/blocks", response_model=m.Imported, dependencies=signed,
              responses=_errors(400, 401, 403, 413),
              openapi_extra={"requestBody": {"required": True,
                                             "description": "A CARv1 (read as one whatever the Content-Type); "
                                                            "every block is checked against its CID, all or nothing",
                                             "content": {CAR: _BINARY, "application/octet-stream": _BINARY}}},
              summary="Store the blocks of a CAR")
    def blocks(signer: Car) -> m.Imported:
        try:
            roots, count = car.import_car(node.store, io.BytesIO(signer.body))
        except CarError as e:
            raise HTTPException(400, str(e)) from None
        log.info("%s pushed %d blocks (roots %s)", signer.did, count, ", ".join(map(str, roots)))
        return m.Imported(roots=[str(r) for r in roots], blocks=count)

    @app.post("/pins/{cid}", response_model=m.Pinned, dependencies=signed,
              responses=_errors(400, 401, 403, 404, 413, 422),
              summary="Pin a DAG that is all here")
    def pin(cid: CidPath, signer: Bodiless) -> m.Pinned:
        parsed = _stored_cid(cid)
        try:
            count = node.pins.add(node.store, parsed)
            if signer.did != node.identity.did:  # the peer that pinned it here holds it: it pushed it
                routing.Sources(home() / "sources.sqlite").add(parsed, signer.did, None)
        except BlockNotFound as e:
            missing = e.cid if e.cid is not None else parsed
            raise HTTPException(404, f"cannot pin {parsed}: block {missing} is not on this node (push the whole "
                                     "DAG first)") from None
        except IntegrityError as e:
            raise HTTPException(500, str(e)) from None
        except CatsError as e:
            raise HTTPException(422, f"cannot pin {parsed}: {e}") from None
        _learn(node.store, parsed, signer.did)
        return m.Pinned(pinned=str(parsed), blocks=count)

    @app.post("/bom/{cid}/signatures", dependencies=signed,
              responses={200: {"model": Envelope, "description": "The envelope with every signature now kept"},
                         **_errors(400, 401, 403, 409, 413, 422)},
              openapi_extra=_json_body(Envelope, "A DSSE envelope over the BOM's CID; its valid signatures are "
                                                 "kept, forged ones dropped"),
              summary="Add signatures (countersign) a BOM")
    def countersign(cid: CidPath, signer: Json) -> JSONResponse:
        parsed = _stored_cid(cid)
        try:
            envelope = Envelope.parse(signer.body, "the body is not a DSSE envelope")
        except EnvelopeError as e:
            raise HTTPException(400, str(e)) from None
        try:
            over = envelope.bom
            if over.to_v1() != parsed.to_v1():
                raise HTTPException(400, f"the envelope is over {over}, not {parsed}")
            merged = node.signatures.add(envelope)
        except EnvelopeError as e:
            log.warning("%s", e)
            raise HTTPException(409, f"the signatures kept for BOM {parsed} on this node cannot be read; "
                                     "nothing was added") from None
        except CatsError as e:
            raise HTTPException(400, str(e)) from None
        log.info("%s added signatures over %s: %s", signer.did, parsed, ", ".join(merged.signers()))
        return JSONResponse(merged.model_dump())

    @app.post("/orders", response_model=m.OrderStatus, response_model_exclude_none=True, status_code=202,
              dependencies=signed, responses=_errors(400, 401, 403, 413, 422, 503),
              openapi_extra=_json_body(m.OrderRequest, "The CID of a sealed Order whose blocks were pushed"),
              summary="Run an Order on this node")
    def submit(signer: Json) -> m.OrderStatus:
        cid = _stored_cid(_parsed(m.OrderRequest, signer.body).order)
        if node.refusal is not None:
            raise HTTPException(503, f"Order {cid} refused: {node.refusal}")
        try:
            order = load_order(node.store, cid)
            node.policy.admit(cid, order)
            if missing := lacking(node.store, order):  # pulled from the peers holding them before the run
                locate(cid, missing, sources(node.trust.peers(), node.identity.did), node.identity)
            else:
                node.pins.add(node.store, cid)  # kept from gc while it waits its turn
        except OrderRejected as e:
            raise HTTPException(e.status, str(e)) from None
        except BlockNotFound as e:  # a block the Order block links beyond those it names
            raise HTTPException(400, f"Order {cid} needs block {e.cid}, which is not on this node: push it "
                                     "first") from None
        if node.worker.stopping:
            raise HTTPException(503, f"Order {cid} refused: this node is stopping; submit it again once it is back")
        row = node.orders.create("node", name=order.name, order=str(cid), submitter=signer.did, status="queued")
        node.worker.submit(row.id)
        log.info("%s submitted order %s (%s)", signer.did, row.id, cid)
        return m.OrderStatus.of(row)

    @app.get("/orders", response_model=list[m.OrderEntry], dependencies=signed,
             responses=_errors(401, 403, 422), summary="The signer's orders here (every order, for the operator)")
    def order_list(signer: Signer,
                   status: Annotated[str | None, Query(description="only orders with this status",
                                                       json_schema_extra={"enum": list(STATUSES)})] = None,
                   ) -> list[m.OrderEntry]:
        if status is not None and status not in STATUSES:
            raise HTTPException(422, f"status={status[:40]!r} is none of {', '.join(STATUSES)}")
        mine = None if signer.did == node.identity.did else signer.did
        return [m.OrderEntry.of(row) for row in node.orders.rows(status=status, submitter=mine, kind="node")]

    def _followed(id: str, did: str) -> Job:
        row = node.orders.get(id)
        if row is None or row.kind != "node":  # this home's own runs are not peers' business
            raise HTTPException(404, f"no order {id[:40]} on this node")
        if not node.may_follow(row, did):
            raise HTTPException(403, f"order {id} was submitted by {row.submitter}; only its submitter and this "
                                     "node's operator follow it")
        return row

    @app.get("/orders/{id}", response_model=m.OrderStatus, response_model_exclude_none=True,
             dependencies=signed, responses=_errors(401, 403, 404, 422),
             summary="An order's status, for its submitter (and the operator)",
             description="With `wait`, the answer comes when the order's status changes (it starts or ends) or "
                         "after that many seconds, whichever is first: a submitter learns the outcome at once "
                         "without polling often.")
    async def order_status(id: JobId, signer: Signer,
                           wait: Annotated[float, Query(ge=0, le=MAX_WAIT_S, description="seconds to wait for the "
                                                        f"order to end (at most {MAX_WAIT_S:g})")] = 0,
                           ) -> m.OrderStatus:
        row = asked = _followed(id, signer.did)
        deadline = time.monotonic() + wait
        while (row.status == asked.status and row.status not in FINISHED and time.monotonic() < deadline
               and not app.state.stopping):
            await asyncio.sleep(_WAIT_STEP_S)  # a look at the table: the worker thread writes it
            row = node.orders.get(id) or row
        return m.OrderStatus.of(row)

    @app.post("/orders/{id}/cancel", response_model=m.OrderStatus, response_model_exclude_none=True,
              dependencies=signed, responses=_errors(401, 403, 404, 409, 413, 422),
              summary="Cancel an order, queued or running (its submitter or the operator)",
              description="A queued order never runs; a running one is stopped (its run and every process it "
                          "started) before the answer. Either way it is recorded `cancelled`. An order that has "
                          "ended already is answered 409.")
    def cancel(id: JobId, signer: Bodiless) -> m.OrderStatus:
        row = _followed(id, signer.did)
        by = "this node's operator" if signer.did == node.identity.did else f"its submitter {signer.did}"
        if not node.worker.cancel(id, f"cancelled by {by}"):
            row = node.orders.get(id) or row
            raise HTTPException(409, f"order {id} has ended already: it is {row.status}")
        return m.OrderStatus.of(node.orders.get(id) or row)

    @app.get("/orders/{id}/slices", response_model=list[SliceLog], response_model_exclude_none=True,
             dependencies=signed, responses=_errors(401, 403, 404, 422),
             summary="The order's slices that failed or printed anything, and those running now",
             description="Each names the CIDs of what it wrote to stdout and stderr once it ended (the last MiB of "
                         "each, blocks its slice record links); GET /orders/{id}/logs/{index}/{stream} reads them.")
    def order_slices(id: JobId, signer: Signer) -> list[SliceLog]:
        return jobs.slices(_followed(id, signer.did))

    @app.get("/orders/{id}/logs/{index}/{stream}", dependencies=signed, responses=_errors(401, 403, 404, 422),
             response_class=Response, summary="What a slice of the order printed, from a byte offset",
             description="While the slice runs, what it has written so far; afterwards its stored log (when its "
                         "start was dropped, a line says so). At most a few MiB per answer: ask again from the "
                         "offset in X-Next-Offset until the answer is empty.")
    def order_log(id: JobId, signer: Signer, index: Annotated[int, PathParam(ge=0, description="the slice")],
                  stream: Annotated[Literal["stdout", "stderr"], PathParam(description="which stream")],
                  offset: Annotated[int, Query(ge=0, description="bytes already read")] = 0,
                  stage: Annotated[int, Query(ge=1, description="of a pipeline, the stage")] = 1) -> Response:
        row = _followed(id, signer.did)
        log = next((s for s in jobs.slices(row) if (s.stage, s.index) == (stage, index)), None)
        data, after = (b"", offset) if log is None else jobs.read(row, log, stream, offset)
        return Response(data, media_type="application/octet-stream",
                        headers={"X-Content-Type-Options": "nosniff", "X-Next-Offset": str(after)})

    def openapi() -> dict[str, Any]:
        """FastAPI's schema, plus the BOM's and the evaluation's: CIDs are strings in JSON, which only their
        validation schemas can say."""
        schema = app.openapi_schema
        if schema is None:
            schema = FastAPI.openapi(app)  # kept as app.openapi_schema too, so these are added once
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for model in (BOM, Evaluation):
                found = model.model_json_schema(mode="validation", ref_template="#/components/schemas/{model}")
                components.update({**found.pop("$defs", {}), model.__name__: found})
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def _learn(store: BlockStore, root: CID, did: str) -> None:
    """Index the intact BOMs of a DAG a peer pushed, whole now that it is pinned, as made elsewhere: this
    node's lineage shows what they derive at once (a peer's claim, shown with whatever signatures it has)."""
    from cats.bom.lineage import learn_within

    index = Index(home() / "index.sqlite")
    try:
        if learned := learn_within(store, index, root):
            log.info("%s pushed BOM %s, now in this node's lineage", did, ", ".join(learned))
    except CatsError as e:  # the pin holds; only the lineage here misses it
        log.warning("BOMs pushed under %s not indexed: %s", root, e)
    finally:
        index.close()


@contextmanager
def _run_index() -> Iterator[Index | None]:
    """This node's run index (for descendants), if it has run anything."""
    path = home() / "index.sqlite"
    index = Index(path) if path.exists() else None
    try:
        yield index
    finally:
        if index is not None:
            index.close()


@contextmanager
def _reading_bom(bom: CID) -> Iterator[None]:
    """A BOM read's errors as answers: absent 404, a corrupted block 500, not a BOM 422."""
    try:
        yield
    except BlockNotFound:
        raise HTTPException(404, f"BOM {bom} is not on this node") from None
    except IntegrityError as e:
        raise HTTPException(500, str(e)) from None
    except CatsError as e:
        raise HTTPException(422, str(e)) from None


def _bom_here(store: BlockStore, text: str) -> CID:
    """The CID, if its block is here (whatever its codec): 400 malformed, 404 absent."""
    cid = _stored_cid(text)
    if not store.has(cid):
        raise HTTPException(404, f"BOM {cid} is not on this node")
    return cid


def _parsed(model: type[_Model], body: bytes) -> _Model:
    """A JSON body as `model`: 400 if it is not JSON, 422 naming the field that does not fit."""
    try:
        text = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise HTTPException(400, f"the body is not JSON: {e}") from None
    try:
        return model.model_validate(text)
    except ValidationError as e:
        raise HTTPException(422, f"invalid request: {_first_error(e)}") from None


def _first_error(error: ValidationError) -> str:
    problems = []
    for e in error.errors():
        where = ".".join(str(p) for p in e.get("loc", ()))
        problems.append(f"{where}: {e.get('msg')}" if where else str(e.get("msg")))
    return "; ".join(problems)
