"""What the HTTP services of CATs (the Data Service, the CAT Node) share: a private state folder, a
socket that listens before the app starts (so `--port 0` can print its real port), one JSON error
shape, and running under uvicorn until SIGINT or SIGTERM with a graceful shutdown and exit 0.

FastAPI and uvicorn are imported by the functions that need them, so importing this is cheap.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cats.config import home
from cats.errors import CatsError

if TYPE_CHECKING:
    from fastapi import FastAPI


def state_dir(name: str) -> Path:
    """`CATS_HOME/<name>/`, created private (0700) on first use."""
    path = home() / name
    if not path.exists():
        path.mkdir(mode=0o700, exist_ok=True)
        os.chmod(path, 0o700)  # mkdir's mode is filtered by the umask
    return path


def listen(host: str, port: int) -> socket.socket:
    """A listening socket, so the real port (for --port 0) is known before the app starts; clear error if taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family, backlog=128)
    except OSError as e:
        raise CatsError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def json_errors(app: FastAPI) -> None:
    """Answer malformed requests as every other error is answered: 422 with {"detail": "..."}."""
    from fastapi.exceptions import RequestValidationError
    from fastapi.requests import Request
    from fastapi.responses import JSONResponse

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        problems = []
        for e in error.errors():
            where = ".".join(str(p) for p in e.get("loc", ()) if p != "body")
            problems.append(f"{where}: {e.get('msg')}" if where else str(e.get("msg")))
        return JSONResponse({"detail": "invalid request: " + "; ".join(problems)}, status_code=422)


def run(app: FastAPI, sock: socket.socket, log_level: str = "warning",
        ready: Callable[[Any], None] | None = None) -> None:
    """Serve app on sock until SIGINT or SIGTERM, then shut down gracefully and return normally.

    A signal that comes before uvicorn takes the signals over (a supervisor may send one as soon as
    `ready` has printed) is held and honoured once the server has started. uvicorn raises the signals
    it handled again for the handlers it found when it started: these, not Python's defaults, which
    would kill the process (SIGTERM) or raise KeyboardInterrupt (SIGINT) after the graceful shutdown.
    `app.state.stopping` turns true as the shutdown begins, for requests that hold their answer.
    """
    import uvicorn

    early: list[int] = []

    class Server(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets)
            if early:
                self.should_exit = True

        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            app.state.stopping = True  # a request holding its answer (a long poll) gives it now
            await super().shutdown(sockets)

    saved = {s: signal.signal(s, lambda signum, _: early.append(signum)) for s in (signal.SIGINT, signal.SIGTERM)}
    server = Server(uvicorn.Config(app, log_level=log_level, access_log=False, lifespan="on",
                                   timeout_graceful_shutdown=5))
    if ready is not None:
        ready(app)
    try:
        server.run(sockets=[sock])
    finally:
        for s, previous in saved.items():
            signal.signal(s, previous)
        with contextlib.suppress(OSError):
            sock.close()
