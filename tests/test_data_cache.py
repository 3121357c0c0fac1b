"""The worker-local range cache, against a real loopback HTTP server and mem://."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
from servers import FileServer

from cats import data
from cats.data import Cache
from cats.data.cache import MAGIC
from cats.data.resolvers import Info
from cats.data.resolvers.mem import MemResolver
from cats.errors import CatsError, DataIntegrityError, DataNotFound

HEADER = len(MAGIC) + 16  # the magic line and an XXH3-128 digest


def _bytes(n: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(n)


pytestmark = pytest.mark.usefixtures("quick_data")


@pytest.fixture
def cache(tmp_path: Path) -> Cache:
    return Cache(tmp_path / "cache")


def entries(cache: Cache) -> list[Path]:
    return [p for p in cache.entries.glob("*/*") if not p.name.startswith(".tmp-")]


def test_default_root_is_under_cats_home(cats_home: Path) -> None:
    assert Cache().root == cats_home / "cache" / "data"


def test_hit_with_pin_serves_identical_bytes_without_any_request(cache: Cache, http_server: FileServer) -> None:
    blob = _bytes(300_000)
    uri = http_server.put("/t.bin", blob)
    info = data.pin(uri)
    first = cache.read(uri, 1000, 100_000, expect=info)
    requests, sent = len(http_server.log), http_server.bytes_sent
    assert first == blob[1000:101_000] and sent >= 100_000
    assert cache.read(uri, 1000, 100_000, expect=info) == first
    assert data.read(uri, 1000, 100_000, expect=info, cache=cache) == first  # the same cache through data.read
    assert (len(http_server.log), http_server.bytes_sent) == (requests, sent)  # not one request, not one byte
    assert cache.read(uri, 1000, 100, expect=info) == blob[1000:1100]  # another range is another key
    assert len(http_server.log) == requests + 1
    s = cache.stats()
    assert (s["hits"], s["misses"], s["entries"]) == (2, 2, 2)


def test_hit_without_pin_only_revalidates(cache: Cache, http_server: FileServer) -> None:
    blob = _bytes(200_000)
    uri = http_server.put("/t.bin", blob)
    assert cache.read(uri, 0, 150_000) == blob[:150_000]
    http_server.log.clear()
    assert cache.read(uri, 0, 150_000) == blob[:150_000]
    assert [(s.range, s.sent) for s in http_server.log] == [("bytes=0-0", 1)]  # the version check, no body
    assert cache.stats()["hits"] == 1


def test_changed_source_misses(cache: Cache, http_server: FileServer) -> None:
    uri = http_server.put("/t.bin", b"a" * 5000)
    old = data.pin(uri)
    assert cache.read(uri, 0, 100) == b"a" * 100
    http_server.put("/t.bin", b"b" * 5000)
    assert cache.read(uri, 0, 100) == b"b" * 100  # new ETag, new key
    with pytest.raises(DataIntegrityError):  # pinned to the old version, the source refuses to serve it
        cache.read(uri, 100, 100, expect=old)
    assert cache.read(uri, 0, 100, expect=old) == b"a" * 100  # the pinned bytes were cached: still valid for that pin
    data.write("mem://cache/k", b"x" * 64)
    assert cache.read("mem://cache/k") == b"x" * 64
    data.write("mem://cache/k", b"y" * 64)
    assert cache.read("mem://cache/k") == b"y" * 64
    s = cache.stats()
    assert (s["hits"], s["misses"], s["errors"], s["entries"]) == (1, 4, 1, 4)


def test_size_bound_evicts_least_recently_used(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "c", max_bytes=2 * (1000 + HEADER))
    for name in "abc":
        data.write(f"mem://lru/{name}", _bytes(1000, seed=ord(name)))
    cache.read("mem://lru/a")
    time.sleep(0.02)
    cache.read("mem://lru/b")
    for name in "aba":  # every hit must count, not only the first after a write (as relatime would)
        time.sleep(0.02)
        cache.read(f"mem://lru/{name}")
    time.sleep(0.02)
    cache.read("mem://lru/c")  # over the bound: b goes
    s = cache.stats()
    assert (s["evicted"], s["entries"], s["hits"]) == (1, 2, 3)
    assert s["bytes_stored"] <= cache.max_bytes
    cache.read("mem://lru/a")
    cache.read("mem://lru/c")
    assert cache.stats()["hits"] == 5  # a and c survived
    cache.read("mem://lru/b")
    assert cache.stats()["misses"] == 4  # b did not


def test_entry_larger_than_the_bound_is_served_but_not_stored(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "c", max_bytes=500)
    data.write("mem://big/k", _bytes(1000))
    assert cache.read("mem://big/k") == _bytes(1000)
    assert cache.stats()["entries"] == 0


def test_age_bound_expires(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "c", max_age_s=60)
    data.write("mem://age/old", b"old" * 10)
    data.write("mem://age/new", b"new" * 10)
    cache.read("mem://age/old")
    cache.read("mem://age/new")
    path_old = cache._path("mem://age/old", 0, None, data.stat("mem://age/old").version or "")
    past = time.time() - 120
    os.utime(path_old, (past, past))  # written two minutes ago
    data.write("mem://age/third", b"3" * 10)
    cache.read("mem://age/third")  # storing sweeps out what has expired, read or not
    assert not path_old.exists() and cache.stats()["expired"] == 1
    cache.read("mem://age/new")
    path_new = cache._path("mem://age/new", 0, None, data.stat("mem://age/new").version or "")
    os.utime(path_new, (past, past))
    assert cache.read("mem://age/new") == b"new" * 10  # expired on read too
    assert cache.read("mem://age/old") == b"old" * 10
    s = cache.stats()
    assert (s["expired"], s["hits"], s["misses"]) == (2, 1, 5)


def test_hits_do_not_extend_age(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "c", max_age_s=60)
    data.write("mem://age2/k", b"k" * 10)
    cache.read("mem://age2/k")
    (path,) = entries(cache)
    past = time.time() - 50
    os.utime(path, (past, past))
    cache.read("mem://age2/k")  # a hit: atime moves, mtime (creation) must not
    assert abs(path.stat().st_mtime - past) < 1
    assert cache.stats()["hits"] == 1


def test_corrupted_entry_is_dropped_and_refetched(cache: Cache, http_server: FileServer) -> None:
    blob = _bytes(50_000)
    uri = http_server.put("/t.bin", blob)
    info = data.pin(uri)
    cache.read(uri, 0, 50_000, expect=info)
    (path,) = entries(cache)
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0xFF  # one flipped bit at the end of the payload
    path.write_bytes(bytes(raw))
    requests = len(http_server.log)
    assert cache.read(uri, 0, 50_000, expect=info) == blob
    assert len(http_server.log) == requests + 1  # refetched from the source
    assert cache.read(uri, 0, 50_000, expect=info) == blob  # and the rewritten entry is good
    assert len(http_server.log) == requests + 1
    path.write_bytes(b"short")  # truncated below the header
    assert cache.read(uri, 0, 50_000, expect=info) == blob
    s = cache.stats()
    assert (s["corrupt"], s["hits"], s["misses"]) == (2, 1, 3)


def test_failing_fetch_caches_nothing_and_raises_typed(cache: Cache, http_server: FileServer) -> None:
    with pytest.raises(DataNotFound):
        cache.read(http_server.url + "/missing.bin", 0, 10)
    uri = http_server.put("/t.bin", b"z" * 1000)
    info = data.pin(uri)
    http_server.fail["/t.bin"] = 404  # the body fetch fails after the pin
    with pytest.raises(DataNotFound):
        cache.read(uri, 0, 10, expect=info)
    assert entries(cache) == []
    s = cache.stats()
    assert (s["hits"], s["misses"], s["errors"], s["bytes_in"]) == (0, 0, 2, 0)
    del http_server.fail["/t.bin"]
    assert cache.read(uri, 0, 10, expect=info) == b"z" * 10  # the failure was not remembered


def test_source_without_version_is_never_cached(cache: Cache, monkeypatch: pytest.MonkeyPatch) -> None:
    class NoVersion(MemResolver):
        def stat(self, uri: str) -> Info:
            return Info(uri, super().stat(uri).size, None)

        def _fetch(self, uri: str, offset: int, n: int) -> tuple[bytes, str | None]:
            return super()._fetch(uri, offset, n)[0], None

    monkeypatch.setitem(data.SCHEMES, "nover", lambda uri, reach: NoVersion())
    data.write("mem://nv/k", b"1234")
    assert cache.read("nover://nv/k") == b"1234"
    data.write("mem://nv/k", b"5678")
    assert cache.read("nover://nv/k") == b"5678"
    s = cache.stats()
    assert (s["uncacheable"], s["misses"], s["hits"], s["entries"]) == (2, 2, 0, 0)


def test_metrics_add_up_and_are_shared_across_processes(cache: Cache, http_server: FileServer) -> None:
    blob = _bytes(10_000)
    uri = http_server.put("/t.bin", blob)
    info = data.pin(uri)
    reads = [(0, 100), (0, 100), (500, 1000), (0, 100), (500, 1000), (9000, 5000)]
    out = [cache.read(uri, o, n, expect=info) for o, n in reads]
    assert out[-1] == blob[9000:]  # clipped at the end: 1000 bytes
    s = cache.stats()
    assert (s["hits"], s["misses"]) == (3, 3)
    assert s["bytes_in"] == 100 + 1000 + 1000
    assert s["bytes_out"] == sum(map(len, out)) == 3 * 100 + 2 * 1000 + 1000
    assert 0 < float(s["mean_fetch_s"]) < 5
    code = ("import sys; from cats import data; c = data.Cache(sys.argv[1]); info = data.pin(sys.argv[2]); "
            "c.read(sys.argv[2], 0, 100, expect=info); c.read(sys.argv[2], 20, 30, expect=info)")
    subprocess.run([sys.executable, "-c", code, str(cache.root), uri], check=True, timeout=60)
    s = cache.stats()  # the other process's hit on (0, 100) and miss on (20, 30) are counted here too
    assert (s["hits"], s["misses"], s["entries"]) == (4, 4, 4)
    cache.read(uri, 20, 30, expect=info)  # stored by the other process
    assert cache.stats()["hits"] == 5
    cache.clear()
    s = cache.stats()
    assert (s["hits"], s["misses"], s["entries"], s["bytes_stored"]) == (0, 0, 0, 0)


def test_bounds_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CATS_DATA_CACHE_BYTES", "4096")
    monkeypatch.setenv("CATS_DATA_CACHE_AGE_S", "60")
    cache = Cache(tmp_path / "c")
    assert (cache.max_bytes, cache.max_age_s) == (4096, 60.0)
    assert Cache(tmp_path / "d", max_bytes=1).max_bytes == 1  # an explicit bound wins
    monkeypatch.setenv("CATS_DATA_CACHE_BYTES", "lots")
    with pytest.raises(CatsError, match="CATS_DATA_CACHE_BYTES"):
        Cache(tmp_path / "e")
