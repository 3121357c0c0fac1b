"""Hostile code against the sandbox: an Order and `cats exec` commands that try every way out they
know (files, /proc, the environment, ptrace, signals, the network, Ray's sockets and object store,
writes outside scratch, symlinks, background processes, oversized scratch and output) and return
what they found. Nothing they return may hold the node's key or a planted secret, nothing they start
may outlive its slice, nothing they write may appear on the host. The same probe run unconfined finds
the secrets, which shows it looks in the right places."""

from __future__ import annotations

import base64
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jobs
import pytest
from servers import FileServer, serving

from cats import factory
from cats.bom import load as load_bom
from cats.cas import reader
from cats.cas.multibase import b58encode
from cats.errors import CatsError, SliceFailed
from cats.factory import confine, shell
from cats.factory.confine import Policy
from cats.identity import Identity
from cats.order import Function, Order
from cats.plant import Plant

pytestmark = pytest.mark.skipif(confine.unavailable() is not None, reason=f"{confine.unavailable()}")

# The hostile Function. It is told where the secrets are (the strongest attacker knows the layout),
# reads, lists, connects, signals, writes and spawns, and returns everything as JSON.
PROBE = r'''
import contextlib, ctypes, json, os, re, signal, socket, subprocess, sys, time
from pathlib import Path

PATTERN = re.compile(rb"CATSPLANTED[0-9a-f]{32}|-----BEGIN (?:[A-Z]+ )?PRIVATE" + rb" KEY-----[A-Za-z0-9+/=\s]*")
SKIP = {"/proc", "/sys", "/dev", "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/boot", "/snap",
        "/var/lib", "/var/cache", "/work", "/root", "/opt", "/nix", "/tmp/ray"}
PRUNE = {"node_modules", ".git", "__pycache__", "site-packages"}


def _try(fn):
    try:
        return fn()
    except BaseException as e:
        return f"!{type(e).__name__}: {e}"


def _read(path, limit=1 << 20):
    with open(path, "rb") as f:
        return f.read(limit).decode("latin-1")


def _walk(budget):
    found, files, deadline = [], 0, time.monotonic() + budget
    for root, dirs, names in os.walk("/"):
        if time.monotonic() > deadline:
            found.append("!out of time")
            break
        dirs[:] = [d for d in dirs if os.path.join(root, d) not in SKIP and d not in PRUNE]
        for name in names:
            path = os.path.join(root, name)
            with contextlib.suppress(OSError):
                if os.path.islink(path) or not os.path.isfile(path) or os.path.getsize(path) > 1 << 20:
                    continue
                files += 1
                with open(path, "rb") as f:
                    found += [[path, m.group().decode("latin-1")] for m in PATTERN.finditer(f.read())]
    return {"files": files, "found": found}


def _ptrace(pid):
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.ptrace(16, pid, 0, 0) != 0:  # PTRACE_ATTACH
        return "!" + os.strerror(ctypes.get_errno())
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0x40000000)  # __WALL: the stop the attach caused
    libc.ptrace(17, pid, 0, 0)  # PTRACE_DETACH
    return "attached"


def _kill(pid, sig):
    os.kill(pid, sig)
    return "signalled"


def _connect(host, port):
    with socket.create_connection((host, port), timeout=2) as s:
        s.sendall(b"GET /hostile HTTP/1.0\r\nHost: x\r\n\r\n")
        return "connected: " + s.recv(200).decode("latin-1")


def _unix(path):
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(2)
        s.connect(path)
        return "connected"


def _write(path):
    with open(path, "w") as f:
        f.write("CATSWRITE")
    return "written"


def _fill(path, most):
    written = 0
    try:
        with open(path, "wb") as f:
            while written < most:
                f.write(b"\0" * (1 << 20))
                f.flush()
                written += 1 << 20
        return [written, "no error"]
    except OSError as e:
        return [written, e.strerror]
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)


def _link(target, name):
    link = Path(os.environ.get("TMPDIR", "/tmp")) / name
    with contextlib.suppress(FileNotFoundError):
        link.unlink()
    os.symlink(target, link)
    return _read(link)


def _background(conf):
    token, marker = conf["token"], conf["marker"]
    late = f"{os.environ.get('TMPDIR', '/tmp')}/late-{token}"
    line = f"sleep {conf['delay']}; echo late > {late}; echo late > {marker}; exec sleep 60 # {token}"
    subprocess.Popen(["setsid", "sh", "-c", line], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL, start_new_session=True)
    if os.fork() == 0:  # a double fork: the grandchild is nobody's child once its parent is gone
        if os.fork() == 0:
            os.setsid()
            os.execvp("sh", ["sh", "-c", f"sleep {conf['delay']}; echo late > {marker}.2; exec sleep 61 # {token}"])
        os._exit(0)
    os.wait()
    return late


def _forge(kind):
    """Write answers of its own on the channel to the worker (its write end: a pipe other than 1 and 2)."""
    import fcntl
    import struct
    for fd in map(int, os.listdir("/proc/self/fd")):
        with contextlib.suppress(OSError):
            if fd > 2 and os.readlink(f"/proc/self/fd/{fd}").startswith("pipe:") and \
                    fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_WRONLY:
                out = fd
    if kind == "huge":
        header = json.dumps({"encoding": "bytes", "size": 1 << 40}).encode()
        body = b""
    else:  # a result claiming to be a reference to a URI this Order never wrote
        from cats.bom.ref import OutputRef
        body = OutputRef(uri="s3://victim/forged.csv", version="v1", size=3, content="bafkreigh2akiscaildcqabsyg3dfr6"
                         "chu3fgpregiymsck7e7aqa4s52zy", encoding="bytes").block()
        header = json.dumps({"encoding": "ref", "size": len(body)}).encode()
    frame = struct.pack(">I", len(header)) + header
    if body:
        frame += struct.pack(">I", len(body)) + body
    frame += struct.pack(">I", 0)
    os.write(out, frame)
    time.sleep(30)  # the worker has the forged answer; this one never comes


def probe(path):
    conf = json.loads(Path(path).read_text())
    role = conf["role"]
    if role == "big":
        return b"x" * conf["size"]
    if role == "forge":
        return _forge(conf["kind"])
    if role == "fill":
        tmp = os.environ.get("TMPDIR", "/tmp")
        return json.dumps({where: _try(lambda where=where: _fill(where, conf["most"]))
                           for where in (f"{tmp}/fill", "/dev/shm/fill", "/dev/fill")})
    if role == "after":  # the next slice of the same run, in the same sandbox
        time.sleep(conf["delay"] + 1)
        tmp = os.environ.get("TMPDIR", "/tmp")
        return json.dumps({"scratch": _try(lambda: sorted(os.listdir(tmp))),
                           "shm": _try(lambda: sorted(os.listdir("/dev/shm"))),
                           "pids": sorted(p for p in os.listdir("/proc") if p.isdigit()),
                           "late": os.path.exists(f"{tmp}/late-{conf['token']}"),
                           "kept": _try(lambda: _read(f"{tmp}/kept-{conf['token']}"))})
    r = {"status": _try(lambda: _read("/proc/self/status")), "env": dict(os.environ),
         "mounts": _try(lambda: _read("/proc/self/mountinfo"))}
    r["files"] = {p: _try(lambda p=p: _read(p)) for p in conf["files"]}
    r["via_proc_root"] = {p: _try(lambda p=p: _read("/proc/1/root" + p)) for p in conf["files"]}
    r["listings"] = {d: _try(lambda d=d: sorted(os.listdir(d)))
                     for d in conf["dirs"] + ["/", "/proc/1/root", "/dev/shm", "/tmp", "/tmp/ray", "/run"]}
    r["proc"] = {}
    for pid in sorted(p for p in os.listdir("/proc") if p.isdigit()):
        r["proc"][pid] = {what: _try(lambda what=what: _read(f"/proc/{pid}/{what}"))
                          for what in ("environ", "cmdline")}
        r["proc"][pid]["root"] = _try(lambda: sorted(os.listdir(f"/proc/{pid}/root")))
    r["ptrace"] = {pid: _try(lambda pid=pid: _ptrace(pid)) for pid in conf["ptrace"]}
    r["kill"] = {pid: _try(lambda pid=pid: _kill(pid, signal.SIGTERM)) for pid in conf["ptrace"]}
    r["kill"].update({pid: _try(lambda pid=pid: _kill(pid, 0)) for pid in conf["pids"]})
    r["tcp"] = {f"{h}:{p}": _try(lambda h=h, p=p: _connect(h, p)) for h, p in conf["tcp"]}
    r["unix"] = {p: _try(lambda p=p: _unix(p)) for p in conf["sockets"]}
    r["writes"] = {p: _try(lambda p=p: _write(p)) for p in conf["write"] + [
        f"/code/{__name__}.py", "/code/evil.py", "/usr/evil", "/evil", os.path.expanduser("~/../../evil"),
        f"/tmp/escape-{conf['token']}", str(Path(path).with_name("written-over-input"))]}
    r["input_overwrite"] = _try(lambda: _write(path))
    r["symlinks"] = {p: _try(lambda i=i, p=p: _link(p, f"link{i}")) for i, p in enumerate(conf["files"])}
    r["symlinks"]["/proc/1/root"] = _try(lambda: _link("/proc/1/root/" + conf["files"][0], "linkroot"))
    libc = ctypes.CDLL(None, use_errno=True)
    r["unshare"] = _try(lambda: "unshared" if libc.unshare(0x10000000 | 0x00020000) == 0  # NEWUSER|NEWNS
                        else "!" + os.strerror(ctypes.get_errno()))
    r["kept"] = _try(lambda: _write(f"{os.environ.get('TMPDIR', '/tmp')}/kept-{conf['token']}"))
    r["shm"] = _try(lambda: _write(f"/dev/shm/kept-{conf['token']}"))
    r["background"] = _try(lambda: _background(conf))
    r["walk"] = _walk(conf["walk"])
    return json.dumps(r)
'''


