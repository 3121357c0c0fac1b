"""Mistakes caught before Ray starts, each reported in one line: an entry its module does not define,
a split that does not fit its input, an Order file that runs the Factory again wherever it is imported,
GPUs asked of a Ray without them, a malformed CID string among the inputs; and what slices print never
reaches the stdout of `cats run` / `cats submit`, which carries the result alone.

Job modules have the prefix mk_ (the session's workers keep what they imported).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import jobs
import pytest
from pydantic import ValidationError

from cats import factory
from cats.bom import load as load_bom
from cats.bom import records as bom_records
from cats.cas import reader
from cats.cas.cid import CID
from cats.cas.importer import Importer
from cats.cas.store.local import LocalStore
from cats.cas.store.memory import MemoryStore
from cats.errors import CatsError
from cats.factory import ingress
from cats.order import Function, InfraFunction, Order, Plant
from cats.order.seal import seal

FILES = {"a.txt": b"alpha\n", "b.txt": b"bravo bravo\n"}

JOB = """
    import asyncio

    def count(path):
        return str(len(path.read_bytes().split()))

    async def later(data):
        return data

    class Model:
        def predict(self, data):
            return data

    class Derived(Model):
        pass

    try:
        from json import dumps as dump
    except ImportError:
        def dump(value):
            return str(value)

    alias = count
