"""Scenario 2: the rows of hourly sensor logs taken within 10 km of Lisbon, as one table.

The logs are synthetic but shaped like the real thing: one CSV per hour (datetime, sensor, GPS
latitude and longitude, temperature, pressure, rainfall), a reading every five minutes from 52
sensors: fixed stations in and around Lisbon and across Portugal, and four vehicles driving out of
Lisbon and back, crossing the 10 km circle. About 0.5% of readings carry the faults field logs have:
a -999.9 temperature sentinel, a zero pressure, no GPS fix (0, 0).

`near` runs once per hourly file; the `table` merge concatenates the kept rows in file order.
`clean` (the two-organization scenario) drops the faulty readings of one file.

This module is also the sealed code of the Orders: workers import it as `sensor_logs`.
"""

from __future__ import annotations

import io
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cats.bom import BOM
from cats.cas import reader
from cats.cas.cid import CID
from cats.cas.store import BlockStore
from cats.order import Function, InfraFunction, Order

if TYPE_CHECKING:  # workers import them when they run a function
    import numpy as np
    import pyarrow as pa

LISBON = (38.736946, -9.142685)
RADIUS_KM = 10.0
EARTH_KM = 6371.0088  # mean Earth radius (IUGG)
START = datetime(2026, 3, 1, tzinfo=UTC)
COLUMNS = ("datetime", "sensor", "latitude", "longitude", "temperature_c", "pressure_hpa", "rainfall_mm")
PER_HOUR = 12  # a reading every five minutes


def _read(data: bytes) -> pa.Table:
    import pyarrow as pa
    from pyarrow import csv

    types = dict(zip(COLUMNS, [pa.timestamp("s", tz="UTC"), pa.string(), *[pa.float64()] * 5], strict=True))
    return csv.read_csv(io.BytesIO(data), convert_options=csv.ConvertOptions(column_types=types))


def distance_km(lat: np.ndarray, lon: np.ndarray, lat0: float, lon0: float) -> np.ndarray:
    """Great-circle distance (haversine) from (lat0, lon0), in km."""
    import numpy as np

    p1, p2 = np.radians(lat), math.radians(lat0)
    dp, dl = p2 - p1, np.radians(lon0 - lon)
    a = np.sin(dp / 2) ** 2 + np.cos(p1) * math.cos(p2) * np.sin(dl / 2) ** 2
    return 2 * EARTH_KM * np.arcsin(np.sqrt(a))


def near(data: bytes, lat: float = LISBON[0], lon: float = LISBON[1], km: float = RADIUS_KM) -> pa.Table:
    """The rows of one hourly log taken within `km` of (lat, lon), with their distance."""
    import pyarrow as pa

    table = _read(data)
    dist = distance_km(table["latitude"].to_numpy(), table["longitude"].to_numpy(), lat, lon)
    keep = dist <= km
    return table.filter(pa.array(keep)).append_column("distance_km", pa.array(dist[keep].round(3)))


def clean(data: bytes) -> bytes:
    """One hourly log without its faulty readings (sentinel temperature, zero pressure, no GPS fix);
    the lines kept are byte for byte those of the input."""
    import pyarrow.compute as pc

    table = _read(data)
    ok = pc.and_(pc.and_(pc.greater(table["temperature_c"], -90.0), pc.greater(table["pressure_hpa"], 800.0)),
                 pc.or_(pc.not_equal(table["latitude"], 0.0), pc.not_equal(table["longitude"], 0.0)))
    header, *lines = data.decode().splitlines(keepends=True)
    return "".join([header, *(line for line, keep in zip(lines, ok.to_pylist(), strict=True) if keep)]).encode()


def _sensors(rng: np.random.Generator) -> list[tuple[str, float, float]]:
    """Fixed stations (id, latitude, longitude): 12 within 9.5 km of Lisbon, 8 at 10.5-30 km, 28 across Portugal."""
    out = []

    def around(prefix: str, n: int, lo: float, hi: float) -> None:
        for i in range(n):
            bearing, dist = rng.uniform(0, 2 * math.pi), rng.uniform(lo, hi)
            lat = LISBON[0] + dist * math.cos(bearing) / 111.2
            lon = LISBON[1] + dist * math.sin(bearing) / (111.2 * math.cos(math.radians(LISBON[0])))
            out.append((f"{prefix}-{i + 1:02d}", lat, lon))

    around("lisboa", 12, 0.5, 9.5)
    around("arredores", 8, 10.5, 30.0)
    for i in range(28):
        out.append((f"portugal-{i + 1:02d}", rng.uniform(37.0, 42.0), rng.uniform(-8.9, -6.6)))
    return out


def _vehicle(k: int, t: float) -> tuple[float, float]:
    """Vehicle k at t hours: from Lisbon out to 25 km along its own bearing and back, every 6 hours."""
    bearing = math.radians(100 + 35 * k)
    dist = 25.0 * abs(math.sin(math.pi * (t + 1.3 * k) / 6))
    lat = LISBON[0] + dist * math.cos(bearing) / 111.2
    return lat, LISBON[1] + dist * math.sin(bearing) / (111.2 * math.cos(math.radians(LISBON[0])))


def _hour(hour: int, stations: list[tuple[str, float, float]], seed: int) -> bytes:
    import numpy as np

    rng = np.random.default_rng([seed, hour])
    ids, lats, lons, times = [], [], [], []
    for m in range(PER_HOUR):
        at = hour + m / PER_HOUR
        for sensor, y, x in [*stations, *((f"viatura-{k + 1}", *_vehicle(k, at)) for k in range(4))]:
            ids.append(sensor)
            lats.append(y)
            lons.append(x)
            times.append(at)
    n = len(ids)
    lat, lon, t = np.array(lats), np.array(lons), np.array(times)
    temp = 14 + 5 * np.sin(2 * np.pi * (t % 24 - 9) / 24) - 1.1 * (lat - 38.7) + rng.normal(0, 0.6, n)
    pressure = 1014 + 6 * np.sin(2 * np.pi * t / 90 + lon) + rng.normal(0, 0.4, n)
    showers = (np.sin(2 * np.pi * t / 31 + lon) > 0.75) & (rng.random(n) < 0.6)
    rain = np.where(showers, 0.2 * rng.poisson(2.0, n), 0.0)
    gps_lat, gps_lon = lat + rng.normal(0, 3e-5, n), lon + rng.normal(0, 3e-5, n)
    fault = rng.random(n)
    temp[fault < 0.002] = -999.9
    pressure[(fault >= 0.002) & (fault < 0.0035)] = 0.0
    no_fix = (fault >= 0.0035) & (fault < 0.005)
    gps_lat[no_fix] = gps_lon[no_fix] = 0.0
    rows = [",".join(COLUMNS)]
    for i in range(n):
        when = (START + timedelta(hours=float(t[i]))).strftime("%Y-%m-%dT%H:%M:%SZ")
        rows.append(f"{when},{ids[i]},{gps_lat[i]:.6f},{gps_lon[i]:.6f},{temp[i]:.1f},{pressure[i]:.1f},{rain[i]:.1f}")
    return ("\n".join(rows) + "\n").encode()


def make(folder: Path, hours: int = 336, seed: int = 2026) -> None:
    """One CSV per hour from START (2026-03-01T00.csv, ...); 336 hours are two weeks."""
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    stations = _sensors(np.random.default_rng(seed))
    for h in range(hours):
        name = (START + timedelta(hours=h)).strftime("%Y-%m-%dT%H") + ".csv"
        (folder / name).write_bytes(_hour(h, stations, seed))


def order(folder: Path | CID, name: str = "demo: sensor rows within 10 km of Lisbon") -> Order:
    """`near` over every hourly file of a folder (a local path or a CID), rows merged into one table."""
    return Order(name=name, function=Function.of(near), inputs=[folder],
                 infra=InfraFunction(split="files", merge="table"))


def clean_order(folder: Path | CID) -> Order:
    return Order(name="org-a: sensor logs without faulty readings", function=Function.of(clean), inputs=[folder])


def summary(store: BlockStore, bom: BOM) -> dict[str, Any]:
    """What the run made, read back from the store: files and bytes in, rows and sensors out."""
    from cats.factory import results

    logs = reader.ls(store, bom.inputs[0])  # type: ignore[arg-type]
    table = results.decode(b"".join(reader.read(store, bom.outputs[0])), bom.output_encoding)
    sensors = len(set(table["sensor"].to_pylist()))
    far = float(max(table["distance_km"].to_pylist(), default=0.0))
    size = sum(item.size for item in logs)
    return {"logs": len(logs), "log_bytes": size, "rows": table.num_rows, "sensors": sensors, "max_distance_km": far,
            "text": f"{len(logs)} hourly logs ({size / 1e6:.1f} MB) -> one table of {table.num_rows:,} rows from "
                    f"{sensors} sensors, all within {far:.2f} km of Lisbon"}
