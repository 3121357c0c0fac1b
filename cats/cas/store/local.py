"""The embedded default: blocks as files on local disk, safe with many writers and a gc at once.

Layout: `<root>/<shard>/<key>` where key is the base32 of the block's CIDv1 and shard its
next-to-last two characters (kubo's flatfs does the same, which keeps folders evenly filled).
A write goes to a unique temporary file in `<root>/.tmp` (named by the writer's pid) and is renamed
into place, so readers never see a partial block and concurrent writers of the same block cannot
collide; opening the store removes temporary files whose writer is dead. Writers' leases are files in
`<root>/.leases`, each held under an exclusive flock for the life of the lease: the kernel drops the
lock when its process dies, so gc tells a crashed writer's lease from a live one by trying the lock.
A writer of many blocks at once (`writing`, a pull's) appends them to a pack in `<root>/.packs`
instead (`cats.cas.store.packs`): a block is read from its file, else from its pack.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import math
import os
import random
import secrets
import shutil
import stat
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from cats.cas import multihash
from cats.cas.cid import CID
from cats.cas.store import BlockStore, missing
from cats.cas.store.packs import Packs
from cats.errors import CatsError, IntegrityError

_counter = itertools.count()
# File systems stamp mtimes from a coarse kernel clock, up to a tick (<= 10 ms on Linux) behind
# time.time(); a lease dates its start this much earlier so a block refreshed just after looks newer.
CLOCK_SLACK = 0.05


def _key(cid: CID) -> str:
    """The CIDv1's base32 text without its multibase prefix."""
    return str(cid.to_v1())[1:]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