@dataclass
class Scene:
    """One node's home with a key and planted secrets, the hostile Order's inputs, and what it returned."""

    base: Path
    home: Path
    token: str
    secret: str  # planted in files in CATS_HOME, the store's folder and the test's folder
    env_secret: str  # in the driver's environment
    key_forms: list[str]  # the signing key, as its file and in every encoding it might come back in
    sacrifice: subprocess.Popen[bytes]
    server: FileServer
    src: Path
    conf: dict[str, Any]

    def order(self, confined: bool, name: str = "hostile") -> Order:
        folder = self.base / f"inputs-{name}"
        if not folder.exists():
            folder.mkdir()
            (folder / "a.json").write_text(json.dumps({**self.conf, "role": "probe"}))
            (folder / "b.json").write_text(json.dumps({**self.conf, "role": "after"}))
        # one batch: both slices in one task, in order, so "b" runs after "a" in the same sandbox
        return Order(function=Function(entry="hostile_probe:probe", source=self.src, takes="path"),
                     inputs=[folder], plant=Plant(confined=confined, batch=2), name=name)

    def single(self, name: str, spec: dict[str, Any], plant: Plant, file: str = "a.json") -> Order:
        """The probe over a folder of one file, `spec` (what the probe is to do), named for `name`."""
        folder = self.base / f"inputs-{name}"
        folder.mkdir()
        (folder / file).write_text(json.dumps(spec))
        return Order(function=Function(entry="hostile_probe:probe", source=self.src, takes="path"),
                     inputs=[folder], plant=plant, name=f"hostile-{name}")

    def leaked(self, text: str) -> list[str]:
        """The secrets found in `text`."""
        return [s for s in [self.secret, self.env_secret, *self.key_forms] if s in text]


