"""The Data Service as a real process on loopback, reading real sources (the loopback HTTP server, file://).

One service runs for the module (`service`); the restart test runs its own. Clients are the CLI
(subprocesses), raw httpx, and the project's own http resolver reading signed URLs by range.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import signal
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import Result
from servers import FileServer, free_port

from cats import data
from cats.data.service import signing
from cats.data.service.db import ServiceDB
from cats.errors import DataError, DataForbidden, DataNotFound, DataUnavailable

SERVICE_MAX_FETCH = 100_000  # the service's CATS_DATA_MAX_FETCH
PRINCIPALS = ("alice", "bob", "carol")


def _bytes(n: int, seed: int = 3) -> bytes:
    return random.Random(seed).randbytes(n)


@dataclass
class Service:
    """`cats data serve` in a subprocess, with its own CATS_HOME and file:// root."""

    base: Path
    port: int = field(default_factory=free_port)
    tokens: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def home(self) -> Path:
        return self.base / "home"

    @property
    def roots(self) -> Path:
        return self.base / "data"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self, **extra: str) -> dict[str, str]:
        """The operator's settings: a data root, and the loopback sources of these tests allowed."""
        return {**os.environ, "CATS_HOME": str(self.home), "CATS_DATA_ROOTS": str(self.roots),
                "CATS_DATA_ALLOW_HOSTS": "127.0.0.1", "CATS_DATA_MAX_FETCH": str(SERVICE_MAX_FETCH),
                "CATS_DATA_TIMEOUT": "1", "CATS_DATA_RETRIES": "0", **extra}

    def add_principals(self, *names: str) -> None:
        folder = self.home / "dataservice"
        folder.mkdir(parents=True, exist_ok=True)
        db = ServiceDB(folder / "state.sqlite")
        for name in names:
            self.tokens[name] = signing.new_token()
            db.add_principal(name, signing.token_digest(self.tokens[name]), time.time())
        db.close()

    def start(self) -> None:
        self.roots.mkdir(parents=True, exist_ok=True)
        self.home.mkdir(parents=True, exist_ok=True)
        with open(self.base / "serve.out", "ab") as out, open(self.base / "serve.err", "ab") as err:
            self.proc = subprocess.Popen([sys.executable, "-m", "cats", "data", "serve", "--port", str(self.port)],
                                        stdout=out, stderr=err, env=self.env(), cwd=self.base)  # CATS_HOME in it
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert self.proc.poll() is None, (self.base / "serve.err").read_text()
            assert time.monotonic() < deadline, "the data service did not start"
            time.sleep(0.05)

    def stop(self) -> None:
        """SIGTERM; the service must shut down cleanly: exit status 0, no traceback."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=15)
        err = (self.base / "serve.err").read_text()
        assert code == 0, err
        assert "Traceback" not in err, err
        assert "stopped" in err
        self.proc = None

    def cli(self, *args: str, token: str | None = "alice") -> Result:
        env = self.env(CATS_HOME=str(self.base / "client-home"), CATS_DATA_SERVICE=self.url,
                       CATS_DATA_TOKEN=self.tokens.get(token or "", ""))
        proc = subprocess.run([sys.executable, "-m", "cats", *args], capture_output=True, env=env, timeout=120)
        return Result(proc.returncode, proc.stdout.decode(), proc.stderr.decode(), proc.stdout)

    def http(self, name: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.tokens[name]}"} if name else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)

    def register(self, uri: str, owner: str = "alice", **body: object) -> str:
        with self.http(owner) as client:
            response = client.post("/data/register", json={"uri": uri, **body})
        assert response.status_code == 201, response.text
        return response.json()["handle"]

    def sign(self, handle: str, who: str = "alice", **body: object) -> str:
        with self.http(who) as client:
            response = client.post("/data/sign", json={"handle": handle, **body})
        assert response.status_code == 200, response.text
        return response.json()["signed_uri"]

    def fetch(self, url: str, who: str | None = "alice", **headers: str) -> httpx.Response:
        with self.http(who) as client:
            return client.get(url, headers=headers)


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    svc = Service(tmp_path_factory.mktemp("data-service"))
    svc.add_principals(*PRINCIPALS)
    svc.start()
    try:
        yield svc
    finally:
        if svc.proc is not None:
            svc.stop()


@pytest.fixture(autouse=True)
def client_env(service: Service, monkeypatch: pytest.MonkeyPatch) -> None:
    """This process reads signed URLs as alice through the http resolver, quickly failing."""
    monkeypatch.setenv("CATS_DATA_SERVICE", service.url)
    monkeypatch.setenv("CATS_DATA_TOKEN", service.tokens["alice"])
    monkeypatch.setenv("CATS_DATA_RETRIES", "0")
    monkeypatch.setenv("CATS_DATA_TIMEOUT", "10")
    monkeypatch.delenv("CATS_DATA_MAX_FETCH", raising=False)


def _detail(response: httpx.Response) -> str:
    assert response.headers["content-type"].startswith("application/json"), response.headers
    return response.json()["detail"]


def _with(url: str, **changes: str | int) -> str:
    """The signed URL with some query fields replaced."""
    parts = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    query.update({k: str(v) for k, v in changes.items()})
    return parts._replace(query=urlencode(query)).geturl()


def _parquet(rows: int = 16_000, group: int = 4_000) -> tuple[pa.Table, bytes]:  # groups < SERVICE_MAX_FETCH
    rng = random.Random(11)
    table = pa.table({"x": [rng.random() for _ in range(rows)], "k": [rng.getrandbits(60) for _ in range(rows)]})
    buffer = io.BytesIO()
    pq.write_table(table, buffer, row_group_size=group, compression="none")
    return table, buffer.getvalue()


# -- round trips ------------------------------------------------------------------------------------

def test_cli_register_get_sign_round_trip(service: Service, monkeypatch: pytest.MonkeyPatch) -> None:
    array = np.arange(600, dtype="<f4").reshape(20, 30)
    path = service.roots / "a.npy"
    np.save(path, array)
    uri = path.as_uri()
    res = service.cli("data", "register", uri, "--reader", "bob", "--checksum", "--ttl", "3600", "--json")
    assert res.code == 0, res.err
    registered = json.loads(res.out)
    meta = registered["meta"]
    assert (meta["format"], meta["dtype"], meta["shape"], meta["layout"]) == ("npy", "float32", [20, 30], "C")
    assert meta["size"] == path.stat().st_size
    assert meta["checksums"]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert meta["checksums"]["version"]
    (chunk,) = meta["chunking"]["chunks"]
    assert path.read_bytes()[chunk["offset"]:] == array.tobytes()  # the data block is where the meta says
    assert (registered["owner"], registered["readers"], registered["uris"]) == ("alice", ["bob"], [uri])
    handle = registered["handle"]

    res = service.cli("data", "get", handle, "--json", token="bob")
    assert res.code == 0, res.err
    assert json.loads(res.out) == registered

    res = service.cli("data", "sign", handle, "--ttl", "60", "--json", token="bob")
    assert res.code == 0, res.err
    signed = json.loads(res.out)
    assert signed["sub"] == "bob" and signed["signed_uri"].startswith(f"{service.url}/d/{handle}?")
    assert 0 < datetime.fromisoformat(signed["expires_at"]).timestamp() - time.time() <= 61

    monkeypatch.setenv("CATS_DATA_TOKEN", service.tokens["bob"])  # bound to bob: read it as bob
    assert data.read(signed["signed_uri"], chunk["offset"] + 40, 80) == array.tobytes()[40:120]


def test_raw_http_round_trip_and_ranges(service: Service, http_server: FileServer) -> None:
    blob = _bytes(50_000)
    source = http_server.put("/blob.bin", blob)
    with service.http("alice") as alice:
        response = alice.post("/data/register", json={"uri": source, "readers": ["bob"],
                                                      "meta": {"format": "bin", "attrs": {"k": 1}}})
        assert response.status_code == 201, response.text
        registered = response.json()
        assert (registered["uri"], registered["meta"]["attrs"], registered["expires_at"]) == (source, {"k": 1}, None)
        handle = registered["handle"]
        assert alice.get(f"/data/{handle}").json() == registered
        response = alice.post("/data/sign", json={"handle": handle, "ttl_s": 60})
        assert response.status_code == 200, response.text
        signed = response.json()["signed_uri"]

        part = alice.get(signed, headers={"Range": "bytes=100-199"})
        assert part.status_code == 206 and part.content == blob[100:200]
        assert part.headers["content-range"] == "bytes 100-199/50000"
        assert part.headers["etag"] == data.stat(source).version  # the source's version
        whole = alice.get(signed)
        assert whole.status_code == 200 and whole.content == blob and whole.headers["accept-ranges"] == "bytes"
        assert alice.get(signed, headers={"Range": "bytes=-10"}).content == blob[-10:]
        assert alice.get(signed, headers={"Range": "bytes=49990-"}).content == blob[49990:]
        for bad in ("bytes=0-1,5-6", "bytes=60000-", "bytes=9-3", "lines=1-2"):
            response = alice.get(signed, headers={"Range": bad})
            assert response.status_code == 416, bad
            assert response.headers["content-range"] == "bytes */50000" and bad in _detail(response)


def test_signed_url_reads_by_range_through_the_resolver(service: Service, http_server: FileServer,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    table, blob = _parquet()
    source = http_server.put("/t.parquet", blob)
    signed = service.sign(service.register(source))
    http_server.log.clear()
    parquet = pq.ParquetFile(data.open(signed))
    assert parquet.num_row_groups == 4
    assert parquet.read_row_group(2).equals(table.slice(8_000, 4_000))
    assert http_server.bytes_sent < len(blob) * 0.5, (http_server.bytes_sent, len(blob))  # ranges all the way
    info = data.pin(signed)
    assert info.size == len(blob) and info.version == data.stat(source).version
    assert data.read(signed, 1000, 24, expect=info) == blob[1000:1024]

    monkeypatch.delenv("CATS_DATA_TOKEN")
    with pytest.raises(DataForbidden, match="401") as caught:
        data.read(signed, 0, 4)
    assert caught.value.uri == signed


@contextmanager
def _recorder() -> Iterator[tuple[str, list[str | None]]]:
    """A loopback server that records each request's Authorization header and answers b"0123456789"."""
    seen: list[str | None] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            seen.append(self.headers.get("Authorization"))
            self.send_response(200)
            self.send_header("Content-Length", "10")
            self.end_headers()
            self.wfile.write(b"0123456789")

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


