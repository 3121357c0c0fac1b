"""`cats exec -e COMMAND -c CID`: a shell command run once per file of a folder, like a grep or sed filter."""

from __future__ import annotations

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
) -> None:
    """Run a shell command on each file of a folder CID; the output folder has one entry per input file.

    The command runs in a sandbox: it sees its file, a scratch folder and the system's programs, no
    other process, no network and nothing of CATS_HOME."""
    from cats.cas.cid import CID
    from cats.factory import shell
    from cats.factory.confine import Policy

    if not command.strip():
        raise CatsError("--command is empty")
    if unconfined and max_output is not None:
        raise CatsError("--max-output limits a confined command; with --unconfined the limit is 1 GiB")
    execute(lambda: shell.order(command, [CID.parse(cid)], timeout=timeout, memory=memory, confined=not unconfined),
            as_json, force, None if max_output is None else Policy(max_output=max_output))


def register(app: typer.Typer) -> None:
    app.command(name="exec")(exec_)
