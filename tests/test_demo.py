"""`cats demo`: each scenario's result checked against an independent computation (pandas, numpy,
plain math), then the command itself, whose printed figures must be what the store holds, and the
two-organization scenario over two real node processes."""

from __future__ import annotations

import importlib.util
import io
import json
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from cats import factory
from cats.bom import load as load_bom
from cats.cas import reader
from cats.cas.cid import CID
from cats.cas.store.local import LocalStore
from cats.cli import demo as demo_cli
from cats.demo import SCENARIOS, column_stats, data_folder, sensor_logs, thumbnails
from cats.errors import CatsError
from cats.factory import results
from cats.verification.audit import verify


def _read(store: LocalStore, cid: CID | str) -> bytes:
    return b"".join(reader.read(store, CID.parse(str(cid))))


def _km(lat: float, lon: float) -> float:
    """Distance from Lisbon by the spherical law of cosines (not the haversine the scenario uses)."""
    lat0, lon0 = map(math.radians, sensor_logs.LISBON)
    p, q = math.radians(lat), math.radians(lon)
    c = math.sin(lat0) * math.sin(p) + math.cos(lat0) * math.cos(p) * math.cos(q - lon0)
    return sensor_logs.EARTH_KM * math.acos(min(1.0, c))


def _expected_near(folder: Path) -> pd.DataFrame:
    logs = pd.concat([pd.read_csv(f) for f in sorted(folder.iterdir())], ignore_index=True)
    logs["km"] = [_km(a, b) for a, b in zip(logs["latitude"], logs["longitude"], strict=True)]
    return logs


def test_photos_are_built_from_scikit_image_samples_the_same_way_every_time(tmp_path: Path) -> None:
    thumbnails.make(tmp_path / "one", count=2)
    thumbnails.make(tmp_path / "two", count=2)
    names = sorted(p.name for p in (tmp_path / "one").iterdir())
    assert names == ["photo-00.jpg", "photo-01.jpg"]
    for name in names:
        data = (tmp_path / "one" / name).read_bytes()
        assert data == (tmp_path / "two" / name).read_bytes()
        with Image.open(io.BytesIO(data)) as photo:
            assert (photo.format, photo.size, photo.mode) == ("JPEG", (3000, 2000), "RGB")
    assert len(thumbnails.SOURCES) == 17


@pytest.mark.slow
def test_thumbnails_are_grayscale_and_keep_the_picture(ray_session: str, cats_home: Path, tmp_path: Path) -> None:
    thumbnails.make(tmp_path / "photos", count=3)
    store = LocalStore(cats_home / "blocks")

    run = factory.run(thumbnails.order(tmp_path / "photos"), quiet=True)

    out = {item.name: item.cid for item in reader.ls(store, run.output)}
    assert sorted(out) == ["photo-00.jpg", "photo-01.jpg", "photo-02.jpg"]
    for name, cid in out.items():
        with Image.open(io.BytesIO(_read(store, cid))) as thumb:
            assert (thumb.format, thumb.mode, thumb.size) == ("JPEG", "L", (256, 171))
            small = np.asarray(thumb, dtype=float)
        with Image.open(tmp_path / "photos" / name) as photo:
            rgb = np.asarray(photo, dtype=float)
        luma = rgb @ [0.299, 0.587, 0.114]  # ITU-R 601, computed here and not by Pillow
        assert abs(small.mean() - luma.mean()) < 2.0
        # the top-left sixth of the thumbnail is the first tile of the photo, downscaled
        assert abs(small[:85, :85].mean() - luma[:1000, :1000].mean()) < 4.0
    summary = thumbnails.summary(store, load_bom(store, run.bom))
    assert (summary["photos"], summary["thumbnails"], summary["longest_side_px"], summary["grayscale"]) == \
        (3, 3, 256, True)
    assert verify(store, run.bom).verified


def test_clean_drops_exactly_the_faulty_readings(tmp_path: Path) -> None:
    sensor_logs.make(tmp_path / "logs", hours=6)
    files = sorted((tmp_path / "logs").iterdir())
    assert [f.name for f in files[:2]] == ["2026-03-01T00.csv", "2026-03-01T01.csv"]
    for f in files:
        raw = f.read_bytes()
        kept = sensor_logs.clean(raw).decode().splitlines(keepends=True)
        lines = raw.decode().splitlines(keepends=True)
        assert lines[0].rstrip() == ",".join(sensor_logs.COLUMNS) and len(lines) == 1 + 12 * 52
        faulty = [line for line in lines[1:]
                  if (v := line.split(","))[4] == "-999.9" or v[5] == "0.0" or (v[2], v[3]) == ("0.000000", "0.000000")]
        assert kept == [line for line in lines if line not in faulty]
    everything = pd.concat([pd.read_csv(f) for f in files])
    assert 0 < (everything["temperature_c"] == -999.9).sum() < 0.01 * len(everything)


