"""What a URI may reach: the one place that decides which files, network addresses and DAGs a read may touch.

Every resolver takes a `Reach` and asks it before touching anything. There are two, because two
kinds of reader exist:

- `Reach.local()`: a user's own process (the Factory reading the inputs of the user's own Orders,
  the CLI probing a file before registering it). Files inside `CATS_DATA_ROOTS` (default: the
  working directory); any host; any CID in the store. The user reads what the user could read anyway.
- `Reach.service(...)`: the Data Service reading on behalf of a token holder, who must get no more
  than the operator chose to share. Files only inside `CATS_DATA_ROOTS` (none while it is unset)
  and never inside `CATS_HOME` (the node's keys, the service's HMAC key and state live there);
  no connection to loopback, private, link-local, multicast or otherwise special addresses unless
  the operator allow-lists them; `ipfs://` only under DAGs pinned on this machine. A CAT node
  reads the inputs of its peers' Orders within such a reach, its operator's (`cats node start`).

Paths are checked on real paths (symlinks and `..` resolved), and again on the file actually
opened, so a symlink swapped in between the check and the open gains nothing. Hosts are checked
on the addresses they resolve to, at connect time, and the connection goes to the address that
was checked (`Hosts.addresses`), so neither a second DNS answer nor a redirect escapes the check.
An s3:// URI names a bucket and a key only: the endpoint is the operator's (`CATS_S3_ENDPOINT`, or
AWS's), so no caller picks a host there, and the service trusts it as configured.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import socket
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Any

from cats.cas.cid import CID
from cats.cas.pins import Pins
from cats.config import home
from cats.errors import CatsError, DataForbidden

IPAddress = IPv4Address | IPv6Address
_NAT64 = (IPv6Network("64:ff9b::/96"), IPv6Network("64:ff9b:1::/48"))
_NAME = re.compile(r"[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)*\.?")
_ALLOW_HINT = "CATS_DATA_ALLOW_HOSTS (or --allow-host of `cats data serve`, `cats node start`)"
_ROOTS_HINT = "CATS_DATA_ROOTS (or --data-root of `cats node start`)"


def special(ip: IPAddress) -> str | None:
    """Why a data service must not connect to `ip` on a caller's behalf ("loopback", "private", ...), or None.

    IPv6 forms that carry an IPv4 address (mapped ::ffff:a.b.c.d, 6to4, NAT64) are judged by that address.
    """
    if isinstance(ip, IPv6Address):
        inner = ip.ipv4_mapped or ip.sixtofour
        if inner is None and any(ip in net for net in _NAT64):
            inner = IPv4Address(ip.packed[-4:])
        if inner is not None:
            why = special(inner)
            return f"{why} (as IPv6 {ip})" if why else None
    for why, test in (("unspecified", ip.is_unspecified), ("loopback", ip.is_loopback),
                      ("link-local", ip.is_link_local), ("multicast", ip.is_multicast),
                      ("private", ip.is_private), ("reserved", ip.is_reserved), ("non-global", not ip.is_global)):
        if test:
            return why
    return None


@dataclass(frozen=True, slots=True)
class Hosts:
    """The operator's allow-list for special addresses: host names as written in URIs, and IP networks."""

    names: frozenset[str] = frozenset()
    networks: tuple[IPv4Network | IPv6Network, ...] = ()

    @classmethod
    def parse(cls, entries: list[str]) -> Hosts:
        """Entries like `minio.internal`, `127.0.0.1`, `10.0.0.0/8`, `::1`; CatsError naming a malformed one."""
        names, networks = set(), []
        for entry in (e.strip().lower().strip("[]") for e in entries):
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                if not _NAME.fullmatch(entry):
                    raise CatsError(f"allowed host {entry!r} is neither a host name nor an IP address or network "
                                    "(e.g. minio.internal, 127.0.0.1, 10.0.0.0/8)") from None
                names.add(entry.rstrip("."))
        return cls(frozenset(names), tuple(networks))

    def __str__(self) -> str:
        return ", ".join([*sorted(self.names), *map(str, self.networks)]) or "none"

    def allows(self, host: str, ip: IPAddress) -> bool:
        """Whether the operator allows `host` by name, or `ip` (or the IPv4 address it maps) by network."""
        forms = [ip, *([ip.ipv4_mapped] if isinstance(ip, IPv6Address) and ip.ipv4_mapped else [])]
        return host in self.names or any(a.version == n.version and a in n for a in forms for n in self.networks)

    def addresses(self, host: str, port: int) -> list[str]:
        """The addresses `host` resolves to (once) that a connection may go to; DataForbidden if none.

        A name that resolves to both a public and a loopback address is reached at the public one only.
        Resolution failures are left to the connection (socket.gaierror), as any unreachable host.
        """
        name = host.lower().strip("[]").rstrip(".")
        found = socket.getaddrinfo(name, port, type=socket.SOCK_STREAM)
        allowed, refused = [], []
        for *_, sockaddr in found:
            text = str(sockaddr[0])
            ip = ipaddress.ip_address(text)
            why = special(ip)
            if why is None or self.allows(name, ip):
                allowed.append(text)
            else:
                refused.append(f"{text} is {why}")
        if not allowed:
            raise DataForbidden(f"refusing to connect to {host} on behalf of a caller: "
                                f"{', '.join(dict.fromkeys(refused))}; "
                                f"a read for someone else connects there only if {_ALLOW_HINT} lists it")
        return list(dict.fromkeys(allowed))