def _key_forms(home: Path) -> list[str]:
    from cryptography.hazmat.primitives import serialization

    pem = (home / "identity" / "ed25519.pem").read_bytes()
    key = serialization.load_pem_private_key(pem, password=None)
    raw = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,  # type: ignore[union-attr]
                            serialization.NoEncryption())
    body = "".join(line for line in pem.decode().splitlines() if not line.startswith("-----"))
    return [pem.decode(), body, raw.hex(), base64.b64encode(raw).decode(), base64.urlsafe_b64encode(raw).decode(),
            b58encode(raw)]


def _ray_sockets() -> list[str]:
    import ray

    folder = Path(ray._private.worker._global_node.get_session_dir_path()) / "sockets"
    return [str(p) for p in folder.iterdir()] if folder.is_dir() else []


@pytest.fixture(scope="module")
def scene(ray_session: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scene]:
    base = tmp_path_factory.mktemp("hostile")
    home = base / "cats-home"
    token = secrets.token_hex(8)
    secret, env_secret = "CATSPLANTED" + secrets.token_hex(16), "CATSPLANTED" + secrets.token_hex(16)
    with pytest.MonkeyPatch.context() as mp, serving() as server:
        mp.setenv("CATS_HOME", str(home))
        mp.delenv("CATS_STORE", raising=False)
        mp.delenv("CATS_IPFS_API", raising=False)
        mp.setenv("AWS_SECRET_ACCESS_KEY", env_secret)
        mp.setenv("RAY_ADDRESS", ray_session)
        Identity.load(home / "identity")
        store = jobs.home_store(home)
        planted = [home / "notes.txt", store.root / ".tmp" / "planted", base / "secret.txt"]
        for path in planted:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(f"aws_secret_access_key = {secret}\n")
        src = jobs.module(base, "hostile_probe", PROBE)
        sacrifice = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)", "victim"])
        host, port = ray_session.rsplit(":", 1)
        conf = {
            "token": token, "delay": 1, "walk": 4.0,
            "files": [str(home / "identity" / "ed25519.pem"), *map(str, planted),
                      f"/proc/{os.getpid()}/environ", str(Path.home() / ".cats" / "identity" / "ed25519.pem")],
            "dirs": [str(home), str(home / "identity"), str(store.root), str(base), "/tmp/ray/session_latest"],
            "ptrace": [sacrifice.pid], "pids": [os.getpid()],
            "tcp": [[host, int(port)], ["127.0.0.1", int(server.url.rsplit(":", 1)[1])], ["127.0.0.1", 8265],
                    ["::1", int(port)]],
            "sockets": _ray_sockets(),
            "write": [str(base / f"escaped-{token}"), str(home / f"escaped-{token}"), str(store.root / "escaped"),
                      str(base / "inputs-hostile" / "a.json")],
            "marker": str(base / f"late-{token}"),
        }
        yield Scene(base, home, token, secret, env_secret, _key_forms(home), sacrifice, server, src, conf)
        sacrifice.kill()
        sacrifice.wait()
        for pid in jobs.live(token):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def confined_report(scene: Scene) -> dict[str, Any]:
    """The hostile Order run confined through factory.run on the session's Ray: both slices' reports."""
    run = factory.run(scene.order(confined=True))
    outputs = jobs.outputs(scene.home, run.output)
    assert load_bom(jobs.home_store(scene.home), run.bom).invoice.confined  # it ran, to the end, confined
    return {"text": {k: v.decode() for k, v in outputs.items()},
            "probe": json.loads(outputs["a.json"]), "after": json.loads(outputs["b.json"])}