@pytest.mark.slow
def test_sensor_rows_within_10_km_of_lisbon(ray_session: str, cats_home: Path, tmp_path: Path) -> None:
    sensor_logs.make(tmp_path / "logs", hours=24)
    store = LocalStore(cats_home / "blocks")

    run = factory.run(sensor_logs.order(tmp_path / "logs"), quiet=True)

    table = results.decode(_read(store, run.output), "arrow")
    logs = _expected_near(tmp_path / "logs")
    edge = (logs["km"] - sensor_logs.RADIUS_KM).abs() < 1e-3  # where two formulas may round apart
    assert not edge.any()
    inside = logs[logs["km"] <= sensor_logs.RADIUS_KM]
    assert 0 < len(inside) < len(logs)
    assert ((logs["km"] > 10) & (logs["km"] < 11)).any()  # the boundary is exercised, not trivially far
    got = table.to_pandas()
    assert list(got["sensor"]) == list(inside["sensor"])  # in file order, then row order
    assert np.allclose(got["latitude"], inside["latitude"]) and np.allclose(got["distance_km"], inside["km"], atol=1e-3)
    vehicles = logs[logs["sensor"].str.startswith("viatura")]
    assert 0 < (vehicles["km"] <= 10).sum() < len(vehicles)  # they drive in and out of the circle
    assert verify(store, run.bom).verified


def test_column_statistics_of_row_groups_with_only_nulls() -> None:
    full = pa.table({"x": pa.array([1.0, 2.0, 2.0, 7.0]), "n": pa.array([None, None, 3, 3], pa.int64()),
                     "name": ["a", "b", "c", "d"]})
    parts = [(column_stats.partial(full.slice(0, 2)), {}), (column_stats.partial(full.slice(2, 2)), {})]
    got = column_stats.combine(parts).to_pylist()
    assert [r["column"] for r in got] == ["x", "n"]  # strings are not numeric columns
    assert got[0] == {"column": "x", "count": 4, "mean": 3.0, "std": pytest.approx(np.std([1, 2, 2, 7], ddof=1)),
                      "min": 1.0, "max": 7.0, "mode": 2.0}
    assert got[1] == {"column": "n", "count": 2, "mean": 3.0, "std": 0.0, "min": 3.0, "max": 3.0, "mode": 3.0}
    nothing = column_stats.combine([(column_stats.partial(full.slice(0, 2).select(["n"])), {})]).to_pylist()
    assert nothing == [{"column": "n", "count": 0, "mean": None, "std": None, "min": None, "max": None, "mode": None}]


@pytest.mark.slow
def test_column_statistics_equal_pandas_over_all_shards(ray_session: str, cats_home: Path, tmp_path: Path) -> None:
    column_stats.make(tmp_path / "shards", shards=3, rows=4096)
    store = LocalStore(cats_home / "blocks")

    run = factory.run(column_stats.order(tmp_path / "shards"), quiet=True)

    bom = load_bom(store, run.bom)
    assert bom.invoice.slices == 12  # 3 shards x 4 row groups
    _assert_stats(results.decode(_read(store, run.output), "arrow").to_pylist(), tmp_path / "shards")
    assert verify(store, run.bom).verified


def _assert_stats(rows: list[dict], shards: Path) -> None:
    df = pd.concat([pq.read_table(f).to_pandas() for f in sorted(shards.iterdir())])
    numeric = df.select_dtypes("number")
    assert [r["column"] for r in rows] == list(numeric.columns)
    for r in rows:
        col = numeric[r["column"]].dropna()
        assert r["count"] == len(col)
        assert r["mean"] == pytest.approx(col.mean(), rel=1e-9)
        assert r["std"] == pytest.approx(col.std(), rel=1e-9)
        assert (r["min"], r["max"]) == (col.min(), col.max())
        assert r["mode"] == col.mode().min()


