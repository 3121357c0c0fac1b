"""Cheap validators: check an output against its inputs by fetching only the pieces a check needs.

Re-execution proves a result by recomputing all of it. These checks accept a result with a known,
small false-accept probability for a fraction of the cost: Freivalds' projections for matrix
products (O(n^2) instead of O(n^3)), sampled entries for elementwise maps, sampled partitions for
sums. Data are .npy files in the store, read by byte range, so a sampled check fetches only the
blocks that cover its samples; every report counts the bytes it really fetched.

A seed known to the producer before it commits to its output lets it cheat the sample; draw the
seed afterwards (the default draws a fresh one) and keep it in the report for replay.

The engine lives beside the Check model, under the Factory and verification alike: the Factory
runs an Order's checks to gate its run (`Order.check_on_run`), `cats verify` runs them again on
the recorded output. It reads only the store, the data views and the Order.
"""

from __future__ import annotations

import math
import secrets
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cats.cas import reader
from cats.cas.cid import CID
from cats.cas.store import BlockStore
from cats.data import Info
from cats.data.views import View, npy
from cats.errors import CatsError
from cats.order.checks import Check, CheckKind, CheckReport, parse_ref

__all__ = ["CheckReport", "CountingStore", "NpyFile", "elementwise", "freivalds", "freivalds_arrays", "reduction",
           "run", "run_order"]

UFUNCS: dict[str, Callable[..., np.ndarray]] = {
    "neg": np.negative, "abs": np.absolute, "sqrt": np.sqrt, "exp": np.exp, "log": np.log,
    "square": np.square, "add": np.add, "sub": np.subtract, "mul": np.multiply, "div": np.true_divide,
    "pow": np.power, "maximum": np.maximum, "minimum": np.minimum,
}


class _Mismatch(Exception):
    """The claimed result cannot be right whatever the sample (wrong shape, wrong count): a failed check."""

    def __init__(self, message: str, total_bytes: int) -> None:
        super().__init__(message)
        self.total_bytes = total_bytes


class CountingStore(BlockStore):
    """Forwards reads to a store and sums the bytes of the blocks it really fetches.

    A small LRU of verified blocks keeps a block that several samples share (and the root node each
    range read starts from) from being fetched, and counted, more than once.
    """

    def __init__(self, inner: BlockStore, cache_bytes: int = 64 << 20) -> None:
        self.inner = inner
        self.fetched = 0
        self.blocks = 0
        self._cache: OrderedDict[CID, bytes] = OrderedDict()
        self._cached = 0
        self._limit = cache_bytes

    def _has(self, cid: CID) -> bool:
        return self.inner.has(cid)

    def put(self, cid: CID, data: bytes | memoryview) -> None:
        self.inner.put(cid, data)

    def delete(self, cid: CID) -> None:
        self._cache.pop(cid, None)
        self.inner.delete(cid)

    def __iter__(self) -> Iterator[CID]:
        return iter(self.inner)

    def mtime(self, cid: CID) -> float:
        return self.inner.mtime(cid)

    def _get_unverified(self, cid: CID) -> bytes:
        return self.get(cid, verify=False)

    def get(self, cid: CID, verify: bool = True) -> bytes:
        data = self._cache.get(cid)
        if data is not None:
            self._cache.move_to_end(cid)
            return data
        data = self.inner.get(cid, verify)
        self.fetched += len(data)
        self.blocks += 1
        if verify and len(data) <= self._limit:  # only verified bytes may be handed out again unchecked
            self._cache[cid] = data
            self._cached += len(data)
            while self._cached > self._limit:
                self._cached -= len(self._cache.popitem(last=False)[1])
        return data


def _counting(store: BlockStore) -> CountingStore:
    return store if isinstance(store, CountingStore) else CountingStore(store)


