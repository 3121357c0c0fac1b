"""`http://` and `https://` (pre-signed S3 URLs included) by Range requests through httpx.

Connection errors and 5xx are retried a bounded number of times with exponential backoff
(`CATS_DATA_RETRIES`, default 3); every request has a timeout (`CATS_DATA_TIMEOUT` seconds, default 30).
A server that ignores Range and answers 200 is read only as far as needed, then the connection is dropped.
Requests to the Data Service's own origin (`CATS_DATA_SERVICE`, as scheme, host and port) carry
`Authorization: Bearer $CATS_DATA_TOKEN`, so its signed URLs read like any other; no other host sees
the token (and httpx drops it on a redirect to another origin).

A reader whose `Reach` guards hosts (the Data Service, reading for a caller) connects through
`_CheckedBackend`: each new connection, redirects included, resolves the host once, keeps only the
addresses the reach allows, and connects to one of those very addresses (TLS still checks the
certificate for the host name). Environment proxies are ignored there, since a proxy would connect
where the check cannot see.
"""

from __future__ import annotations

import functools
import os
import re
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import httpcore
import httpx

from cats.data.reach import Hosts, Reach
from cats.data.resolvers import Info, Resolver, env_number, max_fetch
from cats.data.uri import parse
from cats.errors import (
    DataError,
    DataForbidden,
    DataNotFound,
    DataTimeout,
    DataUnavailable,
    FetchTooLarge,
    MalformedURI,
)

_BACKOFF = 0.1  # seconds before the first retry; doubled for each further one
_CONTENT_RANGE = re.compile(r"bytes\s+(?:(\d+)-(\d+)|\*)/(\d+|\*)")


def timeout() -> float:
    return env_number("CATS_DATA_TIMEOUT", 30.0)


def retries() -> int:
    return int(env_number("CATS_DATA_RETRIES", 3))


class _CheckedBackend(httpcore.SyncBackend):
    """Connects only to addresses `hosts` allows, to the very address it checked (no second DNS answer)."""

    def __init__(self, hosts: Hosts) -> None:
        self.hosts = hosts

    def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                    socket_options: Iterable[Any] | None = None) -> httpcore.NetworkStream:
        try:
            addresses = self.hosts.addresses(host, port)
        except OSError as e:  # the name does not resolve: unreachable, like a refused connection
            raise httpcore.ConnectError(f"cannot resolve {host}: {e}") from None
        failure: httpcore.ConnectError | None = None
        for address in addresses:
            try:
                return super().connect_tcp(address, port, timeout, local_address, socket_options)
            except httpcore.ConnectError as e:
                failure = e
        assert failure is not None
        raise failure


class _CheckedTransport(httpx.HTTPTransport):
    """httpx's transport (its request and error mapping) over a pool whose every connection goes
    through `_CheckedBackend`. httpx takes no network backend of its own, so its pool is replaced;
    the limits are httpx's defaults."""

    def __init__(self, hosts: Hosts) -> None:
        super().__init__(trust_env=False)
        self._pool = httpcore.ConnectionPool(ssl_context=httpx.create_ssl_context(), max_connections=100,
                                             max_keepalive_connections=20, keepalive_expiry=5.0,
                                             network_backend=_CheckedBackend(hosts))


@functools.lru_cache(maxsize=8)
def _client(seconds: float, hosts: Hosts | None) -> httpx.Client:
    """One connection pool per timeout setting and host guard, shared by the process.

    Identity encoding keeps ranges byte-exact. A guarded client ignores environment proxies.
    """
    transport = None if hosts is None else _CheckedTransport(hosts)
    return httpx.Client(timeout=seconds, follow_redirects=True, headers={"Accept-Encoding": "identity"},
                        transport=transport, trust_env=hosts is None)


def _origin(url: str) -> tuple[str, str, int] | None:
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError):
        return None
    scheme = parsed.scheme.lower()
    port = parsed.port or {"http": 80, "https": 443}.get(scheme)
    return (scheme, parsed.host.lower(), port) if parsed.host and port else None


def _service_auth(uri: str) -> dict[str, str]:
    """The Data Service's bearer token for a URI of its own origin; nothing for any other."""
    service, token = os.environ.get("CATS_DATA_SERVICE"), os.environ.get("CATS_DATA_TOKEN")
    if not service or not token:
        return {}
    origin = _origin(service)
    return {"Authorization": f"Bearer {token}"} if origin is not None and _origin(uri) == origin else {}


def _version(response: httpx.Response) -> str | None:
    etag = response.headers.get("ETag")
    if etag:
        return etag
    modified = response.headers.get("Last-Modified")
    return f"last-modified:{modified}" if modified else None


def _content_range(uri: str, response: httpx.Response) -> tuple[int | None, int | None]:
    """(first byte, total size) from Content-Range; None where the server sent `*`."""
    match = _CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", "").strip())
    if not match:
        raise DataError(f"{uri}: the server answered {response.status_code} with a malformed Content-Range "
                        f"{response.headers.get('Content-Range')!r}", uri)
    first, _, total = match.groups()
    return (None if first is None else int(first)), (None if total == "*" else int(total))


