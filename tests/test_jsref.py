"""Tests of the independent JS reference harness itself (tests/jsref.py).

The expected CIDs here are published kubo values (well-known constants and
the sharding vectors of kubo's own sharness tests), so these tests prove that
the harness reproduces `ipfs add` before other tests use it as the oracle.
"""

from __future__ import annotations

import json
from pathlib import Path

import jsref
import pytest

EMPTY_FILE_V0 = "QmbFMke1KXqnYyBBWxB74N4c5SBnJMVAiMNRcGu6x1AwQH"
EMPTY_FILE_V1 = "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"
EMPTY_DIR_V0 = "QmUNLLsPACCz1vLxQVkXqqLX5R1X345qqfHbsf67hvA3Nn"
EMPTY_DIR_V1 = "bafybeiczsscdsbs7ffqz55asqdf3smv6klcw3gofszvwlyarci47bgf354"


@pytest.fixture
def harness():
    jsref.require()


# --- require() policy: no node needed -------------------------------------

def test_require_fails_in_ci_when_missing(monkeypatch):
    monkeypatch.setattr(jsref, "_unavailable_reason", lambda: "node is gone")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="node is gone"):
        jsref.require()


def test_require_skips_outside_ci_when_missing(monkeypatch):
    monkeypatch.setattr(jsref, "_unavailable_reason", lambda: "node is gone")
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="node is gone"):
        jsref.require()


def test_available_is_bool():
    assert isinstance(jsref.available(), bool)


# --- UnixFS -----------------------------------------------------------------

def test_empty_file(harness, tmp_path):
    f = tmp_path / "empty.bin"
    f.write_bytes(b"")
    v0 = jsref.unixfs_cids(f, 0)
    assert v0 == {"root": EMPTY_FILE_V0, "entries": {"empty.bin": EMPTY_FILE_V0}}
    v1 = jsref.unixfs_cids(f, 1)
    assert v1 == {"root": EMPTY_FILE_V1, "entries": {"empty.bin": EMPTY_FILE_V1}}


@pytest.mark.parametrize("data,v0,v1", [
    (b"hello world", "Qmf412jQZiuVUtdgnB36FXFX7xg5V6KEbSJ4dpQuhkLyfD",
     "bafkreifzjut3te2nhyekklss27nh3k72ysco7y32koao5eei66wof36n5e"),
    (b"hello\n", "QmZULkCELmmk5XNfCgTnCyFgAVxBRBXyDHGGMVoLFLiXEN",
     "bafkreicysg23kiwv34eg2d7qweipxwosdo2py4ldv42nbauguluen5v6am"),
])
def test_small_files(harness, tmp_path, data, v0, v1):
    f = tmp_path / "f"
    f.write_bytes(data)
    assert jsref.unixfs_cids(f, 0)["root"] == v0
    assert jsref.unixfs_cids(f, 1)["root"] == v1


def test_empty_dir(harness, tmp_path):
    d = tmp_path / "nothing"
    d.mkdir()
    assert jsref.unixfs_cids(d, 0) == {"root": EMPTY_DIR_V0, "entries": {"nothing": EMPTY_DIR_V0}}
    assert jsref.unixfs_cids(d, 1) == {"root": EMPTY_DIR_V1, "entries": {"nothing": EMPTY_DIR_V1}}


def test_tree_entries_named_like_kubo(harness, tmp_path):
    top = tmp_path / "top"
    (top / "sub" / "deeper").mkdir(parents=True)   # empty, nested
    (top / "emptyd").mkdir()
    (top / ".git").mkdir()                          # hidden: skipped by default
    (top / ".git" / "x").write_bytes(b"x")
    (top / ".hidden").write_bytes(b"h")
    (top / "a.txt").write_bytes(b"hello\n")
    (top / "e").write_bytes(b"")
    (top / "sub" / "big").write_bytes(bytes(range(256)) * 4096)  # 1 MiB: 4 chunks

    for version in (0, 1):
        out = jsref.unixfs_cids(top, version)
        entries = out["entries"]
        assert set(entries) == {"top", "top/a.txt", "top/e", "top/emptyd", "top/sub",
                                "top/sub/big", "top/sub/deeper"}
        assert list(entries)[-1] == "top"
        assert out["root"] == entries["top"]
        empty_dir = EMPTY_DIR_V0 if version == 0 else EMPTY_DIR_V1
        empty_file = EMPTY_FILE_V0 if version == 0 else EMPTY_FILE_V1
        assert entries["top/emptyd"] == entries["top/sub/deeper"] == empty_dir
        assert entries["top/e"] == empty_file
        # multi-chunk file: a dag-pb root; single-chunk: raw leaf only under v1
        assert jsref.cid_info(entries["top/sub/big"])["codec"] == "dag-pb"
        assert jsref.cid_info(entries["top/a.txt"])["codec"] == ("dag-pb" if version == 0 else "raw")

    with_hidden = jsref.unixfs_cids(top, 0, hidden=True)
    assert {"top/.git", "top/.git/x", "top/.hidden"} <= set(with_hidden["entries"])
    assert with_hidden["root"] != jsref.unixfs_cids(top, 0)["root"]


# kubo's test/sharness/t0260-sharding.sh and t0250-files-api.sh vectors.

def _numbered_files(d: Path, n: int, name) -> Path:
    d.mkdir()
    for i in range(1, n + 1):
        (d / name(i)).write_bytes(f"{i}\n".encode())
    return d


