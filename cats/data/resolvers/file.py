"""`file:///abs/path`, confined to the roots of the reader's `Reach` (cats.data.reach).

The path is checked on its real path (symlinks and `..` resolved) before opening, opened without
following a final symlink, and the opened file's own path is checked again, so a symlink swapped in
between gains nothing. FIFOs and devices are opened without blocking and then refused as not regular.
"""

from __future__ import annotations

import os
import tempfile
from stat import S_ISREG
from urllib.parse import unquote

from cats.data.reach import Reach
from cats.data.resolvers import Info, Resolver
from cats.data.uri import parse
from cats.errors import DataError, DataForbidden, DataNotFound, MalformedURI

_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class FileResolver(Resolver):
    def __init__(self, reach: Reach) -> None:
        self.reach = reach

    def _path(self, uri: str) -> str:
        """The real local path the URI names, refused unless the reach allows it."""
        parts = parse(uri)
        path = unquote(parts.path)
        if parts.authority not in ("", "localhost") or not path.startswith("/") or "\0" in path:
            raise MalformedURI(f"{uri!r} is malformed: expected file:///absolute/path on this machine", uri)
        return self.reach.path(uri, path)

    def _open(self, uri: str) -> int:
        real = self._path(uri)
        try:
            fd = os.open(real, _READ)
        except FileNotFoundError:
            raise DataNotFound(f"{uri} not found", uri) from None
        except PermissionError:
            raise DataForbidden(f"{uri}: permission denied", uri) from None
        except OSError as e:  # ELOOP: the last component became a symlink after the check
            raise DataError(f"cannot open {uri}: {e.strerror}", uri) from None
        try:
            self.reach.opened(uri, fd, real)
        except BaseException:
            os.close(fd)
            raise
        return fd

    @staticmethod
    def _info(uri: str, fd: int) -> Info:
        st = os.fstat(fd)
        if not S_ISREG(st.st_mode):
            raise DataError(f"{uri} is not a regular file", uri)
        return Info(uri, st.st_size, f"{st.st_mtime_ns}-{st.st_size}")

    def stat(self, uri: str) -> Info:
        fd = self._open(uri)
        try:
            return self._info(uri, fd)
        finally:
            os.close(fd)

    def _fetch(self, uri: str, offset: int, n: int) -> tuple[bytes, str | None]:
        fd = self._open(uri)
        try:
            version = self._info(uri, fd).version  # of the very file read, not of a path re-resolved later
            return os.pread(fd, n, offset), version
        finally:
            os.close(fd)

    def write(self, uri: str, data: bytes) -> Info:
        """Write atomically (a temporary file renamed over the target), creating missing folders."""
        path = self._path(uri)
        folder = os.path.dirname(path)
        try:
            os.makedirs(folder, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".cats-", dir=folder)
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                os.replace(tmp, path)
            except BaseException:
                os.unlink(tmp)
                raise
        except PermissionError:
            raise DataForbidden(f"{uri}: permission denied", uri) from None
        except OSError as e:
            raise DataError(f"cannot write {uri}: {e.strerror}", uri) from None
        return self.stat(uri)