def test_bearer_token_goes_only_to_the_service_origin(service: Service, monkeypatch: pytest.MonkeyPatch) -> None:
    token = service.tokens["alice"]
    with _recorder() as (url, seen):
        assert data.read(url + "/x", 2, 3) == b"234"  # same host as the service, another port
        monkeypatch.setenv("CATS_DATA_SERVICE", url.replace("127.0.0.1", "localhost"))
        data.read(url + "/x", 0, 1)  # same port, another host name
        monkeypatch.setenv("CATS_DATA_SERVICE", "https://" + url.removeprefix("http://"))
        data.read(url + "/x", 0, 1)  # same host and port, another scheme
        assert seen == [None, None, None]
        monkeypatch.setenv("CATS_DATA_SERVICE", url + "/")
        data.read(url + "/any/path", 0, 1)
        assert seen[-1] == f"Bearer {token}"


# -- refusals ---------------------------------------------------------------------------------------

def test_forged_tampered_expired_and_foreign_signatures_are_403(service: Service,
                                                                http_server: FileServer) -> None:
    source = http_server.put("/s.bin", _bytes(1000))
    handle = service.register(source, readers=["bob"])
    signed = service.sign(handle)
    assert service.fetch(signed).status_code == 200
    exp = int(parse_qs(urlsplit(signed).query)["exp"][0])
    key = (service.home / "dataservice" / "key").read_bytes()
    past = int(time.time()) - 5
    expired = _with(signed, exp=past, sig=signing.signature(key, handle, source, "alice", past))  # genuine, late
    refused = [
        ("expired", expired, "alice"),
        ("does not match", _with(signed, exp=exp + 3600), "alice"),
        ("does not match", _with(signed, sub="bob"), "bob"),
        ("does not match", _with(signed, sig="0" * 64), "alice"),
        ("does not match", _with(signed, sig="zz"), "alice"),
        ("malformed", _with(signed, exp="soon"), "alice"),
        ("malformed", _with(signed, exp="9" * 40), "alice"),
        ("malformed", _with(signed, replica="\u00b2"), "alice"),  # a digit to str.isdigit, not to int()
        ("bound to alice, not bob", signed, "bob"),  # bob may read the dataset, but not with alice's URL
    ]
    for reason, url, who in refused:
        response = service.fetch(url, who)
        assert response.status_code == 403, (reason, url, response.text)
        assert reason in _detail(response) and handle in _detail(response)
    with pytest.raises(DataForbidden, match="403"):
        data.read(expired, 0, 10)  # the resolver, as alice

    response = service.fetch(signed, None)
    assert response.status_code == 401 and "missing bearer token" in _detail(response)
    assert response.headers["www-authenticate"] == "Bearer"
    response = httpx.get(signed, headers={"Authorization": "Bearer not-a-token"})
    assert response.status_code == 401 and "unknown bearer token" in _detail(response)


