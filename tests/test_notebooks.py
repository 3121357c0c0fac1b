"""The notebooks in notebooks/ run top to bottom in a real Jupyter kernel (nbclient + ipykernel),
and are committed without outputs, so what a reader opens is what runs."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

pytestmark = pytest.mark.slow

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))


def test_the_notebooks_are_there() -> None:
    assert {p.name for p in NOTEBOOKS} >= {"quickstart.ipynb", "audit.ipynb"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_without_outputs(path: Path) -> None:
    book = nbformat.read(path, as_version=4)
    code = [c for c in book.cells if c.cell_type == "code"]
    assert code and all(c.outputs == [] and c.execution_count is None for c in code)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_runs_top_to_bottom(path: Path, cats_home: Path, ray_session: str, tmp_path: Path,
                            monkeypatch: pytest.MonkeyPatch) -> None:
    """In a fresh CATS_HOME, on the session's Ray (the kernel joins it through RAY_ADDRESS); every
    cell's own assertions must hold."""
    monkeypatch.setenv("RAY_ADDRESS", ray_session)
    book = nbformat.read(path, as_version=4)
    NotebookClient(book, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for c in book.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert (cats_home / "index.sqlite").exists()  # it ran against this CATS_HOME, not the user's