def _read_into(tree: reader.FileTree, offset: int, length: int) -> np.ndarray:
    """Bytes [offset, offset+length) of a file as one uint8 array, copied once (np.empty: no zeroing pass)."""
    buf = np.empty(length, np.uint8)
    view = buf.data  # the array's own buffer, writable
    pos = 0
    for chunk in tree.read(offset, length):
        view[pos:pos + len(chunk)] = chunk
        pos += len(chunk)
    if pos != length:
        raise CatsError(f"{tree.cid} ends at byte {offset + pos}, before the {length} bytes asked from {offset}")
    return buf


def _gather(tree: reader.FileTree, starts: np.ndarray, width: int) -> np.ndarray:
    """The `width` bytes at each of the sorted, distinct byte offsets `starts` (at least `width` apart),
    concatenated: one walk of the file, into only the blocks that hold some entry."""
    starts = np.asarray(starts, dtype=np.int64)
    ends = starts + width
    out = np.empty(len(starts) * width, np.uint8)
    if len(starts) and int(ends[-1]) > tree.size:
        raise CatsError(f"{tree.cid} ends at byte {tree.size}, before the entry asked at {int(starts[-1])}")
    for at, data in tree.pieces(list(zip(starts.tolist(), ends.tolist(), strict=True))):
        # the entries that overlap data, which holds file bytes [at, at+len(data))
        for i in range(int(np.searchsorted(ends, at, "right")), int(np.searchsorted(starts, at + len(data)))):
            lo, hi = max(int(starts[i]), at), min(int(ends[i]), at + len(data))
            o = i * width + lo - int(starts[i])
            out[o:o + hi - lo] = np.frombuffer(data, np.uint8, hi - lo, lo - at)
    return out


