"""Attacks on the Data Service's defaults, over real HTTP on loopback: a token holder asking it to read
the node's secrets through file://, to fetch loopback or link-local addresses for them (SSRF), or
to hand out blocks of the store that were never published.

Three services run for the module, as three operators would configure them:
`bare` sets nothing (the defaults); `operated` serves a root that contains CATS_HOME and allows the
loopback addresses 127.0.0.1 and ::1; `named` allows the host name `localhost` only.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from conftest import Result
from hypothesis import given, settings
from hypothesis import strategies as st
from servers import FileServer, serving
from test_data_service import PRINCIPALS, Service

from cats.cas.importer import Importer
from cats.cas.pins import Pins
from cats.cas.store.local import LocalStore
from cats.data.reach import Reach
from cats.data.resolvers.file import FileResolver
from cats.errors import DataForbidden

SECRET = b"the node's private key"


@dataclass
class Operated(Service):
    """A service whose operator settings replace the defaults of `Service.env` (None: unset)."""

    settings: dict[str, str | None] = field(default_factory=dict)

    def env(self, **extra: str) -> dict[str, str]:
        env = super().env(**extra)
        for name, value in self.settings.items():
            if value is None:
                env.pop(name, None)
            else:
                env[name] = value
        return env

    def attempt(self, uri: str, who: str = "alice") -> httpx.Response:
        """Register `uri`, sign it and fetch it through the signed URL: what any token holder may do."""
        return self.fetch(self.sign(self.register(uri, who), who), who)


def _started(base: Path, **settings: str | None) -> Operated:
    svc = Operated(base, settings=settings)
    svc.add_principals(*PRINCIPALS)
    svc.start()
    return svc


@pytest.fixture(scope="module")
def bare(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Operated]:
    """The defaults: no CATS_DATA_ROOTS, no allow-list; started in the folder holding its CATS_HOME."""
    svc = _started(tmp_path_factory.mktemp("bare"), CATS_DATA_ROOTS=None, CATS_DATA_ALLOW_HOSTS=None)
    yield svc
    svc.stop()


@pytest.fixture(scope="module")
def operated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Operated]:
    """A root that contains CATS_HOME (the service's base folder), and both loopback addresses allowed."""
    base = tmp_path_factory.mktemp("operated")
    svc = _started(base, CATS_DATA_ROOTS=str(base), CATS_DATA_ALLOW_HOSTS="127.0.0.1, ::1")
    yield svc
    svc.stop()


@pytest.fixture(scope="module")
def named(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Operated]:
    svc = _started(tmp_path_factory.mktemp("named"), CATS_DATA_ALLOW_HOSTS="localhost")
    yield svc
    svc.stop()


@pytest.fixture(scope="module")
def target() -> Iterator[FileServer]:
    """A loopback server holding something only the machine itself should see."""
    with serving() as state:
        state.put("/secret", SECRET)
        yield state


@pytest.fixture(scope="module")
def target6() -> Iterator[FileServer]:
    with serving("::1") as state:
        state.put("/secret", SECRET)
        yield state


def _detail(response: httpx.Response) -> str:
    return response.json()["detail"]


def _port(server: FileServer) -> int:
    return int(server.url.rsplit(":", 1)[1])


# -- file:// ----------------------------------------------------------------------------------------

def test_no_roots_serves_no_file_at_all(bare: Operated) -> None:
    """The reported attack: CATS_HOME inside the working directory, no CATS_DATA_ROOTS set."""
    (bare.base / "shared.txt").write_bytes(b"in the working directory")
    for path in [bare.home / "dataservice" / "key", bare.home / "dataservice" / "state.sqlite",
                 bare.base / "shared.txt"]:
        response = bare.attempt(path.as_uri())
        assert response.status_code == 403, (path, response.text)
        detail = _detail(response)
        assert "set CATS_DATA_ROOTS" in detail and path.as_uri() in detail and "\n" not in detail
        assert (bare.home / "dataservice" / "key").read_bytes() not in response.content


def test_escapes_from_a_root_are_refused(operated: Operated, tmp_path_factory: pytest.TempPathFactory) -> None:
    outside = tmp_path_factory.mktemp("outside") / "secret.txt"
    outside.write_bytes(SECRET)
    data = operated.base / "data"
    (data / "sub").mkdir(parents=True, exist_ok=True)
    (data / "ok.txt").write_bytes(b"shared")
    os.symlink(outside, data / "out-link.txt")
    os.symlink(outside.parent, data / "out-dir")
    escapes = [f"file://{data}/sub/../../../{outside.parent.name}/secret.txt",
               f"file://{data}/%2e%2e/%2e%2e/{outside.parent.name}/secret.txt",  # `..` percent-encoded
               (data / "out-link.txt").as_uri(), f"file://{data}/out-dir/secret.txt", outside.as_uri()]
    for uri in escapes:
        response = operated.attempt(uri)
        assert response.status_code == 403, (uri, response.text)
        assert "outside the data roots" in _detail(response) and uri in _detail(response)
        assert SECRET not in response.content
    ok = operated.attempt((data / "ok.txt").as_uri())
    assert ok.status_code == 200 and ok.content == b"shared"  # the root itself is served


def test_cats_home_is_never_served_even_inside_a_root(operated: Operated) -> None:
    home = operated.home
    assert home.parent == operated.base  # CATS_HOME lies inside the root `operated` serves
    (home / "identity").mkdir(exist_ok=True)
    (home / "identity" / "key").write_bytes(SECRET)
    data = operated.base / "data"
    data.mkdir(exist_ok=True)
    os.symlink(home / "dataservice" / "key", data / "hmac-link")
    os.symlink(home, data / "home-link")
    attacks = [home / "dataservice" / "key", home / "dataservice" / "state.sqlite", home / "identity" / "key",
               data / "hmac-link", data / "home-link" / "identity" / "key"]
    for path in attacks:
        uri = path.as_uri()
        response = operated.attempt(uri)
        assert response.status_code == 403, (uri, response.text)
        assert "inside CATS_HOME" in _detail(response) and uri in _detail(response)
        assert SECRET not in response.content
    for uri in [f"file://{data}/../home/dataservice/key", f"file://{home}/identity/../dataservice/key"]:
        assert operated.attempt(uri).status_code == 403, uri


def test_a_fifo_in_a_root_is_refused_without_hanging(operated: Operated) -> None:
    fifo = operated.base / "data" / "pipe"
    fifo.parent.mkdir(exist_ok=True)
    os.mkfifo(fifo)
    response = operated.attempt(fifo.as_uri())
    assert response.status_code == 502 and "not a regular file" in _detail(response)


def test_a_root_inside_cats_home_stops_the_service(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / "blocks").mkdir(parents=True)
    env = {**os.environ, "CATS_HOME": str(home), "CATS_DATA_ROOTS": str(home / "blocks")}
    proc = subprocess.run([sys.executable, "-m", "cats", "data", "serve", "--port", "0"], capture_output=True,
                          env=env, timeout=60)
    Result(proc.returncode, proc.stdout.decode(), proc.stderr.decode(), proc.stdout).error_line(
        "CATS_DATA_ROOTS", str(home / "blocks"), "inside CATS_HOME")


def test_the_opened_file_is_checked_again(tmp_path: Path) -> None:
    """A symlink swapped in after the path check: the descriptor's own path is what counts."""
    root, outside = tmp_path / "root", tmp_path / "outside.txt"
    root.mkdir()
    (root / "in.txt").write_bytes(b"in")
    outside.write_bytes(SECRET)
    reach = Reach(roots=(str(root),), hidden=())
    checked = reach.path("file:///in", str(root / "in.txt"))
    fd = os.open(outside, os.O_RDONLY)  # what the open would reach had in.txt become a link to outside
    try:
        with pytest.raises(DataForbidden, match="outside the data roots"):
            reach.opened("file:///in", fd, checked)
    finally:
        os.close(fd)


# -- SSRF ---------------------------------------------------------------------------------------------

def _spellings(port: int) -> list[str]:
    return [f"http://127.0.0.1:{port}/secret", f"http://0x7f000001:{port}/secret", f"http://2130706433:{port}/secret",
            f"http://127.1:{port}/secret", f"http://localhost:{port}/secret", f"http://[::ffff:127.0.0.1]:{port}/secret"]


def test_loopback_and_link_local_are_refused_by_default(bare: Operated, target: FileServer,
                                                        target6: FileServer) -> None:
    port, port6 = _port(target), _port(target6)
    target.log.clear()
    target6.log.clear()
    for uri in [*_spellings(port), f"http://[::1]:{port6}/secret", "http://169.254.169.254/latest/meta-data/",
                "http://[fe80::1]:80/x", "http://10.0.0.1:9/x", "http://0.0.0.0:9/x", "http://224.0.0.1:9/x",
                f"https://127.0.0.1:{port}/secret"]:
        response = bare.attempt(uri)
        assert response.status_code == 403, (uri, response.text)
        detail = _detail(response)
        assert "refusing to connect" in detail and "CATS_DATA_ALLOW_HOSTS" in detail and uri in detail, detail
    assert target.log == [] and target6.log == []  # not one request reached them


def test_the_allow_list_lets_the_operator_reach_them(operated: Operated, target: FileServer,
                                                     target6: FileServer) -> None:
    for uri in [*_spellings(_port(target)), f"http://[::1]:{_port(target6)}/secret"]:
        response = operated.attempt(uri)
        assert response.status_code == 200 and response.content == SECRET, (uri, response.text)
    response = operated.attempt("http://169.254.169.254:9/x")  # not allowed there: still refused
    assert response.status_code == 403 and "169.254.169.254 is link-local" in _detail(response)


def test_a_redirect_to_a_refused_address_is_refused(named: Operated, target: FileServer) -> None:
    port = _port(target)
    target.redirects.update({"/to-ip": f"http://127.0.0.1:{port}/secret",
                             "/to-name": f"http://localhost:{port}/secret"})
    target.log.clear()
    response = named.attempt(f"http://localhost:{port}/to-ip")  # localhost is allowed, 127.0.0.1 is not
    assert response.status_code == 403 and "refusing to connect to 127.0.0.1" in _detail(response)
    assert [s.path for s in target.log] == ["/to-ip"]  # the secret was never asked for
    response = named.attempt(f"http://localhost:{port}/to-name")  # redirects are followed, each hop checked
    assert response.status_code == 200 and response.content == SECRET
    assert named.attempt(f"http://127.0.0.1:{port}/secret").status_code == 403


def _ipv4_spelling(value: int, parts: int, radixes: list[str], upper: bool) -> str:
    """`value` as inet_aton reads it: `parts` numbers, the last one taking the remaining bytes."""
    fields = [(value >> (8 * (3 - i))) & 0xFF for i in range(parts - 1)]
    fields.append(value & ((1 << (8 * (5 - parts))) - 1))
    out = []
    for number, radix in zip(fields, radixes, strict=False):
        text = {"dec": str(number), "hex": f"0x{number:x}", "oct": f"0{number:o}"}[radix]
        out.append(text.upper().replace("0X", "0x") if upper else text)
    return ".".join(out)


@settings(max_examples=30, deadline=None)
@given(parts=st.integers(1, 4), radixes=st.lists(st.sampled_from(["dec", "hex", "oct"]), min_size=4, max_size=4),
       upper=st.booleans(), v6=st.sampled_from([None, "::ffff:127.0.0.1", "::ffff:7f00:1", "0:0:0:0:0:ffff:7f00:1",
                                                "::FFFF:127.0.0.1"]))
def test_no_spelling_of_loopback_gets_through(bare: Operated, target: FileServer, parts: int, radixes: list[str],
                                              upper: bool, v6: str | None) -> None:
    host = f"[{v6}]" if v6 else _ipv4_spelling(0x7F000001, parts, radixes, upper)
    uri = f"http://{host}:{_port(target)}/secret"
    target.log.clear()
    response = bare.attempt(uri)
    assert response.status_code in (403, 502), (uri, response.text)  # 502: a spelling httpx will not parse
    assert "refusing to connect" in _detail(response) or "malformed" in _detail(response), _detail(response)
    assert target.log == [] and SECRET not in response.content


# -- ipfs:// ----------------------------------------------------------------------------------------

def test_ipfs_serves_pinned_dags_only(bare: Operated) -> None:
    store = LocalStore(bare.home / "blocks")
    with Importer(store) as importer:
        private = importer.add_bytes(SECRET + b" (an Order's intermediate)").cid
        published = importer.add_bytes(b"published data").cid
    Pins(bare.home / "pins").add(store, published)
    response = bare.attempt(f"ipfs://{private}")
    assert response.status_code == 403, response.text
    assert f"{private} is not pinned" in _detail(response) and "cats pin add" in _detail(response)
    assert SECRET not in response.content
    response = bare.attempt(f"ipfs://{published}", "bob")
    assert response.status_code == 200 and response.content == b"published data"


def test_a_hard_link_to_a_cats_home_file_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A hard link inside a root has a real path of its own there: the file's identity gives it away. A
    hard-linked data file that is not CATS_HOME's still reads."""
    home, root = tmp_path / "home", tmp_path / "shared"
    (home / "identity").mkdir(parents=True)
    root.mkdir()
    (home / "identity" / "key").write_bytes(b"private key")
    os.link(home / "identity" / "key", root / "innocent.csv")
    (root / "data.csv").write_bytes(b"a,b\n")
    os.link(root / "data.csv", root / "copy.csv")
    monkeypatch.setenv("CATS_HOME", str(home))
    monkeypatch.setenv("CATS_DATA_ROOTS", str(root))
    resolver = FileResolver(Reach.service())
    with pytest.raises(DataForbidden, match="hard link"):
        resolver.read(f"file://{root}/innocent.csv")
    assert resolver.read(f"file://{root}/copy.csv") == b"a,b\n"
