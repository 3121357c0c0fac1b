"""Reading results back: a CID's value, decoded by the encoding its run recorded.

A run records how each result is encoded (per slice in its records, for the output in the BOM's
`output_encoding`), because bytes alone do not say: a str and its UTF-8 bytes, or a JSON-able
value and a file that happens to hold DAG-CBOR, are the same bytes. So the encoding comes from
the BOM when given one, else from the run index, which knows the outputs of the runs made or
pulled here and their slices' results.
"""

from __future__ import annotations

from typing import Any

from cats import data
from cats.bom import load as load_bom
from cats.bom.home import Home
from cats.bom.ref import load_ref
from cats.cas import dagcbor, dagjson, reader
from cats.cas.cid import CID, DAG_CBOR, DAG_JSON
from cats.cas.importer import Importer
from cats.cas.store import BlockStore
from cats.data import Info
from cats.errors import BlockNotFound, CatsError, DecodeError, IntegrityError
from cats.factory import results


def read(cid: CID | str, *, store: BlockStore | None = None, home: Home | None = None) -> Any:
    """The value of a result in the store (`store`, else `home`'s, by default this node's), decoded
    as the BOM or the home's run index (default `CATS_HOME`'s) says.

    - a BOM: its output, decoded by the BOM's `output_encoding`;
    - the output of a run known here, or one slice's result: decoded by the encoding its run
      recorded: bytes, str, a pyarrow Table (Arrow IPC; pandas results too), a numpy array (.npy),
      or a JSON-able value (DAG-CBOR, links as `CID`s). A `directory` merge's output is a dict of
      entry name -> CID (one level; read an entry for its value), a `list` merge's the list of the
      slices' result CIDs;
    - a result written to a URI (`Order.output_uri`): its bytes fetched from there at the recorded
      version, checked against the recorded CID, and decoded;
    - any other DAG-CBOR or DAG-JSON block: its decoded value; any other UnixFS folder: a dict of
      entry name -> CID; any other file: its bytes.

    Errors are CatsErrors naming the CID: a block missing from the store, bytes that do not decode
    as recorded. The same bytes returned as different kinds (a str, and bytes) are one CID; the
    index keeps the encoding of the latest run that made them. numpy and pyarrow are imported only
    to decode their encodings.
    """
    cid = CID.parse(cid)
    with Home.given(home, store) as here:
        return _read(cid, store if store is not None else here.store, here)


def _read(cid: CID, store: BlockStore, home: Home) -> Any:
    if cid.codec in (DAG_CBOR, DAG_JSON):
        codec = dagcbor if cid.codec == DAG_CBOR else dagjson
        try:
            value = codec.decode(store.get(cid))
        except DecodeError as e:
            raise DecodeError(f"{cid} does not decode as {cid.codec_name}: {e}") from None
        kind = value.get("type") if isinstance(value, dict) and cid.codec == DAG_CBOR else None
        if kind == "cats.bom":
            bom = load_bom(store, cid)
            return _decode(store, bom.outputs[0], bom.output_encoding)
        return _referenced(store, cid) if kind == "cats.ref" else value
    encoding = _recorded(store, cid, home)
    if encoding is not None:
        return _decode(store, cid, encoding)
    if reader.is_folder(store, cid):
        return _folder(store, cid)
    return _bytes(store, cid)


def _recorded(store: BlockStore, cid: CID, home: Home) -> str | None:
    """The encoding a run recorded for this result: the output of a BOM known here, or a slice's result."""
    if not home.has_index:
        return None
    bom = home.index.producer(str(cid))
    if bom is None:
        return home.index.encoding(str(cid))
    try:
        made = load_bom(store, CID.parse(bom))
    except BlockNotFound:  # the index is this node's; `store` may be another one, without that BOM
        return None
    return made.output_encoding if cid in made.outputs else None


def _decode(store: BlockStore, cid: CID, encoding: str) -> Any:
    if encoding == "unixfs-directory":
        return _folder(store, cid)
    if encoding == "dag-cbor-list":
        return dagcbor.decode(store.get(cid))
    if encoding == "ref":
        return _referenced(store, cid)
    return _as(_bytes(store, cid), encoding, str(cid))


def _as(data: bytes, encoding: str, what: str) -> Any:
    try:
        return results.decode(data, encoding)
    except ValueError as e:  # a DecodeError, UnicodeDecodeError, pyarrow's ArrowInvalid, numpy's header errors
        raise CatsError(f"{what} does not decode as {encoding}, its recorded encoding: {e}") from None


def _folder(store: BlockStore, cid: CID) -> dict[str, CID]:
    return {name: child for name, child, _ in reader.entries(store, cid)}


def _bytes(store: BlockStore, cid: CID) -> bytes:
    return b"".join(reader.read(store, cid))


def _referenced(store: BlockStore, cid: CID) -> Any:
    """A result a worker wrote to a URI: fetched at the version its reference block pins, and only
    handed out if it still hashes to the CID recorded when it was written."""
    ref = load_ref(store, cid)
    fetched = data.read(ref.uri, expect=Info(ref.uri, ref.size, ref.version))
    with Importer(None, cid_version=1) as importer:
        content = importer.add_bytes(fetched).cid
    if str(content) != ref.content:
        raise IntegrityError(f"{ref.uri}, the result {cid} refers to, hashes to {content}, not to the recorded "
                             f"{ref.content}", cid)
    return _as(fetched, ref.encoding, f"{ref.uri} (the result {cid} refers to)")