def test_the_key_and_planted_secrets_never_come_back(scene: Scene, confined_report: dict[str, Any]) -> None:
    text = "".join(confined_report["text"].values())
    assert scene.leaked(text) == []
    r = confined_report["probe"]
    assert r["walk"]["files"] > 0 and r["walk"]["found"] == [], r["walk"]
    assert all(v.startswith("!FileNotFoundError") for v in r["files"].values()), r["files"]
    assert all(v.startswith("!") for v in r["via_proc_root"].values()), r["via_proc_root"]
    for d in scene.conf["dirs"] + ["/tmp/ray", "/run"]:
        assert r["listings"][d].startswith("!FileNotFoundError"), (d, r["listings"][d])
    assert r["listings"]["/dev/shm"] == []  # not the host's (Ray's object store lives there)
    # the environment holds only what the sandbox sets; the worker's (its cloud keys, CATS_HOME, Ray's) stays out
    assert set(r["env"]) <= {"PATH", "LANG", "LC_ALL", "HOME", "TMPDIR", "PWD", "CATS_MAX_OUTPUT"}, r["env"]
    for pid, seen in r["proc"].items():
        assert "AWS_SECRET_ACCESS_KEY" not in seen["environ"] and "CATS_HOME" not in seen["environ"], (pid, seen)
        assert "RAY_" not in seen["environ"], (pid, seen["environ"])
    assert str(scene.home) not in json.dumps(r["proc"])  # the node's home is named nowhere it can read
    status = dict(line.split(":\t", 1) for line in r["status"].splitlines() if ":\t" in line)
    assert status["CapEff"].strip("0\n") == "" and status["NoNewPrivs"].strip() == "1"
    assert r["unshare"].startswith("!")