def test_only_owner_and_readers_get_in(service: Service, http_server: FileServer) -> None:
    handle = service.register(http_server.put("/r.bin", b"r" * 10), readers=["bob"])
    with service.http("bob") as bob, service.http("carol") as carol, service.http() as nobody:
        assert bob.get(f"/data/{handle}").status_code == 200
        response = carol.get(f"/data/{handle}")
        assert response.status_code == 403 and f"{handle}: carol is neither" in _detail(response)
        assert carol.post("/data/sign", json={"handle": handle}).status_code == 403
        response = bob.get(f"/data/{handle}/log")
        assert response.status_code == 403 and "only its owner alice" in _detail(response)
        assert bob.delete(f"/data/{handle}").status_code == 403
        response = bob.get("/data/0123456789abcdef")
        assert response.status_code == 404 and "no dataset 0123456789abcdef" in _detail(response)
        assert nobody.get(f"/data/{handle}").status_code == 401
    service.cli("data", "get", handle, token="carol").error_line(handle, "carol", "HTTP 403")
    assert service.fetch(service.sign(handle, "bob"), "bob").content == b"r" * 10


def test_ttl_expiry_answers_410_and_keeps_the_record(service: Service, http_server: FileServer) -> None:
    handle = service.register(http_server.put("/ttl.bin", b"t" * 10), ttl_s=1.0)
    signed = service.sign(handle, ttl_s=3600)  # capped: a signature never outlives its dataset
    assert int(parse_qs(urlsplit(signed).query)["exp"][0]) <= time.time() + 1
    time.sleep(1.1)
    with service.http("alice") as alice:
        response = alice.get(f"/data/{handle}")
        assert response.status_code == 410 and f"dataset {handle} expired" in _detail(response)
        assert alice.post("/data/sign", json={"handle": handle}).status_code == 410
        assert service.fetch(signed).status_code == 403
        assert alice.get(f"/data/{handle}/log").status_code == 200  # kept: its owner still sees the log
        assert alice.delete(f"/data/{handle}").status_code == 204
        assert alice.get(f"/data/{handle}").status_code == 404


