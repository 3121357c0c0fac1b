"""What a newcomer meets in the first hour: the quickstart on the embedded Ray (no notice from Ray,
a labelled result and a hint of what to try next), help that reads cleanly, and a clear line for a
Plant address the install cannot reach."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from cats.cli import command

ROOT = Path(__file__).resolve().parent.parent


def _commands(cmd, path: tuple[str, ...] = ()):  # click commands
    yield path
    for name, sub in getattr(cmd, "commands", {}).items():
        yield from _commands(sub, (*path, name))


def test_help_of_every_command_shows_flags_without_a_type(capsys: pytest.CaptureFixture[str]) -> None:
    root = command()
    paths = list(_commands(root))
    assert ("run",) in paths and ("mesh", "trust", "add") in paths
    for path in paths:
        with pytest.raises(SystemExit) as done:
            root.main([*path, "-h"], prog_name="cats")
        out = capsys.readouterr().out
        assert done.value.code == 0, path
        assert "<bool>" not in out, (path, out)
        assert "--help" in out and "-h" in out, (path, out)


@pytest.mark.slow
def test_quickstart_on_the_embedded_ray(tmp_path: Path) -> None:
    """`cats run demo/quickstart.py` as the README says, starting its own Ray: Ray prints no notice."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "CATS_STORE", "CATS_IPFS_API")}
    env["CATS_HOME"] = str(tmp_path / "home")
    proc = subprocess.run([sys.executable, "-m", "cats", "run", str(ROOT / "demo" / "quickstart.py")],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "Token authentication" not in proc.stderr and "token-auth" not in proc.stderr, proc.stderr
    assert "WARNING" not in proc.stderr, proc.stderr
    label, bom = proc.stdout.split()  # the result alone, labelled
    assert label == "bom" and bom.startswith("bafyrei")
    assert "done in" in proc.stderr and "3 of 3 slices run" in proc.stderr
    assert f"next: cats cat --decode {bom} · cats lineage {bom} · cats verify {bom}" in proc.stderr
    decoded = subprocess.run([sys.executable, "-m", "cats", "cat", "--decode", bom], capture_output=True, text=True,
                             env=env, timeout=120)
    assert decoded.returncode == 0, decoded.stderr
    assert json.loads(decoded.stdout).keys() == {"README.txt", "readings"}  # the output folder, name -> CID
    # again: reused from the index, and quick because neither Ray nor what only a real run uses is imported
    probe = ("import json, sys; out = sys.argv.pop(); sys.argv = ['cats', 'run', sys.argv[1], '--json']\n"
             "from cats.cli import main\ntry:\n    main()\nfinally:\n"
             "    open(out, 'w').write(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))")
    again = subprocess.run([sys.executable, "-c", probe, str(ROOT / "demo" / "quickstart.py"), str(tmp_path / "mods")],
                           capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout) | {"bom": bom, "reused": True} == json.loads(again.stdout)
    loaded = set(json.loads((tmp_path / "mods").read_text()))
    assert not loaded & {"ray", "rich", "cryptography"}, sorted(loaded & {"ray", "rich", "cryptography"})


def test_a_ray_client_address_without_the_ray_client_is_one_line(tmp_path: Path) -> None:
    order_file = tmp_path / "client_order.py"
    order_file.write_text(textwrap.dedent("""
        from cats.order import Function, Order, Plant

        def same(data):
            return data

        order = Order(function=Function.of(same), inputs=["bafkqaaa"], plant=Plant(address="ray://127.0.0.1:1"))
    """))
    # grpc hidden as if only `pip install ray` had been done (the Ray Client is the `ray[client]` extra)
    script = ("import sys; sys.modules['grpc'] = None; sys.argv = ['cats', 'run', sys.argv[1]]; "
              "from cats.cli import main; main()")
    proc = subprocess.run([sys.executable, "-c", script, str(order_file)], capture_output=True, text=True,
                          env={**os.environ, "CATS_HOME": str(tmp_path / "home")}, timeout=120)
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "ray://127.0.0.1:1" in lines[0] and "pip install 'ray[client]'" in lines[0]
