"""CAR v1 export and import: round trips, all-or-nothing imports, and a cross-check against @ipld/car."""

from __future__ import annotations

import io
import os
import random
from pathlib import Path

import jsref
import pytest

from cats.cas import car, dagcbor, multihash, varint
from cats.cas.cid import CID, DAG_CBOR, RAW
from cats.cas.dag import walk
from cats.cas.importer import CHUNK_SIZE, Importer
from cats.cas.store import BlockStore
from cats.cas.store.memory import MemoryStore
from cats.errors import CarError, CarTruncated


def _snapshot(store: BlockStore) -> dict[CID, bytes]:
    return {cid: store.get(cid, verify=False) for cid in store}


def _source(tmp_path: Path, version: int = 1) -> tuple[MemoryStore, CID]:
    """A store holding a small folder tree: several files, one of them multi-block."""
    src = tmp_path / "car-src"
    (src / "sub").mkdir(parents=True)
    rng = random.Random(42)
    (src / "big.bin").write_bytes(rng.randbytes(CHUNK_SIZE * 3 + 100))
    (src / "small.txt").write_text("hello car\n")
    (src / "sub" / "ünïcode.txt").write_text("nested\n")
    (src / "sub" / "empty").write_bytes(b"")
    store = MemoryStore()
    with Importer(store, cid_version=version) as imp:
        root = list(imp.add_path(src))[-1].cid
    return store, root


def _export(store: BlockStore, roots: list[CID]) -> bytes:
    out = io.BytesIO()
    car.export(store, roots, out)
    return out.getvalue()


def _sections(data: bytes) -> tuple[int, list[tuple[int, int, CID]]]:
    """Parse a CAR independently: header end, and (start, end, cid) of each section."""
    n, i = varint.decode(data, 0)
    header_end = i + n
    pos, sections = header_end, []
    while pos < len(data):
        n, i = varint.decode(data, pos)
        cid, _ = CID.read(data, i)
        sections.append((pos, i + n, cid))
        pos = i + n
    assert pos == len(data)
    return header_end, sections


def _car(header: object | bytes, blocks: list[tuple[CID, bytes]]) -> bytes:
    head = header if isinstance(header, bytes) else dagcbor.encode(header)
    out = [varint.encode(len(head)), head]
    for cid, block in blocks:
        raw = bytes(cid)
        out += [varint.encode(len(raw) + len(block)), raw, block]
    return b"".join(out)


def _prefill(store: BlockStore) -> dict[CID, bytes]:
    for i in range(5):
        data = f"already here {i}".encode()
        store.put(CID.hash(data, RAW), data)
    return _snapshot(store)


# -- round trips ------------------------------------------------------------------------------
@pytest.mark.parametrize("version", [0, 1])
def test_round_trip(store: BlockStore, tmp_path: Path, version: int) -> None:
    source, root = _source(tmp_path, version)
    data = _export(source, [root])
    header_end, sections = _sections(data)
    assert sections[0][2] == root  # the root comes first
    assert {c for _, _, c in sections} == {c for c in walk(source, root)}
    assert len(sections) == len(source)

    roots, count = car.import_car(store, io.BytesIO(data))
    assert roots == [root]
    assert count == len(source)
    assert _snapshot(store) == _snapshot(source)


def test_export_counts_and_dedups_shared_blocks(tmp_path: Path) -> None:
    source, root = _source(tmp_path)
    small = CID.hash(b"hello car\n", RAW)
    assert source.has(small)
    out = io.BytesIO()
    n = car.export(source, [root, small], out)  # small is also inside root: written once
    assert n == len(source)
    _, sections = _sections(out.getvalue())
    assert len(sections) == len(source)
    roots, _ = car.import_car(MemoryStore(), io.BytesIO(out.getvalue()))
    assert roots == [root, small]


