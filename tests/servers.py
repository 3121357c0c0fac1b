"""Real servers on loopback for the tests: a ranged HTTP file server, moto's S3, a js-ipfs daemon.

The HTTP server answers single byte ranges the way RFC 9110 says (206 + Content-Range, 416 past
the end), and can be told to ignore Range, fail chosen paths, or stall; it logs every response
with the body bytes it actually sent, so tests can prove what crossed the wire.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

_RANGE = re.compile(r"bytes=(\d*)-(\d*)")
_CHUNK = 64 * 1024


@dataclass
class Served:
    """One response: the path, the Range asked for, the status and the body bytes handed to the socket."""

    path: str
    range: str | None
    status: int
    sent: int = 0


@dataclass
class FileServer:
    """What tests control: the files, failures by path, Range handling, a delay; and what was served."""

    url: str = ""
    files: dict[str, bytes] = field(default_factory=dict)
    etags: dict[str, str] = field(default_factory=dict)  # made once per put, as a real server keeps them
    fail: dict[str, int] = field(default_factory=dict)
    redirects: dict[str, str] = field(default_factory=dict)  # path -> Location of a 302
    ignore_range: bool = False
    delay: float = 0.0
    log: list[Served] = field(default_factory=list)
    stopping: threading.Event = field(default_factory=threading.Event)

    def put(self, path: str, data: bytes) -> str:
        self.etags[path] = '"' + hashlib.sha256(data).hexdigest()[:16] + '"'
        self.files[path] = data
        return self.url + path

    @property
    def bytes_sent(self) -> int:
        return sum(s.sent for s in self.log)


def _handler(state: FileServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:  # keep test output clean
            pass

        def do_GET(self) -> None:
            served = Served(self.path, self.headers.get("Range"), 200)
            state.log.append(served)
            if state.delay:
                state.stopping.wait(state.delay)
            if self.path in state.redirects:
                served.status = 302
                self._reply(served, b"", {"Location": state.redirects[self.path]})
                return
            if self.path in state.fail:
                served.status = state.fail[self.path]
                self._reply(served, b"failure\n", {})
                return
            data = state.files.get(self.path)
            if data is None:
                served.status = 404
                self._reply(served, b"not found\n", {})
                return
            headers = {"ETag": state.etags[self.path], "Accept-Ranges": "bytes"}
            match = _RANGE.fullmatch(served.range or "")
            first, last = match.groups() if match else ("", "")
            if state.ignore_range or not (first or last) or (first and last and int(last) < int(first)):
                self._reply(served, data, headers)  # no usable single range: the whole body, as RFC 9110 allows
                return
            if first:
                start, end = int(first), min(len(data) - 1, int(last) if last else len(data) - 1)
            else:  # a suffix range: the last n bytes
                start, end = max(0, len(data) - int(last)), len(data) - 1
            if start >= len(data):
                served.status = 416
                self._reply(served, b"", {**headers, "Content-Range": f"bytes */{len(data)}"})
                return
            served.status = 206
            self._reply(served, data[start:end + 1], {**headers, "Content-Range": f"bytes {start}-{end}/{len(data)}"})

        def _reply(self, served: Served, body: bytes, headers: dict[str, str]) -> None:
            # Bytes are counted before they are written: a client may return (and its test read the
            # log) as soon as it has what it needs, even the headers alone, so the first chunk is
            # counted before the headers go out. A chunk the client hung up on counts too, so upper
            # bounds checked against `sent` stay conservative.
            chunks = [body[i:i + _CHUNK] for i in range(0, len(body), _CHUNK)]
            try:
                served.sent += len(chunks[0]) if chunks else 0
                self.send_response(served.status)
                for name, value in {**headers, "Content-Length": str(len(body))}.items():
                    self.send_header(name, value)
                self.end_headers()
                for j, chunk in enumerate(chunks):
                    served.sent += len(chunk) if j else 0
                    self.wfile.write(chunk)
            except (BrokenPipeError, ConnectionResetError):  # the client hung up: it had what it needed
                self.close_connection = True

    return Handler


class _Server(ThreadingHTTPServer):
    """The loopback server, minus tracebacks for clients that drop idle keep-alive connections."""

    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)  # type: ignore[arg-type]


class _Server6(_Server):
    address_family = socket.AF_INET6


@contextmanager
def loopback(handler: type[BaseHTTPRequestHandler], host: str = "127.0.0.1") -> Iterator[str]:
    """`handler` served on a free loopback port (of `host`: 127.0.0.1 or ::1) for the duration of the
    block, in a thread; yields its URL."""
    server = (_Server6 if ":" in host else _Server)((host, 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://{f'[{host}]' if ':' in host else host}:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@contextmanager
def serving(host: str = "127.0.0.1") -> Iterator[FileServer]:
    """A FileServer on a free loopback port (of `host`: 127.0.0.1 or ::1) for the duration of the block."""
    state = FileServer()
    with loopback(_handler(state), host) as state.url:
        try:
            yield state
        finally:
            state.stopping.set()


@pytest.fixture
def http_server() -> Iterator[FileServer]:
    with serving() as state:
        yield state


# Ports Ray's components take by default (dashboard, its agent, GCS, Ray Client, ...): a port handed to one
# of our servers or to `ray start --ray-client-server-port` must not be one of them, or Ray refuses to start.
_RAY_DEFAULTS = {6379, 8076, 8265, 10001, 44217, 44227, 52365, 52366}


def free_port() -> int:
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _RAY_DEFAULTS:
            return port


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """moto's S3 on loopback, one per test session (it takes a moment to start)."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


# -- js-ipfs (kubo RPC API, offline), from tests/ipfsd, for what only it shows ----------------------------------
IPFSD = Path(__file__).resolve().parent / "ipfsd"


def _unavailable() -> str | None:
    if shutil.which("node") is None:
        return "`node` is not on PATH"
    if not (IPFSD / "node_modules" / "ipfs" / "package.json").is_file():
        return "tests/ipfsd/node_modules is not installed (run scripts/test or `npm ci --prefix tests/ipfsd`)"
    return None


@pytest.fixture(scope="session")
def js_ipfs_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The RPC API URL of an offline js-ipfs daemon running for the whole session."""
    reason = _unavailable()
    if reason:
        if os.environ.get("CI", "").strip().lower() in {"true", "1", "yes"}:
            pytest.fail(f"IPFS daemon unavailable: {reason} (CI=true: refusing to skip)", pytrace=False)
        pytest.skip(f"IPFS daemon unavailable: {reason}")
    repo = tmp_path_factory.mktemp("ipfs-repo")
    port = free_port()
    # its own session and process group, so stopping it never touches anything else
    proc = subprocess.run(["bash", str(IPFSD / "start.sh"), str(repo), str(port)], capture_output=True,
                          text=True, timeout=120, start_new_session=True)
    if proc.returncode != 0:
        pytest.fail(f"the IPFS daemon did not start:\n{proc.stderr}", pytrace=False)
    pid = int(proc.stdout.split()[-1])
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        _stop(pid)


def _stop(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    for _ in range(100):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