def test_it_sees_no_other_process_and_signals_or_traces_none(scene: Scene,
                                                             confined_report: dict[str, Any]) -> None:
    r = confined_report["probe"]
    assert len(r["proc"]) <= 3, sorted(r["proc"])  # the sandbox's init, the probe and what the probe started
    assert all(int(pid) < 100 for pid in r["proc"])  # numbers of its own namespace, not the host's
    assert all(v.startswith("!") for v in r["ptrace"].values()), r["ptrace"]
    assert all(v.startswith("!ProcessLookupError") for v in r["kill"].values()), r["kill"]
    assert scene.sacrifice.poll() is None  # the host process it signalled and traced lives on


def test_it_reaches_no_network_nor_ray(scene: Scene, confined_report: dict[str, Any]) -> None:
    r = confined_report["probe"]
    assert r["tcp"] and all(v.startswith("!") for v in r["tcp"].values()), r["tcp"]
    assert r["unix"] and all(v.startswith("!") for v in r["unix"].values()), r["unix"]
    assert not [s for s in scene.server.log if "hostile" in str(s)]  # the loopback server got no request


def test_it_writes_nothing_outside_its_scratch(scene: Scene, confined_report: dict[str, Any]) -> None:
    r = confined_report["probe"]
    for path, outcome in r["writes"].items():
        if path == f"/tmp/escape-{scene.token}" or path.endswith("written-over-input"):
            assert outcome == "written", (path, outcome)  # its scratch (where its input was laid out too)
        else:
            assert outcome.startswith("!"), (path, outcome)
    assert not Path(f"/tmp/escape-{scene.token}").exists()
    assert not list(scene.base.rglob("*escaped*")) and not list(scene.base.rglob(f"late-{scene.token}*"))
    assert all(v.startswith("!") for v in r["symlinks"].values()), r["symlinks"]
    # its input was a copy in its scratch: the file it came from is untouched
    assert json.loads((scene.base / "inputs-hostile" / "a.json").read_text())["role"] == "probe"


def test_nothing_it_starts_or_keeps_outlives_its_slice(scene: Scene, confined_report: dict[str, Any]) -> None:
    r, after = confined_report["probe"], confined_report["after"]
    assert r["background"].startswith("/"), r["background"]  # it did start them
    assert r["kept"] == "written" and r["shm"] == "written"
    # the next slice, in the same sandbox: an empty scratch, no process but its own, nothing written late
    assert after["scratch"] == ["b.json"] and after["late"] is False, after  # its own input only
    assert after["kept"].startswith("!FileNotFoundError"), after
    assert after["shm"] == [], after
    assert len(after["pids"]) == 2, after  # the sandbox's init and the probe
    time.sleep(scene.conf["delay"] + 0.5)
    assert jobs.live(scene.token) == []  # not on the host either
    assert not list(scene.base.glob(f"late-{scene.token}*"))