def test_kubo_sharding_vectors_2000_files(harness, tmp_path):
    d = _numbered_files(tmp_path / "testdata", 2000, lambda i: f"file{i}")
    # Below the 256KiB threshold: a plain directory.
    assert jsref.unixfs_cids(d, 0)["root"] == "QmavrTrQG4VhoJmantURAYuw3bowq3E2WcvP36NRQDAC1N"
    # Threshold "1B" forces a HAMT.
    forced = jsref.unixfs_cids(d, 0, shard_split_threshold_bytes=1)
    assert forced["root"] == "QmSCJD1KYLhVVHqBK3YyXuoEqHt7vggyJhzoFYbT8v1XYL"


def test_kubo_sharding_vectors_default_threshold(harness, tmp_path):
    small = _numbered_files(tmp_path / "small_dir", 100, lambda i: f"file{i:06d}")
    assert jsref.unixfs_cids(small, 0)["root"] == "QmdBXmm4HRpUhyzzctbFvi2tLai3XFL1YjmE1qfpJe61NX"
    # 5960 * (10 + 34) bytes > 256KiB: sharded automatically.
    big = _numbered_files(tmp_path / "big_dir", 5960, lambda i: f"file{i:06d}")
    out = jsref.unixfs_cids(big, 0)
    assert out["root"] == "QmWfjnRWRvdvYezQWnfbvrvY7JjrpevsE9cato1x76UqGr"
    assert len(out["entries"]) == 5961


# --- CIDs and DAG-CBOR --------------------------------------------------------

def test_cid_info_v0(harness):
    info = jsref.cid_info(EMPTY_DIR_V0)
    assert info["version"] == 0
    assert info["codec"] == "dag-pb" and info["codec_code"] == 0x70
    assert info["multihash_code"] == 0x12
    assert info["multihash_hex"] == (
        "1220" "59948439065f29619ef41280cbb932be52c56d99c5966b65e0111239f098bbef")
    assert info["base32"] == EMPTY_DIR_V1
    assert info["v0"] == EMPTY_DIR_V0


def test_cid_info_raw_v1(harness):
    info = jsref.cid_info(EMPTY_FILE_V1)
    assert info["version"] == 1 and info["codec"] == "raw"
    # sha2-256 of the empty string
    assert info["digest_hex"] == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert info["v0"] is None


def test_cid_info_rejects_garbage(harness):
    with pytest.raises(jsref.JsRefError, match="invalid CID"):
        jsref.cid_info("not-a-cid")


def test_dagcbor_encode(harness):
    data, cid = jsref.dagcbor_encode("{}")
    assert data == b"\xa0"
    assert cid == "bafyreigbtj4x7ip5legnfznufuopl4sg4knzc2cof6duas4b3q2fy6swua"

    # map keys sorted length-first; bytes -> major type 2; link -> tag 42
    doc = json.dumps({"bb": 1, "a": {"/": {"bytes": "aGk"}}, "l": {"/": EMPTY_FILE_V1}})
    data, cid = jsref.dagcbor_encode(doc)
    link = bytes.fromhex("00015512" "20" "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
    assert data == (b"\xa3" + b"\x61a" + b"\x42hi" + b"\x61l" + b"\xd8\x2a\x58\x25" + link
                    + b"\x62bb" + b"\x01")
    info = jsref.cid_info(cid)
    assert info["codec"] == "dag-cbor" and info["version"] == 1


def test_dagcbor_encode_rejects_bad_json(harness):
    with pytest.raises(jsref.JsRefError, match="DAG-JSON"):
        jsref.dagcbor_encode('{"x":')


# --- CAR ----------------------------------------------------------------------

HELLO_V1 = "bafkreifzjut3te2nhyekklss27nh3k72ysco7y32koao5eei66wof36n5e"


def test_car_round_trip(harness, tmp_path):
    car = tmp_path / "x.car"
    blocks = [(EMPTY_FILE_V1, b""), (HELLO_V1, b"hello world"), (EMPTY_DIR_V0, b"\x0a\x02\x08\x01")]
    jsref.car_write(car, HELLO_V1, blocks)
    out = jsref.car_read(car)
    assert out["version"] == 1
    assert out["roots"] == [HELLO_V1]
    assert out["blocks"] == [{"cid": c, "size": len(b)} for c, b in blocks]
    assert out["unverified"] == []
    full = jsref.car_read(car, with_data=True)
    assert [b["data"] for b in full["blocks"]] == [b for _, b in blocks]


def test_car_read_rejects_bad_car(harness, tmp_path):
    car = tmp_path / "x.car"
    jsref.car_write(car, HELLO_V1, [(HELLO_V1, b"hello world")])
    raw = car.read_bytes()

    truncated = tmp_path / "truncated.car"
    truncated.write_bytes(raw[:-3])
    with pytest.raises(jsref.JsRefError) as exc:
        jsref.car_read(truncated)
    assert exc.value.returncode not in (0, None)
    assert "Unexpected end of data" in str(exc.value)

    garbage = tmp_path / "garbage.car"
    garbage.write_bytes(b"this is not a car")
    with pytest.raises(jsref.JsRefError):
        jsref.car_read(garbage)

    mismatched = tmp_path / "mismatched.car"
    jsref.car_write(mismatched, HELLO_V1, [(HELLO_V1, b"hello World")])
    with pytest.raises(jsref.JsRefError, match="does not match"):
        jsref.car_read(mismatched)
