"""Benchmark lazy views over a ~1 GB Parquet file served by loopback HTTP: bytes and time.

A Parquet file of `--size-mb` (default 1024) is generated in a temp dir with pyarrow: ten float64 and
int64 columns, row groups of 128Ki rows, each group's values drawn from its own seed so any group
can be recomputed without reading the file. It is served by the tests' loopback HTTP server
(tests/servers.py), whose log of body bytes sent is what "transferred" means below.

1. Column view: one column of the whole file, materialized from a cold process state (footer
   included): bytes sent against the file size, and against the column's chunk bytes as the footer
   states them (target: <= 1.01, i.e. nothing but the chunks and the footer).
2. Sampled check: k seeded random row-group partitions of a two-column view; each is materialized
   and checked against values recomputed from the generator (row count, sum, first/last id).
   Target: all the sampled checks read <= 2% of the file's bytes.
3. Wall time of the column view against plain pyarrow reading the same column after downloading
   the whole file from the same server (and pyarrow reading through cats.data.open, for context);
   the view also fetching one range at a time instead of 8 in parallel. The server runs in a child
   process, so its threads do not compete with the client for the GIL as no real server would.

    python bench/bench_views.py [--size-mb 1024] [--quick] [--samples 5] [--json bench/results/views.json]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path

from common import machine, save

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import httpx
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import servers  # the tests' loopback server, reused

from cats import data
from cats.data.views import Meter, forget, view

GROUP_ROWS = 128 * 1024
FLOATS = [f"f{i}" for i in range(5)]
INTS = [f"i{i}" for i in range(5)]
TARGETS = {"column_chunk_ratio_max": 1.01, "sampled_fraction_max": 0.02}
SAMPLED_COLUMNS = ["f3", "i0"]  # i0 is the row id: its first and last value tell which rows came back


def _serve(path: str, conn: Connection) -> None:
    """The child process: serve the file with tests/servers.py, answer the parent's log questions."""
    with servers.serving() as state:
        conn.send(state.put("/table.parquet", Path(path).read_bytes()))
        while (command := conn.recv()) != "stop":
            if command == "clear":
                state.log.clear()
                conn.send(None)
            else:
                conn.send((state.bytes_sent, len(state.log)))


class Server:
    """tests/servers.py's loopback server in a child process: its threads do not share this process's GIL."""

    def __init__(self, path: Path) -> None:
        self._conn, child = multiprocessing.get_context("spawn").Pipe()
        self._process = multiprocessing.get_context("spawn").Process(target=_serve, args=(str(path), child),
                                                                     daemon=True)
        self._process.start()
        self.uri: str = self._conn.recv()

    def clear(self) -> None:
        self._conn.send("clear")
        self._conn.recv()

    def sent(self) -> tuple[int, int]:
        """(body bytes sent, responses) since the last clear."""
        self._conn.send("stats")
        return self._conn.recv()

    def close(self) -> None:
        self._conn.send("stop")
        self._process.join(30)


def group(g: int, names: list[str] | None = None) -> dict[str, np.ndarray]:
    """Row group g's columns, recomputable from g alone."""
    rng = np.random.default_rng(1_000 + g)
    out = {}
    for name in FLOATS + INTS:
        if name == "i0":
            col = np.arange(g * GROUP_ROWS, (g + 1) * GROUP_ROWS, dtype=np.int64)
        elif name.startswith("f"):
            col = rng.random(GROUP_ROWS)
        else:
            col = rng.integers(-(2**62), 2**62, GROUP_ROWS, dtype=np.int64)
        if names is None or name in names:
            out[name] = col
    return out


def generate(path: Path, size: int) -> int:
    """Write row groups until the file holds about `size` bytes; return the number of groups."""
    schema = pa.schema([(n, pa.float64()) for n in FLOATS] + [(n, pa.int64()) for n in INTS])
    g = 0
    with open(path, "wb") as sink, pq.ParquetWriter(sink, schema, compression="snappy") as writer:
        while sink.tell() < size - GROUP_ROWS * 80 // 2:
            writer.write_table(pa.table(group(g), schema=schema), row_group_size=GROUP_ROWS)
            g += 1
    return g


