"""`cats exec`: a shell command per file of a folder, confined (environment, scratch, time, memory)
and recorded (the command and its tools' versions in the BOM's Structure)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import jobs
import pytest
from conftest import WorkerEnv

from cats import factory
from cats.bom import load as load_bom
from cats.bom import records as bom_records
from cats.cas import dagcbor, reader
from cats.cas.cid import CID, DAG_CBOR
from cats.cas.store.memory import MemoryStore
from cats.errors import CatsError
from cats.factory import shell
from cats.order.seal import seal
from cats.verification.audit import verify

# What the command may see: the runner's variables, and those the shell sets itself.
ALLOWED = {"PATH", "LANG", "LC_ALL", "HOME", "TMPDIR", "CATS_INPUT", "PWD", "SHLVL", "OLDPWD", "_"}


def test_a_grep_sed_filter_per_file_with_its_tools_in_the_bom(ray_session: str, cli, cats_home: Path,
                                                              tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAY_ADDRESS", ray_session)
    folder = jobs.folder(tmp_path, {"a.log": b"ok 1\nerror: disk\nok 2\n", "b.log": b"error: net\nerror: cpu\n",
                                    "c.log": b"fine\n"})
    cid = jobs.add(jobs.home_store(cats_home), folder)
    command = "grep error | sed 's/error: /E /' || true"

    res = cli("exec", "-e", command, "-c", cid, "--json", "--timeout", "20")

    assert res.code == 0, res.err
    summary = json.loads(res.out.strip().splitlines()[-1])
    assert jobs.outputs(cats_home, summary["output"]) == {"a.log": b"E disk\n", "b.log": b"E net\nE cpu\n",
                                                      "c.log": b""}
    store = jobs.home_store(cats_home)
    bom = load_bom(store, CID.parse(summary["bom"]))
    assert bom.structure.command == command
    assert set(bom.structure.tools) == {"grep", "sed"}
    assert bom.structure.tools["grep"].startswith("grep") and bom.structure.tools["sed"].startswith("sed")
    order = dagcbor.decode(store.get(bom.order))
    assert order["function"]["params"] == {"command": command, "timeout": 20.0}
    assert order["structure"]["tools"] == bom.structure.tools
    again = cli("exec", "-e", command, "-c", cid, "--json", "--timeout", "20")  # the same job: its BOM
    assert json.loads(again.out.strip().splitlines()[-1])["bom"] == summary["bom"]
    cli("exec", "-e", "cat", "-c", "bafy-not-a-cid").error_line("bafy-not-a-cid")


def test_the_command_sees_no_secrets_and_its_scratch_is_removed(ray_session: str, cats_home: Path,
                                                                tmp_path: Path) -> None:
    folder = jobs.folder(tmp_path, {"x.txt": b"x\n"})

    run = factory.run(shell.order("env; echo TMP=$TMPDIR; pwd; cat > kept; wc -c < \"$CATS_INPUT\"", [folder]))

    text = jobs.outputs(cats_home, str(run.output))["x.txt"].decode()
    lines = text.splitlines()
    names = {line.split("=", 1)[0] for line in lines if "=" in line and not line.startswith("TMP=")}
    assert names <= ALLOWED, names - ALLOWED  # the Ray worker's own variables (CATS_HOME, RAY_*) stay out
    scratch = Path(next(line for line in lines if line.startswith("TMP="))[4:])
    assert lines[-2] == str(scratch) and lines[-1] == "2"
    assert "x.txt" in text and not scratch.exists()


def test_the_runner_drops_the_callers_secrets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cr3t")
    monkeypatch.setenv("CATS_DATA_TOKEN", "t0ken")
    (tmp_path / "in.txt").write_bytes(b"hello\n")

    out = shell.run(tmp_path / "in.txt", "env; cat").decode()

    assert "s3cr3t" not in out and "t0ken" not in out and out.endswith("hello\n")
    assert {line.split("=", 1)[0] for line in out.splitlines() if "=" in line} <= ALLOWED


def test_limits_and_failures_name_the_file(ray_session: str, cats_home: Path, tmp_path: Path) -> None:
    folder = jobs.folder(tmp_path, {"slow.txt": b"z\n"})
    started = time.monotonic()
    with pytest.raises(CatsError, match=r"(?s)slow\.txt.*timed out after the limit of 1 s"):
        factory.run(shell.order("sleep 37 | cat", [folder], timeout=1))
    assert time.monotonic() - started < 15
    time.sleep(0.2)
    assert not jobs.live("sleep 37")  # the whole process group was killed

    with pytest.raises(CatsError, match=r"(?s)slow\.txt.*status 1.*memory limit of 200 MB.*MemoryError"):
        factory.run(shell.order('python3 -c "x = bytearray(800 * 2**20)"', [folder], memory=200))

    with pytest.raises(CatsError, match=r"(?s)slow\.txt: command exited with status 3; stderr:\nbroken"):
        factory.run(shell.order("echo broken >&2; exit 3", [folder]))


def test_programs_and_versions() -> None:
    assert shell.programs("LC_ALL=C sort | uniq -c; if true; then cd /; wc -l; fi && ! grep -q x") \
        == ["sort", "uniq", "wc", "grep"]
    tools = shell.tools("grep x | no-such-program-here")
    assert tools["grep"].startswith("grep") and tools["no-such-program-here"] == "not found"
    with pytest.raises(CatsError, match="does not parse"):
        shell.order("grep 'unclosed", [Path("x")])


def test_verification_re_runs_the_command(ray_session: str, cats_home: Path, tmp_path: Path) -> None:
    folder = jobs.folder(tmp_path, {"p.txt": b"abc\n", "q.txt": b"xyz\n"})

    run = factory.run(shell.order("tr a-z A-Z", [folder]))

    assert jobs.outputs(cats_home, str(run.output)) == {"p.txt": b"ABC\n", "q.txt": b"XYZ\n"}
    assert verify(jobs.home_store(cats_home), run.bom).verified


def test_the_output_limit_of_a_confined_command(ray_session: str, cli, cats_home: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAY_ADDRESS", ray_session)
    cid = jobs.add(jobs.home_store(cats_home), jobs.folder(tmp_path, {"a": b"a"}))
    res = cli("exec", "-e", "head -c 3000000 /dev/zero", "-c", cid, "--max-output", "1000000", "--json")
    assert res.code == 1 and "wrote more than the limit of 1000000 bytes to stdout" in res.err, res.err
    assert res.out == ""
    ok = cli("exec", "-e", "head -c 3000000 /dev/zero | wc -c", "-c", cid, "--max-output", "1000000", "--json")
    assert ok.code == 0, ok.err
    cli("exec", "-e", "cat", "-c", cid, "--max-output", "10", "--unconfined").error_line("--max-output",
                                                                                         "--unconfined")


LOGS = {"a.log": b"error: disk\nok\n", "b.log": b"ok\nfine\n", "c.log": b"error: net\nerror: cpu\n"}


def _summary(res) -> dict:
    assert res.code == 0, res.err
    return json.loads(res.out.strip().splitlines()[-1])


def test_ok_exit_lets_grep_find_nothing(ray_session: str, cli, cats_home: Path, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAY_ADDRESS", ray_session)
    cid = jobs.add(jobs.home_store(cats_home), jobs.folder(tmp_path, LOGS))

    failed = cli("exec", "-e", "grep error", "-c", cid, "--json")

    assert failed.code == 1 and failed.out == ""
    assert "slice 1 (b.log)" in failed.err and "b.log: command exited with status 1" in failed.err, failed.err
    summary = _summary(cli("exec", "-e", "grep error", "-c", cid, "--ok-exit", "0,1", "--json"))
    assert jobs.outputs(cats_home, summary["output"]) == {"a.log": b"error: disk\n", "b.log": b"",
                                                      "c.log": b"error: net\nerror: cpu\n"}
    store = jobs.home_store(cats_home)
    order = dagcbor.decode(store.get(load_bom(store, CID.parse(summary["bom"])).order))
    assert order["function"]["params"] == {"command": "grep error", "timeout": 60.0, "ok_exit": [0, 1]}
    # the same statuses in another order and with repeats are the same Order, so the same BOM
    again = _summary(cli("exec", "-e", "grep error", "-c", cid, "--ok-exit", "1,0,1", "--json"))
    assert again["bom"] == summary["bom"] and again["order"] == summary["order"]


def test_a_status_outside_ok_exit_fails_the_slice(ray_session: str, cats_home: Path, tmp_path: Path) -> None:
    folder = jobs.folder(tmp_path, {"x.txt": b"x\n"})
    with pytest.raises(CatsError, match=r"(?s)slice 0 \(x\.txt\).*x\.txt: command exited with status 2 "
                                        r"\(accepted: 0, 1, --ok-exit\); stderr:\nbad pattern"):
        factory.run(shell.order("echo bad pattern >&2; exit 2", [folder], ok_exit=[1, 0]))
    run = factory.run(shell.order("echo only-three; exit 3", [folder], ok_exit=[3]))
    assert jobs.outputs(cats_home, str(run.output)) == {"x.txt": b"only-three\n"}


def test_merge_concat_joins_the_results_in_slice_order(ray_session: str, cli, cats_home: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAY_ADDRESS", ray_session)
    store = jobs.home_store(cats_home)
    cid = jobs.add(store, jobs.folder(tmp_path, LOGS))
    each = _summary(cli("exec", "-e", "grep error | tr a-z A-Z", "-c", cid, "--ok-exit", "0,1", "--json"))
    parts = jobs.outputs(cats_home, each["output"])

    joined = _summary(cli("exec", "-e", "grep error | tr a-z A-Z", "-c", cid, "--ok-exit", "0,1", "--merge", "concat",
                          "--json"))

    output = CID.parse(joined["output"])
    assert not reader.is_folder(store, output)
    assert b"".join(reader.read(store, output)) == parts["a.log"] + parts["b.log"] + parts["c.log"] \
        == b"ERROR: DISK\nERROR: NET\nERROR: CPU\n"
    order = dagcbor.decode(store.get(load_bom(store, CID.parse(joined["bom"])).order))
    assert order["infra"]["merge"] == "concat"


def test_replicas_are_recorded_in_the_bom(ray_session: str, cli, cats_home: Path, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAY_ADDRESS", ray_session)
    store = jobs.home_store(cats_home)
    cid = jobs.add(store, jobs.folder(tmp_path, {"p.txt": b"abc\n", "q.txt": b"xyz\n"}))

    summary = _summary(cli("exec", "-e", "tr a-z A-Z", "-c", cid, "--replicas", "2", "--json"))

    bom = load_bom(store, CID.parse(summary["bom"]))
    assert dagcbor.decode(store.get(bom.order))["plant"]["replicas"] == 2
    records = list(bom_records(store, bom))
    assert len(records) == 2 and all(r.replicas is not None and len(r.replicas) == 2 and r.agreed for r in records)
    assert jobs.outputs(cats_home, summary["output"]) == {"p.txt": b"ABC\n", "q.txt": b"XYZ\n"}


def test_results_written_under_an_output_uri(ray_session: str, worker_env: WorkerEnv, cli, cats_home: Path,
                                             tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAY_ADDRESS", ray_session)
    worker_env.apply(monkeypatch)
    store = jobs.home_store(cats_home)
    cid = jobs.add(store, jobs.folder(tmp_path, LOGS))
    out = worker_env.data_root / "exec-out"

    summary = _summary(cli("exec", "-e", "grep -c error", "-c", cid, "--ok-exit", "0,1", "-o", f"file://{out}",
                           "--json"))

    assert {p.name: p.read_bytes() for p in out.iterdir()} == {"a.log": b"1\n", "b.log": b"0\n", "c.log": b"2\n"}
    bom = load_bom(store, CID.parse(summary["bom"]))
    assert [r.encoding for r in bom_records(store, bom)] == ["ref"] * 3
    assert dagcbor.decode(store.get(bom.order))["output_uri"] == f"file://{out}"


def test_bad_values_and_combinations_are_one_line(cli, cats_home: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")  # nothing may reach a Ray
    cid = str(jobs.add(jobs.home_store(cats_home), jobs.folder(tmp_path, {"a": b"a"})))
    out = tmp_path / "never"
    base = ("exec", "-e", "cat", "-c", cid)
    before = sorted(cats_home.rglob("*"))
    cli(*base, "--ok-exit", "0,one").error_line("--ok-exit", "0,one")
    cli(*base, "--ok-exit", "0,256").error_line("--ok-exit", "0,256")
    cli(*base, "--ok-exit", "").error_line("--ok-exit")
    cli(*base, "--merge", "table").error_line("--merge", "table")
    cli(*base, "--replicas", "0").error_line("--replicas")
    cli(*base, "-o", f"file://{out}", "--merge", "concat").error_line("--output-uri", "--merge directory")
    cli(*base, "-o", f"file://{out}", "--replicas", "2").error_line("--output-uri", "--replicas 1")
    assert not out.exists() and sorted(cats_home.rglob("*")) == before


# The sealed Order of `exec` at its defaults as main encoded it before --ok-exit, --merge, --replicas and
# -o existed, with what depends on the machine (the runner's code, the environment lock, the Python
# version) blanked: the options must not change the encoding of an Order that does not use them.
DEFAULT_ORDER = "bafyreiemxauex3faksx7nrcy7vqfru464pvnhma3luh7lofjmti55vvrxq"


def test_the_order_at_the_defaults_keeps_its_cid(cats_home: Path, tmp_path: Path) -> None:
    folder = jobs.folder(tmp_path, {"a.txt": b"alpha\n", "b.txt": b"beta\n"})
    command = 'read -r x; echo "$x"'  # builtins only: no tool versions of this machine
    for order in (shell.order(command, [folder]),
                  shell.order(command, [folder], ok_exit=[0], merge="directory", replicas=1, output_uri=None)):
        block = dagcbor.decode(seal(order, MemoryStore()).block())
        block["function"]["code"] = block["structure"]["lock"] = block["structure"]["python"] = None
        assert str(CID.hash(dagcbor.encode(block), codec=DAG_CBOR)) == DEFAULT_ORDER
