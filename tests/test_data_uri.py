"""Data references by URI, against real servers on loopback: ranges, errors, roots, pins and limits."""

from __future__ import annotations

import io
import os
import random
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from servers import FileServer, Served, free_port

from cats import data
from cats.cas.importer import Importer
from cats.cas.store import open_store
from cats.data.reach import Hosts, Reach
from cats.data.resolvers.mem import MemResolver
from cats.errors import (
    DataError,
    DataForbidden,
    DataIntegrityError,
    DataNotFound,
    DataTimeout,
    DataUnavailable,
    FetchTooLarge,
    MalformedURI,
    UnsupportedScheme,
)


def _bytes(n: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(n)


pytestmark = pytest.mark.usefixtures("quick_data")


@pytest.fixture
def s3(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[str]:
    """A fresh bucket on the moto server, with dummy credentials; yields its s3:// prefix."""
    import boto3

    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_DEFAULT_REGION": "us-east-1", "CATS_S3_ENDPOINT": moto_endpoint,
                        "AWS_CONFIG_FILE": str(tmp_path / "none"),
                        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none")}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    bucket = f"b{random.getrandbits(48):x}"
    boto3.client("s3", endpoint_url=moto_endpoint).create_bucket(Bucket=bucket)
    yield f"s3://{bucket}"


# -- http ---------------------------------------------------------------------------------------

def test_http_range_reads_fetch_exactly_the_range(http_server: FileServer) -> None:
    blob = _bytes(100_000)
    uri = http_server.put("/blob.bin", blob)
    info = data.stat(uri)
    assert info.size == 100_000 and info.version and info.version.startswith('"')  # the ETag
    http_server.log.clear()
    assert data.read(uri, 1000, 500) == blob[1000:1500]
    assert data.read(uri, 99_990, 100) == blob[99_990:]  # clipped at the end
    assert data.read(uri, 100_000, 10) == b""  # 416 past the end
    assert [(s.range, s.status, s.sent) for s in http_server.log] == [
        ("bytes=1000-1499", 206, 500), ("bytes=99990-100089", 206, 10), ("bytes=100000-100009", 416, 0)]


def test_parquet_row_group_through_open_fetches_a_fraction(http_server: FileServer) -> None:
    rng = random.Random(7)
    table = pa.table({"x": [rng.random() for _ in range(200_000)], "k": [rng.getrandbits(62) for _ in range(200_000)]})
    buffer = io.BytesIO()
    pq.write_table(table, buffer, row_group_size=50_000, compression="none")
    uri = http_server.put("/t.parquet", buffer.getvalue())
    http_server.log.clear()
    parquet = pq.ParquetFile(data.open(uri))
    assert parquet.num_row_groups == 4
    assert parquet.read_row_group(2).equals(table.slice(100_000, 50_000))
    size = len(buffer.getvalue())
    assert http_server.bytes_sent < size * 0.4, (http_server.bytes_sent, size)


@pytest.mark.parametrize(("status", "error"), [(404, DataNotFound), (410, DataNotFound), (403, DataForbidden),
                                               (401, DataForbidden), (413, FetchTooLarge)])
def test_http_status_maps_to_typed_error(http_server: FileServer, status: int, error: type) -> None:
    uri = http_server.put("/x", b"data")
    http_server.fail["/x"] = status
    with pytest.raises(error, match=str(status)) as caught:
        data.read(uri, 0, 2)
    assert caught.value.uri == uri and uri in str(caught.value)
    assert len(http_server.log) == 1  # client errors are not retried


def test_http_missing_path_is_not_found(http_server: FileServer) -> None:
    with pytest.raises(DataNotFound, match="/nope"):
        data.stat(http_server.url + "/nope")


def test_http_5xx_retried_then_unavailable(http_server: FileServer) -> None:
    uri = http_server.put("/flaky", b"data")
    http_server.fail["/flaky"] = 503
    with pytest.raises(DataUnavailable, match="after 3 attempts: HTTP 503") as caught:
        data.read(uri)
    assert caught.value.uri == uri
    assert [s.status for s in http_server.log] == [503, 503, 503]


def test_http_5xx_then_recovery_succeeds(http_server: FileServer) -> None:
    uri = http_server.put("/flaky", b"data")
    http_server.fail["/flaky"] = 500
    http_server.log = _HealingLog(http_server)
    assert data.read(uri) == b"data"
    assert [s.status for s in http_server.log] == [500, 206]


class _HealingLog(list[Served]):
    """A log that clears the server's failures when the second request arrives: a transient outage."""

    def __init__(self, server: FileServer) -> None:
        super().__init__()
        self.server = server

    def append(self, item: Served) -> None:
        if self:
            self.server.fail.clear()
        super().append(item)


def test_http_timeout(http_server: FileServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CATS_DATA_TIMEOUT", "0.3")
    uri = http_server.put("/slow", b"data")
    http_server.delay = 3
    start = time.monotonic()
    with pytest.raises(DataTimeout, match="0.3 s") as caught:
        data.read(uri)
    assert caught.value.uri == uri and uri in str(caught.value)
    assert time.monotonic() - start < 2


def test_connection_refused_is_unavailable_after_retries() -> None:
    uri = f"http://127.0.0.1:{free_port()}/x"
    with pytest.raises(DataUnavailable, match="after 3 attempts: ConnectError") as caught:
        data.read(uri)
    assert caught.value.uri == uri


def test_server_ignoring_range_reads_only_what_is_needed(http_server: FileServer,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    http_server.ignore_range = True
    huge = http_server.put("/huge", bytes(range(256)) * (128 << 10))  # 32 MiB: more than socket buffers hold
    assert data.read(huge, 10, 5) == bytes(range(10, 15))
    assert data.stat(huge).size == 32 << 20
    assert all(s.status == 200 and s.sent < 16 << 20 for s in http_server.log), http_server.log
    blob = _bytes(5000)
    uri = http_server.put("/whole", blob)
    monkeypatch.setenv("CATS_DATA_MAX_FETCH", "1000")
    assert data.read(uri, 900, 100) == blob[900:1000]  # needs 1000 bytes of the body: within the limit
    with pytest.raises(FetchTooLarge, match="ignores Range") as caught:
        data.read(uri, 3000, 10)
    assert caught.value.uri == uri


def test_fetch_too_large_never_transfers_past_the_limit(http_server: FileServer,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CATS_DATA_MAX_FETCH", "1000")
    blob = _bytes(5000)
    uri = http_server.put("/big", blob)
    assert data.read(uri, 4000) == blob[4000:]  # exactly the limit is fine
    http_server.log.clear()
    with pytest.raises(FetchTooLarge, match="CATS_DATA_MAX_FETCH=1000") as caught:
        data.read(uri)
    assert caught.value.uri == uri
    assert http_server.bytes_sent == 1001
    data.write("mem://limits/k", blob)
    with pytest.raises(FetchTooLarge):
        data.open("mem://limits/k").read()


# -- file ---------------------------------------------------------------------------------------

@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (tmp_path / "secret.txt").write_bytes(b"secret")
    monkeypatch.setenv("CATS_DATA_ROOTS", os.pathsep.join([str(tmp_path / "elsewhere"), str(root)]))
    return root


def test_file_inside_root_reads_writes_and_stats(root: Path) -> None:
    (root / "sub" / "a.txt").write_bytes(b"hello world")
    uri = (root / "sub" / "a.txt").as_uri()
    assert data.read(uri, 6, 5) == b"world"
    assert data.read(uri.replace("/sub/", "/sub/../sub/"), 0, 5) == b"hello"  # `..` that stays inside is fine
    written = data.write((root / "new" / "b c.bin").as_uri(), b"abc")
    assert (root / "new" / "b c.bin").read_bytes() == b"abc"
    assert data.stat(written.uri) == written and written.size == 3


def test_file_refuses_escapes(root: Path) -> None:
    os.symlink(root.parent / "secret.txt", root / "sub" / "link.txt")
    escapes = [f"file://{root}/sub/../../secret.txt", (root / "sub" / "link.txt").as_uri(),
               (root.parent / "secret.txt").as_uri(), "file:///etc/passwd"]
    for uri in escapes:
        with pytest.raises(DataForbidden, match="outside the data roots") as caught:
            data.read(uri)
        assert caught.value.uri == uri
    with pytest.raises(DataForbidden):
        data.write(f"file://{root}/../written.txt", b"x")
    assert not (root.parent / "written.txt").exists()


def test_file_errors(root: Path) -> None:
    with pytest.raises(DataNotFound, match="missing.txt"):
        data.stat((root / "missing.txt").as_uri())
    with pytest.raises(DataError, match="not a regular file"):
        data.read((root / "sub").as_uri())
    for uri in ["file://relative/path", "file://otherhost/etc/passwd"]:
        with pytest.raises(MalformedURI, match="file:///absolute/path"):
            data.read(uri)


def test_file_roots_default_to_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CATS_DATA_ROOTS", raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "here.txt").write_bytes(b"here")
    assert data.read((tmp_path / "here.txt").as_uri()) == b"here"
    with pytest.raises(DataForbidden):
        data.read(tmp_path.parent.as_uri() + "/x")


# -- s3 -----------------------------------------------------------------------------------------

def test_s3_write_stat_and_range_read(s3: str) -> None:
    blob = _bytes(20_000)
    uri = f"{s3}/dir/blob.bin"
    written = data.write(uri, blob)
    info = data.stat(uri)
    assert info.size == 20_000 and info.version == written.version and info.version.startswith('"')
    assert data.read(uri, 12_345, 100) == blob[12_345:12_445]
    assert data.read(uri, 19_990) == blob[19_990:]
    assert data.read(uri, 20_000, 5) == b""
    assert data.open(uri).read() == blob


def test_s3_range_reads_share_one_client(s3: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Resolvers are cached per scheme and settings: N range reads, from several threads at once, build
    one boto3 client; a change of endpoint or credentials builds another."""
    import boto3.session

    built: list[str | None] = []
    real = boto3.session.Session.client

    def counting(self: boto3.session.Session, *args: object, **kw: object) -> object:
        built.append(str(kw.get("endpoint_url")))
        return real(self, *args, **kw)

    blob = _bytes(4_000)
    uri = f"{s3}/shared.bin"
    data.write(uri, blob)
    monkeypatch.setenv("CATS_DATA_RETRIES", "1")  # settings the client is built with: a new one
    monkeypatch.setattr(boto3.session.Session, "client", counting)
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda i: data.read(uri, i * 10, 10), range(200)))
    assert got == [blob[i * 10:i * 10 + 10] for i in range(200)]
    assert data.open(uri).read() == blob and data.stat(uri).size == 4_000
    assert len(built) == 1, built
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "other")  # other credentials: never another's client
    monkeypatch.setenv("CATS_S3_ENDPOINT", "http://127.0.0.1:1")
    assert data.resolve(uri) is data.resolve(f"{s3}/another")
    assert len(built) == 2


def test_resolvers_are_shared_per_reach_and_never_across() -> None:
    local = data.resolve("file:///x")
    assert data.resolve("file:///y") is local  # the same roots
    service = Reach(roots=("/srv",), hosts=Hosts())
    assert data.resolve("file:///srv/x", service) is not local
    assert data.resolve("file:///srv/x", service).reach is service  # type: ignore[attr-defined]
    assert data.resolve("https://a/b", service) is data.resolve("https://c/d", Reach(roots=(), hosts=Hosts()))
    assert data.resolve("https://a/b", service) is not data.resolve("https://a/b")  # guarded vs not


def test_s3_missing_key_and_bucket(s3: str) -> None:
    for uri in [f"{s3}/nope", "s3://no-such-bucket-cats/x"]:
        with pytest.raises(DataNotFound) as caught:
            data.read(uri, 0, 1)
        assert caught.value.uri == uri and uri in str(caught.value)
    with pytest.raises(MalformedURI, match="bucket/key"):
        data.stat(s3)


def test_s3_presigned_url_reads_over_http(s3: str, moto_endpoint: str) -> None:
    import boto3

    blob = _bytes(10_000, seed=3)
    uri = f"{s3}/signed.bin"
    data.write(uri, blob)
    url = boto3.client("s3", endpoint_url=moto_endpoint).generate_presigned_url(
        "get_object", Params={"Bucket": s3.removeprefix("s3://"), "Key": "signed.bin"}, ExpiresIn=300)
    assert url.startswith("http://127.0.0.1") and "Signature" in url
    assert data.read(url, 5000, 10) == blob[5000:5010]
    assert data.stat(url).version == data.stat(uri).version  # the same ETag either way


# -- ipfs ---------------------------------------------------------------------------------------

def test_ipfs_file_and_path_in_folder(cats_home: Path, tmp_path: Path) -> None:
    blob = _bytes(700_000, seed=5)  # several 256 KiB chunks: a real tree
    folder = tmp_path / "folder"
    (folder / "inner").mkdir(parents=True)
    (folder / "inner" / "f.bin").write_bytes(blob)
    with Importer(open_store()) as importer:
        file_cid = importer.add_bytes(blob).cid
        *_, top = importer.add_path(folder)
    assert data.read(f"ipfs://{file_cid}", 300_000, 10) == blob[300_000:300_010]
    uri = f"ipfs://{top.cid}/inner/f.bin"
    info = data.stat(uri)
    assert (info.size, info.version) == (700_000, str(file_cid))
    assert data.read(uri, 262_140, 10) == blob[262_140:262_150]  # across a chunk boundary
    with pytest.raises(DataNotFound, match="missing"):
        data.read(f"ipfs://{top.cid}/inner/missing")
    with pytest.raises(DataError, match="is a dir, not a file"):
        data.read(f"ipfs://{top.cid}/inner")
    with pytest.raises(MalformedURI, match="ipfs://CID"):
        data.read("ipfs://not-a-cid/x")
    with pytest.raises(UnsupportedScheme, match="read-only"):
        data.write(uri, b"x")


# -- schemes and URIs ---------------------------------------------------------------------------

def test_unsupported_and_malformed_uris() -> None:
    with pytest.raises(UnsupportedScheme, match=r"gs:// is not supported yet \(in gs://bucket/key\)"):
        data.read("gs://bucket/key")
    with pytest.raises(UnsupportedScheme, match=r"no resolver for ftp:// .*supported: .*s3://"):
        data.stat("ftp://host/x")
    for bad in ["", "no-scheme", "/abs/path", "1http://x/y", "http://x/\n", "mem:/one-slash"]:
        with pytest.raises(MalformedURI, match="URI|is not"):
            data.read(bad)
    with pytest.raises(MalformedURI, match="name/key"):
        data.read("mem://only-a-name")
    with pytest.raises(MalformedURI, match="host/path"):
        data.read("http:///no-host")
    with pytest.raises(DataError, match="must not be negative"):
        data.read("mem://n/k", -1)


class _Alias(MemResolver):
    """mem:// under another scheme name."""

    def stat(self, uri: str) -> data.Info:
        return super().stat(uri.replace("test-alias://", "mem://"))

    def _fetch(self, uri: str, offset: int, n: int) -> tuple[bytes, str | None]:
        return super()._fetch(uri.replace("test-alias://", "mem://"), offset, n)


def test_register_a_scheme(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(data.SCHEMES, "test-alias", lambda uri, reach: _Alias())
    data.write("mem://alias/k", b"aliased")
    assert data.read("test-alias://alias/k", 2) == b"iased"
    assert isinstance(data.resolve("test-alias://x/y"), _Alias)


# -- pins -----------------------------------------------------------------------------------------

def _sources(tmp_path: Path, http: FileServer, s3_prefix: str, monkeypatch: pytest.MonkeyPatch,
             scheme: str) -> Callable[[bytes], str]:
    """A writer for one scheme: stores bytes under a fixed URI and returns it."""
    if scheme == "file":
        monkeypatch.setenv("CATS_DATA_ROOTS", str(tmp_path))
        return lambda blob: data.write((tmp_path / "p.bin").as_uri(), blob).uri
    if scheme == "http":
        return lambda blob: http.put("/p.bin", blob)
    if scheme == "s3":
        return lambda blob: data.write(f"{s3_prefix}/p.bin", blob).uri
    return lambda blob: data.write("mem://pins/p.bin", blob).uri


@pytest.mark.parametrize("scheme", ["mem", "file", "http", "s3"])
def test_changed_source_fails_pinned_reads(scheme: str, tmp_path: Path, http_server: FileServer,
                                           s3: str, monkeypatch: pytest.MonkeyPatch) -> None:
    put = _sources(tmp_path, http_server, s3, monkeypatch, scheme)
    uri = put(b"version one, 25 bytes....")
    info = data.pin(uri)
    assert data.read(uri, 8, 3, expect=info) == b"one"
    reader = data.open(uri)  # pins implicitly: its reads never mix versions
    assert reader.read(7) == b"version"
    put(b"version two, longer than before")
    with pytest.raises(DataIntegrityError, match="changed since it was pinned") as caught:
        data.read(uri, 8, 3, expect=info)
    assert caught.value.uri == uri
    with pytest.raises(DataIntegrityError):
        reader.read(3)
    with pytest.raises(DataIntegrityError):
        data.open(uri, expect=info)
    assert data.read(uri, 8, 3) == b"two"  # unpinned reads see the new version