"""


def _order_file(folder: Path, name: str, body: str) -> Path:
    path = folder / f"{name}.py"
    path.write_text(textwrap.dedent(body))
    return path


def _nothing_written(home: Path, blocks_before: int = 0) -> None:
    """A refused Order leaves no index, no run folder and no new block."""
    assert not (home / "index.sqlite").exists()
    assert not (home / "runs").exists()
    assert len(list((home / "blocks").rglob("*")) if (home / "blocks").exists() else []) == blocks_before


def _blocks(home: Path) -> int:
    return len(list((home / "blocks").rglob("*")))


# -- 1. entry names --------------------------------------------------------------------------------
def test_submit_an_entry_the_file_does_not_define(cli, cats_home: Path, tmp_path: Path) -> None:
    store = jobs.home_store(cats_home)
    inputs = jobs.add(store, jobs.folder(tmp_path, FILES))
    job = jobs.module(tmp_path, "mk_submit_job", JOB)
    before = _blocks(cats_home)

    line = cli("submit", "-f", job, "-c", str(inputs), "--entry", "cuont").error_line(
        "mk_submit_job.py", "'cuont'", "did you mean 'count'?")
    assert "Traceback" not in line
    _nothing_written(cats_home, before)

    far = cli("submit", "-f", job, "-c", str(inputs), "--entry", "zzz").error_line("mk_submit_job.py", "'zzz'")
    assert "did you mean" not in far
    assert "count" in far and "later" in far  # what it does define


def test_order_file_with_unknown_entries(cli, cats_home: Path, tmp_path: Path) -> None:
    job = jobs.module(tmp_path, "mk_order_job", JOB)
    for entry, split, merge, culprits in [
        ("mk_order_job:Model.predcit", "files", "directory", ("'Model.predcit'", "did you mean 'Model.predict'?")),
        ("mk_order_job:count", "files", "mrege", ("'mrege'",)),
        ("mk_order_job:count", "spilt", "directory", ("'spilt'",)),
        ("mk_order_jb:count", "files", "directory", ("'mk_order_jb'",)),
    ]:
        def part(name: str, builtin: str) -> str:
            if name == builtin:
                return repr(name)
            return f"Function(entry='mk_order_job:{name}', source=Path({str(job)!r}))"

        order_file = _order_file(tmp_path, "mk_order_file", f"""
            from pathlib import Path
            from cats.order import Function, InfraFunction, Order

            order = Order(function=Function(entry={entry!r}, source=Path({str(job)!r})),
                          infra=InfraFunction(split={part(split, 'files')}, merge={part(merge, 'directory')}),
                          inputs=[Path({str(tmp_path)!r})])
        """)
        cli("run", order_file).error_line(str(job), *culprits)
        _nothing_written(cats_home)


def test_entries_that_exist_are_accepted(tmp_path: Path) -> None:
    job = jobs.module(tmp_path, "mk_fine_job", JOB)

    def sealed(module: Path, name: str) -> None:
        seal(Order(function=Function(entry=f"{module.stem}:{name}", source=module), inputs=[CID.hash(b"x")]),
             MemoryStore())

    for entry in ("count", "later", "Model.predict", "Derived.predict", "Derived.anything", "dump", "alias"):
        sealed(job, entry)
    with pytest.raises(CatsError, match="has no 'missing'"):  # the same module, parsed: a missing name is seen
        sealed(job, "missing")
    # names bound where a parse cannot follow (or through a walrus at module level): the worker decides
    for k, body in enumerate([
        "from os.path import *",
        "def __getattr__(name):\n    return len",
        "if (shout := len):\n    pass",
        "for n in ['shout']:\n    locals()[n] = len",
        "import sys as _sys\nsetattr(_sys.modules[__name__], 'shout', len)",
        "from sys import modules\nmodules[__name__].shout = len",
        "import builtins\nbuiltins.exec('def shout(x):\\n    return x')",
    ]):
        sealed(jobs.module(tmp_path, f"mk_dynamic_job_{k}", body + "\n"), "shout")
    # a module the code holds compiled only
    package = tmp_path / "mk_compiled"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "helper.abi3.so").write_bytes(b"\x7fELF")
    seal(Order(function=Function(entry="mk_compiled.helper:shout", source=package), inputs=[CID.hash(b"x")]),
         MemoryStore())


def test_entries_of_stored_code(tmp_path: Path) -> None:
    store = MemoryStore()
    pkg = tmp_path / "code" / "mk_pkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("from .tools import scale\n")
    (pkg / "tools.py").write_text("def scale(data):\n    return data\n\ndef shift(data):\n    return data\n")
    (tmp_path / "code" / "mk_flat.py").write_text("def flat(data):\n    return data\n")
    with Importer(store, cid_version=1) as importer:
        *_, top = importer.add_path(tmp_path / "code")
    code = top.cid

    def sealed(entry: str) -> Order:
        return seal(Order(function=Function(entry=entry, code=code), inputs=[CID.hash(b"x")]), store)

    for entry in ("mk_pkg:scale", "mk_pkg.tools:shift", "mk_flat:flat"):
        assert sealed(entry).function.code == code
    with pytest.raises(CatsError, match=rf"{code}/mk_pkg/tools.py has no 'shfit' .*did you mean 'shift'\?"):
        sealed("mk_pkg.tools:shfit")
    with pytest.raises(CatsError, match=rf"{code}/mk_pkg/__init__.py has no 'scael' .*did you mean 'scale'\?"):
        sealed("mk_pkg:scael")
    with pytest.raises(CatsError, match=rf"code {code} holds no module 'mk_nowhere'"):
        sealed("mk_nowhere:f")
    # code this store lacks is the worker's to fetch: nothing to check here
    seal(Order(function=Function(entry="m:f", code=CID.hash(b"elsewhere")), inputs=[CID.hash(b"x")]), store)


def test_entry_of_a_file_that_does_not_parse(tmp_path: Path) -> None:
    job = jobs.module(tmp_path, "mk_broken_job", "def f(data)\n    return data\n")
    with pytest.raises(CatsError, match=r"mk_broken_job.py does not parse: .*line 1"):
        seal(Order(function=Function(entry="mk_broken_job:f", source=job), inputs=[CID.hash(b"x")]), MemoryStore())


# -- 2. split vs input -----------------------------------------------------------------------------
@pytest.mark.slow
def test_lines_over_a_folder(ray_session: str, cats_home: Path, tmp_path: Path) -> None:
    src = jobs.module(tmp_path, "mk_lines_folder", """
        def tag(data):
            return b"<" + data.upper() + b">"
    """)
    store = jobs.home_store(cats_home)
    texts = {"a.txt": b"".join(b"line %d of a\n" % i for i in range(12)), "b.txt": b"just one\n",
             "sub/c.txt": b"first of c\nsecond of c\nthird of c"}
    folder = tmp_path / "texts"
    for name, data in texts.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    cid = jobs.add(store, folder)
    chunk = 40

    pieces = ingress.split(Order(function=Function(entry="mk_lines_folder:tag", source=src), inputs=[cid],
                                 infra=InfraFunction(split="lines", chunk_bytes=chunk)), store)
    by_file: dict[str, list[tuple[int, int]]] = {}
    for piece, assembly in pieces:
        assert assembly == {"input": 0, "name": piece.name, "offset": piece.offset}
        by_file.setdefault(piece.name, []).append((piece.offset, piece.offset + piece.length))
    assert sorted(by_file) == sorted(texts)
    for name, ranges in by_file.items():
        data = texts[name]
        assert ranges[0][0] == 0 and ranges[-1][1] == len(data)
        assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:], strict=False))
        assert all(data[s:e].endswith(b"\n") for s, e in ranges[:-1])
    assert len(by_file["a.txt"]) > 2  # one file, several slices

    directory = factory.run(Order(function=Function(entry="mk_lines_folder:tag", source=src), inputs=[cid],
                                  infra=InfraFunction(split="lines", chunk_bytes=chunk)))
    out = {name: b"".join(reader.read(store, c)) for name, c in _files_of(store, directory.output)}
    assert out == {name: b"".join(b"<" + texts[name][s:e].upper() + b">" for s, e in by_file[name])
                   for name in texts}
    recs = list(bom_records(store, load_bom(store, directory.bom)))
    assert [r.input.name for r in recs] == [p.name for p, _ in pieces]

    concat = factory.run(Order(function=Function(entry="mk_lines_folder:tag", source=src), inputs=[cid],
                               infra=InfraFunction(split="lines", merge="concat", chunk_bytes=chunk)))
    assert b"".join(reader.read(store, concat.output)) == b"".join(
        b"<" + texts[p.name][p.offset:p.offset + p.length].upper() + b">" for p, _ in pieces)


def _files_of(store: LocalStore, cid: CID, prefix: str = "") -> list[tuple[str, CID]]:
    found = []
    for name, child, _ in reader.entries(store, cid):
        path = f"{prefix}{name}"
        found += _files_of(store, child, path + "/") if reader.is_folder(store, child) else [(path, child)]
    return found


def test_a_file_name_that_is_not_utf8_is_refused_before_anything_runs(cli, cats_home: Path,
                                                                      tmp_path: Path) -> None:
    folder = tmp_path / "latin"
    folder.mkdir()
    (folder / os.fsdecode(b"caf\xe9.txt")).write_bytes(b"one\n")
    (folder / "plain.txt").write_bytes(b"two\n")
    cid = cli("add", "-r", "-q", folder).out.strip()
    job = jobs.module(tmp_path, "mk_latin_job", """
        def up(path):
            return path.read_bytes().upper()
    """)
    started = time.monotonic()
    cli("submit", "-f", job, "-c", cid, "--entry", "up").error_line("file caf\\xe9.txt", cid, "not UTF-8",
                                                                      "nothing was run")
    assert time.monotonic() - started < 30  # refused on the driver, not after the slices ran
    assert not (cats_home / "runs").exists()


def test_the_directory_merge_joins_only_what_lines_cut_from_one_file() -> None:
    from cats.factory import egress

    store = MemoryStore()
    with Importer(store, cid_version=1) as importer:
        cids = [importer.add_bytes(text) for text in (b"A\n", b"B\n")]

    def parts(assemblies: list[dict[str, object]]) -> list[dict[str, object]]:
        return [{"index": i, "name": "out", "output": str(c.cid), "encoding": "bytes", "size": c.size,
                 "tsize": c.tsize, "assembly": a} for i, (c, a) in enumerate(zip(cids, assemblies, strict=True))]

    with Importer(store, cid_version=1) as importer:
        joined = egress._directory(store, importer, parts([{"input": 0, "offset": 0, "name": "out"},
                                                           {"input": 0, "offset": 2, "name": "out"}]))
        assert [(n, b"".join(reader.read(store, c))) for n, c, _ in reader.entries(store, joined.cid)] == \
            [("out", b"A\nB\n")]
        with pytest.raises(CatsError, match="two slices are named 'out'"):  # a user split's two slices of one name
            egress._directory(store, importer, parts([{}, {}]))


def test_lines_of_one_file_keep_their_slices(tmp_path: Path) -> None:
    """A single-file `lines` Order slices as it always did: unnamed ranges, assembly input and offset."""
    store = MemoryStore()
    (tmp_path / "one.txt").write_bytes(b"".join(b"row %d\n" % i for i in range(30)))
    cid = jobs.add(store, tmp_path / "one.txt")
    order = Order(function=Function(entry="m:f", code=CID.hash(b"c")), inputs=[cid],
                  infra=InfraFunction(split="lines", chunk_bytes=50))
    pieces = ingress.split(order, store)
    assert [(p.model_dump(mode="json", exclude_none=True), a) for p, a in pieces] == [
        ({"cid": str(cid), "offset": o, "length": n, "meta": {}}, {"input": 0, "offset": o})
        for o, n in [(0, 54), (54, 55), (109, 56), (165, 35)]]


def test_split_that_does_not_fit_the_input(cli, cats_home: Path, tmp_path: Path) -> None:
    store = jobs.home_store(cats_home)
    (tmp_path / "plain.txt").write_bytes(b"not parquet\n")
    cid = jobs.add(store, tmp_path / "plain.txt")
    order_file = _order_file(tmp_path, "mk_rowgroups_text", f"""
        from cats.order import Function, InfraFunction, Order

        def rows(table):
            return table.num_rows

        order = Order(function=Function.of(rows, takes="table"), inputs=["{cid}"],
                      infra=InfraFunction(split="row-groups", merge="list"))
    """)
    cli("run", order_file).error_line(str(cid), "not a Parquet file")
    assert not (cats_home / "runs").exists()

    with pytest.raises(ValidationError, match="takes='table'.*split='lines'"):
        Order(function=Function(entry="m:f", code=CID.hash(b"c"), takes="table"), inputs=[cid],
              infra=InfraFunction(split="lines"))


# -- 3. the Factory run again where the Order file is imported -------------------------------------
REENTRANT = """
    from pathlib import Path

    from cats import factory
    from cats.order import Function, Order

    def shout(data):
        return data.upper()

    order = Order(function=Function.of(shout), inputs=[Path({inputs!r})])
    factory.run(order)