def _datasets(service: Service) -> int:
    db = sqlite3.connect(f"file:{service.home / 'dataservice' / 'state.sqlite'}?mode=ro", uri=True)
    try:
        return db.execute("SELECT count(*) FROM datasets").fetchone()[0] + \
            db.execute("SELECT count(*) FROM uris").fetchone()[0]
    finally:
        db.close()


def test_register_refuses_bad_input_with_422_naming_it(service: Service) -> None:
    before = _datasets(service)
    with service.http("alice") as alice:
        for uri, reason in [("not a uri", "not a URI"), ("gs://bucket/key", "not supported yet"),
                            ("ftp://host/x", "no resolver for ftp://"), ("http:///no-host", "malformed"),
                            ("mem://k/v", "one process's memory")]:
            response = alice.post("/data/register", json={"uri": uri})
            assert response.status_code == 422, (uri, response.text)
            assert uri in _detail(response) and reason in _detail(response)
        response = alice.post("/data/register", json={"uri": "https://h/ok", "replicas": ["gs://b/k"]})
        assert response.status_code == 422 and "gs://b/k" in _detail(response)  # all or nothing
        response = alice.post("/data/register", json={"uri": "https://h/ok", "readers": ["mallory"]})
        assert response.status_code == 422 and "unknown readers mallory" in _detail(response)
        for body, field_name in [({"uri": "https://h/ok", "ttl_s": -1}, "ttl_s"),
                                 ({"uri": "https://h/ok", "meta": {"colour": "red"}}, "colour"),
                                 ({"uri": "https://h/ok", "meta": {"shape": [-1]}}, "shape")]:
            response = alice.post("/data/register", json=body)
            assert response.status_code == 422 and field_name in _detail(response)
    assert _datasets(service) == before
    service.cli("data", "register", "gs://b/k", "--no-inspect").error_line("gs://b/k", "not supported yet", "422")
    service.cli("data", "register", "gs://b/k").error_line("gs://b/k", "not supported yet")  # refused before sending


