"""The scenarios `cats demo` runs, on data built here (no network) and kept in CATS_HOME/demo/.

Each scenario module holds the user's code (its functions are the sealed code of its Order), a
`make(folder)` that builds the data and an `order(folder)`. Data is built once per version of its
module (the folder name carries the module's hash) into a temporary folder renamed when complete,
so an interrupted build leaves nothing that looks finished.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from cats.config import home
from cats.demo import column_stats, sensor_logs, thumbnails


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    data: str  # what make() builds, for progress messages
    module: ModuleType  # with make(folder), order(folder) and summary(store, bom)


SCENARIOS = {s.key: s for s in (
    Scenario("thumbnails", "Downscale photos to grayscale thumbnails",
             "64 photos of 3000 x 2000 from scikit-image's sample images", thumbnails),
    Scenario("sensor-logs", "Sensor rows within 10 km of Lisbon",
             "336 hourly sensor logs (two weeks, 52 sensors)", sensor_logs),
    Scenario("column-stats", "Column statistics over Parquet shards",
             "16 Parquet shards of 262,144 readings", column_stats),
)}


def data_path(scenario: Scenario) -> Path:
    """Where this version of the scenario's module keeps its data (the folder exists once built)."""
    source = Path(scenario.module.__file__ or "").read_bytes()
    return home() / "demo" / f"{scenario.key}-{hashlib.sha256(source).hexdigest()[:12]}"


def data_folder(scenario: Scenario) -> Path:
    """The scenario's input folder, built now if this version of its module has not built it yet
    (older versions' data is removed)."""
    folder = data_path(scenario)
    if folder.is_dir():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    for stale in folder.parent.glob(f"{scenario.key}-*"):
        shutil.rmtree(stale, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{scenario.key}-", dir=folder.parent))
    try:
        scenario.module.make(staging / "data")
        (staging / "data").rename(folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder
