"""`file:///abs/path`, confined to the folders in `CATS_DATA_ROOTS` (default: the working directory).

Containment is checked on the real path (symlinks and `..` resolved), so neither escapes a root.
"""

from __future__ import annotations

import os
import tempfile
from stat import S_ISREG
from urllib.parse import unquote

from cats.data.resolvers import Info, Resolver
from cats.data.uri import parse
from cats.errors import DataError, DataForbidden, DataNotFound, MalformedURI


def roots() -> list[str]:
    """The real paths of the allowed roots, read from the environment on each use."""
    text = os.environ.get("CATS_DATA_ROOTS") or os.getcwd()
    return [os.path.realpath(p) for p in text.split(os.pathsep) if p]


class FileResolver(Resolver):
    def _path(self, uri: str) -> str:
        """The real local path the URI names, refused unless it lies inside a root."""
        parts = parse(uri)
        path = unquote(parts.path)
        if parts.authority not in ("", "localhost") or not path.startswith("/") or "\0" in path:
            raise MalformedURI(f"{uri!r} is malformed: expected file:///absolute/path on this machine", uri)
        real = os.path.realpath(path)
        allowed = roots()
        if not any(os.path.commonpath([real, root]) == root for root in allowed):
            raise DataForbidden(f"{uri} lies outside the data roots ({os.pathsep.join(allowed)}); "
                                "set CATS_DATA_ROOTS to allow it", uri)
        return real

    def _open(self, uri: str) -> int:
        try:
            return os.open(self._path(uri), os.O_RDONLY)
        except FileNotFoundError:
            raise DataNotFound(f"{uri} not found", uri) from None
        except PermissionError:
            raise DataForbidden(f"{uri}: permission denied", uri) from None
        except OSError as e:
            raise DataError(f"cannot open {uri}: {e.strerror}", uri) from None

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
