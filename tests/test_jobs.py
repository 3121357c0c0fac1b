"""Jobs: every run is one in CATS_HOME; `cats jobs` lists them, `cancel` stops a running one from another
process (no slice process left, status cancelled, a re-run resumes), and a driver killed outright shows
as dead. Real `cats run` processes on their own embedded Ray."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest

ORDER = """
import os, sys, time
from pathlib import Path
from cats import Function, Order

HERE = Path({folder!r})  # the sealed code runs from a folder of its own

def work(data: bytes) -> bytes:
    (HERE / "pids" / str(os.getpid())).write_text(data.decode())
    print("start", data.decode(), flush=True)
    print("note", data.decode(), file=sys.stderr, flush=True)
    while b"hold" in data and (HERE / "hold").exists():
        time.sleep(0.2)
    print("end", data.decode(), flush=True)
    return data.upper()

order = Order(function=Function(entry="held:work", source=__file__), inputs=[HERE / "in"])
"""


@pytest.fixture
def held(tmp_path: Path) -> Path:
    """An Order of three files whose slice reading `hold` waits while the file `hold` exists."""
    folder = tmp_path / "job"
    (folder / "in").mkdir(parents=True)
    (folder / "pids").mkdir()
    for name, text in (("a.txt", "quick a"), ("b.txt", "quick b"), ("c.txt", "hold c")):
        (folder / "in" / name).write_text(text)
    (folder / "held.py").write_text(textwrap.dedent(ORDER).format(folder=str(folder)))
    (folder / "hold").touch()
    return folder


def _start(folder: Path, home: Path, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "cats", "run", str(folder / "held.py"), *args], cwd=folder,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "CATS_HOME": str(home)})


def _jobs(cli: Callable[..., object], *args: str) -> list[dict[str, object]]:
    result = cli("jobs", "--json", *args)
    assert result.code == 0, result.err  # type: ignore[attr-defined]
    return json.loads(result.out)  # type: ignore[attr-defined]


def _wait(what: Callable[[], bool], why: str, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while not what():
        assert time.monotonic() < deadline, why
        time.sleep(0.2)


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _running(cli: Callable[..., object], folder: Path) -> dict[str, object]:
    """The one job, once it runs and its held slice has started (the quick ones are done by then)."""
    def started() -> bool:
        return any((folder / "pids" / p).read_text() == "hold c" for p in os.listdir(folder / "pids"))

    _wait(started, "the held slice never started")
    jobs = _jobs(cli)
    assert len(jobs) == 1 and jobs[0]["status"] == "running", jobs
    return jobs[0]


def test_a_running_job_is_cancelled_from_another_process_and_a_re_run_resumes(cli, cats_home, held):
    run = _start(held, cats_home, "--json")
    try:
        job = _running(cli, held)
        assert job["order"] and job["bom"] is None and job["pid"] == run.pid
        _wait(lambda: _jobs(cli)[0]["done"] == 2, "the two quick slices never finished")
        slice_pids = [int(p) for p in os.listdir(held / "pids")]
        assert any(_alive(p) for p in slice_pids)

        started = time.monotonic()
        cancelled = cli("jobs", "cancel", str(job["id"])[:6], "--json")
        assert cancelled.code == 0, cancelled.err
        assert time.monotonic() - started < 15
        stopped = json.loads(cancelled.out)
        assert stopped["status"] == "cancelled" and "cats jobs cancel" in stopped["error"]

        out, err = run.communicate(timeout=60)
        assert run.returncode == 130, err.decode()[-5000:]
        assert out == b""  # no result: nothing was recorded
        assert err.decode().strip().splitlines()[-1].startswith(f"Cancelled: job {job['id']} was cancelled by ")
        _wait(lambda: not any(_alive(p) for p in slice_pids), "a slice's process outlived the cancel", 20)

        shown = _jobs(cli)[0]
        assert shown["status"] == "cancelled" and shown["done"] == 2 and shown["total"] == 3
        assert shown["finished"] is not None
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()

    (held / "hold").unlink()
    again = cli("run", held / "held.py", "--json")
    assert again.code == 0, again.err
    summary = json.loads(again.out)
    assert summary["slices"] == 3 and summary["executed"] == 1  # the two finished slices were kept
    jobs = _jobs(cli)
    assert [j["status"] for j in jobs] == ["cancelled", "done"]
    assert jobs[1]["bom"] == summary["bom"] and jobs[1]["order"] == summary["order"] == jobs[0]["order"]


def test_ctrl_c_cancels_the_job(cli, cats_home, held):
    run = _start(held, cats_home)
    try:
        job = _running(cli, held)
        run.send_signal(signal.SIGINT)
        _, err = run.communicate(timeout=60)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    assert run.returncode == 130, err.decode()[-3000:]
    assert f"Cancelled: job {job['id']} was cancelled: interrupted" in err.decode()
    assert _jobs(cli)[0]["status"] == "cancelled"


def test_a_driver_killed_outright_is_reported_dead_not_running(cli, cats_home, held):
    run = _start(held, cats_home)
    try:
        job = _running(cli, held)
        os.kill(run.pid, signal.SIGKILL)
        run.wait(30)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    listed = _jobs(cli)
    assert listed[0]["id"] == job["id"] and listed[0]["status"] == "dead"
    assert f"pid {run.pid}" in str(listed[0]["error"])
    shown = cli("jobs", "show", str(job["id"]))
    assert shown.code == 0 and "dead" in shown.out and "ended without recording an outcome" in shown.out
    refused = cli("jobs", "cancel", str(job["id"]))
    refused.error_line(str(job["id"]), "has ended already", "dead")


def test_every_run_is_a_job_and_bad_ids_are_one_line(cli, cats_home, held):
    (held / "hold").unlink()
    first = cli("run", held / "held.py", "--json")
    assert first.code == 0, first.err
    again = cli("run", held / "held.py", "--json")  # the same Order: its BOM is reused, a job all the same
    assert again.code == 0, again.err
    jobs = _jobs(cli)
    assert [j["status"] for j in jobs] == ["done", "done"]
    assert {j["bom"] for j in jobs} == {json.loads(first.out)["bom"]}
    assert jobs[0]["done"] == jobs[0]["total"] == 3
    assert all(j["command"] == f"cats run {held / 'held.py'} --json" for j in jobs)

    table = cli("jobs")
    assert table.code == 0 and all(str(j["id"]) in table.out for j in jobs)
    shown = cli("jobs", "show", str(jobs[0]["id"]), "--json")
    assert shown.code == 0 and json.loads(shown.out)["bom"] == jobs[0]["bom"]

    cli("jobs", "show", "feedface0000").error_line("no job feedface0000")
    cli("jobs", "show", "not-hex").error_line("no job not-hex")
    cli("jobs", "cancel", str(jobs[0]["id"])).error_line(str(jobs[0]["id"]), "has ended already", "done")
    cli("jobs", "logs", str(jobs[0]["id"]), "--slice", "3").error_line("has 3 slices", "no slice 3")


@pytest.mark.parametrize("confinement", ["--unconfined", "confined"])
def test_cancelling_cats_exec_ends_the_commands_it_started(cli, cats_home, tmp_path, confinement):
    """A shell command and whatever it started in the background stop with the job, confined or not."""
    data = tmp_path / "data"
    data.mkdir()
    for name in ("a.txt", "b.txt"):
        (data / name).write_text(name)
    added = cli("add", "-r", data, "--json")
    assert added.code == 0, added.err
    cid = json.loads(added.out)[-1]["cid"]
    marker = f"sleep {1000 + os.getpid() % 1000}.{len(confinement)}"  # names these sleeps alone
    command = f"{marker} & {marker}"  # one in the background, one the command waits for
    run = subprocess.Popen([sys.executable, "-m", "cats", "exec", "-e", command, "-c", cid, "--timeout", "600",
                            *([confinement] if confinement.startswith("--") else [])],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           env={**os.environ, "CATS_HOME": str(cats_home)})

    def sleepers() -> list[int]:
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and _alive(int(entry.name)):
                try:
                    if marker.encode() in (entry / "cmdline").read_bytes():
                        found.append(int(entry.name))
                except OSError:
                    continue
        return found

    try:
        _wait(lambda: len(sleepers()) >= 2, "the commands never started", 120)
        job = _jobs(cli)[0]
        assert job["status"] == "running" and job["name"].startswith("exec")
        cancelled = cli("jobs", "cancel", str(job["id"]))
        assert cancelled.code == 0, cancelled.err
        assert f"job {job['id']} is cancelled" in cancelled.out
        _, err = run.communicate(timeout=60)
        assert run.returncode == 130, err.decode()[-5000:]
        _wait(lambda: not sleepers(), f"commands outlived the cancel: {sleepers()}", 20)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()


def test_logs_are_followed_live_and_read_after_the_run(cli, cats_home, held):
    run = _start(held, cats_home)
    try:
        job = _running(cli, held)
        jid = str(job["id"])
        # the held slice's output so far, from its live file
        _wait(lambda: cli("jobs", "logs", jid, "--slice", "2").out == "start hold c\n", "no live log")
        live = cli("jobs", "logs", jid, "--slice", "2")
        assert live.code == 0 and live.err == "note hold c\n"
        follower = subprocess.Popen([sys.executable, "-m", "cats", "jobs", "logs", jid, "-f"], stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, env={**os.environ, "CATS_HOME": str(cats_home)})
        time.sleep(1.5)
        assert follower.poll() is None  # it follows until the job ends
        (held / "hold").unlink()
        out, err = follower.communicate(timeout=60)
        assert follower.returncode == 0, err
        _, run_err = run.communicate(timeout=60)
        assert run.returncode == 0, run_err
    finally:
        for proc in (run, locals().get("follower")):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
    lines = out.decode().splitlines()
    assert sorted(lines) == sorted([f"[slice {i}] {w} {t}" for i, t in enumerate(["quick a", "quick b", "hold c"])
                                    for w in ("start", "end")])
    assert lines.index("[slice 2] start hold c") < lines.index("[slice 2] end hold c")
    assert sorted(err.decode().splitlines()) == ["[slice 0] note quick a", "[slice 1] note quick b",
                                                 "[slice 2] note hold c"]
    assert "start" not in run_err.decode() and "note" not in run_err.decode()  # nothing reached the terminal

    # afterwards, from the blocks the BOM links (the run's folder is gone), in a new process
    assert not any((cats_home / "runs").iterdir())
    after = cli("jobs", "logs", jid, "--slice", "1")
    assert after.code == 0 and after.out == "start quick b\nend quick b\n" and after.err == "note quick b\n"
    shown = json.loads(cli("jobs", "show", jid, "--json").out)
    assert shown["status"] == "done" and [s["index"] for s in shown["slices"]] == [0, 1, 2]
    assert all(s["stdout"] and s["stderr"] for s in shown["slices"])


PIPELINE = """
import sys
from pathlib import Path
from cats import Function, Order