"""


def _ray_workers() -> int:
    """Processes the session Ray's raylet has started (its workers, and its two agents)."""
    import psutil
    import ray
    from ray._private import ray_constants

    raylet = ray._private.worker._global_node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process
    return len(psutil.Process(raylet.pid).children())


@pytest.mark.slow
def test_run_at_import_fails_in_the_worker(ray_session: str, cats_home: Path, tmp_path: Path) -> None:
    """`python ORDER.py` for a file that runs its Order at import: the workers importing it to load the
    function refuse to run it again, so the run fails fast with the reason and no more workers start
    than the run's own (the count is watched, and the run stopped, as soon as it grows past that)."""
    inputs = jobs.folder(tmp_path, FILES)
    script = jobs.module(tmp_path, "mk_reentrant", REENTRANT.format(inputs=str(inputs)))
    before = _ray_workers()
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "CATS_HOME": str(cats_home), "RAY_ADDRESS": ray_session})
    most = before
    try:
        while proc.poll() is None and time.monotonic() - started < 120:
            most = max(most, _ray_workers())
            if most > before + 6:  # a run started in each worker that imports the file: stop it now
                break
            time.sleep(0.2)
    finally:
        if proc.poll() is None:
            proc.kill()
        _, err = proc.communicate()
    elapsed = time.monotonic() - started
    message = err.decode()
    assert most <= before + 6, f"{most - before} Ray workers started"
    assert proc.returncode == 1, message
    assert "cats.factory.run called while importing mk_reentrant to run slice" in message
    assert 'if __name__ == "__main__":' in message
    assert elapsed < 60
    assert not (cats_home / "pins").exists() or not any((cats_home / "pins").iterdir())  # no BOM