def test_round_trip_through_a_file(tmp_path: Path, local_store: BlockStore) -> None:
    source, root = _source(tmp_path)
    path = tmp_path / "x.car"
    with open(path, "wb") as f:
        car.export(source, [root], f)
    with open(path, "rb") as f:
        roots, count = car.import_car(local_store, f)
    assert roots == [root] and count == len(source)
    assert _snapshot(local_store) == _snapshot(source)


def test_dag_cbor_root(store: BlockStore) -> None:
    leaf = b"leaf"
    leaf_cid = CID.hash(leaf, RAW)
    node = dagcbor.encode({"name": "n", "link": leaf_cid, "list": [leaf_cid]})
    node_cid = CID.hash(node, DAG_CBOR)
    src = MemoryStore()
    src.put(leaf_cid, leaf)
    src.put(node_cid, node)
    roots, count = car.import_car(store, io.BytesIO(_export(src, [node_cid])))
    assert roots == [node_cid] and count == 2
    assert store.get(node_cid) == node and store.get(leaf_cid) == leaf


# -- damaged CARs -----------------------------------------------------------------------------
def test_truncated_car_changes_nothing(store: BlockStore, tmp_path: Path) -> None:
    source, root = _source(tmp_path)
    data = _export(source, [root])
    header_end, sections = _sections(data)
    assert len(sections) >= 5
    cuts = {0, 1, header_end // 2, header_end - 1}  # inside the header
    for start, end, _ in sections[1:]:
        cuts |= {start + 1, start + 3, (start + end) // 2, end - 1}  # inside a section
    cuts.add(len(data) - 1)
    before = _prefill(store)
    for cut in sorted(cuts):
        with pytest.raises(CarError) as e:
            car.import_car(store, io.BytesIO(data[:cut]))
        assert str(e.value), cut
        assert _snapshot(store) == before, f"cut at {cut} changed the store"
    big_start = max(sections, key=lambda s: s[1] - s[0])
    with pytest.raises(CarError) as e:
        car.import_car(store, io.BytesIO(data[:(big_start[0] + big_start[1]) // 2]))
    assert "truncated" in str(e.value)


def test_forged_block_names_its_cid_and_imports_nothing(store: BlockStore, tmp_path: Path) -> None:
    source, root = _source(tmp_path)
    data = bytearray(_export(source, [root]))
    _, sections = _sections(bytes(data))
    start, end, forged = sections[len(sections) // 2]  # blocks before it verify fine
    data[end - 1] ^= 0x01  # same length, same CID, one bit off
    before = _prefill(store)
    with pytest.raises(CarError) as e:
        car.import_car(store, io.BytesIO(bytes(data)))
    assert str(forged) in str(e.value)
    assert _snapshot(store) == before


def _root_and_block() -> tuple[CID, bytes]:
    block = b"a lonely block"
    return CID.hash(block, RAW), block


@pytest.mark.parametrize(
    ("header", "words"),
    [
        (b"\xff\xfe\xfd", ["DAG-CBOR"]),  # not CBOR at all
        (b"\xa1\x61", ["DAG-CBOR"]),  # truncated CBOR
        (b"\xa2\x67version\x01\x65roots\x80", ["DAG-CBOR"]),  # keys out of DAG-CBOR order
        ({"version": 2}, ["version"]),  # the CARv2 pragma
        ({"roots": [], "version": 2}, ["version"]),
        ({"roots": []}, ["version"]),
        ([1, 2, 3], ["header"]),
        ({"roots": ["bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"], "version": 1}, ["roots", "CID"]),
        ({"roots": "nope", "version": 1}, ["roots"]),
        ({"version": 1}, ["roots"]),
    ],
    ids=["not-cbor", "truncated-cbor", "non-canonical", "v2-pragma", "v2", "no-version", "not-a-map",
         "root-string", "roots-string", "no-roots"],
)
def test_bad_headers(store: BlockStore, header: object, words: list[str]) -> None:
    cid, block = _root_and_block()
    before = _prefill(store)
    with pytest.raises(CarError) as e:
        car.import_car(store, io.BytesIO(_car(header, [(cid, block)])))
    for word in words:
        assert word in str(e.value)
    assert _snapshot(store) == before


def test_root_absent_from_the_file(store: BlockStore) -> None:
    cid, block = _root_and_block()
    absent = CID.hash(b"not in the file", RAW)
    before = _prefill(store)
    with pytest.raises(CarError) as e:
        car.import_car(store, io.BytesIO(_car({"roots": [cid, absent], "version": 1}, [(cid, block)])))
    assert str(absent) in str(e.value)
    assert _snapshot(store) == before


def test_not_a_car(store: BlockStore) -> None:
    for junk in (b"", b"\x00", b"hello world, not a car", b"\xff" * 20):
        with pytest.raises(CarError):
            car.import_car(store, io.BytesIO(junk))
    assert list(store) == []


def test_malformed_section_cid(store: BlockStore) -> None:
    cid, block = _root_and_block()
    good = _car({"roots": [cid], "version": 1}, [(cid, block)])
    bad = good + varint.encode(5) + b"\x01\x55\x12\x20\x00"  # a CID whose digest is cut short
    before = _prefill(store)
    with pytest.raises(CarError):
        car.import_car(store, io.BytesIO(bad))
    assert _snapshot(store) == before


# -- the independent implementation -----------------------------------------------------------
@pytest.mark.parametrize("version", [0, 1])
def test_js_reads_our_car(tmp_path: Path, version: int) -> None:
    jsref.require()
    source, root = _source(tmp_path, version)
    path = tmp_path / "ours.car"
    with open(path, "wb") as f:
        car.export(source, [root], f)
    got = jsref.car_read(path, with_data=True)
    assert got["version"] == 1
    assert [CID.parse(r) for r in got["roots"]] == [root]
    assert got.get("unverified", []) == []
    blocks = {CID.parse(b["cid"]): b["data"] for b in got["blocks"]}
    assert len(blocks) == len(got["blocks"])  # no duplicates
    assert {c.to_v1(): d for c, d in blocks.items()} == _snapshot(source)
    assert root in blocks  # the root keeps its version (Qm… for v0)


@pytest.mark.parametrize("version", [0, 1])
def test_we_read_a_js_car(tmp_path: Path, store: BlockStore, version: int) -> None:
    jsref.require()
    source, root = _source(tmp_path, version)
    path = tmp_path / "theirs.car"
    blocks = [(str(c), source.get(c)) for c in walk(source, root)]
    jsref.car_write(path, str(root), reversed(blocks))  # children first: order must not matter
    with open(path, "rb") as f:
        roots, count = car.import_car(store, f)
    assert roots == [root]
    assert count == len(blocks)
    assert _snapshot(store) == _snapshot(source)


def test_we_refuse_a_forged_js_car(tmp_path: Path, store: BlockStore) -> None:
    jsref.require()
    cid, block = _root_and_block()
    path = tmp_path / "forged.car"
    jsref.car_write(path, str(cid), [(str(cid), block[:-1] + b"!")])
    with open(path, "rb") as f, pytest.raises(CarError) as e:
        car.import_car(store, f)
    assert str(cid) in str(e.value)
    assert list(store) == []


def test_no_temp_left_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The staging folder goes away whether the import succeeds or fails."""
    staging = tmp_path / "tmp"
    staging.mkdir()
    monkeypatch.setenv("TMPDIR", str(staging))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    source, root = _source(tmp_path)
    data = _export(source, [root])
    car.import_car(MemoryStore(), io.BytesIO(data))
    with pytest.raises(CarError):
        car.import_car(MemoryStore(), io.BytesIO(data[:-3]))
    assert os.listdir(staging) == []


# -- the incremental reader (import and the mesh's streams both use it) -----------------------
def _pieces(data: bytes, size: int) -> list[bytes]:
    return [data[i:i + size] for i in range(0, len(data), size)]


def _read(data: bytes, size: int, verify: bool) -> list[tuple[CID, bytes]]:
    reader = car.Sections(verify=verify)
    got = [(cid, bytes(block)) for piece in _pieces(data, size) for cid, block in reader.feed(piece)]
    reader.end()
    return got


def test_sections_are_the_same_however_the_stream_is_cut(tmp_path: Path) -> None:
    source, root = _source(tmp_path)
    data = _export(source, [root])
    expected = [(cid, source.get(cid)) for cid in walk(source, root)]
    for size in (1, 3, 1000, 65_536, len(data)):
        assert _read(data, size, verify=True) == expected, size


def test_a_forged_block_is_the_same_error_at_any_cut_and_passes_unverified(tmp_path: Path) -> None:
    source, root = _source(tmp_path)
    data = bytearray(_export(source, [root]))
    _, sections = _sections(bytes(data))
    start, end, forged = sections[2]
    data[end - 1] ^= 0x01
    messages = set()
    for size in (1, 7, 4096, len(data)):
        with pytest.raises(CarError) as e:
            _read(bytes(data), size, verify=True)
        messages.add(str(e.value))
    assert messages == {f"CAR block {forged} at byte {start} does not match its CID"}
    assert forged in {cid for cid, _ in _read(bytes(data), 4096, verify=False)}  # its caller checks it


def test_limits_are_checked_before_the_bytes_arrive() -> None:
    cid, block = _root_and_block()
    head = _car({"roots": [cid], "version": 1}, [])
    reader = car.Sections(verify=False)
    assert list(reader.feed(head)) == [] and reader.roots == [cid]
    with pytest.raises(CarError, match=f"CAR section at byte {len(head)} claims {car.MAX_SECTION + 1} bytes"):
        list(reader.feed(varint.encode(car.MAX_SECTION + 1)))
    with pytest.raises(CarError, match="not a CAR file: header claims"):
        list(car.Sections(verify=False).feed(varint.encode(car.MAX_BLOCK + 1)))
    with pytest.raises(CarError, match=f"CAR section at byte {len(head)}: varint is not minimally encoded"):
        list(car.Sections(verify=False).feed(head + b"\x85\x00"))
    long = CID(1, RAW, multihash.digest(b"x" * (car.MAX_IDENTITY + 1), multihash.IDENTITY))
    with pytest.raises(CarError, match=f"identity CID at byte {len(head)} holds {car.MAX_IDENTITY + 1} bytes"):
        list(car.Sections(verify=False).feed(head + car.section(long, b"x" * (car.MAX_IDENTITY + 1))))


def test_a_stream_cut_inside_a_section_is_truncated_and_one_cut_between_sections_is_not(tmp_path: Path) -> None:
    source, root = _source(tmp_path)
    data = _export(source, [root])
    _, sections = _sections(data)
    between = sections[2][1]
    assert len(_read(data[:between], 100, verify=True)) == 3
    with pytest.raises(CarTruncated, match=f"ended inside a section at byte {between}"):
        _read(data[:between + 2], 100, verify=True)


def test_the_index_of_a_car_file_finds_every_block_under_the_same_limits(tmp_path: Path) -> None:
    """`car.index` (what `cats repair --car` reads by) places each block where `Sections` finds it,
    without reading the blocks, and refuses what `Sections` refuses."""
    source, root = _source(tmp_path)
    data = _export(source, [root])
    found = car.index(io.BytesIO(data))
    blocks = list(walk(source, root))
    assert set(found) == {c.to_v1() for c in blocks}
    for cid in blocks:
        at, size = found[cid.to_v1()]
        assert data[at:at + size] == source.get(cid)
    with pytest.raises(CarTruncated, match="ended inside a section"):
        car.index(io.BytesIO(data[:-1]))
    header = dagcbor.encode({"version": 1, "roots": [root]})
    huge = varint.encode(len(header)) + header + varint.encode(car.MAX_SECTION + 1) + b"\0" * 64
    with pytest.raises(CarError, match="more than any block may hold"):
        car.index(io.BytesIO(huge))