def shout(data: bytes) -> bytes:
    print("shout", data.decode().strip(), flush=True)
    return data.upper()

def count(data: bytes) -> bytes:
    print("count", len(data), file=sys.stderr, flush=True)
    return str(len(data)).encode()

first = Order(name="shouting", function=Function(entry="staged:shout", source=__file__), inputs=[Path({data!r})])
order = Order(name="counting", function=Function(entry="staged:count", source=__file__), inputs=[first])
"""


def test_a_pipelines_stages_keep_their_own_logs(cli, tmp_path):
    data = tmp_path / "in"
    data.mkdir()
    for name, text in (("a.txt", "ab\n"), ("b.txt", "cde\n")):
        (data / name).write_text(text)
    (tmp_path / "staged.py").write_text(PIPELINE.format(data=str(data)))
    ran = cli("run", tmp_path / "staged.py", "--json")
    assert ran.code == 0, ran.err
    [job] = _jobs(cli)
    assert job["stage"] == job["stages"] == 2 and job["done"] == job["total"] == 2
    every = cli("jobs", "logs", str(job["id"]))
    assert every.code == 0, every.err
    assert sorted(every.out.splitlines()) == ["[stage 1 slice 0] shout ab", "[stage 1 slice 1] shout cde"]
    assert sorted(every.err.splitlines()) == ["[stage 2 slice 0] count 3", "[stage 2 slice 1] count 4"]
    one = cli("jobs", "logs", str(job["id"]), "--stage", "1", "--slice", "1")
    assert one.code == 0 and one.out == "shout cde\n" and one.err == ""
    last = cli("jobs", "logs", str(job["id"]), "--slice", "0")  # the last stage
    assert last.code == 0 and last.out == "" and last.err == "count 3\n"
    cli("jobs", "logs", str(job["id"]), "--stage", "3").error_line("has 2 stage(s)", "no stage 3")
    listed = cli("jobs")
    assert "2/2 (stage 2 of 2)" in listed.out


def test_names_and_errors_from_peers_never_drive_the_terminal(cli, cats_home):
    """A peer's Order name and its code's error reach `cats jobs` and `cats node orders` as text: no escape
    sequence, no bidi override, no rich markup."""
    from cats.bom.jobs import JobTable

    hostile = "ok\x1b]0;PWNED\x07\x1b[2J\u202egone[red]red[/red]"
    cats_home.mkdir(parents=True, exist_ok=True)
    table = JobTable(cats_home / "jobs.sqlite")
    job = table.create("node", name=hostile, order="bafyreih", submitter="did:key:z6Mkpeer", status="queued")
    table.failed(job.id, f"ValueError: {hostile}")
    table.close()
    for args in (("jobs",), ("jobs", "show", job.id), ("node", "orders")):
        shown = cli(*args)
        assert shown.code == 0, shown.err
        assert "\x1b" not in shown.out and "\x07" not in shown.out and "\u202e" not in shown.out, args
        assert "[red]red[/red]" in shown.out.replace("\n", "").replace(" ", ""), args  # as written, not styled