def test_unconfined_the_same_probe_finds_everything(scene: Scene, confined_report: dict[str, Any]) -> None:
    """The control: the old path (the code runs in the worker itself) hands the probe the key and the
    secrets, lets it signal host processes and leaves its background processes running."""
    sacrifice = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)", "victim"])
    conf = {**scene.conf, "ptrace": [sacrifice.pid], "walk": 0.5, "token": scene.token + "u",
            "marker": str(scene.base / f"unconfined-late-{scene.token}")}
    order = scene.single("unconfined", {**conf, "role": "probe"}, Plant(batch=1))
    try:
        run = factory.run(order)
        text = jobs.outputs(scene.home, run.output)["a.json"].decode()
        r = json.loads(text)
        assert scene.secret in r["files"][str(scene.base / "secret.txt")], r["files"]  # the planted secret
        assert r["files"][str(scene.home / "identity" / "ed25519.pem")] == scene.key_forms[0]  # the key
        assert r["env"].get("AWS_SECRET_ACCESS_KEY")  # the worker's own credentials
        assert sacrifice.wait(10) == -signal.SIGTERM  # it signalled a host process
        assert any(v.startswith("connected") for v in r["tcp"].values())
        assert [s for s in scene.server.log if "hostile" in str(s)]
        assert r["writes"][str(scene.base / f"escaped-{scene.token}")] == "written"
        deadline = time.monotonic() + 10
        while not jobs.live(conf["token"]) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert jobs.live(conf["token"])  # its background processes outlived the slice
    finally:
        sacrifice.kill()
        for pid in jobs.live(conf["token"]):
            os.kill(pid, signal.SIGKILL)
        for path in [*scene.base.glob("*escaped*"), *scene.base.glob("unconfined-late-*")]:
            path.unlink()
        scene.server.log.clear()


