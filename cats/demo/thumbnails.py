"""Scenario 1: downscale a folder of large photos into grayscale thumbnails.

The photos are built here from the sample images scikit-image ships inside its package (no
network): each is a 3000 x 2000 mosaic of six of them, enlarged, flipped and turned, saved as
JPEG. The Order runs `thumbnail` once per file and merges the results into a folder named as its
inputs, so the output is one directory CID.

This module is also the sealed code of the Order: workers import it as `thumbnails`.
"""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cats.bom import BOM
from cats.cas import reader
from cats.cas.store import BlockStore
from cats.order import Function, InfraFunction, Order

if TYPE_CHECKING:  # Pillow is in the demo extra, imported when used
    import PIL.Image

# Sample images scikit-image keeps in its wheel (skimage.data functions that never download).
SOURCES = ("astronaut", "brick", "camera", "cell", "chelsea", "coffee", "coins", "grass", "gravel",
           "hubble_deep_field", "immunohistochemistry", "logo", "moon", "page", "retina", "rocket", "text")
TILE = 1000  # pixels; a photo is 3 x 2 tiles


def thumbnail(data: bytes, size: int = 256) -> bytes:
    """A grayscale JPEG whose longer side is `size` pixels, aspect ratio kept."""
    from PIL import Image, ImageOps

    with Image.open(io.BytesIO(data)) as image:
        gray = ImageOps.grayscale(image)
    gray.thumbnail((size, size), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    gray.save(out, "JPEG", quality=85)
    return out.getvalue()


def _sources() -> list[PIL.Image.Image]:
    import skimage.data
    from PIL import Image

    return [Image.fromarray(getattr(skimage.data, name)()).convert("RGB") for name in SOURCES]


def _photo(sources: list[PIL.Image.Image], seed: int) -> bytes:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    turns = list(Image.Transpose)
    canvas = Image.new("RGB", (3 * TILE, 2 * TILE))
    for k in range(6):
        tile = sources[int(rng.integers(len(sources)))].resize((TILE, TILE), Image.Resampling.BICUBIC)
        canvas.paste(tile.transpose(turns[int(rng.integers(len(turns)))]), ((k % 3) * TILE, (k // 3) * TILE))
    out = io.BytesIO()
    canvas.save(out, "JPEG", quality=90)
    return out.getvalue()


def make(folder: Path, count: int = 64) -> None:
    """Write `count` photos into folder (photo-00.jpg, ...); the same bytes on every run of one Pillow."""
    folder.mkdir(parents=True, exist_ok=True)
    sources = _sources()

    def write(i: int) -> None:
        (folder / f"photo-{i:02d}.jpg").write_bytes(_photo(sources, seed=i))

    with ThreadPoolExecutor(max_workers=2) as pool:  # Pillow lets go of the GIL while resizing and encoding
        list(pool.map(write, range(count)))


def order(folder: Path) -> Order:
    return Order(
        name="demo: grayscale thumbnails",
        function=Function.of(thumbnail, size=256),
        inputs=[folder],
        infra=InfraFunction(split="files", merge="directory"),
    )


def summary(store: BlockStore, bom: BOM) -> dict[str, Any]:
    """What the run made, read back from the store: counts, bytes, and every thumbnail's size and mode."""
    from PIL import Image

    photos, thumbs = reader.ls(store, bom.inputs[0]), reader.ls(store, bom.outputs[0])  # type: ignore[arg-type]
    shapes = []
    for thumb in thumbs:
        with Image.open(io.BytesIO(b"".join(reader.read(store, thumb.cid)))) as image:
            shapes.append((image.size, image.mode))
    photo_bytes, thumb_bytes = sum(p.size for p in photos), sum(t.size for t in thumbs)
    longest = max(max(size) for size, _ in shapes)
    return {"photos": len(photos), "photo_bytes": photo_bytes, "thumbnails": len(thumbs),
            "thumbnail_bytes": thumb_bytes, "longest_side_px": longest,
            "grayscale": all(mode == "L" for _, mode in shapes),
            "text": f"{len(photos)} photos ({photo_bytes / 1e6:.1f} MB) -> {len(thumbs)} grayscale "
                    f"thumbnails ({thumb_bytes / 1e6:.2f} MB, longest side {longest} px)"}