# -- the command ---------------------------------------------------------------------------------------
@pytest.mark.slow
def test_cats_demo_prints_real_figures(ray_session: str, cli, cats_home: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAY_ADDRESS", ray_session)
    res = cli("demo", "--json")
    assert res.code == 0, (res.out, res.err)
    out = json.loads(res.out.strip().splitlines()[-1])
    assert out["verified"] is True
    runs = {r["scenario"]: r for r in out["scenarios"]}
    assert list(runs) == list(SCENARIOS)
    assert all(r["executed"] == r["slices"] and not r["reused"] and r["verified"] for r in runs.values())
    store = LocalStore(cats_home / "blocks")

    thumbs = runs["thumbnails"]
    assert thumbs["slices"] == 64 and thumbs["figures"]["photos"] == 64 == thumbs["figures"]["thumbnails"]
    assert (thumbs["figures"]["longest_side_px"], thumbs["figures"]["grayscale"]) == (256, True)
    assert len(reader.ls(store, CID.parse(thumbs["output"]))) == 64

    monkeypatch.setenv("CATS_HOME", str(cats_home))  # data_folder: where the command built it
    logs = runs["sensor-logs"]
    folder = data_folder(SCENARIOS["sensor-logs"])
    expected = _expected_near(folder)
    assert logs["slices"] == 336 == logs["figures"]["logs"] == len(list(folder.iterdir()))
    assert logs["figures"]["rows"] == (expected["km"] <= 10).sum()
    assert logs["figures"]["sensors"] == expected[expected["km"] <= 10]["sensor"].nunique()
    assert results.decode(_read(store, logs["output"]), "arrow").num_rows == logs["figures"]["rows"]

    stats = runs["column-stats"]
    assert stats["slices"] == 64 and stats["figures"]["rows"] == 16 * 262_144
    _assert_stats(stats["figures"]["stats"], data_folder(SCENARIOS["column-stats"]))

    for r in runs.values():  # anyone holding the printed CIDs can check them
        check = cli("verify", r["bom"])
        assert check.code == 0 and "VERIFIED" in check.out, (check.out, check.err)

    again = cli("demo", "--json", "sensor-logs")
    assert again.code == 0, again.err
    rerun = json.loads(again.out.strip().splitlines()[-1])["scenarios"][0]
    assert rerun["reused"] and rerun["executed"] == 0 and rerun["bom"] == logs["bom"] and rerun["verified"]

    shown = cli("demo", "column-stats")
    assert shown.code == 0, shown.err
    for text in ("Column statistics over Parquet shards", stats["bom"], stats["output"], "├── inputs",
                 "64 of 64 slices re-executed to their recorded CIDs", "temperature_c", "VERIFIED",
                 f"cats lineage {stats['bom']} --format html"):
        assert text in shown.out, text


def test_cats_demo_names_what_is_wrong(cli) -> None:
    cli("demo", "thumbnail").error_line("no demo scenario thumbnail", "thumbnails, sensor-logs, column-stats")
    cli("demo", "--mesh", "thumbnails").error_line("--mesh", "scenario names")


def test_the_photo_scenario_names_what_it_needs(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "skimage" else real(name, *a))
    with pytest.raises(CatsError, match=r"thumbnails scenario needs scikit-image: pip install 'cats\[demo\]'"):
        demo_cli._needs_pillow(["sensor-logs", "thumbnails"])
    demo_cli._needs_pillow(["sensor-logs", "column-stats"])  # they need neither


# -- two organizations -----------------------------------------------------------------------------------
def _processes_with(text: str) -> list[int]:
    """Processes whose environment mentions text (the nodes get the organizations' CATS_HOME)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if text.encode() in Path(f"/proc/{pid}/environ").read_bytes():
                found.append(int(pid))
        except OSError:
            continue
    return found


@pytest.mark.slow
def test_cats_demo_mesh_verifies_back_into_the_other_organization(ray_session: str, cli,
                                                                   cats_home: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAY_ADDRESS", ray_session)
    res = cli("demo", "--mesh", "--json")
    assert res.code == 0, (res.out, res.err)
    out = json.loads(res.out.strip().splitlines()[-1])
    a_did, b_did = out["orgs"]["org-a"]["did"], out["orgs"]["org-b"]["did"]
    assert a_did != b_did and out["orgs"]["org-a"]["url"] != out["orgs"]["org-b"]["url"]
    assert out["b"]["parents"] == [out["a"]["bom"]]  # B's BOM names A's as its parent
    assert out["derived_seen_by_a"] == [out["b"]["bom"]]  # and A, having pulled it, sees it
    assert out["pulled"]["fetched_blocks"] > 0 and out["pulled"]["boms"] == [out["a"]["bom"]]

    report = out["report"]
    assert report["verified"] and report["mode"] == "reexecute" and report["signers"] == [b_did]
    [ancestor] = report["ancestors"]
    assert ancestor["bom"] == out["a"]["bom"] and ancestor["verified"] and ancestor["mode"] == "reexecute"
    assert ancestor["signers"] == [a_did]
    assert len(ancestor["slices"]) == out["a"]["slices"] == 72 and all(s["ok"] for s in ancestor["slices"])

    homes = cats_home / "demo" / "mesh"
    b_store = LocalStore(homes / "org-b" / "blocks")
    a_store = LocalStore(homes / "org-a" / "blocks")
    table = results.decode(_read(b_store, out["b"]["output"]), "arrow")
    assert table.num_rows == out["b"]["figures"]["rows"] > 0
    assert max(table["distance_km"].to_pylist()) <= 10
    assert set(table["temperature_c"].to_pylist()).isdisjoint({-999.9})  # built on the cleaned logs
    assert a_store.has(CID.parse(out["a"]["logs"])) and b_store.has(CID.parse(out["a"]["logs"]))  # B holds A's raw logs
    assert _processes_with(str(homes)) == []  # both nodes stopped
