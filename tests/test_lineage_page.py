"""The lineage page (`cats lineage --format html`, a node's `/ui/lineage/{cid}`) rendered in a real
headless Chromium: a three-Order chain reads left to right through its data (each stage's output
the next one's input), a single run fills the page with its files by name, hostile names stay text,
no box overlaps another or overflows, integrity shows, and screenshots are kept in test-artifacts/
(git-ignored).

Chromium is Debian's `chromium`, which `scripts/test` installs; without it these tests skip, except
under CI=true, where they fail.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


def _browse(html: Path, *, screenshot: Path | None = None, width: int = 1500) -> str:
    """The DOM after the page's script ran, from a headless Chromium with no network of its own."""
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        what = [f"--screenshot={screenshot}", f"--window-size={width},900"] if screenshot else ["--dump-dom"]
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
    """data-cid -> class of every run box in the DOM."""
    return {cid: cls for cls, cid in re.findall(r'<section class="bom ([^"]*)" data-cid="([^"]+)"', dom)}


_MEASURE = """<script>
const boxes = [...document.querySelectorAll("#dag section")].map(s => {
  const r = s.getBoundingClientRect();
  return {key: s.dataset.key, x: r.left, y: r.top, w: r.width, h: r.height,
          overflow: s.scrollHeight > s.clientHeight + 1};
});
const pre = document.createElement("pre"); pre.id = "measured"; pre.textContent = JSON.stringify(boxes);
document.body.appendChild(pre);
</script>"""


def _measure(page: Path, tmp_path: Path) -> tuple[str, dict[str, dict[str, Any]]]:
    """The DOM and every box as Chromium laid it out (key -> x, y, w, h, overflow), from a copy of the page
    with a measuring script added."""
    probe = tmp_path / f"measured-{page.name}"
    probe.write_text(page.read_text().replace("</body>", _MEASURE + "</body>"))
    dom = _browse(probe)
    found = re.search(r'<pre id="measured">(.*?)</pre>', dom, re.S)
    assert found, "the measuring script did not run"
    boxes = {b["key"]: b for b in json.loads(html.unescape(found.group(1)))}
    return dom, boxes


def _readable(boxes: dict[str, dict[str, Any]]) -> None:
    """No box overflows its content and no two boxes overlap."""
    assert not [k for k, b in boxes.items() if b["overflow"]]
    items = list(boxes.values())
    for i, a in enumerate(items):
        for b in items[i + 1:]:
            apart = a["x"] + a["w"] <= b["x"] or b["x"] + b["w"] <= a["x"] or \
                a["y"] + a["h"] <= b["y"] or b["y"] + b["h"] <= a["y"]
            assert apart, (a["key"], b["key"])


def _shoot(page: Path, name: str, width: int = 1500) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / name
    shot.unlink(missing_ok=True)
    _browse(page, screenshot=shot, width=width)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000


def test_a_chain_reads_left_to_right_through_its_data(chain: Chain, tmp_path: Path) -> None:
    page = tmp_path / "lineage.html"
    result = run_cli(chain.home, "lineage", str(chain.boms[-1]), "--format", "html", "-o", str(page))
    assert result.code == 0, result.err
    text = page.read_text()
    # self-contained: nothing to fetch, no script needed to place anything
    assert not re.search(r"<link|\bsrc=|@import|url\((?!#)", text)
    assert not re.findall(r"https?://[^\s\"'`]+", text)
    dom, boxes = _measure(page, tmp_path)
    cards = _cards(dom)
    assert set(cards) == {str(b) for b in chain.boms}
    assert all(cls.split()[0] == "intact" for cls in cards.values())
    assert "root" in cards[str(chain.boms[-1])]
    _readable(boxes)
    boms = [load_bom(chain.store, b) for b in chain.boms]
    # input -> run -> output -> next run ..., each box right of the one before
    keys = [f"data:{boms[0].inputs[0]}"]
    for cid, bom in zip(chain.boms, boms, strict=True):
        keys += [f"run:{cid}", f"data:{bom.outputs[0]}"]
    assert [boxes[k]["x"] for k in keys] == sorted(boxes[k]["x"] for k in keys)
    assert len({boxes[k]["x"] for k in keys}) == len(keys)
    assert all(boxes[k]["x"] + boxes[k]["w"] <= 1500 for k in keys[:4])  # the first run and its data on screen
    drawn = set(re.findall(r'<path d="M[^"]+" data-from="([^"]+)" data-to="([^"]+)"', dom))
    assert drawn == set(zip(keys, keys[1:], strict=False))
    for bom in boms:  # each stage's output feeds the next: one box, both roles
        assert bom.order and str(bom.order) in dom
    assert re.search(rf'<section class="data input output" data-cid="{boms[0].outputs[0]}"', dom)
    for name in ("a.txt", "b.txt"):
        assert f'<span class="fname" title="{name} (' in dom
    assert "page_steps:upper" in dom and "page_steps:double" in dom
    bom = boms[0]
    for cid in (bom.order, bom.outputs[0], *(r.output for r in records(chain.store, bom))):
        assert f'data-copy="{cid}"' in dom  # every CID on the page is whole in its copy button
    _shoot(page, "lineage.png", width=max(b["x"] + b["w"] for b in boxes.values()) + 40)


HOSTILE = "<img src=x onerror=alert(1)>.txt"
HOSTILE_ORDER = "</script><script>alert(1)</script><b>bold"