def test_sign_bounds_and_replicas(service: Service, http_server: FileServer) -> None:
    first, second = http_server.put("/one", b"1" * 10), http_server.put("/two", b"2" * 10)
    handle = service.register(first, replicas=[second])
    with service.http("alice") as alice:
        for body, why in [({"ttl_s": 0}, "ttl_s"), ({"ttl_s": 86401}, "ttl_s"), ({"replica": 2}, "no replica 2")]:
            response = alice.post("/data/sign", json={"handle": handle, **body})
            assert response.status_code == 422 and why in _detail(response), response.text
    assert service.fetch(service.sign(handle, replica=1)).content == b"2" * 10
    assert service.fetch(service.sign(handle)).content == b"1" * 10


# -- limits and source errors -----------------------------------------------------------------------

def test_oversized_fetch_is_413(service: Service, http_server: FileServer) -> None:
    blob = _bytes(SERVICE_MAX_FETCH + 50_000)
    signed = service.sign(service.register(http_server.put("/big.bin", blob)))
    http_server.log.clear()
    response = service.fetch(signed)
    assert response.status_code == 413 and f"CATS_DATA_MAX_FETCH={SERVICE_MAX_FETCH}" in _detail(response)
    assert http_server.bytes_sent <= 1  # only the service's one-byte stat reached the source
    assert service.fetch(signed, Range=f"bytes=0-{SERVICE_MAX_FETCH}").status_code == 413
    response = service.fetch(signed, Range=f"bytes=10-{SERVICE_MAX_FETCH + 9}")
    assert response.status_code == 206 and response.content == blob[10:SERVICE_MAX_FETCH + 10]
    with pytest.raises(DataError, match="413"):
        data.read(signed)
    assert data.read(signed, 5, 10) == blob[5:15]