def _raise_for_status(uri: str, response: httpx.Response) -> None:
    code = response.status_code
    if code in (404, 410):
        raise DataNotFound(f"{uri} not found (HTTP {code})", uri)
    if code in (401, 403):
        raise DataForbidden(f"{uri}: access denied (HTTP {code})", uri)
    if code == 413:
        raise FetchTooLarge(f"{uri}: the server refuses to send that much at once (HTTP 413); read it by ranges",
                            uri)
    if code not in (200, 206, 416):
        raise DataError(f"{uri}: unexpected HTTP {code}", uri)


def _take(uri: str, response: httpx.Response, skip: int, n: int) -> bytes:
    """n bytes after the first `skip` of a body that ignored Range; refuse to transfer more than the limit."""
    limit = max_fetch()
    length = response.headers.get("Content-Length")
    need = skip + n if length is None or not length.isdigit() else min(skip + n, int(length))
    if need > limit:
        raise FetchTooLarge(f"{uri}: the server ignores Range, so reading from byte {skip} means transferring "
                            f"more than CATS_DATA_MAX_FETCH={limit} bytes", uri)
    return _upto(response, need)[skip:]


def _upto(response: httpx.Response, n: int) -> bytes:
    """The first n bytes of the body (fewer if it ends sooner); the rest is never read."""
    body = bytearray()
    for chunk in response.iter_bytes():
        body += chunk
        if len(body) >= n:
            break
    return bytes(body[:n])


class HTTPResolver(Resolver):
    def __init__(self, reach: Reach) -> None:
        self.hosts = reach.hosts

    @contextmanager
    def _get(self, uri: str, first: int, last: int) -> Iterator[httpx.Response]:
        """A streamed GET of bytes first..last, retried on connection errors and 5xx; HTTP errors typed."""
        if not parse(uri).authority:
            raise MalformedURI(f"{uri!r} is malformed: expected {parse(uri).scheme}://host/path", uri)
        seconds, attempts = timeout(), retries() + 1
        client = _client(seconds, self.hosts)
        failure, timed_out = "", False
        for attempt in range(attempts):
            if attempt:
                time.sleep(_BACKOFF * 2 ** (attempt - 1))
            try:
                request = client.build_request("GET", uri, headers={"Range": f"bytes={first}-{last}",
                                                                    **_service_auth(uri)})
                response = client.send(request, stream=True)
            except (httpx.InvalidURL, httpx.UnsupportedProtocol) as e:
                raise MalformedURI(f"{uri!r} is malformed: {e}", uri) from None
            except DataForbidden as e:  # the host guard refused the address (of the URI or of a redirect)
                raise DataForbidden(f"{uri}: {e}", uri) from None
            except (httpx.ReadTimeout, httpx.WriteTimeout, httpx.PoolTimeout):
                raise DataTimeout(f"{uri} did not answer within {seconds:g} s (CATS_DATA_TIMEOUT)", uri) from None
            except httpx.TransportError as e:  # connection refused, reset, connect timeout: worth retrying
                failure, timed_out = f"{type(e).__name__}: {e}", isinstance(e, httpx.ConnectTimeout)
                continue
            if response.status_code < 500:
                break
            failure, timed_out = f"HTTP {response.status_code}", False
            response.close()
        else:
            error = DataTimeout if timed_out else DataUnavailable
            raise error(f"{uri} failed after {attempts} attempts: {failure}", uri)
        try:
            _raise_for_status(uri, response)
            yield response
        except httpx.TimeoutException:
            raise DataTimeout(f"{uri} stalled for {seconds:g} s while sending (CATS_DATA_TIMEOUT)", uri) from None
        except httpx.TransportError as e:
            raise DataUnavailable(f"{uri}: connection lost while reading: {e}", uri) from None
        finally:
            response.close()

    def stat(self, uri: str) -> Info:
        """Size and ETag from a one-byte GET: pre-signed URLs sign the method, so HEAD would be refused."""
        with self._get(uri, 0, 0) as response:
            if response.status_code == 200:
                length = response.headers.get("Content-Length")
                total = int(length) if length and length.isdigit() else None
            else:  # 206, or 416 for an empty body
                total = _content_range(uri, response)[1]
            if total is None:
                raise DataError(f"{uri}: the server does not tell the size", uri)
            return Info(uri, total, _version(response))

    def _fetch(self, uri: str, offset: int, n: int) -> tuple[bytes, str | None]:
        with self._get(uri, offset, offset + n - 1) as response:
            version = _version(response)
            if response.status_code == 416:  # offset at or past the end
                return b"", version
            if response.status_code == 200:
                return _take(uri, response, offset, n), version
            first = _content_range(uri, response)[0]
            if first != offset:
                raise DataError(f"{uri}: asked for bytes from {offset}, the server sent from {first}", uri)
            return _upto(response, n), version
