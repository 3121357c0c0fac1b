"""`cats exec -e COMMAND -c CID`: a shell command run once per file of a folder, like a grep or sed filter."""

from __future__ import annotations

from typing import Literal, cast

import typer

from cats.cli.run import JSON_HELP, execute
from cats.errors import CatsError


def exec_(
    command: str = typer.Option(..., "-e", "--command", help="Shell command: the file on stdin and as "
                                "$CATS_INPUT; its stdout is the result."),
    cid: str = typer.Option(..., "-c", "--cid", help="Input: a folder CID (one slice per file)."),
    timeout: float = typer.Option(60.0, "--timeout", min=0.001, help="Seconds per file before the command "
                                  "(its whole process group) is killed."),
    memory: int | None = typer.Option(None, "--memory", min=1, help="Address-space limit of the command, in MB."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
    force: bool = typer.Option(False, "--force", help="Run even if this exact job already has a BOM."),
    max_output: int | None = typer.Option(None, "--max-output", min=1, help="Largest output of one file, in bytes "
                                          "(confined; default 1 GiB)."),
    unconfined: bool = typer.Option(False, "--unconfined", help="Run the command with this user's rights (it then "
                                    "sees every process and file you can, and the network): only for commands you "
                                    "trust; by default it runs in a sandbox (bubblewrap)."),
    ok_exit: str = typer.Option("0", "--ok-exit", metavar="CODES", help="Exit statuses that count as success, "
                                "comma-separated (`0,1` for grep, whose 1 means nothing matched)."),
    merge: str = typer.Option("directory", "--merge", metavar="directory|concat", help="The output: a folder with "
                              "one entry per input file, or their results joined into one file in slice order."),
    replicas: int = typer.Option(1, "--replicas", metavar="N", help="Run each file on N distinct workers; a "
                                 "majority of identical outputs decides."),
    output_uri: str | None = typer.Option(None, "-o", "--output-uri", metavar="URI",
                                          help="Write each file's result under this URI prefix; the store keeps "
                                               "references (needs --merge directory, --replicas 1)."),
) -> None:
    """Run a shell command on each file of a folder CID; the output folder has one entry per input file
    (or, with --merge concat, one file of their results in order).

    The command runs in a sandbox: it sees its file, a scratch folder and the system's programs, no
    other process, no network and nothing of CATS_HOME."""
    from cats.cas.cid import CID
    from cats.factory import shell
    from cats.factory.confine import Policy

    if not command.strip():
        raise CatsError("--command is empty")
    if unconfined and max_output is not None:
        raise CatsError("--max-output limits a confined command; with --unconfined the limit is 1 GiB")
    accepted = _statuses(ok_exit)
    if merge not in ("directory", "concat"):
        raise CatsError(f"--merge {merge!r}: choose directory or concat")
    if replicas < 1:
        raise CatsError(f"--replicas {replicas}: run each file on at least 1 worker")
    if output_uri is not None and merge != "directory":
        raise CatsError("--output-uri writes one result per input file: it needs --merge directory, not concat")
    if output_uri is not None and replicas > 1:
        raise CatsError("--output-uri needs --replicas 1: replicas compare results kept in the store")
    execute(lambda: shell.order(command, [CID.parse(cid)], timeout=timeout, memory=memory, confined=not unconfined,
                                ok_exit=accepted, merge=cast(Literal["directory", "concat"], merge),
                                replicas=replicas, output_uri=output_uri),
            as_json, force, None if max_output is None else Policy(max_output=max_output))


def _statuses(text: str) -> list[int]:
    """`--ok-exit 0,1` as numbers (the Order checks their range); anything else is one line naming the option."""
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise CatsError(f"--ok-exit {text!r}: give exit statuses from 0 to 255, comma-separated (e.g. 0,1)") from None


def register(app: typer.Typer) -> None:
    app.command(name="exec")(exec_)
