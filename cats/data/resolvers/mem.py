"""`mem://name/key`: a process-wide store of byte strings, for tests, notebooks and short pipelines."""

from __future__ import annotations

import hashlib
import threading

from cats.data.resolvers import Info, Resolver
from cats.data.uri import split_key
from cats.errors import DataNotFound

# name -> key -> (bytes, version); a version is the content's hash, so rewriting equal bytes keeps it.
_STORES: dict[str, dict[str, tuple[bytes, str]]] = {}
_LOCK = threading.Lock()


class MemResolver(Resolver):
    def _get(self, uri: str) -> tuple[bytes, str]:
        name, key = split_key(uri, "name/key")
        try:
            return _STORES[name][key]
        except KeyError:
            raise DataNotFound(f"{uri} not found: no key {key!r} in mem://{name}", uri) from None

    def stat(self, uri: str) -> Info:
        data, version = self._get(uri)
        return Info(uri, len(data), version)

    def _fetch(self, uri: str, offset: int, n: int) -> tuple[bytes, str | None]:
        data, version = self._get(uri)
        return data[offset:offset + n], version

    def write(self, uri: str, data: bytes) -> Info:
        name, key = split_key(uri, "name/key")
        data = bytes(data)
        version = "sha256:" + hashlib.sha256(data).hexdigest()
        with _LOCK:
            _STORES.setdefault(name, {})[key] = (data, version)
        return Info(uri, len(data), version)