@pytest.fixture(scope="module")
def single(ray_session: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, CID, str]]:
    """One run over a folder of eleven files, one with a hostile name, under a hostile Order name, in a
    home whose trust list names its own key: (home, BOM, DID)."""
    from cats.identity import Identity
    from cats.identity.trust import Trust

    base = tmp_path_factory.mktemp("single")
    home = base / "home"
    saved = os.environ.get("CATS_HOME")
    os.environ["CATS_HOME"] = str(home)
    try:
        src = jobs.module(base, "single_steps", """
            import sys

            def shout(data):
                print(f"shouting {len(data)} bytes")
                print("<script>alert('log')</script> warning: " + data.decode().strip(), file=sys.stderr)
                return data.upper()
        """)
        files = {f"part-{i:02}.csv": b"x,y\n" * (i + 1) for i in range(10)}
        inputs = jobs.folder(base, {**files, HOSTILE: b"boo\n"})
        run = factory.run(Order(function=Function(entry="single_steps:shout", source=src), inputs=[inputs],
                                name=HOSTILE_ORDER), quiet=True)
        did = Identity.load().did
        Trust().add(did, name="Acme Lab")
    finally:
        if saved is None:
            os.environ.pop("CATS_HOME", None)
        else:
            os.environ["CATS_HOME"] = saved
    yield home, run.bom, did


def test_a_single_run_fills_the_page(single: tuple[Path, CID, str], tmp_path: Path) -> None:
    home, bom_cid, did = single
    page = tmp_path / "single.html"
    assert run_cli(home, "lineage", str(bom_cid), "-f", "html", "-o", str(page)).code == 0
    dom, boxes = _measure(page, tmp_path)
    _readable(boxes)
    store = LocalStore(home / "blocks")
    bom = load_bom(store, bom_cid)
    inp, run, out = f"data:{bom.inputs[0]}", f"run:{bom_cid}", f"data:{bom.outputs[0]}"
    assert set(boxes) == {inp, run, out}
    assert boxes[inp]["x"] < boxes[run]["x"] < boxes[out]["x"]
    assert boxes[out]["x"] + boxes[out]["w"] <= 1500  # all of it on a laptop's screen
    assert sum(b["w"] for b in boxes.values()) > 700 and max(b["h"] for b in boxes.values()) > 150
    # the folders' first entries by name and size, then how many more
    assert dom.count('<span class="fname" title="part-00.csv (') == 2
    assert re.search(r'part-06\.csv \(\w+\)">part-06\.csv</span><span class="size">28 B</span>', dom)
    assert 'title="part-07.csv (' not in dom  # eight shown ("<" sorts first), the rest counted
    assert dom.count("and 3 more") == 2 and "11 entries" in dom
    assert "single_steps:shout" in dom and "11 run" in dom
    assert f'<span class="signer" title="{did}">Acme Lab</span>' in dom  # the trust list's name; the DID on hover
    _shoot(page, "lineage-single.png")


def test_hostile_names_render_as_text(single: tuple[Path, CID, str], tmp_path: Path) -> None:
    home, bom_cid, _ = single
    page = tmp_path / "hostile.html"
    assert run_cli(home, "lineage", str(bom_cid), "-f", "html", "-o", str(page)).code == 0
    text = page.read_text()
    assert HOSTILE not in text and HOSTILE_ORDER not in text and "<img" not in text
    assert html.escape(HOSTILE) in text and html.escape(HOSTILE_ORDER) in text
    dom = _browse(page)
    # Chromium parsed them as text: no element came of them, and the page's one script is its own
    assert "<img" not in dom and "<b>bold" not in dom and dom.count("<script") == 1
    assert dom.count("&lt;img src=x onerror=alert(1)&gt;.txt") >= 2  # the name (input) and its title


_OPEN_LOGS = """<script>
document.querySelector('a[href^="#slices-"]').click();
const first = document.querySelector("details.log");
first.querySelector("summary").click();
const r = first.querySelector("pre").getBoundingClientRect();
const seen = document.createElement("pre"); seen.id = "seen";
seen.textContent = JSON.stringify({w: r.width, h: r.height, text: first.querySelector("pre").textContent,
                                   summary: first.querySelector("summary").textContent,
                                   logs: document.querySelectorAll("details.log").length});
document.body.appendChild(seen);
</script>"""


def test_what_slices_printed_is_one_click_away(single: tuple[Path, CID, str], tmp_path: Path) -> None:
    """Each slice's stdout and stderr are in its row of the run's slice table, shown on a click, as text."""
    home, bom_cid, _ = single
    page = tmp_path / "logs.html"
    assert run_cli(home, "lineage", str(bom_cid), "-f", "html", "-o", str(page)).code == 0
    text = page.read_text()
    assert "<script>alert" not in text and html.escape("<script>alert('log')</script>") in text
    probe = tmp_path / "logs-opened.html"
    probe.write_text(text.replace("</body>", _OPEN_LOGS + "</body>"))
    dom = _browse(probe)
    found = re.search(r'<pre id="seen">(.*?)</pre>', dom, re.S)
    assert found, "the probe did not run"
    seen = json.loads(html.unescape(found.group(1)))
    assert seen["w"] > 100 and seen["h"] > 5  # opened by the clicks, and drawn
    assert re.fullmatch(r"shouting \d+ bytes\n", seen["text"]) and seen["summary"].startswith("stdout (")
    assert seen["logs"] == 22  # eleven slices, each with both streams
    assert "warning: boo" in dom and dom.count("<script") == 2  # the page's and the probe's: the log is text
    _shoot(probe, "lineage-logs.png")


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
