"""`cats exec`: a shell command per file of a folder, confined (environment, scratch, time, memory)
and recorded (the command and its tools' versions in the BOM's Structure)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import jobs
import pytest

from cats import factory
from cats.bom import load as load_bom
from cats.cas import dagcbor
from cats.cas.cid import CID
from cats.errors import CatsError
from cats.factory import shell
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
