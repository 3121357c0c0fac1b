"""Scenario 3: mean, standard deviation, min, max and mode of every numeric column of Parquet shards.

The shards hold a year of ten-minute weather readings from 80 stations (synthetic), sixteen files
of 4 row groups. The Order runs `partial` once per row group (an Arrow table in, the partial
aggregates out: count, mean, sum of squared deviations, min, max and value counts) and `combine`
merges them into one table, one row per column, with the pairwise update of Chan, Golub and
LeVeque, so the result is the statistics of the whole dataset, not an average of averages. Nulls are skipped;
the standard deviation is the sample one (n - 1); the mode is the most frequent value, the
smallest on a tie. Values are recorded at sensor resolution, so a mode is meaningful.

This module is also the sealed code of the Order: workers import it as `column_stats`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cats.bom import BOM
from cats.cas import reader
from cats.cas.store import BlockStore
from cats.order import Function, InfraFunction, Order

if TYPE_CHECKING:  # workers import it when they run a function
    import pyarrow as pa

STATS = ("count", "mean", "std", "min", "max", "mode")


def partial(table: pa.Table) -> list[dict[str, Any]]:
    """Per numeric column, in table order: count, mean, m2 (sum of squared deviations), min, max,
    and the distinct values with their counts."""
    import numpy as np
    import pyarrow.types as pt

    out = []
    for name, column in zip(table.column_names, table.columns, strict=True):
        if not (pt.is_integer(column.type) or pt.is_floating(column.type)):
            continue
        x = column.drop_null().to_numpy().astype("float64")
        values, counts = np.unique(x, return_counts=True)
        mean = float(x.mean()) if len(x) else 0.0
        out.append({"column": name, "n": len(x), "mean": mean, "m2": float(((x - mean) ** 2).sum()),
                    "min": float(x.min()) if len(x) else None, "max": float(x.max()) if len(x) else None,
                    "values": values.tolist(), "counts": counts.tolist()})
    return out


def _fold(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Two partials of one column as one (Chan, Golub and LeVeque's pairwise update)."""
    if not b["n"]:
        return a
    if not a["n"]:
        return b
    n = a["n"] + b["n"]
    delta = b["mean"] - a["mean"]
    return {"n": n, "mean": a["mean"] + delta * b["n"] / n, "m2": a["m2"] + b["m2"] + delta ** 2 * a["n"] * b["n"] / n,
            "min": min(a["min"], b["min"]), "max": max(a["max"], b["max"])}


def combine(parts: list[tuple[list[dict[str, Any]], dict[str, Any]]]) -> pa.Table:
    """One row per column: the statistics of all row groups together, folded in slice order."""
    import pyarrow as pa

    acc: dict[str, dict[str, Any]] = {}
    tally: dict[str, dict[float, int]] = {}
    for value, _assembly in parts:
        for p in value:
            name = p["column"]
            acc[name] = _fold(acc.get(name, {"n": 0}), p)
            counts = tally.setdefault(name, {})
            for v, c in zip(p["values"], p["counts"], strict=True):
                counts[v] = counts.get(v, 0) + c
    rows: dict[str, list[Any]] = {s: [] for s in ("column", *STATS)}
    for name, a in acc.items():
        counts = tally[name]
        rows["column"].append(name)
        rows["count"].append(a["n"])
        rows["mean"].append(a.get("mean"))
        rows["std"].append(math.sqrt(a["m2"] / (a["n"] - 1)) if a["n"] > 1 else None)
        rows["min"].append(a.get("min"))
        rows["max"].append(a.get("max"))
        rows["mode"].append(min(counts, key=lambda v: (-counts[v], v)) if counts else None)
    return pa.table({"column": pa.array(rows["column"], pa.string()), "count": pa.array(rows["count"], pa.int64()),
                     **{s: pa.array(rows[s], pa.float64()) for s in STATS[1:]}})


def make(folder: Path, shards: int = 16, rows: int = 262_144, seed: int = 2025) -> None:
    """`shards` Parquet files of `rows` readings each, 4 row groups per file."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    stations = 80
    names = pa.array([f"st-{s:03d}" for s in range(stations)])
    for k in range(shards):
        rng = np.random.default_rng([seed, k])
        t = (k * rows + np.arange(rows)) / (stations * 6 * 24)  # days since New Year, 10-minute steps
        station = np.arange(rows) % stations
        season = -np.cos(2 * np.pi * t / 365)
        temp = 15 + 6 * season + 5 * np.sin(2 * np.pi * (t % 1 - 0.375)) + rng.normal(0, 1.5, rows) - station / 40
        humidity = np.clip(np.rint(70 - 1.5 * (temp - 15) + rng.normal(0, 8, rows)), 5, 100).astype("int64")
        rain = 0.2 * rng.poisson(np.where(rng.random(rows) < 0.12, 2.5, 0.0))
        table = pa.table({
            "station": pa.DictionaryArray.from_arrays(station.astype("int32"), names),
            "temperature_c": np.round(temp, 1),
            "pressure_hpa": np.round(1013 + 8 * np.sin(2 * np.pi * t / 6) + rng.normal(0, 2, rows), 1),
            "rainfall_mm": np.round(rain, 1),
            "humidity_pct": pa.array(humidity, mask=rng.random(rows) < 0.001),
            "wind_speed_ms": np.round(rng.gamma(2.0, 1.8, rows), 1),
        })
        pq.write_table(table, folder / f"readings-{k:02d}.parquet", row_group_size=rows // 4)


def order(folder: Path) -> Order:
    return Order(
        name="demo: column statistics over Parquet shards",
        function=Function.of(partial, takes="table"),
        inputs=[folder],
        infra=InfraFunction(split="row-groups", merge=Function.of(combine)),
    )


def summary(store: BlockStore, bom: BOM) -> dict[str, Any]:
    """What the run made, read back from the store: shards and bytes in, the statistics table out."""
    from cats.factory import results

    shards = reader.ls(store, bom.inputs[0])  # type: ignore[arg-type]
    table = results.decode(b"".join(reader.read(store, bom.outputs[0])), bom.output_encoding)
    rows = max(table["count"].to_pylist(), default=0)
    size = sum(item.size for item in shards)
    return {"shards": len(shards), "shard_bytes": size, "rows": rows, "stats": table.to_pylist(),
            "text": f"{len(shards)} Parquet shards ({size / 1e6:.1f} MB, {rows:,} rows) -> one table of "
                    f"{table.num_rows} columns x {', '.join(STATS[1:])}"}