def test_source_errors_map_to_clear_statuses(service: Service, http_server: FileServer,
                                             tmp_path: Path) -> None:
    missing = http_server.url + "/missing.bin"
    flaky = http_server.put("/flaky.bin", b"x" * 10)
    http_server.fail["/flaky.bin"] = 503
    (service.base / "secret.txt").write_bytes(b"secret")
    escape = f"file://{service.roots}/../secret.txt"
    os.symlink(service.base / "secret.txt", service.roots / "link.txt")
    link = (service.roots / "link.txt").as_uri()
    cache = data.Cache(tmp_path / "cache")
    for uri, status, error, reason in [(missing, 404, DataNotFound, "not found"),
                                       (flaky, 502, DataUnavailable, "HTTP 503"),
                                       (escape, 403, DataForbidden, "outside the data roots"),
                                       (link, 403, DataForbidden, "outside the data roots")]:
        handle = service.register(uri)
        signed = service.sign(handle)
        response = service.fetch(signed)
        assert response.status_code == status, (uri, response.text)
        assert handle in _detail(response) and uri in _detail(response) and reason in _detail(response)
        with pytest.raises(error):
            data.read(signed, 0, 4, cache=cache)
    assert cache.stats()["entries"] == 0 and cache.counts["errors"] == 4  # nothing cached wrongly
    http_server.delay = 3  # past the service's CATS_DATA_TIMEOUT=1
    slow = service.sign(service.register(http_server.put("/slow.bin", b"s" * 10)))
    response = service.fetch(slow)
    assert response.status_code == 504 and "/slow.bin" in _detail(response) and "1 s" in _detail(response)


# -- the access log, restarts, the API document, stats, help --------------------------------------------

def test_access_log_records_allowed_and_denied(service: Service, http_server: FileServer) -> None:
    handle = service.register(http_server.put("/log.bin", _bytes(100)), readers=["bob"])
    with service.http("bob") as bob, service.http("carol") as carol, service.http() as nobody:
        assert bob.get(f"/data/{handle}").status_code == 200
        assert carol.get(f"/data/{handle}").status_code == 403
        assert nobody.get(f"/data/{handle}").status_code == 401
    signed = service.sign(handle)
    assert service.fetch(signed, Range="bytes=10-19").status_code == 206
    assert service.fetch(signed, "bob").status_code == 403
    res = service.cli("data", "log", handle, "--json")
    assert res.code == 0, res.err
    entries = [(e["principal"], e["action"], e["status"], e["bytes"]) for e in json.loads(res.out)]
    assert entries == [("alice", "register", 201, 0), ("bob", "get", 200, 0), ("carol", "get", 403, 0),
                       (None, "get", 401, 0), ("alice", "sign", 200, 0), ("alice", "fetch", 206, 10),
                       ("bob", "fetch", 403, 0)]
    assert "bound to alice" in json.loads(res.out)[-1]["detail"]


@pytest.mark.slow
def test_restart_loses_nothing(tmp_path: Path, http_server: FileServer) -> None:
    svc = Service(tmp_path)
    svc.home.mkdir(parents=True)
    for name in ("alice", "bob"):
        res = subprocess.run([sys.executable, "-m", "cats", "data", "token", "add", name, "--json"],
                             capture_output=True, env=svc.env(), timeout=60)
        assert res.returncode == 0, res.stderr
        added = json.loads(res.stdout)
        assert added["principal"] == name
        svc.tokens[name] = added["token"]
    again = subprocess.run([sys.executable, "-m", "cats", "data", "token", "add", "bob"], capture_output=True,
                           env=svc.env(), timeout=60)
    Result(again.returncode, "", again.stderr.decode(), b"").error_line("bob", "--rotate")
    blob = _bytes(5000)
    svc.start()
    try:
        key_file = svc.home / "dataservice" / "key"
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        key = key_file.read_bytes()
        handle = svc.register(http_server.put("/keep.bin", blob), readers=["bob"], meta={"dtype": "uint8"})
        signed = svc.sign(handle, "bob")
        assert svc.fetch(signed, "bob").content == blob
        with svc.http("alice") as alice:
            before = alice.get(f"/data/{handle}").json()
        svc.stop()
        with pytest.raises(httpx.TransportError):
            httpx.get(svc.url + "/health")
        svc.start()
        assert key_file.read_bytes() == key
        with svc.http("alice") as alice:
            assert alice.get(f"/data/{handle}").json() == before  # the dataset and alice's token
            assert svc.fetch(signed, "bob").content == blob  # bob's token, and the earlier signature
            actions = [(e["principal"], e["action"]) for e in alice.get(f"/data/{handle}/log").json()["entries"]]
        assert actions == [("alice", "register"), ("bob", "sign"), ("bob", "fetch"), ("alice", "get"),
                           ("alice", "get"), ("bob", "fetch")]
    finally:
        if svc.proc is not None:
            svc.stop()