@pytest.mark.slow
def test_run_at_import_of_the_order_file(ray_session: str, cli, cats_home: Path, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAY_ADDRESS", ray_session)
    jobs.folder(tmp_path, FILES)
    jobs.module(tmp_path, "mk_reentrant_job", """
        def shout(data):
            return data.upper()
    """)
    order_file = _order_file(tmp_path, "mk_reentrant_order", """
        from pathlib import Path

        from cats import factory
        from cats.order import Function, Order
        from mk_reentrant_job import shout

        order = Order(function=Function.of(shout), inputs=[Path(__file__).parent / "inputs"])
        factory.run(order)
    """)
    cli("run", order_file, cwd=tmp_path).error_line(
        "cats.factory.run called while cats run was importing", "mk_reentrant_order.py",
        'if __name__ == "__main__":')
    _nothing_written(cats_home)


@pytest.mark.slow
def test_run_inside_a_slice_is_refused(ray_session: str, cats_home: Path, tmp_path: Path) -> None:
    src = jobs.module(tmp_path, "mk_run_in_slice", """
        from cats import factory
        from cats.order import Function, Order

        def echo(path):
            return path.read_bytes()

        def nest(path):
            return factory.run(Order(function=Function.of(echo), inputs=[path])).bom
    """)
    store = jobs.home_store(cats_home)
    inputs = jobs.add(store, jobs.folder(tmp_path, FILES))
    with pytest.raises(CatsError) as failed:
        factory.run(Order(function=Function(entry="mk_run_in_slice:nest", source=src, takes="path"),
                          inputs=[inputs]))
    message = str(failed.value)
    assert "\n" not in message
    assert "cats.factory.run called while running slice 0 of mk_run_in_slice:nest" in message
    assert "cats.factory.submit" in message


@pytest.mark.slow
def test_verify_and_submit_inside_a_slice_are_refused(ray_session: str, cats_home: Path, tmp_path: Path) -> None:
    """Re-executing slices or sending an Order to a node starts work that imports the same code again."""
    src = jobs.module(tmp_path, "mk_verify_in_slice", """
        import cats

        def echo(path):
            return path.read_bytes()

        def check(path, bom, store):
            return str(cats.verify(bom, store=cats.open_store(store)).verified)

        def send(path):
            order = cats.Order(function=cats.Function.of(echo, takes="path"), inputs=[path])
            return str(cats.submit(order, to="http://127.0.0.1:9").bom)
    """)
    store = jobs.home_store(cats_home)
    inputs = jobs.add(store, jobs.folder(tmp_path, FILES))
    first = factory.run(Order(function=Function(entry="mk_verify_in_slice:echo", source=src, takes="path"),
                              inputs=[inputs]))
    for entry, params, call in [("check", {"bom": str(first.bom), "store": store.url}, "cats.verify"),
                                ("send", {}, "cats.submit")]:
        with pytest.raises(CatsError) as failed:
            factory.run(Order(function=Function(entry=f"mk_verify_in_slice:{entry}", source=src, takes="path",
                                                params=params), inputs=[inputs]))
        assert f"{call} called while running slice 0 of mk_verify_in_slice:{entry}" in str(failed.value)


# -- 4. GPUs ---------------------------------------------------------------------------------------
def test_plant_num_gpus() -> None:
    assert Plant().model_dump() == {"address": None, "num_cpus": 1.0, "resources": {}, "retries": 3,
                                    "timeout_s": None, "batch": None}  # every existing Order keeps its CID
    assert Plant(num_gpus=0).model_dump() == Plant().model_dump()
    assert Plant(num_gpus=1).model_dump()["num_gpus"] == 1.0
    assert Plant(num_gpus=1).model_dump() == Plant(num_gpus=1.0).model_dump()
    with pytest.raises(ValidationError, match="num_gpus"):
        Plant(resources={"GPU": 1})
    with pytest.raises(ValidationError, match="num_cpus"):
        Plant(resources={"CPU": 2})
    with pytest.raises(ValidationError):
        Plant(num_gpus=-1)


def test_gpu_resource_in_an_order_file(cli, cats_home: Path, tmp_path: Path) -> None:
    order_file = _order_file(tmp_path, "mk_gpu_resource", """
        from cats.order import Function, Order, Plant

        def f(data):
            return data

        order = Order(function=Function.of(f), inputs=["bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy"],
                      plant=Plant(resources={"GPU": 1}))
    """)
    cli("run", order_file).error_line("mk_gpu_resource.py", "Plant resources", "num_gpus")
    _nothing_written(cats_home)


MORE_SCRIPT = """
    import sys, time
    from pathlib import Path

    import ray
    ray.init(address="local", num_cpus=2, num_gpus=0, include_dashboard=False, logging_level="WARNING")

    import cats
    from mk_more_job import f

    for plant in [cats.Plant(num_gpus=1), cats.Plant(num_cpus=64), cats.Plant(resources={"tpu": 2}),
                  cats.Plant(num_gpus=1, replicas=2)]:
        started = time.monotonic()
        try:
            cats.run(cats.Order(function=cats.Function.of(f), inputs=[Path(sys.argv[1])], plant=plant))
        except cats.CatsError as e:
            print(f"{time.monotonic() - started:.1f} {e}")
"""


@pytest.mark.slow
def test_more_than_the_embedded_ray_has(cats_home: Path, tmp_path: Path) -> None:
    """On the embedded Ray (this machine, which nothing grows) a task that cannot fit would wait forever."""
    jobs.module(tmp_path, "mk_more_job", """
        def f(data):
            return data
    """)
    script = tmp_path / "more.py"
    script.write_text(textwrap.dedent(MORE_SCRIPT))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run([sys.executable, str(script), str(jobs.folder(tmp_path, FILES))], capture_output=True,
                          text=True, cwd=tmp_path, env={**env, "PYTHONPATH": f"{tmp_path}:{env.get('PYTHONPATH', '')}"},
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    for line, culprit in zip(lines, ["asks for 1 GPU per slice; this Ray has 0",
                                     "asks for 64 CPUs per slice; this Ray has 2",
                                     "asks for 2 tpu per slice; this Ray has 0",
                                     "asks for 0.5 GPUs per replica of a slice; this Ray has 0"], strict=True):
        seconds, message = line.split(" ", 1)
        assert culprit in message and "nothing was run" in message, line
        assert float(seconds) < 30, line
    assert not (cats_home / "runs").exists() or not list((cats_home / "runs").iterdir())


GPU_SCRIPT = """
    import json
    import sys
    from pathlib import Path

    import ray
    ray.init(address="local", num_cpus=1, num_gpus=1, include_dashboard=False, logging_level="WARNING")

    from cats import factory
    from cats.cas import dagcbor, reader
    from cats.cas.store import open_store
    from cats.factory import results
    from cats.order import Function, InfraFunction, Order, Plant
    from mk_gpu_job import seen

    for replicas in (1, 2):
        run = factory.run(Order(function=Function.of(seen), inputs=[Path(sys.argv[1])],
                                infra=InfraFunction(merge="list"), plant=Plant(num_gpus=1, replicas=replicas)))
        store = open_store()
        print(json.dumps([results.decode(b"".join(reader.read(store, c)), "dag-cbor")
                          for c in dagcbor.decode(store.get(run.output))]))
"""


@pytest.mark.slow
def test_num_gpus_reaches_ray(tmp_path: Path) -> None:
    """On a Ray of its own that declares one GPU: the slices (and each replica) are given it."""
    inputs = jobs.folder(tmp_path, {"x.txt": b"x\n", "y.txt": b"y\n"})
    jobs.module(tmp_path, "mk_gpu_job", """
        import os

        import ray

        def seen(data):
            return {"gpus": [str(g) for g in ray.get_gpu_ids()], "cuda": os.environ.get("CUDA_VISIBLE_DEVICES")}
    """)
    script = jobs.module(tmp_path, "mk_gpu_driver", GPU_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run([sys.executable, str(script), str(inputs)], capture_output=True, cwd=tmp_path,
                          env={**env, "CATS_HOME": str(tmp_path / "home"),
                               "PYTHONPATH": os.pathsep.join([str(tmp_path), env.get("PYTHONPATH", "")])},
                          timeout=300)
    assert proc.returncode == 0, proc.stderr.decode()
    single, replicated = (json.loads(line) for line in proc.stdout.decode().strip().splitlines()[-2:])
    assert single == [{"gpus": ["0"], "cuda": "0"}] * 2
    assert replicated == [{"gpus": ["0"], "cuda": "0"}] * 2


# -- 5. malformed CID strings among the inputs ----------------------------------------------------
def test_malformed_cid_input(cli, cats_home: Path, tmp_path: Path) -> None:
    fn = Function(entry="m:f", code=CID.hash(b"c"))
    with pytest.raises(ValidationError, match=r"malformed CID 'bafyXXXbad'.*pathlib\.Path"):
        Order(function=fn, inputs=["bafyXXXbad"])
    with pytest.raises(ValidationError, match="malformed CID 'data.csv'"):
        Order(function=fn, inputs=["data.csv"])
    good = str(CID.hash(b"x"))
    assert Order(function=fn, inputs=[good]).inputs == [CID.parse(good)]
    assert Order(function=fn, inputs=["https://example.org/a.csv"]).inputs == ["https://example.org/a.csv"]
    assert Order(function=fn, inputs=[Path("bafyXXXbad")]).inputs == [Path("bafyXXXbad")]  # a Path is a path

    order_file = _order_file(tmp_path, "mk_bad_cid", """
        from cats.order import Function, Order

        def f(data):
            return data

        order = Order(function=Function.of(f), inputs=["bafyXXXbad"])
    """)
    line = cli("run", order_file).error_line("mk_bad_cid.py", "inputs.0", "malformed CID 'bafyXXXbad'")
    assert "does not exist" not in line
    _nothing_written(cats_home)


# -- 6. stdout carries the result alone ------------------------------------------------------------
@pytest.mark.slow
def test_what_slices_print_stays_off_stdout(ray_session: str, cli, cats_home: Path, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAY_ADDRESS", ray_session)
    jobs.folder(tmp_path, FILES)
    jobs.module(tmp_path, "mk_chatty_job", """
        import subprocess
        import time

        def chatty(path):
            for i in range(200):
                print(f"chatty line {i} of {path.name}")
            subprocess.run(["echo", "echoed by a subprocess"], check=True)
            time.sleep(1.5)  # long enough for Ray to forward the lines while the run goes on
            return path.read_bytes()
    """)
    order_file = _order_file(tmp_path, "mk_chatty", """
        from pathlib import Path

        from cats.order import Function, Order
        from mk_chatty_job import chatty

        order = Order(function=Function.of(chatty, takes="path"), inputs=[Path(__file__).parent / "inputs"])
    """)

    plain = cli("run", order_file, cwd=tmp_path)
    assert plain.code == 0, plain.err
    lines = plain.out.splitlines()
    assert len(lines) == 1, plain.out[:2000]
    label, text = lines[0].split()
    assert label == "bom"
    bom = CID.parse(text)

    as_json = cli("run", order_file, "--json", "--force", cwd=tmp_path)
    assert as_json.code == 0, as_json.err
    assert len(as_json.out.splitlines()) == 1, as_json.out[:2000]
    assert json.loads(as_json.out)["order"] == str(load_bom(jobs.home_store(cats_home), bom).order)

    submitted = cli("submit", "-f", tmp_path / "mk_chatty_job.py", "-c", str(_input_cid(cats_home, tmp_path)),
                    "--entry", "chatty", cwd=tmp_path)
    assert submitted.code == 0, submitted.err
    assert len(submitted.out.splitlines()) == 1, submitted.out[:2000]
    assert submitted.out.split()[0] == "bom"
    CID.parse(submitted.out.split()[1])


def _input_cid(cats_home: Path, tmp_path: Path) -> CID:
    return jobs.add(jobs.home_store(cats_home), tmp_path / "inputs")