def test_the_cli_run_of_a_hostile_order_returns_no_secret(scene: Scene, cli, cats_home: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """`cats run` from a folder holding a secret and CATS_HOME (Ray makes a driver's working folder
    importable by its workers; it must not become visible to the code they confine)."""
    monkeypatch.setenv("RAY_ADDRESS", os.environ["RAY_ADDRESS"])
    assert cli("id").code == 0
    (tmp_path / "secret.txt").write_text(scene.secret)
    folder = tmp_path / "inputs"
    folder.mkdir()
    files = [str(cats_home / "identity" / "ed25519.pem"), str(tmp_path / "secret.txt")]
    conf = {**scene.conf, "role": "probe", "walk": 2.0, "files": files + scene.conf["files"],
            "dirs": [str(tmp_path), str(cats_home)] + scene.conf["dirs"], "token": scene.token + "c"}
    (folder / "a.json").write_text(json.dumps(conf))
    (tmp_path / "hostile_order.py").write_text(
        "from pathlib import Path\nfrom cats import Order, Function, Plant\n"
        f"order = Order(function=Function(entry='hostile_probe:probe', source=Path({str(scene.src)!r}), "
        f"takes='path'), inputs=[Path({str(folder)!r})], plant=Plant(confined=True), name='hostile-cli')\n")

    res = cli("run", "hostile_order.py", "--json", cwd=tmp_path)

    assert res.code == 0, res.err
    text = jobs.outputs(cats_home, json.loads(res.out.strip().splitlines()[-1])["output"])["a.json"].decode()
    r = json.loads(text)
    assert [s for s in [scene.secret, *_key_forms(cats_home), *scene.key_forms] if s in text] == []
    assert r["walk"]["found"] == [], r["walk"]
    assert r["listings"][str(tmp_path)].startswith("!FileNotFoundError"), r["listings"][str(tmp_path)]
    time.sleep(scene.conf["delay"] + 0.5)
    assert jobs.live(conf["token"]) == []


def test_results_past_the_limit_and_forged_answers_are_refused(scene: Scene) -> None:
    order = scene.single("big", {"role": "big", "size": 64 << 20}, Plant(batch=1), file="big.json")
    with pytest.raises(SliceFailed, match=r"(?s)big\.json.*67108864 bytes, over this machine's limit of 1048576"):
        factory.run(order, confine=Policy(max_output=1 << 20))

    for kind, said in (("huge", "a result of 1099511627776 bytes announced"), ("ref", "an encoding 'ref'")):
        order = scene.single(f"forge-{kind}", {"role": "forge", "kind": kind}, Plant(batch=1, confined=True),
                             file="f.json")
        with pytest.raises(SliceFailed, match=said):
            factory.run(order)


def test_scratch_and_shared_memory_are_capped(scene: Scene) -> None:
    order = scene.single("fill", {"role": "fill", "most": 64 << 20}, Plant(batch=1), file="fill.json")

    run = factory.run(order, confine=Policy(scratch=8 << 20))

    filled = json.loads(jobs.outputs(scene.home, run.output)["fill.json"])
    tmp_written, tmp_error = filled["/scratch/fill"]
    assert tmp_written <= 8 << 20 and tmp_error == "No space left on device", filled
    shm_written, shm_error = filled["/dev/shm/fill"]
    assert shm_written <= 8 << 20 and shm_error == "No space left on device", filled
    assert filled["/dev/fill"] == [0, "Read-only file system"], filled


# -- cats exec ---------------------------------------------------------------------------------------------------

@pytest.fixture
def exec_scene(scene: Scene, cli, cats_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """A folder to run commands on, the node's key, a secret in CATS_HOME and the test's folder."""
    monkeypatch.setenv("RAY_ADDRESS", os.environ["RAY_ADDRESS"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", scene.env_secret)
    assert cli("id").code == 0  # the node's identity, made
    (cats_home / "notes.txt").write_text(scene.secret)
    (tmp_path / "secret.txt").write_text(scene.secret)
    cid = jobs.add(jobs.home_store(cats_home), jobs.folder(tmp_path, {"x.txt": b"x\n"}))
    return {"cid": str(cid), "forms": _key_forms(cats_home)}


def _exec(cli, command: str, cid: str, *more: str) -> tuple[Any, str]:
    res = cli("exec", "-e", command, "-c", cid, "--json", "--force", *more)
    if res.code != 0:
        return res, ""
    output = json.loads(res.out.strip().splitlines()[-1])["output"]
    return res, jobs.outputs(Path(os.environ["CATS_HOME"]), output)["x.txt"].decode(errors="replace")


def test_exec_commands_find_no_secret(scene: Scene, exec_scene: dict[str, Any], cli, cats_home: Path,
                                      tmp_path: Path) -> None:
    cid = exec_scene["cid"]
    for command in ["cat /proc/*/environ | tr '\\0' '\\n'; cat /proc/*/cmdline | tr '\\0' ' '",
                    "find / -xdev -type f -size -1M 2>/dev/null | xargs grep -l CATSPLANTED 2>/dev/null; "
                    f"cat {cats_home}/identity/ed25519.pem {cats_home}/notes.txt {tmp_path}/secret.txt 2>&1; "
                    "grep -r CATSPLANTED /scratch /tmp /dev/shm 2>/dev/null; true"]:
        res, text = _exec(cli, command, cid)
        assert res.code == 0, res.err
        leaked = [s for s in [scene.secret, scene.env_secret, *exec_scene["forms"]] if s in text]
        assert leaked == [] and "AWS_SECRET_ACCESS_KEY" not in text and "RAY_" not in text, text


def test_exec_background_processes_and_escapes_die_with_the_slice(exec_scene: dict[str, Any], cli,
                                                                  tmp_path: Path) -> None:
    token = secrets.token_hex(8)
    marker = tmp_path / f"marker-{token}"
    command = (f"setsid sh -c 'sleep 1; touch {marker}; touch /tmp/m-{token}; exec sleep 30 # {token}' "
               "</dev/null >/dev/null 2>&1 & "
               f"echo owned > $HOME/../../escape-{token} 2>&1; echo owned > {tmp_path}/escape-{token} 2>&1; "
               f"ln -s {tmp_path} $TMPDIR/up && ls $TMPDIR/up/ 2>&1; true")
    res, text = _exec(cli, command, exec_scene["cid"])
    assert res.code == 0, res.err
    assert "secret.txt" not in text, text
    time.sleep(2)
    assert jobs.live(token) == [] and not marker.exists() and not Path(f"/tmp/m-{token}").exists()
    assert not list(tmp_path.glob(f"escape-{token}")) and not Path(f"/escape-{token}").exists()


def test_exec_network_is_not_reached(exec_scene: dict[str, Any], cli, http_server: FileServer) -> None:
    port = int(http_server.url.rsplit(":", 1)[1])
    command = (f"python3 -c \"import socket; s = socket.create_connection(('127.0.0.1', {port}), timeout=2); "
               "s.sendall(b'GET /exec HTTP/1.0\\r\\n\\r\\n'); print(s.recv(100))\" 2>&1; true")
    res, text = _exec(cli, command, exec_scene["cid"])
    assert res.code == 0, res.err
    assert "refused" in text or "unreachable" in text.lower(), text
    assert http_server.log == []


def test_exec_output_past_the_cap_is_refused(exec_scene: dict[str, Any], cats_home: Path, tmp_path: Path) -> None:
    # `cats exec` takes the machine's policy (1 GiB); a smaller cap is a Policy given to factory.run
    folder = jobs.folder(tmp_path, {"z.txt": b"z\n"}, name="zeros")
    started = time.monotonic()
    with pytest.raises(SliceFailed, match=r"(?s)z\.txt.*more than the limit of 1048576 bytes"):
        factory.run(shell.order("head -c 50M /dev/zero", [folder]), confine=Policy(max_output=1 << 20))
    assert time.monotonic() - started < 30


# -- sealed code, verified where it runs ------------------------------------------------------------------------

def test_sealed_code_edited_on_disk_never_runs(ray_session: str, cli, cats_home: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAY_ADDRESS", ray_session)
    src = jobs.module(tmp_path, "sealed_shout", """
        def shout(data):
            return data.upper()
    """)
    inputs = jobs.folder(tmp_path, {"p.txt": b"abc"})
    order = Order(function=Function(entry="sealed_shout:shout", source=src), inputs=[inputs],
                  plant=Plant(confined=True), name="sealed")
    run = factory.run(order)
    store = jobs.home_store(cats_home)
    assert jobs.outputs(cats_home, run.output) == {"p.txt": b"ABC"}
    code = load_bom(store, run.bom).code
    evil = "def shout(data):\n    return b'EVIL'\n"
    planted = [cats_home / "code" / str(code) / "sealed_shout.py"]
    planted += [Path(folder) / str(code) / "sealed_shout.py" for folder in Path("/tmp").glob("cats-code-*")
                if (Path(folder) / str(code)).is_dir()]
    for path in planted:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.parent.chmod(0o755)
        path.unlink(missing_ok=True)
        path.write_text(evil)

    again = factory.run(order, force=True)

    assert jobs.outputs(cats_home, again.output) == {"p.txt": b"ABC"}
    res = cli("verify", str(run.bom))
    assert res.code == 0 and "EVIL" not in res.out, (res.out, res.err)

    # a block of the code altered in the store: the run fails naming it, nothing runs
    target = next(cid for name, cid, _ in reader.entries(store, code) if name == "sealed_shout.py")
    path = store.path(target)
    data = path.read_bytes()
    assert b"upper" in data
    path.chmod(0o644)
    path.write_bytes(data.replace(b"upper", b"lower"))
    fresh = inputs.parent / "fresh"
    fresh.mkdir()
    (fresh / "q.txt").write_bytes(b"xyz")
    with pytest.raises(CatsError, match=str(target)):
        factory.run(Order(function=Function(entry="sealed_shout:shout", source=src), inputs=[fresh],
                          plant=Plant(confined=True), name="sealed-2"))


# -- refusal where nothing can confine ---------------------------------------------------------------------------

def test_no_bubblewrap_refuses_exec_and_confined_orders(cli, cats_home: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CATS_BWRAP", "/nonexistent")
    marker = tmp_path / "ran"
    cid = jobs.add(jobs.home_store(cats_home), jobs.folder(tmp_path, {"x.txt": b"x\n"}))

    line = cli("exec", "-e", f"touch {marker}", "-c", cid).error_line("bubblewrap", "apt install bubblewrap")
    assert "Traceback" not in line and not marker.exists()

    src = jobs.module(tmp_path, "refused_job", f"""
        from pathlib import Path

        def touch(data):
            Path({str(marker)!r}).write_text("ran")
            return data
    """)
    (tmp_path / "order.py").write_text(
        "from pathlib import Path\nfrom cats import Order, Function, Plant\n"
        f"order = Order(function=Function(entry='refused_job:touch', source=Path({str(src)!r})), "
        f"inputs=[Path({str(tmp_path / 'inputs')!r})], plant=Plant(confined=True))\n")
    cli("run", tmp_path / "order.py").error_line("bubblewrap", "apt install bubblewrap")
    assert not marker.exists()