def test_openapi_lists_every_route_with_its_models(service: Service) -> None:
    doc = httpx.get(service.url + "/openapi.json").json()
    routes = {(method, path): op for path, ops in doc["paths"].items() for method, op in ops.items()}
    success = {("post", "/data/register"): ("201", "Dataset"), ("get", "/data/{handle}"): ("200", "Dataset"),
               ("delete", "/data/{handle}"): ("204", None), ("get", "/data/{handle}/log"): ("200", "AccessLog"),
               ("post", "/data/sign"): ("200", "Signed"), ("get", "/d/{handle}"): ("206", "binary"),
               ("get", "/health"): ("200", "Health")}
    assert set(routes) == set(success)
    schemas = doc["components"]["schemas"]
    for route, (code, model) in success.items():
        responses = routes[route]["responses"]
        content = responses[code].get("content", {})
        if model == "binary":
            assert content["application/octet-stream"]["schema"]["format"] == "binary"
        elif model:
            ref = content["application/json"]["schema"]["$ref"]
            assert ref == f"#/components/schemas/{model}" and model in schemas
        errors = {c: r for c, r in responses.items() if c.startswith(("4", "5"))}
        assert bool(errors) == (route != ("get", "/health")), route
        for r in errors.values():
            assert r["content"]["application/json"]["schema"]["$ref"] == "#/components/schemas/ErrorBody", route
        assert ("security" in routes[route]) == (route != ("get", "/health"))
    assert set(routes[("get", "/d/{handle}")]["responses"]) >= {"200", "206", "401", "403", "404", "410", "413",
                                                                "416", "502", "504"}
    body = routes[("post", "/data/register")]["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    assert body.endswith("/RegisterRequest")
    assert {"dtype", "shape", "layout", "partitioning", "chunking", "checksums", "size", "format"} <= \
        set(schemas["Meta"]["properties"])
    assert "HTTPValidationError" not in schemas  # every error, validation included, is an ErrorBody


def test_stats_json_after_a_cached_read(service: Service, http_server: FileServer, cli) -> None:
    signed = service.sign(service.register(http_server.put("/c.bin", _bytes(3000))))
    cache = data.Cache()  # CATS_HOME/cache/data of this test, which `cli` shares
    assert data.read(signed, 100, 1000, cache=cache) == data.read(signed, 100, 1000, cache=cache)
    cache.flush()
    res = cli("data", "stats", "--json")
    assert res.code == 0, res.err
    stats = json.loads(res.out)
    assert (stats["hits"], stats["misses"], stats["bytes_in"], stats["bytes_out"]) == (1, 1, 1000, 2000)
    assert stats["entries"] == 1 and stats["bytes_stored"] > 1000 and stats["mean_fetch_s"] > 0


def test_serve_refuses_a_port_in_use(service: Service) -> None:
    service.cli("data", "serve", "--port", str(service.port)).error_line("cannot listen", str(service.port))


def test_every_command_has_help() -> None:
    from typer.testing import CliRunner

    from cats.cli import app

    runner = CliRunner()
    for command, phrase in [([], "Datasets by URI"), (["serve"], "Run the Data Service"),
                            (["register"], "Register a URI"), (["get"], "Show a dataset"),
                            (["sign"], "streams the dataset"), (["log"], "who accessed"),
                            (["rm"], "Forget a dataset"), (["stats"], "data cache"), (["token"], "Principals"),
                            (["token", "add"], "bearer token")]:
        result = runner.invoke(app, ["data", *command, "--help"])
        assert result.exit_code == 0 and phrase in " ".join(result.output.split()), (command, result.output)