class LocalStore(BlockStore):
    """Blocks as files under `root` (CATS_HOME/blocks by default): the store every process on this
    machine, Ray workers included, opens by its `file://` URL."""

    def __init__(self, root: str | os.PathLike[str], sync: bool = False, sample: int = 0) -> None:
        """`sync=True` fsyncs each block before the rename (durable across power loss, slower).

        A de-duplicated put keeps a stored block of the right size; with `sample` it also compares that
        many bytes at a random offset (the whole of a smaller block) and replaces the block if they differ.
        Off by default: the open, read and close cost a re-add of 1 GiB ~8% (a stat and a utime cost <1%);
        `cats repair` reads and hashes every block instead."""
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._root = str(self.root)  # block paths are joined as text: a Path per block costs more than the stat
        self.sync = sync
        self.sample = sample
        # made on first write, so opening a store to read it writes nothing
        self._tmp = self.root / ".tmp"
        self._leases = self.root / ".leases"
        self._shards: set[str] = set()
        self._lock = threading.Lock()
        self._packs = Packs(self.root / ".packs")
        self._clean()

    @property
    def url(self) -> str:
        return f"file://{self.root.resolve()}"

    def path(self, cid: CID) -> Path:
        return Path(self._file(cid))

    def _file(self, cid: CID) -> str:
        key = _key(cid)
        return f"{self._root}/{key[-3:-1]}/{key}"

    def _has(self, cid: CID) -> bool:
        try:
            os.stat(self._file(cid))
        except (FileNotFoundError, NotADirectoryError):
            return self._packs.find(_key(cid)) is not None
        return True

    def put(self, cid: CID, data: bytes | memoryview) -> None:
        final = self._file(cid)
        try:
            size = os.stat(final).st_size
        except FileNotFoundError:
            size = -1
        if size == len(data) and (not self.sample or self._sample_matches(final, data, self.sample)) \
                and self._refresh(final):
            return
        if size < 0 and self._packs.refresh(_key(cid), len(data)):
            return
        self._write(final, data)

    @contextlib.contextmanager
    def writing(self) -> Iterator[Callable[[CID, bytes | memoryview], bool]]:
        """Blocks go into a pack of this process's own (visible batch by batch, all by the end of the block);
        one stored already, as a file or packed, of the same size is refreshed instead."""
        with self._packs.writer(self.sync) as pack:
            def put(cid: CID, data: bytes | memoryview) -> bool:
                final = self._file(cid)
                try:
                    size = os.stat(final).st_size
                except FileNotFoundError:
                    size = -1
                if size == len(data) and self._refresh(final):
                    return False
                key = _key(cid)
                if size < 0 and self._packs.refresh(key, len(data)):
                    return False
                return pack.append(key, data)

            yield put

    def restore(self, cid: CID, data: bytes | memoryview) -> None:
        if not cid.verify(data):
            raise IntegrityError(f"block {cid} does not match its bytes; not stored", cid)
        self._write(self._file(cid), data)
        self._packs.delete(_key(cid))  # the file is read first anyway

    @staticmethod
    def _sample_matches(final: str, data: bytes | memoryview, sample: int) -> bool:
        """Whether a window of the stored block equals the same window of data (the whole block when small)."""
        at = random.randrange(max(1, len(data) - sample + 1))
        try:
            fd = os.open(final, os.O_RDONLY)
        except FileNotFoundError:
            return False
        try:
            stored = os.pread(fd, sample, at)
        finally:
            os.close(fd)
        return stored == memoryview(data)[at:at + sample]

    @staticmethod
    def _refresh(final: str) -> bool:
        """Stamp the block as written now; False if it is gone (gc took it: write it again)."""
        try:
            os.utime(final)
        except FileNotFoundError:
            return False
        return True

    def _write(self, final: str, data: bytes | memoryview) -> None:
        shard = os.path.dirname(final)
        if shard not in self._shards:
            os.makedirs(shard, exist_ok=True)
            with self._lock:
                self._shards.add(shard)
        tmp = self._tmp / f"{os.getpid()}.{threading.get_ident()}.{next(_counter)}.tmp"
        fd = _create(tmp, 0o444)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if self.sync:
                os.fsync(fd)
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        os.close(fd)
        os.replace(tmp, final)

    def delete(self, cid: CID) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._file(cid))
        self._packs.delete(_key(cid))

    def __iter__(self) -> Iterator[CID]:
        for shard in sorted(os.scandir(self.root), key=lambda e: e.name):
            if not shard.is_dir() or shard.name.startswith("."):
                continue
            for entry in os.scandir(shard.path):
                if entry.name.startswith("."):
                    continue
                yield CID.parse("b" + entry.name)
        for key in self._packs.packed():
            if not os.path.exists(self.root / key[-3:-1] / key):  # listed above already
                yield CID.parse("b" + key)

    def _get_unverified(self, cid: CID) -> bytes:
        try:
            with open(self._file(cid), "rb") as f:
                return f.read()
        except FileNotFoundError:
            packed = self._packs.read_into(_key(cid))
            if packed is None:
                raise missing(cid) from None
            return packed

    def size(self, cid: CID) -> int:
        if cid.hashfn == multihash.IDENTITY:
            return len(cid.digest)
        try:
            return os.stat(self._file(cid)).st_size
        except FileNotFoundError:
            found = self._packs.find(_key(cid))
            if found is None:
                raise missing(cid) from None
            return found[2]

    def read_into(self, cid: CID, buffer: memoryview) -> None:
        if cid.hashfn == multihash.IDENTITY:
            super().read_into(cid, buffer)
            return
        try:
            fd = os.open(self._file(cid), os.O_RDONLY)
        except FileNotFoundError:
            if self._packs.read_into(_key(cid), buffer) is None:
                raise missing(cid) from None
            return
        try:
            got = 0
            while got < len(buffer) and (n := os.readv(fd, [buffer[got:]])):
                got += n
            if got != len(buffer) or os.read(fd, 1):
                raise IntegrityError(f"block {cid} changed size while it was read", cid)
        finally:
            os.close(fd)

    def mtime(self, cid: CID) -> float:
        try:
            return os.stat(self._file(cid)).st_mtime
        except FileNotFoundError:
            found = self._packs.find(_key(cid))
            return found[3] if found is not None else 0.0

    def temp_dir(self) -> str:
        self._tmp.mkdir(exist_ok=True)
        return str(self._tmp)

    # -- gc's protocol (see BlockStore.lease) ---------------------------------------------------
    @contextlib.contextmanager
    def lease(self) -> Iterator[None]:
        """A file holding the lease's start, locked before it is visible and removed when the lease ends."""
        # a name no later process reuses: gc must never unlink a live lease for a dead one of the same name
        tmp = self._leases / f".{os.getpid()}.{secrets.token_hex(8)}"
        fd = _create(tmp, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.write(fd, repr(time.time() - CLOCK_SLACK).encode())
            held = self._leases / tmp.name[1:]
            os.rename(tmp, held)
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        try:
            yield
        finally:
            held.unlink(missing_ok=True)
            os.close(fd)

    def gc_cutoff(self, started: float) -> float:
        """Also removes the leases of dead writers: their lock is free."""
        cutoff = started
        if not self._leases.is_dir():
            return cutoff
        for entry in os.scandir(self._leases):
            if entry.name.startswith("."):
                continue
            try:  # never blocks (a FIFO) nor follows a link: a lease is a plain file the store made
                fd = os.open(entry.path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
            except FileNotFoundError:  # ended meanwhile
                continue
            except OSError as e:
                raise CatsError(f"{entry.path} is not a lease this store made ({e.strerror}); remove it") from None
            try:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    raise CatsError(f"{entry.path} is not a lease this store made (not a file); remove it")
                try:
                    fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                except BlockingIOError:  # held: a live writer
                    cutoff = min(cutoff, _lease_start(entry.path, os.pread(fd, 64, 0)))
                    continue
                with contextlib.suppress(FileNotFoundError):  # nobody holds it: its writer is gone
                    os.unlink(entry.path)
            finally:
                os.close(fd)
        return cutoff

    def discard(self, cid: CID, older_than: float) -> bool:
        """Move the block aside, then look at its time again: a `put` that refreshed it before the move
        shows there (the move keeps the time) and the block goes back; one that comes after the move
        finds no block and writes it anew. So a refresh is never lost to a removal."""
        final = self.path(cid)
        try:
            if final.stat().st_mtime >= older_than:
                return False
            aside = Path(self.temp_dir()) / f"{os.getpid()}.gc.{_key(cid)}"
            os.rename(final, aside)
        except FileNotFoundError:
            return self._packs.discard(_key(cid), older_than)
        try:
            if aside.stat().st_mtime < older_than:
                return True
            with contextlib.suppress(FileExistsError):  # a writer put it back already
                os.link(aside, final)
            return False
        finally:
            aside.unlink(missing_ok=True)

    def _clean(self) -> None:
        """Remove temporary files and packs that dead writers left behind. A block a killed gc had moved
        aside goes back (it may have been refreshed just before): the next gc decides again."""
        self._packs.clean()
        if not self._tmp.is_dir():
            return
        for entry in os.scandir(self._tmp):
            pid, _, rest = entry.name.partition(".")
            if not pid.isdigit() or _alive(int(pid)):
                continue
            if rest.startswith("gc."):
                key = rest[3:]
                (self.root / key[-3:-1]).mkdir(exist_ok=True)
                with contextlib.suppress(FileExistsError, FileNotFoundError):
                    os.link(entry.path, self.root / key[-3:-1] / key)
            if entry.is_dir(follow_symlinks=False):  # a scratch store (repair's re-import)
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)


def _create(path: Path, mode: int) -> int:
    """A new file in one of the store's own folders, the folder made on first use."""
    try:
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileNotFoundError:
        path.parent.mkdir(exist_ok=True)
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)


def _lease_start(path: str, text: bytes) -> float:
    """A held lease's start. One that does not hold a time stops gc (guessing could lose a writer's blocks)."""
    try:
        start = float(text.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        start = math.nan
    if not math.isfinite(start):
        raise CatsError(f"lease {path} is held but holds no start time ({text[:20]!r}); gc stops rather than "
                        "guess: end its writer, or remove it")
    return start