@dataclass(frozen=True)
class NpyFile:
    """A .npy file in the store, read by byte range: the header once, then any elements or rows.

    Element i of the data sits at `offset + i * itemsize` (in storage order), so a sample of entries
    fetches only the blocks that hold them. Object arrays are refused: they are pickles, not numbers.
    """

    store: BlockStore
    cid: CID
    dtype: np.dtype[Any]
    shape: tuple[int, ...]
    fortran_order: bool
    offset: int
    size: int
    tree: reader.FileTree = field(repr=False, compare=False)

    @classmethod
    def open(cls, store: BlockStore, cid: CID) -> NpyFile:
        tree = reader.FileTree(store, cid)
        head = npy.header(lambda n: _read_into(tree, 0, n).tobytes(), tree.size, str(cid))
        return cls(store, cid, head.dtype, head.shape, head.fortran, head.offset, tree.size, tree)

    @property
    def count(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.count * self.dtype.itemsize

    def numeric(self, what: str) -> NpyFile:
        """Self, or a CatsError if the dtype is not numbers the checks can compute with."""
        if self.dtype.kind not in "biufc" or self.dtype.fields is not None:
            raise CatsError(f"{what} ({self.cid}) has dtype {self.dtype}; a check needs a numeric array")
        return self

    def array(self) -> np.ndarray:
        """The whole array (one range read of its data)."""
        flat = self.flat(0, self.count)
        return flat.reshape(self.shape, order="F" if self.fortran_order else "C")

    def flat(self, start: int, stop: int) -> np.ndarray:
        """Elements [start, stop) in storage order, fetching only the blocks that hold them."""
        item = self.dtype.itemsize
        return _read_into(self.tree, self.offset + start * item, (stop - start) * item).view(self.dtype)

    def rows(self, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) along the first axis of a C-order array."""
        if self.fortran_order:
            raise CatsError(f"{self.cid} is stored in Fortran order: its rows are not contiguous")
        width = math.prod(self.shape[1:])
        return self.flat(start * width, stop * width).reshape((stop - start, *self.shape[1:]))

    def take(self, indices: np.ndarray) -> np.ndarray:
        """Entries at C-order flat indices of the logical array: one walk fetching only their blocks."""
        indices = np.asarray(indices, dtype=np.int64)
        pos = indices
        if self.fortran_order:
            pos = np.ravel_multi_index(np.unravel_index(indices, self.shape), self.shape, order="F")
        unique, back = np.unique(pos, return_inverse=True)  # sorted, each entry once
        item = self.dtype.itemsize
        raw = _gather(self.tree, self.offset + unique * item, item)
        return raw.view(self.dtype)[back.reshape(-1)]


def _rtol(rtol: float | None, *dtypes: np.dtype[Any]) -> float:
    """The given rtol, else sqrt(eps) of the least precise float involved (0 when all are integers)."""
    if rtol is not None:
        return rtol
    eps = [float(np.finfo(d).eps) for d in dtypes if d.kind in "fc"]
    return math.sqrt(max(eps)) if eps else 0.0


def _seed(seed: int | None) -> int:
    return secrets.randbits(63) if seed is None else seed


def _report(kind: CheckKind, store: BlockStore, seed: int | None,
            body: Callable[[CountingStore, int], tuple[bool, float, str, int]]) -> CheckReport:
    """Run a check body on a counting view of the store; count only what this check fetched."""
    fetch, seed = _counting(store), _seed(seed)
    start = fetch.fetched
    try:
        passed, false_accept, detail, total = body(fetch, seed)
    except _Mismatch as e:
        passed, false_accept, detail, total = False, 0.0, str(e), e.total_bytes
    return CheckReport(kind=kind, passed=passed, bytes_fetched=fetch.fetched - start, total_bytes=total,
                       false_accept_probability=false_accept, detail=detail, seed=seed)


# -- Freivalds ------------------------------------------------------------------------------------

def freivalds(store: BlockStore, a: CID, b: CID, c: CID, *, rounds: int = 20, seed: int | None = None,
              rtol: float | None = None, atol: float = 0.0) -> CheckReport:
    """Check C == A @ B by comparing A @ (B @ R) with C @ R for a random {0,1} matrix R (p x rounds).

    Each column of R misses a wrong C with probability <= 1/2, so false accept <= 2**-rounds (for
    errors above the tolerance). All rounds go through one block product per matrix, O(n^2 * rounds)
    instead of O(n^3); A, B and C are read in full, and it is memory-bound. Integer matrices are
    checked exactly (mod 2**64); floats within atol + rtol * max|A @ (B @ R)| per column, a scale
    taken from the trusted side so a huge wrong entry cannot widen it. Non-finite values fail.
    """
    return _report("freivalds", store, seed, lambda f, s: _freivalds(f, a, b, c, rounds, s, rtol, atol))


def freivalds_arrays(A: np.ndarray, B: np.ndarray, C: np.ndarray, rounds: int, seed: int,
                     rtol: float | None = None, atol: float = 0.0) -> tuple[int, float | None]:
    """The projections on arrays in memory: (rounds that differ, the rtol used or None if exact).

    Shapes must agree (the caller checks them)."""
    dtype = np.result_type(A, B, C)
    if dtype.kind == "b":
        raise CatsError("freivalds needs numbers, not booleans (a boolean matrix product is not a ring)")
    exact = dtype.kind in "iu"
    if exact:  # int64 arithmetic wraps mod 2**64 on both sides alike: still an exact check
        A, B, C, dtype = A.astype(np.int64, copy=False), B.astype(np.int64, copy=False), \
            C.astype(np.int64, copy=False), np.dtype(np.int64)
    R = np.random.default_rng(seed).integers(0, 2, size=(B.shape[1], rounds)).astype(dtype)
    with np.errstate(all="ignore"):
        left = A @ (B @ R)
        right = C @ R
        if exact:
            return int(np.count_nonzero((left != right).any(axis=0))), None
        tol = _rtol(rtol, A.dtype, B.dtype, C.dtype)
        bound = atol + tol * np.abs(left).max(axis=0, initial=0.0)
        ok = np.abs(left - right) <= bound  # NaN compares False: a non-finite entry fails
    return int(np.count_nonzero(~ok.all(axis=0))), tol


def _freivalds(fetch: CountingStore, a: CID, b: CID, c: CID, rounds: int, seed: int,
               rtol: float | None, atol: float) -> tuple[bool, float, str, int]:
    files = [NpyFile.open(fetch, x).numeric(name) for x, name in ((a, "a"), (b, "b"), (c, "c"))]
    total = sum(f.size for f in files)
    fa, fb, fc = files
    if len(fa.shape) != 2 or len(fb.shape) != 2:
        raise CatsError(f"freivalds needs matrices; a is {fa.shape}, b is {fb.shape}")
    (n, m), (m2, p) = fa.shape, fb.shape
    if m != m2:
        raise CatsError(f"a is {n}x{m} and b is {m2}x{p}: they do not multiply")
    if fc.shape != (n, p):
        raise _Mismatch(f"c has shape {fc.shape}; a @ b has ({n}, {p})", total)
    bad, tol = freivalds_arrays(fa.array(), fb.array(), fc.array(), rounds, seed, rtol, atol)
    how = "exactly" if tol is None else f"within atol={atol:g} + rtol={tol:.3g} * column max"
    detail = (f"c == a @ b ({n}x{m} @ {m}x{p}): {bad} of {rounds} random projections differ, compared {how}; "
              f"false accept <= 2**-{rounds}")
    return bad == 0, 2.0 ** -rounds, detail, total


# -- elementwise ----------------------------------------------------------------------------------

def elementwise(store: BlockStore, op: str, a: CID, b: CID | None, c: CID, *, samples: int = 64,
                seed: int | None = None, rtol: float | None = None, atol: float = 0.0) -> CheckReport:
    """Check c == op(a[, b]) on `samples` entries drawn uniformly (with replacement), read by byte range.

    A result with w wrong of N entries passes with probability (1 - w/N)**samples; the report gives
    it for a single wrong entry, the hardest case. b may also be a single value, broadcast. Integer
    results are compared exactly, floats as numpy.isclose (NaN equal to NaN).
    """
    return _report("elementwise", store, seed, lambda f, s: _elementwise(f, op, a, b, c, samples, s, rtol, atol))


def _accept_after(samples: int, count: int, wrong: int) -> float:
    return (1.0 - wrong / count) ** samples if count else 0.0


def _elementwise(fetch: CountingStore, op: str, a: CID, b: CID | None, c: CID, samples: int, seed: int,
                 rtol: float | None, atol: float) -> tuple[bool, float, str, int]:
    if op not in UFUNCS:
        raise CatsError(f"unknown elementwise op {op!r}; one of {', '.join(UFUNCS)}")
    fa = NpyFile.open(fetch, a).numeric("a")
    fb = NpyFile.open(fetch, b).numeric("b") if b is not None else None
    fc = NpyFile.open(fetch, c).numeric("c")
    total = fa.size + fc.size + (fb.size if fb else 0)
    if fb is not None and fb.shape != fa.shape and fb.count != 1:
        raise CatsError(f"b has shape {fb.shape}; elementwise needs a's shape {fa.shape} or a single value")
    if fc.shape != fa.shape:
        raise _Mismatch(f"c has shape {fc.shape}; {op}(a) has {fa.shape}", total)
    n = fa.count
    every = samples >= n  # as cheap to read it all: exact, no sampling
    idx = np.arange(n) if every else np.random.default_rng(seed).integers(0, n, size=samples)
    files = [fa, fc] if fb is None else [fa, fb, fc]
    values = [f.array().ravel() if every else f.take(idx if f.count == n else np.zeros(1, np.int64))
              for f in files]
    claimed, args = values[-1], values[:-1]
    with np.errstate(all="ignore"):
        expected = UFUNCS[op](*args)
    tol = _rtol(rtol, expected.dtype, claimed.dtype)
    if expected.dtype.kind in "fc" or claimed.dtype.kind in "fc":
        ok = np.isclose(claimed, expected, rtol=tol, atol=atol, equal_nan=True)
    else:
        ok = claimed == expected
    wrong = sorted({int(i) for i in idx[~ok]})
    false_accept = 0.0 if every else _accept_after(samples, n, 1)
    shown = ", ".join(map(str, wrong[:5])) + (", ..." if len(wrong) > 5 else "")
    detail = (f"c == {op}(a{', b' if fb is not None else ''}) on {len(idx)} of {n} entries"
              f"{' (all)' if every else ' drawn with replacement'}: "
              + (f"{len(wrong)} wrong (flat index {shown})" if wrong else "all match")
              + (f"; tolerance rtol={tol:.3g} atol={atol:g}" if tol or atol else "; compared exactly"))
    if not every:
        levels = {"1 entry": 1, "1%": max(1, math.ceil(n / 100)), "5%": max(1, math.ceil(n / 20))}
        detail += (f"; false accept with w of N wrong = (1 - w/N)**{samples}: "
                   + ", ".join(f"{k} {_accept_after(samples, n, w):.3g}" for k, w in levels.items()))
    return not wrong, false_accept, detail, total


# -- reduction ------------------------------------------------------------------------------------

def reduction(store: BlockStore, a: CID, b: CID, c: CID, *, op: str = "sum", partitions: int = 16,
              sampled: int = 4, seed: int | None = None, rtol: float | None = None,
              atol: float = 0.0) -> CheckReport:
    """Check the total c == sum(a), given b: the claimed sums of `partitions` contiguous ranges of a.

    A total alone cannot be checked from part of a: any unread element could be off. So the result
    carries its partials: partition i is a.ravel()[i*N//P : (i+1)*N//P] (np.array_split's ranges for
    N >= P), b holds their sums and c (0-d or one element) the total. The check (1) adds up b and
    compares it with c: cheap and deterministic, so a total that disagrees with its partials always
    fails; (2) recomputes `sampled` partitions drawn without replacement from a, by byte range. A wrong
    total that agrees with its partials needs a wrong partial, which (2) misses with probability
    1 - sampled/partitions (C(P-w, s) / C(P, s) for w wrong partials): the reported false accept.
    Floats compare within atol + rtol * sum|terms|, the scale rounding errors grow with.
    """
    return _report("reduction", store, seed,
                   lambda f, s: _reduction(f, op, a, b, c, partitions, sampled, s, rtol, atol))


def _accumulator(*dtypes: np.dtype[Any]) -> np.dtype[Any]:
    """Where sums are exact for integers and as precise as cheap for floats."""
    kind = np.result_type(*dtypes).kind
    return np.dtype({"c": np.complex128, "f": np.float64, "u": np.uint64}.get(kind, np.int64))


def _reduction(fetch: CountingStore, op: str, a: CID, b: CID, c: CID, partitions: int, sampled: int, seed: int,
               rtol: float | None, atol: float) -> tuple[bool, float, str, int]:
    if op != "sum":
        raise CatsError(f"unknown reduction op {op!r}; 'sum' is implemented")
    if not 1 <= sampled <= partitions:
        raise CatsError(f"sampled ({sampled}) must be between 1 and partitions ({partitions})")
    fa = NpyFile.open(fetch, a).numeric("a")
    fb = NpyFile.open(fetch, b).numeric("b (the partials)")
    fc = NpyFile.open(fetch, c).numeric("c (the total)")
    total_bytes = fa.size + fb.size + fc.size
    if fa.fortran_order:
        raise CatsError(f"a ({a}) is stored in Fortran order; partitions are ranges of the C-order flat array")
    if fb.count != partitions:
        raise _Mismatch(f"b holds {fb.count} partial sums; the check has partitions={partitions}", total_bytes)
    if fc.count != 1:
        raise _Mismatch(f"c holds {fc.count} values; a total is one (a 0-d or 1-element .npy)", total_bytes)
    acc = _accumulator(fa.dtype, fb.dtype, fc.dtype)
    exact = acc.kind in "iu"
    tol = 0.0 if exact else _rtol(rtol, fa.dtype, fb.dtype, fc.dtype)
    partials = fb.array().ravel().astype(acc)
    claimed_total = fc.array().ravel().astype(acc)[0]

    def close(claimed: Any, computed: Any, scale: Any) -> bool:
        return bool(claimed == computed) if exact else bool(abs(claimed - computed) <= atol + tol * scale)

    with np.errstate(all="ignore"):
        adds_up = close(claimed_total, partials.sum(), np.abs(partials).sum())
        n = fa.count
        chosen = sorted(int(i) for i in np.random.default_rng(seed).choice(partitions, sampled, replace=False))
        wrong = []
        for i in chosen:
            part = fa.flat(i * n // partitions, (i + 1) * n // partitions).astype(acc)
            if not close(partials[i], part.sum(), np.abs(part).sum()):
                wrong.append(i)
    false_accept = 1.0 - sampled / partitions
    detail = (f"total {'equals' if adds_up else 'DIFFERS from'} the sum of its {partitions} partials; "
              f"partitions {chosen} of a ({n} entries) recomputed: "
              + (f"{wrong} wrong" if wrong else "all match")
              + ("; compared exactly" if exact else f"; tolerance rtol={tol:.3g} atol={atol:g} of sum|terms|")
              + f"; false accept for one wrong partial = 1 - {sampled}/{partitions}")
    return adds_up and not wrong, false_accept, detail, total_bytes


# -- by reference ---------------------------------------------------------------------------------

def run(store: BlockStore, check: Check, inputs: Sequence[CID | Info | View], output: CID,
        seed: int | None = None) -> CheckReport:
    """Run one Check of an Order: resolve its references against the inputs and the output, then check.

    Bytes fetched include the folder nodes walked to resolve paths.
    """
    fetch = CountingStore(store)

    def cid(ref: str | None) -> CID | None:
        if ref is None:
            return None
        index, path = parse_ref(ref)
        if index is not None and index >= len(inputs):
            raise CatsError(f"check reference {ref!r} names input {index}, but the Order has {len(inputs)}")
        base = output if index is None else inputs[index]
        if not isinstance(base, CID):  # a URI: its bytes are not in the store a check reads by range
            raise CatsError(f"check reference {ref!r} names input {index}, {base.uri}, which is read by URI; "
                            "checks read inputs that are in the store")
        return reader.resolve(fetch, base, path) if path else base

    a, b, c = cid(check.a), cid(check.b), cid(check.c)
    assert a is not None and c is not None
    if check.kind == "freivalds":
        assert b is not None
        report = freivalds(fetch, a, b, c, rounds=check.rounds, seed=seed, rtol=check.rtol, atol=check.atol)
    elif check.kind == "elementwise":
        assert check.op is not None
        report = elementwise(fetch, check.op, a, b, c, samples=check.samples, seed=seed, rtol=check.rtol,
                             atol=check.atol)
    else:
        assert b is not None
        report = reduction(fetch, a, b, c, op=check.op or "sum", partitions=check.partitions,
                           sampled=check.sampled, seed=seed, rtol=check.rtol, atol=check.atol)
    return report.model_copy(update={"bytes_fetched": fetch.fetched})


def run_order(store: BlockStore, checks: Sequence[Check], inputs: Sequence[CID | Info | View], output: CID,
              seed: int | None = None) -> list[CheckReport]:
    """Every check of an Order (`order.checks` over `order.sources`), each with its own seed."""
    base = _seed(seed)
    return [run(store, check, inputs, output, base + i) for i, check in enumerate(checks)]