def _files(folder: str) -> set[tuple[int, int]]:
    """(device, inode) of every file under folder but its block store and worker cache: the keys, the
    trust list, the databases. Blocks and cached entries are data, and may be millions."""
    found = set()
    for top, dirs, names in os.walk(folder):
        if top == folder:
            dirs[:] = [d for d in dirs if d not in ("blocks", "cache")]
        for name in names:
            with contextlib.suppress(OSError):
                st = os.stat(os.path.join(top, name), follow_symlinks=False)
                found.add((st.st_dev, st.st_ino))
    return found


def _under(path: str, folder: str) -> bool:
    return os.path.commonpath([path, folder]) == folder


@dataclass(frozen=True)
class Reach:
    """What a reader may touch. `roots`: real folders file:// may read; `hidden`: real folders never read
    even inside a root; `hosts`: None connects anywhere, else only to non-special addresses and these;
    `pins`: None reads any CID in the store, else only under roots pinned there."""

    roots: tuple[str, ...]
    hidden: tuple[str, ...] = ()
    hosts: Hosts | None = None
    pins: Pins | None = None

    @classmethod
    def local(cls) -> Reach:
        """A user's own process: `CATS_DATA_ROOTS` (default the working directory), read on each use."""
        text = os.environ.get("CATS_DATA_ROOTS") or os.getcwd()
        return cls(tuple(os.path.realpath(p) for p in text.split(os.pathsep) if p))

    @classmethod
    def service(cls, allow_hosts: list[str] | None = None, roots: list[str] | None = None) -> Reach:
        """The Data Service's (and a CAT node's, for its peers): `CATS_DATA_ROOTS` and `roots` (nothing if
        neither is set) minus `CATS_HOME`, special addresses only if `CATS_DATA_ALLOW_HOSTS` (comma-separated)
        or `allow_hosts` list them, ipfs:// only under pinned DAGs.

        A root inside `CATS_HOME` is an operator's mistake worth stopping at: CatsError naming it.
        """
        text = os.environ.get("CATS_DATA_ROOTS", "")
        shared = tuple(dict.fromkeys(os.path.realpath(p) for p in [*text.split(os.pathsep), *(roots or [])] if p))
        cats_home = os.path.realpath(home())
        for root in shared:
            if _under(root, cats_home):
                raise CatsError(f"data root {root} (CATS_DATA_ROOTS, --data-root) lies inside CATS_HOME ({cats_home}), "
                                "which holds the node's keys and the service's state; no peer or caller reads it")
        entries = [*os.environ.get("CATS_DATA_ALLOW_HOSTS", "").split(","), *(allow_hosts or [])]
        return cls(shared, (cats_home,), Hosts.parse(entries), Pins(home() / "pins"))

    def as_dict(self) -> dict[str, Any]:
        """JSON-able, for a reach decided in one process to confine the reads of another (a node's runs)."""
        return {"roots": list(self.roots), "hidden": list(self.hidden),
                "hosts": None if self.hosts is None else [*sorted(self.hosts.names), *map(str, self.hosts.networks)],
                "pins": None if self.pins is None else str(self.pins.folder)}

    @classmethod
    def from_dict(cls, given: dict[str, Any]) -> Reach:
        hosts, pins = given.get("hosts"), given.get("pins")
        return cls(tuple(given["roots"]), tuple(given.get("hidden", ())),
                   None if hosts is None else Hosts.parse(hosts), None if pins is None else Pins(pins))

    def path(self, uri: str, path: str) -> str:
        """The real path of `path` (absolute, from `uri`), refused unless inside a root and outside `hidden`."""
        if not self.roots:
            raise DataForbidden(f"{uri}: no data roots are set, so no file:// URI is readable here; "
                                f"set {_ROOTS_HINT} to the folders that may be read", uri)
        real = os.path.realpath(path)
        if not any(_under(real, root) for root in self.roots):
            raise DataForbidden(f"{uri} lies outside the data roots ({os.pathsep.join(self.roots)}); "
                                f"set {_ROOTS_HINT} to allow it", uri)
        for folder in self.hidden:
            if _under(real, folder):
                raise DataForbidden(f"{uri} lies inside CATS_HOME ({folder}), which is never read for someone else",
                                    uri)
        return real

    def opened(self, uri: str, fd: int, real: str) -> None:
        """Check the file behind `fd` (opened from the checked path `real`) is where the check said.

        Linux names an open file's real path in /proc/self/fd; elsewhere the open file must be the one
        now at `real` (same device and inode), which a later swap cannot change for this descriptor.
        """
        held = os.fstat(fd)
        try:
            where = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            try:
                now = os.stat(real, follow_symlinks=False)
            except OSError:
                now = None
            if now is None or (now.st_dev, now.st_ino) != (held.st_dev, held.st_ino):
                raise DataForbidden(f"{uri} changed while it was being opened", uri) from None
        else:
            self.path(uri, where)
        # A hard link has a path of its own inside the root: only the file's identity can tell it is a
        # hidden one. Looked for only when the file has other names, which data files rarely do.
        if held.st_nlink > 1 and any((held.st_dev, held.st_ino) in _files(folder) for folder in self.hidden):
            raise DataForbidden(f"{uri} is another name (a hard link) of a file inside CATS_HOME, which is never "
                                "read for someone else", uri)

    def ipfs(self, uri: str, root: CID) -> None:
        """Refuse a DAG not pinned here, when reading for someone else.

        Pins are what this machine chose to keep (`cats pin add`, the Factory's BOMs) and what its
        CAT node hands out; any other block in the store (an Order's intermediate, a peer's upload)
        is not the operator's to share. The URI's root CID must itself be pinned; paths below it are
        inside the pinned DAG.
        """
        if self.pins is not None and root not in self.pins:
            raise DataForbidden(f"{uri}: {root} is not pinned on this machine; a read for someone else reads only "
                                f"pinned DAGs (its operator may `cats pin add {root}`)", uri)