def timed(fn: Callable[[], object], n: int) -> tuple[float, object]:
    samples, out = [], None
    for _ in range(n):
        start = time.perf_counter()
        out = fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=float, default=1024)
    parser.add_argument("--quick", action="store_true", help="A CI-size smoke run: 64 MB, one timing, no JSON "
                                                             "unless --json is given.")
    parser.add_argument("--samples", type=int, default=5, help="Row-group partitions checked in part 2.")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--repeat", type=int, default=3, help="Timings per path in part 3 (median).")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--dir", type=Path, default=None, help="Where to write the file (default: a temp dir).")
    args = parser.parse_args()
    if args.quick:
        args.size_mb, args.repeat = min(args.size_mb, 64), 1
    elif args.json is None:
        args.json = Path(__file__).parent / "results" / "views.json"

    work = Path(tempfile.mkdtemp(prefix="cats-bench-views-", dir=args.dir))
    try:
        path = work / "table.parquet"
        start = time.perf_counter()
        groups = generate(path, int(args.size_mb * (1 << 20)))
        generate_s = time.perf_counter() - start
        size = path.stat().st_size
        meta = pq.read_metadata(path)  # pyarrow's own reading of the footer: the expected chunk bytes
        with open(path, "rb") as f:
            f.seek(size - 8)
            footer = int.from_bytes(f.read(4), "little") + 8
        index = {meta.schema.column(j).name: j for j in range(meta.num_columns)}

        def chunks(names: list[str], gs: list[int]) -> int:
            return sum(meta.row_group(g).column(index[n]).total_compressed_size for g in gs for n in names)

        server = Server(path)
        try:
            uri = server.uri
            result = {
                "file": {"size_bytes": size, "rows": meta.num_rows, "row_groups": groups,
                         "rows_per_group": GROUP_ROWS, "columns": meta.num_columns, "footer_bytes": footer,
                         "compression": "snappy", "generate_s": generate_s},
                "machine": machine(pyarrow=pa.__version__),
            }
            whole = view(uri)

            # 1. one column of the whole file, cold (the footer is read again)
            column = "f2"
            forget()
            server.clear()
            meter = Meter()
            only = whole.columns(column)  # building checks the op against the footer: read here, once
            got = only.materialize(meter=meter)
            expected = chunks([column], list(range(groups)))
            sent, requests = server.sent()
            assert got.num_rows == meta.num_rows and meter.bytes == expected  # materialize: the chunks alone
            result["column_view"] = {
                "column": column, "bytes_sent": sent, "requests": requests, "chunk_bytes": expected,
                "fraction_of_file": sent / size, "chunk_ratio": sent / expected,
                "other_bytes": sent - expected,  # the footer (and the 8-byte magic check of view() is not here)
                "materialize_requests": meter.requests,
            }

            # 2. sampled check: k random row-group partitions of a two-column view, from a cold state
            forget()
            server.clear()
            sampled = whole.columns(*SAMPLED_COLUMNS)
            partitions = sampled.partitions()
            picks = sorted(random.Random(args.seed).sample(range(len(partitions)), min(args.samples, groups)))
            checks = []
            for p in picks:
                part = partitions[p].materialize()
                want = group(p, SAMPLED_COLUMNS)
                f, ids = part.column("f3").to_numpy(), part.column("i0").to_numpy()
                ok = (len(part) == GROUP_ROWS and bool(np.sum(f) == np.sum(want["f3"]))
                      and int(ids[0]) == p * GROUP_ROWS and int(ids[-1]) == (p + 1) * GROUP_ROWS - 1)
                checks.append({"row_group": p, "rows": len(part), "sum_f3": float(np.sum(f)), "ok": ok})
            sent, requests = server.sent()
            result["sampled_check"] = {
                "seed": args.seed, "partitions": len(partitions), "sampled": len(picks), "columns": SAMPLED_COLUMNS,
                "bytes_sent": sent, "requests": requests, "chunk_bytes": chunks(SAMPLED_COLUMNS, picks),
                "fraction_of_file": sent / size, "all_ok": all(c["ok"] for c in checks), "checks": checks,
            }

            # 3. wall time: the view against downloading everything and reading the column locally
            def plain() -> pa.Table:
                body = bytearray()
                with httpx.stream("GET", uri, timeout=600, headers={"Accept-Encoding": "identity"}) as response:
                    for chunk in response.iter_bytes(1 << 20):
                        body += chunk
                return pq.read_table(pa.BufferReader(bytes(body)), columns=[column])

            def through_open() -> pa.Table:
                return pq.read_table(data.open(uri), columns=[column])

            def lazy() -> pa.Table:
                return whole.columns(column).materialize()

            def serial() -> pa.Table:
                os.environ["CATS_VIEW_WORKERS"] = "1"
                try:
                    return lazy()
                finally:
                    del os.environ["CATS_VIEW_WORKERS"]

            rows = {}
            os.environ.pop("CATS_VIEW_WORKERS", None)
            for name, fn in [("view: columns(f2).materialize()", lazy),
                             ("view, one request at a time (CATS_VIEW_WORKERS=1)", serial),
                             ("plain: download whole file, pq.read_table(columns=[f2])", plain),
                             ("pyarrow over cats.data.open (RangeFile)", through_open)]:
                server.clear()
                seconds, table = timed(fn, args.repeat)
                assert table.column(column).equals(got.column(column)), name  # type: ignore[union-attr]
                sent, requests = server.sent()
                rows[name] = {"median_s": seconds, "bytes_sent_per_run": sent // args.repeat,
                              "requests_per_run": requests // args.repeat}
            base = rows["plain: download whole file, pq.read_table(columns=[f2])"]["median_s"]
            for r in rows.values():
                r["speedup_vs_plain"] = base / r["median_s"]
            result["wall_time"] = {"repeat": args.repeat, "server": "tests/servers.py in a child process",
                                   "runs": rows}
        finally:
            server.close()

        result["quick"] = args.quick
        result["targets"] = TARGETS
        result["met"] = {
            "column_chunk_ratio_max": result["column_view"]["chunk_ratio"] <= TARGETS["column_chunk_ratio_max"],
            "sampled_fraction_max": result["sampled_check"]["fraction_of_file"] <= TARGETS["sampled_fraction_max"]
            and result["sampled_check"]["all_ok"],
        }
        report(result)
        save(result, args.json)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def report(result: dict) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    f = result["file"]
    mb = 1 << 20
    console = Console(width=150)
    table = Table(title=f"{f['size_bytes'] / mb:.0f} MiB Parquet, {f['row_groups']} row groups x {f['rows_per_group']} "
                        f"rows, {f['columns']} columns, over loopback HTTP (bytes = what the server sent)")
    for col in ("measure", "bytes sent", "requests", "of file", "vs chunk bytes", "result"):
        table.add_column(col, justify="left" if col in ("measure", "result") else "right")
    c, s = result["column_view"], result["sampled_check"]
    table.add_row(f"1 column view ({c['column']}), cold", f"{c['bytes_sent'] / mb:.1f} MiB", str(c["requests"]),
                  f"{c['fraction_of_file']:.2%}", f"{c['chunk_ratio']:.4f}",
                  f"+ {c['other_bytes'] / 1024:.0f} KiB of footer")
    table.add_row(f"sampled check: {s['sampled']} of {s['partitions']} partitions, {len(s['columns'])} columns",
                  f"{s['bytes_sent'] / mb:.1f} MiB", str(s["requests"]), f"{s['fraction_of_file']:.2%}",
                  f"{s['bytes_sent'] / s['chunk_bytes']:.4f}", "all checks ok" if s["all_ok"] else "A CHECK FAILED")
    console.print(table)
    times = Table(title=f"wall time, median of {result['wall_time']['repeat']}")
    for col in ("path", "median s", "MiB sent / run", "requests / run", "speedup vs plain"):
        times.add_column(col, justify="left" if col == "path" else "right")
    for name, r in result["wall_time"]["runs"].items():
        times.add_row(escape(name), f"{r['median_s']:.3f}", f"{r['bytes_sent_per_run'] / mb:.1f}",
                      str(r["requests_per_run"]), f"{r['speedup_vs_plain']:.1f}x")
    console.print(times)
    for key, ok in result["met"].items():
        print(f"{'met   ' if ok else 'MISSED'} {key} (target {result['targets'][key]})")
    if result["quick"]:
        print("(a --quick run: the file has too few row groups for the 2% target to mean anything)")


if __name__ == "__main__":
    main()
