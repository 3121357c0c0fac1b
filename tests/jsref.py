"""Independent JavaScript reference implementation, driven from the tests.

The tools live in ``tests/js`` (``unixfs.mjs``, ``ipld.mjs``) and use pinned
npm packages (``ipfs-unixfs-importer``, ``multiformats``, ``@ipld/dag-cbor``,
``@ipld/dag-json``, ``@ipld/car``) installed by ``scripts/test``
(``npm ci --prefix tests/js``). Each function below runs ``node`` once and
parses its JSON output; a failing run raises :class:`JsRefError` carrying the
command, exit code and stderr.

Tests that need the harness call :func:`require` first: it skips the test
when the harness is not installed, except under CI (``CI=true``), where it
fails instead, so a missing install step can never pass silently.

This module must not import ``cats``: it is the independent side.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

JS_DIR = Path(__file__).resolve().parent / "js"
UNIXFS_MJS = JS_DIR / "unixfs.mjs"
IPLD_MJS = JS_DIR / "ipld.mjs"

# Packages the tools import; all must be present in tests/js/node_modules.
_REQUIRED_PACKAGES = (
    "ipfs-unixfs-importer",
    "blockstore-core",
    "multiformats",
    "@ipld/dag-cbor",
    "@ipld/dag-json",
    "@ipld/car",
)

DEFAULT_TIMEOUT = 600.0

INSTALL_HINT = (
    "Install it with `scripts/test` (which runs `npm ci --prefix tests/js`), "
    "or run `npm ci --prefix tests/js` yourself; node >= 20 and npm are needed."
)


class JsRefError(RuntimeError):
    """A node reference tool failed (non-zero exit or unreadable output)."""

    def __init__(self, message: str, *, cmd: list[str] | None = None,
                 returncode: int | None = None, stderr: str = "") -> None:
        self.cmd = cmd or []
        self.returncode = returncode
        self.stderr = stderr
        super().__init__(message)


def _node() -> str | None:
    return shutil.which("node")


@functools.lru_cache(maxsize=1)
def _unavailable_reason() -> str | None:
    """None if the harness can run, else a human-readable reason."""
    node = _node()
    if node is None:
        return "`node` is not on PATH."
    missing = [p for p in _REQUIRED_PACKAGES
               if not (JS_DIR / "node_modules" / p / "package.json").is_file()]
    if missing:
        return (f"tests/js/node_modules is not installed (missing: {', '.join(missing)}).")
    # Prove node runs and can load the packages the tools import.
    probe = ("await Promise.all([" + ",".join(
        f"import({json.dumps(p)})" for p in _REQUIRED_PACKAGES) + "]);"
        "console.log(process.versions.node)")
    try:
        proc = subprocess.run(
            [node, "--input-type=module", "-e", probe], cwd=JS_DIR,
            capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"running node failed: {exc}"
    if proc.returncode != 0:
        return f"node cannot load the npm packages: {proc.stderr.strip()}"
    major = proc.stdout.strip().split(".")[0]
    if not major.isdigit() or int(major) < 20:
        return f"node >= 20 is needed, found {proc.stdout.strip()!r}."
    return None


def available() -> bool:
    """Whether tests/js/node_modules is installed and node runs it."""
    return _unavailable_reason() is None


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"true", "1", "yes"}


def require() -> None:
    """Skip the calling test if the harness is missing; fail instead in CI."""
    reason = _unavailable_reason()
    if reason is None:
        return
    import pytest

    msg = f"JS reference harness unavailable: {reason} {INSTALL_HINT}"
    if _in_ci():
        pytest.fail(msg + " (CI=true: refusing to skip.)", pytrace=False)
    pytest.skip(msg)


def _run(args: list[str], *, input_text: str | None = None,
         timeout: float = DEFAULT_TIMEOUT) -> Any:
    node = _node()
    if node is None:
        raise JsRefError(f"`node` is not on PATH. {INSTALL_HINT}", cmd=args)
    cmd = [node, *args]
    try:
        proc = subprocess.run(
            cmd, cwd=JS_DIR, input=input_text, capture_output=True, text=True,
            timeout=timeout, stdin=None if input_text is not None else subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        raise JsRefError(f"{' '.join(cmd)} timed out after {timeout}s", cmd=cmd) from exc
    if proc.returncode != 0:
        raise JsRefError(
            f"{' '.join(cmd)} exited with {proc.returncode}:\n{proc.stderr.strip()}",
            cmd=cmd, returncode=proc.returncode, stderr=proc.stderr)
    try:
        return json.loads(proc.stdout)
    except json.JSONDecodeError as exc:
        raise JsRefError(
            f"{' '.join(cmd)} printed no valid JSON ({exc}); stdout={proc.stdout[:500]!r} "
            f"stderr={proc.stderr.strip()}", cmd=cmd, returncode=proc.returncode,
            stderr=proc.stderr) from exc


def unixfs_cids(path: str | os.PathLike[str], cid_version: int = 0, *,
                hidden: bool = False, shard_split_threshold_bytes: int | None = None,
                timeout: float = DEFAULT_TIMEOUT) -> dict[str, Any]:
    """CIDs of ``path`` as kubo's ``ipfs add -r`` (default settings) computes them.

    Returns ``{"root": cid, "entries": {"<name>[/<sub path>]": cid, ...}}``
    where entry names start with the base name of ``path``, as kubo prints
    them; every file, symlink and directory (empty ones too) has an entry.
    Hidden names (leading '.') inside ``path`` are skipped like kubo does by
    default; ``hidden=True`` is kubo's ``--hidden``.
    ``shard_split_threshold_bytes`` mimics kubo's
    ``Internal.UnixFSShardingSizeThreshold`` (default 262144).
    """
    if cid_version not in (0, 1):
        raise ValueError(f"cid_version must be 0 or 1, got {cid_version!r}")
    args = [str(UNIXFS_MJS), "--cid-version", str(cid_version)]
    if hidden:
        args.append("--hidden")
    if shard_split_threshold_bytes is not None:
        args += ["--shard-split-threshold-bytes", str(int(shard_split_threshold_bytes))]
    args.append(os.path.abspath(os.fspath(path)))
    return _run(args, timeout=timeout)


def cid_info(cid: str) -> dict[str, Any]:
    """Parse ``cid`` with js-multiformats.

    Keys: string, version, codec (name), codec_code, multihash_code,
    multihash_hex (whole multihash), digest_hex, base32 (CIDv1 base32 form),
    v0 (CIDv0 form, or None when not convertible).
    """
    return _run([str(IPLD_MJS), "cid-info", cid])


def multibase(encode: Iterable[bytes] = (),
              decode: Iterable[str] = ()) -> tuple[list[dict[str, str]], list[bytes | None]]:
    """Encode and decode with js-multiformats' bases, in one node run.

    Returns (one {base name: multibase text} per byte string, in every base multiformats knows;
    the bytes of each text, decoded by the base its prefix names, or None where multiformats refuses it).
    """
    out = _run([str(IPLD_MJS), "multibase"],
               input_text=json.dumps({"encode": [bytes(b).hex() for b in encode], "decode": list(decode)}))
    return out["encoded"], [None if h is None else bytes.fromhex(h) for h in out["decoded"]]


def dagcbor_encode(dagjson_text: str) -> tuple[bytes, str]:
    """Encode a DAG-JSON document with @ipld/dag-cbor.

    Returns (dag-cbor bytes, CIDv1 string with codec dag-cbor and sha2-256).
    Note: JavaScript cannot tell 1.0 from 1, so integral floats come out as
    CBOR integers; only cross-check non-integral floats.
    """
    out = _run([str(IPLD_MJS), "dagcbor-encode"], input_text=dagjson_text)
    return bytes.fromhex(out["hex"]), out["cid"]


def car_read(path: str | os.PathLike[str], *, with_data: bool = False) -> dict[str, Any]:
    """Read a CAR with @ipld/car.

    Returns ``{"version", "roots": [cid...], "blocks": [{"cid", "size"}...],
    "unverified": [cid...]}`` (blocks in file order; with ``with_data`` each
    block also has ``"data"`` as bytes). Every block is checked against its
    CID (sha2-256/sha2-512/identity; others are listed in ``unverified``).
    Raises JsRefError for a malformed, truncated or mismatching CAR.
    """
    args = [str(IPLD_MJS), "car-read"]
    if with_data:
        args.append("--hex")
    args.append(os.path.abspath(os.fspath(path)))
    out = _run(args)
    if with_data:
        for b in out["blocks"]:
            b["data"] = bytes.fromhex(b.pop("hex"))
    return out


def car_write(path: str | os.PathLike[str], root: str | Iterable[str],
              blocks: Iterable[tuple[str, bytes]]) -> None:
    """Write a CARv1 with @ipld/car's CarWriter.

    ``root`` is one CID string or several; ``blocks`` are (cid, bytes) pairs
    written in order. Blocks are not checked against their CIDs, so tests can
    build deliberately bad CARs.
    """
    roots = [root] if isinstance(root, str) else list(root)
    if not roots:
        raise ValueError("car_write needs at least one root")
    lines = "".join(
        json.dumps({"cid": str(cid), "hex": bytes(data).hex()}) + "\n" for cid, data in blocks)
    _run([str(IPLD_MJS), "car-write", os.path.abspath(os.fspath(path)), *roots],
         input_text=lines)
