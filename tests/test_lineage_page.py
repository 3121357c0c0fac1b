"""The lineage page (`cats lineage --format html`, a node's `/ui/lineage/{cid}`) rendered in a real
headless Chromium: every BOM of a three-Order chain is on it, the script drew the edges, integrity
shows, and a screenshot is kept in test-artifacts/ (git-ignored).

Chromium is Debian's `chromium`, which `scripts/test` installs; without it these tests skip, except
under CI=true, where they fail.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import jobs
import pytest
from nodes import RealNode, run_cli

from cats import factory
from cats.bom import load as load_bom
from cats.bom import records
from cats.cas.cid import CID
from cats.cas.store.local import LocalStore
from cats.order import Function, Order

pytestmark = pytest.mark.slow

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if os.environ.get("CI", "").strip().lower() in {"true", "1", "yes"}:
            pytest.fail("chromium is not installed (scripts/test installs Debian's chromium)", pytrace=False)
        pytest.skip("chromium is not installed (scripts/test installs Debian's chromium)")
    return found


def _browse(html: Path, *, screenshot: Path | None = None) -> str:
    """The DOM after the page's script ran, from a headless Chromium with no network of its own."""
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        what = [f"--screenshot={screenshot}", "--window-size=1500,900"] if screenshot else ["--dump-dom"]
        proc = subprocess.run(
            [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", *what, html.as_uri()],
            capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


@dataclass
class Chain:
    home: Path
    store: LocalStore
    boms: list[CID]


@pytest.fixture(scope="module")
def chain(ray_session: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chain]:
    """Three Orders, each over the previous one's output, in a home of their own."""
    base = tmp_path_factory.mktemp("page")
    home = base / "node" / "home"  # RealNode's home, so a node can serve this lineage
    saved = os.environ.get("CATS_HOME")
    os.environ["CATS_HOME"] = str(home)
    try:
        src = jobs.module(base, "page_steps", """
            def upper(data):
                return data.upper()

            def rev(data):
                return data[::-1]

            def double(data):
                return data + data
        """)
        inputs = jobs.folder(base, {"a.txt": b"alpha\n", "b.txt": b"bravo\n"})
        boms: list[CID] = []
        previous: CID | Path = inputs
        for step in ("upper", "rev", "double"):
            run = factory.run(Order(function=Function(entry=f"page_steps:{step}", source=src),
                                    inputs=[previous], name=f"step {step}"), quiet=True)
            boms.append(run.bom)
            previous = run.output
    finally:
        if saved is None:
            os.environ.pop("CATS_HOME", None)
        else:
            os.environ["CATS_HOME"] = saved
    yield Chain(home, LocalStore(home / "blocks"), boms)


def _cards(dom: str) -> dict[str, str]:
    """data-cid -> class of every BOM card in the DOM."""
    return {cid: cls for cls, cid in re.findall(r'<section class="bom ([^"]*)" data-cid="([^"]+)"', dom)}


def test_the_page_shows_every_bom_and_the_script_draws_the_edges(chain: Chain, tmp_path: Path) -> None:
    page = tmp_path / "lineage.html"
    result = run_cli(chain.home, "lineage", str(chain.boms[-1]), "--format", "html", "-o", str(page))
    assert result.code == 0, result.err
    text = page.read_text()
    # self-contained: nothing to fetch (the one URL is SVG's namespace name, never fetched)
    assert not re.search(r"<link|\bsrc=|@import|url\((?!#)", text)
    assert set(re.findall(r"https?://[^\s\"'`]+", text)) == {"http://www.w3.org/2000/svg"}
    dom = _browse(page)
    cards = _cards(dom)
    assert set(cards) == {str(b) for b in chain.boms}
    assert all(cls.split()[0] == "intact" for cls in cards.values())
    assert "root" in cards[str(chain.boms[-1])]
    drawn = set(re.findall(r'<path d="M[^"]+" data-from="([^"]+)" data-to="([^"]+)"', dom))
    assert drawn == {(str(a), str(b)) for a, b in zip(chain.boms, chain.boms[1:], strict=False)}
    bom = load_bom(chain.store, chain.boms[0])
    for cid in (bom.order, bom.outputs[0], *(r.output for r in records(chain.store, bom))):
        assert f'data-copy="{cid}"' in dom  # every CID on the page is whole in its copy button
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "lineage.png"
    shot.unlink(missing_ok=True)
    _browse(page, screenshot=shot)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000


def test_an_altered_block_turns_its_bom_red(chain: Chain, tmp_path: Path) -> None:
    middle = load_bom(chain.store, chain.boms[1])
    victim = next(records(chain.store, middle)).output
    path = chain.store.path(victim)
    original = path.read_bytes()
    path.chmod(0o644)
    path.write_bytes(b"forged")
    try:
        page = tmp_path / "altered.html"
        assert run_cli(chain.home, "lineage", str(chain.boms[-1]), "-f", "html", "-o", str(page)).code == 0
        cards = _cards(_browse(page))
    finally:
        path.write_bytes(original)
    assert cards[str(chain.boms[1])].split()[0] == "altered"
    assert cards[str(chain.boms[0])].split()[0] == "intact"


def test_a_node_serves_the_page(chain: Chain, ray_session: str, tmp_path: Path) -> None:
    node = RealNode(chain.home.parent, ray_session)
    node.start()
    try:
        r = httpx.get(f"{node.url}/ui/lineage/{chain.boms[-1]}", timeout=60)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
        page = tmp_path / "served.html"
        page.write_text(r.text)
        assert set(_cards(_browse(page))) == {str(b) for b in chain.boms}
        missing = httpx.get(f"{node.url}/ui/lineage/{CID.hash(b'no such bom', 0x71)}", timeout=30)
        assert missing.status_code == 404 and "not on this node" in missing.json()["detail"]
    finally:
        node.stop()


def test_a_cid_that_is_no_bom_is_named(chain: Chain) -> None:
    ghost = CID.hash(b"no such bom", 0x71)
    run_cli(chain.home, "lineage", str(ghost), "--format", "html").error_line(str(ghost))
